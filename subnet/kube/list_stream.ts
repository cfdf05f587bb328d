/**
 * Streaming parse of a Kubernetes List body (`{"kind":"NodeList",
 * "metadata":{...},"items":[{...},...]}`): each element of `items` is
 * parsed on its own as soon as its last byte arrives, so a page of 500
 * Nodes (several MB) is never held as one string or one object tree; the
 * caller reduces each item and drops it. The rest of the document
 * (`kind`, `metadata` with `continue` and `resourceVersion`) is kept and
 * parsed at the end with `items` left empty.
 *
 * With `drop`, one member of each item (a Node's `status`: nine tenths of
 * its bytes, with its image list, and nothing weft reads) is replaced by
 * `null` before the item is decoded or parsed, so it costs a byte scan
 * and no strings or objects.
 *
 * The scanner works on bytes: every structural character of JSON is
 * ASCII and every byte of a multi-byte UTF-8 character is >= 0x80, so
 * chunk boundaries anywhere, even inside a character, are safe.
 *
 * @module
 */

import { concatBytes } from "../../lib/bytes.ts";

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const LBRACE = 0x7b;
const RBRACE = 0x7d;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;
const COLON = 0x3a;
const COMMA = 0x2c;

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

/**
 * An item passed over for its size: its bytes were counted, not kept. The
 * name is read from its first bytes (`{"metadata":{"name":...`, after
 * `kind` and `apiVersion` if present: the order the API server writes)
 * when it is there.
 */
export class OversizedItem {
  constructor(
    readonly name: string | undefined,
    /** Its whole length in bytes, counted to its end while passed over. */
    readonly bytes: number,
    /** The bound it passed. */
    readonly limit: number,
  ) {}
}

const NAME_AT_START =
  /^\{\s*(?:"(?:kind|apiVersion)"\s*:\s*"[^"\\]*"\s*,\s*)*"metadata"\s*:\s*\{\s*"name"\s*:\s*"([a-z0-9.-]{1,253})"/;

/**
 * Splits a List body into its items, chunk by chunk.
 *
 * @example
 * ```ts
 * const s = new ListSplitter();
 * for await (const chunk of res.body!) for (const item of s.push(chunk)) use(item);
 * const { metadata } = s.finish(); // continue, resourceVersion
 * ```
 */
export class ListSplitter {
  readonly #decoder = new TextDecoder();
  /** The item member replaced by `null`, if any. */
  readonly #drop: string | undefined;
  /** After `"<drop>":` in an item, waiting for its value. */
  #dropNext = false;
  /** Inside the dropped value (it ends when depth is back to 3). */
  #dropping = false;

  #depth = 0;
  #inString = false;
  #escape = false;
  /** At depth 1, the next string is a key. */
  #expectKey = false;
  #keyParts: number[] | undefined;
  #lastKey = "";
  /** After `"items":`, waiting for its `[`. */
  #itemsNext = false;
  /** Inside the items array (its elements are at depth 2). */
  #inItems = false;
  /**
   * The item being read, decoded as it arrives (the caller may reuse its
   * chunk buffer), or undefined between items.
   */
  #item: string[] | undefined;
  /** Decodes item pieces; a character cut by a chunk boundary waits. */
  readonly #itemDecoder = new TextDecoder();
  /** The document without the items' contents. */
  readonly #rest: Uint8Array[] = [];
  #restBytes = 0;
  #itemBytes = 0;
  /** The item passed its bound: its bytes are scanned, not kept. */
  #skipping: OversizedItem | undefined;
  /** Where the current item starts in the current chunk (0: before it). */
  #itemFrom = 0;
  #items = 0;
  readonly #maxRest: number;
  readonly #maxItem: number;

  /**
   * `drop` names a member of each item (`status`) whose object or array
   * value is replaced by `null`. Limits, in bytes, keep a hostile or
   * broken server (a 100 MB line) from growing memory without bound: the
   * document outside its items (`kind`, `metadata`: a few hundred bytes
   * from a real API server; default 1 MiB) and one item as received,
   * dropped member included (etcd caps an object near 1.5 MiB; default
   * 16 MiB). An item past its bound is not an error: it comes out as an
   * {@linkcode OversizedItem} and the list goes on.
   */
  constructor(
    opts: { drop?: string; maxRest?: number; maxItem?: number } = {},
  ) {
    this.#drop = opts.drop;
    this.#maxRest = opts.maxRest ?? 1 << 20;
    this.#maxItem = opts.maxItem ?? 16 << 20;
  }

  /** Items returned so far. */
  get count(): number {
    return this.#items;
  }

  /** Whether keys are tracked at the current depth: the document's, items'. */
  #keyDepth(): boolean {
    return this.#depth === 1 ||
      (this.#depth === 3 && this.#drop !== undefined &&
        this.#item !== undefined);
  }

  /**
   * Adds a chunk and returns the items it completes, parsed. The chunk may
   * be reused by the caller afterwards: nothing keeps a view of it.
   */
  push(chunk: Uint8Array): unknown[] {
    const out: unknown[] = [];
    let seg = 0;
    this.#itemFrom = 0;
    // Next backslash in the chunk (-1: none left), searched lazily.
    let nextBackslash = -2;
    for (let i = 0; i < chunk.length; i++) {
      if (this.#inString && !this.#escape && !this.#keyParts) {
        // Inside a value string: jump to its closing quote or the next
        // escape with native searches rather than byte by byte.
        const q = chunk.indexOf(QUOTE, i);
        if (nextBackslash !== -1 && nextBackslash < i) {
          nextBackslash = chunk.indexOf(BACKSLASH, i);
        }
        const b = nextBackslash;
        if (b !== -1 && (q === -1 || b < q)) {
          this.#escape = true;
          i = b;
          continue;
        }
        if (q === -1) break;
        this.#inString = false;
        i = q;
        continue;
      }
      const c = chunk[i]!;
      if (this.#inString) {
        if (this.#escape) this.#escape = false;
        else if (c === BACKSLASH) this.#escape = true;
        else if (c === QUOTE) {
          this.#inString = false;
          if (this.#keyParts) {
            this.#lastKey = String.fromCharCode(...this.#keyParts);
            this.#keyParts = undefined;
          }
        } else if (this.#keyParts && this.#keyParts.length < 64) {
          this.#keyParts.push(c);
        }
        continue;
      }
      if (this.#inItems && this.#depth === 2 && this.#item === undefined) {
        // Between items: separators are dropped, "]" ends the array.
        if (isSpace(c) || c === COMMA) {
          this.#keep(chunk, seg, i);
          seg = i + 1;
          continue;
        }
        if (c === RBRACKET) {
          this.#inItems = false;
          this.#depth = 1;
          continue;
        }
        if (c !== LBRACE && c !== LBRACKET) {
          throw new Error(
            `Cannot parse list: item ${this.#items} is not an object`,
          );
        }
        this.#keep(chunk, seg, i);
        seg = i;
        this.#item = [];
        this.#itemBytes = 0;
        this.#skipping = undefined;
        this.#itemFrom = i;
      }
      if (this.#dropNext && !isSpace(c)) {
        this.#dropNext = false;
        if (c === LBRACE || c === LBRACKET) {
          this.#item!.push(
            this.#itemDecoder.decode(chunk.subarray(seg, i)),
            "null",
          );
          this.#dropping = true;
        }
      }
      switch (c) {
        case QUOTE:
          this.#inString = true;
          if (this.#expectKey && this.#keyDepth()) {
            this.#keyParts = [];
            this.#expectKey = false;
          }
          break;
        case LBRACE:
        case LBRACKET:
          this.#depth++;
          if (this.#keyDepth()) this.#expectKey = c === LBRACE;
          if (this.#itemsNext) {
            this.#itemsNext = false;
            if (c === LBRACKET && this.#depth === 2) this.#inItems = true;
          }
          break;
        case RBRACE:
        case RBRACKET:
          this.#depth--;
          if (this.#dropping && this.#depth === 3) {
            this.#dropping = false;
            seg = i + 1;
          } else if (this.#item && this.#depth === 2) {
            const bytes = this.#itemBytes + i + 1 - this.#itemFrom;
            if (!this.#skipping && bytes > this.#maxItem) {
              // Whole within one chunk: its head is still in the chunk.
              const head = this.#item.length > 0
                ? this.#item.join("")
                : this.#decoder.decode(
                  chunk.subarray(this.#itemFrom, this.#itemFrom + 4096),
                );
              this.#skipping = this.#oversized(head, bytes);
              this.#item.length = 0;
              seg = i + 1;
            }
            // "}" is ASCII: no character is left half decoded.
            this.#item.push(
              this.#itemDecoder.decode(chunk.subarray(seg, i + 1)),
            );
            seg = i + 1;
            const text = this.#item.join("");
            this.#item = undefined;
            // An item passed over is reported at its whole length, the same
            // however the body was cut into chunks (its refusal is counted
            // once per change of it).
            out.push(
              this.#skipping
                ? new OversizedItem(this.#skipping.name, bytes, this.#maxItem)
                : JSON.parse(text),
            );
            this.#skipping = undefined;
            this.#items++;
          }
          break;
        case COLON:
          if (this.#depth === 1) this.#itemsNext = this.#lastKey === "items";
          else if (this.#keyDepth()) {
            this.#dropNext = this.#lastKey === this.#drop;
          }
          break;
        case COMMA:
          if (this.#keyDepth()) this.#expectKey = true;
          break;
        default:
          if (this.#itemsNext && !isSpace(c)) this.#itemsNext = false;
      }
    }
    if (this.#item) {
      this.#itemBytes += chunk.length - seg;
      if (this.#itemBytes > this.#maxItem && !this.#skipping) {
        this.#skipping = this.#oversized(this.#item.join(""), this.#itemBytes);
      }
      if (this.#skipping) this.#item.length = 0;
      else if (!this.#dropping) {
        this.#item.push(
          this.#itemDecoder.decode(chunk.subarray(seg), { stream: true }),
        );
      }
    } else this.#keep(chunk, seg, chunk.length);
    return out;
  }

  #oversized(head: string, bytes: number): OversizedItem {
    const name = NAME_AT_START.exec(head.slice(0, 4096))?.[1];
    return new OversizedItem(name, bytes, this.#maxItem);
  }

  /** Copies bytes of the document outside the items. */
  #keep(chunk: Uint8Array, from: number, to: number): void {
    if (to <= from) return;
    this.#restBytes += to - from;
    if (this.#restBytes > this.#maxRest) {
      throw new Error(
        `Cannot parse list: more than ${this.#maxRest} bytes outside its items`,
      );
    }
    this.#rest.push(chunk.slice(from, to));
  }

  /**
   * Ends the body and returns the document without its items
   * (`items: []`). Throws when the body was cut short. Items whose key was
   * written with escapes (never by the API server) were not recognised and
   * are left in `items`.
   */
  finish(): Record<string, unknown> {
    if (this.#depth !== 0 || this.#inString || this.#item) {
      throw new Error(
        `Cannot parse list: the body ended early (after ${this.#items} items)`,
      );
    }
    let doc: unknown;
    try {
      doc = JSON.parse(this.#decoder.decode(concatBytes(this.#rest)));
    } catch (e) {
      throw new Error(`Cannot parse list: ${(e as Error).message}`);
    }
    if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
      throw new Error("Cannot parse list: not a JSON object");
    }
    return doc as Record<string, unknown>;
  }
}
