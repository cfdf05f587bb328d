/**
 * A value or the reason there is none. Parsers of foreign data (annotations,
 * API answers, net-conf.json, etcd values) return this instead of throwing,
 * so a bad peer can be skipped with a message and never take the agent down.
 *
 * @module
 */

/** A parsed value, or the reason the input was rejected. */
export type Result<T> = { ok: true; value: T } | { ok: false; reason: string };

/** Wraps a value as a successful result. */
export function ok<T>(value: T): Result<T> {
  return { ok: true, value };
}

/** Wraps a reason as a failed result. */
export function fail<T = never>(reason: string): Result<T> {
  return { ok: false, reason };
}

/** Returns the value of a result, or throws an Error carrying its reason. */
export function unwrap<T>(result: Result<T>): T {
  if (!result.ok) throw new Error(result.reason);
  return result.value;
}
