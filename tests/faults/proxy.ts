/**
 * A misbehaving HTTP proxy for the fault suite: it sits between one agent
 * and an API server (etcd's JSON gateway, or kube-apiserver, terminating
 * TLS with a certificate of the cluster's CA and presenting a client
 * certificate upstream) and, on command, cuts responses mid-stream, holds
 * watches open without sending a byte, or answers every request with a
 * status such as 429 (with `Retry-After`) or 500. Every request is
 * recorded with its time, so the suite can count how often a client
 * retries during a storm.
 *
 * It runs as its own process inside the namespace that can reach the
 * upstream (`deno run --allow-net --allow-read proxy.ts --listen=HOST:PORT
 * --upstream=URL [--tls=JSON]`) and is driven over stdin/stdout with one
 * JSON object per line; {@linkcode FaultProxy} does that from the test
 * process.
 * Switching modes breaks every response in flight (streams included), so
 * long-lived watches reconnect into the new behaviour.
 *
 * @module
 */

/** How the proxy treats requests. */
export type ProxyMode =
  /** Forward faithfully, streams included. */
  | { readonly kind: "pass" }
  /** Forward, then drop the connection after `afterBytes` of each response body. */
  | { readonly kind: "cut"; readonly afterBytes: number }
  /**
   * Watches (`/v3/watch`, or any request with `watch=1`/`watch=true`) get
   * `200` and headers, then nothing, until the mode changes; other
   * requests are forwarded.
   */
  | { readonly kind: "silent" }
  /** Every request gets `status`, with `Retry-After` when given. */
  | {
    readonly kind: "status";
    readonly status: number;
    readonly retryAfterS?: number;
  }
  /**
   * Every request gets 200 with a body that is not what the API sends:
   * `garbage` (JSON of the wrong shape), `html` (an error page, as a
   * misconfigured load balancer sends), `huge` (a 100 MB line with no
   * newline), `trickle` (a valid-looking start, one byte every 500 ms).
   */
  | {
    readonly kind: "body";
    readonly body: "garbage" | "html" | "huge" | "trickle";
  };

/** One request the proxy saw. */
export interface ProxyRecord {
  /** `Date.now()` when it arrived. */
  readonly at: number;
  readonly method: string;
  /** Path and query. */
  readonly path: string;
  /** The mode it met. */
  readonly mode: ProxyMode["kind"];
  /** Status sent (0: connection broken before a status). */
  readonly status: number;
  /** `performance.now()` in the proxy when it arrived, ms. */
  readonly arrived: number;
  /**
   * `performance.now()` in the proxy when an injected status answer was
   * handed back (set only for those), ms: a request that arrived after
   * this was sent by a client that had the answer.
   */
  readonly answered?: number;
}

type Command =
  | { cmd: "mode"; mode: ProxyMode }
  | { cmd: "log" }
  | { cmd: "quit" };

function isWatch(url: URL): boolean {
  const w = url.searchParams.get("watch");
  return url.pathname === "/v3/watch" || w === "1" || w === "true";
}

/** PEM files for TLS: what the proxy serves, and how it reaches upstream. */
export interface ProxyTlsFiles {
  /** Serve HTTPS with this certificate and key. */
  readonly certFile?: string;
  readonly keyFile?: string;
  /** CA that signed the upstream's certificate. */
  readonly upstreamCaFile?: string;
  /** Client certificate and key presented upstream (mutual TLS). */
  readonly upstreamCertFile?: string;
  readonly upstreamKeyFile?: string;
}

/** Options of {@linkcode serveFaultProxy}. */
export interface FaultProxyServerOptions {
  readonly hostname: string;
  readonly port: number;
  /** `http://127.0.0.1:2379`. */
  readonly upstream: string;
  readonly tls?: ProxyTlsFiles;
  readonly onListen?: (addr: Deno.NetAddr) => void;
}

/** A running proxy (in this process). */
export interface FaultProxyServer {
  setMode(mode: ProxyMode): void;
  readonly records: ProxyRecord[];
  shutdown(): Promise<void>;
}

/** Starts the proxy in this process. */
export function serveFaultProxy(
  opts: FaultProxyServerOptions,
): FaultProxyServer {
  let mode: ProxyMode = { kind: "pass" };
  const records: ProxyRecord[] = [];
  /** Breaks a response in flight; called on every mode change. */
  const inflight = new Set<() => void>();
  const upstream = opts.upstream.replace(/\/+$/, "");
  const t = opts.tls ?? {};
  const read = (f: string | undefined) =>
    f === undefined ? undefined : Deno.readTextFileSync(f);
  const client = t.upstreamCaFile || t.upstreamCertFile
    ? Deno.createHttpClient({
      ...(t.upstreamCaFile && { caCerts: [read(t.upstreamCaFile)!] }),
      ...(t.upstreamCertFile && t.upstreamKeyFile && {
        cert: read(t.upstreamCertFile)!,
        key: read(t.upstreamKeyFile)!,
      }),
    })
    : undefined;

  const forward = async (
    req: Request,
    url: URL,
    rec: { status: number },
    cutAfter: number | undefined,
  ): Promise<Response> => {
    const ctl = new AbortController();
    const headers = new Headers();
    for (const h of ["content-type", "authorization", "accept", "user-agent"]) {
      const v = req.headers.get(h);
      if (v !== null) headers.set(h, v);
    }
    const body = req.method === "GET" || req.method === "HEAD"
      ? undefined
      : await req.arrayBuffer();
    let res: Response;
    try {
      res = await fetch(upstream + url.pathname + url.search, {
        method: req.method,
        headers,
        ...(body !== undefined && { body }),
        signal: ctl.signal,
        ...(client && { client }),
      });
    } catch (e) {
      rec.status = 502;
      return new Response(`proxy: upstream failed: ${(e as Error).message}`, {
        status: 502,
      });
    }
    rec.status = res.status;
    const reader = res.body?.getReader();
    let sent = 0;
    let stream: ReadableStreamDefaultController<Uint8Array> | undefined;
    const stop = () => {
      ctl.abort();
      try {
        stream?.error(new Error("proxy: connection cut"));
      } catch { /* already closed */ }
    };
    inflight.add(stop);
    const out = new ReadableStream<Uint8Array>({
      start(c) {
        stream = c;
      },
      async pull(c) {
        if (!reader) {
          inflight.delete(stop);
          c.close();
          return;
        }
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch {
          inflight.delete(stop);
          try {
            c.error(new Error("proxy: upstream broke"));
          } catch { /* already errored by stop() */ }
          return;
        }
        if (chunk.done) {
          inflight.delete(stop);
          c.close();
          return;
        }
        const v = chunk.value;
        if (cutAfter !== undefined && sent + v.length >= cutAfter) {
          if (cutAfter > sent) c.enqueue(v.subarray(0, cutAfter - sent));
          sent = cutAfter;
          inflight.delete(stop);
          ctl.abort();
          // An errored body makes the server drop the connection without
          // finishing the chunked encoding: the client sees a cut stream.
          c.error(new Error("proxy: cut"));
          return;
        }
        sent += v.length;
        c.enqueue(v);
      },
      cancel() {
        inflight.delete(stop);
        ctl.abort();
      },
    });
    const h = new Headers();
    const ct = res.headers.get("content-type");
    if (ct !== null) h.set("content-type", ct);
    return new Response(out, { status: res.status, headers: h });
  };

  const server = Deno.serve({
    hostname: opts.hostname,
    port: opts.port,
    ...(t.certFile && t.keyFile &&
      { cert: read(t.certFile)!, key: read(t.keyFile)! }),
    onListen: (addr) => opts.onListen?.(addr as Deno.NetAddr),
  }, async (req) => {
    const url = new URL(req.url);
    const m = mode;
    const rec: {
      at: number;
      method: string;
      path: string;
      mode: ProxyMode["kind"];
      status: number;
      arrived: number;
      answered?: number;
    } = {
      at: Date.now(),
      method: req.method,
      path: url.pathname + url.search,
      mode: m.kind,
      status: 0,
      arrived: performance.now(),
    };
    records.push(rec);
    switch (m.kind) {
      case "body": {
        await req.body?.cancel().catch(() => {});
        rec.status = 200;
        return bodyResponse(m.body, inflight);
      }
      case "status": {
        await req.body?.cancel().catch(() => {});
        rec.status = m.status;
        const headers = new Headers({ "content-type": "text/plain" });
        if (m.retryAfterS !== undefined) {
          headers.set("retry-after", String(m.retryAfterS));
        }
        rec.answered = performance.now();
        return new Response(`proxy: injected ${m.status}\n`, {
          status: m.status,
          headers,
        });
      }
      case "silent":
        if (isWatch(url)) {
          await req.body?.cancel().catch(() => {});
          rec.status = 200;
          let c: ReadableStreamDefaultController<Uint8Array> | undefined;
          const stop = () => {
            try {
              c?.error(new Error("proxy: silent stream dropped"));
            } catch { /* already closed */ }
          };
          inflight.add(stop);
          return new Response(
            new ReadableStream<Uint8Array>({
              start(ctl) {
                c = ctl;
              },
              cancel() {
                inflight.delete(stop);
              },
            }),
            { status: 200, headers: { "content-type": "application/json" } },
          );
        }
        return await forward(req, url, rec, undefined);
      case "cut":
        return await forward(req, url, rec, m.afterBytes);
      case "pass":
        return await forward(req, url, rec, undefined);
    }
  });

  return {
    records,
    setMode(next: ProxyMode) {
      mode = next;
      for (const stop of [...inflight]) stop();
      inflight.clear();
    },
    async shutdown() {
      for (const stop of [...inflight]) stop();
      await server.shutdown();
      client?.close();
    },
  };
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Reads a byte stream as lines. */
async function* lines(
  stream: ReadableStream<Uint8Array>,
): AsyncGenerator<string> {
  let buf = "";
  for await (const chunk of stream) {
    buf += dec.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, nl);
      buf = buf.slice(nl + 1);
    }
  }
  if (buf !== "") yield buf;
}

/** The proxy as a child process, driven from the test process. */
export class FaultProxy implements AsyncDisposable {
  readonly url: string;
  readonly #child: Deno.ChildProcess;
  readonly #out: AsyncGenerator<string>;
  readonly #in: WritableStreamDefaultWriter<Uint8Array>;
  #closed = false;

  private constructor(
    url: string,
    child: Deno.ChildProcess,
    out: AsyncGenerator<string>,
    input: WritableStreamDefaultWriter<Uint8Array>,
  ) {
    this.url = url;
    this.#child = child;
    this.#out = out;
    this.#in = input;
  }

  /**
   * Starts the proxy inside network namespace `netns` (or here, when
   * undefined), listening on `hostname:port` and forwarding to `upstream`.
   */
  static async start(opts: {
    netns?: string;
    hostname: string;
    port: number;
    upstream: string;
    tls?: ProxyTlsFiles;
    logPath?: string;
  }): Promise<FaultProxy> {
    const cmd = [
      Deno.execPath(),
      "run",
      "--no-prompt",
      "--allow-net",
      "--allow-read",
      new URL(import.meta.url).pathname,
      `--listen=${opts.hostname}:${opts.port}`,
      `--upstream=${opts.upstream}`,
      ...(opts.tls ? [`--tls=${JSON.stringify(opts.tls)}`] : []),
    ];
    const argv = opts.netns === undefined
      ? cmd
      : ["ip", "netns", "exec", opts.netns, ...cmd];
    const child = new Deno.Command(argv[0]!, {
      args: argv.slice(1),
      stdin: "piped",
      stdout: "piped",
      stderr: opts.logPath === undefined ? "null" : "piped",
    }).spawn();
    if (opts.logPath !== undefined) {
      const log = await Deno.open(opts.logPath, { create: true, append: true });
      child.stderr.pipeTo(log.writable).catch(() => {});
    }
    const out = lines(child.stdout);
    const first = await out.next();
    if (first.done) {
      throw new Error(`Fault proxy exited before listening`);
    }
    const ready = JSON.parse(first.value) as { port: number };
    return new FaultProxy(
      `${
        opts.tls?.certFile ? "https" : "http"
      }://${opts.hostname}:${ready.port}`,
      child,
      out,
      child.stdin.getWriter(),
    );
  }

  async #send(cmd: Command): Promise<Record<string, unknown>> {
    await this.#in.write(enc.encode(JSON.stringify(cmd) + "\n"));
    const r = await this.#out.next();
    if (r.done) throw new Error("Fault proxy exited");
    return JSON.parse(r.value) as Record<string, unknown>;
  }

  /** Switches the mode; responses in flight are broken. */
  async set(mode: ProxyMode): Promise<void> {
    await this.#send({ cmd: "mode", mode });
  }

  /** Every request seen so far. */
  async records(): Promise<ProxyRecord[]> {
    const r = await this.#send({ cmd: "log" });
    return r.records as ProxyRecord[];
  }

  /** Stops the proxy. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.#send({ cmd: "quit" });
      await this.#in.close();
    } catch { /* already gone */ }
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* exited */ }
    }, 3000);
    await this.#child.status;
    clearTimeout(timer);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Request rate figures over a window of records. */
export interface RateStats {
  readonly requests: number;
  /** Most requests in any one-second bucket. */
  readonly peakPerSecond: number;
  /** Requests per second over the whole window. */
  readonly perSecond: number;
  /**
   * For each request that arrived after an injected status answer had
   * been handed back: the time since the latest such answer, ms.
   */
  readonly gapsAfterAnswerMs: readonly number[];
}

/** Rate figures for the records in `[from, to)` (`Date.now()` times). */
export function rateStats(
  records: readonly ProxyRecord[],
  from: number,
  to: number,
): RateStats {
  const inside = records.filter((r) => r.at >= from && r.at < to);
  const buckets = new Map<number, number>();
  for (const r of inside) {
    const b = Math.floor((r.at - from) / 1000);
    buckets.set(b, (buckets.get(b) ?? 0) + 1);
  }
  const gaps: number[] = [];
  for (const r of inside) {
    // The latest answer handed back before this request arrived.
    let latest: number | undefined;
    for (const p of inside) {
      if (p.answered !== undefined && p.answered < r.arrived) {
        latest = Math.max(latest ?? -Infinity, p.answered);
      }
    }
    if (latest !== undefined) gaps.push(r.arrived - latest);
  }
  return {
    requests: inside.length,
    peakPerSecond: Math.max(0, ...buckets.values()),
    perSecond: inside.length / Math.max(0.001, (to - from) / 1000),
    gapsAfterAnswerMs: gaps,
  };
}

if (import.meta.main) {
  const arg = (name: string) =>
    Deno.args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const listen = arg("listen") ?? "127.0.0.1:0";
  const upstream = arg("upstream");
  if (upstream === undefined) {
    console.error("Usage: proxy.ts --listen=HOST:PORT --upstream=URL");
    Deno.exit(2);
  }
  const colon = listen.lastIndexOf(":");
  const say = (v: unknown) =>
    Deno.stdout.write(enc.encode(JSON.stringify(v) + "\n"));
  const server = serveFaultProxy({
    hostname: listen.slice(0, colon),
    port: Number(listen.slice(colon + 1)),
    upstream,
    ...(arg("tls") !== undefined &&
      { tls: JSON.parse(arg("tls")!) as ProxyTlsFiles }),
    onListen: (addr) => void say({ port: addr.port }),
  });
  for await (const line of lines(Deno.stdin.readable)) {
    if (line.trim() === "") continue;
    const cmd = JSON.parse(line) as Command;
    if (cmd.cmd === "mode") {
      server.setMode(cmd.mode);
      console.error(`mode ${JSON.stringify(cmd.mode)}`);
      await say({ ok: true });
    } else if (cmd.cmd === "log") {
      await say({ records: server.records });
    } else {
      await say({ ok: true });
      break;
    }
  }
  await server.shutdown();
  Deno.exit(0);
}

/** The 200 answers of the `body` mode. */
function bodyResponse(
  body: "garbage" | "html" | "huge" | "trickle",
  inflight: Set<() => void>,
): Response {
  const enc = new TextEncoder();
  if (body === "garbage") {
    return new Response(
      '{"kind":"NodeList","items":{"not":"a list"},"header":{"revision":[]},"kvs":"x","result":7}\n',
      { status: 200, headers: { "content-type": "application/json" } },
    );
  }
  if (body === "html") {
    return new Response(
      "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>\n",
      { status: 200, headers: { "content-type": "text/html" } },
    );
  }
  let c: ReadableStreamDefaultController<Uint8Array> | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const stop = () => {
    clearTimeout(timer);
    try {
      c?.error(new Error("proxy: body dropped"));
    } catch { /* already closed */ }
  };
  inflight.add(stop);
  const done = () => {
    clearTimeout(timer);
    inflight.delete(stop);
  };
  if (body === "huge") {
    // 100 MB of one JSON string, no newline, in 1 MiB chunks.
    const chunk = enc.encode("x".repeat(1 << 20));
    let sent = 0;
    return new Response(
      new ReadableStream<Uint8Array>({
        start(ctl) {
          c = ctl;
          ctl.enqueue(enc.encode('{"kind":"NodeList","result":"'));
        },
        pull(ctl) {
          if (sent >= 100) {
            ctl.enqueue(enc.encode('"}'));
            done();
            ctl.close();
            return;
          }
          sent++;
          ctl.enqueue(chunk);
        },
        cancel: done,
      }),
      { status: 200, headers: { "content-type": "application/json" } },
    );
  }
  const text = enc.encode(
    '{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[',
  );
  let at = 0;
  return new Response(
    new ReadableStream<Uint8Array>({
      start(ctl) {
        c = ctl;
        const tick = () => {
          if (at < text.length) {
            try {
              ctl.enqueue(text.subarray(at, at + 1));
            } catch {
              return done();
            }
            at++;
          }
          timer = setTimeout(tick, 500);
        };
        tick();
      },
      cancel: done,
    }),
    { status: 200, headers: { "content-type": "application/json" } },
  );
}
