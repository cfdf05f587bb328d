/**
 * A small Kubernetes API client over `fetch`: server URL, TLS (CA and
 * client certificate through `Deno.createHttpClient`), bearer tokens that
 * are re-read when their file changes (projected service-account tokens
 * rotate), typed errors, and retries of transient failures with backoff
 * and `Retry-After`. {@linkcode connect} builds one the way client-go's
 * `BuildConfigFromFlags` does: a kubeconfig file, else the in-cluster
 * service account, with `--kube-api-url` overriding the server.
 *
 * @module
 */
import { logger, quote } from "../../lib/log.ts";
import { lowerScheme, urlScheme } from "../../lib/url.ts";
import {
  exactCaFetch,
  type ExactFetch,
  type PinnedFetch,
} from "../../lib/exact_trust.ts";
import { readBody } from "./_body.ts";
import { VERSION } from "../../lib/version.ts";
import {
  Backoff,
  type BackoffOptions,
  parseRetryAfter,
  sleep,
} from "../../lib/retry.ts";
import {
  type KubeconfigConnection,
  parseKubeconfig,
  type PemSource,
} from "./kubeconfig.ts";

const log = logger("kube");

/**
 * The largest single object read whole (a Node; etcd refuses objects over
 * about 1.5 MiB, so this leaves room for any real one).
 */
export const MAX_OBJECT_BYTES = 16 << 20;
/** Of an error answer only the Status message is kept. */
const MAX_ERROR_BYTES = 64 << 10;

/** Where in-cluster pods find their service-account token and CA. */
export const SERVICE_ACCOUNT_DIR =
  "/var/run/secrets/kubernetes.io/serviceaccount";

/** Supplies the bearer token for each request. */
export interface TokenSource {
  /** The token to send now, or undefined for none. */
  token(): Promise<string | undefined>;
  /** Forgets a cached token (after a 401) so the next call re-reads it. */
  invalidate(): void;
}

/** A token that never changes (kubeconfig `token`). */
export class StaticToken implements TokenSource {
  constructor(readonly value: string) {}
  token(): Promise<string> {
    return Promise.resolve(this.value);
  }
  invalidate(): void {}
}

/**
 * A token read from a file and re-read when the file's mtime changes, at
 * least once a minute (as client-go does), or after a 401. Kubelet
 * rotates projected tokens by swapping a symlink, which changes the mtime
 * seen through it.
 */
export class FileToken implements TokenSource {
  readonly path: string;
  #value: string | undefined;
  #mtime = -1;
  #readAt = -Infinity;
  readonly #maxAgeMs: number;

  constructor(path: string, maxAgeMs = 60_000) {
    this.path = path;
    this.#maxAgeMs = maxAgeMs;
  }

  async token(): Promise<string> {
    let mtime = -1;
    try {
      mtime = (await Deno.stat(this.path)).mtime?.getTime() ?? -1;
    } catch (e) {
      if (this.#value !== undefined) return this.#value;
      throw new Error(
        `Cannot read token file "${this.path}": ${(e as Error).message}`,
      );
    }
    const stale = performance.now() - this.#readAt > this.#maxAgeMs;
    if (this.#value === undefined || mtime !== this.#mtime || stale) {
      try {
        const text = (await Deno.readTextFile(this.path)).trim();
        if (text === "") throw new Error("file is empty");
        if (this.#value !== undefined && text !== this.#value) {
          log.v(1, `Token file "${this.path}" changed; using the new token`);
        }
        this.#value = text;
        this.#mtime = mtime;
        this.#readAt = performance.now();
      } catch (e) {
        if (this.#value !== undefined) return this.#value;
        throw new Error(
          `Cannot read token file "${this.path}": ${(e as Error).message}`,
        );
      }
    }
    return this.#value;
  }

  invalidate(): void {
    this.#mtime = -1;
    this.#readAt = -Infinity;
  }
}

/** An answer from the API server other than 2xx. */
export class KubeApiError extends Error {
  override readonly name = "KubeApiError";
  /** HTTP status, or the `code` of an in-stream Status. */
  readonly status: number;
  /** Status `reason` (`NotFound`, `Expired`, `Forbidden`, ...). */
  readonly reason: string | undefined;
  /** `Retry-After` in ms, when the server sent one. */
  readonly retryAfterMs: number | undefined;

  constructor(
    message: string,
    status: number,
    reason?: string,
    retryAfterMs?: number,
  ) {
    super(message);
    this.status = status;
    this.reason = reason;
    this.retryAfterMs = retryAfterMs;
  }

  /** 410 Gone: a resource version too old for a watch or a list. */
  get gone(): boolean {
    return this.status === 410;
  }
}

/** The API server could not be reached (connection, TLS, timeout). */
export class KubeConnectionError extends Error {
  override readonly name = "KubeConnectionError";
  /** The TLS handshake failed (bad CA, name mismatch): retrying won't help. */
  readonly tls: boolean;

  constructor(message: string, tls: boolean, options?: ErrorOptions) {
    super(message, options);
    this.tls = tls;
  }
}

/**
 * Whether retrying the request may succeed: network trouble other than a
 * TLS verification failure, 401 (a token being rotated), 408, 429, 5xx.
 */
export function isTransient(e: unknown): boolean {
  if (e instanceof KubeConnectionError) return !e.tls;
  if (e instanceof KubeApiError) {
    return e.status === 401 || e.status === 408 || e.status === 429 ||
      e.status >= 500;
  }
  return false;
}

/** Options of {@linkcode KubeClient}. */
export interface KubeClientOptions {
  /** Base URL: `https://10.96.0.1:443`. */
  readonly server: string;
  readonly token?: TokenSource;
  /** TLS settings; closed by {@linkcode KubeClient.close}. */
  readonly httpClient?: Deno.HttpClient;
  /** Replaces `fetch` (tests). */
  readonly fetch?: typeof fetch;
  /** Timeout of ordinary (non-watch) requests, ms. Default 30000. */
  readonly requestTimeoutMs?: number;
  /** Extra words for TLS errors: where the CA came from. */
  readonly caHint?: string;
  /**
   * After a TLS failure: a new HTTP client if the CA file changed (CA
   * rotation), else undefined. Default: none.
   */
  readonly reloadHttpClient?: () => Promise<Deno.HttpClient | undefined>;
  /**
   * Requests go through this fetch, which trusts exactly the configured
   * CA (see pinned_fetch.ts); closed by {@linkcode KubeClient.close}.
   */
  readonly pinned?: PinnedFetch;
  /** After a TLS failure: a new pinned fetch if the CA file changed. */
  readonly reloadPinned?: () => Promise<PinnedFetch | undefined>;
}

/**
 * Rebuilds an HTTP client when the CA file's content changes, so a rotated
 * CA (a bundle with old and new CA, then a server certificate of the new
 * one) is picked up without a restart.
 */
export function caFileReloader<T>(
  caPath: string,
  first: string,
  build: (caPem: string) => T,
): () => Promise<T | undefined> {
  let current = first;
  return async () => {
    let text: string;
    try {
      text = await Deno.readTextFile(caPath);
    } catch {
      return undefined;
    }
    if (text === current) return undefined;
    current = text;
    log.info(`CA file "${caPath}" changed: using the new one`);
    return build(text);
  };
}

/** Options of one request. */
export interface RequestOptions {
  readonly body?: string;
  readonly contentType?: string;
  readonly signal?: AbortSignal;
  /** 0 disables the timeout (watches). Default: the client's. */
  readonly timeoutMs?: number;
}

/** Kubernetes API client: JSON over fetch with auth and typed errors. */
export class KubeClient {
  readonly server: string;
  readonly #token: TokenSource | undefined;
  #http: Deno.HttpClient | undefined;
  readonly #reload: (() => Promise<Deno.HttpClient | undefined>) | undefined;
  #pinned: PinnedFetch | undefined;
  readonly #reloadPinned: (() => Promise<PinnedFetch | undefined>) | undefined;
  #fetch: (input: string, init?: RequestInit) => Promise<Response>;
  readonly #timeoutMs: number;
  readonly #caHint: string;
  /** Body bytes received (after decompression), for benchmarks. */
  bytesReceived = 0;
  #closed = false;

  constructor(opts: KubeClientOptions) {
    this.server = lowerScheme(opts.server).replace(/\/+$/, "");
    this.#token = opts.token;
    this.#http = opts.httpClient;
    this.#pinned = opts.pinned;
    this.#reloadPinned = opts.reloadPinned;
    this.#fetch = opts.pinned ?? opts.fetch ?? fetch;
    this.#timeoutMs = opts.requestTimeoutMs ?? 30_000;
    this.#caHint = opts.caHint ?? "";
    this.#reload = opts.reloadHttpClient;
  }

  /**
   * Sends a request and returns the response when it is 2xx; otherwise
   * throws {@linkcode KubeApiError} (with the Status message) or
   * {@linkcode KubeConnectionError}. A 401 re-reads the token and retries
   * once, so a rotated token is picked up at once.
   */
  async request(
    method: string,
    path: string,
    opts: RequestOptions = {},
  ): Promise<Response> {
    try {
      return await this.#send(method, path, opts);
    } catch (e) {
      if (e instanceof KubeConnectionError && e.tls && this.#reloadPinned) {
        const next = await this.#reloadPinned();
        if (!next) throw e;
        this.#pinned?.close();
        this.#pinned = next;
        this.#fetch = next;
        return await this.#send(method, path, opts);
      }
      if (e instanceof KubeConnectionError && e.tls && this.#reload) {
        const next = await this.#reload();
        if (!next) throw e;
        this.#http?.close();
        this.#http = next;
        return await this.#send(method, path, opts);
      }
      if (!(e instanceof KubeApiError) || e.status !== 401 || !this.#token) {
        throw e;
      }
      this.#token.invalidate();
      return await this.#send(method, path, opts);
    }
  }

  async #send(
    method: string,
    path: string,
    opts: RequestOptions,
  ): Promise<Response> {
    const url = `${this.server}${path}`;
    const headers = new Headers({
      "Accept": "application/json",
      "User-Agent": `weft/${VERSION}`,
    });
    if (opts.contentType) headers.set("Content-Type", opts.contentType);
    const token = await this.#token?.token();
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const timeoutMs = opts.timeoutMs ?? this.#timeoutMs;
    const signals: AbortSignal[] = [];
    if (opts.signal) signals.push(opts.signal);
    if (timeoutMs > 0) signals.push(AbortSignal.timeout(timeoutMs));
    const signal = signals.length ? AbortSignal.any(signals) : undefined;
    let res: Response;
    try {
      res = await this.#fetch(url, {
        method,
        headers,
        ...(opts.body !== undefined && { body: opts.body }),
        ...(signal && { signal }),
        ...(this.#http && { client: this.#http }),
      } as RequestInit);
    } catch (e) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      throw this.#connectionError(e, url);
    }
    if (res.ok) return res;
    throw await errorFromResponse(res, method, path);
  }

  #connectionError(e: unknown, url: string): KubeConnectionError {
    const err = e as Error;
    // fetch says "fetch failed" and nests the reason in `cause`: "error
    // sending request for url (...): client error (Connect): invalid peer
    // certificate: UnknownIssuer". Use the innermost message.
    let inner: unknown = e;
    for (let i = 0; i < 5 && inner instanceof Error && inner.cause; i++) {
      inner = inner.cause;
    }
    let msg = err?.name === "TimeoutError"
      ? "request timed out"
      : String((inner as Error)?.message ?? inner);
    msg = msg.replace(/^error sending request for url \([^)]*\):\s*/, "");
    const tls = /certificate|tls|handshake|UnknownIssuer/i.test(msg);
    if (tls) {
      msg = `TLS error: ${msg}${this.#caHint ? ` (${this.#caHint})` : ""}`;
    }
    return new KubeConnectionError(
      `Cannot reach Kubernetes API server "${this.server}" (${
        new URL(url).pathname
      }): ${msg}`,
      tls,
      { cause: e },
    );
  }

  /** GETs `path` and parses the JSON body. */
  async getJson<T = unknown>(path: string, signal?: AbortSignal): Promise<T> {
    const res = await this.request("GET", path, signal ? { signal } : {});
    return await this.readJson<T>(res);
  }

  /**
   * Reads a JSON body of one object, counting its bytes. etcd caps an
   * object near 1.5 MiB; a body over {@linkcode MAX_OBJECT_BYTES} is
   * refused rather than held.
   */
  async readJson<T>(res: Response): Promise<T> {
    const buf = await readBody(
      res.body,
      MAX_OBJECT_BYTES,
      `Kubernetes API answer from ${res.url || this.server}`,
    );
    this.bytesReceived += buf.byteLength;
    return JSON.parse(new TextDecoder().decode(buf)) as T;
  }

  /**
   * PATCHes `path` (`kubectl patch --type strategic|merge`) and returns the
   * updated object.
   */
  async patchJson<T = unknown>(
    path: string,
    patch: unknown,
    type: "strategic" | "merge",
    signal?: AbortSignal,
  ): Promise<T> {
    const res = await this.request("PATCH", path, {
      body: JSON.stringify(patch),
      contentType: type === "strategic"
        ? "application/strategic-merge-patch+json"
        : "application/merge-patch+json",
      ...(signal && { signal }),
    });
    return await this.readJson<T>(res);
  }

  /** Releases the TLS client. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#http?.close();
    this.#pinned?.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

async function errorFromResponse(
  res: Response,
  method: string,
  path: string,
): Promise<KubeApiError> {
  let message = "";
  let reason: string | undefined;
  try {
    // A Status is a few hundred bytes; only its message is kept.
    const text = new TextDecoder().decode(
      await readBody(res.body, MAX_ERROR_BYTES, `${method} ${path}`),
    );
    try {
      const status = JSON.parse(text) as {
        message?: unknown;
        reason?: unknown;
      };
      if (typeof status.message === "string") message = status.message;
      if (typeof status.reason === "string") reason = status.reason;
    } catch {
      message = quote(text.trim());
    }
  } catch {
    // Body unreadable: the status line says enough.
  }
  const retryAfterMs = parseRetryAfter(res.headers.get("Retry-After"));
  return new KubeApiError(
    `${method} ${path.split("?")[0]}: ${res.status} ${res.statusText}${
      message ? `: ${message}` : ""
    }`,
    res.status,
    reason,
    retryAfterMs,
  );
}

/** Options of {@linkcode retrying}. */
export interface RetryOptions {
  readonly signal: AbortSignal;
  /** Give up after this many ms (the last error is thrown). */
  readonly deadlineMs?: number;
  readonly backoff?: BackoffOptions;
  /** What is being done, for the log: `get node "a"`. */
  readonly what: string;
  /** Errors worth retrying. Default {@linkcode isTransient}. */
  readonly retryIf?: (e: unknown) => boolean;
}

/**
 * Runs `fn` until it succeeds, retrying transient errors with backoff
 * (and `Retry-After`) until the deadline or the signal.
 */
export async function retrying<T>(
  fn: () => Promise<T>,
  opts: RetryOptions,
): Promise<T> {
  const backoff = new Backoff(opts.backoff);
  const start = performance.now();
  const retryIf = opts.retryIf ?? isTransient;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (opts.signal.aborted) throw opts.signal.reason;
      if (!retryIf(e)) throw e;
      const retryAfter = e instanceof KubeApiError ? e.retryAfterMs : undefined;
      const delay = backoff.next(retryAfter);
      const elapsed = performance.now() - start;
      if (
        opts.deadlineMs !== undefined && elapsed + delay > opts.deadlineMs
      ) {
        throw e;
      }
      log.v(
        1,
        `Cannot ${opts.what}, retrying in ${(delay / 1000).toFixed(1)}s: ${
          (e as Error).message
        }`,
      );
      await sleep(delay, opts.signal);
    }
  }
}

/** Options of {@linkcode connect}: flanneld's flags and the environment. */
export interface ConnectOptions {
  /** `--kube-api-url`: overrides the server. */
  readonly kubeApiUrl?: string;
  /** `--kubeconfig-file`. */
  readonly kubeconfigFile?: string;
  /** Service-account directory. Default {@linkcode SERVICE_ACCOUNT_DIR}. */
  readonly serviceAccountDir?: string;
  /** Environment lookup. Default `Deno.env.get`. */
  readonly env?: (name: string) => string | undefined;
  /** Passed to the client. */
  readonly requestTimeoutMs?: number;
  /**
   * `--allow-token-over-http`: a bearer token may go to an `http://`
   * server, where anyone on the path reads it. Default false: refused.
   */
  readonly allowTokenOverHttp?: boolean;
}

/** Refuses a token bound for a plain-http server unless allowed. */
function checkTokenTransport(
  server: string,
  hasToken: boolean,
  allowed: boolean | undefined,
): void {
  if (!hasToken || allowed || urlScheme(server) === "https") return;
  throw new Error(
    `Refusing to send the bearer token to "${server}" over plain HTTP: use https, or pass --allow-token-over-http`,
  );
}

async function readPem(src: PemSource, what: string): Promise<string> {
  if ("data" in src) return src.data;
  try {
    return await Deno.readTextFile(src.file);
  } catch (e) {
    throw new Error(
      `Cannot read ${what} "${src.file}": ${(e as Error).message}`,
    );
  }
}

/** `https://host:port`, with an IPv6 host in brackets. */
export function inClusterServer(host: string, port: string): string {
  const h = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  return `https://${h}:${port}`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Builds a client the way flanneld (client-go's `BuildConfigFromFlags`)
 * does: with `kubeconfigFile`, from its current context; otherwise from
 * the in-cluster service account (`KUBERNETES_SERVICE_HOST`/`_PORT`, the
 * token file, `ca.crt`). `kubeApiUrl` replaces the server in both cases.
 */
export async function connect(opts: ConnectOptions = {}): Promise<KubeClient> {
  const env = opts.env ?? ((n: string) => Deno.env.get(n));
  const apiUrl = opts.kubeApiUrl !== undefined
    ? lowerScheme(opts.kubeApiUrl).replace(/\/+$/, "") || undefined
    : undefined;
  const timeout = opts.requestTimeoutMs !== undefined
    ? { requestTimeoutMs: opts.requestTimeoutMs }
    : {};
  if (opts.kubeconfigFile) {
    const path = opts.kubeconfigFile;
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (e) {
      throw new Error(
        `Cannot read kubeconfig "${path}": ${(e as Error).message}`,
      );
    }
    const parsed = await parseKubeconfig(text, path, apiUrl);
    if (!parsed.ok) throw new Error(parsed.reason);
    const c = parsed.value;
    checkTokenTransport(
      c.server,
      c.token !== undefined || c.tokenFile !== undefined,
      opts.allowTokenOverHttp,
    );
    return await clientFromKubeconfig(c, path, timeout);
  }

  const dir = opts.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  const host = env("KUBERNETES_SERVICE_HOST");
  const port = env("KUBERNETES_SERVICE_PORT");
  const tokenPath = `${dir}/token`;
  const inCluster = !!host && !!port && await exists(tokenPath);
  if (!inCluster) {
    if (apiUrl) {
      log.warn(
        `Neither --kubeconfig-file nor an in-cluster service account: talking to "${apiUrl}" without credentials`,
      );
      return new KubeClient({ server: apiUrl, ...timeout });
    }
    if (!host || !port) {
      throw new Error(
        "Cannot find the Kubernetes API server: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not in a pod); use --kubeconfig-file or --kube-api-url",
      );
    }
    throw new Error(
      `Cannot use the in-cluster configuration: no service account token at "${tokenPath}"`,
    );
  }
  const server = apiUrl ?? inClusterServer(host!, port!);
  checkTokenTransport(server, true, opts.allowTokenOverHttp);
  const caPath = `${dir}/ca.crt`;
  let caCerts: string[] | undefined;
  if (urlScheme(server) === "https") {
    try {
      caCerts = [await Deno.readTextFile(caPath)];
    } catch (e) {
      throw new Error(
        `Cannot read the service account CA "${caPath}": ${
          (e as Error).message
        }`,
      );
    }
  }
  const token = new FileToken(tokenPath);
  await token.token(); // fail early, naming the file
  const build = (pem: string) =>
    logTransport(exactCaFetch({ ca: pem, caFile: caPath }), `"${caPath}"`);
  return new KubeClient({
    server,
    token,
    ...(caCerts && {
      pinned: build(caCerts[0]!),
      caHint: `is the API server's certificate signed by "${caPath}"?`,
      reloadPinned: caFileReloader(caPath, caCerts[0]!, build),
    }),
    ...timeout,
  });
}

function logTransport(f: ExactFetch, ca: string): ExactFetch {
  log.info(`API server TLS: trusting only the CA in ${ca}, via ${f.transport}`);
  return f;
}

async function clientFromKubeconfig(
  c: KubeconfigConnection,
  path: string,
  extra: { requestTimeoutMs?: number },
): Promise<KubeClient> {
  const where = `kubeconfig "${path}"`;
  let caCerts: string[] | undefined;
  if (c.ca) {
    caCerts = [await readPem(c.ca, `certificate-authority of ${where}`)];
  }
  let tls: { cert: string; key: string } | undefined;
  if (c.clientCert && c.clientKey) {
    tls = {
      cert: await readPem(c.clientCert, `client-certificate of ${where}`),
      key: await readPem(c.clientKey, `client-key of ${where}`),
    };
  }
  if (c.insecureSkipTlsVerify) {
    // Deno has no per-client switch for this; only the process-wide
    // --unsafely-ignore-certificate-errors flag disables verification.
    log.warn(
      `${where}: cluster "${c.cluster}" sets insecure-skip-tls-verify; weft cannot skip verification per connection: run it with --unsafely-ignore-certificate-errors=<host> or, better, set certificate-authority`,
    );
  }
  const https = urlScheme(c.server) === "https";
  // With a CA: trust exactly it (exact_trust.ts). Without one, client-go
  // uses the system roots, and so does Deno's fetch.
  const caFile = c.ca && "file" in c.ca ? c.ca.file : undefined;
  const build = (caPem: string) =>
    logTransport(
      exactCaFetch({
        ca: caPem,
        ...(caFile !== undefined && { caFile }),
        ...(tls && tls),
      }),
      caFile !== undefined
        ? `"${caFile}"`
        : `the certificate-authority-data of ${where}`,
    );
  const pinned = https && caCerts ? build(caCerts[0]!) : undefined;
  const httpClient = https && !caCerts && tls
    ? Deno.createHttpClient(tls)
    : undefined;
  // A CA given as a file can rotate under us; inline data cannot.
  const reloadPinned = https && c.ca && "file" in c.ca && caCerts
    ? caFileReloader(c.ca.file, caCerts[0]!, build)
    : undefined;
  const token = c.token !== undefined
    ? new StaticToken(c.token)
    : c.tokenFile !== undefined
    ? new FileToken(c.tokenFile)
    : undefined;
  if (token) await token.token();
  const caHint = c.insecureSkipTlsVerify
    ? `${where} sets insecure-skip-tls-verify, which weft can only honour when run with --unsafely-ignore-certificate-errors`
    : c.ca
    ? `is the API server's certificate signed by the certificate-authority of ${where}?`
    : `${where} sets no certificate-authority for cluster "${c.cluster}"`;
  return new KubeClient({
    server: c.server,
    ...(token && { token }),
    ...(httpClient && { httpClient }),
    ...(pinned && { pinned }),
    ...(reloadPinned && { reloadPinned }),
    caHint,
    ...extra,
  });
}

/**
 * This node's name, as flanneld finds it: `NODE_NAME`, else the
 * `spec.nodeName` of the pod `POD_NAMESPACE/POD_NAME`.
 */
export async function resolveNodeName(
  client: KubeClient,
  signal: AbortSignal,
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): Promise<string> {
  const nodeName = env("NODE_NAME");
  if (nodeName) return nodeName;
  const pod = env("POD_NAME");
  const ns = env("POD_NAMESPACE");
  if (!pod || !ns) {
    throw new Error(
      "env variables POD_NAME and POD_NAMESPACE must be set (or NODE_NAME)",
    );
  }
  let obj: { spec?: { nodeName?: unknown } };
  try {
    obj = await retrying(
      () =>
        client.getJson(
          `/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${
            encodeURIComponent(pod)
          }`,
          signal,
        ),
      { signal, deadlineMs: 30_000, what: `get pod "${ns}/${pod}"` },
    );
  } catch (e) {
    if (signal.aborted) throw e;
    throw new Error(
      `error retrieving pod spec for '${ns}/${pod}': ${(e as Error).message}`,
    );
  }
  const name = obj.spec?.nodeName;
  if (typeof name !== "string" || name === "") {
    throw new Error(`node name not present in pod spec '${ns}/${pod}'`);
  }
  return name;
}
