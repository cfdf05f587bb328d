/**
 * Reading a node's VXLAN dataplane back from the kernel (iproute2 JSON)
 * and comparing it with what flanneld would program for each peer: the
 * neighbour `<subnet .0> lladdr <VtepMAC> PERMANENT`, the FDB entry
 * `<VtepMAC> dst <PublicIP> self permanent` and the route
 * `<subnet> via <subnet .0> dev flannel.1 onlink`.
 *
 * @module
 */
import type { ClusterNode } from "../_cluster.ts";
import type { PublishedNode } from "./_scenario.ts";

/** The VXLAN device name for VNI 1. */
export const VXLAN_DEV = "flannel.1";

interface LinkJson {
  ifname: string;
  address: string;
  mtu: number;
  flags: string[];
  linkinfo?: {
    info_kind?: string;
    info_data?: {
      id?: number;
      local?: string;
      link?: string;
      port?: number;
      learning?: boolean;
    };
  };
}

interface RouteJson {
  dst: string;
  gateway?: string;
  dev?: string;
  flags?: string[];
}

interface NeighJson {
  dst: string;
  lladdr?: string;
  state?: string[];
}

interface FdbJson {
  mac: string;
  dst?: string;
  flags?: string[];
  state?: string;
}

/** A node's flannel.1 and everything routed through it. */
export interface KernelView {
  readonly link: LinkJson | undefined;
  /** IPv4 addresses on flannel.1, `a.b.c.d/len`. */
  readonly addrs: string[];
  readonly routes: RouteJson[];
  readonly neighs: NeighJson[];
  readonly fdb: FdbJson[];
}

/** Reads flannel.1, its addresses, the routes, neighbours and FDB. */
export async function kernelView(node: ClusterNode): Promise<KernelView> {
  const links = await node.ns.json<LinkJson[]>("-d", "link", "show");
  const link = links.find((l) => l.ifname === VXLAN_DEV);
  if (!link) {
    return { link, addrs: [], routes: [], neighs: [], fdb: [] };
  }
  const addrs = (await node.ns.json<
    { addr_info: { family: string; local: string; prefixlen: number }[] }[]
  >("-4", "addr", "show", "dev", VXLAN_DEV))
    .flatMap((l) => l.addr_info)
    .map((a) => `${a.local}/${a.prefixlen}`);
  return {
    link,
    addrs,
    routes: await node.ns.json<RouteJson[]>("-4", "route", "show"),
    neighs: await node.ns.json<NeighJson[]>(
      "-4",
      "neigh",
      "show",
      "dev",
      VXLAN_DEV,
    ),
    fdb: await node.ns.json<FdbJson[]>(
      "bridge",
      "fdb",
      "show",
      "dev",
      VXLAN_DEV,
    ),
  };
}

/** `10.244.7.0/24` → `10.244.7.0`. */
export function subnetAddr(subnet: string): string {
  return subnet.split("/")[0]!;
}

/** The route flanneld installs for a peer, if present. */
export function peerRoute(v: KernelView, p: PublishedNode) {
  return v.routes.find((r) => r.dst === p.subnet);
}

/** What is missing or wrong for peer `p` on a node (empty when right). */
export function peerProblems(v: KernelView, p: PublishedNode): string[] {
  const gw = subnetAddr(p.subnet);
  const problems: string[] = [];
  const r = peerRoute(v, p);
  if (
    !r || r.gateway !== gw || r.dev !== VXLAN_DEV ||
    !(r.flags ?? []).includes("onlink")
  ) {
    problems.push(
      `route "${p.subnet} via ${gw} dev ${VXLAN_DEV} onlink" (have ${
        JSON.stringify(r ?? null)
      })`,
    );
  }
  const n = v.neighs.find((n) => n.dst === gw);
  if (
    !n || n.lladdr !== p.vtepMAC || !(n.state ?? []).includes("PERMANENT")
  ) {
    problems.push(
      `neighbour "${gw} lladdr ${p.vtepMAC} PERMANENT" (have ${
        JSON.stringify(n ?? null)
      })`,
    );
  }
  const f = v.fdb.find((f) => f.mac === p.vtepMAC);
  if (
    !f || f.dst !== p.publicIP || !(f.flags ?? []).includes("self") ||
    f.state !== "permanent"
  ) {
    problems.push(
      `fdb "${p.vtepMAC} dst ${p.publicIP} self permanent" (have ${
        JSON.stringify(f ?? null)
      })`,
    );
  }
  return problems;
}

/** Entries for peer `p` still on a node (empty when all gone). */
export function peerLeftovers(v: KernelView, p: PublishedNode): string[] {
  const gw = subnetAddr(p.subnet);
  return [
    ...v.routes.filter((r) => r.dst === p.subnet).map((r) =>
      `route ${JSON.stringify(r)}`
    ),
    ...v.neighs.filter((n) => n.dst === gw).map((n) =>
      `neighbour ${JSON.stringify(n)}`
    ),
    ...v.fdb.filter((f) => f.mac === p.vtepMAC || f.dst === p.publicIP).map(
      (f) => `fdb ${JSON.stringify(f)}`,
    ),
  ];
}

/**
 * Polls `cond` every `stepMs` until it is true; returns the elapsed ms, or
 * undefined after `timeoutMs`.
 */
export async function waitFor(
  cond: () => Promise<boolean>,
  timeoutMs: number,
  stepMs = 20,
): Promise<number | undefined> {
  const start = performance.now();
  for (;;) {
    if (await cond()) return performance.now() - start;
    if (performance.now() - start > timeoutMs) return undefined;
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
