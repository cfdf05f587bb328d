/**
 * Newline-delimited JSON as the etcd gateway streams it (one
 * `{"result":{...}}` per line). A network chunk is not a message: a chunk
 * may end inside a line, inside a multi-byte UTF-8 character, or carry
 * several lines, so bytes are buffered until a newline completes a line.
 *
 * @module
 */
import { fail, ok, type Result } from "../result.ts";

/**
 * Incremental NDJSON decoder: feed it chunks, get back the complete lines
 * parsed (or the reason a line is not JSON).
 *
 * @example
 * ```ts
 * const d = new NdjsonDecoder();
 * d.push(new TextEncoder().encode('{"a":')); // []
 * d.push(new TextEncoder().encode('1}\n'));  // [{ ok: true, value: { a: 1 } }]
 * ```
 */
export class NdjsonDecoder {
  readonly #text = new TextDecoder();
  #partial = "";

  /** Decodes a chunk and returns every line it completes, parsed. */
  push(chunk: Uint8Array): Result<unknown>[] {
    this.#partial += this.#text.decode(chunk, { stream: true });
    const out: Result<unknown>[] = [];
    let nl: number;
    while ((nl = this.#partial.indexOf("\n")) >= 0) {
      const line = this.#partial.slice(0, nl).trim();
      this.#partial = this.#partial.slice(nl + 1);
      if (line !== "") out.push(parseLine(line));
    }
    return out;
  }

  /** Bytes received after the last newline (an unfinished line). */
  get pending(): string {
    return this.#partial;
  }
}

function parseLine(line: string): Result<unknown> {
  try {
    return ok(JSON.parse(line));
  } catch (e) {
    const shown = line.length > 120 ? `${line.slice(0, 117)}...` : line;
    return fail(
      `Cannot parse stream line "${shown}": ${(e as Error).message}`,
    );
  }
}
