/**
 * Newline-delimited JSON, as the API server's watch and etcd's gateway
 * stream it. A network chunk is not a line: an event may arrive in pieces,
 * several may share a chunk, and a multi-byte UTF-8 character may be cut
 * in two. {@linkcode LineSplitter} turns chunks into whole lines and
 * {@linkcode parseJsonLine} parses one.
 *
 * @module
 */
import { fail, ok, type Result } from "./result.ts";

/**
 * Turns byte chunks into complete lines (without the newline). Blank lines
 * are dropped.
 *
 * @example
 * ```ts
 * const s = new LineSplitter();
 * s.push(new TextEncoder().encode('{"type":"ADD')); // []
 * s.push(new TextEncoder().encode('ED"}\n{"t')); // ['{"type":"ADDED"}']
 * ```
 */
export class LineSplitter {
  readonly #decoder = new TextDecoder("utf-8", { fatal: false });
  #partial = "";
  /** Longest line accepted; a longer one means the stream is corrupt. */
  readonly #maxLine: number;

  /**
   * `maxLine` defaults to 16 MiB: a watch line is one Node (etcd stores
   * objects up to about 1.5 MiB) or one etcd watch response (events of at
   * most a thousand revisions, a few hundred bytes each for leases).
   */
  constructor(maxLine = 16 << 20) {
    this.#maxLine = maxLine;
  }

  /** Bytes held for an incomplete line. */
  get pending(): number {
    return this.#partial.length;
  }

  /** Adds a chunk and returns the lines it completes. */
  push(chunk: Uint8Array): string[] {
    const text = this.#decoder.decode(chunk, { stream: true });
    if (!text.includes("\n")) {
      this.#partial += text;
      this.#check();
      return [];
    }
    const parts = (this.#partial + text).split("\n");
    this.#partial = parts.pop()!;
    this.#check();
    return parts.filter((l) => l.trim() !== "");
  }

  /** Ends the stream: returns a last line that had no newline, if any. */
  flush(): string[] {
    const rest = this.#partial + this.#decoder.decode();
    this.#partial = "";
    return rest.trim() === "" ? [] : [rest];
  }

  #check(): void {
    if (this.#partial.length > this.#maxLine) {
      const n = this.#partial.length;
      this.#partial = "";
      throw new Error(`Watch line longer than ${this.#maxLine} bytes (${n})`);
    }
  }
}

/** Parses one line, or says why it is not JSON (the line quoted, cut). */
export function parseJsonLine(line: string): Result<unknown> {
  try {
    return ok(JSON.parse(line));
  } catch (e) {
    const shown = line.length > 120 ? `${line.slice(0, 117)}...` : line;
    return fail(
      `Cannot parse stream line "${shown}": ${(e as Error).message}`,
    );
  }
}
