/**
 * Logging in klog's format, the one flanneld prints, so that existing greps
 * and log pipelines keep working:
 * `I1122 10:04:05.123456    4242 vxlan] message`. Severity letters are
 * I, W, E; `-v` levels gate detail (1: device decisions, 2: routes,
 * 4: every neighbour and FDB call).
 *
 * @module
 */

let verbosity = 0;
let sink: (line: string) => void = (line) => console.error(line);

/** Sets the `-v` level. */
export function setVerbosity(level: number): void {
  verbosity = level;
}

/** Current `-v` level. */
export function getVerbosity(): number {
  return verbosity;
}

/** Redirects log lines (tests). Returns the previous sink. */
export function setLogSink(
  next: (line: string) => void,
): (line: string) => void {
  const prev = sink;
  sink = next;
  return prev;
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, "0");
}

function emit(severity: "I" | "W" | "E", component: string, msg: string) {
  const d = new Date();
  const micros = pad(d.getMilliseconds() * 1000, 6);
  const stamp = `${pad(d.getMonth() + 1, 2)}${pad(d.getDate(), 2)} ${
    pad(d.getHours(), 2)
  }:${pad(d.getMinutes(), 2)}:${pad(d.getSeconds(), 2)}.${micros}`;
  sink(
    `${severity}${stamp} ${String(Deno.pid).padStart(7)} ${component}] ${msg}`,
  );
}

/** How many characters of a foreign string {@linkcode quote} keeps. */
export const QUOTE_MAX_CHARS = 100;

const encoder = new TextEncoder();

/**
 * A string from outside (a peer's key, annotation or value, a server's
 * answer) made safe for one log line: in double quotes, with quotes,
 * backslashes and every control or line-breaking character escaped (so a
 * newline cannot forge a line), cut to `max` characters, and when cut, its
 * full length in UTF-8 bytes stated: `"abc…" (204800 bytes)`. A
 * non-string is shown as its JSON, escaped and cut the same way, without
 * the quotes.
 *
 * @example
 * ```ts
 * quote("a\nb"); // "a\nb" (the backslash-n as two characters)
 * ```
 */
export function quote(value: unknown, max = QUOTE_MAX_CHARS): string {
  const isString = typeof value === "string";
  let text: string;
  if (isString) text = value;
  else {
    try {
      text = JSON.stringify(value) ?? String(value);
    } catch {
      text = String(value);
    }
  }
  let out = "";
  let chars = 0;
  let cut = false;
  for (const ch of text) {
    if (chars === max) {
      cut = true;
      break;
    }
    // JSON has escaped quotes and backslashes already.
    out += !isString && (ch === '"' || ch === "\\") ? ch : escapeChar(ch);
    chars++;
  }
  const shown = typeof value === "string"
    ? `"${out}${cut ? "…" : ""}"`
    : `${out}${cut ? "…" : ""}`;
  return cut ? `${shown} (${encoder.encode(text).length} bytes)` : shown;
}

function escapeChar(ch: string): string {
  switch (ch) {
    case '"':
      return '\\"';
    case "\\":
      return "\\\\";
    case "\n":
      return "\\n";
    case "\r":
      return "\\r";
    case "\t":
      return "\\t";
  }
  const c = ch.codePointAt(0)!;
  // C0, DEL, C1, the Unicode line and paragraph separators, and the
  // bidirectional overrides and isolates that reorder what a reader sees.
  if (
    c < 0x20 || (c >= 0x7f && c < 0xa0) || c === 0x2028 || c === 0x2029 ||
    (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069) ||
    c === 0xfeff || (c >= 0xd800 && c <= 0xdfff)
  ) {
    return `\\u${c.toString(16).padStart(4, "0")}`;
  }
  return ch;
}

/** A logger bound to a component name (`vxlan`, `kube`, `etcd`, `main`). */
export interface Logger {
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
  /** Logs at info severity when `-v` is at least `level`. */
  v(level: number, msg: string): void;
  /** Whether `v(level, ...)` would print; guards costly messages. */
  enabled(level: number): boolean;
}

/** Returns a logger for a component. */
export function logger(component: string): Logger {
  return {
    info: (msg) => emit("I", component, msg),
    warn: (msg) => emit("W", component, msg),
    error: (msg) => emit("E", component, msg),
    v: (level, msg) => {
      if (verbosity >= level) emit("I", component, msg);
    },
    enabled: (level) => verbosity >= level,
  };
}
