/**
 * Retry timing shared by the Kubernetes and etcd clients: exponential
 * backoff with jitter (so agents restarted together do not retry in
 * lockstep), the `Retry-After` header a 429 or 5xx answer may carry, and an
 * abortable sleep.
 *
 * @module
 */

/** Longest single timer the runtime supports (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Options of {@linkcode Backoff}. */
export interface BackoffOptions {
  /** First delay, in ms. Default 500. */
  readonly initialMs?: number;
  /** Largest delay, in ms. Default 30000. */
  readonly maxMs?: number;
  /** Growth per failure. Default 2. */
  readonly factor?: number;
  /** Random source in [0, 1) (tests). Default `Math.random`. */
  readonly random?: () => number;
}

/**
 * Exponential backoff with jitter: the n-th delay is drawn from
 * [cap/2, cap] where cap = min(maxMs, initialMs * factor^n), so agents
 * restarted together do not retry in lockstep and none retries at once.
 */
export class Backoff {
  readonly #initial: number;
  readonly #max: number;
  readonly #factor: number;
  readonly #random: () => number;
  #attempt = 0;

  constructor(opts: BackoffOptions = {}) {
    this.#initial = opts.initialMs ?? 500;
    this.#max = opts.maxMs ?? 30_000;
    this.#factor = opts.factor ?? 2;
    this.#random = opts.random ?? Math.random;
  }

  /** Failures since the last reset. */
  get attempt(): number {
    return this.#attempt;
  }

  /**
   * The delay before the next try, in ms. A server's `Retry-After` wins
   * when it is longer (never beyond 10 minutes).
   */
  next(retryAfterMs?: number): number {
    const cap = Math.min(
      this.#max,
      this.#initial * this.#factor ** this.#attempt,
    );
    this.#attempt++;
    const jittered = cap / 2 + this.#random() * (cap / 2);
    if (retryAfterMs !== undefined && retryAfterMs > jittered) {
      return Math.min(retryAfterMs, 600_000);
    }
    return Math.round(jittered);
  }

  /** Starts over after a success. */
  reset(): void {
    this.#attempt = 0;
  }
}

/**
 * Parses a `Retry-After` header: delay-seconds or an HTTP date. Returns ms
 * from `now`, or undefined when absent or unreadable.
 */
export function parseRetryAfter(
  value: string | null | undefined,
  now: number = Date.now(),
): number | undefined {
  if (value === null || value === undefined) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  if (v === "" || !/[a-z]/i.test(v)) return undefined;
  const t = Date.parse(v);
  if (Number.isNaN(t)) return undefined;
  return Math.max(0, t - now);
}

/**
 * Resolves after `ms` (Infinity: never), or rejects with the signal's
 * reason as soon as it aborts. Time is measured on the monotonic clock,
 * so a wall-clock step (NTP, an operator's `date -s`) neither stretches
 * nor cuts a wait. The abort listener is removed when the sleep ends.
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const end = performance.now() + ms;
    const arm = () => {
      const left = end - performance.now();
      if (left <= 0) {
        signal?.removeEventListener("abort", onAbort);
        resolve();
        return;
      }
      timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    if (ms !== Infinity) arm();
  });
}
