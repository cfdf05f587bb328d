/**
 * The cluster tier's counting, without a cluster: what a TCP receiver's
 * lines make of a window (tests/k8s/_traffic.ts), and which monitor lines
 * are a peer's overlay entry deleted (tests/k8s/_churn.ts).
 *
 * @module
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { countTcp } from "./_traffic.ts";
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
