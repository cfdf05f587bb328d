/**
 * A `fetch` that trusts exactly the configured CA, as client-go and etcd's
 * Go client do; the Kubernetes client and the etcd client both use it.
 * `Deno.createHttpClient({ caCerts })` adds the CA to the process's root
 * store (Mozilla's bundled roots, the system store with
 * `DENO_TLS_CA_STORE=system`, and any `DENO_CERT`), so any of those CAs
 * could vouch for an impostor server, which then receives the node's
 * bearer token or etcd password. `node:https` with `ca` verifies against
 * the given CAs only (checked with a server whose CA the process trusts
 * through `DENO_CERT` or the system store but the configuration does not
 * name: refused), so requests go through it. Responses are web
 * `Response`s with streaming bodies (a watch stays open); gzip is asked
 * for and decoded, as fetch does.
 *
 * @module
 */
import https from "node:https";
import type { IncomingMessage } from "node:http";
import { Readable } from "node:stream";

/** TLS settings of {@linkcode pinnedFetch}, all PEM. */
export interface PinnedTls {
  /** The only CA certificates trusted (a bundle may hold several). */
  readonly ca: string;
  /** Client certificate and key, for mutual TLS. */
  readonly cert?: string;
  readonly key?: string;
}

/** A fetch-shaped function plus a way to drop its kept-alive connections. */
export interface PinnedFetch {
  (input: string | URL, init?: RequestInit): Promise<Response>;
  close(): void;
}

/** Builds a fetch that verifies the server against `tls.ca` only. */
export function pinnedFetch(tls: PinnedTls): PinnedFetch {
  const agent = new https.Agent({
    keepAlive: true,
    ca: tls.ca,
    ...(tls.cert !== undefined && { cert: tls.cert }),
    ...(tls.key !== undefined && { key: tls.key }),
  });
  const f = (input: string | URL, init: RequestInit = {}) =>
    request(agent, new URL(String(input)), init);
  return Object.assign(f, { close: () => agent.destroy() });
}

function request(
  agent: https.Agent,
  url: URL,
  init: RequestInit,
): Promise<Response> {
  if (url.protocol !== "https:") {
    return Promise.reject(new TypeError(`Not an https URL: "${url.href}"`));
  }
  const headers: Record<string, string> = { "accept-encoding": "gzip" };
  new Headers(init.headers).forEach((v, k) => headers[k] = v);
  const body = typeof init.body === "string" ? init.body : undefined;
  if (body !== undefined) {
    headers["content-length"] = String(new TextEncoder().encode(body).length);
  }
  const signal = init.signal ?? undefined;
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const req = https.request({
      agent,
      protocol: "https:",
      hostname: url.hostname.replace(/^\[|\]$/g, ""),
      port: url.port || 443,
      path: `${url.pathname}${url.search}`,
      method: init.method ?? "GET",
      headers,
    }, (res) => resolve(toResponse(res, signal)));
    const onAbort = () => {
      req.destroy(signal!.reason);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    req.on("close", () => signal?.removeEventListener("abort", onAbort));
    req.on("error", (e) => reject(e));
    req.end(body);
  });
}

function toResponse(res: IncomingMessage, signal?: AbortSignal): Response {
  const headers = new Headers();
  for (const [k, v] of Object.entries(res.headers)) {
    if (v === undefined) continue;
    for (const one of Array.isArray(v) ? v : [v]) headers.append(k, one);
  }
  const status = res.statusCode ?? 0;
  const onAbort = () => res.destroy(signal!.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  res.on("close", () => signal?.removeEventListener("abort", onAbort));
  if (status === 204 || status === 304) {
    res.resume();
    return new Response(null, { status, headers });
  }
  let stream = Readable.toWeb(res) as ReadableStream<Uint8Array>;
  if (headers.get("content-encoding") === "gzip") {
    stream = stream.pipeThrough(
      new DecompressionStream("gzip") as unknown as TransformStream<
        Uint8Array,
        Uint8Array
      >,
    );
    headers.delete("content-encoding");
    headers.delete("content-length");
  }
  return new Response(stream, {
    status,
    ...(res.statusMessage ? { statusText: res.statusMessage } : {}),
    headers,
  });
}
