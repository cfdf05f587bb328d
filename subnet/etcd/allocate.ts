/**
 * Subnet choice for etcd mode, flanneld's `allocateSubnet` and
 * `isSubnetConfigCompat` as pure functions: which subnets are free
 * between SubnetMin and SubnetMax given the keys already present, whether
 * a remembered subnet still fits the config, and a random pick among the
 * first free ones (random so that racing nodes rarely collide, among the
 * first ones so that the network fills from the bottom).
 *
 * @module
 */
import type { NetworkConfig } from "../config.ts";
import {
  type Family,
  formatNet,
  type IpNet,
  networkAddr,
  parseIpNet,
  sizeOf,
} from "../../lib/ip.ts";
import { fail, ok, type Result } from "../../lib/result.ts";
import { NO_IPV4_SUBNET, type SubnetPair } from "./keys.ts";

/** flanneld picks among at most this many free subnets. */
export const MAX_CANDIDATES = 100;

interface Range {
  start: bigint;
  end: bigint;
}

/**
 * The first `limit` free subnet addresses of length `len` from `min` to
 * `max` (inclusive, both aligned), skipping any that overlaps a `taken`
 * prefix of the same family. Sorted sweep: cost grows with the number of
 * taken prefixes, not with the size of the network.
 */
export function freeSubnets(
  family: Family,
  min: bigint,
  max: bigint,
  len: number,
  taken: readonly IpNet[],
  limit = MAX_CANDIDATES,
): bigint[] {
  const size = sizeOf({ family, addr: 0n, prefix: len });
  const ranges: Range[] = taken
    .filter((n) => n.family === family)
    .map((n) => {
      const start = networkAddr(n);
      return { start, end: start + sizeOf(n) };
    })
    .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  // Merge overlapping ranges so that their ends increase too.
  const merged: Range[] = [];
  for (const r of ranges) {
    const last = merged[merged.length - 1];
    if (last && r.start <= last.end) {
      if (r.end > last.end) last.end = r.end;
    } else merged.push({ ...r });
  }
  const out: bigint[] = [];
  let i = 0;
  let c = min;
  while (c <= max && out.length < limit) {
    while (i < merged.length && merged[i]!.end <= c) i++;
    const r = merged[i];
    if (r && r.start < c + size) {
      // Overlaps: jump to the first aligned subnet after this range.
      c = ((r.end + size - 1n) / size) * size;
      continue;
    }
    out.push(c);
    c += size;
  }
  return out;
}

function inRange(
  net: IpNet | undefined,
  family: Family,
  min: bigint | undefined,
  max: bigint | undefined,
  len: number,
): boolean {
  return net !== undefined && net.family === family && min !== undefined &&
    max !== undefined && net.prefix === len && net.addr >= min &&
    net.addr <= max;
}

function parse(text: string | undefined): IpNet | undefined {
  if (text === undefined) return undefined;
  const n = parseIpNet(text);
  return n.ok ? n.value : undefined;
}

/**
 * Whether a lease's subnets fit the config, flanneld's
 * `isSubnetConfigCompat` and `isIPv6SubnetConfigCompat`: same length,
 * within SubnetMin..SubnetMax, and an IPv6 subnet exactly when IPv6 is
 * enabled.
 */
export function fitsConfig(
  config: NetworkConfig,
  pair: { subnet?: string; ipv6Subnet?: string },
): boolean {
  if (!config.enableIPv4) {
    // IPv6 only: the key's IPv4 part is flanneld's empty subnet.
    if (pair.subnet !== undefined && pair.subnet !== NO_IPV4_SUBNET) {
      return false;
    }
  } else {
    const v4 = parse(pair.subnet);
    if (
      !inRange(v4, 4, config.subnetMin, config.subnetMax, config.subnetLen) ||
      networkAddr(v4!) !== v4!.addr
    ) {
      return false;
    }
  }
  if (!config.enableIPv6) return pair.ipv6Subnet === undefined;
  const v6 = parse(pair.ipv6Subnet);
  return inRange(
    v6,
    6,
    config.ipv6SubnetMin,
    config.ipv6SubnetMax,
    config.ipv6SubnetLen,
  ) && networkAddr(v6!) === v6!.addr;
}

/** Whether any subnet of `pair` overlaps one of `taken`. */
export function isTaken(
  pair: { subnet?: string; ipv6Subnet?: string },
  taken: readonly IpNet[],
): boolean {
  for (const net of [parse(pair.subnet), parse(pair.ipv6Subnet)]) {
    if (net === undefined) continue;
    const start = networkAddr(net);
    const end = start + sizeOf(net);
    for (const t of taken) {
      if (t.family !== net.family) continue;
      const ts = networkAddr(t);
      if (ts < end && start < ts + sizeOf(t)) return true;
    }
  }
  return false;
}

/**
 * Picks a free subnet (and IPv6 subnet when IPv6 is enabled) at random
 * among the first {@linkcode MAX_CANDIDATES} free ones; IPv6 only, the
 * IPv4 part is {@linkcode NO_IPV4_SUBNET}. `random` returns a
 * number in [0, 1), like `Math.random`.
 */
export function chooseSubnets(
  config: NetworkConfig,
  taken: readonly IpNet[],
  random: () => number = Math.random,
): Result<SubnetPair> {
  const pick = (
    family: Family,
    min: bigint | undefined,
    max: bigint | undefined,
    len: number,
  ): Result<string> => {
    const label = family === 4 ? "" : "IPv6 ";
    if (min === undefined || max === undefined) {
      return fail(`No ${label}subnet range in the network config`);
    }
    const free = freeSubnets(family, min, max, len, taken);
    if (free.length === 0) {
      const f = (v: bigint) => formatNet({ family, addr: v, prefix: len });
      return fail(
        `Out of subnets: every ${label}subnet from ${f(min)} to ${
          f(max)
        } is taken`,
      );
    }
    const i = Math.min(free.length - 1, Math.floor(random() * free.length));
    return ok(formatNet({ family, addr: free[i]!, prefix: len }));
  };
  const v4 = config.enableIPv4
    ? pick(4, config.subnetMin, config.subnetMax, config.subnetLen)
    : ok(NO_IPV4_SUBNET);
  if (!v4.ok) return v4;
  if (!config.enableIPv6) return ok({ subnet: v4.value });
  const v6 = pick(
    6,
    config.ipv6SubnetMin,
    config.ipv6SubnetMax,
    config.ipv6SubnetLen,
  );
  if (!v6.ok) return v6;
  return ok({ subnet: v4.value, ipv6Subnet: v6.value });
}
