/**
 * Reads weft's `/metrics` text (Prometheus exposition) in tests: one
 * parser for every tier, whichever way the text was fetched.
 *
 * @module
 */

/**
 * The samples of metric `name`, keyed by the value of its `label` (the
 * empty string for a sample without labels):
 * `samples(text, "weft_peers_refused_total", "reason").get("overlap")`.
 */
export function samples(
  text: string,
  name: string,
  label?: string,
): Map<string, number> {
  const out = new Map<string, number>();
  const esc = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const re = new RegExp(`^${esc}(?:\\{([^}]*)\\})? (\\S+)$`, "gm");
  for (const m of text.matchAll(re)) {
    const labels = m[1] ?? "";
    const key = label === undefined
      ? labels
      : /(?:^|,)([a-z_]+)="([^"]*)"/g[Symbol.matchAll](labels)
        .find((l) => l[1] === label)?.[2];
    if (key !== undefined) out.set(key, Number(m[2]));
  }
  return out;
}
