/**
 * The set of valid peer leases, shared by the Kubernetes and etcd managers.
 * Managers feed it what they read (a lease or the reason it could not be
 * read); it validates, refuses overlapping claims (first holder wins, a
 * peer claiming our own subnet always loses), warns once per node per
 * change rather than once per event, and turns every change, including
 * a full relist, into added/removed events for the backend.
 *
 * @module
 */
import type { NetworkConfig } from "./config.ts";
import { type IpNet, netsOverlap, parseIpNet } from "./ip.ts";
import type { Lease, LeaseEvent } from "./lease.ts";
import type { Result } from "./result.ts";
import { validateLease } from "./validate.ts";
import { logger } from "../agent/log.ts";
import { metrics } from "../agent/metrics.ts";

const log = logger("subnet");

interface Entry {
  /** The lease validated against the config, or why it is refused. */
  valid: Result<Lease>;
  nets: IpNet[];
}

function netsOf(lease: Lease): IpNet[] {
  const out: IpNet[] = [];
  for (const s of [lease.subnet, lease.ipv6Subnet]) {
    if (s === undefined) continue;
    const n = parseIpNet(s);
    if (n.ok) out.push(n.value);
  }
  return out;
}

function sameLease(a: Lease, b: Lease): boolean {
  return a.subnet === b.subnet && a.ipv6Subnet === b.ipv6Subnet &&
    JSON.stringify(a.attrs) === JSON.stringify(b.attrs);
}

/** Options of {@linkcode LeaseTable}. */
export interface LeaseTableOptions {
  /** Our own lease key; it is never reported as a peer. */
  readonly ownKey: string;
  /** Our own subnets; a peer overlapping them is refused. */
  readonly ownLease?: Lease;
  /** Word for the source in messages: `node` or `etcd key`. */
  readonly noun: string;
}

/** Valid peer leases, keyed by node name or etcd key. */
export class LeaseTable {
  readonly #config: NetworkConfig;
  readonly #opts: LeaseTableOptions;
  /** Every key seen, valid or not, in arrival order (first holder wins). */
  readonly #entries = new Map<string, Entry>();
  /** What the backend has been told, by key. */
  readonly #accepted = new Map<string, Lease>();
  /** Last reason warned about, by key, so a reason is logged once. */
  readonly #warned = new Map<string, string>();
  #ownNets: IpNet[];

  constructor(config: NetworkConfig, opts: LeaseTableOptions) {
    this.#config = config;
    this.#opts = opts;
    this.#ownNets = opts.ownLease ? netsOf(opts.ownLease) : [];
  }

  /** The accepted peer leases. */
  get leases(): Lease[] {
    return [...this.#accepted.values()];
  }

  /** Number of keys currently refused. */
  get invalidCount(): number {
    return this.#warned.size;
  }

  /** Sets our own lease (after acquiring it) and re-checks every peer. */
  setOwnLease(lease: Lease, receivedAt: number): LeaseEvent[] {
    this.#ownNets = netsOf(lease);
    return this.#recompute(receivedAt);
  }

  /** Records what was read for `key`: a lease, or why it could not be read. */
  update(
    key: string,
    candidate: Result<Lease>,
    receivedAt: number,
  ): LeaseEvent[] {
    if (key === this.#opts.ownKey) return [];
    this.#store(key, candidate);
    return this.#recompute(receivedAt);
  }

  /** Forgets `key` (node deleted, etcd key gone). */
  remove(key: string, receivedAt: number): LeaseEvent[] {
    if (!this.#entries.delete(key)) return [];
    this.#warned.delete(key);
    return this.#recompute(receivedAt);
  }

  /**
   * Replaces everything with a fresh listing (after a relist): keys not in
   * it are removed, the rest updated, in one pass.
   */
  replaceAll(
    listing: Map<string, Result<Lease>>,
    receivedAt: number,
  ): LeaseEvent[] {
    for (const key of [...this.#entries.keys()]) {
      if (!listing.has(key)) {
        this.#entries.delete(key);
        this.#warned.delete(key);
      }
    }
    for (const [key, candidate] of listing) {
      if (key !== this.#opts.ownKey) this.#store(key, candidate);
    }
    return this.#recompute(receivedAt);
  }

  /** Validates once, on arrival, so a recompute only checks overlaps. */
  #store(key: string, candidate: Result<Lease>): void {
    const valid = candidate.ok
      ? validateLease(candidate.value, this.#config)
      : candidate;
    const nets = valid.ok ? netsOf(valid.value) : [];
    const entry = this.#entries.get(key);
    if (entry) {
      entry.valid = valid;
      entry.nets = nets;
    } else this.#entries.set(key, { valid, nets });
  }

  /** Whether a subnet has the length the config hands out. */
  #standard(n: IpNet): boolean {
    return n.prefix ===
      (n.family === 4 ? this.#config.subnetLen : this.#config.ipv6SubnetLen);
  }

  #warn(key: string, reason: string): void {
    if (this.#warned.get(key) === reason) return;
    this.#warned.set(key, reason);
    metrics.peersInvalid.inc();
    log.warn(`Skipping ${this.#opts.noun} "${key}": ${reason}`);
  }

  /** Decides which keys are valid now and emits the differences. */
  #recompute(receivedAt: number): LeaseEvent[] {
    const next = new Map<string, Lease>();
    const claimed: { key: string; nets: IpNet[] }[] = [];
    const lengths = new Set<string>();
    // Who wins an overlap: a key already accepted keeps its subnet; then a
    // claim of the configured subnet length beats an odd-sized one (a stray
    // supernet key must not take a real node's routes after a restart,
    // when nothing is accepted yet); then arrival order.
    const rank = (key: string, e: Entry) =>
      this.#accepted.has(key)
        ? 0
        : e.nets.every((n) => this.#standard(n))
        ? 1
        : 2;
    const order = [...this.#entries].map(([key, e]) => ({
      key,
      r: rank(key, e),
    }))
      .sort((a, b) => a.r - b.r).map((x) => x.key);
    const byPrefix = new Map<string, string>();
    for (const key of order) {
      const entry = this.#entries.get(key)!;
      const valid = entry.valid;
      if (!valid.ok) {
        this.#warn(key, valid.reason);
        continue;
      }
      const nets = entry.nets;
      if (nets.some((n) => this.#ownNets.some((o) => netsOverlap(n, o)))) {
        this.#warn(key, "its subnet overlaps this node's own subnet");
        continue;
      }
      const holder = overlapHolder(nets, claimed, byPrefix, lengths);
      if (holder !== undefined) {
        this.#warn(
          key,
          `its subnet overlaps the subnet of ${this.#opts.noun} "${holder}"`,
        );
        continue;
      }
      claimed.push({ key, nets });
      for (const n of nets) {
        byPrefix.set(`${n.family}/${n.addr}/${n.prefix}`, key);
        lengths.add(`${n.family}/${n.prefix}`);
      }
      this.#warned.delete(key);
      next.set(key, valid.value);
    }
    const events: LeaseEvent[] = [];
    for (const [key, lease] of this.#accepted) {
      const now = next.get(key);
      if (!now || !sameLease(now, lease)) {
        events.push({ type: "removed", lease, receivedAt });
      }
    }
    for (const [key, lease] of next) {
      const before = this.#accepted.get(key);
      if (!before || !sameLease(before, lease)) {
        events.push({ type: "added", lease, receivedAt });
      }
    }
    this.#accepted.clear();
    for (const [k, v] of next) this.#accepted.set(k, v);
    return events;
  }
}

/** Returns the key holding a subnet that overlaps one of `nets`. */
function overlapHolder(
  nets: IpNet[],
  claimed: { key: string; nets: IpNet[] }[],
  byPrefix: Map<string, string>,
  lengths: Set<string>,
): string | undefined {
  // Identical subnets (the usual conflict) are found by exact lookup; when
  // every claimed subnet of the family has the same length as ours, that
  // is the only way to overlap. Mixed lengths are rare: only then scan.
  for (const n of nets) {
    const k = byPrefix.get(`${n.family}/${n.addr}/${n.prefix}`);
    if (k !== undefined) return k;
  }
  const mixed = nets.some((n) =>
    [...lengths].some((l) =>
      l.startsWith(`${n.family}/`) && l !== `${n.family}/${n.prefix}`
    )
  );
  if (!mixed) return undefined;
  for (const c of claimed) {
    if (c.nets.some((a) => nets.some((b) => netsOverlap(a, b)))) return c.key;
  }
  return undefined;
}
