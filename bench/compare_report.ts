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

/** Where leases live: `--kube-subnet-mgr` or `--etcd-endpoints`. */
export type Mode = "kube" | "etcd";

/** What one agent run measured. */
export interface AgentResult {
  readonly agent: Agent;
  readonly n: number;
  /** Process start to all N−1 peers programmed, ms. */
  readonly syncMs: number;
  /** Process start to its first connection to the API server, ms. */
  readonly firstConnMs: number;
  /** Process start to subnet.env written (the node can run pods), ms. */
  readonly readyMs: number;
  /** VmRSS when subnet.env appeared, bytes. */
  readonly rssReady: number;
  /** VmHWM (peak RSS) at the end of the run, bytes. */
  readonly rssPeak: number;
  /** CPU seconds of kube-apiserver + etcd from spawn to sync. */
  readonly serverCpuSec: number;
  /** Agent CPU over the idle window, % of one core (when measured). */
  readonly idleCpuPct?: number;
  /** Length of that window, s. */
  readonly idleSec?: number;
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
  /**
   * weft only: mean time from receiving an addition's watch event to its
   * kernel entries, ms, from the agent's own histogram
   * (`weft_event_to_kernel_seconds` on /metrics, diffed around the
   * additions): the agent's share of the convergence.
   */
  readonly agentSideMs?: number;
  /**
   * Kube mode: write → the same event at a watch the benchmark holds
   * straight on the API server (no relay, no agent), ms, per addition.
   */
  readonly deliveryMs?: readonly number[];
}

/** One N: both agents and the floors. */
export interface CompareRow {
  /** Absent in figures saved before etcd mode existed: kube. */
  readonly mode?: Mode;
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

/** `kube 100`: the row's mode and N. */
const label = (r: CompareRow) => `${r.mode ?? "kube"} ${r.n}`;

const ratio = (w: number, f: number) =>
  Number.isFinite(w / f) ? (w / f).toFixed(2) : "n/a";

/** The rows as markdown: one table of figures, one of targets. */
export function formatCompare(rows: CompareRow[]): string {
  const lines = [
    "| mode, N nodes | agent | ready (ms) | cold sync (ms) | ÷ ip -batch floor | start → API conn → 1st route (ms) | CPU to sync (s) | RSS ready / +2 s after sync / peak (MiB) | from API server (MiB) | apiserver+etcd CPU during sync (s) | convergence p50 / p99 (ms) | idle CPU |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    for (const a of [r.flanneld, r.weft]) {
      const to = a.convergenceTimeouts > 0
        ? ` (${a.convergenceTimeouts} timed out)`
        : "";
      const idle = a.idleCpuPct !== undefined
        ? `${a.idleCpuPct.toFixed(3)}% over ${a.idleSec} s`
        : "";
      lines.push(
        `| ${label(r)} | ${a.agent} | ${ms(a.readyMs)} | ${ms(a.syncMs)} | ${
          ratio(a.syncMs, r.floorMs)
        } | ${a.firstConnMs.toFixed(0)} → ${
          Number.isFinite(a.firstRouteMs) ? a.firstRouteMs.toFixed(0) : "-"
        } | ${a.cpuSec.toFixed(2)} | ${mib(a.rssReady)} / ${mib(a.rss)} / ${
          mib(a.rssPeak)
        } | ${mib(a.rxBytes)} | ${a.serverCpuSec.toFixed(2)} | ${
          ms(percentile(a.convergenceMs, 50))
        } / ${ms(percentile(a.convergenceMs, 99))}${to}${
          a.agentSideMs !== undefined
            ? ` (in the agent: ${a.agentSideMs.toFixed(2)} mean)`
            : ""
        }${
          a.deliveryMs && a.deliveryMs.length > 0
            ? `; API server delivery ${ms(percentile(a.deliveryMs, 50))}`
            : ""
        } | ${idle} |`,
      );
    }
    lines.push(
      `| ${label(r)} | *floor* | | ${
        Number.isFinite(r.floorMs) ? `${ms(r.floorMs)} (ip -batch)` : "-"
      }; LIST alone ${ms(r.listMs)} | 1.00 | | | | ${
        mib(r.listBytes)
      } (LIST JSON) | | | |`,
    );
    const w = r.weft, f = r.flanneld;
    lines.push(
      `| ${label(r)} | **weft ÷ flanneld** | ${
        ratio(w.readyMs, f.readyMs)
      } | **${ratio(w.syncMs, f.syncMs)}** | | | **${
        ratio(w.cpuSec, f.cpuSec)
      }** | ${ratio(w.rssReady, f.rssReady)} / **${ratio(w.rss, f.rss)}** / ${
        ratio(w.rssPeak, f.rssPeak)
      } | ${ratio(w.rxBytes, f.rxBytes)} | **${
        ratio(w.serverCpuSec, f.serverCpuSec)
      }** | ${
        ratio(
          percentile(w.convergenceMs, 50),
          percentile(f.convergenceMs, 50),
        )
      } / **${
        ratio(
          percentile(w.convergenceMs, 99),
          percentile(f.convergenceMs, 99),
        )
      }** | ${
        w.idleCpuPct !== undefined && f.idleCpuPct !== undefined
          ? ratio(w.idleCpuPct, f.idleCpuPct)
          : ""
      } |`,
    );
  }
  lines.push("", "| mode, N | target | weft | flanneld / floor | verdict |");
  lines.push("|---:|---|---:|---:|---|");
  for (const r of rows) {
    const w = r.weft, f = r.flanneld;
    const wp99 = percentile(w.convergenceMs, 99);
    const fp99 = percentile(f.convergenceMs, 99);
    const rssCap = r.n >= 5000 ? 0.5 : r.n <= 100 ? 1.0 : undefined;
    if (rssCap !== undefined) {
      lines.push(
        `| ${label(r)} | RSS after sync ≤ ${rssCap.toFixed(1)}x flanneld | ${
          mib(w.rss)
        } MiB | ${mib(f.rss)} MiB (x${ratio(w.rss, f.rss)}) | ${
          verdict(w.rss <= rssCap * f.rss)
        } |`,
      );
    }
    lines.push(
      `| ${label(r)} | CPU to sync ≤ flanneld | ${w.cpuSec.toFixed(2)} s | ${
        f.cpuSec.toFixed(2)
      } s (x${ratio(w.cpuSec, f.cpuSec)}) | ${verdict(w.cpuSec <= f.cpuSec)} |`,
      `| ${label(r)} | cold sync ≤ 0.5x flanneld | ${ms(w.syncMs)} ms | ${
        ms(f.syncMs)
      } ms (x${ratio(w.syncMs, f.syncMs)}) | ${
        verdict(w.syncMs <= 0.5 * f.syncMs)
      } |`,
    );
    if (r.n >= 5000) {
      lines.push(
        `| ${label(r)} | cold sync ≤ 2x ip -batch floor | ${
          ms(w.syncMs)
        } ms | ${ms(r.floorMs)} ms (x${ratio(w.syncMs, r.floorMs)}) | ${
          verdict(w.syncMs <= 2 * r.floorMs)
        } |`,
      );
    }
    if (w.convergenceMs.length > 0) {
      lines.push(
        `| ${label(r)} | convergence p99 ≤ flanneld | ${ms(wp99)} ms | ${
          ms(fp99)
        } ms | ${verdict(wp99 <= fp99 && w.convergenceTimeouts === 0)} |`,
      );
    }
    lines.push(
      `| ${label(r)} | apiserver+etcd CPU per cold sync ≤ flanneld's | ${
        w.serverCpuSec.toFixed(2)
      } s | ${f.serverCpuSec.toFixed(2)} s | ${
        verdict(w.serverCpuSec <= f.serverCpuSec)
      } |`,
    );
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
  const pw = 520, ph = 240, top = 84, left = 50, gap = 40;
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
            esc(`${s.label}, ${label(r)}: ${fmtTick(v)} ${p.unit}`)
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
        }" text-anchor="middle" font-size="9">${label(r)}</text>`,
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

- The machine is shared: other work (builds, test clusters) runs beside
  this benchmark, which holds the shared lock for heavy work while it runs;
  expect run-to-run spread.
- One kube-apiserver (etcd >= 3.5, watch cache on) holds N−1 realistic peer
  Nodes (labels, kubelet annotations, capacity, conditions, addresses, node
  info, 30 images with long names: about 13 kB of JSON each) annotated as
  flannel vxlan nodes, plus the agent's own Node \`bench-self\`
  (\`10.0.1.0/24\`, recreated before every run); N=0 means that Node
  alone. Network \`10.0.0.0/8\`, SubnetLen 24.
- Each agent runs alone, flanneld and weft one after the other (who goes
  first alternates with N), in a fresh namespace with \`eth0\` on a bridge
  (\`198.18.0.1/15\`, default route), same flags: \`--kube-subnet-mgr
  --kubeconfig-file --net-config-path --subnet-file --iface=eth0
  --ip-masq=false\`, \`NODE_NAME=bench-self\`. weft is \`deno run\` with the
  agent's own permission set and the V8 flags of \`deno task start\` (the
  same ones \`deno task compile\` bakes into the binary). The kubeconfig
  is JSON (valid YAML; a YAML one makes weft load its YAML parser, +15 MiB).
- Ready: process spawn → \`subnet.env\` written (inotify), which both
  agents do once the lease and the device are set up; RSS is sampled then.
- Cold sync: process spawn → the last of the N−1 routes on \`flannel.1\`
  (timestamps from \`ip monitor route\` in the namespace), confirmed by
  dumping neighbours and FDB entries; with no peer it is the ready moment.
  CPU: utime+stime of the agent at that moment. RSS: VmRSS of the agent
  process (for weft the deno process) 2 s after the sync; peak: VmHWM at
  the end of the run.
- apiserver+etcd CPU: utime+stime of kube-apiserver and its etcd from the
  agent's spawn to its sync: the cost one agent's cold start puts on the
  control plane (includes their background work over the same interval).
- Bytes from the API server: the kubeconfig points at 127.0.0.1:6443 in
  the agent's namespace, a TCP relay of the benchmark process (socket made
  in the namespace with setns, TCP_NODELAY on both sides) that forwards to
  the apiserver and counts bytes; TLS passes through, so this is what
  crossed the wire (both agents get gzip-compressed LISTs).
- Convergence: a new Node (etcd: lease key) is written, then the time
  until its route shows up in \`ip monitor route\`; one at a time, 60
  additions. "API server delivery": write → the same event at a watch
  the benchmark holds straight on the API server (no relay, no agent),
  p50. "In the agent": weft's own histogram of watch event received
  → kernel entries programmed (\`weft_event_to_kernel_seconds\` on
  /metrics), its mean over the additions. Both agents run their health
  server (\`--healthz-port=18400\`, in its own namespace).
- Idle CPU: the agent's utime+stime over a window after the additions, at
  N=1000, as % of one core (window length in the table).
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

/**
 * The README's side-by-side section, generated from the figures: a table
 * and only the claims these rows support.
 */
export function readmeSection(rows: CompareRow[], machineLine: string): string {
  const p50 = (a: AgentResult) => percentile(a.convergenceMs, 50);
  const p99 = (a: AgentResult) => percentile(a.convergenceMs, 99);
  const out = [
    machineLine,
    "",
    "**weft vs flanneld** (`bench/compare.ts`, `bench/results/compare.md`,",
    "chart `compare.svg`). In kube mode one kube-apiserver holds N realistic",
    "Nodes (~13 kB each) annotated as flannel vxlan nodes; in etcd mode one",
    "etcd holds N flannel leases. flanneld and weft run one after the other",
    "against it, each alone in a fresh namespace with the same flags. Ready is",
    "`subnet.env` written; cold sync is process start until every peer's",
    "route, neighbour and FDB entry is in the kernel; control-plane CPU is",
    "kube-apiserver + etcd (etcd mode: etcd) CPU during that cold sync, in",
    "10 ms ticks. Convergence is a write until the peer's route exists; in",
    "kube mode ~46 ms of it is the API server's delivery to any watcher (see",
    "`bench/results/compare.md`).",
    "",
    "| mode, N | agent | ready | cold sync | CPU to sync | RSS after sync | peak RSS | control-plane CPU | convergence p50 / p99 |",
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const r of rows) {
    for (const a of [r.flanneld, r.weft]) {
      out.push(
        `| ${label(r)} | ${a.agent} | ${ms(a.readyMs)} ms | ${
          ms(a.syncMs)
        } ms | ${a.cpuSec.toFixed(2)} s | ${mib(a.rss)} MiB | ${
          mib(a.rssPeak)
        } MiB | ${a.serverCpuSec.toFixed(2)} s | ${ms(p50(a))} / ${
          ms(p99(a))
        } ms |`,
      );
    }
  }
  const list = (pred: (r: CompareRow) => boolean) =>
    rows.filter(pred).map(label).join(", ") || "none";
  const claim = (
    what: string,
    pred: (r: CompareRow) => boolean,
    detail: (r: CompareRow) => string,
  ) =>
    `- **${what}:** ${list(pred)}; weft ÷ flanneld: ${
      rows.map((r) => `${label(r)}: ${detail(r)}`).join(", ")
    }.`;
  out.push(
    "",
    claim(
      "Less memory after sync",
      (r) => r.weft.rss < r.flanneld.rss,
      (r) => ratio(r.weft.rss, r.flanneld.rss),
    ),
    claim(
      "Less CPU to sync",
      (r) => r.weft.cpuSec < r.flanneld.cpuSec,
      (r) => ratio(r.weft.cpuSec, r.flanneld.cpuSec),
    ),
    claim(
      "Faster cold sync",
      (r) => r.weft.syncMs < r.flanneld.syncMs,
      (r) => ratio(r.weft.syncMs, r.flanneld.syncMs),
    ),
    claim(
      "Less control-plane CPU per cold start",
      (r) => r.weft.serverCpuSec < r.flanneld.serverCpuSec,
      (r) => ratio(r.weft.serverCpuSec, r.flanneld.serverCpuSec),
    ),
    claim(
      "Convergence p99 at or below flanneld's",
      (r) => r.weft.convergenceMs.length > 0 && p99(r.weft) <= p99(r.flanneld),
      (r) => ratio(p99(r.weft), p99(r.flanneld)),
    ),
  );
  for (const idle of rows.filter((r) => r.weft.idleCpuPct !== undefined)) {
    if (idle.flanneld.idleCpuPct === undefined) continue;
    out.push(
      `- **Idle CPU** at ${label(idle)} over ${idle.weft.idleSec} s: weft ${
        idle.weft.idleCpuPct!.toFixed(3)
      }% of a core, flanneld ${idle.flanneld.idleCpuPct.toFixed(3)}%.`,
    );
  }
  const top = Math.max(...rows.map((r) => r.n));
  for (const big of rows.filter((r) => r.n === top)) {
    if (!Number.isFinite(big.floorMs)) continue;
    out.push(
      `- **Against the \`ip -batch\` floor** at ${
        label(big)
      }: the floor only programs the kernel (${
        ms(big.floorMs)
      } ms) and fetches nothing; weft's cold sync is ${
        ratio(big.weft.syncMs, big.floorMs)
      }× it, flanneld's ${ratio(big.flanneld.syncMs, big.floorMs)}×.`,
    );
  }
  return out.join("\n");
}

/** Replaces the README's generated side-by-side section. */
export async function writeReadme(rows: CompareRow[], machineLine: string) {
  const path = `${ROOT}README.md`;
  const text = await Deno.readTextFile(path);
  const begin = "<!-- compare:begin -->", end = "<!-- compare:end -->";
  const a = text.indexOf(begin), b = text.indexOf(end);
  if (a < 0 || b < a) throw new Error(`README.md has no ${begin} section`);
  await Deno.writeTextFile(
    path,
    `${text.slice(0, a + begin.length)}\n\n${
      readmeSection(rows, machineLine)
    }\n\n${text.slice(b)}`,
  );
  // Tables aligned and lines wrapped as `deno task check` wants them.
  await run([Deno.execPath(), "fmt", path]);
}

async function flanneldVersion(): Promise<string> {
  const bin = await serverBinary("flanneld");
  if (!bin) return "(missing)";
  const out = await run([bin, "--version"]);
  return (out.stdout + out.stderr).trim() || "(unknown)";
}
