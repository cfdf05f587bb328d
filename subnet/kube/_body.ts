/**
 * Reading a response body chunk by chunk into one reused buffer (a BYOB
 * reader) where the stream supports it, so reading a 60 MB LIST allocates
 * one 64 KiB buffer instead of thousands of chunk buffers whose memory the
 * allocator keeps after they are freed. The callback must copy or decode
 * what it keeps: the view is overwritten by the next read.
 *
 * @module
 */

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
  } finally {
    byob.releaseLock();
  }
}
