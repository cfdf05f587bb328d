/**
 * The list+watch loop over Nodes, client-go's reflector without its cache:
 * a paginated LIST, then a WATCH from the list's resource version that
 * resumes from the last version seen (bookmarks included) whenever it ends.
 * As client-go does, the first LIST asks for `resourceVersion=0`, which
 * the API server answers from its watch cache without reading etcd, and
 * later ones for "not older than" the last version seen; only after a
 * `410 Gone` (a compacted or too old version, an expired continue token)
 * is the LIST a quorum read. A 410 on the watch means events were missed:
 * list again and hand the sink the whole state, which it diffs. The nodes
 * of the first LIST are also handed over as they arrive, so peers are
 * programmed while the rest of a large listing is still on the wire. Failures back off with jitter and honour
 * `Retry-After`; a stream silent for longer than its timeout plus a grace
 * period is aborted; after repeated failures the loop falls back to
 * periodic listing and tries to watch again later. Each Node is reduced
 * to a slim record as soon as it is parsed: nothing keeps whole objects.
 * Only the signal ends the loop.
 *
 * @module
 */
import { logger, quote } from "../../lib/log.ts";
import { metrics } from "../../lib/metrics.ts";
import { fail, ok, type Result } from "../../lib/result.ts";
import { Backoff, type BackoffOptions, sleep } from "../../lib/retry.ts";
import {
  isTransient,
  KubeApiError,
  type KubeClient,
  KubeConnectionError,
} from "./client.ts";
import { forEachChunk } from "./_body.ts";
import { ListSplitter, OversizedItem } from "./list_stream.ts";
import { LineSplitter } from "../../lib/ndjson.ts";
import type { SlimNode } from "./node.ts";

const log = logger("kube");

/** Receives what the watcher learns, in order. */
export interface NodeSink {
  /** The complete set of nodes after a (re)list. */
  sync(nodes: Map<string, SlimNode>, receivedAt: number): void;
  /** A node was added or changed. */
  upsert(node: SlimNode, receivedAt: number): void;
  /** A node was deleted. */
  remove(name: string, receivedAt: number): void;
  /**
   * Nodes of the first listing, as they arrive; `sync` follows with the
   * complete set. Optional: a sink may wait for `sync`.
   */
  listed?(nodes: SlimNode[], receivedAt: number): void;
}

/** Options of {@linkcode NodeWatcher}. Defaults suit production. */
export interface NodeWatcherOptions {
  /** LIST page size. Default 500. */
  readonly pageSize?: number;
  /** Server-side watch timeout, s. Default: random in [300, 600). */
  readonly timeoutSeconds?: () => number;
  /** Silence tolerated beyond the watch timeout, ms. Default 30000. */
  readonly idleGraceMs?: number;
  /**
   * A fixed idle bound, ms, replacing `timeoutSeconds` plus the grace
   * (`--watch-idle-timeout`). Default: none.
   */
  readonly idleTimeoutMs?: number;
  /**
   * Consecutive broken watch streams, with the server reachable, before
   * falling back to listing. An unreachable server does not count: while
   * it is down listing cannot help, and once it is back watching should
   * resume at once. Default 5.
   */
  readonly fallbackAfter?: number;
  /** Period of LIST while in fallback, ms. Default 30000. */
  readonly pollIntervalMs?: number;
  readonly backoff?: BackoffOptions;
  /** Restricts the nodes (`metadata.name=a`). */
  readonly fieldSelector?: string;
}

interface WatchEvent {
  type?: unknown;
  object?: {
    code?: unknown;
    reason?: unknown;
    message?: unknown;
    metadata?: { name?: unknown; resourceVersion?: unknown };
  };
}

/** The result of one watch request. */
type WatchEnd = "closed" | "gone";

/**
 * The longest watch line accepted: one event, `{"type":...,"object":<a
 * Node>}`. etcd stores an object of at most about 1.5 MiB (as protobuf;
 * its JSON is larger) and kube-apiserver takes request bodies up to 3 MiB,
 * so 8 MiB holds any real Node; an endless line costs at most this much
 * (measured: 12 endless 100 MB answers left the process at 102 MiB RSS
 * with this bound, 131 MiB with 16).
 */
export const MAX_WATCH_LINE_BYTES = 8 << 20;

/** A watch event past {@linkcode MAX_WATCH_LINE_BYTES}. */
class OversizedEvent extends Error {
  override readonly name = "OversizedEvent";
}

/** Raised by the idle watchdog. */
class IdleWatch extends Error {
  override readonly name = "IdleWatch";
}

/** A list+watch loop over Nodes that feeds a {@linkcode NodeSink}. */
export class NodeWatcher {
  readonly #client: KubeClient;
  readonly #slim: (obj: unknown) => Result<SlimNode>;
  readonly #pageSize: number;
  readonly #timeoutSeconds: () => number;
  readonly #idleGraceMs: number;
  readonly #idleTimeoutMs: number | undefined;
  readonly #fallbackAfter: number;
  readonly #pollMs: number;
  readonly #backoffOpts: BackoffOptions;
  readonly #fieldSelector: string | undefined;
  #rv: string | undefined;
  /** The last list or watch ended in 410: the next LIST reads etcd. */
  #quorum = false;

  constructor(
    client: KubeClient,
    slim: (obj: unknown) => Result<SlimNode>,
    opts: NodeWatcherOptions = {},
  ) {
    this.#client = client;
    this.#slim = slim;
    this.#pageSize = opts.pageSize ?? 500;
    this.#timeoutSeconds = opts.timeoutSeconds ??
      (() => 300 + Math.floor(Math.random() * 300));
    this.#idleGraceMs = opts.idleGraceMs ?? 30_000;
    this.#idleTimeoutMs = opts.idleTimeoutMs;
    this.#fallbackAfter = opts.fallbackAfter ?? 5;
    this.#pollMs = opts.pollIntervalMs ?? 30_000;
    this.#backoffOpts = opts.backoff ?? {};
    this.#fieldSelector = opts.fieldSelector;
  }

  /** The last resource version seen. */
  get resourceVersion(): string | undefined {
    return this.#rv;
  }

  #query(extra: Record<string, string>): string {
    const q = new URLSearchParams(extra);
    if (this.#fieldSelector) q.set("fieldSelector", this.#fieldSelector);
    return q.toString();
  }

  /**
   * Lists every node, page by page (`limit`, following `continue`), and
   * returns them slim with the list's resource version. Pages are parsed
   * as they stream in, one Node at a time, so a page is never held whole;
   * `onNodes` sees each batch as it is parsed. The first page asks the
   * watch cache (`resourceVersion=0`, or not older than the last version
   * seen); a 410 (a version or continue token the server no longer has)
   * restarts the listing as a quorum read.
   */
  async list(
    signal: AbortSignal,
    onNodes?: (nodes: SlimNode[], receivedAt: number) => void,
  ): Promise<{ nodes: Map<string, SlimNode>; resourceVersion: string }> {
    for (let attempt = 0;; attempt++) {
      const nodes = new Map<string, SlimNode>();
      let cont: string | undefined;
      let rv = "";
      try {
        do {
          const q: Record<string, string> = { limit: String(this.#pageSize) };
          if (cont) q.continue = cont;
          else if (!this.#quorum) {
            q.resourceVersion = this.#rv ?? "0";
            if (this.#rv !== undefined) q.resourceVersionMatch = "NotOlderThan";
          }
          const meta = await this.#page(
            `/api/v1/nodes?${this.#query(q)}`,
            nodes,
            signal,
            onNodes,
          );
          const c = meta?.continue;
          cont = typeof c === "string" && c !== "" ? c : undefined;
          const r = meta?.resourceVersion;
          if (typeof r === "string") rv = r;
        } while (cont !== undefined);
      } catch (e) {
        if (e instanceof KubeApiError && e.gone && attempt < 3) {
          log.info(
            `Node list ${
              cont
                ? "continuation expired"
                : `from resource version ${this.#rv ?? "0"} is not served`
            } (410 Gone); listing again from etcd`,
          );
          this.#quorum = true;
          continue;
        }
        throw e;
      }
      this.#quorum = false;
      return { nodes, resourceVersion: rv };
    }
  }

  /** Reads one LIST page into `nodes`; returns its list metadata. */
  async #page(
    path: string,
    nodes: Map<string, SlimNode>,
    signal: AbortSignal,
    onNodes?: (nodes: SlimNode[], receivedAt: number) => void,
  ): Promise<{ continue?: unknown; resourceVersion?: unknown } | undefined> {
    const res = await this.#client.request("GET", path, { signal });
    // Nothing weft keeps is in a Node's status (addresses, conditions,
    // images: most of its bytes), so it is never decoded.
    const splitter = new ListSplitter({ drop: "status" });
    const add = (items: unknown[]) => {
      const batch: SlimNode[] = [];
      for (const item of items) {
        const n = item instanceof OversizedItem
          ? oversizedNode(item)
          : this.#slim(item);
        if (n.ok) {
          nodes.set(n.value.name, n.value);
          batch.push(n.value);
        } else log.warn(`Ignoring a node in the list: ${n.reason}`);
      }
      if (onNodes && batch.length > 0) onNodes(batch, performance.now());
    };
    if (res.body) {
      await forEachChunk(res.body, (chunk) => {
        this.#client.bytesReceived += chunk.byteLength;
        add(splitter.push(chunk));
      });
    }
    const rest = splitter.finish() as {
      metadata?: { continue?: unknown; resourceVersion?: unknown };
      items?: unknown;
    };
    // A 200 that is not a Node list (a proxy's error page, JSON of another
    // shape) must not read as "no nodes": that would withdraw every
    // peer's routes.
    if (!Array.isArray(rest.items)) {
      throw new Error(
        `Node list from ${path} has no "items" array: not a Kubernetes list`,
      );
    }
    const rv = rest.metadata?.resourceVersion;
    if (typeof rv !== "string" || rv === "") {
      throw new Error(
        `Node list from ${path} has no metadata.resourceVersion: not a Kubernetes list`,
      );
    }
    add(rest.items);
    return rest.metadata;
  }

  /**
   * Lists then watches until `signal` aborts, feeding `sink`. Never ends
   * early: every failure is logged and retried.
   */
  async run(sink: NodeSink, signal: AbortSignal): Promise<void> {
    const backoff = new Backoff(this.#backoffOpts);
    let failures = 0;
    /** Failures with the server answering (see `fallbackAfter`). */
    let streamFailures = 0;
    let pollingSince: number | undefined;
    let relisted = false;
    try {
      while (!signal.aborted) {
        // Whether this round's LIST worked: in fallback, a watch that then
        // fails again means "list again after pollMs", not "back off".
        let listed = false;
        try {
          if (this.#rv === undefined || pollingSince !== undefined) {
            const { nodes, resourceVersion } = await this.list(
              signal,
              relisted ? undefined : sink.listed?.bind(sink),
            );
            if (relisted) metrics.relists.inc();
            this.#rv = resourceVersion;
            relisted = true;
            listed = true;
            sink.sync(nodes, performance.now());
            backoff.reset();
          }
          // In fallback too: every round tries the watch once more, so
          // watching resumes as soon as streams work again.
          const started = performance.now();
          const end = await this.#watch(this.#rv, sink, signal, () => {
            if (pollingSince !== undefined) {
              log.info("Node watch works again: no more periodic listing");
              pollingSince = undefined;
            } else if (failures > 0) {
              log.info(`Node watch resumed after ${failures} failures`);
            }
            backoff.reset();
            failures = 0;
            streamFailures = 0;
          });
          metrics.watchRestarts.inc();
          // A server that ends watches at once must not make us spin.
          if (performance.now() - started < 1000) {
            await sleep(backoff.next(), signal);
          }
          if (end === "gone") {
            log.info(
              `Node watch from resource version ${this.#rv} is too old (410 Gone); listing again from etcd`,
            );
            this.#rv = undefined;
            this.#quorum = true;
          }
        } catch (e) {
          if (signal.aborted) break;
          failures++;
          if (!(e instanceof KubeConnectionError)) streamFailures++;
          metrics.watchRestarts.inc();
          const transient = isTransient(e) || e instanceof IdleWatch;
          const msg = `Node watch failed (${failures} in a row): ${
            (e as Error).message
          }`;
          if (transient) log.v(1, msg);
          else log.error(msg);
          // Watching again from the same version would meet the same
          // event: a list reads it item by item and passes it over.
          if ((e as Error).cause instanceof OversizedEvent) {
            this.#rv = undefined;
          }
          if (
            streamFailures >= this.#fallbackAfter &&
            pollingSince === undefined && this.#rv !== undefined
          ) {
            log.warn(
              `Node watch failed ${failures} times in a row; listing nodes every ${
                Math.round(this.#pollMs / 1000)
              }s instead, trying the watch again after each list`,
            );
            pollingSince = performance.now();
          }
          const retryAfter = e instanceof KubeApiError
            ? e.retryAfterMs
            : undefined;
          const polling = pollingSince !== undefined && listed;
          await sleep(
            polling ? this.#pollMs : backoff.next(retryAfter),
            signal,
          );
        }
      }
    } catch (e) {
      if (!signal.aborted) throw e;
    }
  }

  /** One watch request, until the server ends it, 410, or an error. */
  async #watch(
    rv: string,
    sink: NodeSink,
    signal: AbortSignal,
    onConnected: () => void,
  ): Promise<WatchEnd> {
    const timeoutSeconds = this.#timeoutSeconds();
    const local = new AbortController();
    const both = AbortSignal.any([signal, local.signal]);
    const idleMs = this.#idleTimeoutMs ??
      timeoutSeconds * 1000 + this.#idleGraceMs;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      if (timer !== undefined) clearTimeout(timer);
      timer = setTimeout(() => {
        local.abort(
          new IdleWatch(
            `no data for ${Math.round(idleMs / 1000)}s; restarting the watch`,
          ),
        );
      }, idleMs);
    };
    arm();
    try {
      let res: Response;
      try {
        res = await this.#client.request(
          "GET",
          `/api/v1/nodes?${
            this.#query({
              watch: "1",
              resourceVersion: rv,
              allowWatchBookmarks: "true",
              timeoutSeconds: String(timeoutSeconds),
            })
          }`,
          { signal: both, timeoutMs: 0 },
        );
      } catch (e) {
        if (e instanceof KubeApiError && e.gone) return "gone";
        throw e;
      }
      onConnected();
      const body = res.body;
      if (!body) return "closed";
      const reader = body.getReader();
      const lines = new LineSplitter(MAX_WATCH_LINE_BYTES);
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          arm();
          this.#client.bytesReceived += value.byteLength;
          const receivedAt = performance.now();
          let got: string[];
          try {
            got = lines.push(value);
          } catch (e) {
            throw new OversizedEvent((e as Error).message);
          }
          for (const line of got) {
            if (this.#event(line, sink, receivedAt) === "gone") return "gone";
          }
        }
        for (const line of lines.flush()) {
          if (this.#event(line, sink, performance.now()) === "gone") {
            return "gone";
          }
        }
      } catch (e) {
        if (local.signal.aborted && !signal.aborted) throw local.signal.reason;
        if (signal.aborted) throw e;
        throw new Error(`Node watch stream broke: ${(e as Error).message}`, {
          cause: e,
        });
      } finally {
        reader.cancel().catch(() => {});
      }
      return "closed";
    } finally {
      clearTimeout(timer);
    }
  }

  /** Applies one watch event line; returns "gone" on an in-stream 410. */
  #event(line: string, sink: NodeSink, receivedAt: number): WatchEnd | void {
    let ev: WatchEvent;
    try {
      ev = JSON.parse(line) as WatchEvent;
    } catch {
      throw new Error(`Cannot parse watch event ${quote(line)}`);
    }
    const obj = ev.object;
    if (ev.type === "ERROR") {
      const code = typeof obj?.code === "number" ? obj.code : 500;
      if (code === 410) return "gone";
      throw new KubeApiError(
        `Watch error ${code}: ${quote(String(obj?.message ?? ""))}`,
        code,
        typeof obj?.reason === "string" ? obj.reason : undefined,
      );
    }
    const rv = obj?.metadata?.resourceVersion;
    if (ev.type === "BOOKMARK") {
      if (typeof rv === "string" && rv !== "") this.#rv = rv;
      return;
    }
    if (ev.type === "DELETED") {
      const name = obj?.metadata?.name;
      if (typeof name === "string") sink.remove(name, receivedAt);
    } else if (ev.type === "ADDED" || ev.type === "MODIFIED") {
      const n = this.#slim(obj);
      if (n.ok) sink.upsert(n.value, receivedAt);
      else log.warn(`Ignoring a node event: ${n.reason}`);
    } else {
      log.v(2, `Ignoring watch event of type ${quote(ev.type)}`);
    }
    // Advance only after the sink has the event: a crash in between
    // replays it rather than losing it.
    if (typeof rv === "string" && rv !== "") this.#rv = rv;
  }
}

/**
 * A list item passed over for its size, as a node the lease table refuses
 * (logged once, counted), or the reason when its name could not be read.
 */
function oversizedNode(item: OversizedItem): Result<SlimNode> {
  const { name, bytes, limit } = item;
  if (name === undefined) {
    metrics.peerObjectsOversized.inc();
    return fail(
      `an item of more than ${limit} bytes (${bytes} read) without a readable name refused for its size`,
    );
  }
  return ok({
    name,
    podCIDRs: [],
    annotations: {},
    oversized: { what: "Node object", bytes, limit },
  });
}
