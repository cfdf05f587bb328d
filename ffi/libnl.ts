/**
 * The native side of `ffi/`: symbol tables for libnl-3, libnl-route-3 and the
 * few libc calls we need (setns for namespaces, poll/recv for the monitor),
 * loaded lazily so that importing `ffi/` for its types and validation needs
 * no `--allow-ffi`; and the one place that turns a libnl return code into a
 * {@linkcode KernelError}.
 *
 * Library paths can be overridden with `WEFT_LIBNL_PATH`,
 * `WEFT_LIBNL_ROUTE_PATH` and `WEFT_LIBC_PATH`.
 *
 * @module
 */
import { KernelError } from "./types.ts";

/** libnl-3: sockets, addresses, caches, messages. */
export const LIBNL_SYMBOLS = {
  nl_socket_alloc: { parameters: [], result: "pointer" }, // struct nl_sock *(void)
  nl_socket_free: { parameters: ["pointer"], result: "void" }, // (struct nl_sock *)
  nl_connect: { parameters: ["pointer", "i32"], result: "i32" }, // (struct nl_sock *, int protocol)
  nl_socket_disable_msg_peek: { parameters: ["pointer"], result: "void" }, // (struct nl_sock *)
  nl_socket_set_msg_buf_size: {
    parameters: ["pointer", "usize"],
    result: "i32",
  }, // (struct nl_sock *, size_t)
  nl_socket_get_fd: { parameters: ["pointer"], result: "i32" }, // (const struct nl_sock *)
  nl_socket_add_membership: {
    parameters: ["pointer", "i32"], // (struct nl_sock *, int group)
    result: "i32",
  },
  nl_socket_set_buffer_size: {
    parameters: ["pointer", "i32", "i32"], // (struct nl_sock *, int rxbuf, int txbuf)
    result: "i32",
  },
  nl_socket_disable_seq_check: { parameters: ["pointer"], result: "void" }, // (struct nl_sock *)
  nl_geterror: { parameters: ["i32"], result: "pointer" }, // const char *(int error)
  nl_syserr2nlerr: { parameters: ["i32"], result: "i32" }, // int (int errno) -> positive NLE_*
  nl_addr_build: {
    parameters: ["i32", "buffer", "usize"], // (int family, const void *buf, size_t size)
    result: "pointer",
  },
  nl_addr_put: { parameters: ["pointer"], result: "void" }, // (struct nl_addr *)
  nl_addr_get_len: { parameters: ["pointer"], result: "u32" }, // (const struct nl_addr *)
  nl_addr_get_binary_addr: { parameters: ["pointer"], result: "pointer" }, // void *(const struct nl_addr *)
  nl_addr_set_prefixlen: { parameters: ["pointer", "i32"], result: "void" }, // (struct nl_addr *, int)
  nl_cache_get_first: { parameters: ["pointer"], result: "pointer" }, // struct nl_object *(struct nl_cache *)
  nl_cache_get_next: { parameters: ["pointer"], result: "pointer" }, // struct nl_object *(struct nl_object *)
  nl_cache_free: { parameters: ["pointer"], result: "void" }, // (struct nl_cache *)
  nl_cache_alloc_name: {
    parameters: ["buffer", "buffer"], // (const char *kind, struct nl_cache **result)
    result: "i32",
  },
  nl_cache_set_arg1: { parameters: ["pointer", "i32"], result: "void" }, // (struct nl_cache *, int)
  nl_cache_refill: { parameters: ["pointer", "pointer"], result: "i32" }, // (struct nl_sock *, struct nl_cache *)
  nlmsg_alloc_simple: { parameters: ["i32", "i32"], result: "pointer" }, // struct nl_msg *(int type, int flags)
  nlmsg_append: {
    parameters: ["pointer", "buffer", "usize", "i32"], // (struct nl_msg *, void *data, size_t len, int pad)
    result: "i32",
  },
  nlmsg_free: { parameters: ["pointer"], result: "void" }, // (struct nl_msg *)
  nla_put: {
    parameters: ["pointer", "i32", "i32", "buffer"], // (struct nl_msg *, int attrtype, int datalen, const void *data)
    result: "i32",
  },
  nl_send: { parameters: ["pointer", "pointer"], result: "i32" }, // (struct nl_sock *, struct nl_msg *) as is: no seq, no ACK
} as const satisfies Deno.ForeignLibraryInterface;

/** libnl-route-3: links, addresses, routes, neighbours. */
export const LIBNL_ROUTE_SYMBOLS = {
  // links
  rtnl_link_alloc: { parameters: [], result: "pointer" }, // struct rtnl_link *(void)
  rtnl_link_put: { parameters: ["pointer"], result: "void" }, // (struct rtnl_link *)
  rtnl_link_get_kernel: {
    parameters: ["pointer", "i32", "buffer", "buffer"], // (struct nl_sock *, int ifindex, const char *name, struct rtnl_link **result)
    result: "i32",
  },
  rtnl_link_alloc_cache: {
    parameters: ["pointer", "i32", "buffer"], // (struct nl_sock *, int family, struct nl_cache **result)
    result: "i32",
  },
  rtnl_link_add: { parameters: ["pointer", "pointer", "i32"], result: "i32" }, // (struct nl_sock *, struct rtnl_link *, int flags)
  rtnl_link_delete: { parameters: ["pointer", "pointer"], result: "i32" }, // (struct nl_sock *, const struct rtnl_link *)
  rtnl_link_change: {
    parameters: ["pointer", "pointer", "pointer", "i32"], // (struct nl_sock *, struct rtnl_link *orig, struct rtnl_link *changes, int flags)
    result: "i32",
  },
  rtnl_link_set_ifindex: { parameters: ["pointer", "i32"], result: "void" }, // (struct rtnl_link *, int)
  rtnl_link_get_ifindex: { parameters: ["pointer"], result: "i32" }, // (struct rtnl_link *)
  rtnl_link_set_name: { parameters: ["pointer", "buffer"], result: "void" }, // (struct rtnl_link *, const char *)
  rtnl_link_get_name: { parameters: ["pointer"], result: "pointer" }, // char *(struct rtnl_link *)
  rtnl_link_set_mtu: { parameters: ["pointer", "u32"], result: "void" }, // (struct rtnl_link *, unsigned int)
  rtnl_link_get_mtu: { parameters: ["pointer"], result: "u32" }, // unsigned int (struct rtnl_link *)
  rtnl_link_set_addr: { parameters: ["pointer", "pointer"], result: "void" }, // (struct rtnl_link *, struct nl_addr *)
  rtnl_link_get_addr: { parameters: ["pointer"], result: "pointer" }, // struct nl_addr *(struct rtnl_link *)
  rtnl_link_set_flags: { parameters: ["pointer", "u32"], result: "void" }, // (struct rtnl_link *, unsigned int)
  rtnl_link_get_flags: { parameters: ["pointer"], result: "u32" }, // unsigned int (struct rtnl_link *)
  rtnl_link_set_type: { parameters: ["pointer", "buffer"], result: "i32" }, // (struct rtnl_link *, const char *)
  rtnl_link_get_type: { parameters: ["pointer"], result: "pointer" }, // char *(struct rtnl_link *)
  rtnl_link_is_vxlan: { parameters: ["pointer"], result: "i32" }, // (struct rtnl_link *)
  rtnl_link_vxlan_alloc: { parameters: [], result: "pointer" }, // struct rtnl_link *(void)
  rtnl_link_vxlan_set_id: { parameters: ["pointer", "u32"], result: "i32" }, // (struct rtnl_link *, uint32_t)
  rtnl_link_vxlan_get_id: { parameters: ["pointer", "buffer"], result: "i32" }, // (struct rtnl_link *, uint32_t *)
  rtnl_link_vxlan_set_local: {
    parameters: ["pointer", "pointer"], // (struct rtnl_link *, struct nl_addr *)
    result: "i32",
  },
  rtnl_link_vxlan_get_local: {
    parameters: ["pointer", "buffer"], // (struct rtnl_link *, struct nl_addr **) — returns a new reference
    result: "i32",
  },
  rtnl_link_vxlan_set_link: { parameters: ["pointer", "u32"], result: "i32" }, // (struct rtnl_link *, uint32_t)
  rtnl_link_vxlan_get_link: {
    parameters: ["pointer", "buffer"],
    result: "i32",
  }, // (struct rtnl_link *, uint32_t *)
  rtnl_link_vxlan_set_port: { parameters: ["pointer", "u32"], result: "i32" }, // (struct rtnl_link *, uint32_t) host order
  rtnl_link_vxlan_get_port: {
    parameters: ["pointer", "buffer"],
    result: "i32",
  }, // (struct rtnl_link *, uint32_t *) host order
  rtnl_link_vxlan_set_learning: {
    parameters: ["pointer", "u8"],
    result: "i32",
  }, // (struct rtnl_link *, uint8_t)
  rtnl_link_vxlan_get_learning: { parameters: ["pointer"], result: "i32" }, // (struct rtnl_link *)
  rtnl_link_vxlan_set_l2miss: { parameters: ["pointer", "u8"], result: "i32" }, // (struct rtnl_link *, uint8_t)
  rtnl_link_vxlan_set_l3miss: { parameters: ["pointer", "u8"], result: "i32" }, // (struct rtnl_link *, uint8_t)
  rtnl_link_vxlan_set_flags: {
    parameters: ["pointer", "u32", "i32"], // (struct rtnl_link *, uint32_t flags, int enable)
    result: "i32",
  },
  rtnl_link_vxlan_get_flags: {
    parameters: ["pointer", "buffer"],
    result: "i32",
  }, // (struct rtnl_link *, uint32_t *)
  // addresses
  rtnl_addr_alloc: { parameters: [], result: "pointer" }, // struct rtnl_addr *(void)
  rtnl_addr_put: { parameters: ["pointer"], result: "void" }, // (struct rtnl_addr *)
  rtnl_addr_alloc_cache: { parameters: ["pointer", "buffer"], result: "i32" }, // (struct nl_sock *, struct nl_cache **)
  rtnl_addr_add: { parameters: ["pointer", "pointer", "i32"], result: "i32" }, // (struct nl_sock *, struct rtnl_addr *, int flags)
  rtnl_addr_delete: {
    parameters: ["pointer", "pointer", "i32"],
    result: "i32",
  }, // (struct nl_sock *, struct rtnl_addr *, int flags)
  rtnl_addr_set_ifindex: { parameters: ["pointer", "i32"], result: "void" }, // (struct rtnl_addr *, int)
  rtnl_addr_get_ifindex: { parameters: ["pointer"], result: "i32" }, // (struct rtnl_addr *)
  rtnl_addr_get_family: { parameters: ["pointer"], result: "i32" }, // (struct rtnl_addr *)
  rtnl_addr_set_prefixlen: { parameters: ["pointer", "i32"], result: "void" }, // (struct rtnl_addr *, int)
  rtnl_addr_get_prefixlen: { parameters: ["pointer"], result: "i32" }, // (struct rtnl_addr *)
  rtnl_addr_get_flags: { parameters: ["pointer"], result: "u32" }, // unsigned int (struct rtnl_addr *): IFA_F_*
  rtnl_addr_set_local: { parameters: ["pointer", "pointer"], result: "i32" }, // (struct rtnl_addr *, struct nl_addr *)
  rtnl_addr_get_local: { parameters: ["pointer"], result: "pointer" }, // struct nl_addr *(struct rtnl_addr *)
  // routes
  rtnl_route_alloc: { parameters: [], result: "pointer" }, // struct rtnl_route *(void)
  rtnl_route_put: { parameters: ["pointer"], result: "void" }, // (struct rtnl_route *)
  rtnl_route_add: { parameters: ["pointer", "pointer", "i32"], result: "i32" }, // (struct nl_sock *, struct rtnl_route *, int flags)
  rtnl_route_delete: {
    parameters: ["pointer", "pointer", "i32"], // (struct nl_sock *, struct rtnl_route *, int flags)
    result: "i32",
  },
  rtnl_route_set_table: { parameters: ["pointer", "u32"], result: "void" }, // (struct rtnl_route *, uint32_t)
  rtnl_route_set_scope: { parameters: ["pointer", "u8"], result: "void" }, // (struct rtnl_route *, uint8_t)
  rtnl_route_set_protocol: { parameters: ["pointer", "u8"], result: "void" }, // (struct rtnl_route *, uint8_t)
  rtnl_route_set_type: { parameters: ["pointer", "u8"], result: "i32" }, // (struct rtnl_route *, uint8_t)
  rtnl_route_set_flags: { parameters: ["pointer", "u32"], result: "void" }, // (struct rtnl_route *, uint32_t)
  rtnl_route_set_dst: { parameters: ["pointer", "pointer"], result: "i32" }, // (struct rtnl_route *, struct nl_addr *)
  rtnl_route_set_pref_src: {
    parameters: ["pointer", "pointer"], // (struct rtnl_route *, struct nl_addr *)
    result: "i32",
  },
  rtnl_route_add_nexthop: {
    parameters: ["pointer", "pointer"],
    result: "void",
  }, // (struct rtnl_route *, struct rtnl_nexthop *) takes ownership
  rtnl_route_nh_alloc: { parameters: [], result: "pointer" }, // struct rtnl_nexthop *(void)
  rtnl_route_nh_free: { parameters: ["pointer"], result: "void" }, // (struct rtnl_nexthop *)
  rtnl_route_nh_set_ifindex: { parameters: ["pointer", "i32"], result: "void" }, // (struct rtnl_nexthop *, int)
  rtnl_route_nh_set_gateway: {
    parameters: ["pointer", "pointer"], // (struct rtnl_nexthop *, struct nl_addr *)
    result: "void",
  },
  rtnl_route_nh_set_flags: { parameters: ["pointer", "u32"], result: "void" }, // (struct rtnl_nexthop *, unsigned int)
  // neighbours and FDB entries
  rtnl_neigh_alloc: { parameters: [], result: "pointer" }, // struct rtnl_neigh *(void)
  rtnl_neigh_put: { parameters: ["pointer"], result: "void" }, // (struct rtnl_neigh *)
  rtnl_neigh_alloc_cache: { parameters: ["pointer", "buffer"], result: "i32" }, // (struct nl_sock *, struct nl_cache **)
  rtnl_neigh_add: { parameters: ["pointer", "pointer", "i32"], result: "i32" }, // (struct nl_sock *, struct rtnl_neigh *, int flags)
  rtnl_neigh_delete: {
    parameters: ["pointer", "pointer", "i32"], // (struct nl_sock *, struct rtnl_neigh *, int flags)
    result: "i32",
  },
  rtnl_neigh_set_ifindex: { parameters: ["pointer", "i32"], result: "void" }, // (struct rtnl_neigh *, int)
  rtnl_neigh_get_ifindex: { parameters: ["pointer"], result: "i32" }, // (struct rtnl_neigh *)
  rtnl_neigh_set_dst: { parameters: ["pointer", "pointer"], result: "i32" }, // (struct rtnl_neigh *, struct nl_addr *)
  rtnl_neigh_get_dst: { parameters: ["pointer"], result: "pointer" }, // struct nl_addr *(struct rtnl_neigh *)
  rtnl_neigh_set_lladdr: { parameters: ["pointer", "pointer"], result: "void" }, // (struct rtnl_neigh *, struct nl_addr *)
  rtnl_neigh_get_lladdr: { parameters: ["pointer"], result: "pointer" }, // struct nl_addr *(struct rtnl_neigh *)
  rtnl_neigh_set_state: { parameters: ["pointer", "i32"], result: "void" }, // (struct rtnl_neigh *, int)
  rtnl_neigh_get_state: { parameters: ["pointer"], result: "i32" }, // (struct rtnl_neigh *)
  rtnl_neigh_set_flags: { parameters: ["pointer", "u32"], result: "void" }, // (struct rtnl_neigh *, unsigned int)
  rtnl_neigh_get_flags: { parameters: ["pointer"], result: "u32" }, // unsigned int (struct rtnl_neigh *)
  rtnl_neigh_set_family: { parameters: ["pointer", "i32"], result: "void" }, // (struct rtnl_neigh *, int)
  rtnl_neigh_get_family: { parameters: ["pointer"], result: "i32" }, // (struct rtnl_neigh *)
} as const satisfies Deno.ForeignLibraryInterface;

/** libc: namespace switching, and waiting on the monitor socket off-thread. */
export const LIBC_SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" }, // int (const char *path, int flags)
  close: { parameters: ["i32"], result: "i32" }, // int (int fd)
  setns: { parameters: ["i32", "i32"], result: "i32" }, // int (int fd, int nstype)
  free: { parameters: ["pointer"], result: "void" }, // void (void *)
  __errno_location: { parameters: [], result: "pointer" }, // int *(void)
  strerror: { parameters: ["i32"], result: "pointer" }, // char *(int errnum)
  eventfd: { parameters: ["u32", "i32"], result: "i32" }, // int (unsigned int initval, int flags)
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" }, // ssize_t (int fd, const void *buf, size_t count)
  recv: {
    parameters: ["i32", "buffer", "usize", "i32"], // ssize_t (int fd, void *buf, size_t len, int flags)
    result: "isize",
  },
  // int (struct pollfd *fds, nfds_t nfds, int timeout); runs on Deno's
  // blocking pool so that waiting for notifications never stalls JS.
  poll: {
    parameters: ["buffer", "u64", "i32"],
    result: "i32",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The libnl-3 symbols, typed. */
export type Nl = Deno.DynamicLibrary<typeof LIBNL_SYMBOLS>["symbols"];
/** The libnl-route-3 symbols, typed. */
export type Rtnl = Deno.DynamicLibrary<typeof LIBNL_ROUTE_SYMBOLS>["symbols"];
/** The libc symbols, typed. */
export type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];

/** The three loaded libraries. */
export interface Libs {
  readonly nl: Nl;
  readonly rtnl: Rtnl;
  readonly libc: Libc;
}

let loaded: Libs | undefined;

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined; // no --allow-env: use the default
  }
}

function open<S extends Deno.ForeignLibraryInterface>(
  file: string,
  symbols: S,
  pkg: string,
): Deno.DynamicLibrary<S> {
  // Debian's multiarch path first, so `--allow-ffi` can name the files;
  // then the bare soname, resolved by the dynamic loader.
  const full = file.includes("/")
    ? undefined
    : `/usr/lib/${Deno.build.arch}-linux-gnu/${file}`;
  if (full !== undefined) {
    try {
      return Deno.dlopen(full, symbols);
    } catch { /* not there, or not allowed: try the soname */ }
  }
  try {
    return Deno.dlopen(file, symbols);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new Error(
      `Cannot load "${file}" (Debian package ${pkg}): ${why}`,
      { cause: e },
    );
  }
}

/**
 * Loads libnl-3, libnl-route-3 and libc on first use. Throws an error
 * naming the file and the Debian package when one is missing.
 */
export function libs(): Libs {
  if (loaded) return loaded;
  // libnl-route-3 links against libnl-3; load libnl-3 first so that an
  // override path for it is the one libnl-route-3 binds to.
  const nl = open(
    env("WEFT_LIBNL_PATH") ?? "libnl-3.so.200",
    LIBNL_SYMBOLS,
    "libnl-3-200",
  );
  const rtnl = open(
    env("WEFT_LIBNL_ROUTE_PATH") ?? "libnl-route-3.so.200",
    LIBNL_ROUTE_SYMBOLS,
    "libnl-route-3-200",
  );
  const libc = open(
    env("WEFT_LIBC_PATH") ?? "libc.so.6",
    LIBC_SYMBOLS,
    "libc6",
  );
  loaded = { nl: nl.symbols, rtnl: rtnl.symbols, libc: libc.symbols };
  return loaded;
}

/** Text of a libnl error code (positive or negative), from `nl_geterror`. */
export function nlErrorText(code: number): string {
  const p = libs().nl.nl_geterror(Math.abs(code));
  return p === null
    ? `libnl error ${code}`
    : Deno.UnsafePointerView.getCString(p);
}

/**
 * The one place a libnl return code becomes an error: returns `rc` when it
 * is not negative, else throws a {@linkcode KernelError} naming the
 * operation and the object (`object` is a function so that the iproute2
 * words are built only on failure).
 */
export function check(
  rc: number,
  op: string,
  object: string | (() => string),
): number {
  if (rc >= 0) return rc;
  throw kernelError(rc, op, typeof object === "string" ? object : object());
}

/** Builds the {@linkcode KernelError} for a (negative) libnl code. */
export function kernelError(
  rc: number,
  op: string,
  object: string,
): KernelError {
  return new KernelError(op, object, Math.abs(rc), nlErrorText(rc));
}

/** Reads the calling thread's errno (right after a failed libc call). */
export function errno(): number {
  const p = libs().libc.__errno_location();
  return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
}

/** Text of an errno value, from `strerror`. */
export function errnoText(err: number): string {
  const p = libs().libc.strerror(err);
  return p === null ? `errno ${err}` : Deno.UnsafePointerView.getCString(p);
}
