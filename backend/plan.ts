/**
 * Pure planning for the overlay: which neighbour, FDB entry and route each
 * peer needs (desired state as data), which kernel entries belong to weft
 * (ownership), and the ordered operations that turn what the kernel has
 * into what is desired (diff). Nothing here touches the kernel; the
 * reconciler feeds it kernel state read through {@linkcode Netlink} and
 * applies what it returns.
 *
 * Ownership is deliberately narrow so nothing foreign is ever removed:
 * on the overlay device, every permanent neighbour and every FDB entry;
 * of routes into the cluster network (on the overlay device, or through a
 * gateway on the external interface with host-gw or DirectRouting; never
 * our own subnet), only those marked with weft's route protocol
 * ({@linkcode RTPROT_WEFT}), and deletes name that protocol so the kernel
 * matches nothing else. Routes a flanneld left (protocol boot) are
 * adopted when a lease wants exactly that destination: the route is
 * replaced in place with our mark (an atomic swap, no packet lost). Only
 * flanneld's two shapes count as flanneld's: `S via S.0 dev flannel.N
 * onlink` on the overlay device (no lease wants it: a stale flanneld
 * entry, it goes) and, on the external interface, `S via P` where P is the
 * public IP of the lease claiming S (no lease wants it: it may be an
 * administrator's static route, it stays). A `blackhole S proto boot`
 * route is what `--ip-blackhole-route` left for a subnet this node no
 * longer holds: a lease claiming S replaces it, as flanneld does; no lease
 * wanting it, it stays.
 *
 * Every other route in the main table at a destination a lease claims is
 * foreign (another protocol, another device, another shape): weft neither
 * replaces nor deletes it. The lease's route waits (a `routeHeld`
 * operation, which writes nothing) until the foreign route is gone. A
 * destination with no route at all is written with `ip route add`
 * (create + excl), never a replace, so a foreign route that appears after
 * the kernel was read makes the write fail instead of being overwritten.
 *
 * @module
 */
import {
  type FdbInfo,
  type NeighInfo,
  NTF_SELF,
  NUD_PERMANENT,
  type RouteInfo,
  RT_TABLE_MAIN,
  RTPROT_BOOT,
  RTPROT_WEFT,
} from "../ffi/types.ts";
import { describeRoute } from "../ffi/validate.ts";
import {
  formatIp,
  type IpNet,
  netContainsNet,
  networkAddr,
  parseIpNet,
} from "../lib/ip.ts";
import type { Lease, VxlanBackendData } from "../subnet/lease.ts";

/** The kernel entries one peer needs. */
export interface PeerEntries {
  /** Lease key (node name or etcd key). */
  readonly key: string;
  readonly neigh?: NeighInfo;
  readonly fdb?: FdbInfo;
  readonly route: RouteInfo;
}

/** What one address family of one backend network should look like. */
export interface FamilyPlan {
  readonly family: 4 | 6;
  /** Cluster network of this family. */
  readonly network: IpNet;
  /** Our own subnet, never routed to a peer. */
  readonly ownSubnet: string;
  /** Index of the overlay device, or undefined for host-gw. */
  readonly deviceIndex?: number;
  /** Index of the external (underlay) interface. */
  readonly externalIndex: number;
  /** Whether routes on the external interface are ours to manage. */
  readonly manageExternal: boolean;
}

/** How a peer is reached, decided per peer by the backend. */
export type PeerMode = "vxlan" | "direct";

/** Kernel entries of one family that weft owns (see module doc). */
export interface OwnedState {
  readonly neighs: NeighInfo[];
  readonly fdbs: FdbInfo[];
  /** Routes weft may replace and delete. */
  readonly routes: RouteInfo[];
  /**
   * Routes weft may take over when a lease wants their destination, but
   * never deletes (flanneld's on the external interface).
   */
  readonly adoptable?: RouteInfo[];
  /**
   * Other routes into the cluster network (main table, not our own
   * subnet): never written over, never deleted.
   */
  readonly foreign?: RouteInfo[];
}

/** One kernel change. `peer` names the lease it is for, if any. */
export type Op =
  | {
    readonly kind: "neighSet" | "neighDel";
    readonly neigh: NeighInfo;
    readonly peer?: string;
  }
  | {
    readonly kind: "fdbSet" | "fdbDel";
    readonly fdb: FdbInfo;
    readonly peer?: string;
  }
  | {
    readonly kind: "routeAdd" | "routeReplace" | "routeDel";
    readonly route: RouteInfo;
    readonly peer?: string;
  }
  | {
    /**
     * Writes nothing: `route` (not weft's) holds the destination `peer`
     * wants, so its route waits.
     */
    readonly kind: "routeHeld";
    readonly route: RouteInfo;
    readonly peer: string;
  };

/** The first address of a subnet (`10.244.1.0/24` → `10.244.1.0`). */
export function subnetAddress(subnet: string): string {
  const n = parseIpNet(subnet);
  if (!n.ok) throw new TypeError(`Cannot plan for subnet "${subnet}"`);
  return formatIp(n.value.family, networkAddr(n.value));
}

/** The peer's subnet, public IP and backend data for a family. */
export function peerFamily(
  lease: Lease,
  family: 4 | 6,
):
  | { subnet: string; publicIP: string; data: VxlanBackendData | undefined }
  | undefined {
  const subnet = family === 4 ? lease.subnet : lease.ipv6Subnet;
  const publicIP = family === 4 ? lease.attrs.publicIP : lease.attrs.publicIPv6;
  if (subnet === undefined || publicIP === undefined) return undefined;
  const data =
    (family === 4 ? lease.attrs.backendData : lease.attrs.backendV6Data) as
      | VxlanBackendData
      | undefined;
  return { subnet, publicIP, data };
}

/**
 * Entries for a VXLAN peer: `<subnet .0> lladdr <VtepMAC>` permanent,
 * `<VtepMAC> dst <publicIP> self permanent`, `<subnet> via <subnet .0>
 * onlink` on the device; or, for a directly reachable peer,
 * `<subnet> via <publicIP>` on the external interface.
 */
export function vxlanPeerEntries(
  plan: FamilyPlan,
  lease: Lease,
  mode: PeerMode,
): PeerEntries | undefined {
  const p = peerFamily(lease, plan.family);
  if (!p || plan.deviceIndex === undefined) return undefined;
  if (mode === "direct") return directPeerEntries(plan, lease);
  if (!p.data) return undefined;
  const gw = subnetAddress(p.subnet);
  const index = plan.deviceIndex;
  return {
    key: lease.key,
    neigh: { index, dst: gw, lladdr: p.data.VtepMAC, state: NUD_PERMANENT },
    fdb: {
      index,
      lladdr: p.data.VtepMAC,
      dst: p.publicIP,
      state: NUD_PERMANENT,
      flags: NTF_SELF,
    },
    route: {
      dst: p.subnet,
      gw,
      index,
      onlink: true,
      table: RT_TABLE_MAIN,
      protocol: RTPROT_WEFT,
    },
  };
}

/** Entries for a peer reached by plain routing: `<subnet> via <publicIP>`. */
export function directPeerEntries(
  plan: FamilyPlan,
  lease: Lease,
): PeerEntries | undefined {
  const p = peerFamily(lease, plan.family);
  if (!p) return undefined;
  return {
    key: lease.key,
    route: {
      dst: p.subnet,
      gw: p.publicIP,
      index: plan.externalIndex,
      table: RT_TABLE_MAIN,
      protocol: RTPROT_WEFT,
    },
  };
}

function inNetwork(plan: FamilyPlan, dst: string): boolean {
  const n = parseIpNet(dst);
  return n.ok && netContainsNet(plan.network, n.value);
}

/**
 * Inside our own subnet: the kernel's route for the device's own address
 * (an IPv6 /128 gets one, `proto kernel`), never a peer's.
 */
function inOwnSubnet(plan: FamilyPlan, dst: string): boolean {
  const own = parseIpNet(plan.ownSubnet);
  const n = parseIpNet(dst);
  return own.ok && n.ok && netContainsNet(own.value, n.value);
}

/** flanneld's vxlan route: `S via S.0 dev <device> onlink`. */
function flannelShape(r: RouteInfo, dev: number): boolean {
  if (r.index !== dev || !r.onlink || r.gw === undefined) return false;
  const n = parseIpNet(r.dst);
  return n.ok && formatIp(n.value.family, networkAddr(n.value)) === r.gw;
}

/**
 * What `--ip-blackhole-route` (weft's or flanneld's) leaves behind when
 * the node's own subnet moves: `blackhole S proto boot`, no device. The
 * blackhole is never removed (as in flanneld), so when S becomes a peer's,
 * it is replaced by that peer's route as flanneld's route replace does;
 * held as foreign, it would drop the peer's traffic on this node forever.
 */
function staleBlackhole(r: RouteInfo, proto: number): boolean {
  return proto === RTPROT_BOOT && r.blackhole === true && r.gw === undefined;
}

/** Filters kernel state down to the entries weft owns (see module doc). */
export function ownedState(
  plan: FamilyPlan,
  kernel: { neighs: NeighInfo[]; fdbs: FdbInfo[]; routes: RouteInfo[] },
): OwnedState {
  const dev = plan.deviceIndex;
  const routes: RouteInfo[] = [];
  const adoptable: RouteInfo[] = [];
  const foreign: RouteInfo[] = [];
  for (const r of kernel.routes) {
    if ((r.table ?? RT_TABLE_MAIN) !== RT_TABLE_MAIN) continue;
    if (inOwnSubnet(plan, r.dst) || !inNetwork(plan, r.dst)) continue;
    const onDev = dev !== undefined && r.index === dev;
    const onExt = r.index === plan.externalIndex && r.gw !== undefined;
    const proto = r.protocol ?? RTPROT_BOOT;
    // Our own mark on the external interface is ours even when this run
    // does not route there (DirectRouting turned off since).
    if (proto === RTPROT_WEFT && (onDev || onExt)) routes.push(r);
    else if (proto === RTPROT_BOOT && onDev && flannelShape(r, dev)) {
      routes.push(r);
    } else if (proto === RTPROT_BOOT && onExt && plan.manageExternal) {
      adoptable.push(r);
    } else if (staleBlackhole(r, proto)) adoptable.push(r);
    else foreign.push(r);
  }
  return {
    neighs: dev === undefined
      ? []
      : kernel.neighs.filter((n) =>
        n.index === dev && (n.state & NUD_PERMANENT) !== 0
      ),
    fdbs: dev === undefined ? [] : kernel.fdbs.filter((f) => f.index === dev),
    routes,
    adoptable,
    foreign,
  };
}

/**
 * The public IP a peer's entries point at: the FDB entry's remote, or
 * the gateway of a route via the external interface.
 */
function peerAddress(p: PeerEntries): string | undefined {
  return p.fdb?.dst ?? p.route.gw;
}

function sameRoute(a: RouteInfo, b: RouteInfo): boolean {
  return a.dst === b.dst && a.gw === b.gw && a.index === b.index &&
    Boolean(a.onlink) === Boolean(b.onlink) &&
    (a.protocol ?? RTPROT_BOOT) === (b.protocol ?? RTPROT_BOOT);
}

function fdbKey(f: FdbInfo): string {
  return `${f.lladdr}|${f.dst ?? ""}`;
}

/**
 * Operations that turn `actual` into `desired`, in a safe order: per
 * peer neighbour, FDB entry, then route (the route last, or the kernel
 * would ARP for the gateway); then removal of what nobody wants, routes
 * first. Idempotent: equal input gives no operations.
 */
export function diff(desired: Iterable<PeerEntries>, actual: OwnedState): Op[] {
  const neighs = new Map(actual.neighs.map((n) => [n.dst, n]));
  const fdbs = new Map(actual.fdbs.map((f) => [fdbKey(f), f]));
  const routes = new Map(actual.routes.map((r) => [r.dst, r]));
  const adoptable = new Map((actual.adoptable ?? []).map((r) => [r.dst, r]));
  const foreign = new Map((actual.foreign ?? []).map((r) => [r.dst, r]));
  const wantNeigh = new Set<string>();
  const wantFdb = new Set<string>();
  const wantRoute = new Set<string>();
  const ops: Op[] = [];
  for (const p of desired) {
    if (p.neigh) {
      wantNeigh.add(p.neigh.dst);
      const have = neighs.get(p.neigh.dst);
      if (!have || have.lladdr !== p.neigh.lladdr) {
        ops.push({ kind: "neighSet", neigh: p.neigh, peer: p.key });
      }
    }
    if (p.fdb) {
      const k = fdbKey(p.fdb);
      wantFdb.add(k);
      const have = fdbs.get(k);
      if (!have || (have.state & NUD_PERMANENT) === 0) {
        ops.push({ kind: "fdbSet", fdb: p.fdb, peer: p.key });
      }
    }
    const dst = p.route.dst;
    wantRoute.add(dst);
    // flanneld's host-gw route to this very peer is adopted; on the
    // external interface through any other gateway, it is someone else's.
    const flanneld = adoptable.get(dst);
    const adopt = flanneld?.blackhole || flanneld?.gw === peerAddress(p)
      ? flanneld
      : undefined;
    const other = foreign.get(dst) ?? (adopt ? undefined : flanneld);
    const have = routes.get(dst) ?? adopt;
    if (other) ops.push({ kind: "routeHeld", route: other, peer: p.key });
    else if (!have) ops.push({ kind: "routeAdd", route: p.route, peer: p.key });
    else if (!sameRoute(have, p.route)) {
      ops.push({ kind: "routeReplace", route: p.route, peer: p.key });
    }
  }
  for (const r of actual.routes) {
    if (!wantRoute.has(r.dst)) ops.push({ kind: "routeDel", route: r });
  }
  for (const f of actual.fdbs) {
    if (!wantFdb.has(fdbKey(f))) ops.push({ kind: "fdbDel", fdb: f });
  }
  for (const n of actual.neighs) {
    if (!wantNeigh.has(n.dst)) ops.push({ kind: "neighDel", neigh: n });
  }
  return ops;
}

/** Turns desired entries into the owned state they would produce. */
export function asState(entries: Iterable<PeerEntries>): OwnedState {
  const s: OwnedState = { neighs: [], fdbs: [], routes: [] };
  for (const e of entries) {
    if (e.neigh) s.neighs.push(e.neigh);
    if (e.fdb) s.fdbs.push(e.fdb);
    s.routes.push(e.route);
  }
  return s;
}

/** An operation in iproute2 words, for logs. */
export function describeOp(
  op: Op,
  devName: (index?: number) => string,
): string {
  switch (op.kind) {
    case "neighSet":
    case "neighDel":
      return `ip neigh ${
        op.kind === "neighSet" ? "replace" : "del"
      } ${op.neigh.dst}${
        op.neigh.lladdr ? ` lladdr ${op.neigh.lladdr}` : ""
      } dev ${devName(op.neigh.index)}${
        op.kind === "neighSet" ? " nud permanent" : ""
      }`;
    case "fdbSet":
    case "fdbDel":
      return `bridge fdb ${
        op.kind === "fdbSet" ? "replace" : "del"
      } ${op.fdb.lladdr} dev ${devName(op.fdb.index)}${
        op.fdb.dst ? ` dst ${op.fdb.dst}` : ""
      } self${op.kind === "fdbSet" ? " permanent" : ""}`;
    case "routeAdd":
    case "routeReplace":
    case "routeDel":
      return `ip route ${op.kind.slice(5).toLowerCase()} ${
        describeRoute(op.route, devName, RTPROT_WEFT)
      }`;
    case "routeHeld":
      return `(waiting) ${describeRoute(op.route, devName, RTPROT_WEFT)}`;
  }
}
