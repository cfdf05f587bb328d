/**
 * countPings(): what the Helm steps count from busybox ping's output.
 *
 * @module
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { countPings } from "./_k8s.ts";

const reply = (seq: number) =>
  `64 bytes from 10.244.1.5: seq=${seq} ttl=62 time=0.101 ms`;

function output(answered: number[], sent: number): string {
  return [
    "PING 10.244.1.5 (10.244.1.5): 56 data bytes",
    ...answered.map(reply),
    "",
    "--- 10.244.1.5 ping statistics ---",
    `${sent} packets transmitted, ${answered.length} packets received, 0% packet loss`,
  ].join("\n");
}

Deno.test("countPings() leaves the echoes after the last reply out of the lost ones", () => {
  assertEquals(countPings(output([0, 1, 2, 3], 6), 50), {
    sent: 6,
    received: 4,
    lost: 0,
    inFlight: 2,
    longestGapMs: 0,
    lostSeqs: [],
  });
});

Deno.test("countPings() counts a gap before the last reply as lost, with its length", () => {
  assertEquals(countPings(output([0, 1, 5, 6, 8], 9), 50), {
    sent: 9,
    received: 5,
    lost: 4,
    inFlight: 0,
    longestGapMs: 150,
    lostSeqs: [2, 3, 4, 7],
  });
});

Deno.test("countPings() with no reply at all: everything is unanswered at the end", () => {
  assertEquals(countPings(output([], 40), 50), {
    sent: 40,
    received: 0,
    lost: 0,
    inFlight: 40,
    longestGapMs: 0,
    lostSeqs: [],
  });
});
