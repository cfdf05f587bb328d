/**
 * Benchmark (not a test): where weft's start-up goes before its first API
 * request, step by step, each measured as its own process so one step's
 * caches do not flatter the next: a bare `deno run` of an empty script
 * (the runtime alone), loading every module of the agent's kube path from
 * a cold and from a warm transpile cache (`DENO_DIR`), and opening libnl
 * plus the first link and route dumps (read only, in the host's own
 * namespace). Each probe then lets the event loop run for 200 ms, as any
 * long-lived process does (a bare Deno process grows by some 7 MiB on its
 * first timer). Prints a markdown table with time, CPU (utime+stime, 10 ms
 * ticks) and RSS; medians of `--runs` (default 5) runs.
 *
 * Run: `deno run -A bench/startup.ts [--runs=5]`.
 *
 * @module
 */
import { median } from "./_stats.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** Runs a script `runs` times; returns median wall ms and RSS MiB it printed. */
async function probe(
  name: string,
  code: string,
  runs: number,
  env: () => Record<string, string> = () => ({}),
  flags: string[] = [],
): Promise<
  { name: string; wallMs: number; innerMs: number; rss: number; cpu: number }
> {
  const file = `${ROOT}bench/_startup_probe_${crypto.randomUUID()}.ts`;
  await Deno.writeTextFile(
    file,
    `${code}
await new Promise((r) => setTimeout(r, 200)); // the event loop's own share
const st = Deno.readTextFileSync("/proc/self/status");
const sf = Deno.readTextFileSync("/proc/self/stat");
const f = sf.slice(sf.lastIndexOf(")") + 2).split(" ");
console.log(JSON.stringify({
  ms: performance.now() - 200,
  rss: Number(/VmRSS:\\s+(\\d+)/.exec(st)![1]) / 1024,
  cpu: (Number(f[11]) + Number(f[12])) * 10,
}));
`,
  );
  const walls: number[] = [], inner: number[] = [], rss: number[] = [];
  const cpu: number[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", ...flags, file],
        env: env(),
        stdout: "piped",
        stderr: "piped",
      }).output();
      walls.push(performance.now() - t0);
      if (!out.success) {
        throw new Error(`${name}: ${new TextDecoder().decode(out.stderr)}`);
      }
      const r = JSON.parse(new TextDecoder().decode(out.stdout).trim()) as {
        ms: number;
        rss: number;
        cpu: number;
      };
      inner.push(r.ms);
      rss.push(r.rss);
      cpu.push(r.cpu);
    }
  } finally {
    await Deno.remove(file);
  }
  return {
    name,
    wallMs: median(walls),
    innerMs: median(inner),
    rss: median(rss),
    cpu: median(cpu),
  };
}

if (import.meta.main) {
  const runsArg = Deno.args.find((a) => a.startsWith("--runs="));
  const runs = runsArg ? Number(runsArg.slice(7)) : 5;
  const v8 = (JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)) as {
    tasks: { start: string };
  }).tasks.start.match(/--v8-flags=\S+/)?.[0];
  const flags = v8 ? [v8] : [];
  const kubePath = `import "${ROOT}main.ts";
import "${ROOT}subnet/kube/manager.ts";`;
  const rows = [
    await probe("empty script (the runtime alone)", "", runs, undefined, flags),
    await probe(
      "agent modules, kube path, cold transpile cache",
      kubePath,
      runs,
      () => ({ DENO_DIR: Deno.makeTempDirSync({ prefix: "weft-denodir-" }) }),
      flags,
    ),
    await probe(
      "agent modules, kube path, warm transpile cache",
      kubePath,
      runs,
      undefined,
      flags,
    ),
    await probe(
      "the same + libnl open (FFI) + first link and route dumps",
      `${kubePath}
import { openNetlink } from "${ROOT}ffi/netlink.ts";
const nl = openNetlink();
nl.linkList();
nl.routeList({ family: 4 });`,
      runs,
      undefined,
      flags,
    ),
  ];
  console.log(
    [
      `Start-up, median of ${runs} runs (${flags.join(" ") || "no V8 flags"}):`,
      "",
      "| step | in-process, to the step's end (ms) | CPU (ms) | RSS (MiB) |",
      "|---|---:|---:|---:|",
      ...rows.map((r) =>
        `| ${r.name} | ${r.innerMs.toFixed(0)} | ${r.cpu.toFixed(0)} | ${
          r.rss.toFixed(1)
        } |`
      ),
    ].join("\n"),
  );
}
