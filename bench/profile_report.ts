/**
 * Report (not a test): where weft's CPU to sync goes, from the profiles
 * `deno run -A bench/compare.ts --prof=<dir> ...` leaves in `<dir>`: one
 * V8 sampling-profiler log per weft run (a tick each 100 µs of the main
 * thread's CPU) and beside it the run's sync moment and CPU.
 *
 * Each log is decoded by Node's tick processor (`node --prof-process
 * --preprocess`; Node only reads the log, any version that reads V8's log
 * format will do), and only the ticks before the run's sync are kept. A
 * tick goes to:
 *
 * - "GC", or "parsing and compiling JS", by the VM state V8 recorded;
 * - otherwise the nearest weft module on its stack, by directory
 *   (`subnet/etcd`, `backend`, `ffi`, ...): native work a module called,
 *   a netlink `sendmsg` or a JSON parse, counts as that module's;
 * - otherwise "Deno's runtime JS" when a Deno built-in (`ext:`) is on the
 *   stack, else "no JS on the stack" (the event loop, I/O completion).
 *
 * Each cell prints, per variant, the median over its runs of each share in
 * ms (ticks × 0.1 ms), the main thread's ticks in all, and the whole
 * process's CPU to sync from `/proc` (10 ms ticks; other threads and the
 * profiler's own cost are in it, not in the ticks). With more than one
 * variant, the last columns are the first (`weft` when it ran) minus each
 * other.
 *
 * Run: `deno run -A bench/profile_report.ts --dir=<dir> [--out=<file>]
 * [--title=<heading>] [--note=<a paragraph under it>]
 * [--compare=<the run's compare.json>]`; prints markdown, and writes it to
 * `--out` if given.
 *
 * @module
 */
import { median } from "./_stats.ts";

/** The sidecar compare.ts writes beside each profile. */
interface RunInfo {
  readonly variant: string;
  readonly mode: string;
  readonly n: number;
  readonly rep: number;
  readonly syncMs: number;
  readonly cpuSec: number;
}

/** What `node --prof-process --preprocess` prints (the parts used). */
interface Preprocessed {
  readonly code: readonly { name: string; type: string }[];
  readonly ticks: readonly { tm: number; vm: number; s: number[] }[];
}

/** V8's VM states (StateTag) that are not running a function's code. */
const VM_GC = 1;
const VM_COMPILING = new Set([2, 3, 4]);

/** How many functions the table of moved functions lists per cell. */
const FUNCTIONS_LISTED = 12;

/** weft's top-level directories; a module's share is named by them. */
const TOP = ["agent", "backend", "cni", "ffi", "lib", "subnet", "traffic"];

/** The share a weft module's ticks go to: its directory, or `main.ts`. */
export function moduleShare(name: string): string | undefined {
  const m = /file:\/\/(\S+?\.ts)/.exec(name);
  if (!m) return undefined;
  const parts = m[1]!.split("/");
  for (let i = parts.length - 2; i >= 0; i--) {
    if (!TOP.includes(parts[i]!)) continue;
    // One level deeper under subnet/ and backend/, where the modes and
    // backends live in directories of their own.
    const sub = parts.length - i > 2 ? `/${parts[i + 1]}` : "";
    return `${parts[i]}${sub}`;
  }
  return parts[parts.length - 1] === "main.ts" ? "main.ts" : undefined;
}

/**
 * The share of one tick (see the module comment) and the nearest weft
 * function on its stack, as `name (file.ts)` (the share when there is
 * none).
 */
export function tickShare(
  tick: { vm: number; s: readonly number[] },
  code: Preprocessed["code"],
): { share: string; fn: string } {
  const only = (share: string) => ({ share, fn: share });
  if (tick.vm === VM_GC) return only("GC");
  if (VM_COMPILING.has(tick.vm)) return only("parsing and compiling JS");
  let runtime = false;
  for (let i = 0; i < tick.s.length; i += 2) {
    const c = code[tick.s[i]!];
    if (c === undefined || c.type !== "JS") continue;
    const share = moduleShare(c.name);
    if (share !== undefined) {
      // "^name file:///…/dir/file.ts:line:col", the prefix V8's tier.
      const m = /^[~^*+]?(\S*) file:\/\/\S*\/([^/]+\.ts):/.exec(c.name);
      return { share, fn: m ? `${m[1] || "(module)"} (${m[2]})` : share };
    }
    if (c.name.includes("ext:")) runtime = true;
  }
  return only(runtime ? "Deno's runtime JS" : "no JS on the stack");
}

/**
 * Ticks by share and by nearest weft function for one log, cut at
 * `untilMs` from the log's start.
 */
async function shares(
  log: string,
  untilMs: number,
): Promise<{ by: Map<string, number>; byFn: Map<string, number> }> {
  const out = await new Deno.Command("node", {
    args: ["--prof-process", "--preprocess", log],
    stdout: "piped",
    stderr: "piped",
  }).output().catch((e) => {
    throw new Error(
      `Cannot run node to decode ${log}: ${(e as Error).message}`,
    );
  });
  const text = new TextDecoder().decode(out.stdout);
  const start = text.indexOf("{");
  if (!out.success || start < 0) {
    throw new Error(
      `node --prof-process failed on ${log}: ${
        new TextDecoder().decode(out.stderr).trim()
      }`,
    );
  }
  const p = JSON.parse(text.slice(start)) as Preprocessed;
  const by = new Map<string, number>();
  const byFn = new Map<string, number>();
  for (const t of p.ticks) {
    if (t.tm > untilMs * 1000) continue;
    const { share, fn } = tickShare(t, p.code);
    by.set(share, (by.get(share) ?? 0) + 1);
    byFn.set(fn, (byFn.get(fn) ?? 0) + 1);
  }
  return { by, byFn };
}

function arg(name: string): string | undefined {
  const a = Deno.args.find((x) => x.startsWith(`--${name}=`));
  return a?.slice(name.length + 3);
}

async function main(): Promise<void> {
  const dir = arg("dir");
  if (!dir) {
    console.error("Usage: bench/profile_report.ts --dir=<dir> [--out=<file>]");
    Deno.exit(2);
  }
  // Cell → variant → each run's ticks by share and by function.
  type Run = Awaited<ReturnType<typeof shares>>;
  const cells = new Map<string, Map<string, Run[]>>();
  const cpu = new Map<string, number[]>();
  for await (const e of Deno.readDir(dir)) {
    if (!e.name.endsWith(".v8.log.json")) continue;
    const info = JSON.parse(
      await Deno.readTextFile(`${dir}/${e.name}`),
    ) as RunInfo;
    const log = `${dir}/${e.name.slice(0, -".json".length)}`;
    const cell = `${info.mode} ${info.n}`;
    const variants = cells.get(cell) ?? new Map();
    cells.set(cell, variants);
    const runs = variants.get(info.variant) ?? [];
    variants.set(info.variant, runs);
    runs.push(await shares(log, info.syncMs));
    const ck = `${cell}\u0000${info.variant}`;
    cpu.set(ck, [...cpu.get(ck) ?? [], info.cpuSec]);
  }
  if (cells.size === 0) {
    console.error(
      `No profiles in ${dir} (compare.ts --prof=${dir} writes them)`,
    );
    Deno.exit(1);
  }
  // The heading and the note are words, not figures: left out of the
  // command shown.
  const command = Deno.args.filter((a) => !/^--(title|note)=/.test(a))
    .map(shellQuote).join(" ");
  const lines = [
    `# ${arg("title") ?? "Where weft's CPU to sync goes"}`,
    "",
    ...await measuredBy(arg("compare")),
    ...(arg("note") ? [arg("note")!, ""] : []),
    `Decoded by \`deno run -A bench/profile_report.ts ${command}\` (Node ${await nodeVersion()} as the tick processor). Each share is`,
    "the median over the runs of the main thread's ticks before the sync,",
    "0.1 ms each; the whole process's CPU to sync is read from /proc (10 ms",
    "ticks) and includes the profiler's own cost and other threads.",
    "",
  ];
  for (const [cell, variants] of [...cells].sort()) {
    const names = [...variants.keys()].sort((a, b) =>
      a === "weft" ? -1 : b === "weft" ? 1 : a.localeCompare(b)
    );
    const keys = new Set<string>();
    for (const runs of variants.values()) {
      for (const r of runs) for (const k of r.by.keys()) keys.add(k);
    }
    const med = (name: string, k: string) =>
      median(variants.get(name)!.map((r) => r.by.get(k) ?? 0));
    const total = (name: string) =>
      median(
        variants.get(name)!.map((r) =>
          [...r.by.values()].reduce((a, b) => a + b, 0)
        ),
      );
    const order = [...keys].sort((a, b) =>
      med(names[0]!, b) - med(names[0]!, a)
    );
    const diff = names.length > 1;
    lines.push(
      `## ${cell}`,
      "",
      `| share (ms) | ${
        names.map((n) => `${n} (${variants.get(n)!.length} runs)`).join(" | ")
      } |${
        diff
          ? ` ${names.slice(1).map((n) => `${names[0]} − ${n}`).join(" | ")} |`
          : ""
      }`,
      `|---|${names.map(() => "---:").join("|")}|${
        diff ? `${names.slice(1).map(() => "---:").join("|")}|` : ""
      }`,
    );
    const row = (label: string, f: (n: string) => number, digits = 1) =>
      `| ${label} | ${names.map((n) => f(n).toFixed(digits)).join(" | ")} |${
        diff
          ? ` ${
            names.slice(1).map((n) => {
              const d = f(names[0]!) - f(n);
              return `${d >= 0 ? "+" : ""}${d.toFixed(digits)}`;
            }).join(" | ")
          } |`
          : ""
      }`;
    lines.push(...order.map((k) => row(k, (n) => med(n, k) / 10)));
    lines.push(
      row("**main thread, all ticks before the sync**", (n) => total(n) / 10),
    );
    lines.push(
      row(
        "*whole process, CPU to sync from /proc*",
        (n) => median(cpu.get(`${cell}\u0000${n}`)!) * 1000,
        0,
      ),
    );
    lines.push("");
    if (diff) {
      // The functions whose time moved most between the first variant and
      // the others, by the nearest weft function on each tick's stack.
      const fns = new Set<string>();
      for (const runs of variants.values()) {
        for (const r of runs) for (const k of r.byFn.keys()) fns.add(k);
      }
      const fmed = (name: string, k: string) =>
        median(variants.get(name)!.map((r) => r.byFn.get(k) ?? 0)) / 10;
      const moved = [...fns].map((k) => ({
        k,
        d: Math.max(
          ...names.slice(1).map((n) =>
            Math.abs(fmed(names[0]!, k) - fmed(n, k))
          ),
        ),
      })).sort((a, b) => b.d - a.d).slice(0, FUNCTIONS_LISTED);
      lines.push(
        `The ${FUNCTIONS_LISTED} functions whose time moved most (ms; each tick to the nearest weft function on its stack, so native work such as a netlink write counts for the function that made it; a function the optimizer inlined counts for its caller):`,
        "",
        `| function | ${names.join(" | ")} | ${
          names.slice(1).map((n) => `${names[0]} − ${n}`).join(" | ")
        } |`,
        `|---|${names.map(() => "---:").join("|")}|${
          names.slice(1).map(() => "---:").join("|")
        }|`,
        ...moved.map(({ k }) =>
          `| ${k} | ${names.map((n) => fmed(n, k).toFixed(1)).join(" | ")} | ${
            names.slice(1).map((n) => {
              const d = fmed(names[0]!, k) - fmed(n, k);
              return `${d >= 0 ? "+" : ""}${d.toFixed(1)}`;
            }).join(" | ")
          } |`
        ),
        "",
      );
    }
  }
  const text = lines.join("\n");
  console.log(text);
  const out = arg("out");
  if (out) await Deno.writeTextFile(out, text);
}

/** The compare run's header: machine, commit, time and command. */
async function measuredBy(file: string | undefined): Promise<string[]> {
  if (file === undefined) return [];
  const r = JSON.parse(await Deno.readTextFile(file)) as {
    machine: string;
    commit: string;
    started: string;
    finished: string;
    args: string[];
  };
  return [
    `Machine: ${r.machine}. weft at ${r.commit}. Profiled ${
      r.started.slice(0, 16).replace("T", " ")
    }–${r.finished.slice(11, 16)} UTC by \`deno run -A bench/compare.ts ${
      r.args.map(shellQuote).join(" ")
    }\`.`,
    "",
  ];
}

/** `a` as a shell word. */
function shellQuote(a: string): string {
  return /[\s'"$`\\]/.test(a) ? `'${a.replaceAll("'", `'\\''`)}'` : a;
}

async function nodeVersion(): Promise<string> {
  const out = await new Deno.Command("node", { args: ["--version"] }).output();
  return new TextDecoder().decode(out.stdout).trim();
}

if (import.meta.main) await main();
