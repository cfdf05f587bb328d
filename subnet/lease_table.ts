/**
 * The set of valid peer leases, shared by the Kubernetes and etcd managers.
 * Managers feed it what they read (a lease or the reason it could not be
 * read); it validates, refuses overlapping claims, warns once per node per
 * change rather than once per event, and turns every change, including a
 * full relist, into added/removed events for the backend.
 *
 * Besides being valid on its own (validate.ts), a peer must not claim
 * what another accepted lease or this node already holds, since each of
 * these would redirect someone else's traffic to it:
 * - a subnet overlapping another's;
 * - a VtepMAC (the FDB entry of a MAC points at one public IP only: two
 *   leases with one MAC re-point the victim's traffic every pass);
 * - a public IP, per backend type (two host-gw routes via one gateway
 *   send the victim's pods to the copier);
 * and its subnet must have the cluster's length, so a /17 cannot shadow
 * the /24s inside it, nor a /32 punch a hole into one. In etcd mode the
 * length is `SubnetLen` / `IPv6SubnetLen`, which flanneld allocates with.
 * In kube mode flanneld ignores `SubnetLen`: podCIDRs come from the
 * controller-manager, which cuts every node's from the cluster CIDR with
 * one `--node-cidr-mask-size` per family. So the length is this node's
 * own podCIDR length (the controller-manager's, whatever it was set to),
 * and until our lease is known the config's default (which matches the
 * controller-manager's defaults, /24 and /64, for a /16 and a /48).
 *
 * Who wins a conflict: a key already accepted keeps its claim; then a
 * claim of the expected subnet length beats an odd-sized one; then the
 * older claim (Node creation time, etcd create revision), so a restart
 * decides as the live agent did; then arrival order. A peer claiming what
 * this node holds always loses. Each refusal is logged once per key and
 * reason, naming the key, and counted in `weft_peers_refused_total`.
 *
 * A single update costs O(1) plus a look at the keys it may unblock, not a
 * pass over the whole cluster: at 5000 nodes each watch event would
 * otherwise spend milliseconds here.
 *
 * @module
 */
import type { NetworkConfig } from "./config.ts";
import { formatNet, type IpNet, netsOverlap, parseIpNet } from "../lib/ip.ts";
import type { Lease, LeaseEvent } from "./lease.ts";
import type { Result } from "../lib/result.ts";
import { validateLease } from "./validate.ts";
import { logger, quote } from "../lib/log.ts";
import { metrics } from "../lib/metrics.ts";

const log = logger("subnet");

interface Entry {
  /** What the manager read, kept to skip validating it twice. */
  read: Result<Lease>;
  /** The lease validated against the config, or why it is refused. */
  valid: Result<Lease>;
  nets: IpNet[];
  /** Exclusive identities it claims besides its subnets (see idsOf). */
  ids: string[];
}

/**
 * What a lease claims exclusively besides its subnets: its VTEP MACs and
 * its public IPs qualified by backend type (a vxlan and a host-gw lease
 * on one address do not fight over the same kernel entry).
 */
function idsOf(lease: Lease): string[] {
  const ids = new Set<string>();
  const a = lease.attrs;
  for (const d of [a.backendData, a.backendV6Data]) {
    const mac = (d as { VtepMAC?: unknown } | undefined)?.VtepMAC;
    if (typeof mac === "string") ids.add(`mac ${mac}`);
  }
  for (const ip of [a.publicIP, a.publicIPv6]) {
    if (ip !== undefined) ids.add(`ip ${a.backendType} ${ip}`);
  }
  return [...ids];
}

/** An identity in words, for the warning. */
function describeId(id: string): string {
  const [kind, a, b] = id.split(" ");
  return kind === "mac"
    ? `VtepMAC "${a}"`
    : `public IP "${b}" (backend type "${a}")`;
}

/** Why a lease is refused, as the `reason` label of the refusal counter. */
type RefusalKind =
  | "invalid"
  | "subnet_length"
  | "overlap"
  | "duplicate_mac"
  | "duplicate_public_ip";

function idKind(id: string): RefusalKind {
  return id.startsWith("mac ") ? "duplicate_mac" : "duplicate_public_ip";
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

function netKey(n: IpNet): string {
  return `${n.family}/${n.addr}/${n.prefix}`;
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
  /**
   * Where the expected peer subnet length comes from: `config`
   * (`SubnetLen`, etcd mode; the default) or `own` (this node's own
   * subnet, kube mode; the config's until our lease is known).
   */
  readonly lengths?: "config" | "own";
}

/** Valid peer leases, keyed by node name or etcd key. */
export class LeaseTable {
  readonly #config: NetworkConfig;
  readonly #opts: LeaseTableOptions;
  /** Every key seen, valid or not, in arrival order. */
  readonly #entries = new Map<string, Entry>();
  /** What the backend has been told, by key. */
  readonly #accepted = new Map<string, Lease>();
  /** Subnets held by accepted keys, by {@linkcode netKey}. */
  readonly #claims = new Map<string, string>();
  /** MACs and public IPs held by accepted keys (see idsOf). */
  readonly #ids = new Map<string, string>();
  /** How many accepted subnets have each `family/prefix` length. */
  readonly #lengths = new Map<string, number>();
  /** Keys refused only because another key holds an overlapping subnet. */
  readonly #blocked = new Set<string>();
  /** Last reason warned about, by key, so a reason is logged once. */
  readonly #warned = new Map<string, string>();
  #ownNets: IpNet[];
  #ownIds: Set<string>;
  /** Keys were accepted from a listing still arriving (see `listed`). */
  #provisional = false;
  /** A complete listing arrived: later listings are only diffed. */
  #complete = false;

  constructor(config: NetworkConfig, opts: LeaseTableOptions) {
    this.#config = config;
    this.#opts = opts;
    this.#ownNets = opts.ownLease ? netsOf(opts.ownLease) : [];
    this.#ownIds = new Set(opts.ownLease ? idsOf(opts.ownLease) : []);
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
    this.#ownIds = new Set(idsOf(lease));
    return this.#recomputeAll(receivedAt);
  }

  /** Records what was read for `key`: a lease, or why it could not be read. */
  update(
    key: string,
    candidate: Result<Lease>,
    receivedAt: number,
  ): LeaseEvent[] {
    if (key === this.#opts.ownKey) return [];
    this.#store(key, candidate);
    const entry = this.#entries.get(key)!;
    const prev = this.#accepted.get(key);
    // The usual change (annotations, a renewal) keeps the subnet, MACs and
    // public IPs: no conflict can appear or go away, so no other key is
    // affected.
    if (
      prev && entry.valid.ok && sameNets(netsOf(prev), entry.nets) &&
      sameIds(idsOf(prev), entry.ids)
    ) {
      this.#warned.delete(key);
      if (sameLease(prev, entry.valid.value)) return [];
      this.#accepted.set(key, entry.valid.value);
      return [
        { type: "removed", lease: prev, receivedAt },
        { type: "added", lease: entry.valid.value, receivedAt },
      ];
    }
    const removed: LeaseEvent[] = [];
    if (prev) {
      this.#release(key);
      removed.push({ type: "removed", lease: prev, receivedAt });
    }
    const added = this.#tryAccept(key, receivedAt);
    if (prev) added.push(...this.#unblock(receivedAt));
    return [...removed, ...added];
  }

  /** Forgets `key` (node deleted, etcd key gone). */
  remove(key: string, receivedAt: number): LeaseEvent[] {
    if (!this.#entries.delete(key)) return [];
    this.#warned.delete(key);
    this.#blocked.delete(key);
    const prev = this.#accepted.get(key);
    if (!prev) return [];
    this.#release(key);
    return [
      { type: "removed", lease: prev, receivedAt },
      ...this.#unblock(receivedAt),
    ];
  }

  /**
   * Takes a key of a listing that is still arriving, so its peer can be
   * programmed before the whole listing is in. Acceptance is provisional:
   * only a standard-length claim free of overlaps is accepted now (a stray
   * supernet waits for the listing), and {@linkcode replaceAll} then
   * decides every key as if nothing had been accepted before, so the
   * outcome equals that of the complete listing alone. Only the first
   * listing is taken early: once one is complete, accepted keys keep
   * their subnet, and a relist is only diffed by `replaceAll`.
   */
  listed(
    key: string,
    candidate: Result<Lease>,
    receivedAt: number,
  ): LeaseEvent[] {
    if (this.#complete || key === this.#opts.ownKey) return [];
    if (this.#accepted.has(key)) return [];
    this.#provisional = true;
    this.#store(key, candidate);
    const entry = this.#entries.get(key)!;
    if (!entry.valid.ok || !entry.nets.every((n) => this.#standard(n))) {
      return [];
    }
    return this.#tryAccept(key, receivedAt);
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
    const provisional = this.#provisional;
    this.#provisional = false;
    this.#complete = true;
    return this.#recomputeAll(receivedAt, provisional);
  }

  /** Validates once, on arrival, so later decisions only check overlaps. */
  #store(key: string, candidate: Result<Lease>): void {
    const entry = this.#entries.get(key);
    if (entry?.read === candidate) return;
    const valid = candidate.ok
      ? validateLease(candidate.value, this.#config)
      : candidate;
    const nets = valid.ok ? netsOf(valid.value) : [];
    const ids = valid.ok ? idsOf(valid.value) : [];
    if (entry) {
      entry.read = candidate;
      entry.valid = valid;
      entry.nets = nets;
      entry.ids = ids;
    } else this.#entries.set(key, { read: candidate, valid, nets, ids });
  }

  /** The subnet length peers of a family must have (see module doc). */
  #expectedLen(family: 4 | 6): number {
    if (this.#opts.lengths === "own") {
      const own = this.#ownNets.find((n) => n.family === family);
      if (own) return own.prefix;
    }
    return family === 4 ? this.#config.subnetLen : this.#config.ipv6SubnetLen;
  }

  /** Whether a subnet has the expected length. */
  #standard(n: IpNet): boolean {
    return n.prefix === this.#expectedLen(n.family);
  }

  #warn(key: string, kind: RefusalKind, reason: string): void {
    if (this.#warned.get(key) === reason) return;
    this.#warned.set(key, reason);
    metrics.peersInvalid.inc();
    metrics.peersRefused.inc({ reason: kind });
    log.warn(`Skipping ${this.#opts.noun} ${quote(key)}: ${reason}`);
  }

  /** Drops an accepted key's claims (not its entry). */
  #release(key: string): void {
    const lease = this.#accepted.get(key);
    if (!lease) return;
    this.#accepted.delete(key);
    for (const n of netsOf(lease)) {
      if (this.#claims.get(netKey(n)) === key) this.#claims.delete(netKey(n));
      const l = `${n.family}/${n.prefix}`;
      const c = (this.#lengths.get(l) ?? 1) - 1;
      if (c > 0) this.#lengths.set(l, c);
      else this.#lengths.delete(l);
    }
    for (const id of idsOf(lease)) {
      if (this.#ids.get(id) === key) this.#ids.delete(id);
    }
  }

  /** Accepts `key` if it is valid and free of overlaps; else warns. */
  #tryAccept(key: string, receivedAt: number): LeaseEvent[] {
    const entry = this.#entries.get(key);
    if (!entry) return [];
    this.#blocked.delete(key);
    if (!entry.valid.ok) {
      this.#warn(key, "invalid", entry.valid.reason);
      return [];
    }
    const nets = entry.nets;
    const odd = nets.find((n) => !this.#standard(n));
    if (odd !== undefined) {
      this.#warn(
        key,
        "subnet_length",
        `its subnet "${formatNet(odd)}" is not a /${
          this.#expectedLen(odd.family)
        } like the cluster's subnets`,
      );
      return [];
    }
    if (nets.some((n) => this.#ownNets.some((o) => netsOverlap(n, o)))) {
      this.#warn(key, "overlap", "its subnet overlaps this node's own subnet");
      return [];
    }
    const mine = entry.ids.find((id) => this.#ownIds.has(id));
    if (mine !== undefined) {
      this.#warn(key, idKind(mine), `${describeId(mine)} is this node's own`);
      return [];
    }
    const holder = this.#overlapHolder(nets);
    if (holder !== undefined) {
      this.#blocked.add(key);
      this.#warn(
        key,
        "overlap",
        `its subnet overlaps the subnet of ${this.#opts.noun} ${quote(holder)}`,
      );
      return [];
    }
    const taken = entry.ids.find((id) => this.#ids.has(id));
    if (taken !== undefined) {
      this.#blocked.add(key);
      this.#warn(
        key,
        idKind(taken),
        `${describeId(taken)} is already used by ${this.#opts.noun} "${
          this.#ids.get(taken)
        }"`,
      );
      return [];
    }
    this.#accepted.set(key, entry.valid.value);
    for (const n of nets) {
      this.#claims.set(netKey(n), key);
      const l = `${n.family}/${n.prefix}`;
      this.#lengths.set(l, (this.#lengths.get(l) ?? 0) + 1);
    }
    for (const id of entry.ids) this.#ids.set(id, key);
    this.#warned.delete(key);
    return [{ type: "added", lease: entry.valid.value, receivedAt }];
  }

  /** After a claim was released: accepts the blocked keys that now fit. */
  #unblock(receivedAt: number): LeaseEvent[] {
    if (this.#blocked.size === 0) return [];
    const waiting = this.#byPriority([...this.#blocked], (k) => this.#rank(k));
    return waiting.flatMap((key) => this.#tryAccept(key, receivedAt));
  }

  /** Priority of an unaccepted key: standard-length claims first. */
  #rank(key: string): number {
    const e = this.#entries.get(key);
    return e && e.nets.every((n) => this.#standard(n)) ? 1 : 2;
  }

  /** Creation order of a key's lease (older first); unknown goes last. */
  #age(key: string): number {
    const v = this.#entries.get(key)?.valid;
    return (v?.ok ? v.value.createdAt : undefined) ?? Infinity;
  }

  /** Orders claimants: rank, then age, then arrival (a stable sort). */
  #byPriority(keys: string[], rank: (key: string) => number): string[] {
    return keys.map((key, i) => ({ key, r: rank(key), a: this.#age(key), i }))
      .sort((x, y) => x.r - y.r || x.a - y.a || x.i - y.i)
      .map((x) => x.key);
  }

  /**
   * Decides every key from scratch (relist, own lease) and diffs. Keys
   * accepted before keep their subnet, unless that acceptance was
   * `provisional`.
   */
  #recomputeAll(receivedAt: number, provisional = false): LeaseEvent[] {
    const before = new Map(this.#accepted);
    const order = this.#byPriority(
      [...this.#entries.keys()],
      (key) => before.has(key) && !provisional ? 0 : this.#rank(key),
    );
    this.#accepted.clear();
    this.#claims.clear();
    this.#ids.clear();
    this.#lengths.clear();
    this.#blocked.clear();
    for (const key of [...this.#warned.keys()]) {
      if (!this.#entries.has(key)) this.#warned.delete(key);
    }
    for (const key of order) this.#tryAccept(key, receivedAt);
    const events: LeaseEvent[] = [];
    for (const [key, lease] of before) {
      const now = this.#accepted.get(key);
      if (!now || !sameLease(now, lease)) {
        events.push({ type: "removed", lease, receivedAt });
      }
    }
    for (const [key, lease] of this.#accepted) {
      const prev = before.get(key);
      if (!prev || !sameLease(prev, lease)) {
        events.push({ type: "added", lease, receivedAt });
      }
    }
    return events;
  }

  /** The accepted key holding a subnet that overlaps one of `nets`. */
  #overlapHolder(nets: IpNet[]): string | undefined {
    // Identical subnets (the usual conflict) are found by exact lookup;
    // when every accepted subnet of the family has the same length as
    // ours, that is the only way to overlap. Mixed lengths are rare: only
    // then scan.
    for (const n of nets) {
      const k = this.#claims.get(netKey(n));
      if (k !== undefined) return k;
    }
    const mixed = nets.some((n) =>
      [...this.#lengths.keys()].some((l) =>
        l.startsWith(`${n.family}/`) && l !== `${n.family}/${n.prefix}`
      )
    );
    if (!mixed) return undefined;
    for (const [key, lease] of this.#accepted) {
      if (netsOf(lease).some((a) => nets.some((b) => netsOverlap(a, b)))) {
        return key;
      }
    }
    return undefined;
  }
}

function sameIds(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((id, i) => id === b[i]);
}

function sameNets(a: IpNet[], b: IpNet[]): boolean {
  return a.length === b.length &&
    a.every((n, i) => netKey(n) === netKey(b[i]!));
}
