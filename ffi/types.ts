/**
 * Kernel objects as plain TypeScript values, and the {@linkcode Netlink}
 * interface through which everything above `ffi/` reads and changes them.
 * `ffi/netlink.ts` implements it over libnl-route-3; `backend/memory_kernel.ts`
 * implements it in memory for tests. Addresses are canonical strings
 * (see `lib/ip.ts`), MACs lower-case `aa:bb:cc:dd:ee:ff`.
 *
 * @module
 */

/** Address family as the kernel numbers it. */
export const AF_INET = 2;
/** IPv6 address family. */
export const AF_INET6 = 10;
/** Bridge family, used for FDB entries. */
export const AF_BRIDGE = 7;

/** Neighbour state: entry never expires. */
export const NUD_PERMANENT = 0x80;
/** Neighbour flag: the entry is the device's own (FDB on a vxlan device). */
export const NTF_SELF = 0x02;

/** Route scope: universe (the default for a route via a gateway). */
export const RT_SCOPE_UNIVERSE = 0;
/** Route scope: link (directly connected). */
export const RT_SCOPE_LINK = 253;
/** The main routing table. */
export const RT_TABLE_MAIN = 254;

/** Route protocol of `ip route` and of flanneld's routes (vishvananda/netlink's default). */
export const RTPROT_BOOT = 3;
/**
 * Route protocol weft marks its routes with (`ip route show proto 87`):
 * unassigned in iproute2's `rt_protos`. Only routes carrying it are ever
 * deleted, and the delete names it, so the kernel itself refuses to
 * remove a route someone else installed in the meantime.
 */
export const RTPROT_WEFT = 87;

/** VXLAN attributes of a link, as `ip -d link show` prints them. */
export interface VxlanInfo {
  /** VXLAN network identifier (`id`). */
  readonly vni: number;
  /** Local (source) address of the tunnel, if set. */
  readonly local?: string;
  /** Index of the underlay device (`dev`), if set. */
  readonly linkIndex?: number;
  /** UDP destination port; 0 means the kernel default (8472). */
  readonly port: number;
  /** Whether source-address learning is on. */
  readonly learning: boolean;
  /** Whether Group Based Policy extension is on. */
  readonly gbp: boolean;
}

/** A network device. */
export interface LinkInfo {
  readonly index: number;
  readonly name: string;
  /** `vxlan`, `veth`, `bridge`, ... or undefined for plain devices. */
  readonly kind?: string;
  readonly mtu: number;
  /** Hardware address, lower case; undefined when the device has none. */
  readonly mac?: string;
  /** Administratively up (IFF_UP). */
  readonly up: boolean;
  readonly vxlan?: VxlanInfo;
}

/** What to create with {@linkcode Netlink.linkAddVxlan}. */
export interface VxlanLinkSpec {
  readonly name: string;
  readonly vni: number;
  /** UDP port; 0 lets the kernel use its default (8472). */
  readonly port: number;
  readonly local: string;
  readonly linkIndex: number;
  readonly learning: boolean;
  readonly gbp: boolean;
  readonly mtu: number;
  readonly mac: string;
}

/**
 * What to create with {@linkcode Netlink.linkAdd}: a device of a kind with
 * no attributes of its own (`wireguard`).
 */
export interface LinkSpec {
  readonly name: string;
  /** `IFLA_INFO_KIND`: `wireguard`, `dummy`, ... */
  readonly kind: string;
  readonly mtu: number;
}

/** An address on a device: `local` is `addr/prefix`. */
export interface AddrInfo {
  readonly index: number;
  readonly local: string;
  /** IFA_F_* flags (permanent, deprecated, temporary, ...) when read back. */
  readonly flags?: number;
}

/** A route. `dst` is a canonical prefix (`0.0.0.0/0` for the default). */
export interface RouteInfo {
  readonly dst: string;
  readonly gw?: string;
  /** Output device index. */
  readonly index?: number;
  readonly onlink?: boolean;
  /** Defaults to universe. */
  readonly scope?: number;
  /** Defaults to main (254). */
  readonly table?: number;
  /** Preferred source address, if any. */
  readonly src?: string;
  /** A blackhole route (`ip route add blackhole DST`): no nexthop. */
  readonly blackhole?: boolean;
  /**
   * Who installed it (`proto`). Written as given, else boot; on delete,
   * only a route of this protocol matches (none given: any).
   */
  readonly protocol?: number;
}

/** An IPv4/IPv6 neighbour (ARP/NDP) entry. */
export interface NeighInfo {
  readonly index: number;
  readonly dst: string;
  readonly lladdr?: string;
  /** NUD_* state bits. */
  readonly state: number;
}

/** A bridge forwarding database entry on a vxlan device. */
export interface FdbInfo {
  readonly index: number;
  readonly lladdr: string;
  /** Remote VTEP address. */
  readonly dst?: string;
  /** NUD_* state bits. */
  readonly state: number;
  /** NTF_* flags. */
  readonly flags: number;
}

/** Filter for {@linkcode Netlink.routeList}. */
export interface RouteFilter {
  readonly family?: 4 | 6;
  /** Only routes through this device. */
  readonly index?: number;
  /** Only routes of this table; defaults to main. */
  readonly table?: number;
  /**
   * Also blackhole routes (`blackhole: true`); by default only unicast
   * routes are listed.
   */
  readonly blackholes?: boolean;
}

/**
 * Synchronous access to rtnetlink. Verbs follow vishvananda/netlink:
 * add = create + exclusive, set/replace = create + replace, del of a
 * missing object throws a {@linkcode KernelError} with `notFound` true.
 */
export interface Netlink {
  linkByName(name: string): LinkInfo | undefined;
  linkByIndex(index: number): LinkInfo | undefined;
  linkList(): LinkInfo[];
  linkAddVxlan(spec: VxlanLinkSpec): LinkInfo;
  /** `ip link add NAME mtu MTU type KIND` (create + exclusive). */
  linkAdd(spec: LinkSpec): LinkInfo;
  linkDel(index: number): void;
  linkSetUp(index: number): void;
  linkSetMtu(index: number, mtu: number): void;
  addrList(index?: number, family?: 4 | 6): AddrInfo[];
  addrAdd(addr: AddrInfo): void;
  addrDel(addr: AddrInfo): void;
  routeList(filter?: RouteFilter): RouteInfo[];
  routeReplace(route: RouteInfo): void;
  /** Adds a route, failing with NLE_EXIST when one is there (create + excl). */
  routeAdd(route: RouteInfo): void;
  routeDel(route: RouteInfo): void;
  /** Routes the kernel would use to reach `dst` (`ip route get`). */
  routeGet(dst: string): RouteInfo[];
  neighList(index?: number, family?: 4 | 6): NeighInfo[];
  neighSet(neigh: NeighInfo): void;
  neighDel(neigh: NeighInfo): void;
  fdbList(index?: number): FdbInfo[];
  fdbSet(fdb: FdbInfo): void;
  fdbDel(fdb: FdbInfo): void;
}

/**
 * A failed kernel operation. `message` names the operation, the object and
 * the cause: `route replace 10.244.1.0/24 via 10.244.1.0 dev flannel.1:
 * Object not found`.
 */
export class KernelError extends Error {
  /** The operation: `route replace`, `neigh del`, ... */
  readonly op: string;
  /** The object in iproute2 words. */
  readonly object: string;
  /** libnl's NLE_* code (positive), or 0 when not from libnl. */
  readonly code: number;

  constructor(op: string, object: string, code: number, cause: string) {
    super(`${op} ${object}: ${cause}`);
    this.name = "KernelError";
    this.op = op;
    this.object = object;
    this.code = code;
  }

  /** The object already exists (NLE_EXIST). */
  get exists(): boolean {
    return this.code === NLE_EXIST;
  }

  /** The object (or the device it names) does not exist. */
  get notFound(): boolean {
    return this.code === NLE_OBJ_NOTFOUND || this.code === NLE_NODEV;
  }
}

/** libnl: object exists. */
export const NLE_EXIST = 6;
/** libnl: operation not supported (a link kind the kernel lacks). */
export const NLE_OPNOTSUPP = 10;
/** libnl: object not found. */
export const NLE_OBJ_NOTFOUND = 12;
/** libnl: no such device. */
export const NLE_NODEV = 31;

/** Kernel notifications counted by type. */
export interface ChangeCounts {
  readonly newLink: number;
  readonly delLink: number;
  readonly newAddr: number;
  readonly delAddr: number;
  readonly newRoute: number;
  readonly delRoute: number;
  readonly newNeigh: number;
  readonly delNeigh: number;
  readonly newFdb: number;
  readonly delFdb: number;
}

/**
 * What one wake-up of a {@linkcode NetlinkMonitor} saw: notifications
 * counted by type, and the device indexes they named. Neighbour messages of
 * family AF_BRIDGE count as FDB.
 */
export interface NotificationSummary extends ChangeCounts {
  /**
   * The same counts by the device index each message named (a route by
   * its RTA_OIF; 0 when it names none), so that changes on one's own
   * devices can be told from the rest.
   */
  readonly byIndex: ReadonlyMap<number, ChangeCounts>;
  /**
   * Device indexes named by link, address and route messages,
   * deduplicated, in order seen.
   */
  readonly indexes: readonly number[];
  /**
   * Device indexes named by neighbour and FDB messages, apart: on the
   * external interface these are ARP and NDP state changes of the
   * underlay, which come and go with traffic and are nobody's drift.
   */
  readonly neighIndexes: readonly number[];
  /**
   * The kernel dropped notifications (ENOBUFS): what changed is unknown,
   * so the caller should resync everything.
   */
  readonly overrun: boolean;
}

/**
 * Kernel change notifications (`ip monitor link address route neigh`).
 * `next()` waits without blocking the JS thread; `close()` makes a pending
 * `next()` reject promptly with `Deno.errors.BadResource`.
 */
export interface NetlinkMonitor {
  next(): Promise<NotificationSummary>;
  close(): void;
}
