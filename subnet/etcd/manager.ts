/**
 * The etcd subnet manager: flanneld's etcd mode (`pkg/subnet/etcd`) over
 * the v3 JSON gateway. The network config is `<prefix>/config`; each node
 * owns a key `<prefix>/subnets/<subnet>` attached to an etcd lease of a
 * day, which it renews before expiry; a key without a lease is a
 * reservation and never expires. Peers are listed, then watched from the
 * next revision; when the watch falls behind a compaction the list is
 * read again and diffed, so deletes missed in the gap are still reported.
 *
 * Nothing here touches the dataplane: an etcd outage only means no events
 * until it is over (every loop retries with backoff until aborted).
 *
 * @module
 */
import { type NetworkConfig, parseNetConfig } from "../config.ts";
import { formatIp, type IpNet, normalizeIp, parseIpNet } from "../../lib/ip.ts";
import type {
  Lease,
  LeaseAttrs,
  LeaseEvent,
  LeaseHandler,
  SubnetManager,
} from "../lease.ts";
import { LeaseTable } from "../lease_table.ts";
import { ClaimTimes } from "./claims.ts";
import { logger } from "../../lib/log.ts";
import { readSubnetEnv } from "../subnet_env.ts";
import { Backoff, sleep } from "../../lib/retry.ts";
import { chooseSubnets, fitsConfig, isTaken } from "./allocate.ts";
import {
  type EtcdWatchOptions,
  LeaseRevokedError,
  ms,
  watchOwnKey,
  watchSubnets,
} from "./watch.ts";
import {
  type Compare,
  describe,
  type EtcdApi,
  EtcdClient,
  type EtcdTlsFiles,
  isTransient,
  type KeyValue,
  MAX_ANSWER_BYTES,
  MAX_VALUE_BYTES,
  retryAfterOf,
} from "./client.ts";
import { metrics } from "../../lib/metrics.ts";
import { fail, type Result } from "../../lib/result.ts";
import {
  configKey,
  decodeLeaseAttrs,
  DEFAULT_PREFIX,
  encodeLeaseAttrs,
  leaseFromKv,
  NO_IPV4_SUBNET,
  parseSubnetKey,
  subnetKey,
  type SubnetPair,
  subnetsDir,
} from "./keys.ts";

const log = logger("etcd");

export { LeaseRevokedError };

/** Every key under the subnets directory, at one store revision. */
interface SubnetListing {
  readonly revision: bigint;
  readonly kvs: KeyValue[];
}

/** flanneld gives up after this many lost races for a subnet key. */
export const RACE_RETRIES = 10;

/** Options of {@linkcode EtcdSubnetManager}. */
export interface EtcdSubnetManagerOptions {
  /** `--etcd-endpoints`, split on commas. */
  readonly endpoints: readonly string[];
  /** `--etcd-prefix`. Default `/coreos.com/network`. */
  readonly prefix?: string;
  /** `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`. */
  readonly tls?: EtcdTlsFiles;
  /** `--etcd-username` and `--etcd-password`. */
  readonly username?: string;
  readonly password?: string;
  /** `--allow-token-over-http`: credentials may go to an http endpoint. */
  readonly allowCredentialsOverHttp?: boolean;
  /**
   * `--subnet-file`: its FLANNEL_SUBNET / FLANNEL_IPV6_SUBNET are tried
   * first when this node has no lease. Default `/run/flannel/subnet.env`.
   */
  readonly subnetFile?: string;
  /** `--subnet-lease-renew-margin` in minutes (fractions allowed). Default 60. */
  readonly renewMarginMinutes?: number;
  /** TTL of the etcd lease in seconds. Default 86400, as flanneld. */
  readonly leaseTtlSeconds?: number;
  /** Timeout of each etcd request. Default 10 s. */
  readonly requestTimeoutMs?: number;
  /** Pause between reads of a missing or invalid config. Default 5 s. */
  readonly configRetryMs?: number;
  /** Pause after a failed renewal. Default 1 min, as flanneld. */
  readonly renewRetryMs?: number;
  /**
   * A watch silent for this long is reconnected. etcd sends a progress
   * notification on idle watches every 10 min by default, so the default
   * is 11 min.
   */
  readonly watchIdleTimeoutMs?: number;
  /** Longest pause between retries after an etcd error. Default 10 s. */
  readonly maxBackoffMs?: number;
  /** The etcd client; default one built from the options above (tests inject one). */
  readonly client?: EtcdApi;
}

/** The lease this manager holds. */
interface Own {
  lease: Lease;
  /** etcd lease ID the key is attached to; `"0"` for a reservation. */
  leaseId: string;
  /** Revision of our last write to the key. */
  revision: bigint;
  /**
   * When the etcd lease runs out on the monotonic clock
   * (`performance.now()`): renewal is scheduled by it, so a wall-clock
   * step cannot make us renew after etcd (whose TTLs are monotonic)
   * already dropped the key. Undefined for a reservation.
   */
  expiresMono?: number;
}

/**
 * A subnet of a lease key as a prefix, for the taken set. The empty IPv4
 * part of an IPv6-only key takes nothing (flanneld's allocator counts it
 * as overlapping every subnet).
 */
function netsOf(pair: SubnetPair): IpNet[] {
  const out: IpNet[] = [];
  for (const s of [pair.subnet, pair.ipv6Subnet]) {
    if (s === undefined || s === NO_IPV4_SUBNET) continue;
    const n = parseIpNet(s);
    if (n.ok) out.push(n.value);
  }
  return out;
}

/** Our lease for a key's subnets: an IPv6-only one has no IPv4 subnet. */
function leaseSubnets(
  pair: SubnetPair,
): { subnet?: string; ipv6Subnet?: string } {
  return {
    ...(pair.subnet !== NO_IPV4_SUBNET && { subnet: pair.subnet }),
    ...(pair.ipv6Subnet !== undefined && { ipv6Subnet: pair.ipv6Subnet }),
  };
}

/**
 * The address a lease value names its node by: its PublicIP, or for an
 * IPv6-only lease (PublicIP absent or flanneld's `"0.0.0.0"`) its
 * PublicIPv6. flanneld matches by PublicIP alone, so with IPv6 only every
 * node's `"0.0.0.0"` matches the first lease listed and a second node
 * takes over the first one's key; weft matches by the IPv6 address.
 */
function ownerOf(attrs: LeaseAttrs): string | undefined {
  const v4 = attrs.publicIP === undefined
    ? undefined
    : normalizeIp(attrs.publicIP);
  if (v4 !== undefined && v4 !== "0.0.0.0") return v4;
  return attrs.publicIPv6 === undefined
    ? undefined
    : normalizeIp(attrs.publicIPv6);
}

function describePair(pair: SubnetPair): string {
  return `ip: ${pair.subnet} ipv6: ${pair.ipv6Subnet ?? "none"}`;
}

/** flanneld's etcd subnet manager, over the etcd v3 JSON gateway. */
export class EtcdSubnetManager implements SubnetManager, Disposable {
  readonly name = "etcd";
  readonly #client: EtcdApi;
  readonly #prefix: string;
  readonly #subnetFile: string;
  readonly #marginMs: number;
  readonly #ttl: number;
  readonly #configRetryMs: number;
  readonly #renewRetryMs: number;
  readonly #watchOpts: EtcdWatchOptions;
  readonly #maxBackoffMs: number;
  #config: NetworkConfig | undefined;
  #own: Own | undefined;
  /**
   * The listing of `<prefix>/subnets/` read last at start-up, passed on to
   * the next reader (previousAttrs → acquireLease → watchLeases), so that
   * a start lists the directory once, not three times: at 5000 keys each
   * listing decodes about 2 MB of JSON. The watch resumes from its
   * revision, so nothing written since is missed.
   */
  #listing: SubnetListing | undefined;

  constructor(opts: EtcdSubnetManagerOptions) {
    this.#client = opts.client ?? new EtcdClient({
      endpoints: opts.endpoints,
      ...(opts.tls && { tls: opts.tls }),
      ...(opts.username !== undefined && opts.username !== "" &&
        { username: opts.username, password: opts.password ?? "" }),
      ...(opts.allowCredentialsOverHttp && { allowCredentialsOverHttp: true }),
      ...(opts.requestTimeoutMs !== undefined &&
        { requestTimeoutMs: opts.requestTimeoutMs }),
    });
    this.#prefix = opts.prefix ?? DEFAULT_PREFIX;
    this.#subnetFile = opts.subnetFile ?? "/run/flannel/subnet.env";
    this.#marginMs = (opts.renewMarginMinutes ?? 60) * 60_000;
    this.#ttl = opts.leaseTtlSeconds ?? 86_400;
    this.#configRetryMs = opts.configRetryMs ?? 5_000;
    this.#renewRetryMs = opts.renewRetryMs ?? 60_000;
    this.#maxBackoffMs = opts.maxBackoffMs ?? 10_000;
    this.#watchOpts = {
      idleTimeoutMs: opts.watchIdleTimeoutMs ?? 11 * 60_000,
      maxBackoffMs: this.#maxBackoffMs,
    };
  }

  /** The etcd client, for tests and diagnostics. */
  get client(): EtcdApi {
    return this.#client;
  }

  /**
   * Reads `<prefix>/config`. A missing, unreadable or invalid config is
   * logged (key and reason) and read again every few seconds until it is
   * usable or `signal` aborts.
   */
  async getNetworkConfig(signal: AbortSignal): Promise<NetworkConfig> {
    const key = configKey(this.#prefix);
    let lastReason = "";
    let lastWarned = 0;
    while (true) {
      signal.throwIfAborted();
      let reason: string;
      try {
        const { kv } = await this.#client.get(key, signal);
        if (kv === undefined) {
          reason = `not found (write net-conf.json there: etcdctl put ${key} ` +
            `'{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')`;
        } else {
          const parsed = parseNetConfig(kv.value);
          if (!parsed.ok) reason = parsed.reason;
          else {
            if (parsed.value.backendDefaulted) {
              log.info(`No Backend.Type in etcd key "${key}": using vxlan`);
            }
            this.#config = parsed.value;
            return parsed.value;
          }
        }
      } catch (e) {
        if (signal.aborted) throw signal.reason;
        reason = describe(e);
      }
      const msg =
        `Cannot use the network config in etcd key "${key}": ${reason}; ` +
        `retrying every ${ms(this.#configRetryMs)}`;
      // Warn on each new reason and once a minute while it lasts.
      if (reason !== lastReason || Date.now() - lastWarned >= 60_000) {
        log.warn(msg);
        lastWarned = Date.now();
      } else log.v(1, msg);
      lastReason = reason;
      await sleep(this.#configRetryMs, signal);
    }
  }

  /**
   * Takes this node's subnet, as flanneld's `tryAcquireLease`: the key
   * whose PublicIP is ours if it fits the config (rewritten with `attrs`
   * and a fresh lease), else the subnet remembered in subnet.env if free,
   * else a random one among the first free ones. Creation is a
   * transaction on `version(key) == 0`; a lost race is retried up to
   * {@linkcode RACE_RETRIES} times. etcd being unreachable is retried
   * until `signal` aborts; running out of subnets is an error.
   */
  async acquireLease(attrs: LeaseAttrs, signal: AbortSignal): Promise<Lease> {
    const config = this.#config ?? await this.getNetworkConfig(signal);
    const previous = await this.#previousSubnets();
    const backoff = new Backoff({ initialMs: 250, maxMs: this.#maxBackoffMs });
    let races = 0;
    while (true) {
      try {
        const listing = await this.#listSubnets(signal);
        const lease = await this.#tryAcquire(
          config,
          attrs,
          previous,
          listing.kvs,
          signal,
        );
        if (lease !== undefined) {
          this.#listing = listing;
          return lease;
        }
        if (++races >= RACE_RETRIES) {
          throw new Error(
            `Max retries reached trying to acquire a subnet: lost ${races} races for a subnet key under "${
              subnetsDir(this.#prefix)
            }"`,
          );
        }
        log.info(
          "The subnet key changed while we claimed it (another node won the race): trying again",
        );
      } catch (e) {
        if (signal.aborted) throw signal.reason;
        if (!isTransient(e)) throw e;
        const d = backoff.next(retryAfterOf(e));
        log.warn(
          `Cannot acquire a lease, retrying in ${ms(d)}: ${describe(e)}`,
        );
        await sleep(d, signal);
      }
    }
  }

  /**
   * Keeps our lease: renews it at expiration minus the renew margin
   * (retrying every minute on failure) and watches its key. Resolves when
   * `signal` aborts; rejects with {@linkcode LeaseRevokedError} ("Lease has
   * been revoked") when the key is deleted or taken over.
   */
  async keepLease(lease: Lease, signal: AbortSignal): Promise<void> {
    const own = this.#own;
    if (own === undefined || own.lease.key !== lease.key) {
      throw new Error(
        `Cannot keep lease "${lease.key}": it was not acquired by this manager`,
      );
    }
    const inner = new AbortController();
    const s = AbortSignal.any([signal, inner.signal]);
    try {
      await Promise.race([
        watchOwnKey(
          this.#client,
          this.#own!.lease.key,
          this.#own!.revision + 1n,
          this.#watchOpts,
          s,
        ),
        this.#renewLoop(s),
      ]);
    } catch (e) {
      if (signal.aborted) return;
      throw e;
    } finally {
      inner.abort();
    }
  }

  /**
   * What this node published before: the attributes of the lease that
   * names `publicIP` (its PublicIP, or PublicIPv6 when IPv6 only), if any, so the VTEP MAC survives a lost device.
   * Undefined when there is none or etcd cannot be read.
   */
  async previousAttrs(
    publicIP: string | undefined,
    signal: AbortSignal,
  ): Promise<LeaseAttrs | undefined> {
    const ours = publicIP === undefined ? undefined : normalizeIp(publicIP);
    if (ours === undefined) return undefined;
    try {
      const listing = await this.#listSubnets(signal);
      this.#listing = listing;
      for (const kv of listing.kvs) {
        const a = decodeLeaseAttrs(kv.value);
        if (a.ok && ownerOf(a.value) === ours) return a.value;
      }
    } catch (e) {
      log.warn(
        `Cannot read earlier lease attributes: ${(e as Error).message}`,
      );
    }
    return undefined;
  }

  /**
   * Lists the leases under `<prefix>/subnets/`, then watches for changes,
   * delivering added/removed events through a {@linkcode LeaseTable} (which
   * validates, refuses overlaps and leaves out our own key). Malformed keys
   * and values are skipped with a warning. Returns when `signal` aborts;
   * etcd errors are retried with backoff.
   */
  async watchLeases(handler: LeaseHandler, signal: AbortSignal): Promise<void> {
    const config = this.#config ?? await this.getNetworkConfig(signal);
    const own = this.#own;
    const table = new LeaseTable(config, {
      ownKey: own?.lease.key ?? "",
      ...(own && { ownLease: own.lease }),
      noun: "etcd key",
    });
    const dir = subnetsDir(this.#prefix);
    // An oversized value is counted once per write, however often a
    // relist delivers it again; the table logs its refusal once.
    const counted = new Map<string, bigint>();
    const read = (kv: KeyValue): Result<Lease> =>
      kv.oversized === undefined
        ? leaseFromKv(kv.key, kv.value, dir, undefined, kv.createRevision)
        : fail(oversizedReason(kv.oversized));
    const toLease = (kv: KeyValue): Result<Lease> => {
      if (kv.oversized === undefined) {
        counted.delete(kv.key);
        return read(kv);
      }
      if (counted.get(kv.key) !== kv.modRevision) {
        counted.set(kv.key, kv.modRevision);
        metrics.peerObjectsOversized.inc();
      }
      return fail(oversizedReason(kv.oversized));
    };
    // Older versions met walking back are read without counting them.
    const claims = new ClaimTimes(this.#client, config, toLease, read);
    // The first listing is always delivered, even empty: it tells the
    // backend that the peer set is complete and stale entries may go.
    let delivered = false;
    let batch: LeaseEvent[] = [];
    const emit = (events: LeaseEvent[]) => {
      if (events.length === 0 && delivered) return;
      delivered = true;
      handler(events);
    };
    const listed = this.#listing;
    this.#listing = undefined;
    await watchSubnets(
      this.#client,
      dir,
      {
        sync: async (kvs, at) =>
          emit(table.replaceAll(await claims.listing(kvs, signal), at)),
        put: (kv, at) =>
          batch.push(...table.update(kv.key, claims.put(kv), at)),
        remove: (key, at) => {
          claims.remove(key);
          batch.push(...table.remove(key, at));
        },
        flush: () => {
          const events = batch;
          batch = [];
          emit(events);
        },
      },
      this.#watchOpts,
      signal,
      listed,
    );
  }

  /** Closes the etcd client. Idempotent. */
  close(): void {
    this.#client.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** The listing a previous step left (taking it), or a fresh one. */
  async #listSubnets(signal: AbortSignal): Promise<SubnetListing> {
    const listing = this.#listing;
    this.#listing = undefined;
    return listing ??
      await this.#client.rangePrefix(subnetsDir(this.#prefix), signal);
  }

  async #previousSubnets(): Promise<Partial<SubnetPair>> {
    const env = await readSubnetEnv(this.#subnetFile);
    if (!env.ok) {
      log.warn(`Ignoring the previous subnet: ${env.reason}`);
      return {};
    }
    if (env.value === null) return {};
    return {
      ...(env.value.subnet !== undefined && { subnet: env.value.subnet }),
      ...(env.value.ipv6Subnet !== undefined &&
        { ipv6Subnet: env.value.ipv6Subnet }),
    };
  }

  /** One acquisition attempt; undefined when another node won a race. */
  async #tryAcquire(
    config: NetworkConfig,
    attrs: LeaseAttrs,
    previous: Partial<SubnetPair>,
    kvs: readonly KeyValue[],
    signal: AbortSignal,
  ): Promise<Lease | undefined> {
    const dir = subnetsDir(this.#prefix);
    const ourIP = ownerOf(attrs);
    const entries: { kv: KeyValue; pair: SubnetPair }[] = [];
    let mine: { kv: KeyValue; pair: SubnetPair } | undefined;
    for (const kv of kvs) {
      const pair = parseSubnetKey(kv.key, dir);
      if (!pair.ok) continue;
      const entry = { kv, pair: pair.value };
      entries.push(entry);
      if (mine !== undefined || ourIP === undefined) continue;
      const a = decodeLeaseAttrs(kv.value);
      if (a.ok && ownerOf(a.value) === ourIP) mine = entry;
    }

    if (mine !== undefined) {
      const what = describePair(mine.pair);
      if (fitsConfig(config, mine.pair)) {
        log.info(`Found lease (${what}) for current IP (${ourIP}), reusing`);
        return await this.#rewrite(mine.kv, mine.pair, attrs, signal);
      }
      log.info(
        `Found lease (${what}) for current IP (${ourIP}) but not compatible with current config, deleting`,
      );
      const del = await this.#client.txn(
        [{
          key: mine.kv.key,
          target: "MOD",
          result: "EQUAL",
          value: mine.kv.modRevision,
        }],
        [{ delete: { key: mine.kv.key } }],
        [],
        signal,
      );
      if (!del.succeeded) return undefined;
      entries.splice(entries.indexOf(mine), 1);
    }

    const taken = entries.flatMap((e) => netsOf(e.pair));
    let pair: SubnetPair | undefined;
    const prevSubnet = config.enableIPv4
      ? previous.subnet
      : previous.ipv6Subnet === undefined
      ? undefined
      : NO_IPV4_SUBNET;
    if (prevSubnet !== undefined) {
      const prev: SubnetPair = {
        subnet: prevSubnet,
        ...(previous.ipv6Subnet !== undefined &&
          { ipv6Subnet: previous.ipv6Subnet }),
      };
      if (!isTaken(prev, taken)) {
        if (fitsConfig(config, prev)) {
          log.info(
            `Found previously leased subnet (${describePair(prev)}), reusing`,
          );
          pair = prev;
        } else {
          log.error(
            `Found previously leased subnet (${
              describePair(prev)
            }) that is not compatible with the Etcd network config, ignoring`,
          );
        }
      }
    }
    if (pair === undefined) {
      if (config.enableIPv4) {
        log.info(
          `Picking subnet in range ${formatIp(4, config.subnetMin!)} ... ${
            formatIp(4, config.subnetMax!)
          }`,
        );
      }
      if (config.enableIPv6) {
        log.info(
          `Picking ipv6 subnet in range ${
            formatIp(6, config.ipv6SubnetMin!)
          } ... ${formatIp(6, config.ipv6SubnetMax!)}`,
        );
      }
      const choice = chooseSubnets(config, taken);
      if (!choice.ok) {
        throw new Error(
          `Cannot acquire a subnet lease under "${dir}": ${choice.reason}`,
        );
      }
      pair = choice.value;
    }

    const key = subnetKey(this.#prefix, pair);
    const put = await this.#putWithNewLease(
      { key, target: "VERSION", result: "EQUAL", value: 0n },
      key,
      encodeLeaseAttrs(attrs),
      signal,
    );
    if (!put) return undefined;
    const lease: Lease = {
      key,
      ...leaseSubnets(pair),
      attrs,
      expiration: put.expiration,
    };
    this.#own = { lease, ...put.own };
    log.info(
      `Allocated lease (${describePair(pair)}) to current node (${ourIP})`,
    );
    return lease;
  }

  /**
   * Rewrites our existing key with new attributes: a reservation stays a
   * reservation, a lease gets a fresh etcd lease (the old one is revoked
   * once nothing is attached to it). Undefined when the key changed since
   * it was read.
   */
  async #rewrite(
    kv: KeyValue,
    pair: SubnetPair,
    attrs: LeaseAttrs,
    signal: AbortSignal,
  ): Promise<Lease | undefined> {
    const unchanged = {
      key: kv.key,
      target: "MOD",
      result: "EQUAL",
      value: kv.modRevision,
    } as const;
    const value = encodeLeaseAttrs(attrs);
    const base = {
      key: kv.key,
      ...leaseSubnets(pair),
      attrs,
    };
    if (kv.lease === "0") {
      const r = await this.#client.txn(
        [unchanged],
        [{ put: { key: kv.key, value } }],
        [],
        signal,
      );
      if (!r.succeeded) return undefined;
      this.#own = { lease: base, leaseId: "0", revision: r.revision };
      return base;
    }
    const put = await this.#putWithNewLease(unchanged, kv.key, value, signal);
    if (!put) return undefined;
    await this.#revokeQuietly(kv.lease);
    const lease = { ...base, expiration: put.expiration };
    this.#own = { lease, ...put.own };
    return lease;
  }

  /**
   * Puts `value` at `key` under a new etcd lease of the lease TTL if
   * `compare` holds. Undefined, with the new lease revoked, when it does
   * not; a failed call revokes it too. Else the lease's expiration and
   * what {@linkcode #own} keeps of it.
   */
  async #putWithNewLease(
    compare: Compare,
    key: string,
    value: string,
    signal: AbortSignal,
  ): Promise<
    | {
      expiration: Date;
      own: { leaseId: string; revision: bigint; expiresMono: number };
    }
    | undefined
  > {
    const started = Date.now();
    const startedMono = performance.now();
    const grant = await this.#client.leaseGrant(this.#ttl, signal);
    let txn;
    try {
      txn = await this.#client.txn(
        [compare],
        [{ put: { key, value, lease: grant.id } }],
        [],
        signal,
      );
    } catch (e) {
      await this.#revokeQuietly(grant.id);
      throw e;
    }
    if (!txn.succeeded) {
      await this.#revokeQuietly(grant.id);
      return undefined;
    }
    return {
      expiration: new Date(started + grant.ttl * 1000),
      own: {
        leaseId: grant.id,
        revision: txn.revision,
        expiresMono: startedMono + grant.ttl * 1000,
      },
    };
  }

  async #revokeQuietly(id: string): Promise<void> {
    try {
      await this.#client.leaseRevoke(id);
    } catch (e) {
      log.v(1, `Cannot revoke unused etcd lease ${id}: ${describe(e)}`);
    }
  }

  /** Renews at expiration minus the margin; retries every minute. */
  async #renewLoop(signal: AbortSignal): Promise<never> {
    const due = () => {
      const own = this.#own!;
      const exp = own.lease.expiration;
      if (exp === undefined) return Infinity; // a reservation never expires
      const left = own.expiresMono !== undefined
        ? own.expiresMono - performance.now()
        : exp.getTime() - Date.now();
      // Never spin: with a margin longer than the TTL, renew every second.
      return Math.max(1000, left - this.#marginMs);
    };
    let delay = due();
    while (true) {
      if (delay !== Infinity) {
        log.v(1, `Waiting for ${ms(delay)} to renew lease`);
      }
      await sleep(delay, signal);
      try {
        await this.#renew(signal);
        log.info(
          `Lease renewed, new expiration: ${
            this.#own!.lease.expiration?.toISOString() ?? "never"
          }`,
        );
        delay = due();
      } catch (e) {
        if (signal.aborted || e instanceof LeaseRevokedError) throw e;
        log.error(
          `Error renewing lease (trying again in ${ms(this.#renewRetryMs)}): ${
            describe(e)
          }`,
        );
        delay = this.#renewRetryMs;
      }
    }
  }

  /**
   * Moves our key to a fresh etcd lease, on condition that it is still
   * attached to ours (flanneld re-grants the same way; a keepalive stream
   * through the gateway would be one more long-lived connection to keep
   * healthy, for a renewal that happens once a day).
   */
  async #renew(signal: AbortSignal, depth = 0): Promise<void> {
    const own = this.#own!;
    const key = own.lease.key;
    const started = Date.now();
    const startedMono = performance.now();
    const grant = await this.#client.leaseGrant(this.#ttl, signal);
    let r;
    try {
      r = await this.#client.txn(
        [{ key, target: "LEASE", result: "EQUAL", value: own.leaseId }],
        [{
          put: {
            key,
            value: encodeLeaseAttrs(own.lease.attrs),
            lease: grant.id,
          },
        }],
        [{ get: { key } }],
        signal,
      );
    } catch (e) {
      await this.#revokeQuietly(grant.id);
      throw e;
    }
    if (r.succeeded) {
      await this.#revokeQuietly(own.leaseId);
      this.#own = {
        lease: {
          ...own.lease,
          expiration: new Date(started + grant.ttl * 1000),
        },
        leaseId: grant.id,
        revision: r.revision,
        expiresMono: startedMono + grant.ttl * 1000,
      };
      return;
    }
    await this.#revokeQuietly(grant.id);
    const kv = r.responses[0]?.kvs[0];
    if (kv === undefined) throw new LeaseRevokedError(key, "was deleted");
    // Rewritten by someone else: still ours if it still names our address
    // (an operator turning it into a reservation, a second instance).
    const attrs = decodeLeaseAttrs(kv.value);
    const ourIP = ownerOf(own.lease.attrs);
    const theirs = attrs.ok ? ownerOf(attrs.value) : undefined;
    if (theirs === undefined || theirs !== ourIP || depth >= 2) {
      throw new LeaseRevokedError(
        key,
        `now belongs to ${theirs ?? "another node"}`,
      );
    }
    if (kv.lease === "0") {
      log.info(`etcd key "${key}" became a reservation: no more renewals`);
      const { expiration: _, ...rest } = own.lease;
      this.#own = { lease: rest, leaseId: "0", revision: kv.modRevision };
      return;
    }
    this.#own = { ...own, leaseId: kv.lease };
    await this.#renew(signal, depth + 1);
  }
}

/** Why a value is refused for its size alone. */
function oversizedReason(bytes: number): string {
  return bytes > MAX_ANSWER_BYTES
    ? `value larger than a whole etcd answer refused for its size (at most ${MAX_VALUE_BYTES} bytes)`
    : `value of ${bytes} bytes refused for its size (at most ${MAX_VALUE_BYTES})`;
}
