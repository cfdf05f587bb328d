/**
 * The fault suite's table: one row per fault or bad input (what was
 * injected, what weft must do, packets lost by the background ping, time
 * to recover, result), printed to the console and written as Markdown to
 * bench/results/faults.md. A row is `pass` or `FAIL: <why>`; a suite
 * whose servers are missing does not run at all (`tests/_gate.ts`), so
 * nothing that did not run is ever shown.
 *
 * @module
 */

/** Outcome of one row. */
export type Outcome =
  | { readonly kind: "pass"; readonly note?: string }
  | { readonly kind: "fail"; readonly why: string };

/** One line of the table. */
export interface FaultRow {
  /** Section heading: `etcd mode`, `peer corpus`... */
  readonly section: string;
  readonly fault: string;
  readonly expected: string;
  /** Packets lost by the background ping, or "—" when it did not apply. */
  readonly lost: string;
  /** Time to recover or repair, or "—". */
  readonly recovery: string;
  readonly outcome: Outcome;
}

/** The text of an outcome in the table. */
export function outcomeText(o: Outcome): string {
  switch (o.kind) {
    case "pass":
      return o.note ? `pass (${o.note})` : "pass";
    case "fail":
      return `FAIL: ${o.why}`;
  }
}

/** Milliseconds as `1.23 s` or `45 ms`. */
export function fmtMs(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms)) return "—";
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

function cell(s: string): string {
  return s.replaceAll("|", "\\|").replaceAll("\n", " ");
}

/** The rows as Markdown tables, one per section. */
export function toMarkdown(rows: readonly FaultRow[]): string {
  const out: string[] = [];
  const sections = [...new Set(rows.map((r) => r.section))];
  for (const s of sections) {
    out.push(`### ${s}`, "");
    out.push(
      "| fault | expected | packets lost | time to recover | result |",
      "|---|---|---|---|---|",
    );
    for (const r of rows.filter((r) => r.section === s)) {
      out.push(
        `| ${
          [r.fault, r.expected, r.lost, r.recovery, outcomeText(r.outcome)]
            .map(cell).join(" | ")
        } |`,
      );
    }
    out.push("");
  }
  return out.join("\n");
}

/** Counts of pass / fail. */
export function tally(
  rows: readonly FaultRow[],
): { pass: number; fail: number } {
  return {
    pass: rows.filter((r) => r.outcome.kind === "pass").length,
    fail: rows.filter((r) => r.outcome.kind === "fail").length,
  };
}

/** The rows as a plain-text table for the console. */
export function toConsole(rows: readonly FaultRow[]): string {
  const cols = (r: FaultRow) => [
    r.section,
    r.fault,
    r.lost,
    r.recovery,
    outcomeText(r.outcome),
  ];
  const head = ["section", "fault", "lost", "recovery", "result"];
  const all = [head, ...rows.map(cols)];
  const width = head.map((_, i) =>
    Math.min(i === 4 ? 200 : 60, Math.max(...all.map((c) => c[i]!.length)))
  );
  return all.map((c) =>
    c.map((x, i) =>
      (x.length > width[i]! ? x.slice(0, width[i]! - 1) + "…" : x).padEnd(
        width[i]!,
      )
    ).join("  ").trimEnd()
  ).join("\n");
}
