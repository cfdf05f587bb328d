/**
 * Just enough of the DNS wire format (RFC 1035) to ask a server for an A
 * record over TCP from a pod that has only busybox: the query is built here
 * and sent with `nc`, and the answer read back through `od` is decoded here.
 * busybox's nslookup speaks UDP only.
 *
 * @module
 */

/**
 * A standard query for the A record of `name` with recursion desired, framed
 * for TCP: a two-byte length, then the message (RFC 1035 section 4.2.2).
 */
export function dnsQueryA(name: string, id: number): Uint8Array {
  const labels = name.replace(/\.$/, "").split(".");
  const qname: number[] = [];
  for (const l of labels) {
    if (l.length === 0 || l.length > 63 || !/^[A-Za-z0-9-]+$/.test(l)) {
      throw new Error(`Cannot encode DNS name "${name}"`);
    }
    qname.push(l.length, ...new TextEncoder().encode(l));
  }
  qname.push(0);
  const msg = [
    id >> 8,
    id & 0xff,
    0x01, // RD
    0x00,
    0,
    1, // QDCOUNT
    0,
    0,
    0,
    0,
    0,
    0,
    ...qname,
    0,
    1, // QTYPE A
    0,
    1, // QCLASS IN
  ];
  return new Uint8Array([msg.length >> 8, msg.length & 0xff, ...msg]);
}

/** `bytes` as printf(1) octal escapes, for a shell's `printf '...'`. */
export function printfEscaped(bytes: Uint8Array): string {
  return [...bytes].map((b) => `\\${b.toString(8).padStart(3, "0")}`).join("");
}

/** The bytes `od -An -tx1` printed. */
export function parseOdHex(text: string): Uint8Array {
  const hex = text.trim().split(/\s+/).filter((h) => h !== "");
  if (hex.some((h) => !/^[0-9a-f]{2}$/.test(h))) {
    throw new Error(`Cannot parse od output "${text.slice(0, 80)}"`);
  }
  return new Uint8Array(hex.map((h) => parseInt(h, 16)));
}

/** What a TCP-framed DNS answer says. */
export interface DnsAnswer {
  /** RCODE: 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN. */
  readonly rcode: number;
  /** The addresses of its A records, in order. */
  readonly a: string[];
}

/**
 * Decodes a TCP-framed answer to {@linkcode dnsQueryA}'s query `id`; throws
 * naming what is wrong when it is truncated, not an answer or not to `id`.
 */
export function dnsAnswerA(framed: Uint8Array, id: number): DnsAnswer {
  if (framed.length < 14) {
    throw new Error(`DNS answer of ${framed.length} bytes is truncated`);
  }
  const len = (framed[0]! << 8) | framed[1]!;
  const m = framed.subarray(2);
  if (m.length !== len) {
    throw new Error(`DNS answer frames ${len} bytes but has ${m.length}`);
  }
  const u16 = (o: number) => {
    if (o + 2 > m.length) throw new Error(`DNS answer truncated at ${o}`);
    return (m[o]! << 8) | m[o + 1]!;
  };
  if (u16(0) !== id) throw new Error(`DNS answer has id ${u16(0)}, not ${id}`);
  if ((m[2]! & 0x80) === 0) throw new Error("DNS message is not an answer");
  const rcode = m[3]! & 0x0f;
  const qd = u16(4), an = u16(6);
  // A name: labels ending in a zero byte or a two-byte compression pointer.
  const skipName = (o: number) => {
    for (;;) {
      const b = m[o];
      if (b === undefined) throw new Error(`DNS answer truncated at ${o}`);
      if ((b & 0xc0) === 0xc0) return o + 2;
      if (b === 0) return o + 1;
      o += b + 1;
    }
  };
  let o = 12;
  for (let i = 0; i < qd; i++) o = skipName(o) + 4;
  const a: string[] = [];
  for (let i = 0; i < an; i++) {
    o = skipName(o);
    const type = u16(o), rdlen = u16(o + 8);
    o += 10;
    if (o + rdlen > m.length) throw new Error(`DNS answer truncated at ${o}`);
    if (type === 1 && rdlen === 4) a.push([...m.subarray(o, o + 4)].join("."));
    o += rdlen;
  }
  return { rcode, a };
}
