import assert from "node:assert/strict";
import {
  formatIp,
  formatNet,
  ipv6Value,
  netContainsNet,
  normalizeIp,
  parseIp,
  parseIpNet,
  parseSubnet,
} from "./ip.ts";

Deno.test("formatIp() compresses IPv6 like iproute2", () => {
  const cases: [string, string][] = [
    ["fc00:0:0:0:0:0:0:1", "fc00::1"],
    ["0:0:0:0:0:0:0:0", "::"],
    ["2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"],
    ["2001:0:0:1:0:0:0:1", "2001:0:0:1::1"],
    ["fe80::1:0:0:1", "fe80::1:0:0:1"],
    ["1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"],
  ];
  for (const [input, want] of cases) assert.equal(normalizeIp(input), want);
});

Deno.test("ipv6Value() reads every RFC 4291 text form", () => {
  const cases: [string, bigint][] = [
    ["::", 0n],
    ["::1", 1n],
    ["1::", 1n << 112n],
    ["1:2:3:4:5:6:7::", 0x0001_0002_0003_0004_0005_0006_0007_0000n],
    ["::2:3:4:5:6:7:8", 0x0000_0002_0003_0004_0005_0006_0007_0008n],
    ["FC00:0:0:0:0:0:0:1", 0xfc00_0000_0000_0000_0000_0000_0000_0001n],
    ["::ffff:1.2.3.4", 0xffff_0102_0304n],
    ["1:2:3:4:5:6:1.2.3.4", 0x0001_0002_0003_0004_0005_0006_0102_0304n],
  ];
  for (const [text, want] of cases) assert.equal(ipv6Value(text), want, text);
});

Deno.test("parseIp() rejects malformed addresses with the value quoted", () => {
  for (
    const bad of [
      "",
      "1.2.3",
      "1.2.3.256",
      "01.2.3.4",
      "1.2.3.4/24",
      "fc00::zz",
      "fe80::1%eth0",
      "a.b.c.d",
      "1::2::3",
      ":1::",
      "1:2:3:4:5:6:7",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7:8::",
      "12345::1",
      "::1.2.3",
      "1.2.3.4::",
      "::ffff:1.2.3.04",
    ]
  ) {
    const r = parseIp(bad);
    assert.equal(r.ok, false, bad);
  }
  const r = parseIp("1.2.3.999");
  assert.ok(!r.ok && r.reason.includes('"1.2.3.999"'));
});

Deno.test("parseSubnet() refuses host bits and names the network", () => {
  const r = parseSubnet("10.244.1.5/24");
  assert.ok(!r.ok && r.reason.includes('"10.244.1.0/24"'));
  const good = parseSubnet("10.244.1.0/24");
  assert.ok(good.ok);
  assert.equal(formatNet(good.value), "10.244.1.0/24");
  assert.equal(parseIpNet("10.0.0.0/33").ok, false);
  assert.equal(parseIpNet("fc00::/129").ok, false);
});

Deno.test("netContainsNet() respects family and prefix", () => {
  const net = parseIpNet("10.244.0.0/16");
  const sub = parseIpNet("10.244.7.0/24");
  const out = parseIpNet("10.245.0.0/24");
  assert.ok(net.ok && sub.ok && out.ok);
  assert.equal(netContainsNet(net.value, sub.value), true);
  assert.equal(netContainsNet(sub.value, net.value), false);
  assert.equal(netContainsNet(net.value, out.value), false);
  assert.equal(formatIp(4, 0x0af40100n), "10.244.1.0");
});
