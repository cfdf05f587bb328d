/**
 * The health server on `--healthz-ip`:`--healthz-port` (port 0: none).
 * `/healthz` answers 200 while the process runs, as flanneld's does.
 * `/readyz` says more than flanneld: it is 200 only when every readiness
 * condition registered by the agent (lease held, device up, peers synced,
 * subnet.env written, rules in place) reports ready, and 503 otherwise
 * with one line per condition in the Kubernetes style (`[+]name ok`,
 * `[-]name: why`). Readiness is about this node's own dataplane: a peer
 * the kernel keeps refusing is another node's problem and must not hold
 * up a DaemonSet rollout on every node, so failing peers are reported as
 * informational lines (`[i]name: ...`) by `/readyz?verbose` and counted
 * in `/metrics`, never as unready. `/metrics` renders the Prometheus
 * registry of lib/metrics.ts.
 *
 * The request handler is a plain function, tested without a socket.
 *
 * @module
 */
import { metrics } from "../lib/metrics.ts";
import { logger } from "../lib/log.ts";

const log = logger("healthz");

/** Names of the readiness conditions the agent registers. */
export const READY = {
  lease: "lease held",
  device: "device up",
  peers: "peers synced",
  subnetEnv: "subnet.env written",
  rules: "rules in place",
} as const;

/** One condition's state. */
export interface Condition {
  readonly name: string;
  readonly ready: boolean;
  /** Why not ready, or what was checked. */
  readonly detail: string;
}

/**
 * Named readiness conditions. Ready when at least one is registered and
 * every one reports ready.
 *
 * @example
 * ```ts
 * const readiness = new Readiness();
 * const rules = readiness.register(READY.rules);
 * rules(true);
 * ```
 */
export class Readiness {
  readonly #conditions = new Map<string, { ready: boolean; detail: string }>();
  readonly #info = new Map<string, string>();
  readonly #onRead: (() => void)[] = [];

  /**
   * Registers `fn` to bring the conditions up to date just before they
   * are read ({@linkcode Readiness.refresh}): state that is cheap to read
   * but changes all the time is looked at when someone asks, not on a
   * timer that would wake an idle process.
   */
  onRead(fn: () => void): void {
    this.#onRead.push(fn);
  }

  /** Runs the {@linkcode Readiness.onRead} callbacks. */
  refresh(): void {
    for (const fn of this.#onRead) fn();
  }

  /**
   * Sets an informational line shown by `/readyz?verbose` that never
   * makes the node unready; an empty `detail` removes it.
   */
  inform(name: string, detail: string): void {
    if (detail === "") this.#info.delete(name);
    else this.#info.set(name, detail);
  }

  /** The informational lines, in insertion order. */
  info(): { name: string; detail: string }[] {
    return [...this.#info].map(([name, detail]) => ({ name, detail }));
  }

  /**
   * Adds a condition, not ready until reported otherwise, and returns the
   * function that reports it. Registering a name again keeps its state.
   */
  register(
    name: string,
    detail = "not checked yet",
  ): (ready: boolean, detail?: string) => void {
    if (!this.#conditions.has(name)) {
      this.#conditions.set(name, { ready: false, detail });
    }
    return (ready, why) => this.set(name, ready, why);
  }

  /** Reports a condition; an unknown name is registered. */
  set(name: string, ready: boolean, detail = ready ? "ok" : "not ready"): void {
    this.#conditions.set(name, { ready, detail });
  }

  /** Every condition in registration order. */
  conditions(): Condition[] {
    return [...this.#conditions].map(([name, c]) => ({ name, ...c }));
  }

  /** Whether every condition is ready (false when none is registered). */
  get ready(): boolean {
    return this.#conditions.size > 0 &&
      [...this.#conditions.values()].every((c) => c.ready);
  }
}

/** Inputs of {@linkcode healthHandler}. */
export interface HealthOptions {
  readonly readiness: Readiness;
  /** Prometheus text; default the process registry. */
  readonly renderMetrics?: () => string;
}

const TEXT = "text/plain; charset=utf-8";
/** Content type of the Prometheus text format. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

function text(body: string, status: number, type = TEXT): Response {
  return new Response(body, {
    status,
    headers: { "content-type": type, "cache-control": "no-store" },
  });
}

/** Answers `/healthz`, `/readyz` and `/metrics` (GET and HEAD). */
export function healthHandler(
  opts: HealthOptions,
): (req: Request) => Response {
  const render = opts.renderMetrics ?? (() => metrics.registry.render());
  return (req) => {
    opts.readiness.refresh();
    const url = new URL(req.url);
    const path = url.pathname;
    if (req.method !== "GET" && req.method !== "HEAD") {
      const r = text(`Method "${req.method}" not allowed\n`, 405);
      r.headers.set("allow", "GET, HEAD");
      return r;
    }
    switch (path) {
      case "/healthz":
        return text("weft is running\n", 200);
      case "/readyz": {
        const conds = opts.readiness.conditions();
        const lines = conds.map((c) =>
          c.ready ? `[+]${c.name} ok` : `[-]${c.name}: ${c.detail}`
        );
        if (conds.length === 0) {
          lines.push("[-]no readiness condition registered");
        }
        if (url.searchParams.has("verbose")) {
          for (const i of opts.readiness.info()) {
            lines.push(`[i]${i.name}: ${i.detail}`);
          }
        }
        const ready = opts.readiness.ready;
        lines.push(ready ? "readyz check passed" : "readyz check failed");
        return text(lines.join("\n") + "\n", ready ? 200 : 503);
      }
      case "/metrics":
        return text(render(), 200, METRICS_CONTENT_TYPE);
      default:
        return text(`No such path "${path}"\n`, 404);
    }
  };
}

/** A running health server. */
export interface HealthServer {
  /** The address bound (the real port when 0 was asked for in tests). */
  readonly hostname: string;
  readonly port: number;
  /** Resolves when the server has stopped. */
  readonly finished: Promise<void>;
  /** Stops accepting and closes connections. Idempotent. */
  shutdown(): Promise<void>;
}

/** Options of {@linkcode startHealthServer}. */
export interface HealthServerOptions extends HealthOptions {
  /** `--healthz-ip`. */
  readonly hostname: string;
  /** `--healthz-port`; 0 means no server (flanneld's meaning). */
  readonly port: number;
  /** Stops the server when aborted. */
  readonly signal?: AbortSignal;
  /** Tests only: bind even when `port` is 0 (an ephemeral port). */
  readonly ephemeral?: boolean;
}

/**
 * Starts the health server, or returns undefined when `port` is 0.
 * Throws when the address cannot be bound (flanneld exits then too).
 */
export function startHealthServer(
  opts: HealthServerOptions,
): HealthServer | undefined {
  if (opts.port === 0 && !opts.ephemeral) return undefined;
  const handler = healthHandler(opts);
  const server = Deno.serve({
    hostname: opts.hostname,
    port: opts.port,
    onListen: () => {},
    ...(opts.signal ? { signal: opts.signal } : {}),
  }, handler);
  const addr = server.addr as Deno.NetAddr;
  log.info(`Start healthz server on ${addr.hostname}:${addr.port}`);
  let stopped: Promise<void> | undefined;
  return {
    hostname: addr.hostname,
    port: addr.port,
    finished: server.finished,
    shutdown: () => stopped ??= server.shutdown(),
  };
}
