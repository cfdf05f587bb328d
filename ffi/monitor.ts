/**
 * Kernel change notifications for the backend's repair loop (`ip monitor
 * link address route neigh`): a second NETLINK_ROUTE socket, made with
 * libnl and subscribed to the link, address, IPv4/IPv6 route and neighbour
 * groups, read in TypeScript.
 *
 * Waiting must not block the JS thread, and `close()` must wake a waiter:
 * a blocking `recv` on a netlink socket cannot be interrupted from another
 * thread (netlink has no `shutdown`, and `close` does not wake a blocked
 * reader). So `next()` runs libc `poll` on the netlink socket and an
 * eventfd as a `nonblocking` FFI call (on Deno's blocking thread pool);
 * `close()` writes the eventfd, and the sockets are freed only once that
 * poll has returned, so no fd is closed under a thread still using it.
 * The datagrams are then drained with non-blocking `recv` and summarised.
 *
 * @module
 */
import { inNetns, owned } from "./_native.ts";
import { check, errno, errnoText, type Libs, libs } from "./libnl.ts";
import { emptySummary, summarize } from "./nlmsg.ts";
import {
  KernelError,
  type NetlinkMonitor,
  type NotificationSummary,
} from "./types.ts";

const NETLINK_ROUTE = 0;
/** Multicast groups (linux/rtnetlink.h). */
export const RTNLGRP_LINK = 1;
export const RTNLGRP_NEIGH = 3;
export const RTNLGRP_IPV4_IFADDR = 5;
export const RTNLGRP_IPV4_ROUTE = 7;
export const RTNLGRP_IPV6_IFADDR = 9;
export const RTNLGRP_IPV6_ROUTE = 11;
const GROUPS = [
  RTNLGRP_LINK,
  RTNLGRP_NEIGH,
  RTNLGRP_IPV4_IFADDR,
  RTNLGRP_IPV4_ROUTE,
  RTNLGRP_IPV6_IFADDR,
  RTNLGRP_IPV6_ROUTE,
];
const POLLIN = 0x1;
const MSG_DONTWAIT = 0x40;
const EAGAIN = 11;
const EINTR = 4;
const ENOBUFS = 105;
const EFD_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;
/** Receive buffer asked of the kernel, so bursts (10k routes) fit. */
const RCVBUF = 8 * 1024 * 1024;

/** Options of {@linkcode openMonitor}. */
export interface OpenMonitorOptions {
  /** Network namespace path (`/run/netns/NAME`); default: the caller's. */
  readonly netns?: string;
}

/**
 * Opens a monitor for link, address, route and neighbour/FDB changes (in
 * `opts.netns` if given). Needs `--allow-ffi`.
 */
export function openMonitor(opts: OpenMonitorOptions = {}): LibnlMonitor {
  const l = libs();
  const connect = () => {
    using sk = owned(l.nl.nl_socket_alloc(), l.nl.nl_socket_free, "nl_sock");
    l.nl.nl_socket_disable_seq_check(sk.ptr);
    check(
      l.nl.nl_connect(sk.ptr, NETLINK_ROUTE),
      "monitor connect",
      "NETLINK_ROUTE",
    );
    for (const g of GROUPS) {
      check(
        l.nl.nl_socket_add_membership(sk.ptr, g),
        "monitor join",
        `group ${g}`,
      );
    }
    // Best effort: rmem_max may cap it; an overrun is reported, not fatal.
    l.nl.nl_socket_set_buffer_size(sk.ptr, RCVBUF, 0);
    return sk.release();
  };
  const sk = opts.netns === undefined
    ? connect()
    : inNetns(l, opts.netns, connect);
  const efd = l.libc.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) {
    const e = errno();
    l.nl.nl_socket_free(sk);
    throw new KernelError("monitor", "eventfd", 0, errnoText(e));
  }
  return new LibnlMonitor(l, sk, efd);
}

/** {@linkcode NetlinkMonitor} over a libnl socket and libc poll/recv. */
export class LibnlMonitor implements NetlinkMonitor, Disposable {
  readonly #l: Libs;
  #sk: Deno.PointerObject | null;
  readonly #fd: number;
  readonly #efd: number;
  #closed = false;
  #pending: Promise<unknown> | null = null;
  /** struct pollfd[2]: { int fd; short events; short revents; } */
  readonly #pollfds = new Uint8Array(16);
  readonly #buf = new Uint8Array(256 * 1024);

  /** Use {@linkcode openMonitor}. */
  constructor(l: Libs, sk: Deno.PointerObject, efd: number) {
    this.#l = l;
    this.#sk = sk;
    this.#fd = l.nl.nl_socket_get_fd(sk);
    this.#efd = efd;
    const v = new DataView(this.#pollfds.buffer);
    v.setInt32(0, this.#fd, true);
    v.setInt16(4, POLLIN, true);
    v.setInt32(8, efd, true);
    v.setInt16(12, POLLIN, true);
  }

  /**
   * Waits for notifications and returns what arrived, summarised. Rejects
   * with `Deno.errors.BadResource` once the monitor is closed (also when
   * closed while waiting). One call at a time.
   */
  async next(): Promise<NotificationSummary> {
    if (this.#closed) {
      throw new Deno.errors.BadResource("Netlink monitor is closed");
    }
    if (this.#pending !== null) throw new Error("next() is already pending");
    for (;;) {
      const s = this.#drain();
      if (s !== undefined) return s;
      const wait = this.#l.libc.poll(this.#pollfds, 2n, -1);
      this.#pending = wait;
      let rc: number;
      try {
        rc = await wait;
      } finally {
        this.#pending = null;
      }
      if (this.#closed) {
        this.#release();
        throw new Deno.errors.BadResource("Netlink monitor is closed");
      }
      if (rc < 0) {
        // poll ran on another thread: its errno is not readable here. EINTR
        // is the only expected failure; try again.
        continue;
      }
    }
  }

  /** Reads everything queued without blocking; undefined when nothing was. */
  #drain(): NotificationSummary | undefined {
    const { libc } = this.#l;
    const s = emptySummary();
    let got = false;
    for (;;) {
      const n = Number(
        libc.recv(this.#fd, this.#buf, BigInt(this.#buf.length), MSG_DONTWAIT),
      );
      if (n < 0) {
        const e = errno();
        if (e === ENOBUFS) {
          s.overrun = true; // messages were dropped; the socket still works
          got = true;
          continue;
        }
        if (e === EAGAIN || e === EINTR) break;
        throw new KernelError("monitor", "recv", 0, errnoText(e));
      }
      if (n === 0) break;
      summarize(this.#buf.subarray(0, n), s);
      got = true;
    }
    return got ? s : undefined;
  }

  /**
   * Closes the monitor; a pending `next()` rejects promptly. The socket is
   * freed once no thread is polling it. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#pending === null) {
      this.#release();
      return;
    }
    const one = new Uint8Array(8);
    one[0] = 1;
    this.#l.libc.write(this.#efd, one, 8n); // wakes the poll; next() releases
  }

  #release(): void {
    const sk = this.#sk;
    this.#sk = null;
    if (sk === null) return;
    this.#l.nl.nl_socket_free(sk);
    this.#l.libc.close(this.#efd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
