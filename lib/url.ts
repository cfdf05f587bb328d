/**
 * URL schemes, judged as RFC 3986 says: case-insensitively. `HTTP://` is
 * plain http and `HTTPS://` is https; a check spelled
 * `url.startsWith("https:")` would treat the first as "not http" (and send
 * a token in clear) and the second as "not https" (and skip CA pinning).
 *
 * @module
 */

/** The scheme of `url` in lower case, without the colon; "" when none. */
export function urlScheme(url: string): string {
  const m = /^([a-z][a-z0-9+.-]*):/i.exec(url.trim());
  return m ? m[1]!.toLowerCase() : "";
}

/** `url` with its scheme in lower case (trimmed), everything else as is. */
export function lowerScheme(url: string): string {
  const text = url.trim();
  const scheme = urlScheme(text);
  return scheme === "" ? text : scheme + text.slice(scheme.length);
}
