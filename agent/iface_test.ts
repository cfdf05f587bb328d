import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import type { AddrInfo, LinkInfo, RouteInfo } from "../ffi/types.ts";
import {
  IFA_F_DEPRECATED,
  IFA_F_PERMANENT,
  IFA_F_TEMPORARY,
  type IfaceNetlink,
  isGlobalUnicast,
  publicIPChoice,
  selectExternalInterface,
  usableAddrs,
} from "./iface.ts";
import { setLogSink } from "../lib/log.ts";
import { parseIp } from "../lib/ip.ts";

setLogSink(() => {});

interface FakeAddr {
  index: number;
  local: string;
  flags?: number;
}

/** A tiny in-memory kernel: only what iface.ts reads. */
function fake(
  linkList: LinkInfo[],
  addrs: FakeAddr[],
  routes: RouteInfo[],
  routeGet: (dst: string) => RouteInfo[] = () => [],
): IfaceNetlink {
  return {
    linkList: () => linkList,
    addrList: (index?: number, family?: 4 | 6) =>
      addrs.filter((a) =>
        (index === undefined || a.index === index) &&
        (family === undefined || (a.local.includes(":") ? 6 : 4) === family)
      ) as AddrInfo[],
    routeList: (filter) =>
      routes.filter((r) =>
        filter?.family === undefined ||
        (r.dst.includes(":") ? 6 : 4) === filter.family
      ),
    routeGet,
  };
}

const lo: LinkInfo = { index: 1, name: "lo", mtu: 65536, up: true };
const eth0: LinkInfo = { index: 2, name: "eth0", mtu: 1500, up: true };
const eth1: LinkInfo = { index: 3, name: "eth1", mtu: 9000, up: true };
const wg0: LinkInfo = { index: 4, name: "wg0", mtu: 1420, up: true };

const addrs: FakeAddr[] = [
  { index: 1, local: "127.0.0.1/8" },
  { index: 1, local: "::1/128" },
  { index: 2, local: "192.168.1.10/24" },
  { index: 2, local: "fe80::1/64" },
  { index: 2, local: "2001:db8::10/64" },
  { index: 3, local: "10.0.0.2/24" },
  { index: 3, local: "2001:db8:1::2/64" },
  { index: 4, local: "172.16.0.1/24" },
];

const routes: RouteInfo[] = [
  { dst: "192.168.1.0/24", index: 2, scope: 253 },
  { dst: "0.0.0.0/0", gw: "192.168.1.1", index: 2 },
  { dst: "0.0.0.0/0", gw: "10.0.0.1", index: 3 },
  { dst: "::/0", gw: "fe80::ff", index: 2 },
];

const nl = fake(
  [eth1, lo, eth0, wg0],
  addrs,
  routes,
  (dst) =>
    dst.startsWith("10.")
      ? [{ dst: `${dst}/32`, index: 3, src: "10.0.0.2" }]
      : [{
        dst: `${dst}/32`,
        gw: "192.168.1.1",
        index: 2,
        src: "192.168.1.10",
      }],
);

function choose(opts: Parameters<typeof selectExternalInterface>[1]) {
  const r = selectExternalInterface(nl, opts);
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

function refuse(
  opts: Parameters<typeof selectExternalInterface>[1],
  net = nl,
): string {
  const r = selectExternalInterface(net, opts);
  if (r.ok) throw new Error(`expected failure, got ${r.value.name}`);
  return r.reason;
}

Deno.test("selectExternalInterface() uses the first default route's interface", () => {
  assertEquals(choose({}), {
    index: 2,
    name: "eth0",
    mtu: 1500,
    ipv4: "192.168.1.10",
    publicIP: "192.168.1.10",
  });
});

Deno.test("selectExternalInterface() uses the IPv6 default route when only IPv6 is on", () => {
  assertEquals(choose({ enableIPv4: false, enableIPv6: true }), {
    index: 2,
    name: "eth0",
    mtu: 1500,
    ipv6: "2001:db8::10",
    publicIPv6: "2001:db8::10",
  });
});

Deno.test("selectExternalInterface() gives both families on a dual-stack node", () => {
  assertEquals(choose({ enableIPv6: true }), {
    index: 2,
    name: "eth0",
    mtu: 1500,
    ipv4: "192.168.1.10",
    ipv6: "2001:db8::10",
    publicIP: "192.168.1.10",
    publicIPv6: "2001:db8::10",
  });
});

Deno.test("selectExternalInterface() takes the first --iface that matches, by name or address", () => {
  assertEquals(choose({ iface: ["eth7", "eth1", "eth0"] }).name, "eth1");
  const byIp = choose({ iface: ["10.0.0.9", "172.16.0.1"] });
  assertEquals([byIp.name, byIp.ipv4], ["wg0", "172.16.0.1"]);
});

Deno.test("selectExternalInterface() tries --iface-regex after --iface, addresses before names", () => {
  // "^10\\." matches an address of eth1; "^wg" matches only a name.
  assertEquals(
    choose({ iface: ["nope"], ifaceRegex: ["^10\\."] }).name,
    "eth1",
  );
  assertEquals(choose({ ifaceRegex: ["^wg"] }).name, "wg0");
  // An address match on any interface beats a name match.
  assertEquals(choose({ ifaceRegex: ["^(eth0|172\\..*)$"] }).name, "wg0");
});

Deno.test("selectExternalInterface() follows --iface-can-reach to the route's device and source", () => {
  const ext = choose({ ifaceCanReach: "10.9.9.9" });
  assertEquals([ext.name, ext.ipv4], ["eth1", "10.0.0.2"]);
});

Deno.test("selectExternalInterface() publishes --public-ip instead of the interface address", () => {
  const ext = choose({ iface: ["eth1"], publicIP: "203.0.113.5" });
  assertEquals([ext.ipv4, ext.publicIP], ["10.0.0.2", "203.0.113.5"]);
});

Deno.test("selectExternalInterface() with only --public-ip uses the interface that owns it", () => {
  const ext = choose({ publicIP: "10.0.0.2" });
  assertEquals([ext.name, ext.ipv4, ext.publicIP], [
    "eth1",
    "10.0.0.2",
    "10.0.0.2",
  ]);
  assertEquals(
    refuse({ publicIP: "203.0.113.5" }),
    'Cannot use --public-ip "203.0.113.5" without --iface: no interface has address "203.0.113.5" (behind NAT, choose the interface with --iface)',
  );
});

Deno.test("selectExternalInterface() lists everything it tried when nothing matches", () => {
  assertEquals(
    refuse({
      iface: ["eth9", "10.1.1.1"],
      ifaceRegex: ["^bond"],
      ifaceCanReach: "8.8.8.8",
    }, fake([lo, eth0], addrs.filter((a) => a.index <= 2), [], () => [])),
    "No interface matches the interface flags: " +
      '--iface "eth9": no interface named "eth9"; ' +
      '--iface "10.1.1.1": no interface has address "10.1.1.1"; ' +
      '--iface-regex "^bond": matches no interface name or address (available: lo [127.0.0.1], eth0 [192.168.1.10]); ' +
      '--iface-can-reach "8.8.8.8": no route to "8.8.8.8" names an interface',
  );
});

Deno.test("selectExternalInterface() explains a missing default route or address", () => {
  assertEquals(
    refuse({}, fake([eth0], [], [])),
    "Cannot choose the interface of the default route: no default route",
  );
  assertEquals(
    refuse({}, fake([eth0], [{ index: 2, local: "fe80::1/64" }], [routes[1]!])),
    'Cannot choose the interface of the default route: interface "eth0" has no usable IPv4 address',
  );
  assertEquals(
    refuse(
      { enableIPv6: true },
      fake([eth0, eth1], addrs, [routes[2]!, routes[3]!]),
    ),
    'Cannot choose the interface of the default route: the default IPv6 route uses "eth0" but the default route uses "eth1"',
  );
  assertEquals(
    refuse({ enableIPv4: false }),
    "Cannot choose an interface: neither IPv4 nor IPv6 is enabled",
  );
  // An --iface that matches but lacks an address is skipped like flanneld.
  assertEquals(
    refuse(
      { iface: ["lo"], enableIPv4: false, enableIPv6: true },
      fake([lo], [{ index: 1, local: "::1/128" }], []),
    ),
    'No interface matches the interface flags: --iface "lo": interface "lo" has no usable IPv6 address',
  );
});

Deno.test("usableAddrs() prefers global, permanent, stable addresses and drops deprecated ones", () => {
  const net = fake([eth0], [
    { index: 2, local: "fe80::1/64", flags: IFA_F_PERMANENT },
    { index: 2, local: "2001:db8::aaaa/64", flags: IFA_F_TEMPORARY },
    {
      index: 2,
      local: "2001:db8::dead/64",
      flags: IFA_F_DEPRECATED | IFA_F_PERMANENT,
    },
    { index: 2, local: "2001:db8::5/64", flags: 0 },
    { index: 2, local: "2001:db8::1/64", flags: IFA_F_PERMANENT },
    { index: 2, local: "ff02::1/128", flags: IFA_F_PERMANENT },
  ], []);
  assertEquals(usableAddrs(net, 2, 6), [
    "2001:db8::1",
    "2001:db8::5",
    "2001:db8::aaaa",
    "fe80::1",
  ]);
});

Deno.test("isGlobalUnicast() agrees with Go's net.IP.IsGlobalUnicast", () => {
  const cases: [string, boolean][] = [
    ["10.0.0.1", true],
    ["192.168.0.1", true],
    ["127.0.0.1", false],
    ["169.254.1.1", false],
    ["224.0.0.1", false],
    ["255.255.255.255", false],
    ["0.0.0.0", false],
    ["2001:db8::1", true],
    ["fd00::1", true],
    ["::1", false],
    ["::", false],
    ["fe80::1", false],
    ["ff02::1", false],
  ];
  for (const [text, want] of cases) {
    const ip = parseIp(text);
    assert(ip.ok);
    assertEquals(isGlobalUnicast(ip.value.family, ip.value.value), want, text);
  }
});

Deno.test("publicIPChoice() lets node-public-ip annotations win over flags, per family", () => {
  const flags = { publicIP: "198.18.0.1", publicIPv6: "2001:db8::1" };
  assertEquals(publicIPChoice(flags, {}), flags);
  assertEquals(publicIPChoice(flags, { ipv4: "198.18.0.9" }), {
    publicIP: "198.18.0.9",
    publicIPv6: "2001:db8::1",
  });
  assertEquals(publicIPChoice(flags, { ipv6: "2001:db8::9" }), {
    publicIP: "198.18.0.1",
    publicIPv6: "2001:db8::9",
  });
  assertEquals(
    publicIPChoice({ publicIP: "", publicIPv6: "" }, { ipv4: "198.18.0.9" }),
    { publicIP: "198.18.0.9", publicIPv6: "" },
  );
});
