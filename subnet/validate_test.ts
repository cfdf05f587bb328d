import assert from "node:assert/strict";
import {
  checkNetworkAgainstHost,
  parseVxlanData,
  validateLease,
} from "./validate.ts";
import { parseNetConfig } from "./config.ts";
import type { Lease } from "./lease.ts";
import { unwrap } from "../lib/result.ts";

const v4 = unwrap(parseNetConfig('{"Network":"10.244.0.0/16"}'));
const dual = unwrap(parseNetConfig(
  '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}',
));

const good: Lease = {
  key: "n1",
  subnet: "10.244.3.0/24",
  attrs: {
    publicIP: "198.18.0.3",
    backendType: "vxlan",
    backendData: { VNI: 1, VtepMAC: "AA:bb:cc:dd:ee:01" },
  },
};

/** `good` with a valid IPv6 half, for the dual-stack network. */
const goodDual: Lease = {
  ...good,
  ipv6Subnet: "fc00:0:0:3::/64",
  attrs: {
    ...good.attrs,
    publicIPv6: "2001:db8::3",
    backendV6Data: { VNI: 1, VtepMAC: "aa:bb:cc:dd:ee:02" },
  },
};

Deno.test("validateLease() accepts a flanneld lease and canonicalises it", () => {
  const r = validateLease(good, v4);
  assert.ok(r.ok, r.ok ? "" : r.reason);
  assert.deepEqual(r.value.attrs.backendData, {
    VNI: 1,
    VtepMAC: "aa:bb:cc:dd:ee:01",
  });
});

Deno.test("validateLease() checks the IPv6 half of a dual-stack lease", () => {
  const lease = goodDual;
  assert.ok(validateLease(lease, dual).ok);
  const noV6Ip = {
    ...lease,
    attrs: { ...lease.attrs, publicIPv6: "198.18.0.3" },
  };
  const r = validateLease(noV6Ip, dual);
  assert.ok(!r.ok && r.reason === 'Invalid public IPv6 "198.18.0.3"');
});

const cases: [string, Partial<Lease> & { attrs?: Lease["attrs"] }, RegExp][] = [
  [
    "a subnet outside the network",
    { subnet: "10.245.0.0/24" },
    /outside the network "10.244.0.0\/16"/,
  ],
  ["a subnet with host bits", { subnet: "10.244.3.1/24" }, /host bits set/],
  [
    "no public IP",
    { attrs: { ...good.attrs, publicIP: "" } },
    /Missing public IP/,
  ],
  ["an IPv6 public IP for IPv4", {
    attrs: { ...good.attrs, publicIP: "fc00::1" },
  }, /Invalid public IP/],
  ["an unspecified public IP", {
    attrs: { ...good.attrs, publicIP: "0.0.0.0" },
  }, /"0.0.0.0": unspecified address/],
  ["a multicast public IP", {
    attrs: { ...good.attrs, publicIP: "224.0.0.1" },
  }, /multicast address/],
  ["a broadcast public IP", {
    attrs: { ...good.attrs, publicIP: "255.255.255.255" },
  }, /broadcast address/],
  ["a loopback public IP", {
    attrs: { ...good.attrs, publicIP: "127.0.0.1" },
  }, /loopback address/],
  ["a multicast VtepMAC", {
    attrs: {
      ...good.attrs,
      backendData: { VNI: 1, VtepMAC: "01:00:5e:00:00:01" },
    },
  }, /multicast/],
  ["a VtepMAC that is a number", {
    attrs: { ...good.attrs, backendData: { VtepMAC: 5 } },
  }, /Cannot parse MAC address 5/],
  ["backend data that is a string", {
    attrs: { ...good.attrs, backendData: "x" },
  }, /not a JSON object/],
  ["a VNI out of range", {
    attrs: {
      ...good.attrs,
      backendData: { VNI: 2 ** 24, VtepMAC: "0a:00:00:00:00:01" },
    },
  }, /VNI 16777216/],
  [
    "an odd backend type",
    { attrs: { ...good.attrs, backendType: "VX LAN" } },
    /Invalid backend type/,
  ],
];
for (const [what, patch, want] of cases) {
  Deno.test(`validateLease() refuses ${what}`, () => {
    const r = validateLease({ ...good, ...patch } as Lease, v4);
    assert.equal(r.ok, false);
    if (!r.ok) assert.match(r.reason, want);
  });
}

Deno.test("parseVxlanData() treats a missing VNI as 0 like Go", () => {
  const r = parseVxlanData({ VtepMAC: "0a:00:00:00:00:01" });
  assert.ok(r.ok && r.value.VNI === 0);
});

Deno.test("validateLease() accepts only global or private unicast public IPs outside the cluster network", () => {
  const bad: [string, string, RegExp][] = [
    ["publicIP", "169.254.1.1", /link-local address/],
    ["publicIP", "0.1.2.3", /address in 0.0.0.0\/8/],
    ["publicIP", "240.0.0.1", /reserved address/],
    ["publicIP", "255.255.255.255", /broadcast address/],
    ["publicIP", "10.244.7.1", /inside the cluster network "10.244.0.0\/16"/],
    ["publicIPv6", "fe80::1", /link-local address/],
    ["publicIPv6", "::ffff:198.18.0.3", /IPv4-mapped address/],
    ["publicIPv6", "::198.18.0.3", /IPv4-compatible address/],
    ["publicIPv6", "64:ff9b::c612:3", /NAT64 address \(64:ff9b::\/96\)/],
    ["publicIPv6", "64:ff9b:1::7", /NAT64 address \(64:ff9b:1::\/48\)/],
    [
      "publicIPv6",
      "::ffff:0:c612:3",
      /IPv4-translated address \(::ffff:0:0:0\/96\)/,
    ],
    ["publicIPv6", "100::1", /discard-only address \(100::\/64\)/],
    ["publicIPv6", "2001:0:4136:e378::1", /Teredo address \(2001::\/32\)/],
    ["publicIPv6", "2002:c612:3::1", /6to4 address \(2002::\/16\)/],
    ["publicIPv6", "fec0::1", /site-local address \(fec0::\/10\)/],
    ["publicIPv6", "feff::1", /site-local address/],
    ["publicIPv6", "fc00::7", /inside the cluster network "fc00::\/48"/],
  ];
  const base = goodDual;
  assert.ok(validateLease(base, dual).ok);
  for (const [field, ip, why] of bad) {
    const r = validateLease(
      { ...base, attrs: { ...base.attrs, [field]: ip } },
      dual,
    );
    assert.ok(!r.ok, `${field} ${ip} accepted`);
    assert.match(r.reason, why);
    assert.ok(r.reason.includes(`"${ip}"`), r.reason);
  }
  // Private and unique-local addresses are fine.
  for (
    const [field, ip] of [
      ["publicIP", "172.16.0.9"],
      ["publicIPv6", "fd00::9"],
      ["publicIPv6", "2001:db8::9"],
      ["publicIPv6", "2001:1::9"],
      ["publicIPv6", "64:ff9a::9"],
      ["publicIPv6", "2003::9"],
      ["publicIPv6", "fe00::9"],
    ]
  ) {
    const r = validateLease(
      { ...base, attrs: { ...base.attrs, [field!]: ip } },
      dual,
    );
    assert.ok(r.ok, r.ok ? "" : r.reason);
  }
});

Deno.test("checkNetworkAgainstHost() refuses a network holding the node's address or default gateway", () => {
  const host = { addrs: ["198.18.0.4", "fd18::4"], gateways: ["198.18.0.254"] };
  assert.ok(checkNetworkAgainstHost(dual, host).ok);
  const wide = unwrap(parseNetConfig('{"Network":"198.0.0.0/8"}'));
  const r = checkNetworkAgainstHost(wide, host);
  assert.ok(!r.ok);
  assert.equal(
    r.reason,
    'Network "198.0.0.0/8" contains this node\'s underlay address "198.18.0.4": choose a cluster network that does not overlap the node network',
  );
  const gwOnly = checkNetworkAgainstHost(
    unwrap(parseNetConfig('{"Network":"198.18.0.128/25"}')),
    host,
  );
  assert.ok(
    !gwOnly.ok && gwOnly.reason.includes('default gateway "198.18.0.254"'),
  );
  const v6 = checkNetworkAgainstHost(
    unwrap(parseNetConfig(
      '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd18::/48"}',
    )),
    host,
  );
  assert.ok(!v6.ok && v6.reason.includes('"fd18::4"'));
});
