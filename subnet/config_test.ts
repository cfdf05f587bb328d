import assert from "node:assert/strict";
import { parseNetConfig } from "./config.ts";
import { formatIp, formatNet } from "../lib/ip.ts";

Deno.test("parseNetConfig() fills flanneld's defaults for a /16", () => {
  const r = parseNetConfig(
    '{"Network":"10.244.0.0/16","Backend":{"Type":"VXLAN","VNI":4}}',
  );
  assert.ok(r.ok, r.ok ? "" : r.reason);
  const c = r.value;
  assert.equal(c.subnetLen, 24);
  assert.equal(formatNet(c.network!), "10.244.0.0/16");
  assert.equal(formatIp(4, c.subnetMin!), "10.244.1.0");
  assert.equal(formatIp(4, c.subnetMax!), "10.244.255.0");
  assert.equal(c.backend.type, "vxlan");
  assert.equal(c.backend.raw.VNI, 4);
  assert.equal(c.enableIPv4, true);
  assert.equal(c.enableIPv6, false);
  assert.equal(c.backendDefaulted, false);
});

Deno.test("parseNetConfig() matches keys case-insensitively like Go", () => {
  const r = parseNetConfig('{"network":"10.5.0.0/16","subnetlen":26}');
  assert.ok(r.ok);
  assert.equal(r.value.subnetLen, 26);
  assert.equal(r.value.backendDefaulted, true);
  assert.equal(r.value.backend.type, "vxlan");
});

Deno.test("parseNetConfig() picks prefix+2 for networks longer than /22", () => {
  const r = parseNetConfig('{"Network":"10.0.0.0/25"}');
  assert.ok(r.ok);
  assert.equal(r.value.subnetLen, 27);
  assert.equal(formatIp(4, r.value.subnetMin!), "10.0.0.32");
  assert.equal(formatIp(4, r.value.subnetMax!), "10.0.0.96");
});

Deno.test("parseNetConfig() defaults IPv6 subnets to /64", () => {
  const r = parseNetConfig(
    '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}',
  );
  assert.ok(r.ok, r.ok ? "" : r.reason);
  assert.equal(r.value.ipv6SubnetLen, 64);
  assert.equal(formatIp(6, r.value.ipv6SubnetMin!), "fc00:0:0:1::");
  assert.equal(formatIp(6, r.value.ipv6SubnetMax!), "fc00:0:0:ffff::");
  assert.equal(r.value.network, undefined);
});

const bad: [string, string, RegExp][] = [
  ["not JSON", "{", /Cannot parse network config JSON/],
  ["an array", "[]", /not a JSON object/],
  ["no Network", '{"Backend":{"Type":"vxlan"}}', /Missing Network/],
  [
    "Network not a CIDR",
    '{"Network":"10.244.0.0"}',
    /Cannot parse Network "10.244.0.0"/,
  ],
  ["IPv6 as Network", '{"Network":"fc00::/48"}', /not an IPv4 CIDR/],
  ["network too small", '{"Network":"10.0.0.0/29"}', /too small.*\/28/],
  ["SubnetLen 31", '{"Network":"10.0.0.0/16","SubnetLen":31}', /at most \/30/],
  [
    "SubnetLen too short",
    '{"Network":"10.0.0.0/16","SubnetLen":17}',
    /at least four subnets/,
  ],
  [
    "SubnetLen a string",
    '{"Network":"10.0.0.0/16","SubnetLen":"24"}',
    /Invalid SubnetLen "24"/,
  ],
  [
    "SubnetMin outside",
    '{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}',
    /SubnetMin "10.1.0.0" is not in the range/,
  ],
  [
    "SubnetMax unaligned",
    '{"Network":"10.0.0.0/16","SubnetMax":"10.0.3.5"}',
    /not on a SubnetLen boundary/,
  ],
  [
    "SubnetMin above SubnetMax",
    '{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}',
    /above SubnetMax/,
  ],
  [
    "both families off",
    '{"EnableIPv4":false,"Network":"10.0.0.0/16"}',
    /both false/,
  ],
  [
    "EnableIPv6 a string",
    '{"Network":"10.0.0.0/16","EnableIPv6":"yes"}',
    /Invalid EnableIPv6 "yes"/,
  ],
  [
    "IPv6 enabled without network",
    '{"Network":"10.0.0.0/16","EnableIPv6":true}',
    /Missing IPv6Network/,
  ],
  [
    "IPv6SubnetLen 127",
    '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}',
    /at most \/126/,
  ],
  [
    "Backend a string",
    '{"Network":"10.0.0.0/16","Backend":"vxlan"}',
    /Invalid Backend "vxlan"/,
  ],
  [
    "Backend.Type a number",
    '{"Network":"10.0.0.0/16","Backend":{"Type":1}}',
    /Invalid Backend.Type 1/,
  ],
];

for (const [what, text, want] of bad) {
  Deno.test(`parseNetConfig() rejects ${what} with a message naming it`, () => {
    const r = parseNetConfig(text);
    assert.equal(r.ok, false);
    if (!r.ok) assert.match(r.reason, want);
  });
}

Deno.test("parseNetConfig() refuses a Network of /0 in either family", () => {
  const v4 = parseNetConfig('{"Network":"0.0.0.0/0"}');
  assert.ok(!v4.ok);
  assert.match(v4.reason, /^Network "0.0.0.0\/0" is the whole address space/);
  const v6 = parseNetConfig(
    '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"::/0"}',
  );
  assert.ok(!v6.ok);
  assert.match(v6.reason, /^IPv6Network "::\/0" is the whole address space/);
});
