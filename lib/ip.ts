/**
 * IPv4 and IPv6 addresses and prefixes as plain values. IPv4 goes through
 * one strict grammar ({@linkcode ipv4Octets}), IPv6 through RFC 4291's
 * text forms ({@linkcode ipv6Value}); arithmetic is on bigints so that
 * both families share one code path, and formatting is canonical (IPv6
 * compressed as RFC 5952, the way iproute2 and Go print it) so that
 * strings compare equal when the addresses do.
 *
 * @module
 */
import { fail, ok, type Result } from "./result.ts";
import { quote } from "./log.ts";

/** Address family. */
export type Family = 4 | 6;

/** An address: its family and its value as an unsigned integer. */
export interface Ip {
  readonly family: Family;
  readonly value: bigint;
}

/** A prefix: an address and a prefix length. `addr` may have host bits set. */
export interface IpNet {
  readonly family: Family;
  readonly addr: bigint;
  readonly prefix: number;
}

/** Number of bits in an address of the family. */
export function bitsOf(family: Family): number {
  return family === 4 ? 32 : 128;
}

const OCTET = "(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]\\d|\\d)";
const V4 = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);

/**
 * The four octets of a dotted quad with no leading zeros, or undefined.
 * This is the whole IPv4 grammar weft accepts; it is checked here rather
 * than through a general parser, which cost microseconds a call and showed up in
 * the cost of listing thousands of peers.
 */
export function ipv4Octets(text: string): number[] | undefined {
  const m = V4.exec(text);
  return m === null ? undefined : [+m[1]!, +m[2]!, +m[3]!, +m[4]!];
}

const HEXTET = /^[0-9a-fA-F]{1,4}$/;

/**
 * The value of an IPv6 address in any RFC 4291 text form (`fc00::1`,
 * `::ffff:1.2.3.4`), or undefined. Written here rather than taken from an
 * npm package: any npm import loads Deno's Node compatibility layer, about
 * 15 MiB of RSS for an agent that otherwise never needs it.
 */
export function ipv6Value(text: string): bigint | undefined {
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const groups = halves.map((h) => h === "" ? [] : h.split(":"));
  // A trailing dotted quad stands for the last two groups.
  const last = groups[groups.length - 1]!;
  const tail = last[last.length - 1];
  if (tail !== undefined && tail.includes(".")) {
    const o = ipv4Octets(tail);
    if (o === undefined) return undefined;
    last.splice(
      -1,
      1,
      ((o[0]! << 8) | o[1]!).toString(16),
      ((o[2]! << 8) | o[3]!).toString(16),
    );
  }
  const count = groups.reduce((n, g) => n + g.length, 0);
  if (halves.length === 1 ? count !== 8 : count > 7) return undefined;
  const all = halves.length === 1
    ? groups[0]!
    : [...groups[0]!, ...Array(8 - count).fill("0"), ...groups[1]!];
  let value = 0n;
  for (const g of all) {
    if (!HEXTET.test(g)) return undefined;
    value = (value << 16n) | BigInt(parseInt(g, 16));
  }
  return value;
}

/** Parses an IPv4 or IPv6 address; rejects prefixes, zones and leading zeros. */
export function parseIp(text: string): Result<Ip> {
  if (typeof text !== "string" || text === "") return fail("empty IP address");
  if (text.includes(":")) {
    if (text.includes("%") || text.includes("/")) {
      return fail(`Cannot parse IP address ${quote(text)}`);
    }
    const value = ipv6Value(text);
    if (value === undefined) {
      return fail(`Cannot parse IP address ${quote(text)}`);
    }
    return ok({ family: 6, value });
  }
  const o = ipv4Octets(text);
  if (o === undefined) return fail(`Cannot parse IP address ${quote(text)}`);
  return ok({
    family: 4,
    value: BigInt(((o[0]! << 24) >>> 0) + (o[1]! << 16) + (o[2]! << 8) + o[3]!),
  });
}

/** Parses `addr/prefix`; host bits are allowed (see {@linkcode parseSubnet}). */
export function parseIpNet(text: string): Result<IpNet> {
  if (typeof text !== "string") return fail(`Cannot parse CIDR ${quote(text)}`);
  const slash = text.indexOf("/");
  if (slash < 0) {
    return fail(`Cannot parse CIDR ${quote(text)}: no prefix length`);
  }
  const ip = parseIp(text.slice(0, slash));
  if (!ip.ok) return fail(`Cannot parse CIDR ${quote(text)}: ${ip.reason}`);
  const prefixText = text.slice(slash + 1);
  const prefix = Number(prefixText);
  if (
    !/^\d{1,3}$/.test(prefixText) || prefix > bitsOf(ip.value.family)
  ) {
    return fail(`Cannot parse CIDR ${quote(text)}: bad prefix length`);
  }
  return ok({ family: ip.value.family, addr: ip.value.value, prefix });
}

/** Parses a subnet in canonical form: host bits must be zero. */
export function parseSubnet(text: string): Result<IpNet> {
  const net = parseIpNet(text);
  if (!net.ok) return net;
  if (networkAddr(net.value) !== net.value.addr) {
    return fail(
      `Cannot parse subnet ${quote(text)}: host bits set (network is "${
        formatNet(canonicalNet(net.value))
      }")`,
    );
  }
  return net;
}

/** Mask of the prefix as a bigint. */
export function maskOf(family: Family, prefix: number): bigint {
  const bits = BigInt(bitsOf(family));
  const all = (1n << bits) - 1n;
  return (all << (bits - BigInt(prefix))) & all;
}

/** Network address of a prefix. */
export function networkAddr(net: IpNet): bigint {
  return net.addr & maskOf(net.family, net.prefix);
}

/** The prefix with its host bits cleared. */
export function canonicalNet(net: IpNet): IpNet {
  return { family: net.family, addr: networkAddr(net), prefix: net.prefix };
}

/** Number of addresses in a prefix. */
export function sizeOf(net: IpNet): bigint {
  return 1n << BigInt(bitsOf(net.family) - net.prefix);
}

/** Whether `net` contains the address. */
export function netContainsIp(net: IpNet, ip: Ip): boolean {
  return net.family === ip.family &&
    (ip.value & maskOf(net.family, net.prefix)) === networkAddr(net);
}

/** Whether `outer` contains the whole of `inner`. */
export function netContainsNet(outer: IpNet, inner: IpNet): boolean {
  return outer.family === inner.family && inner.prefix >= outer.prefix &&
    (inner.addr & maskOf(outer.family, outer.prefix)) === networkAddr(outer);
}

/** Whether two prefixes share any address. */
export function netsOverlap(a: IpNet, b: IpNet): boolean {
  return netContainsNet(a, b) || netContainsNet(b, a);
}

/** Formats an address canonically (IPv6 compressed, lower case). */
export function formatIp(family: Family, value: bigint): string {
  if (family === 4) {
    return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 255n)).join(
      ".",
    );
  }
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) {
    groups.push(Number((value >> BigInt(i * 16)) & 0xffffn));
  }
  // Longest run of two or more zero groups becomes "::" (first one on ties).
  let bestStart = -1, bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) [bestStart, bestLen] = [i, j - i];
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return hex.slice(0, bestStart).join(":") + "::" +
    hex.slice(bestStart + bestLen).join(":");
}

/** Formats an {@linkcode Ip}. */
export function ipString(ip: Ip): string {
  return formatIp(ip.family, ip.value);
}

/** Formats a prefix as `addr/prefix`, keeping host bits as given. */
export function formatNet(net: IpNet): string {
  return `${formatIp(net.family, net.addr)}/${net.prefix}`;
}

/** Canonicalises an address string, or returns undefined when it is invalid. */
export function normalizeIp(text: string): string | undefined {
  const ip = parseIp(text);
  return ip.ok ? ipString(ip.value) : undefined;
}
