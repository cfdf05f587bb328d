/**
 * An in-memory {@linkcode Netlink} with the kernel's semantics where weft
 * depends on them (replace vs. exclusive add, deleting a device drops its
 * neighbours, FDB entries, addresses and routes, longest-prefix route
 * lookup), plus fault injection. Unit tests of the backend run on it
 * without root.
 *
 * @module
 */
import {
  type AddrInfo,
  type FdbInfo,
  KernelError,
  type LinkInfo,
  type LinkSpec,
  type NeighInfo,
  type Netlink,
  NLE_EXIST,
  NLE_NODEV,
  NLE_OBJ_NOTFOUND,
  NLE_OPNOTSUPP,
  type RouteFilter,
  type RouteInfo,
  RT_TABLE_MAIN,
  type VxlanLinkSpec,
} from "../ffi/types.ts";
import { netContainsIp, parseIp, parseIpNet } from "../lib/ip.ts";

/** Decides whether an operation fails: return a libnl code to fail it. */
export type FaultHook = (op: string, object: unknown) => number | undefined;

/** A simulated kernel. Fields are public so tests can inspect and tamper. */
export class MemoryKernel implements Netlink {
  links = new Map<number, LinkInfo>();
  addrs: AddrInfo[] = [];
  routes: RouteInfo[] = [];
  neighs: NeighInfo[] = [];
  fdbs: FdbInfo[] = [];
  /** Count of mutating calls, by method name. */
  calls = new Map<string, number>();
  fault: FaultHook | undefined;
  #nextIndex = 10;

  /** Adds a plain device (an underlay interface) and returns it. */
  addDevice(name: string, mtu = 1500, up = true): LinkInfo {
    const link: LinkInfo = {
      index: this.#nextIndex++,
      name,
      mtu,
      up,
      mac: "02:00:00:00:00:" + this.#nextIndex.toString(16).padStart(2, "0"),
    };
    this.links.set(link.index, link);
    return link;
  }

  #count(op: string, object: unknown): void {
    this.calls.set(op, (this.calls.get(op) ?? 0) + 1);
    const code = this.fault?.(op, object);
    if (code !== undefined) {
      throw new KernelError(op, JSON.stringify(object), code, "injected fault");
    }
  }

  #dev(index: number | undefined, op: string): LinkInfo {
    const l = index === undefined ? undefined : this.links.get(index);
    if (!l) {
      throw new KernelError(op, `dev ${index}`, NLE_NODEV, "No such device");
    }
    return l;
  }

  linkByName(name: string): LinkInfo | undefined {
    return [...this.links.values()].find((l) => l.name === name);
  }
  linkByIndex(index: number): LinkInfo | undefined {
    return this.links.get(index);
  }
  linkList(): LinkInfo[] {
    return [...this.links.values()];
  }
  linkAddVxlan(spec: VxlanLinkSpec): LinkInfo {
    this.#count("linkAddVxlan", spec);
    if (this.linkByName(spec.name)) {
      throw new KernelError("link add", spec.name, NLE_EXIST, "Object exists");
    }
    const link: LinkInfo = {
      index: this.#nextIndex++,
      name: spec.name,
      kind: "vxlan",
      mtu: spec.mtu,
      mac: spec.mac,
      up: false,
      vxlan: {
        vni: spec.vni,
        local: spec.local,
        linkIndex: spec.linkIndex,
        port: spec.port === 0 ? 8472 : spec.port,
        learning: spec.learning,
        gbp: spec.gbp,
      },
    };
    this.links.set(link.index, link);
    return link;
  }
  /** Kinds {@linkcode linkAdd} creates; others fail as unsupported. */
  kinds = new Set(["dummy", "wireguard"]);
  linkAdd(spec: LinkSpec): LinkInfo {
    this.#count("linkAdd", spec);
    if (!this.kinds.has(spec.kind)) {
      throw new KernelError(
        "link add",
        `${spec.name} type ${spec.kind}`,
        NLE_OPNOTSUPP,
        "Operation not supported",
      );
    }
    if (this.linkByName(spec.name)) {
      throw new KernelError("link add", spec.name, NLE_EXIST, "Object exists");
    }
    const link: LinkInfo = {
      index: this.#nextIndex++,
      name: spec.name,
      kind: spec.kind,
      mtu: spec.mtu,
      up: false,
    };
    this.links.set(link.index, link);
    return link;
  }
  linkDel(index: number): void {
    this.#count("linkDel", index);
    this.#dev(index, "link del");
    this.links.delete(index);
    this.addrs = this.addrs.filter((a) => a.index !== index);
    this.routes = this.routes.filter((r) => r.index !== index);
    this.neighs = this.neighs.filter((n) => n.index !== index);
    this.fdbs = this.fdbs.filter((f) => f.index !== index);
  }
  linkSetUp(index: number): void {
    this.#count("linkSetUp", index);
    this.links.set(index, { ...this.#dev(index, "link set up"), up: true });
  }
  linkSetMtu(index: number, mtu: number): void {
    this.#count("linkSetMtu", index);
    this.links.set(index, { ...this.#dev(index, "link set mtu"), mtu });
  }
  addrList(index?: number, family?: 4 | 6): AddrInfo[] {
    return this.addrs.filter((a) =>
      (index === undefined || a.index === index) &&
      (family === undefined || (family === 6) === a.local.includes(":"))
    );
  }
  addrAdd(addr: AddrInfo): void {
    this.#count("addrAdd", addr);
    this.#dev(addr.index, "addr add");
    if (
      this.addrs.some((a) => a.index === addr.index && a.local === addr.local)
    ) {
      throw new KernelError("addr add", addr.local, NLE_EXIST, "Object exists");
    }
    this.addrs.push(addr);
  }
  addrDel(addr: AddrInfo): void {
    this.#count("addrDel", addr);
    const n = this.addrs.length;
    this.addrs = this.addrs.filter((a) =>
      !(a.index === addr.index && a.local === addr.local)
    );
    if (this.addrs.length === n) {
      throw new KernelError(
        "addr del",
        addr.local,
        NLE_OBJ_NOTFOUND,
        "Object not found",
      );
    }
  }
  routeList(filter: RouteFilter = {}): RouteInfo[] {
    // Unicast routes only unless asked, as the kernel dump in ffi/.
    return this.routes.filter((r) =>
      (!r.blackhole || filter.blackholes === true) &&
      (filter.index === undefined || r.index === filter.index) &&
      (r.table ?? RT_TABLE_MAIN) === (filter.table ?? RT_TABLE_MAIN) &&
      (filter.family === undefined ||
        (filter.family === 6) === r.dst.includes(":"))
    );
  }
  routeReplace(route: RouteInfo): void {
    this.#count("routeReplace", route);
    this.#dev(route.index, "route replace");
    const table = route.table ?? RT_TABLE_MAIN;
    this.routes = this.routes.filter((r) =>
      !(r.dst === route.dst && (r.table ?? RT_TABLE_MAIN) === table)
    );
    this.routes.push({ ...route, table, protocol: route.protocol ?? 3 });
  }
  routeAdd(route: RouteInfo): void {
    this.#count("routeAdd", route);
    const table = route.table ?? RT_TABLE_MAIN;
    if (
      this.routes.some((r) =>
        r.dst === route.dst && (r.table ?? RT_TABLE_MAIN) === table
      )
    ) {
      throw new KernelError("route add", route.dst, NLE_EXIST, "Object exists");
    }
    if (!route.blackhole) this.#dev(route.index, "route add");
    this.routes.push({ ...route, table });
  }
  routeDel(route: RouteInfo): void {
    this.#count("routeDel", route);
    const table = route.table ?? RT_TABLE_MAIN;
    const n = this.routes.length;
    // As the kernel: a gateway, device or protocol named in the delete
    // must match.
    this.routes = this.routes.filter((r) =>
      !(r.dst === route.dst && (r.table ?? RT_TABLE_MAIN) === table &&
        (route.gw === undefined || r.gw === route.gw) &&
        (route.index === undefined || r.index === route.index) &&
        (!route.protocol || route.protocol === (r.protocol ?? 3)))
    );
    if (this.routes.length === n) {
      throw new KernelError(
        "route del",
        route.dst,
        NLE_OBJ_NOTFOUND,
        "Object not found",
      );
    }
  }
  routeGet(dst: string): RouteInfo[] {
    const ip = parseIp(dst);
    if (!ip.ok) throw new TypeError(ip.reason);
    let best: RouteInfo | undefined;
    let bestLen = -1;
    for (const r of this.routes) {
      const n = parseIpNet(r.dst);
      if (
        n.ok && netContainsIp(n.value, ip.value) && n.value.prefix > bestLen
      ) {
        best = r;
        bestLen = n.value.prefix;
      }
    }
    return best ? [best] : [];
  }
  neighList(index?: number, family?: 4 | 6): NeighInfo[] {
    return this.neighs.filter((n) =>
      (index === undefined || n.index === index) &&
      (family === undefined || (family === 6) === n.dst.includes(":"))
    );
  }
  neighSet(neigh: NeighInfo): void {
    this.#count("neighSet", neigh);
    this.#dev(neigh.index, "neigh replace");
    this.neighs = this.neighs.filter((n) =>
      !(n.index === neigh.index && n.dst === neigh.dst)
    );
    this.neighs.push(neigh);
  }
  neighDel(neigh: NeighInfo): void {
    this.#count("neighDel", neigh);
    const n = this.neighs.length;
    this.neighs = this.neighs.filter((x) =>
      !(x.index === neigh.index && x.dst === neigh.dst)
    );
    if (this.neighs.length === n) {
      throw new KernelError(
        "neigh del",
        neigh.dst,
        NLE_OBJ_NOTFOUND,
        "Object not found",
      );
    }
  }
  fdbList(index?: number): FdbInfo[] {
    return this.fdbs.filter((f) => index === undefined || f.index === index);
  }
  fdbSet(fdb: FdbInfo): void {
    this.#count("fdbSet", fdb);
    this.#dev(fdb.index, "fdb replace");
    // A vxlan FDB replace updates the remote of an existing MAC entry.
    this.fdbs = this.fdbs.filter((f) =>
      !(f.index === fdb.index && f.lladdr === fdb.lladdr)
    );
    this.fdbs.push(fdb);
  }
  fdbDel(fdb: FdbInfo): void {
    this.#count("fdbDel", fdb);
    const n = this.fdbs.length;
    this.fdbs = this.fdbs.filter((f) =>
      !(f.index === fdb.index && f.lladdr === fdb.lladdr &&
        (fdb.dst === undefined || f.dst === fdb.dst))
    );
    if (this.fdbs.length === n) {
      throw new KernelError(
        "fdb del",
        fdb.lladdr,
        NLE_OBJ_NOTFOUND,
        "Object not found",
      );
    }
  }
}
