import assert from "node:assert/strict";
import {
  configKey,
  decodeLeaseAttrs,
  encodeLeaseAttrs,
  goJson,
  joinKey,
  leaseFromKv,
  parseSubnetKey,
  parseSubnetKeyName,
  subnetKey,
  subnetKeyName,
  subnetsDir,
} from "./keys.ts";
import { LeaseTable } from "../lease_table.ts";
import { parseNetConfig } from "../config.ts";
import { unwrap } from "../../lib/result.ts";

// Written by flanneld v0.28 (json.Marshal of LeaseAttrs), as stored in etcd.
const FLANNELD_V4 =
  '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:bb:55:60:be:4e"}}';
const FLANNELD_DUAL =
  '{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:bb:55:60:be:4e"},"BackendV6Data":{"VNI":1,"VtepMAC":"3a:bb:55:60:be:4f"}}';

Deno.test("joinKey() cleans paths like Go's path.Join", () => {
  assert.equal(
    joinKey("/coreos.com/network/", "subnets"),
    "/coreos.com/network/subnets",
  );
  assert.equal(joinKey("/a//b/./c/../d", "config"), "/a/b/d/config");
  assert.equal(configKey("/coreos.com/network"), "/coreos.com/network/config");
  assert.equal(subnetsDir("/x/"), "/x/subnets/");
});

Deno.test("subnetKeyName() writes flanneld's MakeSubnetKey format", () => {
  assert.equal(subnetKeyName({ subnet: "10.5.52.0/24" }), "10.5.52.0-24");
  assert.equal(
    subnetKeyName({ subnet: "10.5.52.0/24", ipv6Subnet: "fc00::/64" }),
    "10.5.52.0-24&fc00::-64",
  );
  assert.equal(
    subnetKey("/coreos.com/network", { subnet: "10.5.52.0/24" }),
    "/coreos.com/network/subnets/10.5.52.0-24",
  );
});

Deno.test("parseSubnetKeyName() reads single and dual stack names", () => {
  assert.deepEqual(unwrap(parseSubnetKeyName("10.5.52.0-24")), {
    subnet: "10.5.52.0/24",
  });
  assert.deepEqual(unwrap(parseSubnetKeyName("10.5.52.0-24&fc00:0:0::-64")), {
    subnet: "10.5.52.0/24",
    ipv6Subnet: "fc00::/64",
  });
});

Deno.test("parseSubnetKeyName() refuses names that are not subnets", () => {
  for (
    const name of [
      "foo",
      "10.5.52.0",
      "10.5.52.0-24/extra",
      "x10.5.52.0-24",
      "10.5.52.0-33",
      "10.5.300.0-24",
      "10.5.52.0-24&FC00::-64", // flanneld's regex is lower case only
      "10.5.52.0-24&fc00::-129",
    ]
  ) {
    const r = parseSubnetKeyName(name);
    assert.equal(r.ok, false, name);
    assert.match(r.ok ? "" : r.reason, /is not a subnet/);
  }
  const outside = parseSubnetKey(
    "/other/10.5.52.0-24",
    "/coreos.com/network/subnets/",
  );
  assert.equal(outside.ok, false);
});

Deno.test("encodeLeaseAttrs() is byte-identical to flanneld's value", () => {
  assert.equal(
    encodeLeaseAttrs({
      publicIP: "192.168.64.3",
      backendType: "vxlan",
      backendData: { VNI: 1, VtepMAC: "3a:bb:55:60:be:4e" },
    }),
    FLANNELD_V4,
  );
  assert.equal(
    encodeLeaseAttrs({
      publicIP: "192.168.64.3",
      publicIPv6: "fd00::3",
      backendType: "vxlan",
      backendData: { VNI: 1, VtepMAC: "3a:bb:55:60:be:4e" },
      backendV6Data: { VNI: 1, VtepMAC: "3a:bb:55:60:be:4f" },
    }),
    FLANNELD_DUAL,
  );
});

Deno.test("encodeLeaseAttrs() omits empty fields as Go's omitempty does", () => {
  assert.equal(
    encodeLeaseAttrs({ backendType: "" }),
    '{"PublicIP":"0.0.0.0","PublicIPv6":null}',
  );
  assert.equal(
    encodeLeaseAttrs({ publicIP: "10.0.0.1", backendType: "host-gw" }),
    '{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"host-gw"}',
  );
});

Deno.test("goJson() escapes HTML characters like Go's encoding/json", () => {
  assert.equal(
    goJson({ a: "<&>\u2028" }),
    '{"a":"\\u003c\\u0026\\u003e\\u2028"}',
  );
});

Deno.test("decodeLeaseAttrs() reads flanneld's JSON and round-trips it", () => {
  const v4 = unwrap(decodeLeaseAttrs(FLANNELD_V4));
  assert.deepEqual(v4, {
    publicIP: "192.168.64.3",
    backendType: "vxlan",
    backendData: { VNI: 1, VtepMAC: "3a:bb:55:60:be:4e" },
  });
  assert.equal(encodeLeaseAttrs(v4), FLANNELD_V4);
  const dual = unwrap(decodeLeaseAttrs(FLANNELD_DUAL));
  assert.equal(dual.publicIPv6, "fd00::3");
  assert.equal(encodeLeaseAttrs(dual), FLANNELD_DUAL);
});

Deno.test("decodeLeaseAttrs() matches field names case-insensitively, last wins", () => {
  const a = unwrap(
    decodeLeaseAttrs(
      '{"publicip":"10.0.0.1","PUBLICIP":"10.0.0.2","backendtype":"vxlan","Extra":1}',
    ),
  );
  assert.deepEqual(a, { publicIP: "10.0.0.2", backendType: "vxlan" });
});

Deno.test("decodeLeaseAttrs() gives the reason for a malformed value", () => {
  const cases: [string, RegExp][] = [
    ["{not json", /Cannot parse lease value/],
    ["[1,2]", /not a JSON object/],
    ["null", /not a JSON object/],
    ['{"PublicIP":5}', /PublicIP 5 is not a string/],
    ['{"PublicIP":"1.2.3.4","BackendType":true}', /BackendType true/],
  ];
  for (const [text, re] of cases) {
    const r = decodeLeaseAttrs(text);
    assert.equal(r.ok, false, text);
    assert.match(r.ok ? "" : r.reason, re);
  }
});

Deno.test("leaseFromKv() builds a lease keyed by the full etcd key", () => {
  const dir = "/coreos.com/network/subnets/";
  const key = `${dir}10.5.52.0-24`;
  const lease = unwrap(leaseFromKv(key, FLANNELD_V4, dir));
  assert.deepEqual(lease, {
    key,
    subnet: "10.5.52.0/24",
    attrs: {
      publicIP: "192.168.64.3",
      backendType: "vxlan",
      backendData: { VNI: 1, VtepMAC: "3a:bb:55:60:be:4e" },
    },
  });
  const bad = leaseFromKv(`${dir}junk`, FLANNELD_V4, dir);
  assert.equal(bad.ok, false);
});

Deno.test("a flanneld lease read from etcd passes the LeaseTable", () => {
  const config = unwrap(parseNetConfig('{"Network":"10.5.0.0/16"}'));
  const dir = "/coreos.com/network/subnets/";
  const t = new LeaseTable(config, { ownKey: "", noun: "etcd key" });
  const key = `${dir}10.5.52.0-24`;
  const events = t.update(key, leaseFromKv(key, FLANNELD_V4, dir), 0);
  assert.deepEqual(events.map((e) => [e.type, e.lease.subnet]), [[
    "added",
    "10.5.52.0/24",
  ]]);
});
