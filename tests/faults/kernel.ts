/**
 * What a node's kernel holds for the overlay, read back with iproute2
 * (`ip -j`, `bridge -j`), and how it compares with what the leases in
 * etcd ask for: per peer a neighbour, an FDB entry and an onlink route on
 * `flannel.1`, and nothing else on that device. The fault suite polls
 * this to time repairs and to prove a refused lease left no entry.
 *
 * @module
 */
import type { Netns } from "../_netns.ts";
import type { EtcdLease } from "../_cluster.ts";
import { netContainsIp, parseIp, parseIpNet } from "../../lib/ip.ts";

/** The VXLAN device name (VNI 1). */
export const DEVICE = "flannel.1";
/** The IPv6 VXLAN device name (VNI 1). */
export const DEVICE6 = "flannel-v6.1";

/** Which overlay to look at: an address family and its device. */
export interface Overlay {
  readonly family: 4 | 6;
  readonly device: string;
}

/** The IPv4 overlay (the default everywhere). */
export const V4: Overlay = { family: 4, device: DEVICE };
/** The IPv6 overlay of a dual-stack cluster. */
export const V6: Overlay = { family: 6, device: DEVICE6 };

/** The overlay state of one node. */
export interface OverlayState {
  /** `flannel.1`, when it exists. */
  readonly device?: {
    readonly mac: string;
    readonly up: boolean;
    readonly addrs: readonly string[];
  };
  /** Main-table IPv4 routes: destination, gateway, device. */
  readonly routes: readonly {
    dst: string;
    gw?: string;
    dev: string;
    onlink: boolean;
  }[];
  /** Neighbours on `flannel.1`. */
  readonly neighs: readonly { dst: string; lladdr?: string; state: string }[];
  /** FDB entries on `flannel.1`. */
  readonly fdb: readonly { mac: string; dst?: string; state: string }[];
}

/** A peer as a node must program it. */
export interface PeerEntry {
  readonly subnet: string;
  /** `<subnet>.0`, the neighbour and the route's gateway. */
  readonly gw: string;
  readonly mac: string;
  readonly publicIP: string;
}

async function tryJson<T>(ns: Netns, ...args: string[]): Promise<T[]> {
  try {
    return await ns.json<T[]>(...args);
  } catch {
    return []; // no device
  }
}

/** Reads a node's overlay state (default IPv4, `flannel.1`). */
export async function readOverlay(
  ns: Netns,
  o: Overlay = V4,
): Promise<OverlayState> {
  const DEVICE = o.device;
  const fam = `-${o.family}`;
  const [links, routes, neighs, fdb] = await Promise.all([
    tryJson<{
      address?: string;
      flags?: string[];
      addr_info?: { family: string; local: string; prefixlen: number }[];
    }>(ns, "addr", "show", "dev", DEVICE),
    tryJson<{ dst: string; gateway?: string; dev: string; flags?: string[] }>(
      ns,
      fam,
      "route",
      "show",
      "table",
      "main",
    ),
    tryJson<{ dst: string; lladdr?: string; state?: string[] }>(
      ns,
      fam,
      "neigh",
      "show",
      "dev",
      DEVICE,
    ),
    tryJson<{ mac: string; dst?: string; state?: string }>(
      ns,
      "bridge",
      "fdb",
      "show",
      "dev",
      DEVICE,
    ),
  ]);
  const link = links[0];
  return {
    ...(link && {
      device: {
        mac: link.address ?? "",
        up: (link.flags ?? []).includes("UP"),
        addrs: (link.addr_info ?? []).filter((a) =>
          a.family === (o.family === 4 ? "inet" : "inet6") &&
          !a.local.startsWith("fe80:")
        ).map((
          a,
        ) => `${a.local}/${a.prefixlen}`),
      },
    }),
    routes: routes.map((r) => ({
      // iproute2 prints a host route without its length: keep it in.
      dst: r.dst.includes("/") || r.dst === "default"
        ? r.dst
        : `${r.dst}/${o.family === 4 ? 32 : 128}`,
      ...(r.gateway !== undefined && { gw: r.gateway }),
      dev: r.dev,
      onlink: (r.flags ?? []).includes("onlink"),
    })),
    neighs: neighs.map((n) => ({
      dst: n.dst,
      ...(n.lladdr !== undefined && { lladdr: n.lladdr }),
      state: (n.state ?? []).join(","),
    })),
    fdb: fdb.map((f) => ({
      mac: f.mac,
      ...(f.dst !== undefined && { dst: f.dst }),
      state: f.state ?? "",
    })),
  };
}

/**
 * The peers a node with public IP `selfIP` (of the family) must program,
 * default IPv4.
 */
export function expectedPeers(
  leases: readonly EtcdLease[],
  selfIP: string,
  family: 4 | 6 = 4,
): PeerEntry[] {
  const out: PeerEntry[] = [];
  for (const l of leases) {
    if (l.value.BackendType !== "vxlan") continue;
    const v = l.value;
    const [subnet, ip, mac] = family === 4
      ? [l.subnet, v.PublicIP, v.BackendData?.VtepMAC]
      : [l.ipv6Subnet, v.PublicIPv6, v.BackendV6Data?.VtepMAC];
    if (subnet === undefined || !ip || mac === undefined || ip === selfIP) {
      continue;
    }
    out.push({ subnet, gw: subnet.split("/")[0]!, mac, publicIP: ip });
  }
  return out;
}

/**
 * What differs between a node's state and the peers it must program,
 * within `network` (`10.244.0.0/16`): missing or wrong entries, and
 * anything else on `flannel.1`. `ownAddr` is the device address
 * (`10.244.7.0/32`). Empty when converged.
 */
export function overlayProblems(
  s: OverlayState,
  peers: readonly PeerEntry[],
  opts: {
    ownAddr?: string;
    inNetwork: (dst: string) => boolean;
    device?: string;
  },
): string[] {
  const DEVICE = opts.device ?? V4.device;
  const out: string[] = [];
  if (!s.device) return [`${DEVICE} missing`];
  if (!s.device.up) out.push(`${DEVICE} down`);
  if (opts.ownAddr !== undefined && !s.device.addrs.includes(opts.ownAddr)) {
    out.push(`${DEVICE} lacks address ${opts.ownAddr}`);
  }
  const want = new Map(peers.map((p) => [p.subnet, p]));
  for (const p of peers) {
    const r = s.routes.find((r) => r.dst === p.subnet);
    if (!r) out.push(`route ${p.subnet} missing`);
    else if (r.dev !== DEVICE || r.gw !== p.gw || !r.onlink) {
      out.push(
        `route ${p.subnet} is via ${r.gw} dev ${r.dev}${
          r.onlink ? " onlink" : ""
        }`,
      );
    }
    const n = s.neighs.find((n) => n.dst === p.gw);
    if (!n) out.push(`neighbour ${p.gw} missing`);
    else if (n.lladdr !== p.mac || !n.state.includes("PERMANENT")) {
      out.push(`neighbour ${p.gw} is ${n.lladdr} ${n.state}`);
    }
    const f = s.fdb.filter((f) => f.mac === p.mac);
    if (!f.some((f) => f.dst === p.publicIP)) {
      out.push(`fdb ${p.mac} dst ${p.publicIP} missing`);
    }
    for (const x of f) {
      if (x.dst !== p.publicIP) out.push(`fdb ${p.mac} has extra dst ${x.dst}`);
    }
  }
  // The kernel's routes for the device's own addresses (an IPv6 /128 and
  // link-local get one) are not peers'.
  const own = opts.ownAddr?.split("/")[0];
  for (const r of s.routes) {
    if (r.dst === own || r.dst === opts.ownAddr || r.dst.startsWith("fe80:")) {
      continue;
    }
    if (r.dev === DEVICE && !want.has(r.dst)) {
      out.push(`extra route ${r.dst} dev ${r.dev}`);
    }
  }
  const gws = new Set(peers.map((p) => p.gw));
  for (const n of s.neighs) {
    if (
      !gws.has(n.dst) && n.state.includes("PERMANENT") && opts.inNetwork(n.dst)
    ) {
      out.push(`extra neighbour ${n.dst} ${n.lladdr}`);
    }
  }
  const macs = new Set(peers.map((p) => p.mac));
  for (const f of s.fdb) {
    if (!macs.has(f.mac)) out.push(`extra fdb ${f.mac} dst ${f.dst}`);
  }
  return out;
}

/** Whether `ip` (or a CIDR's address), IPv4 or IPv6, lies in `cidr`. */
export function inCidr(ip: string, cidr: string): boolean {
  const a = parseIp(ip.split("/")[0]!);
  const n = parseIpNet(cidr);
  return a.ok && n.ok && netContainsIp(n.value, a.value);
}

/** What a corpus case's peer would look like in the kernel. */
export interface SlotTrace {
  /** The subnet it claims, unless a real node holds that subnet. */
  readonly claims: string | undefined;
  readonly mac: string;
  readonly publicIP: string;
}

/**
 * The kernel entries on one node that belong to a corpus case, in
 * iproute2 words (`route ...`, `fdb ...`, `neigh ...`). `route` decides
 * which routes count (etcd mode also matches the gateway).
 */
export function slotEntries(
  s: OverlayState,
  slot: SlotTrace,
  route: (r: OverlayState["routes"][number]) => boolean = (r) =>
    r.dst === slot.claims,
): string[] {
  return [
    ...s.routes.filter(route).map((r) => `route ${r.dst}`),
    ...s.fdb.filter((f) => f.mac === slot.mac || f.dst === slot.publicIP)
      .map((f) => `fdb ${f.mac} dst ${f.dst}`),
    ...s.neighs.filter((x) => x.lladdr === slot.mac).map((x) =>
      `neigh ${x.dst}`
    ),
  ];
}

/**
 * Why a node's entries for a case are wrong: a refused case must leave
 * none, a programmed one needs its route. Empty when right.
 */
export function judgeEntries(
  expect: "refused" | "programmed",
  entries: string[],
  where: string,
): string[] {
  if (expect === "refused" && entries.length > 0) {
    return [`${where} programmed ${entries.join(", ")}`];
  }
  if (expect === "programmed" && !entries.some((e) => /\broute /.test(e))) {
    return [`${where} did not program it`];
  }
  return [];
}

/**
 * The entries of a dual-stack corpus case on both overlays, each marked
 * with its family: routes count on the overlay device at the claimed
 * subnet (a claim on a real node's subnet is judged by MAC and IP alone).
 */
export function dualSlotEntries(
  s4: OverlayState,
  s6: OverlayState,
  v4: SlotTrace,
  v6: SlotTrace,
): string[] {
  return [
    ...slotEntries(s4, v4, (r) => r.dev === V4.device && r.dst === v4.claims)
      .map((e) => `v4 ${e}`),
    ...slotEntries(s6, v6, (r) => r.dev === V6.device && r.dst === v6.claims)
      .map((e) => `v6 ${e}`),
  ];
}
