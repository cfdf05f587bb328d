/**
 * Newline-delimited JSON, as the API server's watch and etcd's gateway
 * stream it. A network chunk is not a line: an event may arrive in pieces,
 * several may share a chunk, and a multi-byte UTF-8 character may be cut
 * in two. {@linkcode LineSplitter} turns chunks into whole lines and
 * {@linkcode parseJsonLine} parses one.
 *
 * @module
 */
import { concatBytes } from "./bytes.ts";
import { fail, ok, type Result } from "./result.ts";
import { quote } from "./log.ts";

const NEWLINE = 0x0a;

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
  readonly #decoder = new TextDecoder();
  /** Bytes of the incomplete line, as received (joined when it ends). */
  #parts: Uint8Array[] = [];
  #pending = 0;
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
    return this.#pending;
  }

  /**
   * Adds a chunk and returns the lines it completes. Lines are kept as
   * bytes until their newline arrives and decoded once, whole: a line that
   * never ends costs its bytes up to the limit, not strings built from it.
   */
  push(chunk: Uint8Array): string[] {
    const out: string[] = [];
    let start = 0;
    for (
      let nl = chunk.indexOf(NEWLINE);
      nl !== -1;
      nl = chunk.indexOf(NEWLINE, start)
    ) {
      const line = this.#take(chunk.subarray(start, nl));
      if (line.trim() !== "") out.push(line);
      start = nl + 1;
    }
    if (start < chunk.byteLength) {
      this.#hold(chunk.byteLength - start);
      // A copy: the caller may reuse its buffer.
      this.#parts.push(chunk.slice(start));
    }
    return out;
  }

  /** Ends the stream: returns a last line that had no newline, if any. */
  flush(): string[] {
    const rest = this.#take(new Uint8Array());
    return rest.trim() === "" ? [] : [rest];
  }

  /** The held bytes plus `tail`, decoded; nothing is held afterwards. */
  #take(tail: Uint8Array): string {
    this.#hold(tail.byteLength);
    const bytes = this.#parts.length === 0
      ? tail
      : concatBytes([...this.#parts, tail]);
    this.#parts = [];
    this.#pending = 0;
    return this.#decoder.decode(bytes);
  }

  #hold(n: number): void {
    const total = this.#pending + n;
    if (total > this.#maxLine) {
      this.#parts = [];
      this.#pending = 0;
      throw new Error(
        `Watch line longer than ${this.#maxLine} bytes (${total} so far)`,
      );
    }
    this.#pending = total;
  }
}

/** Parses one line, or says why it is not JSON (the line quoted, cut). */
export function parseJsonLine(line: string): Result<unknown> {
  try {
    return ok(JSON.parse(line));
  } catch (e) {
    return fail(
      `Cannot parse stream line ${quote(line)}: ${(e as Error).message}`,
    );
  }
}
