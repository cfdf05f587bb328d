import { deepStrictEqual as assertEquals, throws } from "node:assert/strict";
import {
  missingSubnetEnvKeys,
  parseSubnetEnv,
  renderSubnetEnv,
} from "./subnet_env.ts";
import { parseIpNet } from "../lib/ip.ts";

Deno.test("renderSubnetEnv() writes flanneld's IPv4 file byte for byte", () => {
  assertEquals(
    renderSubnetEnv({
      network: "10.244.0.0/16",
      subnet: "10.244.1.0/24",
      mtu: 1450,
      ipMasq: true,
    }),
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
  );
});

Deno.test("renderSubnetEnv() writes dual stack in flanneld's order", () => {
  const net = parseIpNet("10.244.0.0/16");
  if (!net.ok) throw new Error(net.reason);
  assertEquals(
    renderSubnetEnv({
      network: net.value,
      subnet: "10.244.7.0/24",
      ipv6Network: "fd00:10:244::/56",
      ipv6Subnet: "fd00:10:244:7::/64",
      mtu: 1430,
      ipMasq: false,
    }),
    [
      "FLANNEL_NETWORK=10.244.0.0/16",
      "FLANNEL_SUBNET=10.244.7.1/24",
      "FLANNEL_IPV6_NETWORK=fd00:10:244::/56",
      "FLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64",
      "FLANNEL_MTU=1430",
      "FLANNEL_IPMASQ=false",
      "",
    ].join("\n"),
  );
});

Deno.test("renderSubnetEnv() writes only IPv6 lines on an IPv6-only node", () => {
  assertEquals(
    renderSubnetEnv({
      ipv6Network: "fd00::/48",
      ipv6Subnet: "fd00:0:0:3::/64",
      mtu: 1430,
      ipMasq: true,
    }),
    "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
  );
});

Deno.test("renderSubnetEnv() refuses a network without subnet and a wrong family", () => {
  throws(
    () => renderSubnetEnv({ network: "10.0.0.0/8", mtu: 1450, ipMasq: false }),
    /FLANNEL_NETWORK and FLANNEL_SUBNET go together/,
  );
  throws(
    () =>
      renderSubnetEnv({
        network: "fd00::/48",
        subnet: "fd00::/64",
        mtu: 1450,
        ipMasq: false,
      }),
    /must be IPv4/,
  );
  throws(
    () =>
      renderSubnetEnv({
        network: "10.0.0.0/8",
        subnet: "10.0.0.0/24",
        mtu: 0,
        ipMasq: false,
      }),
    /bad MTU "0"/,
  );
});

Deno.test("parseSubnetEnv() reads what renderSubnetEnv() writes", () => {
  const text = renderSubnetEnv({
    network: "10.244.0.0/16",
    subnet: "10.244.1.0/24",
    ipv6Network: "fd00::/48",
    ipv6Subnet: "fd00:0:0:1::/64",
    mtu: 1450,
    ipMasq: true,
  });
  const r = parseSubnetEnv(text);
  if (!r.ok) throw new Error(r.reason);
  assertEquals(r.value, {
    networks: ["10.244.0.0/16"],
    subnet: "10.244.1.0/24",
    subnetGateway: "10.244.1.1/24",
    ipv6Networks: ["fd00::/48"],
    ipv6Subnet: "fd00:0:0:1::/64",
    ipv6SubnetGateway: "fd00:0:0:1::1/64",
    mtu: 1450,
    ipMasq: true,
  });
  assertEquals(missingSubnetEnvKeys(r.value), "");
});

Deno.test("parseSubnetEnv() accepts flanneld's comma list and ignores unknown keys", () => {
  const r = parseSubnetEnv(
    "# comment\nFLANNEL_NETWORK=10.1.0.0/16,10.2.0.0/16,10.1.0.0/16\nOTHER=x\nFLANNEL_IPMASQ=True\n",
  );
  if (!r.ok) throw new Error(r.reason);
  assertEquals(r.value.networks, ["10.1.0.0/16", "10.2.0.0/16"]);
  // Only the exact string "true" means true, as in the CNI plugin.
  assertEquals(r.value.ipMasq, false);
  assertEquals(
    missingSubnetEnvKeys(r.value),
    "FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU",
  );
});

Deno.test("parseSubnetEnv() names the key of a bad value", () => {
  const cases: [string, string][] = [
    [
      "FLANNEL_SUBNET=10.244.1.1",
      'Bad FLANNEL_SUBNET "10.244.1.1": not an IPv4 CIDR',
    ],
    [
      "FLANNEL_IPV6_SUBNET=10.0.0.1/24",
      'Bad FLANNEL_IPV6_SUBNET "10.0.0.1/24": not an IPv6 CIDR',
    ],
    ["FLANNEL_MTU=-1", 'Bad FLANNEL_MTU "-1": not an unsigned integer'],
    [
      "FLANNEL_NETWORK=10.0.0.0/8,x",
      'Bad FLANNEL_NETWORK "10.0.0.0/8,x": "x" is not an IPv4 CIDR',
    ],
  ];
  for (const [text, want] of cases) {
    const r = parseSubnetEnv(text);
    assertEquals(r, { ok: false, reason: want });
  }
  assertEquals(
    missingSubnetEnvKeys({ networks: [], ipv6Networks: [] }),
    "FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ",
  );
});
