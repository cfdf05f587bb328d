import assert, { deepStrictEqual as assertEquals } from "node:assert/strict";
import {
  emptySummary,
  errorCode,
  NLMSG_DONE,
  NLMSG_ERROR,
  noChanges,
  parseMessages,
  parseRouteMessage,
  RTA_DST,
  RTA_GATEWAY,
  RTA_MULTIPATH,
  RTA_OIF,
  RTA_PREFSRC,
  RTA_TABLE,
  RTM_DELLINK,
  RTM_DELROUTE,
  RTM_NEWNEIGH,
  RTM_NEWROUTE,
  summarize,
} from "./nlmsg.ts";

/** A netlink attribute, padded to 4 bytes. */
function attr(type: number, data: number[]): number[] {
  const len = 4 + data.length;
  const out = [len & 255, len >> 8, type & 255, type >> 8, ...data];
  while (out.length % 4) out.push(0);
  return out;
}
const u32 = (n: number) => [n & 255, (n >> 8) & 255, (n >> 16) & 255, n >>> 24];

/** A netlink message with header, padded. */
function msg(type: number, payload: number[], seq = 0): number[] {
  const len = 16 + payload.length;
  const out = [
    ...u32(len),
    type & 255,
    type >> 8,
    0,
    0,
    ...u32(seq),
    ...u32(0),
    ...payload,
  ];
  while (out.length % 4) out.push(0);
  return out;
}

/** struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags. */
function rtmsg(
  family: number,
  dstLen: number,
  scope: number,
  type: number,
  flags = 0,
  protocol = 3,
) {
  return [family, dstLen, 0, 0, 254, protocol, scope, type, ...u32(flags)];
}

Deno.test("parseMessages splits a datagram and stops at a truncated header", () => {
  const buf = new Uint8Array([
    ...msg(NLMSG_DONE, [0, 0, 0, 0], 7),
    ...msg(NLMSG_ERROR, u32(-2 >>> 0)),
  ]);
  const all = parseMessages(buf);
  assertEquals(all.map((m) => [m.type, m.seq]), [[NLMSG_DONE, 7], [
    NLMSG_ERROR,
    0,
  ]]);
  assertEquals(errorCode(all[1]!), -2);
  assertEquals(parseMessages(buf.subarray(0, buf.length - 2)).length, 1);
  // A header claiming less than its own size ends parsing without throwing.
  assertEquals(
    parseMessages(new Uint8Array([4, 0, 0, 0, ...new Array(12).fill(0)])),
    [],
  );
});

Deno.test("parseRouteMessage reads an onlink route via a gateway", () => {
  const p = new Uint8Array([
    ...rtmsg(2, 24, 0, 1, 4, 87),
    ...attr(RTA_TABLE, u32(254)),
    ...attr(RTA_DST, [10, 244, 1, 0]),
    ...attr(RTA_GATEWAY, [10, 244, 1, 0]),
    ...attr(RTA_OIF, u32(5)),
    ...attr(RTA_PREFSRC, [10, 244, 2, 0]),
  ]);
  assertEquals(parseRouteMessage(p), {
    family: 2,
    type: 1,
    table: 254,
    routes: [{
      dst: "10.244.1.0/24",
      gw: "10.244.1.0",
      index: 5,
      onlink: true,
      scope: 0,
      table: 254,
      src: "10.244.2.0",
      protocol: 87,
    }],
  });
});

Deno.test("parseRouteMessage gives the default route as 0.0.0.0/0 and one entry per nexthop", () => {
  const nh = (ifindex: number, gw: number[]) => {
    const attrs = attr(RTA_GATEWAY, gw);
    const len = 8 + attrs.length;
    return [len & 255, len >> 8, 0, 0, ...u32(ifindex), ...attrs];
  };
  const p = new Uint8Array([
    ...rtmsg(2, 0, 0, 1),
    ...attr(RTA_MULTIPATH, [
      ...nh(2, [198, 18, 0, 1]),
      ...nh(3, [198, 18, 1, 1]),
    ]),
  ]);
  const r = parseRouteMessage(p)!;
  assertEquals(r.routes.map((x) => [x.dst, x.gw, x.index]), [
    ["0.0.0.0/0", "198.18.0.1", 2],
    ["0.0.0.0/0", "198.18.1.1", 3],
  ]);
  const v6 = parseRouteMessage(new Uint8Array([...rtmsg(10, 64, 253, 1)]))!;
  assertEquals(v6.routes[0]!.dst, "::/64");
  assertEquals(v6.routes[0]!.scope, 253);
  assertEquals(parseRouteMessage(new Uint8Array([7, 0, 0])), undefined);
});

Deno.test("summarize counts notifications by kind and collects device indexes", () => {
  const ifinfo = (
    index: number,
  ) => [0, 0, 0, 0, ...u32(index), ...u32(0), ...u32(0)];
  const ndmsg = (
    family: number,
    index: number,
  ) => [family, 0, 0, 0, ...u32(index), 0x80, 0, 2, 0];
  const buf = new Uint8Array([
    ...msg(RTM_DELROUTE, [...rtmsg(2, 24, 0, 1), ...attr(RTA_OIF, u32(4))]),
    ...msg(RTM_NEWROUTE, [...rtmsg(2, 24, 0, 1), ...attr(RTA_OIF, u32(4))]),
    ...msg(RTM_DELLINK, ifinfo(9)),
    ...msg(RTM_NEWNEIGH, ndmsg(2, 4)),
    ...msg(RTM_NEWNEIGH, ndmsg(7, 4)),
  ]);
  const s = summarize(buf, emptySummary());
  assertEquals(s, {
    ...emptySummary(),
    delRoute: 1,
    newRoute: 1,
    delLink: 1,
    newNeigh: 1,
    newFdb: 1,
    indexes: [4, 9],
    neighIndexes: [4],
    byIndex: new Map([
      [4, { ...noChanges(), delRoute: 1, newRoute: 1, newNeigh: 1, newFdb: 1 }],
      [9, { ...noChanges(), delLink: 1 }],
    ]),
  });
  assert(!s.overrun);
});
