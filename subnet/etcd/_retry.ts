/**
 * Waiting helpers for the etcd manager: an abortable sleep and an
 * exponential backoff with jitter, so that many nodes retrying after an
 * etcd outage do not all come back in the same instant.
 *
 * @module
 */

/** Longest single timer the runtime supports (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Resolves after `ms` (Infinity: never), or rejects with the abort reason
 * as soon as `signal` aborts.
 */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const end = Date.now() + ms;
    const arm = () => {
      const left = end - Date.now();
      if (left <= 0) {
        signal.removeEventListener("abort", onAbort);
        resolve();
        return;
      }
      timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    if (ms !== Infinity) arm();
  });
}

/** Exponential backoff with "equal jitter": half fixed, half random. */
export class Backoff {
  readonly #min: number;
  readonly #max: number;
  #next: number;

  constructor(minMs = 250, maxMs = 10_000) {
    this.#min = minMs;
    this.#max = maxMs;
    this.#next = minMs;
  }

  /** The delay before the next attempt; doubles up to the maximum. */
  next(): number {
    const d = this.#next;
    this.#next = Math.min(this.#max, this.#next * 2);
    return d / 2 + Math.random() * (d / 2);
  }

  /** Back to the minimum after a success. */
  reset(): void {
    this.#next = this.#min;
  }
}
