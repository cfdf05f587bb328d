/**
 * {@linkcode Netlink} over libnl-route-3: one NETLINK_ROUTE socket, reused
 * for every call, optionally opened inside another network namespace (a
 * netlink socket acts in the namespace it was created in, so tests can
 * drive a throwaway namespace from inside the test process).
 *
 * Everything that crosses into C is checked first (see `validate.ts`), every
 * libnl object is owned by an {@linkcode Owned} and freed exactly once, and
 * every failure is a {@linkcode KernelError} in iproute2 words.
 *
 * @example
 * ```ts
 * using nl = openNetlink({ netns: "/run/netns/node1" });
 * const link = nl.linkByName("flannel.1");
 * ```
 *
 * @module
 */
import { inNetns, type Owned, owned } from "./_native.ts";
import {
  check,
  errno,
  errnoText,
  kernelError,
  type Libs,
  libs,
} from "./libnl.ts";
import {
  errorCode,
  type NlMsg,
  NLMSG_DONE,
  NLMSG_ERROR,
  parseMessages,
  parseRouteMessage,
  RTA_DST,
  RTM_GETROUTE,
  RTM_NEWROUTE,
  RTMSG_LEN,
} from "./nlmsg.ts";
import {
  type AddrInfo,
  AF_BRIDGE,
  AF_INET,
  AF_INET6,
  type FdbInfo,
  KernelError,
  type LinkInfo,
  type LinkSpec,
  type NeighInfo,
  type Netlink,
  NLE_OBJ_NOTFOUND,
  type RouteFilter,
  type RouteInfo,
  RT_SCOPE_LINK,
  RT_SCOPE_UNIVERSE,
  RT_TABLE_MAIN,
  RTPROT_BOOT,
  type VxlanInfo,
  type VxlanLinkSpec,
} from "./types.ts";
import {
  type AddrBytes,
  bytesToIp,
  bytesToMac,
  checkIndex,
  checkMtu,
  checkName,
  checkPort,
  checkUint,
  checkVni,
  cidrBytes,
  describeAddr,
  describeFdb,
  describeNeigh,
  describeRoute,
  describeVxlan,
  invalid,
  ipBytes,
  macBytes,
} from "./validate.ts";

const NETLINK_ROUTE = 0;
const NLM_F_REQUEST = 0x1;
const NLM_F_DUMP = 0x300;
const NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
const NLM_F_REPLACE = 0x100;
const IFF_UP = 0x1;
const AF_LLC = 26; // libnl's family for link-layer addresses
const AF_UNSPEC = 0;
const RTN_UNICAST = 1;
const RTN_BLACKHOLE = 6;
const RTPROT_UNSPEC = 0; // on delete: match routes of any protocol
const RTNH_F_ONLINK = 4;
const RTNL_LINK_VXLAN_F_GBP = 1;
const NLE_NOADDR = 19;
const ENETUNREACH = 101;
const EHOSTUNREACH = 113;

const encoder = new TextEncoder();

/** Options of {@linkcode openNetlink}. */
export interface OpenNetlinkOptions {
  /**
   * Path of a network namespace (`/run/netns/NAME`) to act in. Default: the
   * namespace of the calling thread.
   */
  readonly netns?: string;
}

/**
 * Opens a NETLINK_ROUTE socket through libnl (in `opts.netns` if given).
 * Needs `--allow-ffi` (and root, or CAP_NET_ADMIN, to change anything).
 */
export function openNetlink(opts: OpenNetlinkOptions = {}): LibnlNetlink {
  const l = libs();
  const connect = () => {
    const sk = owned(l.nl.nl_socket_alloc(), l.nl.nl_socket_free, "nl_sock");
    try {
      check(
        l.nl.nl_connect(sk.ptr, NETLINK_ROUTE),
        "netlink connect",
        "NETLINK_ROUTE",
      );
      // libnl peeks at every reply to size its buffer, which costs a second
      // recvmsg per call; a fixed 32 KiB buffer (enough for any single
      // rtnetlink reply weft reads this way) makes it one.
      l.nl.nl_socket_disable_msg_peek(sk.ptr);
      check(
        l.nl.nl_socket_set_msg_buf_size(sk.ptr, 32768n),
        "netlink buffer",
        "32768 bytes",
      );
      return sk.release();
    } finally {
      sk[Symbol.dispose]();
    }
  };
  const sk = opts.netns === undefined
    ? connect()
    : inNetns(l, opts.netns, connect);
  return new LibnlNetlink(l, sk);
}

function isFamily(f: number): f is typeof AF_INET | typeof AF_INET6 {
  return f === AF_INET || f === AF_INET6;
}

/** The {@linkcode Netlink} implementation over libnl-route-3. */
export class LibnlNetlink implements Netlink, Disposable {
  readonly #l: Libs;
  #sk: Deno.PointerObject | null;
  readonly #out = new BigUint64Array(1);
  readonly #u32 = new Uint32Array(1);
  readonly #recvBuf = new Uint8Array(64 * 1024);

  /** Use {@linkcode openNetlink}. */
  constructor(l: Libs, sk: Deno.PointerObject) {
    this.#l = l;
    this.#sk = sk;
  }

  /** Closes the socket; later calls throw. Idempotent. */
  close(): void {
    const sk = this.#sk;
    this.#sk = null;
    if (sk !== null) this.#l.nl.nl_socket_free(sk);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  get #socket(): Deno.PointerObject {
    if (this.#sk === null) throw new Error("Netlink handle is closed");
    return this.#sk;
  }

  /** Device name for messages; never throws. */
  #devName = (index: number): string | undefined => {
    try {
      return this.linkByIndex(index)?.name;
    } catch {
      return undefined;
    }
  };

  #outPtr(): Deno.PointerValue {
    return Deno.UnsafePointer.create(this.#out[0]!);
  }

  #addr(a: AddrBytes, what: string): Owned {
    const nl = this.#l.nl;
    const p = owned(
      nl.nl_addr_build(
        a.family === 4 ? AF_INET : AF_INET6,
        a.bytes,
        BigInt(a.bytes.length),
      ),
      nl.nl_addr_put,
      what,
    );
    nl.nl_addr_set_prefixlen(p.ptr, a.prefix);
    return p;
  }

  #mac(bytes: Uint8Array): Owned {
    const nl = this.#l.nl;
    return owned(
      nl.nl_addr_build(AF_LLC, bytes, BigInt(bytes.length)),
      nl.nl_addr_put,
      "lladdr",
    );
  }

  #bytes(addr: Deno.PointerValue): Uint8Array | undefined {
    if (addr === null) return undefined;
    const nl = this.#l.nl;
    const len = nl.nl_addr_get_len(addr);
    const out = new Uint8Array(len);
    if (len === 0) return out;
    const p = nl.nl_addr_get_binary_addr(addr);
    if (p === null) return undefined;
    new Deno.UnsafePointerView(p).copyInto(out);
    return out;
  }

  #ip(addr: Deno.PointerValue): string | undefined {
    const b = this.#bytes(addr);
    return b && (b.length === 4 || b.length === 16) ? bytesToIp(b) : undefined;
  }

  /** Walks a cache, freeing it afterwards. */
  *#walk(
    alloc: (out: BigUint64Array) => number,
    op: string,
  ): Generator<Deno.PointerObject> {
    const nl = this.#l.nl;
    check(alloc(this.#out), op, "all");
    using cache = owned(this.#outPtr(), nl.nl_cache_free, "cache");
    for (
      let o = nl.nl_cache_get_first(cache.ptr);
      o !== null;
      o = nl.nl_cache_get_next(o)
    ) {
      yield o;
    }
  }

  // ---- links ----------------------------------------------------------------

  #linkInfo(link: Deno.PointerObject): LinkInfo {
    const { rtnl, nl } = this.#l;
    const namePtr = rtnl.rtnl_link_get_name(link);
    const kindPtr = rtnl.rtnl_link_get_type(link);
    const mac = this.#bytes(rtnl.rtnl_link_get_addr(link));
    const info: {
      -readonly [K in keyof LinkInfo]: LinkInfo[K];
    } = {
      index: rtnl.rtnl_link_get_ifindex(link),
      name: namePtr === null ? "" : Deno.UnsafePointerView.getCString(namePtr),
      mtu: rtnl.rtnl_link_get_mtu(link),
      up: (rtnl.rtnl_link_get_flags(link) & IFF_UP) !== 0,
    };
    if (kindPtr !== null) {
      info.kind = Deno.UnsafePointerView.getCString(kindPtr);
    }
    if (mac && mac.length > 0) info.mac = bytesToMac(mac);
    if (rtnl.rtnl_link_is_vxlan(link)) {
      const u = this.#u32;
      const vx: { -readonly [K in keyof VxlanInfo]: VxlanInfo[K] } = {
        vni: rtnl.rtnl_link_vxlan_get_id(link, u) === 0 ? u[0]! : 0,
        port: rtnl.rtnl_link_vxlan_get_port(link, u) === 0 ? u[0]! : 0,
        learning: rtnl.rtnl_link_vxlan_get_learning(link) > 0,
        gbp: rtnl.rtnl_link_vxlan_get_flags(link, u) === 0 &&
          (u[0]! & RTNL_LINK_VXLAN_F_GBP) !== 0,
      };
      if (rtnl.rtnl_link_vxlan_get_link(link, u) === 0 && u[0]! > 0) {
        vx.linkIndex = u[0]!;
      }
      if (rtnl.rtnl_link_vxlan_get_local(link, this.#out) === 0) {
        using local = owned(this.#outPtr(), nl.nl_addr_put, "local");
        const ip = this.#ip(local.ptr);
        if (ip !== undefined) vx.local = ip;
      }
      info.vxlan = vx;
    }
    return info;
  }

  #linkGet(
    index: number,
    name: string | null,
    op: string,
    object: string,
  ): LinkInfo | undefined {
    const { rtnl } = this.#l;
    const rc = rtnl.rtnl_link_get_kernel(
      this.#socket,
      index,
      name === null ? null : encoder.encode(name + "\0"),
      this.#out,
    );
    if (rc < 0) {
      const err = kernelError(rc, op, object);
      if (err.notFound) return undefined;
      throw err;
    }
    using link = owned(this.#outPtr(), rtnl.rtnl_link_put, "link");
    return this.#linkInfo(link.ptr);
  }

  /** The device called `name`, or undefined (`ip -d link show dev NAME`). */
  linkByName(name: string): LinkInfo | undefined {
    checkName(name, "link show", `dev ${name}`);
    return this.#linkGet(0, name, "link show", `dev ${name}`);
  }

  /** The device with this index, or undefined (`ip -d link show` by index). */
  linkByIndex(index: number): LinkInfo | undefined {
    checkIndex(index, "link show", `index ${index}`);
    return this.#linkGet(index, null, "link show", `index ${index}`);
  }

  /** Every device (`ip -d link show`). */
  linkList(): LinkInfo[] {
    const { rtnl } = this.#l;
    const out: LinkInfo[] = [];
    for (
      const o of this.#walk(
        (r) => rtnl.rtnl_link_alloc_cache(this.#socket, AF_UNSPEC, r),
        "link show",
      )
    ) {
      out.push(this.#linkInfo(o));
    }
    return out;
  }

  /**
   * Creates a VXLAN device and returns it as the kernel reports it:
   * `ip link add NAME mtu MTU address MAC type vxlan id VNI local LOCAL
   * dev LINK dstport PORT nolearning [gbp]` (create + exclusive). Port 0
   * leaves the kernel default (8472), which is what reads back.
   */
  linkAddVxlan(spec: VxlanLinkSpec): LinkInfo {
    const op = "link add";
    const object = () => describeVxlan(spec, this.#devName);
    const desc = describeVxlan(spec);
    checkName(spec.name, op, desc);
    checkVni(spec.vni, op, desc);
    checkPort(spec.port, op, desc);
    checkIndex(spec.linkIndex, op, desc);
    checkMtu(spec.mtu, op, desc);
    const mac = macBytes(spec.mac, op, desc);
    const local = ipBytes(spec.local, op, desc);
    const { rtnl } = this.#l;
    using link = owned(
      rtnl.rtnl_link_vxlan_alloc(),
      rtnl.rtnl_link_put,
      "vxlan link",
    );
    using localAddr = this.#addr(local, "local");
    using macAddr = this.#mac(mac);
    const l = link.ptr;
    rtnl.rtnl_link_set_name(l, encoder.encode(spec.name + "\0"));
    rtnl.rtnl_link_set_mtu(l, spec.mtu);
    rtnl.rtnl_link_set_addr(l, macAddr.ptr);
    check(rtnl.rtnl_link_vxlan_set_id(l, spec.vni), op, object);
    check(rtnl.rtnl_link_vxlan_set_local(l, localAddr.ptr), op, object);
    check(rtnl.rtnl_link_vxlan_set_link(l, spec.linkIndex), op, object);
    if (spec.port !== 0) {
      check(rtnl.rtnl_link_vxlan_set_port(l, spec.port), op, object);
    }
    check(
      rtnl.rtnl_link_vxlan_set_learning(l, spec.learning ? 1 : 0),
      op,
      object,
    );
    check(rtnl.rtnl_link_vxlan_set_l2miss(l, 0), op, object);
    check(rtnl.rtnl_link_vxlan_set_l3miss(l, 0), op, object);
    check(
      rtnl.rtnl_link_vxlan_set_flags(
        l,
        RTNL_LINK_VXLAN_F_GBP,
        spec.gbp ? 1 : 0,
      ),
      op,
      object,
    );
    return this.#linkCreate(l, spec.name, object, desc);
  }

  /**
   * Creates a device of a kind that needs no attributes of its own:
   * `ip link add NAME mtu MTU type KIND` (create + exclusive). A kernel
   * without the kind refuses with "Operation not supported".
   */
  linkAdd(spec: LinkSpec): LinkInfo {
    const op = "link add";
    const desc = `${spec.name} mtu ${spec.mtu} type ${spec.kind}`;
    checkName(spec.name, op, desc);
    checkMtu(spec.mtu, op, desc);
    if (!/^[a-z0-9_-]{1,31}$/.test(spec.kind)) {
      throw invalid(op, desc, "invalid kind");
    }
    const { rtnl } = this.#l;
    using link = owned(rtnl.rtnl_link_alloc(), rtnl.rtnl_link_put, "link");
    const l = link.ptr;
    rtnl.rtnl_link_set_name(l, encoder.encode(spec.name + "\0"));
    rtnl.rtnl_link_set_mtu(l, spec.mtu);
    check(
      rtnl.rtnl_link_set_type(l, encoder.encode(spec.kind + "\0")),
      op,
      desc,
    );
    return this.#linkCreate(l, spec.name, desc, desc);
  }

  /** `rtnl_link_add` (create + exclusive), then the device as it reads back. */
  #linkCreate(
    l: Deno.PointerValue,
    name: string,
    object: string | (() => string),
    desc: string,
  ): LinkInfo {
    const op = "link add";
    check(
      this.#l.rtnl.rtnl_link_add(this.#socket, l, NLM_F_CREATE | NLM_F_EXCL),
      op,
      object,
    );
    const made = this.linkByName(name);
    if (made === undefined) {
      throw new KernelError(
        op,
        desc,
        NLE_OBJ_NOTFOUND,
        "Device vanished right after creation",
      );
    }
    return made;
  }

  /** Deletes a device (`ip link del dev NAME`). */
  linkDel(index: number): void {
    const op = "link del";
    checkIndex(index, op, `index ${index}`);
    const { rtnl } = this.#l;
    using link = owned(rtnl.rtnl_link_alloc(), rtnl.rtnl_link_put, "link");
    rtnl.rtnl_link_set_ifindex(link.ptr, index);
    check(
      rtnl.rtnl_link_delete(this.#socket, link.ptr),
      op,
      () => `dev ${this.#devName(index) ?? `if${index}`}`,
    );
  }

  #linkChange(
    index: number,
    op: string,
    what: string,
    set: (l: Deno.PointerObject) => void,
  ): void {
    const { rtnl } = this.#l;
    using link = owned(rtnl.rtnl_link_alloc(), rtnl.rtnl_link_put, "link");
    rtnl.rtnl_link_set_ifindex(link.ptr, index);
    set(link.ptr);
    check(
      rtnl.rtnl_link_change(this.#socket, link.ptr, link.ptr, 0),
      op,
      () => `dev ${this.#devName(index) ?? `if${index}`} ${what}`,
    );
  }

  /** Brings a device up (`ip link set dev NAME up`). */
  linkSetUp(index: number): void {
    checkIndex(index, "link set", `index ${index} up`);
    this.#linkChange(
      index,
      "link set",
      "up",
      (l) => this.#l.rtnl.rtnl_link_set_flags(l, IFF_UP),
    );
  }

  /** Sets a device's MTU (`ip link set dev NAME mtu MTU`). */
  linkSetMtu(index: number, mtu: number): void {
    checkIndex(index, "link set", `index ${index} mtu ${mtu}`);
    checkMtu(mtu, "link set", `index ${index} mtu ${mtu}`);
    this.#linkChange(
      index,
      "link set",
      `mtu ${mtu}`,
      (l) => this.#l.rtnl.rtnl_link_set_mtu(l, mtu),
    );
  }

  // ---- addresses --------------------------------------------------------------

  /** Addresses, optionally of one device and family (`ip addr show [dev NAME]`). */
  addrList(index?: number, family?: 4 | 6): AddrInfo[] {
    if (index !== undefined) checkIndex(index, "addr show", `index ${index}`);
    const { rtnl } = this.#l;
    const want = family === undefined ? 0 : family === 4 ? AF_INET : AF_INET6;
    const out: AddrInfo[] = [];
    for (
      const o of this.#walk(
        (r) => rtnl.rtnl_addr_alloc_cache(this.#socket, r),
        "addr show",
      )
    ) {
      const f = rtnl.rtnl_addr_get_family(o);
      if (!isFamily(f) || (want !== 0 && f !== want)) continue;
      const i = rtnl.rtnl_addr_get_ifindex(o);
      if (index !== undefined && i !== index) continue;
      const ip = this.#ip(rtnl.rtnl_addr_get_local(o));
      if (ip === undefined) continue;
      out.push({
        index: i,
        local: `${ip}/${rtnl.rtnl_addr_get_prefixlen(o)}`,
        flags: rtnl.rtnl_addr_get_flags(o),
      });
    }
    return out;
  }

  #addrObj(addr: AddrInfo, op: string): Owned {
    const desc = describeAddr(addr);
    checkIndex(addr.index, op, desc);
    const local = cidrBytes(addr.local, op, desc, false);
    const { rtnl } = this.#l;
    const a = owned(rtnl.rtnl_addr_alloc(), rtnl.rtnl_addr_put, "addr");
    try {
      rtnl.rtnl_addr_set_ifindex(a.ptr, addr.index);
      using nla = this.#addr(local, "local");
      check(rtnl.rtnl_addr_set_local(a.ptr, nla.ptr), op, desc);
      rtnl.rtnl_addr_set_prefixlen(a.ptr, local.prefix);
      return a;
    } catch (e) {
      a[Symbol.dispose]();
      throw e;
    }
  }

  /** Adds an address; an existing one is an error (`ip addr add LOCAL dev NAME`). */
  addrAdd(addr: AddrInfo): void {
    const op = "addr add";
    using a = this.#addrObj(addr, op);
    check(
      this.#l.rtnl.rtnl_addr_add(
        this.#socket,
        a.ptr,
        NLM_F_CREATE | NLM_F_EXCL,
      ),
      op,
      () => describeAddr(addr, this.#devName),
    );
  }

  /**
   * Removes an address (`ip addr del LOCAL dev NAME`). A missing address is
   * reported as `notFound` (the kernel says EADDRNOTAVAIL).
   */
  addrDel(addr: AddrInfo): void {
    const op = "addr del";
    using a = this.#addrObj(addr, op);
    const rc = this.#l.rtnl.rtnl_addr_delete(this.#socket, a.ptr, 0);
    if (rc >= 0) return;
    const err = kernelError(rc, op, describeAddr(addr, this.#devName));
    if (err.code === NLE_NOADDR) {
      // EADDRNOTAVAIL, which libnl words as a family mismatch: say it plainly.
      throw new KernelError(
        op,
        err.object,
        NLE_OBJ_NOTFOUND,
        "No such address",
      );
    }
    throw err;
  }

  // ---- routes -------------------------------------------------------------------

  /**
   * Unicast routes of one table (default main), optionally of one family and
   * device (`ip [-4|-6] route show [table T] [dev NAME]`). A multipath route
   * is listed once per nexthop.
   */
  routeList(filter: RouteFilter = {}): RouteInfo[] {
    const op = "route show";
    if (filter.index !== undefined) {
      checkIndex(filter.index, op, `index ${filter.index}`);
    }
    const table = checkUint(
      "table",
      filter.table ?? RT_TABLE_MAIN,
      2 ** 32 - 1,
      op,
      "",
    );
    const fam = filter.family === undefined
      ? AF_UNSPEC
      : filter.family === 4
      ? AF_INET
      : AF_INET6;
    // A raw dump parsed in TypeScript rather than rtnl_route_alloc_cache:
    // libnl's cache keys routes by (family, tos, table, dst, priority) and
    // silently keeps one of several IPv6 routes that differ only by device
    // (fe80::/64 on every link), which would hide routes from reconcile.
    const rtm = new Uint8Array(RTMSG_LEN);
    rtm[0] = fam;
    const out: RouteInfo[] = [];
    for (const m of this.#dump(RTM_GETROUTE, rtm, op)) {
      if (m.type !== RTM_NEWROUTE) continue;
      const r = parseRouteMessage(m.payload);
      if (r === undefined || r.table !== table) continue;
      const blackhole = r.type === RTN_BLACKHOLE;
      if (r.type !== RTN_UNICAST && !(blackhole && filter.blackholes)) {
        continue;
      }
      if (fam !== AF_UNSPEC && r.family !== fam) continue;
      for (const route of r.routes) {
        if (filter.index === undefined || route.index === filter.index) {
          out.push(blackhole ? { ...route, blackhole } : route);
        }
      }
    }
    return out;
  }

  /**
   * Sends a dump request (`header` is the family header) with nl_send, so
   * it goes out with sequence 0 and no ACK request and libnl's sequence
   * bookkeeping for this socket is untouched, then reads the answers up to
   * NLMSG_DONE. Messages are copied out of the receive buffer.
   */
  #dump(type: number, header: Uint8Array, op: string): NlMsg[] {
    const out: NlMsg[] = [];
    this.#request(
      type,
      NLM_F_REQUEST | NLM_F_DUMP,
      header,
      undefined,
      op,
      "all",
    );
    for (;;) {
      for (const m of this.#recv(op, "all")) {
        if (m.seq !== 0) continue;
        if (m.type === NLMSG_DONE) return out;
        if (m.type === NLMSG_ERROR) {
          const err = -errorCode(m);
          if (err !== 0) {
            throw kernelError(-this.#l.nl.nl_syserr2nlerr(err), op, "all");
          }
          continue;
        }
        out.push({ ...m, payload: m.payload.slice() });
      }
    }
  }

  /** Builds a request with libnl and sends it as is (see {@linkcode #dump}). */
  #request(
    type: number,
    flags: number,
    header: Uint8Array,
    attr: [number, Uint8Array] | undefined,
    op: string,
    object: string,
  ): void {
    const { nl } = this.#l;
    using msg = owned(
      nl.nlmsg_alloc_simple(type, flags),
      nl.nlmsg_free,
      "nl_msg",
    );
    check(
      nl.nlmsg_append(msg.ptr, header, BigInt(header.length), 4),
      op,
      object,
    );
    if (attr !== undefined) {
      check(nl.nla_put(msg.ptr, attr[0], attr[1].length, attr[1]), op, object);
    }
    check(nl.nl_send(this.#socket, msg.ptr), op, object);
  }

  /** One datagram from the socket, split into messages (views, not copies). */
  #recv(op: string, object: string): NlMsg[] {
    const fd = this.#l.nl.nl_socket_get_fd(this.#socket);
    const n = Number(
      this.#l.libc.recv(fd, this.#recvBuf, BigInt(this.#recvBuf.length), 0),
    );
    if (n < 0) {
      const e = errno();
      throw new KernelError(op, object, 0, `recv: ${errnoText(e)}`);
    }
    return parseMessages(this.#recvBuf.subarray(0, n));
  }

  #routeObj(route: RouteInfo, op: string, del: boolean): Owned {
    const desc = describeRoute(route);
    const dst = cidrBytes(route.dst, op, desc, true);
    const gw = route.gw === undefined ? undefined : ipBytes(route.gw, op, desc);
    const src = route.src === undefined
      ? undefined
      : ipBytes(route.src, op, desc);
    for (const a of [gw, src]) {
      if (a !== undefined && a.family !== dst.family) {
        throw invalid(
          op,
          desc,
          "Address family of gateway or source differs from destination",
        );
      }
    }
    if (route.index !== undefined) checkIndex(route.index, op, desc);
    const table = checkUint(
      "table",
      route.table ?? RT_TABLE_MAIN,
      2 ** 32 - 1,
      op,
      desc,
    );
    const scope = checkUint(
      "scope",
      route.scope ??
        (gw !== undefined || route.onlink || route.blackhole
          ? RT_SCOPE_UNIVERSE
          : RT_SCOPE_LINK),
      255,
      op,
      desc,
    );
    const { rtnl } = this.#l;
    const r = owned(rtnl.rtnl_route_alloc(), rtnl.rtnl_route_put, "route");
    try {
      const p = r.ptr;
      using dstAddr = this.#addr(dst, "dst");
      check(rtnl.rtnl_route_set_dst(p, dstAddr.ptr), op, desc);
      rtnl.rtnl_route_set_table(p, table);
      rtnl.rtnl_route_set_scope(p, scope);
      rtnl.rtnl_route_set_protocol(
        p,
        route.protocol ?? (del ? RTPROT_UNSPEC : RTPROT_BOOT),
      );
      check(
        rtnl.rtnl_route_set_type(
          p,
          route.blackhole ? RTN_BLACKHOLE : RTN_UNICAST,
        ),
        op,
        desc,
      );
      if (src !== undefined) {
        using s = this.#addr(src, "src");
        check(rtnl.rtnl_route_set_pref_src(p, s.ptr), op, desc);
      }
      if (route.onlink) rtnl.rtnl_route_set_flags(p, RTNH_F_ONLINK);
      if (gw !== undefined || route.index !== undefined) {
        using nh = owned(
          rtnl.rtnl_route_nh_alloc(),
          rtnl.rtnl_route_nh_free,
          "nexthop",
        );
        if (route.index !== undefined) {
          rtnl.rtnl_route_nh_set_ifindex(nh.ptr, route.index);
        }
        if (gw !== undefined) {
          using g = this.#addr(gw, "gateway");
          rtnl.rtnl_route_nh_set_gateway(nh.ptr, g.ptr);
        }
        if (route.onlink) rtnl.rtnl_route_nh_set_flags(nh.ptr, RTNH_F_ONLINK);
        rtnl.rtnl_route_add_nexthop(p, nh.release()); // the route owns it now
      }
      return r;
    } catch (e) {
      r[Symbol.dispose]();
      throw e;
    }
  }

  /**
   * Installs or replaces a route (`ip route replace DST via GW dev NAME
   * [onlink] [table T] [src SRC]`, create + replace). Scope defaults to
   * universe with a gateway or onlink, else link, as `ip route` does.
   */
  routeReplace(route: RouteInfo): void {
    const op = "route replace";
    using r = this.#routeObj(route, op, false);
    check(
      this.#l.rtnl.rtnl_route_add(
        this.#socket,
        r.ptr,
        NLM_F_CREATE | NLM_F_REPLACE,
      ),
      op,
      () => describeRoute(route, this.#devName),
    );
  }

  /**
   * Adds a route (`ip route add [blackhole] DST ...`, create + excl): an
   * existing route to DST of the same table and metric fails with
   * NLE_EXIST, so a connected route is never replaced.
   */
  routeAdd(route: RouteInfo): void {
    const op = "route add";
    using r = this.#routeObj(route, op, false);
    check(
      this.#l.rtnl.rtnl_route_add(
        this.#socket,
        r.ptr,
        NLM_F_CREATE | NLM_F_EXCL,
      ),
      op,
      () => describeRoute(route, this.#devName),
    );
  }

  /** Deletes a route (`ip route del DST [via GW] [dev NAME] [table T]`). */
  routeDel(route: RouteInfo): void {
    const op = "route del";
    using r = this.#routeObj(route, op, true);
    check(
      this.#l.rtnl.rtnl_route_delete(this.#socket, r.ptr, 0),
      op,
      () => describeRoute(route, this.#devName),
    );
  }

  /**
   * The route the kernel would use to reach `dst` (`ip route get DST`), with
   * `dst` as a host prefix; [] when the destination is unreachable.
   */
  routeGet(dst: string): RouteInfo[] {
    const op = "route get";
    const a = ipBytes(dst, op, dst);
    const rtm = new Uint8Array(RTMSG_LEN);
    rtm[0] = a.family === 4 ? AF_INET : AF_INET6; // rtm_family
    rtm[1] = a.prefix; // rtm_dst_len
    this.#request(
      RTM_GETROUTE,
      NLM_F_REQUEST,
      rtm,
      [RTA_DST, a.bytes],
      op,
      dst,
    );
    // One RTM_NEWROUTE or an NLMSG_ERROR answers, synchronously.
    for (;;) {
      for (const m of this.#recv(op, dst)) {
        if (m.seq !== 0) continue;
        if (m.type === RTM_NEWROUTE) {
          return parseRouteMessage(m.payload)?.routes ?? [];
        }
        if (m.type === NLMSG_ERROR) {
          const err = -errorCode(m);
          if (err === 0) continue;
          if (err === ENETUNREACH || err === EHOSTUNREACH) return [];
          throw kernelError(-this.#l.nl.nl_syserr2nlerr(err), op, dst);
        }
      }
    }
  }

  // ---- neighbours -----------------------------------------------------------------

  /** IPv4/IPv6 neighbours (`ip neigh show [dev NAME]`); no bridge FDB entries. */
  neighList(index?: number, family?: 4 | 6): NeighInfo[] {
    if (index !== undefined) checkIndex(index, "neigh show", `index ${index}`);
    const { rtnl } = this.#l;
    const want = family === undefined ? 0 : family === 4 ? AF_INET : AF_INET6;
    const out: NeighInfo[] = [];
    for (
      const o of this.#walk(
        (r) => rtnl.rtnl_neigh_alloc_cache(this.#socket, r),
        "neigh show",
      )
    ) {
      const f = rtnl.rtnl_neigh_get_family(o);
      if (!isFamily(f) || (want !== 0 && f !== want)) continue;
      const i = rtnl.rtnl_neigh_get_ifindex(o);
      if (index !== undefined && i !== index) continue;
      const dst = this.#ip(rtnl.rtnl_neigh_get_dst(o));
      if (dst === undefined) continue;
      const ll = this.#bytes(rtnl.rtnl_neigh_get_lladdr(o));
      out.push({
        index: i,
        dst,
        ...(ll !== undefined && ll.length > 0
          ? { lladdr: bytesToMac(ll) }
          : {}),
        state: rtnl.rtnl_neigh_get_state(o),
      });
    }
    return out;
  }

  #neighObj(neigh: NeighInfo, op: string, withLladdr: boolean): Owned {
    const desc = describeNeigh(neigh);
    checkIndex(neigh.index, op, desc);
    const dst = ipBytes(neigh.dst, op, desc);
    const ll = withLladdr && neigh.lladdr !== undefined
      ? macBytes(neigh.lladdr, op, desc)
      : undefined;
    checkUint("state", neigh.state, 0xffff, op, desc);
    const { rtnl } = this.#l;
    const n = owned(rtnl.rtnl_neigh_alloc(), rtnl.rtnl_neigh_put, "neigh");
    try {
      rtnl.rtnl_neigh_set_ifindex(n.ptr, neigh.index);
      using d = this.#addr(dst, "dst");
      check(rtnl.rtnl_neigh_set_dst(n.ptr, d.ptr), op, desc);
      if (ll !== undefined) {
        using m = this.#mac(ll);
        rtnl.rtnl_neigh_set_lladdr(n.ptr, m.ptr);
      }
      rtnl.rtnl_neigh_set_state(n.ptr, neigh.state);
      return n;
    } catch (e) {
      n[Symbol.dispose]();
      throw e;
    }
  }

  /** Installs or replaces a neighbour (`ip neigh replace DST lladdr MAC dev NAME nud STATE`). */
  neighSet(neigh: NeighInfo): void {
    const op = "neigh replace";
    using n = this.#neighObj(neigh, op, true);
    check(
      this.#l.rtnl.rtnl_neigh_add(
        this.#socket,
        n.ptr,
        NLM_F_CREATE | NLM_F_REPLACE,
      ),
      op,
      () => describeNeigh(neigh, this.#devName),
    );
  }

  /** Deletes a neighbour (`ip neigh del DST dev NAME`). */
  neighDel(neigh: NeighInfo): void {
    const op = "neigh del";
    using n = this.#neighObj(neigh, op, false);
    check(
      this.#l.rtnl.rtnl_neigh_delete(this.#socket, n.ptr, 0),
      op,
      () => describeNeigh(neigh, this.#devName),
    );
  }

  // ---- FDB --------------------------------------------------------------------------

  /** Bridge FDB entries, optionally of one device (`bridge fdb show [dev NAME]`). */
  fdbList(index?: number): FdbInfo[] {
    if (index !== undefined) checkIndex(index, "fdb show", `index ${index}`);
    const { rtnl, nl } = this.#l;
    const out: FdbInfo[] = [];
    const fill = (res: BigUint64Array): number => {
      const rc = nl.nl_cache_alloc_name(encoder.encode("route/neigh\0"), res);
      if (rc < 0) return rc;
      const cache = Deno.UnsafePointer.create(res[0]!);
      nl.nl_cache_set_arg1(cache, AF_BRIDGE); // dump the bridge family
      const rc2 = nl.nl_cache_refill(this.#socket, cache);
      if (rc2 < 0) nl.nl_cache_free(cache);
      return rc2;
    };
    for (const o of this.#walk(fill, "fdb show")) {
      if (rtnl.rtnl_neigh_get_family(o) !== AF_BRIDGE) continue;
      const i = rtnl.rtnl_neigh_get_ifindex(o);
      if (index !== undefined && i !== index) continue;
      const ll = this.#bytes(rtnl.rtnl_neigh_get_lladdr(o));
      if (ll === undefined || ll.length !== 6) continue;
      const dst = this.#ip(rtnl.rtnl_neigh_get_dst(o));
      out.push({
        index: i,
        lladdr: bytesToMac(ll),
        ...(dst !== undefined ? { dst } : {}),
        state: rtnl.rtnl_neigh_get_state(o),
        flags: rtnl.rtnl_neigh_get_flags(o),
      });
    }
    return out;
  }

  #fdbObj(fdb: FdbInfo, op: string): Owned {
    const desc = describeFdb(fdb);
    checkIndex(fdb.index, op, desc);
    const mac = macBytes(fdb.lladdr, op, desc);
    const dst = fdb.dst === undefined ? undefined : ipBytes(fdb.dst, op, desc);
    checkUint("state", fdb.state, 0xffff, op, desc);
    checkUint("flags", fdb.flags, 0xff, op, desc);
    const { rtnl } = this.#l;
    const n = owned(rtnl.rtnl_neigh_alloc(), rtnl.rtnl_neigh_put, "fdb entry");
    try {
      rtnl.rtnl_neigh_set_ifindex(n.ptr, fdb.index);
      // libnl refuses a dst whose family differs from one already set: dst
      // first, then the family (libnl's NLE_AF_MISMATCH).
      if (dst !== undefined) {
        using d = this.#addr(dst, "dst");
        check(rtnl.rtnl_neigh_set_dst(n.ptr, d.ptr), op, desc);
      }
      rtnl.rtnl_neigh_set_family(n.ptr, AF_BRIDGE);
      using m = this.#mac(mac);
      rtnl.rtnl_neigh_set_lladdr(n.ptr, m.ptr);
      rtnl.rtnl_neigh_set_flags(n.ptr, fdb.flags);
      rtnl.rtnl_neigh_set_state(n.ptr, fdb.state);
      return n;
    } catch (e) {
      n[Symbol.dispose]();
      throw e;
    }
  }

  /** Installs or replaces an FDB entry (`bridge fdb replace MAC dev NAME dst IP self permanent`). */
  fdbSet(fdb: FdbInfo): void {
    const op = "fdb replace";
    using n = this.#fdbObj(fdb, op);
    check(
      this.#l.rtnl.rtnl_neigh_add(
        this.#socket,
        n.ptr,
        NLM_F_CREATE | NLM_F_REPLACE,
      ),
      op,
      () => describeFdb(fdb, this.#devName),
    );
  }

  /** Deletes an FDB entry (`bridge fdb del MAC dev NAME dst IP self`). */
  fdbDel(fdb: FdbInfo): void {
    const op = "fdb del";
    using n = this.#fdbObj(fdb, op);
    check(
      this.#l.rtnl.rtnl_neigh_delete(this.#socket, n.ptr, 0),
      op,
      () => describeFdb(fdb, this.#devName),
    );
  }
}
