/**
 * A scripted stand-in for the API server's HTTP interface, for unit tests
 * of the client and the watcher: each request is recorded and answered by
 * a handler; watch bodies are streams the test writes to, chunk by chunk.
 *
 * @module
 */
import { KubeClient, type TokenSource } from "./client.ts";

/** A request as the fake server saw it. */
export interface SeenRequest {
  readonly method: string;
  readonly url: URL;
  readonly headers: Headers;
  readonly body: string | undefined;
}

/** A watch body the test feeds. */
export class WatchStream {
  readonly #enc = new TextEncoder();
  #ctl!: ReadableStreamDefaultController<Uint8Array>;
  readonly body: ReadableStream<Uint8Array>;
  cancelled = false;

  constructor() {
    this.body = new ReadableStream({
      start: (c) => {
        this.#ctl = c;
      },
      cancel: () => {
        this.cancelled = true;
      },
    });
  }

  /** Sends raw text (not necessarily whole lines). */
  send(text: string): void {
    if (!this.cancelled) this.#ctl.enqueue(this.#enc.encode(text));
  }

  /** Sends one event as a line. */
  event(type: string, object: unknown): void {
    this.send(JSON.stringify({ type, object }) + "\n");
  }

  /** Ends the body as the server does at timeoutSeconds. */
  end(): void {
    if (!this.cancelled) this.#ctl.close();
  }

  /** Breaks the connection. */
  fail(): void {
    if (!this.cancelled) this.#ctl.error(new TypeError("connection reset"));
  }
}

/** Answers a request; throw to simulate a network error. */
export type Handler = (req: SeenRequest) => Response | Promise<Response>;

/**
 * Lets a test wait for a condition without polling: whatever the test
 * watches calls `notify()` when it changes (the fake server after each
 * request, a sink after each call), and `until` checks its predicate then.
 */
export class Changes {
  readonly #waiters = new Set<() => void>();

  /** Re-checks every pending `until`. */
  notify(): void {
    for (const wake of [...this.#waiters]) wake();
  }

  /**
   * Resolves once `pred` holds; rejects after `timeoutMs` (a deadline for
   * a broken test, not a pause) with `describe()` in the message.
   */
  until(
    pred: () => boolean,
    timeoutMs = 3000,
    describe: () => string = () => "",
  ): Promise<void> {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      // Assigned once, but after `wake`, which may run inside setTimeout.
      // deno-lint-ignore prefer-const
      let timer: ReturnType<typeof setTimeout> | undefined;
      const wake = () => {
        if (!pred()) return;
        clearTimeout(timer);
        this.#waiters.delete(wake);
        resolve();
      };
      // Registered before the timer: a process's first setTimeout can
      // load Deno's Node timer module, which runs pending microtasks
      // (and so notifications) before it returns.
      this.#waiters.add(wake);
      timer = setTimeout(() => {
        this.#waiters.delete(wake);
        reject(new Error(`timed out waiting; ${describe()}`));
      }, timeoutMs);
      wake();
    });
  }
}

/** A fake API server reachable through a {@linkcode KubeClient}. */
export class FakeApi {
  readonly requests: SeenRequest[] = [];
  /** Notified after each request has been answered. */
  readonly changes: Changes;
  handler: Handler;

  /** `changes` may be shared with the test's own sinks. */
  constructor(handler: Handler, changes = new Changes()) {
    this.handler = handler;
    this.changes = changes;
  }

  /** A client whose fetch is this fake. */
  client(token?: (() => string) | TokenSource): KubeClient {
    const source: TokenSource | undefined = typeof token === "function"
      ? { token: () => Promise.resolve(token()), invalidate: () => {} }
      : token;
    return new KubeClient({
      server: "https://api.test:6443",
      ...(source && { token: source }),
      fetch: async (input, init) => {
        const url = new URL(String(input));
        const req: SeenRequest = {
          method: init?.method ?? "GET",
          url,
          headers: new Headers(init?.headers),
          body: typeof init?.body === "string" ? init.body : undefined,
        };
        this.requests.push(req);
        const signal = init?.signal;
        if (signal?.aborted) throw signal.reason;
        let res: Response;
        try {
          res = await this.handler(req);
        } finally {
          queueMicrotask(() => this.changes.notify());
        }
        if (!res.body || !signal) return res;
        // Like fetch: an abort errors the body and cancels the source.
        return new Response(
          res.body.pipeThrough(new TransformStream(), { signal }),
          res,
        );
      },
    });
  }
}

/** A JSON response. */
export function json(
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });
}

/** A Kubernetes Status error body. */
export function status(
  code: number,
  reason: string,
  message: string,
  headers: Record<string, string> = {},
): Response {
  return json(code, {
    kind: "Status",
    apiVersion: "v1",
    status: "Failure",
    message,
    reason,
    code,
  }, headers);
}

/** A Node object with flannel annotations. */
/** A distinct VTEP MAC per public IP (peers may not share one). */
function macFor(ip: string): string {
  const o = ip.split(".").map((x) => Number(x) & 255);
  const hex = o.map((x) => x.toString(16).padStart(2, "0")).join(":");
  return o.length === 4 ? `02:00:${hex}` : "02:00:00:00:00:01";
}

export function node(
  name: string,
  rv: string,
  subnet: string,
  ip: string,
  mac = macFor(ip),
): Record<string, unknown> {
  return {
    kind: "Node",
    apiVersion: "v1",
    metadata: {
      name,
      resourceVersion: rv,
      annotations: {
        "flannel.alpha.coreos.com/backend-data": `{"VNI":1,"VtepMAC":"${mac}"}`,
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": ip,
      },
    },
    spec: { podCIDR: subnet, podCIDRs: [subnet] },
    status: { conditions: [], images: [] },
  };
}
