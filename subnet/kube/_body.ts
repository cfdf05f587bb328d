/**
 * Reading a response body chunk by chunk into one reused buffer (a BYOB
 * reader) where the stream supports it, so reading a 60 MB LIST allocates
 * one 64 KiB buffer instead of thousands of chunk buffers whose memory the
 * allocator keeps after they are freed. The callback must copy or decode
 * what it keeps: the view is overwritten by the next read.
 *
 * When `onChunk` throws (a body over its size limit, one that is not what
 * it claims) or the read fails, the body is cancelled before the error is
 * passed on: a response left unread but open keeps its connection, and a
 * Node-style stream under it keeps buffering what the server sends (ten
 * abandoned 100 MB answers held 1.1 GiB).
 *
 * @module
 */
import { readBounded } from "../../lib/bytes.ts";

/** Calls `onChunk` with each piece of `body` until it ends. */
export async function forEachChunk(
  body: ReadableStream<Uint8Array>,
  onChunk: (view: Uint8Array) => void,
  bufferSize = 64 * 1024,
): Promise<void> {
  let byob: ReadableStreamBYOBReader | undefined;
  try {
    byob = body.getReader({ mode: "byob" });
  } catch {
    // Not a byte stream: fall back to plain chunks.
  }
  if (!byob) {
    const reader = body.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        onChunk(value);
      }
    } catch (e) {
      await reader.cancel(e).catch(() => {});
      throw e;
    } finally {
      reader.releaseLock();
    }
  }
  let buf = new ArrayBuffer(bufferSize);
  try {
    for (;;) {
      const { value, done } = await byob.read(new Uint8Array(buf));
      if (done || !value) return;
      onChunk(value);
      // The read transferred our buffer; take it back for the next one.
      buf = value.buffer as ArrayBuffer;
    }
  } catch (e) {
    await byob.cancel(e).catch(() => {});
    throw e;
  } finally {
    byob.releaseLock();
  }
}

/** Raised when a body is larger than its reader allows. */
export class BodyTooLarge extends Error {
  override readonly name = "BodyTooLarge";
}

/**
 * Reads `body` whole, up to `maxBytes`; a longer body is cancelled and
 * raises {@linkcode BodyTooLarge} naming `what`, so a server (or something
 * in front of it) answering with an endless body costs `maxBytes`, not all
 * the memory there is.
 */
export async function readBody(
  body: ReadableStream<Uint8Array> | null,
  maxBytes: number,
  what: string,
): Promise<Uint8Array> {
  if (!body) return new Uint8Array();
  const all = await readBounded(body, maxBytes);
  if (all === undefined) {
    throw new BodyTooLarge(`${what}: body larger than ${maxBytes} bytes`);
  }
  return all;
}
