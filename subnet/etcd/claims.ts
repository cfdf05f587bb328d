/**
 * When each etcd key's present claims were made, for the lease table's
 * claim order (the earlier claim keeps a MAC, public IP or subnet). A
 * renewal rewrites a key's value (its mod revision moves) without changing
 * what it claims, and an older key may rewrite its value to claim a newer
 * key's MAC, so neither the create nor the mod revision tells when a claim
 * was made. What does: the revision of the first of the key's versions,
 * back from the present one, that carries the same claims.
 *
 * - A write the watch delivers that changes a key's claims (or creates it)
 *   is that revision, seen live.
 * - A key never rewritten since its creation: its create revision.
 * - A key of a listing rewritten since: read back one version at a time
 *   (`get` at the revision before each version) while the claims stay the
 *   same. Only for contested keys (sharing a claim with another), at most
 *   {@linkcode MAX_VERSIONS} reads per key; otherwise its mod revision
 *   stands in, an upper bound, later than the truth but earlier than any
 *   claim made after the listing.
 * - A walk that reaches etcd's compacted revision has found a claim older
 *   than the compaction: 0, earliest of all. Two such claims tie and the
 *   lease table falls back to the key created first.
 *
 * @module
 */
import type { EtcdApi, KeyValue } from "./client.ts";
import type { Lease } from "../lease.ts";
import type { NetworkConfig } from "../config.ts";
import type { Result } from "../../lib/result.ts";
import { claimsOf, contested } from "../lease_table.ts";
import { validateLease } from "../validate.ts";
import { isCompacted } from "./watch.ts";

/** Most versions read back per contested key on a listing. */
const MAX_VERSIONS = 1000;

interface Known {
  readonly createRevision: bigint;
  readonly claims: string;
  at: bigint;
  /** `at` is only an upper bound (a listed key not yet walked back). */
  bound: boolean;
}

/** Claim revisions by key, kept across watch events and relistings. */
export class ClaimTimes {
  readonly #client: Pick<EtcdApi, "get">;
  readonly #config: NetworkConfig;
  readonly #toLease: (kv: KeyValue) => Result<Lease>;
  readonly #readVersion: (kv: KeyValue) => Result<Lease>;
  readonly #known = new Map<string, Known>();

  /**
   * `toLease` reads a key's present value into a lease (it may count what
   * it refuses); `readVersion` reads an older version met while walking
   * back, without side effects (default: `toLease`). Claims are compared
   * as the lease table compares them: on validated leases, so another
   * spelling of a MAC or an address is the same claim.
   */
  constructor(
    client: Pick<EtcdApi, "get">,
    config: NetworkConfig,
    toLease: (kv: KeyValue) => Result<Lease>,
    readVersion: (kv: KeyValue) => Result<Lease> = toLease,
  ) {
    this.#client = client;
    this.#config = config;
    this.#toLease = toLease;
    this.#readVersion = readVersion;
  }

  /**
   * A key written, as the watch delivered it: its lease with `claimedAt`
   * set (exact: the watch saw every version since the listing).
   */
  put(kv: KeyValue): Result<Lease> {
    return this.#stamp(kv, this.#toLease(kv), false);
  }

  /** A key deleted: its claims end. */
  remove(key: string): void {
    this.#known.delete(key);
  }

  /**
   * A whole listing: every lease with `claimedAt` set, contested keys
   * walked back through etcd's history first.
   */
  async listing(
    kvs: readonly KeyValue[],
    signal: AbortSignal,
  ): Promise<Map<string, Result<Lease>>> {
    const keys = new Set(kvs.map((kv) => kv.key));
    for (const key of [...this.#known.keys()]) {
      if (!keys.has(key)) this.#known.delete(key);
    }
    const read = kvs.map((kv) => ({ kv, lease: this.#toLease(kv) }));
    const valid = read.flatMap((r) => {
      const v = r.lease.ok
        ? validateLease(r.lease.value, this.#config)
        : r.lease;
      return v.ok ? [v.value] : [];
    });
    const disputed = contested(valid);
    for (const { kv, lease } of read) {
      this.#stamp(kv, lease, true);
      const k = this.#known.get(kv.key);
      if (k?.bound && disputed.has(kv.key)) {
        k.at = await this.#walkBack(kv, k.claims, signal);
        k.bound = false;
      }
    }
    return new Map(
      read.map(({ kv, lease }) => [kv.key, this.#with(kv, lease)]),
    );
  }

  #stamp(kv: KeyValue, lease: Result<Lease>, listed: boolean): Result<Lease> {
    if (!lease.ok) {
      this.#known.delete(kv.key);
      return lease;
    }
    const claims = this.#claimsOf(lease) ?? "";
    const prev = this.#known.get(kv.key);
    if (
      !prev || prev.createRevision !== kv.createRevision ||
      prev.claims !== claims
    ) {
      const fresh = kv.createRevision === kv.modRevision;
      this.#known.set(kv.key, {
        createRevision: kv.createRevision,
        claims,
        at: fresh ? kv.createRevision : kv.modRevision,
        bound: listed && !fresh,
      });
    }
    return this.#with(kv, lease);
  }

  #with(kv: KeyValue, lease: Result<Lease>): Result<Lease> {
    const k = this.#known.get(kv.key);
    if (!lease.ok || !k) return lease;
    return { ok: true, value: { ...lease.value, claimedAt: Number(k.at) } };
  }

  /** The first revision, back from `kv`, whose version has `claims`. */
  async #walkBack(
    kv: KeyValue,
    claims: string,
    signal: AbortSignal,
  ): Promise<bigint> {
    let start = kv;
    for (let i = 0; i < MAX_VERSIONS; i++) {
      if (start.modRevision <= kv.createRevision) return kv.createRevision;
      let older: KeyValue | undefined;
      try {
        older = (await this.#client.get(kv.key, signal, start.modRevision - 1n))
          .kv;
      } catch (e) {
        if (isCompacted(e)) return 0n;
        throw e;
      }
      if (!older || older.createRevision !== kv.createRevision) break;
      if (this.#claimsOf(this.#readVersion(older)) !== claims) break;
      start = older;
    }
    return start.modRevision;
  }

  /** A lease's claims as the lease table sees them (validated), in words. */
  #claimsOf(lease: Result<Lease>): string | undefined {
    const v = lease.ok ? validateLease(lease.value, this.#config) : lease;
    return v.ok ? claimsOf(v.value).join(" ") : undefined;
  }
}
