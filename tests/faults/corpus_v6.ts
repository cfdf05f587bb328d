/**
 * The IPv6 half of the bad-input corpus: dual-stack peer leases (etcd key
 * `<v4>-24&<v6>-64`, value with `PublicIPv6` and `BackendV6Data`) whose
 * IPv4 half is valid and whose IPv6 half is not. A lease is refused as a
 * whole, so each case must leave no entry in either family. Cases are
 * built from a {@linkcode DualSlot}: a free subnet pair, an unused public
 * IP pair and MAC pair of their own, so any kernel entry a refused case
 * leaves behind can be traced back to it.
 *
 * @module
 */
import type { EtcdLease } from "../_cluster.ts";
import { type PeerInput, refusedAs } from "./corpus.ts";
import type { SlotTrace } from "./kernel.ts";

/**
 * The identities a dual-stack case gets to build its input from: a free
 * subnet pair, an unused public IP pair and MAC pair of its own, and what
 * the node under test and its real peers hold.
 */
export interface DualIds {
  /** A free IPv4 /24: `10.244.201.0/24`. */
  readonly subnet: string;
  /** A free IPv6 /64: `fc00:0:0:f0c9::/64`. */
  readonly subnet6: string;
  readonly publicIP: string;
  /** The slot's IPv6 public IP, never a real node's: `fd00:18::1c9`. */
  readonly publicIP6: string;
  readonly mac: string;
  /** The slot's IPv6 VTEP MAC. */
  readonly mac6: string;
  /** The node under test (node1): its IPv6 subnet, address and v6 MAC. */
  readonly ownSubnet6: string;
  readonly ownIP6: string;
  readonly ownMac6: string;
  /** Its real peers' IPv6 subnets, public IPs and v6 MACs, in one order. */
  readonly peerSubnets6: readonly string[];
  readonly peerIPs6: readonly string[];
  readonly peerMacs6: readonly string[];
}

/**
 * The real leases split for a corpus run: node1's own (by its public IP),
 * its peers, and every real IPv6 subnet.
 */
export function splitOwn(real: readonly EtcdLease[], ownIP: string): {
  own: EtcdLease;
  peers: EtcdLease[];
  realSubnets: Set<string | undefined>;
} {
  const own = real.find((l) => l.value.PublicIP === ownIP);
  if (!own) throw new Error(`no lease of node1 (${ownIP}) among the real ones`);
  return {
    own,
    peers: real.filter((l) => l !== own),
    realSubnets: new Set(real.map((l) => l.ipv6Subnet)),
  };
}

/**
 * The identities of case `i` at free IPv4 subnet `10.244.<octet>.0/24`;
 * `tag` (two hex digits) keeps the MACs apart from other corpora's.
 */
export function dualIds(
  i: number,
  octet: number,
  tag: string,
  own: EtcdLease,
  peers: readonly EtcdLease[],
  ownIP6: string,
): DualIds {
  const hex = (i + 1).toString(16).padStart(2, "0");
  return {
    subnet: `10.244.${octet}.0/24`,
    subnet6: `fc00:0:0:f0${octet.toString(16)}::/64`,
    publicIP: `198.18.0.${100 + i}`,
    publicIP6: `fd00:18::1${hex}`,
    mac: `0a:${tag}:04:00:00:${hex}`,
    mac6: `0a:${tag}:06:00:00:${hex}`,
    ownSubnet6: own.ipv6Subnet!,
    ownIP6,
    ownMac6: own.value.BackendV6Data!.VtepMAC!,
    peerSubnets6: peers.map((l) => l.ipv6Subnet!),
    peerIPs6: peers.map((l) => l.value.PublicIPv6!),
    peerMacs6: peers.map((l) => l.value.BackendV6Data!.VtepMAC!),
  };
}

/** The valid dual-stack lease of `ids` under `key` (a control's). */
export function dualLease(key: string, ids: DualIds): EtcdLease {
  return {
    key,
    subnet: ids.subnet,
    ipv6Subnet: ids.subnet6,
    value: {
      PublicIP: ids.publicIP,
      PublicIPv6: ids.publicIP6,
      BackendType: "vxlan",
      BackendData: { VNI: 1, VtepMAC: ids.mac },
      BackendV6Data: { VNI: 1, VtepMAC: ids.mac6 },
    },
    etcdLease: "0",
  };
}

/**
 * What a dual-stack case's kernel entries look like on each overlay: its
 * IPv4 subnet, and its IPv6 claim `named6` unless a real node holds that
 * one (then judged by MAC and IP alone: the real node's route stays).
 */
export function dualTraces(
  ids: DualIds,
  named6: string | undefined,
  real6: ReadonlySet<string | undefined>,
): [SlotTrace, SlotTrace] {
  return [
    { claims: ids.subnet, mac: ids.mac, publicIP: ids.publicIP },
    {
      claims: named6 === undefined || real6.has(named6) ? undefined : named6,
      mac: ids.mac6,
      publicIP: ids.publicIP6,
    },
  ];
}

/** What a dual-stack etcd case builds its key and value from. */
export interface DualSlot extends DualIds {
  /** `/coreos.com/network/subnets/`. */
  readonly dir: string;
}

/** One dual-stack lease (a control or a refused one). */
export interface DualCase {
  readonly name: string;
  readonly expect: "refused" | "programmed";
  readonly make: (s: DualSlot) => PeerInput;
  /** What its warning must say after the key (see corpus_run.ts). */
  readonly reason?: RegExp;
  /** The `weft_peers_refused_total` label it must count under. */
  readonly counter?: string;
  /**
   * The IPv6 subnet it claims, for the kernel check, when that is not the
   * slot's (undefined when it claims a real node's: that route must stay).
   */
  readonly claims6?: (s: DualSlot) => string | undefined;
}

/** `fc00:0:0:7::/64` → `fc00:0:0:7::-64`. */
function name6(subnet: string): string {
  return subnet.replace("/", "-");
}

function keyOf(s: DualSlot, v6Name = name6(s.subnet6)): string {
  return `${s.dir}${s.subnet.replace("/", "-")}&${v6Name}`;
}

/** The lease value a dual-stack flanneld writes, for the slot. */
function dualValue(s: DualSlot): Record<string, unknown> {
  return {
    PublicIP: s.publicIP,
    PublicIPv6: s.publicIP6,
    BackendType: "vxlan",
    BackendData: { VNI: 1, VtepMAC: s.mac },
    BackendV6Data: { VNI: 1, VtepMAC: s.mac6 },
  };
}

function v6Data(v: Record<string, unknown>): Record<string, unknown> {
  return v.BackendV6Data as Record<string, unknown>;
}

/** The valid value with some fields changed, at the slot's key. */
function patched(
  name: string,
  patch: (v: Record<string, unknown>, s: DualSlot) => void,
): DualCase {
  return {
    name,
    expect: "refused",
    make: (s) => {
      const v = dualValue(s);
      patch(v, s);
      return { key: keyOf(s), value: JSON.stringify(v) };
    },
  };
}

/** The valid value under a key whose IPv6 part is `v6Name`. */
function keyed(
  name: string,
  v6Name: (s: DualSlot) => string,
  claims6?: (s: DualSlot) => string | undefined,
): DualCase {
  return {
    name,
    expect: "refused",
    make: (s) => ({
      key: keyOf(s, v6Name(s)),
      value: JSON.stringify(dualValue(s)),
    }),
    ...(claims6 && { claims6 }),
  };
}

/** A `/len` inside the slot's /64, from its first address. */
function inside(s: DualSlot, len: number, host = ""): string {
  return s.subnet6.replace("::/64", `::${host}/${len}`);
}

/**
 * IPv6 ranges refused as public addresses: the row's name, an address in
 * the range (from the slot's IPv4 address), the word the reason uses.
 */
const V6_SPECIAL_CASES = [
  ["NAT64 (64:ff9b::/96)", (ip4: string) => `64:ff9b::${ip4}`, "NAT64"],
  ["6to4 (2002::/16)", () => "2002:c612:9::1", "6to4"],
  ["site-local (fec0::/10)", () => "fec0::9", "site-local"],
  ["Teredo (2001::/32)", () => "2001:0:4136:e378::9", "Teredo"],
] as const;

/** Dual-stack leases with a hostile IPv6 half, plus one valid control. */
export const DUAL_CASES: readonly DualCase[] = [
  {
    name: "control: a valid dual-stack lease (must be programmed, v4 and v6)",
    expect: "programmed",
    make: (s) => ({ key: keyOf(s), value: JSON.stringify(dualValue(s)) }),
  },
  // Keys whose IPv6 part is not a subnet, or not one that fits.
  keyed("v6 key part not hex (zz::-64)", () => "zz::-64"),
  keyed(
    "v6 key part in upper case",
    (s) => name6(s.subnet6).toUpperCase(),
  ),
  keyed("v6 key part prefix length 129", (s) => name6(inside(s, 129))),
  keyed("v6 key part without a prefix length", (s) => s.subnet6.split("/")[0]!),
  keyed(
    "v6 key part with host bits (::1-64)",
    (s) => name6(inside(s, 64, "1")),
  ),
  keyed("v6 key part an IPv4 subnet", () => "10.244.1.0-24"),
  keyed(
    "v6 key parts given twice",
    (s) => `${name6(s.subnet6)}&${name6(s.subnet6)}`,
  ),
  keyed(
    "v6 subnet outside IPv6Network (fd99::/48)",
    (s) => name6(s.subnet6.replace(/^fc00:0:0:/, "fd99:0:0:")),
    (s) => s.subnet6.replace(/^fc00:0:0:/, "fd99:0:0:"),
  ),
  keyed(
    "v6 subnet /56 in a free range (length differs from IPv6SubnetLen)",
    () => "fc00:0:0:e100::-56",
    () => "fc00:0:0:e100::/56",
  ),
  keyed(
    "v6 subnet /80 inside a free /64 (length differs)",
    (s) => name6(inside(s, 80)),
    (s) => inside(s, 80),
  ),
  keyed(
    "v6 subnet /128, a host route in a free /64",
    (s) => name6(inside(s, 128, "7")),
    (s) => inside(s, 128, "7"),
  ),
  keyed(
    "v6 subnet the whole IPv6Network (fc00::/48)",
    () => "fc00::-48",
    () => "fc00::/48",
  ),
  keyed(
    "v6 subnet equal to the node under test's",
    (s) => name6(s.ownSubnet6),
    () => undefined,
  ),
  keyed(
    "v6 subnet equal to a real peer's (the older claim keeps it)",
    (s) => name6(s.peerSubnets6[0]!),
    () => undefined,
  ),
  keyed(
    "v6 subnet inside a real peer's (upper /65)",
    (s) => name6(s.peerSubnets6[0]!.replace("::/64", ":8000::/65")),
    (s) => s.peerSubnets6[0]!.replace("::/64", ":8000::/65"),
  ),
  // PublicIPv6.
  patched("PublicIPv6 missing", (v) => delete v.PublicIPv6),
  patched("PublicIPv6 null", (v) => v.PublicIPv6 = null),
  patched("PublicIPv6 empty", (v) => v.PublicIPv6 = ""),
  patched("PublicIPv6 a number", (v) => v.PublicIPv6 = 1),
  patched(
    "PublicIPv6 not an address (fd00::zz)",
    (v) => v.PublicIPv6 = "fd00::zz",
  ),
  patched(
    "PublicIPv6 an IPv4 address",
    (v, s) => v.PublicIPv6 = s.publicIP,
  ),
  patched(
    "PublicIPv6 with a prefix length",
    (v, s) => v.PublicIPv6 = `${s.publicIP6}/64`,
  ),
  patched(
    "PublicIPv6 with a zone (%eth0)",
    (v, s) => v.PublicIPv6 = `${s.publicIP6}%eth0`,
  ),
  patched("PublicIPv6 link-local (fe80::1)", (v) => v.PublicIPv6 = "fe80::1"),
  patched("PublicIPv6 multicast (ff02::1)", (v) => v.PublicIPv6 = "ff02::1"),
  patched(
    "PublicIPv6 IPv4-mapped (::ffff:198.18.0.x)",
    (v, s) => v.PublicIPv6 = `::ffff:${s.publicIP}`,
  ),
  patched(
    "PublicIPv6 IPv4-compatible (::198.18.0.x)",
    (v, s) => v.PublicIPv6 = `::${s.publicIP}`,
  ),
  patched("PublicIPv6 loopback (::1)", (v) => v.PublicIPv6 = "::1"),
  ...V6_SPECIAL_CASES.map(([what, ip, word]) =>
    refusedAs(
      patched(
        `PublicIPv6 ${what}`,
        (v, s) => v.PublicIPv6 = ip(s.publicIP),
      ),
      new RegExp(`: ${word} address \\(`),
    )
  ),
  patched("PublicIPv6 unspecified (::)", (v) => v.PublicIPv6 = "::"),
  patched(
    "PublicIPv6 inside the IPv6 cluster network",
    (v, s) => v.PublicIPv6 = s.subnet6.replace("::/64", "::9"),
  ),
  patched(
    "PublicIPv6 of the node under test",
    (v, s) => v.PublicIPv6 = s.ownIP6,
  ),
  patched(
    "PublicIPv6 of a real peer (duplicate, same backend type)",
    (v, s) => v.PublicIPv6 = s.peerIPs6[0]!,
  ),
  // BackendV6Data.
  patched("BackendV6Data missing", (v) => delete v.BackendV6Data),
  patched("BackendV6Data null", (v) => v.BackendV6Data = null),
  patched(
    "BackendV6Data a JSON string",
    (v) => v.BackendV6Data = JSON.stringify(v.BackendV6Data),
  ),
  patched("BackendV6Data an array", (v) => v.BackendV6Data = [v.BackendV6Data]),
  patched("v6 VNI a string", (v) => v6Data(v).VNI = "1"),
  patched("v6 VNI above 2^24", (v) => v6Data(v).VNI = 16777216),
  patched("v6 VtepMAC missing", (v) => delete v6Data(v).VtepMAC),
  patched("v6 VtepMAC not hex", (v) => v6Data(v).VtepMAC = "zz:zz:zz:zz:zz:zz"),
  patched(
    "v6 VtepMAC five octets",
    (v, s) => v6Data(v).VtepMAC = s.mac6.slice(0, 14),
  ),
  patched(
    "v6 VtepMAC multicast (33:33:00:00:00:01)",
    (v) => v6Data(v).VtepMAC = "33:33:00:00:00:01",
  ),
  patched(
    "v6 VtepMAC broadcast",
    (v) => v6Data(v).VtepMAC = "ff:ff:ff:ff:ff:ff",
  ),
  patched(
    "v6 VtepMAC all zeros",
    (v) => v6Data(v).VtepMAC = "00:00:00:00:00:00",
  ),
  patched(
    "v6 VtepMAC of a real peer (duplicate; the older claim keeps it)",
    (v, s) => v6Data(v).VtepMAC = s.peerMacs6[0]!,
  ),
  patched(
    "v6 VtepMAC of a real peer, in upper case",
    (v, s) =>
      v6Data(v).VtepMAC = s.peerMacs6[1 % s.peerMacs6.length]!.toUpperCase(),
  ),
  patched(
    "v6 VtepMAC of the node under test's flannel-v6.1",
    (v, s) => v6Data(v).VtepMAC = s.ownMac6,
  ),
];

/** What a dual-stack Node case builds its object from. */
export interface DualNodeSlot extends DualIds {
  /** `fault6-07`: sorts before the real nodes, as a relist sees it. */
  readonly name: string;
}

/** One dual-stack Node object (a control or a refused one). */
export interface DualNodeCase {
  readonly name: string;
  readonly expect: "refused" | "programmed";
  readonly make: (s: DualNodeSlot) => Record<string, unknown>;
  /** What its warning must say after the node name (see corpus_run.ts). */
  readonly reason?: RegExp;
  /** The `weft_peers_refused_total` label it must count under. */
  readonly counter?: string;
  /** The IPv6 pod CIDR it claims, when not the slot's (see DualCase). */
  readonly claims6?: (s: DualNodeSlot) => string | undefined;
}

const ANN = "flannel.alpha.coreos.com/";

/** The annotations a dual-stack flannel agent publishes, for the slot. */
function dualAnnotations(s: DualNodeSlot): Record<string, string> {
  return {
    [`${ANN}backend-type`]: "vxlan",
    [`${ANN}backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: s.mac }),
    [`${ANN}backend-v6-data`]: JSON.stringify({ VNI: 1, VtepMAC: s.mac6 }),
    [`${ANN}kube-subnet-manager`]: "true",
    [`${ANN}public-ip`]: s.publicIP,
    [`${ANN}public-ipv6`]: s.publicIP6,
  };
}

function dualNode(
  s: DualNodeSlot,
  annotations: Record<string, string>,
  podCIDR6 = s.subnet6,
): Record<string, unknown> {
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: { name: s.name, annotations },
    spec: { podCIDR: s.subnet, podCIDRs: [s.subnet, podCIDR6] },
  };
}

/** A Node with the valid annotations changed by `patch`. */
function annotated6(
  name: string,
  patch: (a: Record<string, string>, s: DualNodeSlot) => void,
): DualNodeCase {
  return {
    name,
    expect: "refused",
    make: (s) => {
      const a = dualAnnotations(s);
      patch(a, s);
      return dualNode(s, a);
    },
  };
}

/** A Node with valid annotations and another IPv6 pod CIDR. */
function cidr6(
  name: string,
  podCIDR6: (s: DualNodeSlot) => string,
  claims6: (s: DualNodeSlot) => string | undefined = podCIDR6,
  expect: "refused" | "programmed" = "refused",
): DualNodeCase {
  return {
    name,
    expect,
    make: (s) => dualNode(s, dualAnnotations(s), podCIDR6(s)),
    claims6,
  };
}

const v6data = (mac: string) => JSON.stringify({ VNI: 1, VtepMAC: mac });

/** Dual-stack Node objects with a hostile IPv6 half, plus one control. */
export const DUAL_NODE_CASES: readonly DualNodeCase[] = [
  {
    name: "control: a dual-stack node as a flannel agent annotates it",
    expect: "programmed",
    make: (s) => dualNode(s, dualAnnotations(s)),
  },
  annotated6("public-ipv6 missing", (a) => delete a[`${ANN}public-ipv6`]),
  annotated6(
    "public-ipv6 not an address",
    (a) => a[`${ANN}public-ipv6`] = "fd00::zz",
  ),
  annotated6(
    "public-ipv6 an IPv4 address",
    (a, s) => a[`${ANN}public-ipv6`] = s.publicIP,
  ),
  annotated6(
    "public-ipv6 link-local (fe80::1)",
    (a) => a[`${ANN}public-ipv6`] = "fe80::1",
  ),
  annotated6(
    "public-ipv6 multicast (ff02::1)",
    (a) => a[`${ANN}public-ipv6`] = "ff02::1",
  ),
  annotated6(
    "public-ipv6 IPv4-mapped (::ffff:198.18.0.x)",
    (a, s) => a[`${ANN}public-ipv6`] = `::ffff:${s.publicIP}`,
  ),
  annotated6(
    "public-ipv6 loopback (::1)",
    (a) => a[`${ANN}public-ipv6`] = "::1",
  ),
  ...V6_SPECIAL_CASES.map(([what, ip, word]) =>
    refusedAs(
      annotated6(
        `public-ipv6 ${what}`,
        (a, s) => a[`${ANN}public-ipv6`] = ip(s.publicIP),
      ),
      new RegExp(`: ${word} address \\(`),
    )
  ),
  annotated6(
    "public-ipv6 unspecified (::)",
    (a) => a[`${ANN}public-ipv6`] = "::",
  ),
  annotated6(
    "public-ipv6 inside the IPv6 cluster network",
    (a, s) => a[`${ANN}public-ipv6`] = s.subnet6.replace("::/64", "::9"),
  ),
  annotated6(
    "public-ipv6 of the node under test",
    (a, s) => a[`${ANN}public-ipv6`] = s.ownIP6,
  ),
  annotated6(
    "public-ipv6 of a real peer (duplicate)",
    (a, s) => a[`${ANN}public-ipv6`] = s.peerIPs6[0]!,
  ),
  annotated6(
    "backend-v6-data missing",
    (a) => delete a[`${ANN}backend-v6-data`],
  ),
  annotated6(
    "backend-v6-data not JSON",
    (a) => a[`${ANN}backend-v6-data`] = "{VNI:1",
  ),
  annotated6(
    "backend-v6-data VtepMAC multicast",
    (a) => a[`${ANN}backend-v6-data`] = v6data("33:33:00:00:00:01"),
  ),
  annotated6(
    "backend-v6-data VtepMAC not a MAC",
    (a) => a[`${ANN}backend-v6-data`] = v6data("not-a-mac"),
  ),
  annotated6(
    "backend-v6-data VtepMAC of a real peer (duplicate)",
    (a, s) => a[`${ANN}backend-v6-data`] = v6data(s.peerMacs6[0]!),
  ),
  annotated6(
    "backend-v6-data VtepMAC of the node under test",
    (a, s) => a[`${ANN}backend-v6-data`] = v6data(s.ownMac6),
  ),
  // Another length than this node's, overlapping nothing: programmed, as
  // flanneld does (a changed controller-manager mask size).
  cidr6(
    "IPv6 podCIDR /80 inside a free /64 (length differs: programmed)",
    (s) => s.subnet6.replace("::/64", "::/80"),
    undefined,
    "programmed",
  ),
  cidr6(
    "IPv6 podCIDR /56 in a free range (length differs: programmed)",
    () => "fc00:0:0:e200::/56",
    undefined,
    "programmed",
  ),
  cidr6(
    "IPv6 podCIDR outside IPv6Network (fd99::/48)",
    (s) => s.subnet6.replace(/^fc00:0:0:/, "fd99:0:0:"),
  ),
  cidr6(
    "IPv6 podCIDR equal to the node under test's",
    (s) => s.ownSubnet6,
    () => undefined,
  ),
  cidr6(
    "IPv6 podCIDR equal to a real peer's (the older node keeps it)",
    (s) => s.peerSubnets6[0]!,
    () => undefined,
  ),
];
