/**
 * A small etcd v3 client over the JSON gateway (`POST /v3/...`, served by
 * etcd 3.4 and later on the client port), enough for flanneld's data
 * model: range, put, txn, delete, compaction, leases, watch, and
 * password authentication. Keys and values are UTF-8 strings here and
 * base64 on the wire; int64 fields (revisions, lease IDs) arrive as JSON
 * strings: revisions become bigints, lease IDs stay decimal strings (they
 * exceed 2^53).
 *
 * Endpoints are tried in turn, starting with the last one that answered:
 * a connection failure, a timeout, or an "unavailable" answer moves to the
 * next, and when every endpoint fails the error names each one with its
 * cause. Every request has a timeout, except a watch stream, which has an
 * idle watchdog instead (etcd sends progress notifications on idle
 * watches when asked, so silence means a dead connection).
 *
 * @module
 */
import { LineSplitter, parseJsonLine } from "../../lib/ndjson.ts";
import { parseRetryAfter, sleep } from "../../lib/retry.ts";
import { readBounded } from "../../lib/bytes.ts";
import { quote } from "../../lib/log.ts";
import { urlScheme } from "../../lib/url.ts";
import { exactCaFetch, type PinnedFetch } from "../../lib/exact_trust.ts";

/** TLS material for `--etcd-cafile/--etcd-certfile/--etcd-keyfile`. */
export interface EtcdTlsFiles {
  /**
   * PEM CA bundle: the only CAs an https endpoint's certificate may chain
   * to (none of the process's roots). Without it, the system roots.
   */
  readonly caFile?: string;
  /** PEM client certificate chain; needs `keyFile`. */
  readonly certFile?: string;
  /** PEM private key of `certFile`. */
  readonly keyFile?: string;
}

/** Options of {@linkcode EtcdClient}. */
export interface EtcdClientOptions {
  /** Client URLs, `http://127.0.0.1:2379`; tried in order. */
  readonly endpoints: readonly string[];
  readonly tls?: EtcdTlsFiles;
  /** With `password`: authenticate and send the token on every request. */
  readonly username?: string;
  readonly password?: string;
  /**
   * Whether credentials (the password, then the auth token) may go to an
   * `http://` endpoint, where anyone on the path reads them. Default
   * false: such a client refuses to start.
   */
  readonly allowCredentialsOverHttp?: boolean;
  /** Timeout of each request, and of a watch's first answer. Default 10 s. */
  readonly requestTimeoutMs?: number;
  /** The fetch to use; tests inject one. Default: the global `fetch`. */
  readonly fetch?: typeof fetch;
  /** Longest answer read. Default {@linkcode MAX_ANSWER_BYTES}; tests lower it. */
  readonly maxAnswerBytes?: number;
}

/** Why a request failed. */
export type EtcdErrorKind =
  /** No endpoint answered (connection refused, timeout, unavailable). */
  | "unreachable"
  /** etcd answered with an error. */
  | "api"
  /** The answer could not be understood. */
  | "protocol"
  /**
   * The answer (or a watch line) was larger than the client reads, from
   * every endpoint: a listing asks for a smaller page, a watch lists again.
   */
  | "oversized";

/** A failed etcd request; the message names the endpoint(s) and cause. */
export class EtcdError extends Error {
  override readonly name = "EtcdError";
  constructor(
    message: string,
    readonly kind: EtcdErrorKind,
    /** gRPC status code of an `api` error (5 not found, 11 out of range...). */
    readonly code?: number,
    /** Delay the server asked for (`Retry-After` on a 429 or 503), ms. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/** The delay an error's server asked for before a retry, if any. */
export function retryAfterOf(e: unknown): number | undefined {
  return e instanceof EtcdError ? e.retryAfterMs : undefined;
}

/** Whether retrying later may succeed: etcd unreachable or without leader. */
export function isTransient(e: unknown): boolean {
  if (!(e instanceof EtcdError)) return false;
  if (e.kind === "unreachable") return true;
  // 4 DeadlineExceeded ("request timed out"), 14 Unavailable ("no leader").
  return e.kind === "api" && (e.code === 4 || e.code === 14);
}

/** A key and its metadata. */
export interface KeyValue {
  readonly key: string;
  readonly value: string;
  readonly createRevision: bigint;
  readonly modRevision: bigint;
  readonly version: bigint;
  /** etcd lease ID as a decimal string; `"0"` when the key has no lease. */
  readonly lease: string;
  /**
   * Set when the value is longer than {@linkcode MAX_VALUE_BYTES}: its
   * length in bytes (one more than the answer bound when it is only known
   * to pass a whole answer). `value` is then empty (never decoded nor kept).
   */
  readonly oversized?: number;
}

/** Result of a range request. */
export interface RangeResult {
  /** Store revision the range was read at. */
  readonly revision: bigint;
  readonly kvs: KeyValue[];
  readonly more: boolean;
}

/** A transaction condition. */
export type Compare =
  | {
    readonly key: string;
    readonly target: "VERSION" | "CREATE" | "MOD";
    readonly result: "EQUAL" | "NOT_EQUAL" | "GREATER" | "LESS";
    readonly value: bigint;
  }
  | {
    readonly key: string;
    readonly target: "LEASE";
    readonly result: "EQUAL" | "NOT_EQUAL";
    /** Lease ID, decimal string. */
    readonly value: string;
  };

/** A transaction operation. */
export type Op =
  | { readonly put: { key: string; value: string; lease?: string } }
  | { readonly get: { key: string } }
  | { readonly delete: { key: string } };

/** Result of a transaction. */
export interface TxnResult {
  readonly succeeded: boolean;
  readonly revision: bigint;
  /** One per operation run; `kvs` for a get. */
  readonly responses: { kvs: KeyValue[] }[];
}

/** A granted lease. */
export interface GrantedLease {
  readonly id: string;
  /** TTL in seconds as granted. */
  readonly ttl: number;
}

/** What to watch. */
export interface WatchOptions {
  readonly key: string;
  /** Exclusive end; `prefixEnd(key)` watches a prefix. */
  readonly rangeEnd?: string;
  /** First revision to deliver; default: from now. */
  readonly startRevision?: bigint;
  /** Ask etcd for periodic empty responses while idle. Default true. */
  readonly progressNotify?: boolean;
  /** Abort the stream after this long without a byte. */
  readonly idleTimeoutMs: number;
  readonly signal: AbortSignal;
}

/** A change in a watch response. */
export interface WatchEvent {
  readonly type: "PUT" | "DELETE";
  readonly kv: KeyValue;
}

/** One message of a watch stream. */
export interface WatchResponse {
  readonly revision: bigint;
  readonly created: boolean;
  readonly canceled: boolean;
  /** Non-zero when the start revision was compacted away. */
  readonly compactRevision: bigint;
  readonly cancelReason: string;
  readonly events: WatchEvent[];
}

const encoder = new TextEncoder();
// ignoreBOM keeps a leading U+FEFF in the text, so a value starting with a
// BOM fails JSON.parse as it fails Go's json.Unmarshal in flanneld.
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });

/** Base64 of the UTF-8 bytes of `s`, as the gateway wants keys and values. */
export function b64(s: string | Uint8Array): string {
  const bytes = typeof s === "string" ? encoder.encode(s) : s;
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

/** Decodes base64 to bytes; throws on bad input. */
export function unb64(s: string): Uint8Array {
  // Straight to bytes: no binary string in between (two keys per lease
  // in a listing of thousands).
  return Uint8Array.fromBase64(s);
}

/**
 * The range end that selects every key starting with `prefix` (etcd's
 * `WithPrefix`): the prefix with its last byte incremented, dropping
 * trailing 0xff bytes; `"\0"` (every key) when all bytes are 0xff.
 * Returned as base64, since the end is usually not valid UTF-8.
 */
export function prefixRangeEnd(prefix: string): string {
  const bytes = encoder.encode(prefix);
  for (let i = bytes.length - 1; i >= 0; i--) {
    if (bytes[i]! < 0xff) {
      const end = bytes.slice(0, i + 1);
      end[i]!++;
      return b64(end);
    }
  }
  return b64(new Uint8Array([0]));
}

function big(v: unknown): bigint {
  if (typeof v === "string" && /^-?\d+$/.test(v)) return BigInt(v);
  if (typeof v === "number" && Number.isInteger(v)) return BigInt(v);
  return 0n;
}

function str(v: unknown): string {
  return typeof v === "string" ? v : "";
}

function obj(v: unknown): Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v)
    ? v as Record<string, unknown>
    : {};
}

function arr(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

function kvFrom(raw: unknown): KeyValue {
  const r = obj(raw);
  const value = str(r.value);
  const bytes = base64Bytes(value);
  return {
    key: decoder.decode(unb64(str(r.key))),
    value: bytes > MAX_VALUE_BYTES ? "" : decoder.decode(unb64(value)),
    createRevision: big(r.create_revision),
    modRevision: big(r.mod_revision),
    version: big(r.version),
    lease: String(big(r.lease)),
    ...(bytes > MAX_VALUE_BYTES && { oversized: bytes }),
  };
}

/**
 * `kv` as the client delivers it: a value longer than
 * {@linkcode MAX_VALUE_BYTES} dropped and its length kept in `oversized`
 * (for stores that hold values already decoded, as the test fake does).
 */
export function boundValue(kv: KeyValue): KeyValue {
  const bytes = encoder.encode(kv.value).length;
  return bytes > MAX_VALUE_BYTES ? { ...kv, value: "", oversized: bytes } : kv;
}

/** How many bytes a base64 text decodes to (without decoding it). */
function base64Bytes(text: string): number {
  const pad = text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0;
  return Math.floor(text.length / 4) * 3 - pad;
}

function revisionOf(r: Record<string, unknown>): bigint {
  return big(obj(r.header).revision);
}

function watchResponseFrom(raw: unknown): WatchResponse {
  const r = obj(raw);
  return {
    revision: revisionOf(r),
    created: r.created === true,
    canceled: r.canceled === true,
    compactRevision: big(r.compact_revision),
    cancelReason: str(r.cancel_reason),
    // PUT is the enum's zero value, which the gateway omits.
    events: arr(r.events).map((e) => ({
      type: obj(e).type === "DELETE" ? "DELETE" : "PUT",
      kv: kvFrom(obj(e).kv),
    })),
  };
}

function opJson(op: Op): Record<string, unknown> {
  if ("put" in op) {
    return {
      request_put: {
        key: b64(op.put.key),
        value: b64(op.put.value),
        ...(op.put.lease !== undefined && { lease: op.put.lease }),
      },
    };
  }
  if ("get" in op) return { request_range: { key: b64(op.get.key) } };
  return { request_delete_range: { key: b64(op.delete.key) } };
}

function compareJson(c: Compare): Record<string, unknown> {
  const field = {
    VERSION: "version",
    CREATE: "create_revision",
    MOD: "mod_revision",
    LEASE: "lease",
  }[c.target];
  return {
    key: b64(c.key),
    target: c.target,
    result: c.result,
    [field]: String(c.value),
  };
}

/** The message of a thrown value, with its cause when there is one. */
export function describe(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const cause = e.cause instanceof Error ? `: ${e.cause.message}` : "";
  return `${e.message}${cause}`;
}

const AUTH_PATH = "/v3/auth/authenticate";

/**
 * The largest unary answer read: a range over every lease of a cluster of
 * 50 000 nodes is about 20 MB of base64; anything longer is not etcd
 * (something in front of it sending an endless body) and is refused
 * rather than held.
 */
export const MAX_ANSWER_BYTES = 32 << 20;

/**
 * The longest value kept from etcd. A lease value is a few hundred bytes
 * of JSON and the network config a few more; a longer value is a peer
 * filling the store (etcd accepts up to 1.5 MiB per request by default),
 * kept out of memory and refused by its reader on its own.
 */
export const MAX_VALUE_BYTES = 64 << 10;

/** The pause before a listing page is asked again, smaller. */
const SHRINK_PAUSE_MS = 250;

/** An answer body passed {@linkcode MAX_ANSWER_BYTES}. */
class AnswerTooLarge extends Error {}

async function readAnswer(res: Response, limit: number): Promise<string> {
  if (!res.body) return "";
  const bytes = await readBounded(res.body, limit);
  if (bytes === undefined) {
    throw new AnswerTooLarge(`answer larger than ${limit} bytes`);
  }
  return new TextDecoder().decode(bytes);
}

/**
 * What the subnet manager needs from etcd: {@linkcode EtcdClient} over
 * the gateway, or an in-memory store in unit tests.
 */
export type EtcdApi = Pick<
  EtcdClient,
  | "get"
  | "rangePrefix"
  | "put"
  | "delete"
  | "txn"
  | "leaseGrant"
  | "leaseRevoke"
  | "leaseTimeToLive"
  | "watch"
  | "close"
>;

/** A URL for messages: any password in it replaced by `***`. */
export function redactUrl(text: string): string {
  return text.replace(/^([a-z][a-z0-9+.-]*:\/\/)([^/@]*)@/i, (_, s, user) => {
    const name = String(user).split(":")[0];
    return `${s}${name}:***@`;
  });
}

/** An etcd v3 client over the JSON gateway. */
export class EtcdClient implements Disposable {
  readonly #endpoints: string[];
  readonly #opts: EtcdClientOptions;
  readonly #timeoutMs: number;
  readonly #maxAnswer: number;
  readonly #fetch: typeof fetch;
  #current = 0;
  /**
   * Endpoint → `Date.now()` before which it is not asked again: the time
   * its last `Retry-After` named. Held client-wide, so the watch, the
   * listing and the renewal loops all wait, not only the one that met it.
   */
  readonly #holdUntil = new Map<string, number>();
  /** Page size the last listing ended with (see `rangePrefix`). */
  #listLimit: number | undefined;
  #token: string | undefined;
  #http: Promise<Transport> | undefined;
  #closed = false;

  constructor(opts: EtcdClientOptions) {
    if (opts.endpoints.length === 0) {
      throw new Error("No etcd endpoint given");
    }
    // Credentials written into an endpoint (`http://user:pw@host:2379`)
    // are taken out of it, so no URL in a message carries them.
    let fromUrl: { username: string; password: string } | undefined;
    this.#endpoints = opts.endpoints.map((e) => {
      const text = e.trim().replace(/\/+$/, "");
      const shown = redactUrl(text);
      let url: URL | undefined;
      try {
        url = new URL(text);
      } catch { /* reported below */ }
      if (
        !url || !/^https?:$/.test(url.protocol) ||
        !/^https?:\/\/[^/]+$/i.test(text)
      ) {
        throw new Error(
          `Invalid etcd endpoint "${shown}": expected http(s)://host:port`,
        );
      }
      if (url.username !== "" || url.password !== "") {
        fromUrl ??= {
          username: decodeURIComponent(url.username),
          password: decodeURIComponent(url.password),
        };
        url.username = "";
        url.password = "";
      }
      return url.href.replace(/\/+$/, "");
    });
    if (opts.username === undefined && fromUrl) {
      opts = { ...opts, ...fromUrl };
    }
    if (opts.username !== undefined && !opts.allowCredentialsOverHttp) {
      const plain = this.#endpoints.find((e) => urlScheme(e) !== "https");
      if (plain !== undefined) {
        throw new Error(
          `Refusing to send etcd credentials to "${plain}" over plain HTTP: use an https endpoint, or pass --allow-token-over-http`,
        );
      }
    }
    this.#opts = opts;
    this.#timeoutMs = opts.requestTimeoutMs ?? 10_000;
    this.#maxAnswer = opts.maxAnswerBytes ?? MAX_ANSWER_BYTES;
    this.#fetch = opts.fetch ?? fetch;
  }

  /** The endpoints, normalised, in order. */
  get endpoints(): readonly string[] {
    return this.#endpoints;
  }

  /** Reads `key`, or every key from `key` to `rangeEnd` (base64). */
  async range(
    key: string,
    opts: {
      rangeEnd?: string;
      revision?: bigint;
      limit?: number;
      /** Keys and metadata without values. */
      keysOnly?: boolean;
      signal?: AbortSignal;
    } = {},
  ): Promise<RangeResult> {
    const r = await this.#post("/v3/kv/range", {
      key: b64(key),
      ...(opts.rangeEnd !== undefined && { range_end: opts.rangeEnd }),
      ...(opts.revision !== undefined && { revision: String(opts.revision) }),
      ...(opts.limit !== undefined && { limit: String(opts.limit) }),
      ...(opts.keysOnly && { keys_only: true }),
    }, opts.signal);
    // A 200 that is not a range answer (a proxy's page, JSON of another
    // shape) must not read as "no keys": that would withdraw every peer.
    const revision = revisionOf(r);
    const badKv = Array.isArray(r.kvs) &&
      r.kvs.some((kv) => typeof obj(kv).key !== "string");
    if (
      revision <= 0n || (r.kvs !== undefined && !Array.isArray(r.kvs)) || badKv
    ) {
      throw new EtcdError(
        `etcd /v3/kv/range answered 200 with a body that is not a range response: ${
          quote(r)
        }`,
        "protocol",
      );
    }
    return {
      revision,
      kvs: arr(r.kvs).map(kvFrom),
      more: r.more === true,
    };
  }

  /**
   * Reads one key (as of `revision` when given: an error once etcd has
   * compacted that revision); undefined when it does not exist.
   */
  async get(
    key: string,
    signal?: AbortSignal,
    revision?: bigint,
  ): Promise<{ kv: KeyValue | undefined; revision: bigint }> {
    const r = await this.range(key, {
      ...(signal && { signal }),
      ...(revision !== undefined && { revision }),
    });
    return { kv: r.kvs[0], revision: r.revision };
  }

  /**
   * Reads every key starting with `prefix`, in pages of at most `pageSize`,
   * all at the revision of the first page (a consistent snapshot). A page
   * whose answer passes {@linkcode MAX_ANSWER_BYTES} is asked again at a
   * quarter of the size (after {@linkcode SHRINK_PAUSE_MS}), down to one
   * key; a single key whose value alone passes
   * the bound is listed without its value (marked `oversized`), so the
   * listing always completes. The size that worked is where the next
   * listing starts, doubling back towards `pageSize` after a listing
   * without an oversized page.
   */
  async rangePrefix(
    prefix: string,
    signal?: AbortSignal,
    pageSize = 1000,
  ): Promise<{ revision: bigint; kvs: KeyValue[] }> {
    const end = prefixRangeEnd(prefix);
    const kvs: KeyValue[] = [];
    let from = prefix;
    let revision: bigint | undefined;
    let limit = Math.min(this.#listLimit ?? pageSize, pageSize);
    let shrunk = false;
    /** The first size that worked after the last shrink. */
    let settled: number | undefined;
    const at = (extra: { limit: number; keysOnly?: boolean }) => ({
      rangeEnd: end,
      ...extra,
      ...(revision !== undefined && { revision }),
      ...(signal && { signal }),
    });
    while (true) {
      let page: RangeResult;
      try {
        page = await this.range(from, at({ limit }));
        settled ??= limit;
        // Past the large values pages grow back, so one oversized key
        // does not leave the rest of the listing a key at a time.
        limit = Math.min(limit * 2, pageSize);
      } catch (e) {
        if (!(e instanceof EtcdError) || e.kind !== "oversized") throw e;
        shrunk = true;
        settled = undefined;
        // Paced: a broken proxy answering everything with an endless body
        // must not turn into a burst of retries.
        await sleep(SHRINK_PAUSE_MS, signal);
        if (limit > 1) {
          limit = Math.ceil(limit / 4);
          continue;
        }
        // One value larger than a whole answer: its key, not its value.
        page = await this.range(from, at({ limit: 1, keysOnly: true }));
        page = {
          ...page,
          kvs: page.kvs.map((kv) => ({
            ...kv,
            oversized: this.#maxAnswer + 1,
          })),
        };
      }
      revision ??= page.revision;
      kvs.push(...page.kvs);
      const last = page.kvs[page.kvs.length - 1];
      if (!page.more || last === undefined) break;
      from = `${last.key}\0`;
    }
    // The next listing starts at the size that worked, not where this one
    // grew to, so it does not meet the same answer bound at full size.
    this.#listLimit = shrunk ? settled ?? 1 : limit;
    return { revision, kvs };
  }

  /** Writes a key, attached to `lease` when given. Returns the revision. */
  async put(
    key: string,
    value: string,
    opts: { lease?: string; signal?: AbortSignal } = {},
  ): Promise<bigint> {
    const r = await this.#post("/v3/kv/put", {
      key: b64(key),
      value: b64(value),
      ...(opts.lease !== undefined && { lease: opts.lease }),
    }, opts.signal);
    return revisionOf(r);
  }

  /** Deletes a key; returns how many were deleted (0 or 1). */
  async delete(key: string, signal?: AbortSignal): Promise<number> {
    const r = await this.#post(
      "/v3/kv/deleterange",
      { key: b64(key) },
      signal,
    );
    return Number(big(r.deleted));
  }

  /** Runs `success` if every compare holds, else `failure`, atomically. */
  async txn(
    compare: Compare[],
    success: Op[],
    failure: Op[] = [],
    signal?: AbortSignal,
  ): Promise<TxnResult> {
    const r = await this.#post("/v3/kv/txn", {
      compare: compare.map(compareJson),
      success: success.map(opJson),
      failure: failure.map(opJson),
    }, signal);
    return {
      succeeded: r.succeeded === true,
      revision: revisionOf(r),
      responses: arr(r.responses).map((x) => ({
        kvs: arr(obj(obj(x).response_range).kvs).map(kvFrom),
      })),
    };
  }

  /** Compacts the history up to `revision`. */
  async compact(revision: bigint, signal?: AbortSignal): Promise<void> {
    await this.#post("/v3/kv/compaction", {
      revision: String(revision),
      physical: true,
    }, signal);
  }

  /** Grants a lease of `ttlSeconds`. */
  async leaseGrant(
    ttlSeconds: number,
    signal?: AbortSignal,
  ): Promise<GrantedLease> {
    const r = await this.#post("/v3/lease/grant", {
      TTL: String(ttlSeconds),
    }, signal);
    const id = String(big(r.ID));
    if (id === "0") {
      throw new EtcdError(
        `etcd lease grant returned no ID: ${JSON.stringify(r)}`,
        "protocol",
      );
    }
    return { id, ttl: Number(big(r.TTL)) };
  }

  /**
   * Revokes a lease, deleting the keys attached to it. Returns false when
   * the lease did not exist (already expired or revoked).
   */
  async leaseRevoke(id: string, signal?: AbortSignal): Promise<boolean> {
    try {
      await this.#post("/v3/lease/revoke", { ID: id }, signal);
      return true;
    } catch (e) {
      if (e instanceof EtcdError && e.kind === "api" && e.code === 5) {
        return false;
      }
      throw e;
    }
  }

  /** Remaining TTL of a lease in seconds; -1 when it does not exist. */
  async leaseTimeToLive(id: string, signal?: AbortSignal): Promise<number> {
    const r = await this.#post("/v3/lease/timetolive", { ID: id }, signal);
    return Number(big(r.TTL));
  }

  /**
   * Watches a key or range, yielding each response of the stream until it
   * breaks, etcd cancels it, or `signal` aborts. Throws an
   * {@linkcode EtcdError} when the stream fails or stays silent longer than
   * `idleTimeoutMs`; the caller reconnects from its next revision.
   */
  async *watch(opts: WatchOptions): AsyncGenerator<WatchResponse, void> {
    const body = JSON.stringify({
      create_request: {
        key: b64(opts.key),
        ...(opts.rangeEnd !== undefined && { range_end: opts.rangeEnd }),
        ...(opts.startRevision !== undefined &&
          { start_revision: String(opts.startRevision) }),
        progress_notify: opts.progressNotify ?? true,
      },
    });
    const { res, endpoint, ctl } = await this.#open("/v3/watch", body, opts);
    const reader = res.body!.getReader();
    try {
      const lines = new LineSplitter();
      while (true) {
        const chunk = await readWithin(
          reader,
          opts.idleTimeoutMs,
          () =>
            new EtcdError(
              `Watch on etcd "${endpoint}" received nothing for ${opts.idleTimeoutMs} ms`,
              "unreachable",
            ),
        );
        if (chunk.done) {
          throw new EtcdError(
            `Watch stream from etcd "${endpoint}" ended`,
            "unreachable",
          );
        }
        let texts: string[];
        try {
          texts = lines.push(chunk.value);
        } catch (e) {
          throw new EtcdError(
            `Watch on etcd "${endpoint}": ${(e as Error).message}`,
            "oversized",
          );
        }
        for (const text of texts) {
          const line = parseJsonLine(text);
          if (!line.ok) {
            throw new EtcdError(
              `Watch on etcd "${endpoint}": ${line.reason}`,
              "protocol",
            );
          }
          const msg = obj(line.value);
          if (msg.error !== undefined) {
            const err = apiError(endpoint, "/v3/watch", res.status, msg);
            if (err.code === 16) this.#token = undefined;
            throw err;
          }
          const resp = watchResponseFrom(msg.result);
          // Every watch response etcd sends carries its store revision,
          // except a cancellation (after compaction its header revision is
          // 0, which JSON leaves out): a line with neither is not etcd
          // speaking (a proxy, garbage), and must not count as progress
          // that resets the caller's backoff.
          if (
            resp.revision <= 0n && resp.compactRevision <= 0n && !resp.canceled
          ) {
            throw new EtcdError(
              `Watch on etcd "${endpoint}": a response without a header revision: ${
                quote(text)
              }`,
              "protocol",
            );
          }
          if (
            resp.canceled && this.#opts.username !== undefined &&
            /permission denied|auth token/i.test(resp.cancelReason)
          ) {
            // etcd refuses a watch with a stale token by cancelling it
            // ("permission denied"), not with an error: log in again on the
            // next attempt, or reconnects would reuse the stale token forever.
            this.#token = undefined;
          }
          yield resp;
        }
      }
    } finally {
      ctl.abort();
      await reader.cancel().catch(() => {});
    }
  }

  /** Closes the TLS client; further requests fail. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#http?.then((t) => {
      t.client?.close();
      t.pinned?.close();
    }).catch(() => {});
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * How requests go out. With a CA file: through {@linkcode exactCaFetch},
   * trusting that CA alone (an https endpoint whose certificate chains to
   * any other root, the process's own included, is refused before the
   * password or token is sent). A client certificate without a CA file
   * goes through a Deno HTTP client over the system roots.
   */
  #transport(): Promise<Transport> {
    if (this.#closed) {
      return Promise.reject(new Error("etcd client is closed"));
    }
    this.#http ??= (async (): Promise<Transport> => {
      const tls = this.#opts.tls;
      if (!tls?.caFile && !tls?.certFile && !tls?.keyFile) return {};
      const read = async (what: string, path: string) => {
        try {
          return await Deno.readTextFile(path);
        } catch (e) {
          throw new Error(`Cannot read etcd ${what} "${path}": ${describe(e)}`);
        }
      };
      if (!tls.certFile !== !tls.keyFile) {
        throw new Error(
          "etcd client certificate needs both --etcd-certfile and --etcd-keyfile",
        );
      }
      const pair = tls.certFile && tls.keyFile
        ? {
          cert: await read("certificate file", tls.certFile),
          key: await read("key file", tls.keyFile),
        }
        : undefined;
      if (tls.caFile) {
        const ca = await read("CA file", tls.caFile);
        return {
          pinned: exactCaFetch({ ca, caFile: tls.caFile, ...pair }),
        };
      }
      return { client: Deno.createHttpClient(pair!) };
    })();
    // A failed load is retried on the next request (the file may appear).
    this.#http.catch(() => this.#http = undefined);
    return this.#http;
  }

  #headers(path: string): Record<string, string> {
    const h: Record<string, string> = { "content-type": "application/json" };
    if (this.#token !== undefined && path !== AUTH_PATH) {
      h.authorization = this.#token;
    }
    return h;
  }

  async #authenticate(signal?: AbortSignal): Promise<void> {
    const r = await this.#post(AUTH_PATH, {
      name: this.#opts.username,
      password: this.#opts.password ?? "",
    }, signal);
    const token = str(r.token);
    if (token === "") {
      throw new EtcdError(
        `etcd authentication as "${this.#opts.username}" returned no token`,
        "protocol",
      );
    }
    this.#token = token;
  }

  async #ensureToken(path: string, signal?: AbortSignal): Promise<void> {
    if (
      this.#opts.username !== undefined && this.#token === undefined &&
      path !== AUTH_PATH
    ) {
      await this.#authenticate(signal);
    }
  }

  /** Endpoint order for one request: the last good one first. */
  #order(): number[] {
    const n = this.#endpoints.length;
    return Array.from({ length: n }, (_, i) => (this.#current + i) % n);
  }

  /** POSTs a JSON body and returns the JSON answer (see `#exchange`). */
  async #post(
    path: string,
    body: unknown,
    signal?: AbortSignal,
  ): Promise<Record<string, unknown>> {
    const { json } = await this.#exchange(path, JSON.stringify(body), {
      ...(signal && { signal }),
      stream: false,
    });
    return json!;
  }

  /** Opens a streaming POST (watch); the caller reads and aborts the body. */
  #open(
    path: string,
    body: string,
    opts: { signal: AbortSignal },
  ): Promise<Exchange> {
    return this.#exchange(path, body, { signal: opts.signal, stream: true });
  }

  /**
   * One request under the client's one failover policy
   * ({@linkcode failoverVerdict}): endpoints are tried in order from the
   * last good one; a connection failure or a request timeout moves on to
   * the next endpoint, and so does an answer the verdict calls `next`; an
   * expired token is renewed once on the same endpoint; any other answer
   * is final. When every endpoint failed, throws an `unreachable` error
   * naming each endpoint's reason, with the last `Retry-After` seen.
   *
   * A stream is returned as soon as its headers arrive; otherwise the
   * body is read (within the timeout) and parsed.
   */
  async #exchange(
    path: string,
    body: string,
    opts: { signal?: AbortSignal; stream: boolean },
  ): Promise<Exchange> {
    const { signal, stream } = opts;
    const transport = await this.#transport();
    await this.#ensureToken(path, signal);
    const failures: string[] = [];
    // Answers past the bound: from every endpoint, the request itself is
    // too large (a listing then asks for less); from some, a broken member.
    let tooLarge = 0;
    let lastRetryAfter: number | undefined;
    let reauthed = false;
    const order = this.#order();
    for (let i = 0; i < order.length; i++) {
      const idx = order[i]!;
      const ep = this.#endpoints[idx]!;
      const hold = (this.#holdUntil.get(ep) ?? 0) - Date.now();
      if (hold > 0) {
        failures.push(`"${ep}": asked to wait ${hold} ms more (Retry-After)`);
        lastRetryAfter = Math.max(lastRetryAfter ?? 0, hold);
        continue;
      }
      const ctl = new AbortController();
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        ctl.abort();
      }, this.#timeoutMs);
      let res: Response;
      let text = "";
      try {
        // An injected fetch (tests) stands in for every transport.
        const send = transport.pinned && !this.#opts.fetch &&
            urlScheme(ep) === "https"
          ? transport.pinned
          : this.#fetch;
        res = await send(ep + path, {
          method: "POST",
          headers: this.#headers(path),
          body,
          signal: signal ? AbortSignal.any([signal, ctl.signal]) : ctl.signal,
          ...(transport.client && { client: transport.client }),
        } as RequestInit);
        if (!stream || !res.ok) text = await readAnswer(res, this.#maxAnswer);
      } catch (e) {
        if (signal?.aborted) throw signal.reason;
        if (e instanceof AnswerTooLarge) tooLarge++;
        failures.push(
          `"${ep}": ${
            timedOut ? `no answer within ${this.#timeoutMs} ms` : describe(e)
          }`,
        );
        continue;
      } finally {
        clearTimeout(timer);
      }
      if (stream && res.ok) {
        this.#current = idx;
        return { res, endpoint: ep, ctl };
      }
      const retryAfter = parseRetryAfter(res.headers.get("retry-after"));
      if (retryAfter !== undefined) {
        lastRetryAfter = retryAfter;
        if (!res.ok) this.#holdUntil.set(ep, Date.now() + retryAfter);
      }
      let json: Record<string, unknown> | undefined;
      try {
        json = obj(JSON.parse(text));
      } catch {
        json = undefined;
      }
      if (res.ok && json !== undefined && json.error === undefined) {
        this.#current = idx;
        return { res, endpoint: ep, ctl, json };
      }
      const err = apiError(
        ep,
        path,
        res.status,
        json ?? { error: quote(text) },
        retryAfter,
      );
      const verdict = failoverVerdict(res.status, err.code);
      if (
        verdict === "reauth" && this.#opts.username !== undefined &&
        path !== AUTH_PATH && !reauthed
      ) {
        // Token expired or the member restarted: log in again, same endpoint.
        reauthed = true;
        this.#token = undefined;
        await this.#authenticate(signal);
        i--;
        continue;
      }
      if (verdict === "next") {
        failures.push(`"${ep}": ${err.message}`);
        continue;
      }
      this.#current = idx;
      if (json === undefined) {
        throw new EtcdError(
          `etcd "${ep}" ${path}: HTTP ${res.status} with a body that is not JSON: ${
            quote(text)
          }`,
          "protocol",
        );
      }
      throw err;
    }
    throw new EtcdError(
      `Cannot reach etcd for ${path}: ${failures.join("; ")}`,
      tooLarge === order.length ? "oversized" : "unreachable",
      undefined,
      lastRetryAfter,
    );
  }
}

/** The TLS side of requests (see `EtcdClient.#transport`). */
interface Transport {
  /** For https endpoints, when a CA file is configured. */
  readonly pinned?: PinnedFetch;
  /** Client certificate over the system roots. */
  readonly client?: Deno.HttpClient;
}

/** One endpoint's successful answer. */
interface Exchange {
  readonly res: Response;
  readonly endpoint: string;
  /** Aborts the request (and a stream's body). */
  readonly ctl: AbortController;
  /** The parsed body of a unary answer. */
  readonly json?: Record<string, unknown>;
}

/**
 * What an endpoint's error answer means for the request, the client's one
 * failover policy: `reauth` for an expired or invalid token (gRPC 16),
 * `next` (try the next endpoint, then back off) when the member cannot
 * serve now: gRPC Unavailable (14, no leader), HTTP 429 or any 5xx, JSON
 * or not; `final` for everything else (the request itself was refused).
 * Failing over a write is safe: every write weft makes is a transaction
 * guarded by a compare, or a lease grant whose leftover expires.
 */
export function failoverVerdict(
  status: number,
  grpcCode: number | undefined,
): "reauth" | "next" | "final" {
  if (grpcCode === 16) return "reauth";
  if (grpcCode === 14 || status === 429 || status >= 500) return "next";
  return "final";
}

/** Builds the error of a gateway error body `{"error","message","code"}`. */
function apiError(
  endpoint: string,
  path: string,
  status: number,
  json: Record<string, unknown>,
  retryAfterMs?: number,
): EtcdError {
  // Unary errors are flat; errors inside a stream are nested objects with
  // grpc_code/http_code/message.
  const inner = obj(json.error);
  const message = str(json.message) || str(json.error) || str(inner.message) ||
    `HTTP ${status}`;
  const code = typeof json.code === "number"
    ? json.code
    : typeof inner.grpc_code === "number"
    ? inner.grpc_code
    : undefined;
  return new EtcdError(
    `etcd "${endpoint}" ${path}: ${message}${
      code === undefined ? "" : ` (code ${code})`
    }`,
    "api",
    code,
    retryAfterMs,
  );
}

async function readWithin<T>(
  reader: ReadableStreamDefaultReader<T>,
  ms: number,
  onTimeout: () => Error,
): Promise<ReadableStreamReadResult<T>> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  try {
    return await Promise.race([reader.read(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
