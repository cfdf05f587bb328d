/**
 * How flanneld v0.28.9 turns an extension command string from
 * net-conf.json into a program and its arguments, without a shell: the
 * string is split on white space (Go's `strings.Fields`), then each word
 * has `$NAME` and `${NAME}` replaced (Go's `os.Expand`) from flanneld's
 * environment plus the variables of the event (`SUBNET`, `PUBLIC_IP`, ...).
 * Quotes, pipes and redirections mean nothing: an operator who wants a
 * shell names a script. Pure: lookups go through a function.
 *
 * @module
 */

/** White space as Go's `unicode.IsSpace` (not JS `\s`: no U+FEFF, plus U+0085). */
const GO_SPACE =
  /[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/;

/** Splits like Go's `strings.Fields`: no empty words. */
export function splitFields(s: string): string[] {
  return s.split(GO_SPACE).filter((w) => w !== "");
}

const SPECIAL = "*#$@!?-0123456789";
const isAlphaNum = (c: string) => /^[A-Za-z0-9_]$/.test(c);

/**
 * The variable name after a `$` (Go's `getShellName`) and how many
 * characters it takes; an empty name with a width is bad syntax, eaten.
 */
function shellName(s: string): [string, number] {
  if (s[0] === "{") {
    if (s.length > 2 && SPECIAL.includes(s[1]!) && s[2] === "}") {
      return [s[1]!, 3];
    }
    const close = s.indexOf("}", 1);
    if (close === 1) return ["", 2];
    if (close < 0) return ["", 1];
    return [s.slice(1, close), close + 1];
  }
  if (SPECIAL.includes(s[0]!)) return [s[0]!, 1];
  let i = 0;
  while (i < s.length && isAlphaNum(s[i]!)) i++;
  return [s.slice(0, i), i];
}

/**
 * Replaces `$NAME` and `${NAME}` in `s` as Go's `os.Expand` does: a `$`
 * before anything that is not a name stays, `${}` and an unclosed `${`
 * vanish, `$1`, `$$`, `$*` ... are one-character names.
 *
 * @example
 * ```ts
 * expand("${SUBNET}-x $PUBLIC_IP$", (n) => ({ SUBNET: "10.244.1.0/24", PUBLIC_IP: "1.2.3.4" })[n] ?? "");
 * // "10.244.1.0/24-x 1.2.3.4$"
 * ```
 */
export function expand(s: string, lookup: (name: string) => string): string {
  let out = "";
  let from = 0;
  for (let j = 0; j < s.length; j++) {
    if (s[j] !== "$" || j + 1 >= s.length) continue;
    out += s.slice(from, j);
    const [name, width] = shellName(s.slice(j + 1));
    if (name !== "") out += lookup(name);
    else if (width === 0) out += "$";
    j += width;
    from = j + 1;
  }
  return out + s.slice(from);
}

/** The variables a command string refers to, in order, without repeats. */
export function referencedNames(command: string): string[] {
  const names = new Set<string>();
  for (const w of splitFields(command)) {
    expand(w, (n) => {
      names.add(n);
      return "";
    });
  }
  return [...names];
}

/**
 * The program and arguments flanneld would run for `command`, with
 * `lookup` answering each variable; undefined when the command has no
 * word at all (flanneld panics on that; weft refuses it in net-conf).
 */
export function commandArgv(
  command: string,
  lookup: (name: string) => string,
): string[] | undefined {
  const argv = splitFields(command).map((w) => expand(w, lookup));
  return argv.length === 0 ? undefined : argv;
}
