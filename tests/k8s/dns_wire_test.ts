import {
  deepStrictEqual as assertEquals,
  throws as assertThrows,
} from "node:assert/strict";
import {
  dnsAnswerA,
  dnsQueryA,
  parseOdHex,
  printfEscaped,
} from "./_dns_wire.ts";

Deno.test("dnsQueryA() frames an A query for TCP", () => {
  const q = dnsQueryA("a.bc", 0x1234);
  assertEquals(
    [...q],
    [
      0,
      22,
      0x12,
      0x34,
      1,
      0,
      0,
      1,
      0,
      0,
      0,
      0,
      0,
      0,
      1,
      97,
      2,
      98,
      99,
      0,
      0,
      1,
      0,
      1,
    ],
  );
  assertThrows(() => dnsQueryA("a..b", 1), /Cannot encode DNS name "a..b"/);
});

Deno.test("printfEscaped() and parseOdHex() carry bytes through a shell", () => {
  assertEquals(printfEscaped(new Uint8Array([0, 10, 255])), "\\000\\012\\377");
  assertEquals([...parseOdHex(" 00 0a\n ff\n")], [0, 10, 255]);
  assertThrows(() => parseOdHex("zz"), /Cannot parse od output "zz"/);
});

/** The answer CoreDNS sends to dnsQueryA("a.bc", 7): two A records. */
function answer(rcode = 0): Uint8Array {
  const q = [...dnsQueryA("a.bc", 7).subarray(2)];
  const head = [0, 7, 0x85, 0x00 | rcode, 0, 1, 0, 2, 0, 0, 0, 0];
  const rr = (ip: number[]) => [0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, ...ip];
  const m = [
    ...head,
    ...q.slice(12),
    ...rr([10, 96, 0, 1]),
    ...rr([10, 96, 7, 9]),
  ];
  return new Uint8Array([m.length >> 8, m.length & 0xff, ...m]);
}

Deno.test("dnsAnswerA() reads the A records of an answer", () => {
  assertEquals(dnsAnswerA(answer(), 7), {
    rcode: 0,
    a: ["10.96.0.1", "10.96.7.9"],
  });
  assertEquals(dnsAnswerA(answer(3), 7).rcode, 3);
});

Deno.test("dnsAnswerA() names what is wrong with a bad answer", () => {
  const good = answer();
  assertThrows(() => dnsAnswerA(good, 8), /DNS answer has id 7, not 8/);
  assertThrows(
    () => dnsAnswerA(good.subarray(0, 40), 7),
    /frames \d+ bytes but has 38/,
  );
  assertThrows(() => dnsAnswerA(dnsQueryA("a.bc", 7), 7), /is not an answer/);
  assertThrows(() => dnsAnswerA(new Uint8Array(3), 7), /3 bytes is truncated/);
});
