/**
 * A strict parser for the block-style YAML that kubeconfigs are written in
 * (kubeadm's admin.conf, k3s.yaml, kind's, `kubectl config view --raw`),
 * so that reading one does not load npm:yaml and with it Deno's Node
 * compatibility layer. It reads block mappings and sequences, single-line
 * plain and quoted scalars, `{}` and `[]`, comments and a leading `---`,
 * and resolves plain scalars as npm:yaml's default (the YAML 1.2 core
 * schema) does. Anything else is refused with a reason, never guessed at:
 * the caller falls back to the full parser.
 *
 * @module
 */
import { fail, ok, type Result } from "../../lib/result.ts";

interface Line {
  readonly no: number;
  readonly indent: number;
  readonly text: string;
}

class Refused extends Error {}

function refuse(what: string, no: number): never {
  throw new Refused(`${what} on line ${no}`);
}

/** Non-empty, non-comment lines without their indentation. */
function splitLines(text: string): Line[] {
  const out: Line[] = [];
  let marker = false;
  const raw = text.split(/\r?\n/);
  for (let i = 0; i < raw.length; i++) {
    const no = i + 1;
    const s = raw[i]!;
    if (s.includes("\t")) refuse("A tab", no);
    const bad = /[\p{Cc}\u2028\u2029\ufeff]/u.exec(s);
    if (bad) {
      const code = bad[0].charCodeAt(0).toString(16).toUpperCase();
      refuse(`Character "U+${code.padStart(4, "0")}"`, no);
    }
    const indent = s.length - s.replace(/^ +/, "").length;
    const t = s.slice(indent).replace(/ +$/, "");
    if (t === "" || t.startsWith("#")) continue;
    if (indent === 0 && /^(?:---|\.\.\.|%)/.test(t)) {
      if (out.length > 0 || marker || !/^---(?: +#.*)?$/.test(t)) {
        refuse("A directive, document marker or second document", no);
      }
      marker = true;
      continue;
    }
    out.push({ no, indent, text: t });
  }
  return out;
}

/** A plain scalar's value under the YAML 1.2 core schema, as npm:yaml. */
function resolvePlain(s: string): unknown {
  if (/^(?:~|[Nn]ull|NULL)?$/.test(s)) return null;
  if (/^(?:[Tt]rue|TRUE|[Ff]alse|FALSE)$/.test(s)) return /^[tT]/.test(s);
  if (/^0o[0-7]+$/.test(s)) return parseInt(s.slice(2), 8);
  if (/^[-+]?[0-9]+$/.test(s)) return parseInt(s, 10);
  if (/^0x[0-9a-fA-F]+$/.test(s)) return parseInt(s.slice(2), 16);
  if (/^(?:[-+]?\.(?:inf|Inf|INF)|\.nan|\.NaN|\.NAN)$/.test(s)) {
    return /nan$/i.test(s) ? NaN : s.startsWith("-") ? -Infinity : Infinity;
  }
  if (
    /^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$/.test(s) ||
    /^[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)$/.test(s)
  ) {
    return parseFloat(s);
  }
  return s;
}

/** Refuses a plain scalar that starts with an indicator. */
function checkPlain(s: string, no: number): void {
  const c = s[0];
  if (c === undefined) refuse("An empty key", no);
  const spaced = s.length === 1 || s[1] === " ";
  if (c === "&" || c === "*") refuse("An anchor or alias", no);
  if (c === "!") refuse("A tag", no);
  if (c === "|" || c === ">") refuse("A block scalar", no);
  if (c === "?") refuse("A complex key", no);
  if (c === "[" || c === "{") refuse("A non-empty flow collection", no);
  if (c === "-" && spaced) refuse("A sequence where a scalar belongs", no);
  if (":,]}#%@`".includes(c)) refuse(`A plain scalar starting with "${c}"`, no);
}

/** The double-quoted escapes in the subset, besides `\uXXXX`. */
const ESCAPES: Record<string, string> = {
  '"': '"',
  "\\": "\\",
  "/": "/",
  n: "\n",
  t: "\t",
};

/** A quoted scalar at `text[start]`, ending on the same line. */
function quoted(
  text: string,
  start: number,
  no: number,
): { value: string; end: number } {
  const q = text[start];
  let value = "";
  let i = start + 1;
  while (i < text.length) {
    const c = text[i]!;
    if (c === q) {
      if (q === "'" && text[i + 1] === "'") {
        value += "'";
        i += 2;
        continue;
      }
      return { value, end: i + 1 };
    }
    if (q === '"' && c === "\\") {
      const e = text[i + 1] ?? "";
      if (Object.hasOwn(ESCAPES, e)) {
        value += ESCAPES[e];
        i += 2;
      } else if (
        e === "u" && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))
      ) {
        value += String.fromCharCode(parseInt(text.slice(i + 2, i + 6), 16));
        i += 6;
      } else {
        refuse(`The escape "\\${e}"`, no);
      }
      continue;
    }
    value += c;
    i++;
  }
  return refuse("A multi-line or unterminated quoted scalar", no);
}

/** The value of a scalar or `{}`/`[]` that fills the rest of a line. */
function inlineValue(text: string, no: number): unknown {
  const empty = /^(\[ *\]|\{ *\})(?: +#.*)?$/.exec(text);
  if (empty) return empty[1]!.startsWith("[") ? [] : {};
  if (text[0] === '"' || text[0] === "'") {
    const { value, end } = quoted(text, 0, no);
    if (!/^(?: +#.*)?$/.test(text.slice(end))) {
      refuse("Text after a quoted scalar", no);
    }
    return value;
  }
  const s = text.replace(/ #.*$/, "").replace(/ +$/, "");
  checkPlain(s, no);
  if (/: |:$/.test(s)) refuse("A nested mapping on one line", no);
  return resolvePlain(s);
}

/** The key and the text after `key:` when `line` is a mapping entry. */
function splitKey(line: Line): { key: string; rest: string } | undefined {
  const { text, no } = line;
  let key: string;
  let after: number;
  if (text[0] === '"' || text[0] === "'") {
    const q = quoted(text, 0, no);
    const colon = /^ *:(?: |$)/.exec(text.slice(q.end));
    if (!colon) return undefined;
    key = q.value;
    after = q.end + colon[0].length;
  } else {
    const m = /:(?: |$)| #/.exec(text);
    if (!m || m[0] === " #") return undefined;
    const raw = text.slice(0, m.index).replace(/ +$/, "");
    checkPlain(raw, no);
    if (raw === "<<") refuse('A merge key "<<"', no);
    const resolved = resolvePlain(raw);
    if (typeof resolved !== "string") {
      refuse(`A key "${raw}" that is not a string`, no);
    }
    key = resolved;
    after = m.index + 1;
  }
  if (after > 1000) refuse("A key over 1000 characters long", no);
  return { key, rest: text.slice(after).replace(/^ +/, "") };
}

const isItem = (text: string) => text === "-" || text.startsWith("- ");

/**
 * Parses `text` if it is in the block-style subset of YAML kubeconfigs are
 * written in, to what npm:yaml's `parse` returns for it; otherwise the
 * reason names the first construct outside the subset and its line.
 *
 * @example
 * ```ts
 * const r = parseYamlSubset("current-context: ci\nusers: []\n");
 * // r.ok && r.value is { "current-context": "ci", users: [] }
 * ```
 */
export function parseYamlSubset(text: string): Result<unknown> {
  let lines: Line[] = [];
  let pos = 0;
  let depth = 0;

  /**
   * The block node starting at `lines[pos]`, indented `indent`. A scalar
   * must share its line with `- ` or be the whole document: npm:yaml
   * rejects some valid placements of one on a line of its own.
   */
  const block = (indent: number, scalar: boolean): unknown => {
    const line = lines[pos]!;
    if (depth >= 100) refuse("Nesting over 100 levels deep", line.no);
    depth++;
    try {
      if (isItem(line.text)) return sequence(indent);
      if (splitKey(line)) return mapping(indent);
      if (!scalar) refuse("A scalar on a line of its own", line.no);
      pos++;
      return inlineValue(line.text, line.no);
    } finally {
      depth--;
    }
  };

  /** The value of `key:` or `-` with nothing after it on the line. */
  const nested = (indent: number, inMapping: boolean): unknown => {
    const next = lines[pos];
    if (next && next.indent > indent) return block(next.indent, false);
    if (inMapping && next?.indent === indent && isItem(next.text)) {
      return sequence(indent);
    }
    return null;
  };

  const sequence = (indent: number): unknown[] => {
    const items: unknown[] = [];
    while (pos < lines.length) {
      const line = lines[pos]!;
      if (line.indent !== indent || !isItem(line.text)) break;
      const rest = line.text.slice(1);
      const content = rest.replace(/^ +/, "");
      if (content === "" || content.startsWith("#")) {
        pos++;
        items.push(nested(indent, false));
        continue;
      }
      // The item's content is a node indented to where it starts.
      const inner = indent + 1 + rest.length - content.length;
      lines[pos] = { no: line.no, indent: inner, text: content };
      items.push(block(inner, true));
    }
    return items;
  };

  const mapping = (indent: number): Record<string, unknown> => {
    const map: Record<string, unknown> = {};
    while (pos < lines.length) {
      const line = lines[pos]!;
      if (line.indent !== indent || isItem(line.text)) break;
      const entry = splitKey(line);
      if (!entry) {
        inlineValue(line.text, line.no);
        refuse("A scalar where a key belongs", line.no);
      }
      if (Object.hasOwn(map, entry.key)) {
        refuse(`Duplicate key "${entry.key}"`, line.no);
      }
      pos++;
      const value = entry.rest === "" || entry.rest.startsWith("#")
        ? nested(indent, true)
        : inlineValue(entry.rest, line.no);
      // As npm:yaml does, so that "__proto__" is a key like any other.
      Object.defineProperty(map, entry.key, {
        value,
        writable: true,
        enumerable: true,
        configurable: true,
      });
    }
    return map;
  };

  try {
    lines = splitLines(text);
    if (lines.length === 0) return ok(null);
    const value = block(lines[0]!.indent, true);
    if (pos < lines.length) refuse("A line out of place", lines[pos]!.no);
    return ok(value);
  } catch (e) {
    if (e instanceof Refused) return fail(e.message);
    throw e;
  }
}
