/**
 * Parsing of raw rtnetlink datagrams in TypeScript, for the two places that
 * read the socket without libnl's object model: `routeGet` (one RTM_NEWROUTE
 * answer) and the monitor (a stream of notifications summarised by type).
 * Pure: unit-tested on hand-built byte arrays.
 *
 * @module
 */
import { bytesToIp } from "./validate.ts";
import type { ChangeCounts, NotificationSummary, RouteInfo } from "./types.ts";

/** Netlink message types (linux/netlink.h, linux/rtnetlink.h). */
export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;
export const RTM_NEWNEIGH = 28;
export const RTM_DELNEIGH = 29;

/** Route attributes we read. */
export const RTA_DST = 1;
export const RTA_OIF = 4;
export const RTA_GATEWAY = 5;
export const RTA_PREFSRC = 7;
export const RTA_TABLE = 15;

/** Size of `struct nlmsghdr`. */
export const NLMSG_HDRLEN = 16;
/** Size of `struct rtmsg`. */
export const RTMSG_LEN = 12;
const RTNH_F_ONLINK = 4;
const AF_BRIDGE = 7;

/** One netlink message: header fields and a view of its payload. */
export interface NlMsg {
  readonly type: number;
  readonly flags: number;
  readonly seq: number;
  readonly pid: number;
  readonly payload: Uint8Array;
}

const align4 = (n: number) => (n + 3) & ~3;

/**
 * Splits a datagram into messages. Stops (without throwing) at a header
 * whose length is impossible, so a truncated datagram yields what it holds.
 */
export function parseMessages(buf: Uint8Array): NlMsg[] {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: NlMsg[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= buf.length) {
    const len = view.getUint32(off, true);
    if (len < NLMSG_HDRLEN || off + len > buf.length) break;
    out.push({
      type: view.getUint16(off + 4, true),
      flags: view.getUint16(off + 6, true),
      seq: view.getUint32(off + 8, true),
      pid: view.getUint32(off + 12, true),
      payload: buf.subarray(off + NLMSG_HDRLEN, off + len),
    });
    off += align4(len);
  }
  return out;
}

/** The (negative) errno of an NLMSG_ERROR message; 0 is an ACK. */
export function errorCode(msg: NlMsg): number {
  if (msg.payload.length < 4) return 0;
  return new DataView(msg.payload.buffer, msg.payload.byteOffset, 4).getInt32(
    0,
    true,
  );
}

/** Attributes (`struct rtattr` / `struct nlattr`) from `off` on, by type. */
export function parseAttrs(
  payload: Uint8Array,
  off: number,
): Map<number, Uint8Array> {
  const view = new DataView(
    payload.buffer,
    payload.byteOffset,
    payload.byteLength,
  );
  const attrs = new Map<number, Uint8Array>();
  while (off + 4 <= payload.length) {
    const len = view.getUint16(off, true);
    if (len < 4 || off + len > payload.length) break;
    const type = view.getUint16(off + 2, true) & 0x3fff; // drop NLA_F_NESTED/NET_BYTEORDER
    if (!attrs.has(type)) attrs.set(type, payload.subarray(off + 4, off + len));
    off += align4(len);
  }
  return attrs;
}

function u32(b: Uint8Array): number {
  return new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);
}

/** A parsed RTM_NEWROUTE: header fields, and one route per nexthop. */
export interface RouteMessage {
  readonly family: number;
  /** RTN_* type (1 = unicast). */
  readonly type: number;
  readonly table: number;
  readonly routes: RouteInfo[];
}

/** `struct rtnexthop` size. */
const RTNH_LEN = 8;
/** Multipath nexthops attribute. */
export const RTA_MULTIPATH = 9;

/**
 * A route message (`struct rtmsg` + attributes), listing one
 * {@linkcode RouteInfo} per nexthop (RTA_MULTIPATH) or a single one.
 */
export function parseRouteMessage(
  payload: Uint8Array,
): RouteMessage | undefined {
  if (payload.length < RTMSG_LEN) return undefined;
  const family = payload[0]!;
  if (family !== 2 && family !== 10) return undefined;
  const dstLen = payload[1]!;
  const protocol = payload[5]!;
  const scope = payload[6]!;
  const type = payload[7]!;
  const flags = u32(payload.subarray(8, 12));
  const attrs = parseAttrs(payload, RTMSG_LEN);
  const dstBytes = attrs.get(RTA_DST) ?? new Uint8Array(family === 2 ? 4 : 16);
  const src = attrs.get(RTA_PREFSRC);
  const tableAttr = attrs.get(RTA_TABLE);
  const table = tableAttr && tableAttr.length >= 4
    ? u32(tableAttr)
    : payload[4]!;
  const route = (
    gw: Uint8Array | undefined,
    oif: number,
    nhFlags: number,
  ): RouteInfo => ({
    dst: `${bytesToIp(dstBytes)}/${dstLen}`,
    ...(gw && (gw.length === 4 || gw.length === 16)
      ? { gw: bytesToIp(gw) }
      : {}),
    ...(oif > 0 ? { index: oif } : {}),
    onlink: ((flags | nhFlags) & RTNH_F_ONLINK) !== 0,
    scope,
    table,
    ...(src ? { src: bytesToIp(src) } : {}),
    protocol,
  });
  const routes: RouteInfo[] = [];
  const mp = attrs.get(RTA_MULTIPATH);
  if (mp) {
    const view = new DataView(mp.buffer, mp.byteOffset, mp.byteLength);
    let off = 0;
    while (off + RTNH_LEN <= mp.length) {
      const len = view.getUint16(off, true);
      if (len < RTNH_LEN || off + len > mp.length) break;
      const nhAttrs = parseAttrs(mp.subarray(off, off + len), RTNH_LEN);
      routes.push(
        route(
          nhAttrs.get(RTA_GATEWAY),
          view.getInt32(off + 4, true),
          mp[off + 2]!,
        ),
      );
      off += align4(len);
    }
  } else {
    const oif = attrs.get(RTA_OIF);
    routes.push(
      route(attrs.get(RTA_GATEWAY), oif && oif.length >= 4 ? u32(oif) : 0, 0),
    );
  }
  return { family, type, table, routes };
}

/** Counts being filled in while a monitor drains its socket. */
export type SummaryCounts = {
  -readonly [K in keyof NotificationSummary]: NotificationSummary[K] extends
    number ? number
    : NotificationSummary[K];
};

/** An empty summary. */
export function emptySummary(): SummaryCounts {
  return {
    ...noChanges(),
    indexes: [],
    neighIndexes: [],
    byIndex: new Map(),
    overrun: false,
  };
}

/** Counts of nothing. */
export function noChanges(): { -readonly [K in keyof ChangeCounts]: number } {
  return {
    newLink: 0,
    delLink: 0,
    newAddr: 0,
    delAddr: 0,
    newRoute: 0,
    delRoute: 0,
    newNeigh: 0,
    delNeigh: 0,
    newFdb: 0,
    delFdb: 0,
  };
}

/** Counts one message of `kind` in `s`, in total and by device. */
function count(s: SummaryCounts, kind: keyof ChangeCounts, index: number) {
  s[kind]++;
  const byIndex = s.byIndex as Map<number, ReturnType<typeof noChanges>>;
  let c = byIndex.get(index);
  if (!c) byIndex.set(index, c = noChanges());
  c[kind]++;
}

function addIndex(indexes: readonly number[], index: number): void {
  if (index > 0 && !indexes.includes(index)) {
    (indexes as number[]).push(index);
  }
}

function i32At(p: Uint8Array, off: number): number {
  if (p.length < off + 4) return 0;
  return new DataView(p.buffer, p.byteOffset + off, 4).getInt32(0, true);
}

/**
 * Adds the notifications in one datagram to `s`: counts by message type,
 * and the device index each names (ifinfomsg/ifaddrmsg index and the
 * route's RTA_OIF in `indexes`, the ndmsg index in `neighIndexes`).
 * Neighbour messages of family AF_BRIDGE count as FDB.
 */
export function summarize(buf: Uint8Array, s: SummaryCounts): SummaryCounts {
  for (const m of parseMessages(buf)) {
    const p = m.payload;
    switch (m.type) {
      case RTM_NEWLINK:
      case RTM_DELLINK: {
        const index = i32At(p, 4);
        count(s, m.type === RTM_NEWLINK ? "newLink" : "delLink", index);
        addIndex(s.indexes, index);
        break;
      }
      case RTM_NEWADDR:
      case RTM_DELADDR: {
        const index = i32At(p, 4);
        count(s, m.type === RTM_NEWADDR ? "newAddr" : "delAddr", index);
        addIndex(s.indexes, index);
        break;
      }
      case RTM_NEWROUTE:
      case RTM_DELROUTE: {
        const oif = p.length >= RTMSG_LEN
          ? parseAttrs(p, RTMSG_LEN).get(RTA_OIF)
          : undefined;
        const index = oif && oif.length >= 4 ? u32(oif) : 0;
        count(s, m.type === RTM_NEWROUTE ? "newRoute" : "delRoute", index);
        addIndex(s.indexes, index);
        break;
      }
      case RTM_NEWNEIGH:
      case RTM_DELNEIGH: {
        const bridge = p[0] === AF_BRIDGE;
        const index = i32At(p, 4);
        const kind = m.type === RTM_NEWNEIGH
          ? bridge ? "newFdb" : "newNeigh"
          : bridge
          ? "delFdb"
          : "delNeigh";
        count(s, kind, index);
        addIndex(s.neighIndexes, index);
        break;
      }
    }
  }
  return s;
}
