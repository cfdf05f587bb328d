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
 * - a WireGuard PublicKey (a device holds one peer per key: the copier's
 *   allowed IPs and endpoint would replace the victim's);
 * - a public IP, per backend type (two host-gw routes via one gateway
 *   send the victim's pods to the copier);
 * In etcd mode its subnet must also have the cluster's length,
 * `SubnetLen` / `IPv6SubnetLen`, which every agent allocates with, so a
 * /17 cannot shadow the /24s inside it, nor a /32 punch a hole into one.
 * In kube mode podCIDRs come from the controller-manager, which never
 * hands out overlapping ones but whose `--node-cidr-mask-size` may have
 * changed over a cluster's life: nodes created before and after hold
 * podCIDRs of different lengths, and flanneld programs them all. So a
 * podCIDR of another length is accepted when it overlaps no earlier claim;
 * the expected length (this node's own podCIDR length, the config's
 * default until our lease is known) only breaks ties between claims made
 * at the same time, standard first.
 *
 * Who wins a conflict: the claim made first (`Lease.claimedAt`: in kube
 * mode when the Node's flannel annotations or pod CIDRs were last written,
 * from its managedFields; in etcd mode the revision since which the key
 * has carried its present claims), then the key created first
 * (`Lease.createdAt`), then a subnet of the expected length, then the key
 * name. This is a total order over what
 * every agent reads from the API, never over when it read it, so an
 * agent started at any time reaches the verdict of one that watched the
 * claims being made. A claim whose time is unknown comes last. A peer
 * claiming what this node holds always loses. Each refusal is logged once
 * per key and reason, naming the key, and counted in
 * `weft_peers_refused_total`.
 *
 * A single update costs O(1) plus a look at the keys it may unblock, not a
 * pass over the whole cluster: at 5000 nodes each watch event would
 * otherwise spend milliseconds here. A claim that arrives after a later
 * one it conflicts with (a restart's listing in name order, a holder that
 * re-wrote its claims) displaces that holder on the spot; the keys its
 * release frees are then tried again, as after a removal.
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
  /** Its place in the claim order (see {@linkcode precedes}). */
  order: ClaimOrder;
}

/** When a lease's claims were made; unknown counts as last. */
interface ClaimOrder {
  readonly claimedAt: number;
  readonly createdAt: number;
}

const UNKNOWN: ClaimOrder = { claimedAt: Infinity, createdAt: Infinity };

function orderOf(valid: Result<Lease>): ClaimOrder {
  const l = valid.ok ? valid.value : undefined;
  return {
    claimedAt: l?.claimedAt ?? Infinity,
    createdAt: l?.createdAt ?? Infinity,
  };
}

function sameOrder(a: ClaimOrder, b: ClaimOrder): boolean {
  return a.claimedAt === b.claimedAt && a.createdAt === b.createdAt;
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
    const key = (d as { PublicKey?: unknown } | undefined)?.PublicKey;
    if (typeof key === "string") ids.add(`wgkey ${key}`);
  }
  for (const ip of [a.publicIP, a.publicIPv6]) {
    if (ip !== undefined) ids.add(`ip ${a.backendType} ${ip}`);
  }
  return [...ids];
}

/**
 * Everything a lease claims exclusively, as strings: its subnets and its
 * identities (see idsOf). Two leases conflict only if they share one, or
 * if one's subnet has an odd length (refused on its own).
 */
export function claimsOf(lease: Lease): string[] {
  return [...netsOf(lease).map(netKey), ...idsOf(lease)];
}

/**
 * The keys among `leases` that share a claim with another: the only ones
 * whose claim time can decide anything.
 */
export function contested(leases: Iterable<Lease>): Set<string> {
  const by = new Map<string, string>();
  const out = new Set<string>();
  for (const l of leases) {
    for (const c of claimsOf(l)) {
      const other = by.get(c);
      if (other === undefined) by.set(c, l.key);
      else if (other !== l.key) out.add(other).add(l.key);
    }
  }
  return out;
}

/** An identity in words, for the warning. */
function describeId(id: string): string {
  const [kind, a, b] = id.split(" ");
  if (kind === "mac") return `VtepMAC "${a}"`;
  if (kind === "wgkey") return `WireGuard PublicKey "${a}"`;
  return `public IP "${b}" (backend type "${a}")`;
}

/** Why a lease is refused, as the `reason` label of the refusal counter. */
type RefusalKind =
  | "invalid"
  | "subnet_length"
  | "overlap"
  | "duplicate_mac"
  | "duplicate_public_key"
  | "duplicate_public_ip";

function idKind(id: string): RefusalKind {
  if (id.startsWith("mac ")) return "duplicate_mac";
  if (id.startsWith("wgkey ")) return "duplicate_public_key";
  return "duplicate_public_ip";
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
   * (`SubnetLen`, etcd mode; the default; other lengths are refused) or
   * `own` (this node's own subnet, kube mode; the config's until our
   * lease is known; other lengths are accepted, after the standard ones).
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
  /** Keys refused only because another key holds one of their claims. */
  readonly #blocked = new Set<string>();
  /** Claims released since the last `#unblock`: ids, and subnets. */
  readonly #freedIds = new Set<string>();
  #freedNets: IpNet[] = [];
  /** Last reason warned about, by key, so a reason is logged once. */
  readonly #warned = new Map<string, string>();
  #ownNets: IpNet[];
  #ownIds: Set<string>;
  /**
   * A key took claims from holders whose claims came later: they, and the
   * keys their release frees, must be decided again (see `#settle`).
   */
  #displaced = false;
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
    const before = this.#entries.get(key)?.order;
    this.#store(key, candidate);
    const entry = this.#entries.get(key)!;
    const prev = this.#accepted.get(key);
    // The usual change (annotations, a renewal) keeps the subnet, MACs,
    // public IPs and claim time: no conflict can appear or go away, so no
    // other key is affected.
    if (
      prev && entry.valid.ok && sameNets(netsOf(prev), entry.nets) &&
      sameIds(idsOf(prev), entry.ids) && sameOrder(before!, entry.order)
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
    return this.#settle([...removed, ...added], receivedAt);
  }

  /** Forgets `key` (node deleted, etcd key gone). */
  remove(key: string, receivedAt: number): LeaseEvent[] {
    if (!this.#entries.delete(key)) return [];
    this.#warned.delete(key);
    this.#blocked.delete(key);
    const prev = this.#accepted.get(key);
    if (!prev) return [];
    this.#release(key);
    return this.#settle([
      { type: "removed", lease: prev, receivedAt },
      ...this.#unblock(receivedAt),
    ], receivedAt);
  }

  /**
   * Takes a key of a listing that is still arriving, so its peer can be
   * programmed before the whole listing is in. Acceptance is provisional:
   * only a standard-length claim free of overlaps is accepted now (a stray
   * supernet waits for the listing), and {@linkcode replaceAll} then
   * decides every key again, so the outcome equals that of the complete
   * listing alone. Only the first listing is taken early.
   */
  listed(
    key: string,
    candidate: Result<Lease>,
    receivedAt: number,
  ): LeaseEvent[] {
    if (this.#complete || key === this.#opts.ownKey) return [];
    if (this.#accepted.has(key)) return [];
    this.#store(key, candidate);
    const entry = this.#entries.get(key)!;
    if (!entry.valid.ok || !entry.nets.every((n) => this.#standard(n))) {
      return [];
    }
    return this.#settle(this.#tryAccept(key, receivedAt), receivedAt);
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
    this.#complete = true;
    return this.#recomputeAll(receivedAt);
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
    const order = orderOf(valid);
    if (entry) {
      entry.read = candidate;
      entry.valid = valid;
      entry.nets = nets;
      entry.ids = ids;
      entry.order = order;
    } else {
      this.#entries.set(key, { read: candidate, valid, nets, ids, order });
    }
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
      this.#freedIds.add(id);
    }
    this.#freedNets.push(...netsOf(lease));
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
    const odd = this.#opts.lengths === "own"
      ? undefined
      : nets.find((n) => !this.#standard(n));
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
    // The greedy verdict in claim order: a holder whose claim came first
    // keeps it; holders whose claims came later are displaced.
    const netHolders = this.#overlapHolders(nets);
    const first = netHolders.find((h) => this.#precedes(h, key));
    if (first !== undefined) {
      this.#blocked.add(key);
      this.#warn(
        key,
        "overlap",
        `its subnet overlaps the subnet of ${this.#opts.noun} ${quote(first)}`,
      );
      return [];
    }
    const taken = entry.ids.find((id) => {
      const h = this.#ids.get(id);
      return h !== undefined && this.#precedes(h, key);
    });
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
    const events: LeaseEvent[] = [];
    const later = new Set(netHolders);
    for (const id of entry.ids) {
      const h = this.#ids.get(id);
      if (h !== undefined) later.add(h);
    }
    for (const h of later) {
      events.push({
        type: "removed",
        lease: this.#accepted.get(h)!,
        receivedAt,
      });
      this.#release(h);
      this.#blocked.add(h);
      this.#displaced = true;
    }
    this.#accepted.set(key, entry.valid.value);
    for (const n of nets) {
      this.#claims.set(netKey(n), key);
      const l = `${n.family}/${n.prefix}`;
      this.#lengths.set(l, (this.#lengths.get(l) ?? 0) + 1);
    }
    for (const id of entry.ids) this.#ids.set(id, key);
    this.#warned.delete(key);
    events.push({ type: "added", lease: entry.valid.value, receivedAt });
    return events;
  }

  /** After a claim was released: accepts the blocked keys that now fit. */
  #unblock(receivedAt: number): LeaseEvent[] {
    const ids = new Set(this.#freedIds);
    const nets = this.#freedNets;
    this.#freedIds.clear();
    this.#freedNets = [];
    if (this.#blocked.size === 0) return [];
    // Only a key that wants a released claim can be freed by its release.
    const waiting = this.#inClaimOrder([...this.#blocked].filter((key) => {
      const e = this.#entries.get(key);
      return e !== undefined && (e.ids.some((id) => ids.has(id)) ||
        e.nets.some((n) => nets.some((f) => netsOverlap(n, f))));
    }));
    return waiting.flatMap((key) => this.#tryAccept(key, receivedAt));
  }

  /**
   * Whether `a`'s claims were made before `b`'s: claim time, then creation,
   * then key name (see the module doc).
   */
  #precedes(a: string, b: string): boolean {
    return this.#compare(a, b) < 0;
  }

  #compare(a: string, b: string): number {
    const x = this.#entries.get(a)?.order ?? UNKNOWN;
    const y = this.#entries.get(b)?.order ?? UNKNOWN;
    return compareNumbers(x.claimedAt, y.claimedAt) ||
      compareNumbers(x.createdAt, y.createdAt) ||
      compareNumbers(this.#oddLength(a), this.#oddLength(b)) ||
      (a < b ? -1 : a > b ? 1 : 0);
  }

  /** 1 when a key claims a subnet of another length than expected, else 0. */
  #oddLength(key: string): number {
    const nets = this.#entries.get(key)?.nets ?? [];
    return nets.every((n) => this.#standard(n)) ? 0 : 1;
  }

  #inClaimOrder(keys: string[]): string[] {
    return keys.sort((a, b) => this.#compare(a, b));
  }

  /**
   * Ends an incremental step: after a displacement, re-tries the blocked
   * keys (the displaced ones, refused now, and those their release freed)
   * until nothing moves. Each round only adds a key ahead of every key it
   * removes, so this ends; the table then holds exactly the greedy verdict
   * in claim order (no two accepted keys conflict, and every refused key
   * conflicts with an accepted one ahead of it).
   */
  #settle(events: LeaseEvent[], receivedAt: number): LeaseEvent[] {
    while (this.#displaced) {
      this.#displaced = false;
      events.push(...this.#unblock(receivedAt));
    }
    return netEffect(events);
  }

  /** Decides every key from scratch, in claim order, and diffs. */
  #recomputeAll(receivedAt: number): LeaseEvent[] {
    const before = new Map(this.#accepted);
    const order = this.#inClaimOrder([...this.#entries.keys()]);
    this.#accepted.clear();
    this.#claims.clear();
    this.#ids.clear();
    this.#lengths.clear();
    this.#blocked.clear();
    this.#freedIds.clear();
    this.#freedNets = [];
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

  /** The accepted keys holding a subnet that overlaps one of `nets`. */
  #overlapHolders(nets: IpNet[]): string[] {
    // Identical subnets (the usual conflict) are found by exact lookup;
    // when every accepted subnet of the family has the same length as
    // ours, that is the only way to overlap. Mixed lengths are rare: only
    // then scan.
    const out = new Set<string>();
    for (const n of nets) {
      const k = this.#claims.get(netKey(n));
      if (k !== undefined) out.add(k);
    }
    const mixed = nets.some((n) =>
      [...this.#lengths.keys()].some((l) =>
        l.startsWith(`${n.family}/`) && l !== `${n.family}/${n.prefix}`
      )
    );
    if (mixed) {
      for (const [key, lease] of this.#accepted) {
        if (netsOf(lease).some((a) => nets.some((b) => netsOverlap(a, b)))) {
          out.add(key);
        }
      }
    }
    return [...out];
  }
}

function sameIds(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((id, i) => id === b[i]);
}

function sameNets(a: IpNet[], b: IpNet[]): boolean {
  return a.length === b.length &&
    a.every((n, i) => netKey(n) === netKey(b[i]!));
}

function compareNumbers(a: number, b: number): number {
  return a === b ? 0 : a < b ? -1 : 1;
}

/**
 * The net effect of a sequence of events, per key: a lease removed and
 * added back unchanged is no event, so the backend never sees a claim
 * flicker to a key that ends up refused.
 */
function netEffect(events: LeaseEvent[]): LeaseEvent[] {
  const first = new Map<string, Lease | undefined>();
  const last = new Map<string, Lease | undefined>();
  for (const e of events) {
    const k = e.lease.key;
    if (!first.has(k)) first.set(k, e.type === "removed" ? e.lease : undefined);
    last.set(k, e.type === "added" ? e.lease : undefined);
  }
  const receivedAt = events[0]?.receivedAt ?? 0;
  const removed: LeaseEvent[] = [];
  const added: LeaseEvent[] = [];
  for (const [k, was] of first) {
    const now = last.get(k);
    if (was && now && sameLease(was, now)) continue;
    if (was) removed.push({ type: "removed", lease: was, receivedAt });
    if (now) added.push({ type: "added", lease: now, receivedAt });
  }
  return [...removed, ...added];
}
