/**
 * An in-memory etcd for unit tests of the subnet manager, as
 * `kube/_fake_api.ts` serves the Kubernetes manager: keys with create/mod
 * revisions and versions, leases that delete their keys when revoked or
 * expired by hand, transactions with compares, watches that replay
 * history from a start revision and report compaction, and injectable
 * failures. It speaks the {@linkcode EtcdApi} interface, not HTTP.
 *
 * @module
 */
import {
  boundValue,
  type Compare,
  type EtcdApi,
  EtcdError,
  type GrantedLease,
  type KeyValue,
  type Op,
  type TxnResult,
  type WatchEvent,
  type WatchOptions,
  type WatchResponse,
} from "./client.ts";

interface Change {
  readonly revision: bigint;
  readonly event: WatchEvent;
}

/** An in-memory etcd implementing {@linkcode EtcdApi}. */
export class FakeEtcd implements EtcdApi {
  #revision = 1n;
  #compacted = 0n;
  #nextLease = 1000;
  readonly #kvs = new Map<string, KeyValue>();
  readonly #leases = new Map<string, { ttl: number; keys: Set<string> }>();
  readonly #history: Change[] = [];
  readonly #waiters = new Set<() => void>();
  /** Errors the next requests throw, in order (an outage). */
  readonly failures: EtcdError[] = [];
  /** Requests made, by method name: `txn`, `watch`, ... */
  readonly calls: string[] = [];
  /** Runs before each transaction is evaluated (to stage a race). */
  onTxn?: (compare: Compare[]) => void | Promise<void>;
  readonly #breakers = new Set<(e: Error) => void>();

  /** Current store revision. */
  get revision(): bigint {
    return this.#revision;
  }

  /** Key → value, for assertions. */
  values(): Map<string, string> {
    return new Map([...this.#kvs].map(([k, kv]) => [k, kv.value]));
  }

  /** The key's etcd lease ID, `"0"` for none; undefined when absent. */
  leaseOf(key: string): string | undefined {
    return this.#kvs.get(key)?.lease;
  }

  /** The TTL a lease was granted with. */
  ttlOf(id: string): number | undefined {
    return this.#leases.get(id)?.ttl;
  }

  /** Makes the next `n` requests fail as if etcd were unreachable. */
  outage(n: number): void {
    for (let i = 0; i < n; i++) {
      this.failures.push(
        new EtcdError("Cannot reach etcd (fake outage)", "unreachable"),
      );
    }
  }

  /** Resolves at the next write to the store or revoked lease. */
  changed(): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        this.#waiters.delete(wake);
        resolve();
      };
      this.#waiters.add(wake);
    });
  }

  /** Resolves once a watch stream is open and waiting for changes. */
  watching(): Promise<void> {
    if (this.#breakers.size > 0) return Promise.resolve();
    return new Promise((resolve) => this.#onWatching.push(resolve));
  }

  readonly #onWatching: (() => void)[] = [];

  /** Breaks every open watch stream, as a lost connection does. */
  breakWatches(): void {
    for (const b of [...this.#breakers]) {
      b(new EtcdError("Watch stream from etcd (fake) ended", "unreachable"));
    }
  }

  /** Drops history up to `revision`: older watches get `compactRevision`. */
  compact(revision: bigint = this.#revision): void {
    this.#compacted = revision;
  }

  /** Expires a lease as etcd would at its TTL: its keys go. */
  expire(id: string): void {
    this.#revoke(id);
  }

  #request(name: string): void {
    this.calls.push(name);
    const f = this.failures.shift();
    if (f) throw f;
  }

  #commit(events: WatchEvent[]): bigint {
    if (events.length === 0) return this.#revision;
    this.#revision++;
    for (const event of events) {
      this.#history.push({ revision: this.#revision, event });
    }
    for (const wake of this.#waiters) wake();
    return this.#revision;
  }

  #putKv(key: string, value: string, lease = "0"): WatchEvent {
    const old = this.#kvs.get(key);
    const rev = this.#revision + 1n;
    if (old && old.lease !== "0") this.#leases.get(old.lease)?.keys.delete(key);
    if (lease !== "0") {
      const l = this.#leases.get(lease);
      if (!l) {
        throw new EtcdError(
          `etcdserver: requested lease not found (lease ${lease})`,
          "api",
          5,
        );
      }
      l.keys.add(key);
    }
    const kv: KeyValue = {
      key,
      value,
      createRevision: old?.createRevision ?? rev,
      modRevision: rev,
      version: (old?.version ?? 0n) + 1n,
      lease,
    };
    this.#kvs.set(key, kv);
    return { type: "PUT", kv };
  }

  #deleteKv(key: string): WatchEvent | undefined {
    const old = this.#kvs.get(key);
    if (!old) return undefined;
    this.#kvs.delete(key);
    if (old.lease !== "0") this.#leases.get(old.lease)?.keys.delete(key);
    return {
      type: "DELETE",
      kv: { ...old, value: "", modRevision: this.#revision + 1n },
    };
  }

  #revoke(id: string): boolean {
    const l = this.#leases.get(id);
    if (!l) return false;
    this.#leases.delete(id);
    const events = [...l.keys].map((k) => this.#deleteKv(k)!);
    this.#commit(events);
    if (events.length === 0) { for (const wake of this.#waiters) wake(); }
    return true;
  }

  get(
    key: string,
    _signal?: AbortSignal,
    revision?: bigint,
  ): Promise<{ kv: KeyValue | undefined; revision: bigint }> {
    this.#request("get");
    if (revision === undefined) {
      const kv = this.#kvs.get(key);
      return Promise.resolve({
        kv: kv && boundValue(kv),
        revision: this.#revision,
      });
    }
    if (revision < this.#compacted) {
      return Promise.reject(
        new EtcdError(
          "etcdserver: mvcc: required revision has been compacted",
          "api",
          11,
        ),
      );
    }
    const last = this.#history.findLast((c) =>
      c.revision <= revision && c.event.kv.key === key
    );
    // As the real client: an oversized value is kept out of the answer.
    const kv = last?.event.type === "PUT"
      ? boundValue(last.event.kv)
      : undefined;
    return Promise.resolve({ kv, revision: this.#revision });
  }

  rangePrefix(
    prefix: string,
    _signal?: AbortSignal,
  ): Promise<{ revision: bigint; kvs: KeyValue[] }> {
    this.#request("rangePrefix");
    const kvs = [...this.#kvs.values()]
      .filter((kv) => kv.key.startsWith(prefix))
      .sort((a, b) => a.key < b.key ? -1 : a.key > b.key ? 1 : 0)
      .map(boundValue);
    return Promise.resolve({ revision: this.#revision, kvs });
  }

  put(
    key: string,
    value: string,
    opts: { lease?: string; signal?: AbortSignal } = {},
  ): Promise<bigint> {
    this.#request("put");
    return Promise.resolve(this.#commit([this.#putKv(key, value, opts.lease)]));
  }

  delete(key: string, _signal?: AbortSignal): Promise<number> {
    this.#request("delete");
    const ev = this.#deleteKv(key);
    this.#commit(ev ? [ev] : []);
    return Promise.resolve(ev ? 1 : 0);
  }

  #holds(c: Compare): boolean {
    const kv = this.#kvs.get(c.key);
    if (c.target === "LEASE") {
      const have = kv?.lease ?? "0";
      return c.result === "EQUAL" ? have === c.value : have !== c.value;
    }
    const have = kv === undefined ? 0n : {
      VERSION: kv.version,
      CREATE: kv.createRevision,
      MOD: kv.modRevision,
    }[c.target];
    switch (c.result) {
      case "EQUAL":
        return have === c.value;
      case "NOT_EQUAL":
        return have !== c.value;
      case "GREATER":
        return have > c.value;
      case "LESS":
        return have < c.value;
    }
  }

  async txn(
    compare: Compare[],
    success: Op[],
    failure: Op[] = [],
    _signal?: AbortSignal,
  ): Promise<TxnResult> {
    this.#request("txn");
    await this.onTxn?.(compare);
    const succeeded = compare.every((c) => this.#holds(c));
    const events: WatchEvent[] = [];
    const responses: { kvs: KeyValue[] }[] = [];
    for (const op of succeeded ? success : failure) {
      if ("put" in op) {
        events.push(this.#putKv(op.put.key, op.put.value, op.put.lease));
        responses.push({ kvs: [] });
      } else if ("get" in op) {
        const kv = this.#kvs.get(op.get.key);
        responses.push({ kvs: kv ? [kv] : [] });
      } else {
        const ev = this.#deleteKv(op.delete.key);
        if (ev) events.push(ev);
        responses.push({ kvs: [] });
      }
    }
    const revision = this.#commit(events);
    return { succeeded, revision, responses };
  }

  leaseGrant(ttlSeconds: number, _signal?: AbortSignal): Promise<GrantedLease> {
    this.#request("leaseGrant");
    const id = String(this.#nextLease++);
    this.#leases.set(id, { ttl: ttlSeconds, keys: new Set() });
    return Promise.resolve({ id, ttl: ttlSeconds });
  }

  leaseRevoke(id: string, _signal?: AbortSignal): Promise<boolean> {
    this.#request("leaseRevoke");
    return Promise.resolve(this.#revoke(id));
  }

  leaseTimeToLive(id: string, _signal?: AbortSignal): Promise<number> {
    this.#request("leaseTimeToLive");
    return Promise.resolve(this.#leases.get(id)?.ttl ?? -1);
  }

  async *watch(opts: WatchOptions): AsyncGenerator<WatchResponse, void> {
    this.#request("watch");
    const inRange = (key: string) =>
      opts.rangeEnd === undefined ? key === opts.key : key >= opts.key &&
        (opts.rangeEnd === "AA==" || key < decodeEnd(opts.rangeEnd));
    let next = opts.startRevision ?? this.#revision + 1n;
    const empty = {
      created: false,
      canceled: false,
      compactRevision: 0n,
      cancelReason: "",
    };
    if (next <= this.#compacted) {
      yield {
        ...empty,
        revision: this.#revision,
        canceled: true,
        compactRevision: this.#compacted,
        events: [],
      };
      return;
    }
    yield { ...empty, revision: this.#revision, created: true, events: [] };
    while (true) {
      opts.signal.throwIfAborted();
      const events = this.#history
        .filter((c) => c.revision >= next && inRange(c.event.kv.key))
        .map((c) => ({ ...c.event, kv: boundValue(c.event.kv) }));
      const head = this.#revision;
      next = head + 1n;
      if (events.length > 0) yield { ...empty, revision: head, events };
      if (this.#revision >= next) continue; // written while we yielded
      await new Promise<void>((resolve, reject) => {
        const done = () => {
          this.#waiters.delete(wake);
          this.#breakers.delete(broken);
          opts.signal.removeEventListener("abort", stop);
        };
        const wake = () => {
          done();
          resolve();
        };
        const broken = (e: Error) => {
          done();
          reject(e);
        };
        const stop = () => broken(opts.signal.reason);
        this.#waiters.add(wake);
        this.#breakers.add(broken);
        opts.signal.addEventListener("abort", stop, { once: true });
        for (const ready of this.#onWatching.splice(0)) ready();
      });
    }
  }

  close(): void {}
}

function decodeEnd(b64: string): string {
  return new TextDecoder().decode(
    Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)),
  );
}
