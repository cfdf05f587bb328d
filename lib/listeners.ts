/**
 * Counts the abort listeners live on one signal, for the
 * `weft_run_signal_abort_listeners` gauge: a listener added per event and
 * never removed (a sleep that forgets its listener) shows as steady
 * growth in a long run. The signal's own methods are wrapped; other
 * signals are untouched.
 *
 * @module
 */

/** Starts counting `signal`'s abort listeners; returns the live count. */
export function countAbortListeners(signal: AbortSignal): () => number {
  const live = new Set<unknown>();
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  signal.addEventListener = ((
    type: string,
    fn: EventListenerOrEventListenerObject,
    opts?: boolean | AddEventListenerOptions,
  ) => {
    if (type === "abort") live.add(fn);
    add(type, fn, opts);
  }) as typeof signal.addEventListener;
  signal.removeEventListener = ((
    type: string,
    fn: EventListenerOrEventListenerObject,
    opts?: boolean | EventListenerOptions,
  ) => {
    if (type === "abort") live.delete(fn);
    remove(type, fn, opts);
  }) as typeof signal.removeEventListener;
  // Once it fires, every listener is gone.
  add("abort", () => live.clear(), { once: true });
  return () => live.size;
}
