/**
 * A throwaway single-member etcd for the etcd-mode tests: Debian's
 * `/usr/bin/etcd` (3.4, which serves the v3 JSON gateway weft speaks) on
 * 127.0.0.1 with free ports and a temporary data directory. It can be
 * stopped, killed and started again on the same ports and data (to test
 * watch resumption), compacted through the API, and `close()` stops it and
 * removes the directory. Raw gateway helpers let tests write and read
 * exact bytes, independently of the client under test.
 *
 * @module
 */
import type { Need } from "../_gate.ts";
import { halt } from "../_netns.ts";

/** Debian's etcd-server 3.4. */
export const DEBIAN_ETCD = "/usr/bin/etcd";

/** Whether the etcd binary exists. */
export async function etcdAvailable(bin = DEBIAN_ETCD): Promise<boolean> {
  try {
    return (await Deno.stat(bin)).isFile;
  } catch {
    return false;
  }
}

/** A test need (`_gate.ts`): Debian's etcd is installed. */
export const DEBIAN_ETCD_SERVER: Need = async () =>
  (await etcdAvailable())
    ? undefined
    : `${DEBIAN_ETCD} is missing (apt-get install etcd-server)`;

/** TLS for the client port. */
export interface EtcdServerTls {
  /** Server certificate (also used by the harness as its client cert). */
  readonly certFile: string;
  readonly keyFile: string;
  /** CA that signed client and server certificates. */
  readonly caFile: string;
  /** Require client certificates (`--client-cert-auth`). Default true. */
  readonly clientCertAuth?: boolean;
}

/** Options of {@linkcode EtcdServer.start}. */
export interface EtcdServerOptions {
  /** Extra flags, e.g. `--auth-token-ttl=2`. */
  readonly args?: readonly string[];
  readonly tls?: EtcdServerTls;
  /** Binary to run. Default {@linkcode DEBIAN_ETCD}. */
  readonly bin?: string;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function b64(s: string): string {
  let bin = "";
  for (const b of enc.encode(s)) bin += String.fromCharCode(b);
  return btoa(bin);
}

function unb64(s: string): string {
  const bin = atob(s);
  return dec.decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
}

/** Two free loopback TCP ports. */
function freePorts(): [number, number] {
  const a = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const b = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const ports: [number, number] = [
    (a.addr as Deno.NetAddr).port,
    (b.addr as Deno.NetAddr).port,
  ];
  a.close();
  b.close();
  return ports;
}

/** A raw key as stored: value bytes as UTF-8 and the lease ID ("0": none). */
export interface RawKey {
  readonly value: string;
  readonly lease: string;
  readonly modRevision: bigint;
}

/** A running (or stopped) test etcd. */
export class EtcdServer implements AsyncDisposable {
  readonly dataDir: string;
  readonly #opts: EtcdServerOptions;
  #clientPort: number;
  #peerPort: number;
  #child: Deno.ChildProcess | undefined;
  #http: Deno.HttpClient | undefined;
  #closed = false;

  private constructor(dataDir: string, opts: EtcdServerOptions) {
    this.dataDir = dataDir;
    this.#opts = opts;
    [this.#clientPort, this.#peerPort] = freePorts();
  }

  /** Starts a fresh etcd; retries on new ports if the chosen ones were taken. */
  static async start(opts: EtcdServerOptions = {}): Promise<EtcdServer> {
    const dir = await Deno.makeTempDir({ prefix: "weft-etcd-" });
    const server = new EtcdServer(dir, opts);
    if (opts.tls) {
      server.#http = Deno.createHttpClient({
        caCerts: [await Deno.readTextFile(opts.tls.caFile)],
        cert: await Deno.readTextFile(opts.tls.certFile),
        key: await Deno.readTextFile(opts.tls.keyFile),
      });
    }
    for (let attempt = 1;; attempt++) {
      try {
        await server.#spawn();
        return server;
      } catch (e) {
        await server.#halt("SIGKILL");
        if (attempt >= 3) {
          await server.close();
          throw e;
        }
        // Probably a port race: new ports, clean data directory.
        await Deno.remove(dir, { recursive: true }).catch(() => {});
        await Deno.mkdir(dir, { recursive: true });
        [server.#clientPort, server.#peerPort] = freePorts();
      }
    }
  }

  /** The client URL, `http://127.0.0.1:<port>` (https with TLS). */
  get endpoint(): string {
    return `${
      this.#opts.tls ? "https" : "http"
    }://127.0.0.1:${this.#clientPort}`;
  }

  /** The server's process id while it runs (benchmarks read its CPU). */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Whether the process is running. */
  get running(): boolean {
    return this.#child !== undefined;
  }

  async #spawn(): Promise<void> {
    const peer = `http://127.0.0.1:${this.#peerPort}`;
    const tls = this.#opts.tls;
    const args = [
      "--name=weft-test",
      `--data-dir=${this.dataDir}/data`,
      `--listen-client-urls=${this.endpoint}`,
      `--advertise-client-urls=${this.endpoint}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=weft-test=${peer}`,
      "--logger=zap",
      `--log-outputs=${this.dataDir}/etcd.log`,
      ...(tls
        ? [
          `--cert-file=${tls.certFile}`,
          `--key-file=${tls.keyFile}`,
          `--trusted-ca-file=${tls.caFile}`,
          `--client-cert-auth=${tls.clientCertAuth ?? true}`,
        ]
        : []),
      ...(this.#opts.args ?? []),
    ];
    this.#child = new Deno.Command(this.#opts.bin ?? DEBIAN_ETCD, {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "null",
      // etcd 3.4 refuses to start on arm64 unless told it is fine.
      ...(Deno.build.arch === "aarch64" &&
        { env: { ETCD_UNSUPPORTED_ARCH: "arm64" } }),
    }).spawn();
    const child = this.#child;
    let exited: Deno.CommandStatus | undefined;
    child.status.then((s) => exited = s);
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      if (exited) {
        this.#child = undefined;
        throw new Error(
          `etcd exited with code ${exited.code} during startup:\n${await this
            .log()}`,
        );
      }
      try {
        const res = await fetch(`${this.endpoint}/health`, {
          signal: AbortSignal.timeout(1000),
          ...(this.#http && { client: this.#http }),
        });
        const body = await res.text();
        if (res.ok && body.includes('"true"')) return;
      } catch {
        // Not listening yet.
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(
      `etcd did not become healthy in 20 s:\n${await this.log()}`,
    );
  }

  async #halt(signal: Deno.Signal): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    await halt(child, signal, 5000);
  }

  /** Stops etcd gracefully (SIGTERM, SIGKILL after 5 s). */
  stop(): Promise<void> {
    return this.#halt("SIGTERM");
  }

  /** Kills etcd (SIGKILL), like a crash. */
  kill(): Promise<void> {
    return this.#halt("SIGKILL");
  }

  /** Starts etcd again on the same ports and data. */
  async start(): Promise<void> {
    if (this.#child) return;
    // The old process may leave the port in TIME_WAIT briefly: retry.
    for (let attempt = 1;; attempt++) {
      try {
        await this.#spawn();
        return;
      } catch (e) {
        await this.#halt("SIGKILL");
        if (attempt >= 5) throw e;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  /** Stops and starts etcd, keeping its data. */
  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** POSTs to the JSON gateway and returns the parsed answer; throws on error. */
  async request(
    path: string,
    body: unknown,
  ): Promise<Record<string, unknown>> {
    const res = await fetch(`${this.endpoint}${path}`, {
      method: "POST",
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
      ...(this.#http && { client: this.#http }),
    });
    const text = await res.text();
    const json = JSON.parse(text) as Record<string, unknown>;
    if (!res.ok || json.error !== undefined) {
      throw new Error(`etcd ${path}: HTTP ${res.status}: ${text}`);
    }
    return json;
  }

  /** Writes a key with exactly these bytes, with an etcd lease if given. */
  async put(key: string, value: string, lease?: string): Promise<bigint> {
    const r = await this.request("/v3/kv/put", {
      key: b64(key),
      value: b64(value),
      ...(lease !== undefined && { lease }),
    });
    return BigInt((r.header as { revision: string }).revision);
  }

  /** Reads a key's raw value and lease, or undefined when absent. */
  async get(key: string): Promise<RawKey | undefined> {
    const r = await this.request("/v3/kv/range", { key: b64(key) });
    const kv = (r.kvs as Record<string, string>[] | undefined)?.[0];
    if (!kv) return undefined;
    return {
      value: unb64(kv.value ?? ""),
      lease: kv.lease ?? "0",
      modRevision: BigInt(kv.mod_revision ?? "0"),
    };
  }

  /** Every key under a prefix, with raw values. */
  async list(prefix: string): Promise<Map<string, RawKey>> {
    const bytes = enc.encode(prefix);
    bytes[bytes.length - 1]!++;
    let end = "";
    for (const b of bytes) end += String.fromCharCode(b);
    const r = await this.request("/v3/kv/range", {
      key: b64(prefix),
      range_end: btoa(end),
    });
    const out = new Map<string, RawKey>();
    for (const kv of (r.kvs as Record<string, string>[] | undefined) ?? []) {
      out.set(unb64(kv.key!), {
        value: unb64(kv.value ?? ""),
        lease: kv.lease ?? "0",
        modRevision: BigInt(kv.mod_revision ?? "0"),
      });
    }
    return out;
  }

  /** Deletes a key; returns how many keys were deleted. */
  async delete(key: string): Promise<number> {
    const r = await this.request("/v3/kv/deleterange", { key: b64(key) });
    return Number(r.deleted ?? 0);
  }

  /** Remaining TTL in seconds of an etcd lease (-1: gone). */
  async leaseTtl(id: string): Promise<number> {
    const r = await this.request("/v3/lease/timetolive", { ID: id });
    return Number(r.TTL);
  }

  /** The current store revision. */
  async revision(): Promise<bigint> {
    const r = await this.request("/v3/kv/range", { key: b64("\0") });
    return BigInt((r.header as { revision: string }).revision);
  }

  /** Compacts history up to `revision` (default: the current one). */
  async compact(revision?: bigint): Promise<bigint> {
    const rev = revision ?? await this.revision();
    await this.request("/v3/kv/compaction", {
      revision: String(rev),
      physical: true,
    });
    return rev;
  }

  /** etcd's log so far. */
  async log(): Promise<string> {
    try {
      return await Deno.readTextFile(`${this.dataDir}/etcd.log`);
    } catch {
      return "(no log)";
    }
  }

  /** Stops etcd and removes its directory. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#halt("SIGTERM");
    this.#http?.close();
    await Deno.remove(this.dataDir, { recursive: true }).catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
