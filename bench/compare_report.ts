/**
 * The results of the weft-vs-flanneld benchmark (`compare.ts`): their
 * shape, the statistics, the markdown tables and the SVG chart, and the
 * files under bench/results/. Pure apart from `writeCompareResults` and
 * `writeReadme`; `compare.ts --from=compare.json` re-renders saved figures
 * through it.
 *
 * Every cell is run several times, the agents alternating; a figure is
 * the median with the range of the runs, and a difference is called only
 * when the two ranges do not overlap.
 *
 * @module
 */
import { run } from "../tests/_netns.ts";
import { serverBinary } from "../tests/servers/paths.ts";
import { machine, median, percentile } from "./_stats.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** The two agents; a variant of weft is named `weft: <lever>`. */
export type Agent = "flanneld" | "weft";

/** Where leases live: `--kube-subnet-mgr` or `--etcd-endpoints`. */
export type Mode = "kube" | "etcd";

/** What one agent run measured. */
export interface AgentResult {
  /** The variant's name: `flanneld`, `weft`, `weft: <lever>`. */
  readonly agent: string;
  readonly n: number;
  /** Which repetition of the cell, from 0. */
  readonly rep: number;
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
  /**
   * CPU seconds of the control plane (kube-apiserver + its etcd; etcd
   * mode: etcd) over a fixed window from the agent's spawn, the same
   * length for every agent at this N.
   */
  readonly serverCpuSec: number;
  /** That window, s. */
  readonly serverWindowSec: number;
  /** Process start to the first peer route in the kernel, ms. */
  readonly firstRouteMs: number;
  /** utime + stime of the agent at sync, seconds (10 ms ticks). */
  readonly cpuSec: number;
  /** VmRSS 2 s after the sync, bytes. */
  readonly rss: number;
  /** Its private part (RssAnon) and the file-backed and shared part. */
  readonly rssAnon: number;
  readonly rssFile: number;
  /** weft only: V8 heap in use then (its /metrics), bytes. */
  readonly heapUsed?: number;
  /** Bytes from the API server to the agent up to the sync. */
  readonly rxBytes: number;
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

/** One mode and N: every variant's runs and the floors. */
export interface CompareRow {
  readonly mode: Mode;
  readonly n: number;
  /** `ip -batch` + `bridge -batch` for N−1 peers, ms. */
  readonly floorMs: number;
  /** Paginated LIST of all nodes by this process, ms. */
  readonly listMs: number;
  /** Size of that LIST, bytes of JSON. */
  readonly listBytes: number;
  /**
   * Control-plane CPU seconds over the same window with no agent running,
   * one per repetition: the background every agent's figure includes.
   */
  readonly bgServerCpuSec: readonly number[];
  /** A bare `deno run` of an empty module, one per repetition. */
  readonly denoFloor: readonly {
    cpuSec: number;
    rss: number;
    anon: number;
    file: number;
  }[];
  /** Variant name → its runs, in repetition order. */
  readonly runs: Readonly<Record<string, readonly AgentResult[]>>;
}

/** An agent's run at one size, collapsed to medians (the chart's input). */
export interface MedianRow {
  readonly mode: Mode;
  readonly n: number;
  readonly floorMs: number;
  readonly flanneld: AgentResult;
  readonly weft: AgentResult;
}

/** One line `bench/_malloc_probe.ts` writes. */
export interface MallocSample {
  readonly t: number;
  /** Bytes malloc holds from the system in its arenas (brk and mmapped). */
  readonly arena: number;
  /** Bytes of blocks mmapped on their own. */
  readonly hblkhd: number;
  /** Bytes in use. */
  readonly inUse: number;
  readonly v8HeapTotal: number;
  readonly v8HeapUsed: number;
  readonly v8External: number;
}

/** weft's resident memory by kind of mapping, bytes (compare.ts). */
export interface RssByMapping {
  /** The main thread's malloc heap (`[heap]`). */
  readonly brk: number;
  /** Other anonymous memory: V8's pages, other arenas, stacks. */
  readonly anon: number;
  /** File-backed pages. */
  readonly file: number;
}

/** Steady state of one agent: idle, then under churn. */
export interface SteadyResult {
  readonly agent: string;
  readonly mode: Mode;
  readonly n: number;
  /** Agent CPU over the idle window, % of one core. */
  readonly idleCpuPct: number;
  readonly idleSec: number;
  /** weft's full passes in the idle window (NaN for flanneld). */
  readonly idlePasses: number;
  /** Agent CPU over the churn window, % of one core. */
  readonly churnCpuPct: number;
  readonly churnSec: number;
  /** Peers added and removed over the churn window. */
  readonly churnOps: number;
  /** VmRSS at the end of the sync, each idle minute, each churn minute. */
  readonly rssAtSync: number;
  readonly idleRss: readonly number[];
  readonly churnRss: readonly number[];
  /** VmHWM at the end. */
  readonly rssPeak: number;
  /** Private and file-backed RSS at the end. */
  readonly rssAnonEnd: number;
  readonly rssFileEnd: number;
  /** weft only: its V8 heap in use each churn minute (its /metrics). */
  readonly churnHeap?: readonly number[];
  /** weft only: its RSS by mapping at the churn's start and each minute. */
  readonly churnMaps?: readonly RssByMapping[];
  /** weft only, with `--malloc-probe`: the probe's samples over the churn. */
  readonly churnMalloc?: readonly MallocSample[];
  /** Control-plane CPU over each window, % of one core (both agents). */
  readonly serverIdleCpuPct: number;
  readonly serverChurnCpuPct: number;
}

/** The figures one run of the benchmark saves (compare.json). */
export interface CompareResults {
  readonly machine: string;
  readonly commit: string;
  readonly started: string;
  readonly finished: string;
  /** The arguments the benchmark ran with (absent in older files). */
  readonly args?: readonly string[];
  readonly reps: number;
  readonly rows: readonly CompareRow[];
  readonly steady: readonly SteadyResult[];
  /** The previous run's medians ratios at N ≥ 1000, for "not worse". */
  readonly previous?: {
    readonly commit: string;
    readonly ratios: Readonly<Record<string, Record<string, number>>>;
  };
}

const mib = (b: number) => (b / 2 ** 20).toFixed(1);
const ms = (x: number) => x >= 100 ? x.toFixed(0) : x.toFixed(1);
const sec = (x: number) => x.toFixed(2);
const label = (r: { mode: Mode; n: number }) => `${r.mode} ${r.n}`;
const ratio = (w: number, f: number) =>
  Number.isFinite(w / f) ? (w / f).toFixed(2) : "n/a";

/** Median, least and most of `xs`. */
export function spread(
  xs: readonly number[],
): { med: number; min: number; max: number } {
  const ok = xs.filter(Number.isFinite);
  return {
    med: median(ok),
    min: ok.length ? Math.min(...ok) : NaN,
    max: ok.length ? Math.max(...ok) : NaN,
  };
}

/** `12.3 (11.9–13.0)`: the median and the range. */
function cell(xs: readonly number[], f: (x: number) => string): string {
  const s = spread(xs);
  if (!Number.isFinite(s.med)) return "-";
  return s.min === s.max ? f(s.med) : `${f(s.med)} (${f(s.min)}–${f(s.max)})`;
}

/**
 * Which of two sets of runs is lower, only when their ranges do not
 * overlap: `"weft"`, `"flanneld"` or `undefined` (no difference shown).
 */
export function lower(
  weft: readonly number[],
  flanneld: readonly number[],
): Agent | undefined {
  const w = spread(weft), f = spread(flanneld);
  if (!Number.isFinite(w.med) || !Number.isFinite(f.med)) return undefined;
  if (w.max < f.min) return "weft";
  if (f.max < w.min) return "flanneld";
  return undefined;
}

/** `0.16, weft lower` / `1.47, weft higher` / `0.98, ranges overlap`. */
function judged(w: readonly number[], f: readonly number[]): string {
  const r = ratio(median(w), median(f));
  const who = lower(w, f);
  return who === "weft"
    ? `**${r}**, weft lower`
    : who === "flanneld"
    ? `**${r}**, weft higher`
    : `${r}, ranges overlap`;
}

/** Like {@linkcode judged}, as a difference: for figures near zero. */
function judgedDiff(w: readonly number[], f: readonly number[]): string {
  const d = median(w) - median(f);
  const who = lower(w, f);
  const txt = `${d >= 0 ? "+" : "−"}${Math.abs(d).toFixed(2)} s`;
  return who === "weft"
    ? `**${txt}**, weft lower`
    : who === "flanneld"
    ? `**${txt}**, weft higher`
    : `${txt}, ranges overlap`;
}

const of = (xs: readonly AgentResult[], f: (a: AgentResult) => number) =>
  xs.map(f);

/** Control-plane CPU with the background of the same window taken off. */
const netServer = (row: CompareRow, a: AgentResult) =>
  a.serverCpuSec - (row.bgServerCpuSec[a.rep] ?? NaN);

const pooled = (
  xs: readonly AgentResult[],
  f: (a: AgentResult) => readonly number[] | undefined,
) => xs.flatMap((a) => [...(f(a) ?? [])]);

/** The main table: flanneld and weft at every mode and N. */
export function formatCompare(res: CompareResults): string {
  const lines = [
    `Each cell: median (least–most) of ${res.reps} runs per agent, the agents alternating who goes first. A ratio is weft's median over flanneld's; "lower"/"higher" only when the two ranges do not overlap.`,
    "",
    "| mode, N | agent | ready (ms) | cold sync (ms) | CPU to sync (s) | RSS +2 s after sync (MiB) | peak RSS (MiB) | from API server (MiB) | control-plane CPU over the window, background taken off (s) | convergence p50 / p99 (ms; samples) |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const row of res.rows) {
    const f = row.runs.flanneld ?? [], w = row.runs.weft ?? [];
    if (f.length === 0 || w.length === 0) continue;
    for (const xs of [f, w]) {
      const conv = pooled(xs, (a) => a.convergenceMs);
      const to = xs.reduce((s, a) => s + a.convergenceTimeouts, 0);
      const side = xs.map((a) => a.agentSideMs).filter((x) =>
        x !== undefined
      ) as number[];
      const deliv = pooled(xs, (a) => a.deliveryMs);
      lines.push(
        `| ${label(row)} | ${xs[0]!.agent} | ${
          cell(of(xs, (a) => a.readyMs), ms)
        } | ${cell(of(xs, (a) => a.syncMs), ms)} | ${
          cell(of(xs, (a) => a.cpuSec), sec)
        } | ${cell(of(xs, (a) => a.rss), mib)} | ${
          cell(of(xs, (a) => a.rssPeak), mib)
        } | ${cell(of(xs, (a) => a.rxBytes), mib)} | ${
          cell(xs.map((a) => netServer(row, a)), sec)
        } over ${xs[0]!.serverWindowSec} s | ${
          conv.length > 0
            ? `${ms(percentile(conv, 50))} / ${
              ms(percentile(conv, 99))
            }; ${conv.length}${to > 0 ? ` (${to} timed out)` : ""}${
              side.length > 0
                ? `; in the agent ${median(side).toFixed(2)} mean`
                : ""
            }${
              deliv.length > 0
                ? `; API server delivery p50 ${ms(percentile(deliv, 50))}`
                : ""
            }`
            : "-"
        } |`,
      );
    }
    lines.push(
      `| ${label(row)} | *floor* | | ${
        Number.isFinite(row.floorMs) ? `${ms(row.floorMs)} (ip -batch)` : "-"
      }; LIST alone ${ms(row.listMs)} | | | | ${
        mib(row.listBytes)
      } (LIST JSON) | background ${cell(row.bgServerCpuSec, sec)} | |`,
    );
    const cf = pooled(f, (a) => a.convergenceMs);
    const cw = pooled(w, (a) => a.convergenceMs);
    lines.push(
      `| ${label(row)} | weft ÷ flanneld | ${
        judged(of(w, (a) => a.readyMs), of(f, (a) => a.readyMs))
      } | ${judged(of(w, (a) => a.syncMs), of(f, (a) => a.syncMs))} | ${
        judged(of(w, (a) => a.cpuSec), of(f, (a) => a.cpuSec))
      } | ${judged(of(w, (a) => a.rss), of(f, (a) => a.rss))} | ${
        judged(of(w, (a) => a.rssPeak), of(f, (a) => a.rssPeak))
      } | ${
        ratio(median(of(w, (a) => a.rxBytes)), median(of(f, (a) => a.rxBytes)))
      } | ${
        judgedDiff(
          w.map((a) => netServer(row, a)),
          f.map((a) => netServer(row, a)),
        )
      } | ${
        cw.length > 0 && cf.length > 0
          ? `${ratio(percentile(cw, 50), percentile(cf, 50))} / ${
            ratio(percentile(cw, 99), percentile(cf, 99))
          }`
          : ""
      } |`,
    );
  }
  return lines.join("\n");
}

/** Medians of each variant at one row: the main two, for the targets. */
function medians(row: CompareRow, agent: string) {
  const xs = row.runs[agent] ?? [];
  return {
    rss: median(of(xs, (a) => a.rss)),
    cpuSec: median(of(xs, (a) => a.cpuSec)),
    syncMs: median(of(xs, (a) => a.syncMs)),
    readyMs: median(of(xs, (a) => a.readyMs)),
    server: median(xs.map((a) => netServer(row, a))),
  };
}

/** The ratios "not worse than today" compares, by mode and N. */
export function headlineRatios(
  rows: readonly CompareRow[],
): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const row of rows) {
    if (!row.runs.weft || !row.runs.flanneld) continue;
    const w = medians(row, "weft"), f = medians(row, "flanneld");
    out[label(row)] = {
      rss: w.rss / f.rss,
      cpuSec: w.cpuSec / f.cpuSec,
      syncMs: w.syncMs / f.syncMs,
    };
  }
  return out;
}

const verdict = (ok: boolean) => ok ? "met" : "**missed**";

/** The targets, each against this run's medians. */
export function formatTargets(res: CompareResults): string {
  const lines = [
    "| mode, N | target | weft | flanneld | ratio | verdict |",
    "|---:|---|---:|---:|---:|---|",
  ];
  for (const row of res.rows) {
    if (!row.runs.weft || !row.runs.flanneld) continue;
    const w = medians(row, "weft"), f = medians(row, "flanneld");
    if (row.n <= 100) {
      lines.push(
        `| ${label(row)} | RSS after sync ≤ 1.1x | ${mib(w.rss)} MiB | ${
          mib(f.rss)
        } MiB | ${ratio(w.rss, f.rss)} | ${verdict(w.rss <= 1.1 * f.rss)} |`,
        `| ${label(row)} | CPU to sync ≤ 1.5x | ${sec(w.cpuSec)} s | ${
          sec(f.cpuSec)
        } s | ${ratio(w.cpuSec, f.cpuSec)} | ${
          verdict(w.cpuSec <= 1.5 * f.cpuSec)
        } |`,
      );
    }
    const before = res.previous?.ratios[label(row)];
    if (row.n >= 1000 && before) {
      for (
        const [key, name, now] of [
          ["rss", "RSS after sync", w.rss / f.rss],
          ["cpuSec", "CPU to sync", w.cpuSec / f.cpuSec],
          ["syncMs", "cold sync", w.syncMs / f.syncMs],
        ] as const
      ) {
        const was = before[key]!;
        lines.push(
          `| ${label(row)} | ${name}: ratio not worse than at ${
            res.previous!.commit
          } (${was.toFixed(2)}, one run) | ${
            key === "rss"
              ? `${mib(w.rss)} MiB`
              : key === "cpuSec"
              ? `${sec(w.cpuSec)} s`
              : `${ms(w.syncMs)} ms`
          } | ${
            key === "rss"
              ? `${mib(f.rss)} MiB`
              : key === "cpuSec"
              ? `${sec(f.cpuSec)} s`
              : `${ms(f.syncMs)} ms`
          } | ${now.toFixed(2)} | ${verdict(now <= was)} |`,
        );
      }
    }
  }
  for (const s of res.steady) {
    if (s.agent !== "weft" || s.n !== 1000) continue;
    const f = res.steady.find((x) =>
      x.agent === "flanneld" && x.mode === s.mode && x.n === s.n
    );
    if (!f) continue;
    lines.push(
      `| ${label(s)} | idle CPU over ${s.idleSec / 60} min ≤ 1.0x | ${
        s.idleCpuPct.toFixed(3)
      }% | ${f.idleCpuPct.toFixed(3)}% | ${
        ratio(s.idleCpuPct, f.idleCpuPct)
      } | ${verdict(s.idleCpuPct <= f.idleCpuPct)} |`,
    );
  }
  return lines.join("\n");
}

/**
 * The levers: each weft variant against weft and against the floor of a
 * bare `deno run` of an empty module, at the sizes it ran.
 */
export function formatLevers(res: CompareResults): string {
  const lines = [
    "| mode, N | variant | ready (ms) | CPU to sync (s) | RSS +2 s after sync (MiB) | of it private / file-backed (MiB) | V8 heap in use (MiB) | against weft: RSS (MiB), CPU (ms) |",
    "|---:|---|---:|---:|---:|---:|---:|---:|",
  ];
  for (const row of res.rows) {
    const names = Object.keys(row.runs).filter((k) => k.startsWith("weft: "));
    if (names.length === 0) continue;
    const base = medians(row, "weft");
    for (const name of ["flanneld", "weft", ...names]) {
      const xs = row.runs[name] ?? [];
      if (xs.length === 0) continue;
      const m = medians(row, name);
      lines.push(
        `| ${label(row)} | ${name} | ${cell(of(xs, (a) => a.readyMs), ms)} | ${
          cell(of(xs, (a) => a.cpuSec), sec)
        } | ${cell(of(xs, (a) => a.rss), mib)} | ${
          mib(median(of(xs, (a) => a.rssAnon)))
        } / ${mib(median(of(xs, (a) => a.rssFile)))} | ${
          xs.every((a) => a.heapUsed !== undefined)
            ? mib(median(of(xs, (a) => a.heapUsed!)))
            : ""
        } | ${
          name === "weft"
            ? ""
            : `${(m.rss - base.rss) / 2 ** 20 >= 0 ? "+" : ""}${
              mib(m.rss - base.rss)
            }, ${m.cpuSec >= base.cpuSec ? "+" : ""}${
              ((m.cpuSec - base.cpuSec) * 1000).toFixed(0)
            }`
        } |`,
      );
    }
    if (row.denoFloor.length > 0) {
      const rss = row.denoFloor.map((d) => d.rss);
      const cpu = row.denoFloor.map((d) => d.cpuSec);
      lines.push(
        `| ${
          label(row)
        } | *\`deno run\` of an empty module, same V8 flags* | | ${
          cell(cpu, sec)
        } | ${cell(rss, mib)} | ${
          mib(median(row.denoFloor.map((d) => d.anon)))
        } / ${mib(median(row.denoFloor.map((d) => d.file)))} | | weft − this: ${
          mib(base.rss - median(rss))
        } MiB, ${((base.cpuSec - median(cpu)) * 1000).toFixed(0)} ms |`,
      );
    }
  }
  return lines.length > 2 ? lines.join("\n") : "";
}

/** Steady state: idle, then churn, both agents side by side. */
export function formatSteady(res: CompareResults): string {
  if (res.steady.length === 0) return "";
  const lines = [
    "| mode, N | agent | RSS at sync (MiB) | idle: CPU (% of a core) | idle: RSS at its end (MiB) | churn: CPU (% of a core) | churn: RSS each 5 min (MiB) | at the end: private / file-backed (MiB) | churn: V8 heap each 5 min (MiB) | peak RSS (MiB) | control plane idle / churn (% of a core) |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const s of res.steady) {
    const every5 = s.churnRss.filter((_, i) =>
      i % 5 === 0 || i === s.churnRss.length - 1
    );
    lines.push(
      `| ${label(s)} | ${s.agent} | ${mib(s.rssAtSync)} | ${
        s.idleCpuPct.toFixed(3)
      }${
        Number.isFinite(s.idlePasses) ? ` (${s.idlePasses} full passes)` : ""
      } | ${mib(s.idleRss.at(-1) ?? NaN)} | ${s.churnCpuPct.toFixed(3)} | ${
        every5.map(mib).join(" → ")
      } | ${mib(s.rssAnonEnd)} / ${mib(s.rssFileEnd)} | ${
        s.churnHeap
          ? s.churnHeap.filter((_, i) =>
            i % 5 === 0 || i === s.churnHeap!.length - 1
          ).map(mib).join(" → ")
          : ""
      } | ${mib(s.rssPeak)} | ${s.serverIdleCpuPct.toFixed(2)} / ${
        s.serverChurnCpuPct.toFixed(2)
      } |`,
    );
  }
  const s0 = res.steady[0]!;
  const growth = formatChurnGrowth(res.steady);
  lines.push(
    ...(growth ? ["", growth] : []),
    "",
    `Idle window ${s0.idleSec / 60} min, then ${
      s0.churnSec / 60
    } min of churn (${
      res.steady.filter((s) => s.agent === "weft").map((s) =>
        `${label(s)}: ${s.churnOps} peers added or removed`
      ).join("; ")
    }); RSS sampled each minute.`,
  );
  return lines.join("\n");
}

/**
 * Where weft's RSS went over the churn, by kind of mapping (first and last
 * sample), and with `--malloc-probe` what malloc had in use against what
 * it held from the system: the median and highest of each 5 minutes' 10 s
 * samples. Empty for results without the breakdown.
 */
export function formatChurnGrowth(steady: readonly SteadyResult[]): string {
  const withMaps = steady.filter((s) => s.churnMaps && s.churnMaps.length > 1);
  if (withMaps.length === 0) return "";
  const d = (a: number, b: number) => {
    const x = (b - a) / 2 ** 20;
    return `${x >= 0 ? "+" : ""}${x.toFixed(1)}`;
  };
  const lines = [
    "weft's RSS over the churn by kind of mapping (`/proc/<pid>/smaps`, the churn's first and last minute), and malloc's own counts where the probe ran (bench/_malloc_probe.ts: glibc's `mallinfo2()` every 10 s; each 5 minutes' median, highest in brackets):",
    "",
    "| mode, N | RSS (MiB) | main thread's malloc heap `[heap]` (MiB) | other anonymous: V8 pages, other arenas, stacks (MiB) | file-backed (MiB) | malloc in use each 5 min (MiB) | malloc held from the system each 5 min (MiB) | V8 heap committed each 5 min (MiB) |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const s of withMaps) {
    const m = s.churnMaps!;
    const a = m[0]!, b = m[m.length - 1]!;
    const sum = (x: RssByMapping) => x.brk + x.anon + x.file;
    const windows = (f: (x: MallocSample) => number) => {
      if (!s.churnMalloc || s.churnMalloc.length === 0) return "";
      const t0 = s.churnMalloc[0]!.t;
      const by = new Map<number, number[]>();
      for (const x of s.churnMalloc) {
        const w = Math.floor((x.t - t0) / 300_000);
        by.set(w, [...by.get(w) ?? [], f(x)]);
      }
      return [...by.values()].map((xs) =>
        `${mib(median(xs))} (${mib(Math.max(...xs))})`
      ).join(" → ");
    };
    lines.push(
      `| ${label(s)} | ${mib(sum(a))} → ${mib(sum(b))} (${
        d(sum(a), sum(b))
      }) | ${mib(a.brk)} → ${mib(b.brk)} (${d(a.brk, b.brk)}) | ${
        mib(a.anon)
      } → ${mib(b.anon)} (${d(a.anon, b.anon)}) | ${mib(a.file)} → ${
        mib(b.file)
      } (${d(a.file, b.file)}) | ${windows((x) => x.inUse)} | ${
        windows((x) => x.arena + x.hblkhd)
      } | ${windows((x) => x.v8HeapTotal)} |`,
    );
  }
  return lines.join("\n");
}

/** The runs collapsed to medians, for the chart. */
export function medianRows(rows: readonly CompareRow[]): MedianRow[] {
  const collapse = (xs: readonly AgentResult[]): AgentResult => {
    const m = (f: (a: AgentResult) => number) => median(xs.map(f));
    return {
      ...xs[0]!,
      syncMs: m((a) => a.syncMs),
      rss: m((a) => a.rss),
      convergenceMs: xs.flatMap((a) => [...a.convergenceMs]),
    };
  };
  return rows.filter((r) => r.runs.weft && r.runs.flanneld).map((r) => ({
    mode: r.mode,
    n: r.n,
    floorMs: r.floorMs,
    flanneld: collapse(r.runs.flanneld!),
    weft: collapse(r.runs.weft!),
  }));
}

/** A bar chart of cold sync, convergence p99 and RSS, as SVG text. */
export function compareSvg(rows: MedianRow[], title: string): string {
  const panels: {
    name: string;
    unit: string;
    series: {
      label: string;
      color: string;
      value: (r: MedianRow) => number;
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
            esc(`${s.label}, ${r.mode} ${r.n}: ${fmtTick(v)} ${p.unit}`)
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
        }" text-anchor="middle" font-size="9">${r.mode} ${r.n}</text>`,
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

- The machine has 2 cores. Nothing else ran on it during the run unless the
  header says so.
- One kube-apiserver (etcd >= 3.5, watch cache on) holds N−1 realistic peer
  Nodes (labels, kubelet annotations, capacity, conditions, addresses, node
  info, 30 images with long names: about 13 kB of JSON each) annotated as
  flannel vxlan nodes, plus the agent's own Node \`bench-self\`
  (\`10.0.1.0/24\`, recreated before every run); N=0 means that Node
  alone. In etcd mode one etcd holds N−1 flannel leases. Network
  \`10.0.0.0/8\`, SubnetLen 24.
- Each agent runs alone, in a fresh namespace with \`eth0\` on a bridge
  (\`198.18.0.1/15\`, default route), with the same flags:
  \`--kube-subnet-mgr --kubeconfig-file --net-config-path --subnet-file
  --iface=eth0 --ip-masq=false --healthz-port=18400\` (etcd mode:
  \`--etcd-endpoints --etcd-prefix\`), \`NODE_NAME=bench-self\`. Every cell
  runs each variant several times; each repetition rotates who goes first.
- weft runs as the image runs it: \`deno run\` with the list of
  \`deploy/permissions.txt\` (the benchmark's directory added to the read
  and write paths, for the kubeconfig, net-conf.json and subnet.env), the
  V8 flags of \`deploy/v8-flags.txt\`, and the image's environment
  (\`DENO_TLS_CA_STORE=system\`). The kubeconfig is YAML, as users have it,
  with \`certificate-authority\` naming a file and a bearer token (the shape
  of k3s's agent kubeconfigs); in a DaemonSet weft reads the service
  account's files instead, which takes the same path.
- Ready: process spawn → \`subnet.env\` written (inotify), which both
  agents do once the lease and the device are set up.
- Cold sync: process spawn → the last of the N−1 routes on \`flannel.1\`
  (timestamps from \`ip monitor route\` in the namespace), confirmed by
  dumping neighbours and FDB entries; with no peer it is the ready moment.
  CPU to sync: utime+stime of the agent at that moment, from
  \`/proc/<pid>/stat\` in 10 ms ticks (so 0.01 s is the resolution). RSS:
  VmRSS of the agent process (for weft the deno process) 2 s after the
  sync; peak: VmHWM at the end of the run.
- Control-plane CPU: utime+stime of kube-apiserver and its etcd (etcd
  mode: etcd) over a window of fixed length from the agent's spawn, the
  same for every agent at one N and longer than every agent's sync plus
  2 s, minus the same servers' CPU over a window of that length with no
  agent running, taken in each repetition (10 ms ticks).
- Bytes from the API server: the kubeconfig points at 127.0.0.1:6443 in
  the agent's namespace, a TCP relay of the benchmark process that
  forwards to the apiserver and counts bytes; TLS passes through.
- Convergence: a new Node (etcd: lease key) is written, then the time
  until its route shows up in \`ip monitor route\`; one at a time, pooled
  over the repetitions (the sample count is in the table). "API server
  delivery": write → the same event at a watch the benchmark holds straight
  on the API server. "In the agent": weft's own histogram of watch event
  received → kernel entries programmed (\`weft_event_to_kernel_seconds\`).
- Floor: \`ip -batch\` + \`bridge -batch\` programming the same N−1 peers in a
  fresh namespace (kernel programming only). "LIST alone" is a paginated
  LIST (limit=500) of all nodes by the benchmark process. The \`deno run\`
  floor is an empty module under the same V8 flags, its RSS read 2 s
  after start, as weft's is.
- Steady state: both agents run at the same time against one control
  plane, each in its own namespace as its own node, for the idle window
  (nothing changes) and then the churn window (every second one peer is
  added or one removed, alternately, as \`bench/soak.ts\` does). Their CPU is
  read over the same windows, so background work falls on both alike.
`;

/** The commit this checkout is at, and whether it has local changes. */
export async function commitOf(root: string): Promise<string> {
  const head = (await run(["git", "-C", root, "rev-parse", "--short", "HEAD"]))
    .stdout.trim();
  // Results the benchmarks themselves write do not change what is measured.
  const dirty = (await run([
    "git",
    "-C",
    root,
    "status",
    "--porcelain",
    "--",
    ".",
    ":(exclude)bench/results",
  ])).stdout.trim();
  return dirty ? `${head} plus uncommitted changes` : head;
}

/** The whole compare.md. */
export async function formatResults(res: CompareResults): Promise<string> {
  const steady = formatSteady(res);
  const levers = formatLevers(res);
  return `# weft vs flanneld (${res.started.slice(0, 10)})

Machine: ${res.machine}. flanneld ${await flanneldVersion()}. weft at ${res.commit}. Run ${
    res.started.slice(11, 16)
  }–${res.finished.slice(11, 16)} UTC by \`deno run -A bench/compare.ts${
    res.args
      ? res.args.map((a) => ` ${/[\s'"]/.test(a) ? `'${a}'` : a}`).join("")
      : res.reps !== 3
      ? ` --reps=${res.reps}`
      : ""
  }\`, ${
    res.rows.length > 0
      ? `${res.reps} runs per agent and cell`
      : "the steady state alone, one run of each cell"
  }.
${
    res.rows.length > 0
      ? `
${formatCompare(res)}

![chart](compare.svg)

## Targets

${formatTargets(res)}
`
      : ""
  }${
    steady
      ? `
## Steady state: idle, then churn

${steady}
`
      : ""
  }${
    levers
      ? `
## Levers: what each costs at small N

Each row is a variant of weft run in the same repetitions as the two
agents above; the last column is its median against weft's. The floor is
what any Deno program pays before its first line.

${levers}
`
      : ""
  }
${METHOD}`;
}

/**
 * Writes compare.md, compare.svg and the raw figures (compare.json) under
 * `dir` and returns the markdown.
 */
export async function writeCompareResults(
  res: CompareResults,
  dir = `${ROOT}bench/results`,
): Promise<string> {
  const md = await formatResults(res);
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/compare.md`, md);
  await Deno.writeTextFile(
    `${dir}/compare.json`,
    JSON.stringify(res, null, 1) + "\n",
  );
  await Deno.writeTextFile(
    `${dir}/compare.svg`,
    compareSvg(medianRows(res.rows), `weft vs flanneld: ${res.machine}`),
  );
  return md;
}

/** What a set of runs says, in words, for the README. */
function said(w: readonly number[], f: readonly number[]): string {
  const who = lower(w, f);
  const r = ratio(median(w), median(f));
  return who === "weft"
    ? `${r}x (weft lower)`
    : who === "flanneld"
    ? `${r}x (weft higher)`
    : `${r}x (ranges overlap)`;
}

/**
 * The README's side-by-side section, generated from the figures: a table
 * and only the claims these runs support.
 */
export function readmeSection(res: CompareResults): string {
  const out = [
    `Measured by \`bench/compare.ts\` at ${res.commit} on ${res.machine}, ${res.reps} runs per agent and cell, the agents alternating (\`bench/results/compare.md\`, chart \`compare.svg\`). Figures are medians; weft ÷ flanneld says "lower" or "higher" only when the ranges of the runs do not overlap.`,
    "",
    "| mode, N | ready: weft / flanneld (ms) | cold sync: weft / flanneld (ms) | weft ÷ flanneld: cold sync | CPU to sync | RSS after sync | control-plane CPU, weft − flanneld |",
    "| ---: | ---: | ---: | --- | --- | --- | --- |",
  ];
  for (const row of res.rows) {
    const f = row.runs.flanneld, w = row.runs.weft;
    if (!f || !w) continue;
    out.push(
      `| ${label(row)} | ${ms(median(of(w, (a) => a.readyMs)))} / ${
        ms(median(of(f, (a) => a.readyMs)))
      } | ${ms(median(of(w, (a) => a.syncMs)))} / ${
        ms(median(of(f, (a) => a.syncMs)))
      } | ${said(of(w, (a) => a.syncMs), of(f, (a) => a.syncMs))} | ${
        said(of(w, (a) => a.cpuSec), of(f, (a) => a.cpuSec))
      } | ${said(of(w, (a) => a.rss), of(f, (a) => a.rss))} | ${
        judgedDiff(
          w.map((a) => netServer(row, a)),
          f.map((a) => netServer(row, a)),
        ).replaceAll("**", "")
      } |`,
    );
  }
  // Each figure sorted by what the runs show, in words.
  const verdicts = (
    what: string,
    w: (row: CompareRow) => readonly number[],
    f: (row: CompareRow) => readonly number[],
  ) => {
    const by = new Map<string, string[]>();
    for (const row of res.rows) {
      if (!row.runs.flanneld || !row.runs.weft) continue;
      const who = lower(w(row), f(row));
      const key = who === "weft"
        ? "weft lower"
        : who === "flanneld"
        ? "weft higher"
        : "no difference shown (ranges overlap)";
      by.set(key, [
        ...by.get(key) ?? [],
        `${label(row)} (${ratio(median(w(row)), median(f(row)))}x)`,
      ]);
    }
    return `- **${what}:** ${
      [...by].map(([k, v]) => `${k} at ${v.join(", ")}`).join("; ")
    }.`;
  };
  const runsOf =
    (agent: string, f: (a: AgentResult) => number) => (row: CompareRow) =>
      (row.runs[agent] ?? []).map(f);
  out.push(
    "",
    verdicts(
      "Cold sync",
      runsOf("weft", (a) => a.syncMs),
      runsOf("flanneld", (a) => a.syncMs),
    ),
    verdicts(
      "CPU to sync",
      runsOf("weft", (a) => a.cpuSec),
      runsOf("flanneld", (a) => a.cpuSec),
    ),
    verdicts(
      "Memory (RSS) after sync",
      runsOf("weft", (a) => a.rss),
      runsOf("flanneld", (a) => a.rss),
    ),
  );
  const kubeReady = res.rows.filter((r) =>
    r.mode === "kube" && r.n <= 1000 && r.runs.flanneld
  ).map((r) => median(of(r.runs.flanneld!, (a) => a.readyMs)));
  if (kubeReady.length > 0) {
    out.push(
      "",
      `In kube mode flanneld's start-up includes a wait: it checks whether its node informer has synced at once and then once a second (\`PollUntilContextTimeout\` with a 1 s interval in its \`pkg/subnet/kube/kube.go\`), and the first check comes before the listing has arrived. Its median ready time at kube 0 to 1000 was ${
        ms(Math.min(...kubeReady))
      }–${
        ms(Math.max(...kubeReady))
      } ms here, so weft's cold-sync ratios at those sizes mostly measure that wait, not the work.`,
    );
  }
  const idle = res.steady.filter((s) => s.agent === "weft");
  if (idle.length > 0) {
    out.push(
      "",
      "Steady state, both agents at once against one control plane:",
      "",
      "| mode, N | idle CPU, weft / flanneld (% of a core) | RSS after idle, weft / flanneld (MiB) | RSS after churn, weft / flanneld (MiB) |",
      "| ---: | ---: | ---: | ---: |",
    );
    for (const s of idle) {
      const f = res.steady.find((x) =>
        x.agent === "flanneld" && x.mode === s.mode && x.n === s.n
      );
      if (!f) continue;
      out.push(
        `| ${label(s)} | ${s.idleCpuPct.toFixed(3)} / ${
          f.idleCpuPct.toFixed(3)
        } over ${s.idleSec / 60} min | ${mib(s.idleRss.at(-1) ?? NaN)} / ${
          mib(f.idleRss.at(-1) ?? NaN)
        } | ${mib(s.churnRss.at(-1) ?? NaN)} / ${
          mib(f.churnRss.at(-1) ?? NaN)
        } after ${s.churnSec / 60} min |`,
      );
    }
  }
  return out.join("\n");
}

/** Replaces the README's generated side-by-side section. */
export async function writeReadme(res: CompareResults) {
  const path = `${ROOT}README.md`;
  const text = await Deno.readTextFile(path);
  const begin = "<!-- compare:begin -->", end = "<!-- compare:end -->";
  const a = text.indexOf(begin), b = text.indexOf(end);
  if (a < 0 || b < a) throw new Error(`README.md has no ${begin} section`);
  await Deno.writeTextFile(
    path,
    `${text.slice(0, a + begin.length)}\n\n${readmeSection(res)}\n\n${
      text.slice(b)
    }`,
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

export { machine };
