/**
 * The results of the weft-vs-flanneld benchmark (`compare.ts`): their
 * shape, the markdown tables and the SVG chart, and the files under
 * bench/results/. Pure apart from `writeCompareResults`; `compare.ts
 * --from=compare.json` re-renders saved figures through it.
 *
 * @module
 */
import { run } from "../tests/_netns.ts";
import { serverBinary } from "../tests/servers/paths.ts";
import { machine, percentile } from "./_stats.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** The agents compared. */
export type Agent = "flanneld" | "weft";

/** What one agent run measured. */
export interface AgentResult {
  readonly agent: Agent;
  readonly n: number;
  /** Process start to all N−1 peers programmed, ms. */
  readonly syncMs: number;
  /** Process start to its first connection to the API server, ms. */
  readonly firstConnMs: number;
  /** Process start to the first peer route in the kernel, ms. */
  readonly firstRouteMs: number;
  /** utime + stime of the agent at sync, seconds. */
  readonly cpuSec: number;
  /** VmRSS 2 s after the sync, bytes. */
  readonly rss: number;
  /** VmRSS after the additions (some 5-15 s after the sync), bytes. */
  readonly rssEnd: number;
  /** Bytes from the API server to the agent up to the sync. */
  readonly rxBytes: number;
  /** Bytes from the agent to the API server up to the sync. */
  readonly txBytes: number;
  /** New Node POSTed → its route in the kernel, ms, one per addition. */
  readonly convergenceMs: readonly number[];
  /** Additions whose route did not appear in time. */
  readonly convergenceTimeouts: number;
}

/** One N: both agents and the floors. */
export interface CompareRow {
  readonly n: number;
  /** `ip -batch` + `bridge -batch` for N−1 peers, ms. */
  readonly floorMs: number;
  /** Paginated LIST of all nodes by this process, ms. */
  readonly listMs: number;
  /** Size of that LIST, bytes of JSON. */
  readonly listBytes: number;
  readonly flanneld: AgentResult;
  readonly weft: AgentResult;
}

const mib = (b: number) => (b / 2 ** 20).toFixed(1);
const ms = (x: number) => x >= 100 ? x.toFixed(0) : x.toFixed(1);
const verdict = (ok: boolean) => ok ? "met" : "**missed**";

/** The rows as markdown: one table of figures, one of targets. */
export function formatCompare(rows: CompareRow[]): string {
  const lines = [
    "| N nodes | agent | cold sync (ms) | ÷ ip -batch floor | start → API conn → 1st route (ms) | CPU to sync (s) | RSS +2 s / at end (MiB) | from API server (MiB) | convergence p50 (ms) | convergence p99 (ms) |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    for (const a of [r.flanneld, r.weft]) {
      const to = a.convergenceTimeouts > 0
        ? ` (${a.convergenceTimeouts} timed out)`
        : "";
      lines.push(
        `| ${r.n} | ${a.agent} | ${ms(a.syncMs)} | ${
          (a.syncMs / r.floorMs).toFixed(2)
        } | ${a.firstConnMs.toFixed(0)} → ${a.firstRouteMs.toFixed(0)} | ${
          a.cpuSec.toFixed(2)
        } | ${mib(a.rss)} / ${mib(a.rssEnd)} | ${mib(a.rxBytes)} | ${
          ms(percentile(a.convergenceMs, 50))
        } | ${ms(percentile(a.convergenceMs, 99))}${to} |`,
      );
    }
    lines.push(
      `| ${r.n} | *floor* | ${ms(r.floorMs)} (ip -batch); LIST alone ${
        ms(r.listMs)
      } | 1.00 | | | ${mib(r.listBytes)} (LIST JSON) | | |`,
    );
    lines.push(
      `| ${r.n} | **weft ÷ flanneld** | **${
        (r.weft.syncMs / r.flanneld.syncMs).toFixed(2)
      }** | | | ${(r.weft.cpuSec / r.flanneld.cpuSec).toFixed(2)} | **${
        (r.weft.rss / r.flanneld.rss).toFixed(2)
      }** / ${(r.weft.rssEnd / r.flanneld.rssEnd).toFixed(2)} | ${
        (r.weft.rxBytes / r.flanneld.rxBytes).toFixed(2)
      } | ${
        (percentile(r.weft.convergenceMs, 50) /
          percentile(r.flanneld.convergenceMs, 50)).toFixed(2)
      } | **${
        (percentile(r.weft.convergenceMs, 99) /
          percentile(r.flanneld.convergenceMs, 99)).toFixed(2)
      }** |`,
    );
  }
  lines.push("", "| N | target | weft | flanneld / floor | verdict |");
  lines.push("|---:|---|---:|---:|---|");
  for (const r of rows) {
    const w = r.weft, f = r.flanneld;
    const wp99 = percentile(w.convergenceMs, 99);
    const fp99 = percentile(f.convergenceMs, 99);
    lines.push(
      `| ${r.n} | cold sync ≤ flanneld | ${ms(w.syncMs)} ms | ${
        ms(f.syncMs)
      } ms | ${verdict(w.syncMs <= f.syncMs)} |`,
      `| ${r.n} | cold sync ≤ 1.5x ip -batch floor | ${ms(w.syncMs)} ms | ${
        ms(r.floorMs)
      } ms (x${(w.syncMs / r.floorMs).toFixed(2)}) | ${
        verdict(w.syncMs <= 1.5 * r.floorMs)
      } |`,
      `| ${r.n} | convergence p99 ≤ flanneld | ${ms(wp99)} ms | ${
        ms(fp99)
      } ms | ${verdict(wp99 <= fp99 && w.convergenceTimeouts === 0)} |`,
    );
    if (r.n >= 5000) {
      lines.push(
        `| ${r.n} | RSS ≤ 0.7x flanneld | ${mib(w.rss)} MiB | ${
          mib(f.rss)
        } MiB (x${(w.rss / f.rss).toFixed(2)}) | ${
          verdict(w.rss <= 0.7 * f.rss)
        } |`,
      );
    }
  }
  return lines.join("\n");
}

/** A bar chart of cold sync, convergence p99 and RSS, as SVG text. */
export function compareSvg(rows: CompareRow[], title: string): string {
  const panels: {
    name: string;
    unit: string;
    series: {
      label: string;
      color: string;
      value: (r: CompareRow) => number;
    }[];
  }[] = [
    {
      name: "Cold sync",
      unit: "s",
      series: [
        {
          label: "flanneld",
          color: "#9aa0a6",
          value: (r) => r.flanneld.syncMs / 1000,
        },
        { label: "weft", color: "#1a73e8", value: (r) => r.weft.syncMs / 1000 },
        {
          label: "ip -batch floor",
          color: "#fbbc04",
          value: (r) => r.floorMs / 1000,
        },
      ],
    },
    {
      name: "Convergence p99",
      unit: "ms",
      series: [
        {
          label: "flanneld",
          color: "#9aa0a6",
          value: (r) => percentile(r.flanneld.convergenceMs, 99),
        },
        {
          label: "weft",
          color: "#1a73e8",
          value: (r) => percentile(r.weft.convergenceMs, 99),
        },
      ],
    },
    {
      name: "RSS after sync",
      unit: "MiB",
      series: [
        {
          label: "flanneld",
          color: "#9aa0a6",
          value: (r) => r.flanneld.rss / 2 ** 20,
        },
        { label: "weft", color: "#1a73e8", value: (r) => r.weft.rss / 2 ** 20 },
      ],
    },
  ];
  const pw = 300, ph = 240, top = 84, left = 50, gap = 40;
  const width = left + panels.length * (pw + gap);
  const height = top + ph + 70;
  const esc = (s: string) =>
    s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${left}" y="20" font-size="14" font-weight="bold">${
      esc(title)
    }</text>`,
  ];
  // Legend.
  const legend = panels[0]!.series;
  legend.forEach((s, i) => {
    const x = left + i * 130;
    out.push(
      `<rect x="${x}" y="34" width="12" height="12" fill="${s.color}"/>`,
      `<text x="${x + 16}" y="44">${esc(s.label)}</text>`,
    );
  });
  panels.forEach((p, pi) => {
    const x0 = left + pi * (pw + gap);
    const max = Math.max(
      ...rows.flatMap((r) => p.series.map((s) => s.value(r))).filter((v) =>
        Number.isFinite(v)
      ),
      1e-9,
    );
    const scale = niceCeil(max);
    out.push(
      `<text x="${x0 + pw / 2}" y="${
        top - 6
      }" text-anchor="middle" font-weight="bold">${
        esc(`${p.name} (${p.unit})`)
      }</text>`,
      `<line x1="${x0}" y1="${top + ph}" x2="${x0 + pw}" y2="${
        top + ph
      }" stroke="#333"/>`,
      `<line x1="${x0}" y1="${top}" x2="${x0}" y2="${
        top + ph
      }" stroke="#333"/>`,
    );
    for (let t = 0; t <= 4; t++) {
      const v = (scale * t) / 4;
      const y = top + ph - (ph * t) / 4;
      out.push(
        `<line x1="${x0}" y1="${y}" x2="${x0 + pw}" y2="${y}" stroke="#eee"/>`,
        `<text x="${x0 - 4}" y="${y + 4}" text-anchor="end">${
          fmtTick(v)
        }</text>`,
      );
    }
    const groupW = pw / rows.length;
    const barW = Math.min(28, (groupW - 16) / p.series.length);
    rows.forEach((r, ri) => {
      const gx = x0 + ri * groupW + (groupW - barW * p.series.length) / 2;
      p.series.forEach((s, si) => {
        const v = s.value(r);
        const h = Number.isFinite(v) ? (ph * v) / scale : 0;
        const bx = gx + si * barW;
        out.push(
          `<rect x="${bx.toFixed(1)}" y="${(top + ph - h).toFixed(1)}" width="${
            (barW - 2).toFixed(1)
          }" height="${h.toFixed(1)}" fill="${s.color}"><title>${
            esc(`${s.label}, N=${r.n}: ${fmtTick(v)} ${p.unit}`)
          }</title></rect>`,
          `<text x="${(bx + (barW - 2) / 2).toFixed(1)}" y="${
            (top + ph - h - 3).toFixed(1)
          }" text-anchor="middle" font-size="9" fill="#333">${
            fmtTick(v)
          }</text>`,
        );
      });
      out.push(
        `<text x="${(x0 + ri * groupW + groupW / 2).toFixed(1)}" y="${
          top + ph + 16
        }" text-anchor="middle">N=${r.n}</text>`,
      );
    });
  });
  out.push(
    `<text x="${left}" y="${height - 12}" fill="#555">${
      esc(
        "Lower is better. Same kube-apiserver, same flags, fresh namespace per run.",
      )
    }</text>`,
    "</svg>",
  );
  return out.join("\n") + "\n";
}

function niceCeil(x: number): number {
  const e = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10]) {
    if (m * e >= x) return m * e;
  }
  return 10 * e;
}

function fmtTick(v: number): string {
  if (!Number.isFinite(v)) return "n/a";
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

const METHOD = `## How it is measured

- One kube-apiserver (etcd >= 3.5, watch cache on) holds N−1 realistic peer
  Nodes (labels, kubelet annotations, capacity, conditions, addresses, node
  info, 30 images with long names: about 13 kB of JSON each) annotated as
  flannel vxlan nodes, plus the agent's own Node \`bench-self\`
  (\`10.0.1.0/24\`, recreated before every run). Network \`10.0.0.0/8\`,
  SubnetLen 24.
- Each agent runs alone, flanneld and weft one after the other (who goes
  first alternates with N), in a fresh namespace with \`eth0\` on a bridge
  (\`198.18.0.1/15\`, default route), same flags: \`--kube-subnet-mgr
  --kubeconfig-file --net-config-path --subnet-file --iface=eth0
  --ip-masq=false\`, \`NODE_NAME=bench-self\`. weft is \`deno run\` with the
  agent's own permission set.
- Cold sync: process spawn → the last of the N−1 routes on \`flannel.1\`
  (timestamps from \`ip monitor route\` in the namespace), confirmed by
  dumping neighbours and FDB entries. CPU: utime+stime of the agent at
  that moment. RSS: VmRSS of the agent process (for weft the deno
  process) 2 s after the sync, and again after the additions.
- Bytes from the API server: the kubeconfig points at 127.0.0.1:6443 in
  the agent's namespace, a TCP relay of the benchmark process (socket made
  in the namespace with setns) that forwards to the apiserver and counts
  bytes; TLS passes through, so this is what crossed the wire (both agents
  get gzip-compressed LISTs).
- Convergence: a new Node is POSTed, then the time until its route shows
  up in \`ip monitor route\`; one at a time.
- Floor: \`ip -batch\` + \`bridge -batch\` programming the same N−1 peers in a
  fresh namespace (kernel programming only; it fetches nothing). "LIST
  alone" is a paginated LIST (limit=500) of all nodes by the benchmark
  process, for scale.
`;

/**
 * Writes compare.md, compare.svg and the raw figures (compare.json) under
 * `dir` and returns the markdown.
 */
export async function writeCompareResults(
  rows: CompareRow[],
  dir = `${ROOT}bench/results`,
): Promise<string> {
  const m = await machine();
  const md = `# weft vs flanneld (${
    new Date().toISOString().slice(0, 10)
  })\n\nMachine: ${m}. flanneld ${await flanneldVersion()}.\n\n${
    formatCompare(rows)
  }\n\n![chart](compare.svg)\n\n${METHOD}`;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/compare.md`, md);
  await Deno.writeTextFile(
    `${dir}/compare.json`,
    JSON.stringify({ machine: m, rows }, null, 1) + "\n",
  );
  await Deno.writeTextFile(
    `${dir}/compare.svg`,
    compareSvg(rows, `weft vs flanneld: ${m}`),
  );
  return md;
}

async function flanneldVersion(): Promise<string> {
  const bin = await serverBinary("flanneld");
  if (!bin) return "(missing)";
  const out = await run([bin, "--version"]);
  return (out.stdout + out.stderr).trim() || "(unknown)";
}
