/**
 * Small helpers shared by the benchmarks: order statistics, this process's
 * CPU time, a quiet log sink, and the machine description printed with
 * every table.
 *
 * @module
 */
import process from "node:process";
import { setLogSink } from "../lib/log.ts";

/** The p-th percentile (0..100, nearest rank) of `xs`; NaN when empty. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))]!;
}

/** The median of `xs`. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** CPU time (user + system) this process used so far, milliseconds. */
export function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/**
 * Drops info lines of weft's logger (the reconciler logs every pass that
 * changes something) and keeps warnings and errors. Returns a restore
 * function.
 */
export function quietLogs(): () => void {
  const prev = setLogSink((line) => {
    if (!line.startsWith("I")) console.error(line);
  });
  return () => setLogSink(prev);
}

/**
 * Reads a file under /proc through `cat`: Deno 2 wants `--allow-all` for
 * /proc itself, and `deno task bench` runs with narrower permissions.
 */
export async function readProc(path: string): Promise<string> {
  const out = await new Deno.Command("cat", {
    args: [path],
    stdout: "piped",
    stderr: "null",
  }).output();
  if (!out.success) throw new Error(`Cannot read ${path}`);
  return new TextDecoder().decode(out.stdout);
}

/** `nproc`, CPU model and kernel, for the header of result files. */
export async function machine(): Promise<string> {
  const cpuinfo = await readProc("/proc/cpuinfo").catch(() => "");
  const model = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown";
  const version = (await readProc("/proc/version").catch(() => ""))
    .split(" ").slice(0, 3).join(" ");
  return `${navigator.hardwareConcurrency} CPU(s), ${model}, ${version}, Deno ${Deno.version.deno}`;
}
