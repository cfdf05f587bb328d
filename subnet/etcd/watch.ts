/**
 * The two etcd watches of the subnet manager, as `kube/watch.ts` is the
 * Node watch: the lease watch lists `<prefix>/subnets/`, then watches it
 * from the next revision, and lists again (the sink diffs) whenever the
 * watch falls behind a compaction; the own-key watch ends the agent when
 * our lease key disappears. Both retry etcd failures with backoff until
 * their signal aborts; neither touches the dataplane.
 *
 * @module
 */
import { logger, quote } from "../../lib/log.ts";
import { metrics } from "../../lib/metrics.ts";
import { Backoff, sleep } from "../../lib/retry.ts";
import {
  describe,
  type EtcdApi,
  EtcdError,
  type KeyValue,
  prefixRangeEnd,
  retryAfterOf,
} from "./client.ts";

const log = logger("etcd");

/** Where the lease watch delivers what it sees. */
export interface SubnetSink {
  /**
   * A whole listing (the first one, and after each compaction). The watch
   * waits for it to settle; a rejection is retried as a failed listing.
   */
  sync(kvs: readonly KeyValue[], receivedAt: number): void | Promise<void>;
  /** A key written. */
  put(kv: KeyValue, receivedAt: number): void;
  /** A key deleted (or its lease expired). */
  remove(key: string, receivedAt: number): void;
  /** The end of one watch response: a batch is complete. */
  flush(): void;
}

/** Timing of both watches. */
export interface EtcdWatchOptions {
  /** A watch silent for this long is reconnected. */
  readonly idleTimeoutMs: number;
  /** Longest pause between retries. */
  readonly maxBackoffMs: number;
}

/** Our lease is gone from etcd; the agent must stop. */
export class LeaseRevokedError extends Error {
  override readonly name = "LeaseRevokedError";
  constructor(readonly key: string, why: string) {
    super(`Lease has been revoked: etcd key "${key}" ${why}`);
  }
}

/** Wraps an exception of the sink so that it ends the watch unretried. */
class SinkFailure {
  constructor(readonly error: unknown) {}
}

/** Whether `e` is etcd's "required revision has been compacted". */
export function isCompacted(e: unknown): boolean {
  return e instanceof EtcdError && /has been compacted/.test(e.message);
}

/** `1234` → `1.2s`, `80` → `80ms`, for log lines. */
export function ms(n: number): string {
  return n >= 1000 ? `${(n / 1000).toFixed(1)}s` : `${Math.round(n)}ms`;
}

function guarded(fn: () => void): void {
  try {
    fn();
  } catch (e) {
    throw new SinkFailure(e);
  }
}

/**
 * Hands a listing to the sink: an etcd error (the sink reads history) is
 * retried like a failed listing, anything else ends the watch.
 */
async function syncGuarded(
  sink: SubnetSink,
  kvs: readonly KeyValue[],
  signal: AbortSignal,
): Promise<void> {
  try {
    await sink.sync(kvs, performance.now());
  } catch (e) {
    if (e instanceof EtcdError || signal.aborted) throw e;
    throw new SinkFailure(e);
  }
}

/**
 * Lists the keys under `dir`, then watches them until `signal` aborts.
 * A listing the caller already holds (`first`) stands for the first one;
 * the watch resumes from its revision. An exception thrown by the sink
 * ends the watch and is rethrown.
 */
export async function watchSubnets(
  client: EtcdApi,
  dir: string,
  sink: SubnetSink,
  opts: EtcdWatchOptions,
  signal: AbortSignal,
  first?: { readonly revision: bigint; readonly kvs: KeyValue[] },
): Promise<void> {
  const backoff = new Backoff({ initialMs: 250, maxMs: opts.maxBackoffMs });
  let next: bigint | undefined; // revision to watch from; undefined: list
  let listed = false;
  outer: while (!signal.aborted) {
    try {
      if (next === undefined) {
        const listing = first ?? await client.rangePrefix(dir, signal);
        first = undefined;
        if (listed) metrics.relists.inc();
        listed = true;
        log.v(
          1,
          `Listed ${listing.kvs.length} keys under "${dir}" at revision ${listing.revision}`,
        );
        next = listing.revision + 1n;
        await syncGuarded(sink, listing.kvs, signal);
      }
      const stream = client.watch({
        key: dir,
        rangeEnd: prefixRangeEnd(dir),
        startRevision: next,
        idleTimeoutMs: opts.idleTimeoutMs,
        signal,
      });
      for await (const resp of stream) {
        backoff.reset();
        if (resp.compactRevision > 0n) {
          log.warn(
            `Watch of "${dir}" fell behind etcd compaction (wanted revision ${next}, compacted up to ${resp.compactRevision}): listing again`,
          );
          next = undefined;
          continue outer;
        }
        if (resp.canceled) {
          throw new EtcdError(
            `etcd canceled the watch of "${dir}": ${
              resp.cancelReason ? quote(resp.cancelReason) : "no reason given"
            }`,
            "unreachable",
          );
        }
        const now = performance.now();
        for (const ev of resp.events) {
          guarded(() =>
            ev.type === "DELETE"
              ? sink.remove(ev.kv.key, now)
              : sink.put(ev.kv, now)
          );
          if (ev.kv.modRevision >= next) next = ev.kv.modRevision + 1n;
        }
        // A progress notification: everything up to its revision is seen.
        if (
          resp.events.length === 0 && !resp.created && resp.revision >= next
        ) {
          next = resp.revision + 1n;
        }
        guarded(() => sink.flush());
      }
    } catch (e) {
      if (e instanceof SinkFailure) throw e.error;
      if (signal.aborted) break;
      // Compaction reported as an error rather than in a response
      // ("mvcc: required revision has been compacted"): list again too.
      if (isCompacted(e)) next = undefined;
      // A watch answer too large to read (many large values at once): a
      // listing reads them in pages, and the watch then resumes after it.
      if (e instanceof EtcdError && e.kind === "oversized") next = undefined;
      metrics.watchRestarts.inc();
      const d = backoff.next(retryAfterOf(e));
      log.warn(
        `Watch of "${dir}" failed, reconnecting in ${ms(d)} from revision ${
          next ?? "(new listing)"
        }: ${describe(e)}`,
      );
      await sleep(d, signal).catch(() => {});
    }
  }
}

/**
 * Watches our own lease key from `fromRevision`; rejects with a
 * {@linkcode LeaseRevokedError} when the key is deleted, or with the
 * signal's reason when aborted.
 */
export async function watchOwnKey(
  client: EtcdApi,
  key: string,
  fromRevision: bigint,
  opts: EtcdWatchOptions,
  signal: AbortSignal,
): Promise<never> {
  let next = fromRevision;
  const backoff = new Backoff({ initialMs: 250, maxMs: opts.maxBackoffMs });
  outer: while (true) {
    try {
      const stream = client.watch({
        key,
        startRevision: next,
        idleTimeoutMs: opts.idleTimeoutMs,
        signal,
      });
      for await (const resp of stream) {
        backoff.reset();
        if (resp.compactRevision > 0n) {
          // History is gone: look at the key itself.
          const { kv, revision } = await client.get(key, signal);
          if (kv === undefined) {
            throw new LeaseRevokedError(key, "was deleted");
          }
          next = revision + 1n;
          continue outer;
        }
        if (resp.canceled) {
          throw new EtcdError(
            `etcd canceled the watch of "${key}": ${quote(resp.cancelReason)}`,
            "unreachable",
          );
        }
        for (const ev of resp.events) {
          if (ev.type === "DELETE") {
            throw new LeaseRevokedError(key, "was deleted");
          }
          if (ev.kv.modRevision >= next) next = ev.kv.modRevision + 1n;
        }
        if (
          resp.events.length === 0 && !resp.created && resp.revision >= next
        ) {
          next = resp.revision + 1n;
        }
      }
    } catch (e) {
      if (signal.aborted || e instanceof LeaseRevokedError) throw e;
      if (isCompacted(e)) {
        // History is gone: look at the key itself (or retry that later).
        const got = await client.get(key, signal).catch(() => undefined);
        if (got && got.kv === undefined) {
          throw new LeaseRevokedError(key, "was deleted");
        }
        if (got) next = got.revision + 1n;
      }
      metrics.watchRestarts.inc();
      const d = backoff.next(retryAfterOf(e));
      log.warn(
        `Watch of own lease "${key}" failed, reconnecting in ${ms(d)}: ${
          describe(e)
        }`,
      );
      await sleep(d, signal);
    }
  }
}
