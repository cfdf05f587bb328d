/**
 * Benchmark (not a test): what one agent's cold sync costs the control
 * plane when its Node LIST is served from the API server's watch cache
 * (`resourceVersion=0`, what weft and client-go ask for) against a quorum
 * read that the API server takes from etcd (no resource version).
 *
 * One kube-apiserver holds N realistic Nodes (bench/compare.ts's harness
 * and agent runs, without additions). At each N, weft runs `--repeats`
 * times each way and flanneld as often for scale, in rotating order; the
 * quorum runs are the same weft with bench/_quorum_list.ts preloaded,
 * which takes the resource version out of its LIST requests (checked in
 * its log). Figures per run: apiserver+etcd CPU from spawn to sync, cold
 * sync, the agent's CPU at sync, bytes from the API server; the table
 * gives the median and the range.
 *
 * Run: `deno run -A bench/list_cost.ts [--repeats=3] [--out=<file.md>]
 * [N...]` (default N = 1000 5000). Needs root and the servers built by
 * `.ci/build_servers.sh`.
 *
 * @module
 */
import {
  type AgentResult,
  KubeStore,
  runAgent,
  type RunContext,
  type Variant,
} from "./compare.ts";
import { serverBinary } from "../tests/servers/paths.ts";
import { run } from "../tests/_netns.ts";
import { machine } from "./_stats.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const QUORUM = `${ROOT}bench/_quorum_list.ts`;

const VARIANTS: readonly Variant[] = [
  { name: "weft, resourceVersion=0 (watch cache)", agent: "weft" },
  { name: "weft, quorum (etcd)", agent: "weft", preload: QUORUM },
  { name: "flanneld, resourceVersion=0 (client-go)", agent: "flanneld" },
];

/** Figures of one variant at one N, one entry per run. */
export interface ListCostRow {
  readonly n: number;
  readonly variant: string;
  readonly runs: AgentResult[];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function cell(xs: number[], digits = 0): string {
  const f = (x: number) => x.toFixed(digits);
  return `${f(median(xs))} (${f(Math.min(...xs))}-${f(Math.max(...xs))})`;
}

/** The markdown table of `rows`. */
export function formatListCost(rows: ListCostRow[]): string {
  const out = [
    "| N | agent, LIST | apiserver+etcd CPU per cold sync (ms) | cold sync (ms) | agent CPU to sync (ms) | from API server (MiB) | runs |",
    "|---:|---|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    const v = (f: (x: AgentResult) => number) => r.runs.map(f);
    out.push(
      `| ${r.n} | ${r.variant} | ${cell(v((x) => x.serverCpuSec * 1000))} | ${
        cell(v((x) => x.syncMs))
      } | ${cell(v((x) => x.cpuSec * 1000))} | ${
        cell(v((x) => x.rxBytes / 2 ** 20), 1)
      } | ${r.runs.length} |`,
    );
  }
  return out.join("\n");
}

/** Runs every variant `repeats` times at each N against one API server. */
export async function benchListCost(
  ns: number[],
  opts: { repeats?: number; progress?: (line: string) => void } = {},
): Promise<ListCostRow[]> {
  const progress = opts.progress ?? (() => {});
  const repeats = opts.repeats ?? 3;
  const flanneld = await serverBinary("flanneld");
  if (!flanneld) {
    throw new Error("flanneld is missing: run .ci/build_servers.sh");
  }
  const weftMain = `${ROOT}main.ts`;
  await run([Deno.execPath(), "cache", weftMain, QUORUM]);
  const dir = await Deno.makeTempDir({ prefix: "weft-lcost-" });
  const logDir = `${dir}/logs`;
  try {
    await using store = await KubeStore.start(dir);
    const ctx: RunContext = {
      store,
      dir,
      flanneld,
      weftRoot: ROOT.replace(/\/+$/, ""),
      logDir,
      additions: 0,
      syncTimeoutMs: 180_000,
      progress,
      nsTag: "lcost",
    };
    const rows: ListCostRow[] = [];
    let have = 0;
    for (const n of [...ns].sort((a, b) => a - b)) {
      await store.populate(have, Math.max(n - 1, 0));
      have = Math.max(n - 1, have);
      await store.timeList(); // warms the server as compare.ts does
      const runs = VARIANTS.map(() => [] as AgentResult[]);
      for (let r = 0; r < repeats; r++) {
        for (let k = 0; k < VARIANTS.length; k++) {
          const i = (k + r) % VARIANTS.length;
          const v = VARIANTS[i]!;
          progress(`N=${n} run ${r + 1}/${repeats}: ${v.name}`);
          const res = await runAgent(v, n, ctx, r);
          const log = await Deno.readTextFile(
            `${logDir}/kube-${v.name.replace(/[^\w.-]+/g, "_")}-${n}-${r}.log`,
          );
          if (Boolean(v.preload) !== log.includes("quorum-list: ")) {
            throw new Error(`${v.name} at N=${n}: LIST not as intended`);
          }
          runs[i]!.push(res);
        }
      }
      VARIANTS.forEach((v, i) =>
        rows.push({ n, variant: v.name, runs: runs[i]! })
      );
    }
    return rows;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  const arg = (name: string) =>
    Deno.args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const sizes = Deno.args.filter((a) => !a.startsWith("--")).map(Number);
  const started = new Date().toISOString();
  const rows = await benchListCost(sizes.length > 0 ? sizes : [1000, 5000], {
    repeats: Number(arg("repeats") ?? 3),
    progress: (l) => console.error(l),
  });
  const text = `Run ${started}, ${await machine()}\n\n${
    formatListCost(rows)
  }\n`;
  const out = arg("out");
  if (out) await Deno.writeTextFile(out, text);
  console.log(text);
}
