/**
 * The cluster tier's counting, without a cluster: what a TCP receiver's
 * lines make of a window and what the probes' sockets dropped
 * (tests/k8s/_traffic.ts), which kernel drop counters grew
 * (tests/k8s/_drops.ts), and which monitor lines are a peer's overlay
 * entry deleted (tests/k8s/_churn.ts).
 *
 * @module
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { countTcp, socketDrops } from "./_traffic.ts";
import {
  type Counters,
  dropsBetween,
  parseDev,
  parseKernel,
  parseSnmp,
} from "./_drops.ts";
import { deletedEntries, type Peer } from "./_churn.ts";

Deno.test("countTcp() counts lines, bytes, the longest delay and gap", () => {
  const rx = [
    "0 100.00 100.01 400",
    "1 100.10 100.11 400",
    "2 100.20 101.45 400",
    "3 100.30 101.45 400",
    "",
  ].join("\n");
  assertEquals(countTcp(rx, 4, false), {
    sent: 4,
    received: 4,
    bytes: 4 * 400 + "0 100.00 ".length + "1 100.10 ".length +
      "2 100.20 ".length + "3 100.30 ".length + 4,
    reset: false,
    longestDelayMs: 1250,
    longestGapMs: 1340,
    order: "",
  });
});

Deno.test("countTcp() names a line missing from the sequence", () => {
  const rx = "0 1.00 1.01 4\n2 1.20 1.21 4\n";
  assertEquals(countTcp(rx, 3, true).order, "line 2 where 1 was due");
  assertEquals(countTcp(rx, 3, true).reset, true);
  assertEquals(countTcp("", 0, true).received, 0);
});

Deno.test("deletedEntries() picks a peer's route, neighbour and FDB deletions only", () => {
  const peer: Peer = {
    name: "n2",
    ip: "198.18.0.12",
    cidr: "10.244.1.0/24",
    mac: "aa:bb:cc:dd:ee:01",
  };
  const lines = [
    "Deleted 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink",
    "Deleted 10.244.1.0 dev flannel.1 lladdr aa:bb:cc:dd:ee:01 PERMANENT",
    "Deleted aa:bb:cc:dd:ee:01 dev flannel.1 dst 198.18.0.12 self permanent",
    "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink",
    "Deleted 10.244.10.0/24 via 10.244.10.0 dev flannel.1 onlink",
    "Deleted 10.244.0.5 dev cni0 lladdr 0a:58:0a:f4:00:05 STALE",
  ];
  assertEquals(deletedEntries(lines, [peer]), lines.slice(0, 3));
});

Deno.test("socketDrops() sums the drops column of /proc/net/raw and /proc/net/icmp", () => {
  const raw = [
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops",
    "  87: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 6860747 2 00000000869a238a 7",
    "  87: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 6860577 2 00000000ad465cae 2",
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops",
    "up",
    "sent 41",
  ].join("\n");
  assertEquals(socketDrops(raw), 9);
  assertEquals(socketDrops("sent 3\n"), 0);
});

/** Two reads of one pod's and the kernel's counters, 1 s apart. */
function reads(): [Counters, Counters] {
  const snmp = (discards: number, noRoutes: number) =>
    [
      "Ip: Forwarding DefaultTTL InReceives InDiscards OutNoRoutes",
      `Ip: 1 64 1000 ${discards} ${noRoutes}`,
      "Icmp: InMsgs InErrors",
      "Icmp: 40 0",
    ].join("\n");
  const dev = (txDrop: number) =>
    [
      "Inter-|   Receive                                                |  Transmit",
      " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed",
      `flannel.1: 9000 90 0 0 0 0 0 0 8000 80 0 ${txDrop} 0 0 0 0`,
      "    lo: 10 1 0 0 0 0 0 0 10 1 0 0 0 0 0 0",
    ].join("\n");
  const arp = (discards: number) =>
    [
      "entries  allocs   destroys unresolved_discards",
      `00000002 00002280 000023dd ${discards.toString(16).padStart(8, "0")}`,
      "00000002 000023a7 00002248 00000001",
    ].join("\n");
  const softnet = (dropped: number) =>
    `011e84e3 ${dropped.toString(16).padStart(8, "0")} 0000003e 00000000\n` +
    "0123a12c 00000001 0000003f 00000000\n";
  const read = (n: number): Counters => {
    const out: Counters = new Map();
    parseSnmp(snmp(3 + n, n), "n1", out);
    parseDev(dev(2 * n), "n1", out);
    parseKernel(softnet(16 * n), arp(n), out);
    return out;
  };
  return [read(0), read(1)];
}

Deno.test("parseSnmp(), parseDev() and parseKernel() read the counters by name", () => {
  const [first] = reads();
  assertEquals(first.get("n1 Ip.InDiscards"), 3);
  assertEquals(first.get("n1 Icmp.InMsgs"), 40);
  assertEquals(first.get("n1 flannel.1 tx_dropped"), 0);
  assertEquals(first.get("n1 flannel.1 rx_errors"), 0);
  assertEquals(first.get("kernel backlog dropped"), 1);
  assertEquals(first.get("kernel backlog time_squeeze"), 0x3e + 0x3f);
  assertEquals(first.get("kernel arp_cache unresolved_discards"), 1);
  assertEquals(first.get("kernel arp_cache allocs"), 0x2280 + 0x23a7);
});

Deno.test("dropsBetween() names the drop counters that grew, and only those", () => {
  const [before, after] = reads();
  assertEquals(dropsBetween(before, after), [
    "kernel arp_cache unresolved_discards +1",
    "kernel backlog dropped +16",
    "n1 Ip.InDiscards +1",
    "n1 Ip.OutNoRoutes +1",
    "n1 flannel.1 tx_dropped +2",
  ]);
  assertEquals(dropsBetween(after, after), []);
});
