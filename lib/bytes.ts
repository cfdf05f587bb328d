/**
 * Byte buffers: joining chunks, and reading a stream whole within a bound.
 *
 * @module
 */

/** Joins `parts` into one buffer (the part itself when there is one). */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  let n = 0;
  for (const p of parts) n += p.byteLength;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
}

/**
 * Reads a stream to its end, or stops as soon as it passes `limit` bytes,
 * cancels it and returns undefined: an endless stdin or answer body must
 * not eat the node's memory.
 */
export async function readBounded(
  stream: ReadableStream<Uint8Array>,
  limit: number,
): Promise<Uint8Array | undefined> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > limit) {
        await reader.cancel(new RangeError(`more than ${limit} bytes`))
          .catch(() => {});
        return undefined;
      }
      chunks.push(value);
    }
  } catch (e) {
    await reader.cancel(e).catch(() => {});
    throw e;
  } finally {
    reader.releaseLock();
  }
  return concatBytes(chunks);
}
