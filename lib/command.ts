/**
 * Running an external program to completion with optional stdin and a
 * deadline. The agent runs iptables and nft through it, the CNI plugin its
 * delegates, the tests `ip netns exec`. A program that outlives its
 * deadline is killed (SIGKILL) and reported as timed out, so one hung
 * command (an `iptables-restore` waiting for the xtables lock, a stuck
 * delegate) cannot freeze its caller.
 *
 * @module
 */

/** Output of a finished command. */
export interface CommandOutput {
  /** Exit code; 124 when killed at the deadline (like timeout(1)). */
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  /** Whether the command was killed because it passed its deadline. */
  readonly timedOut?: boolean;
  /** Whether the command was killed because its caller was stopping. */
  readonly aborted?: boolean;
}

/**
 * Runs a command to completion; never throws on a non-zero exit. An
 * aborted `signal` kills the command at once (shutdown never waits on it).
 */
export type CommandRunner = (
  cmd: readonly string[],
  stdin?: string,
  signal?: AbortSignal,
) => Promise<CommandOutput>;

/** Options of {@linkcode commandRunner}. */
export interface CommandRunnerOptions {
  /** Prepended to every command (tests: `["ip", "netns", "exec", ns]`). */
  readonly prefix?: readonly string[];
  /** Milliseconds before the command is killed; default 60 000. */
  readonly timeoutMs?: number;
  /** Environment of the child; default: inherited. */
  readonly env?: Record<string, string>;
  /** Whether `env` replaces the inherited environment; default false. */
  readonly clearEnv?: boolean;
}

/** Exit code reported for a command killed at its deadline. */
export const TIMED_OUT = 124;

/** Options of one {@linkcode runCommand} call. */
export interface RunOptions extends CommandRunnerOptions {
  /** Written to the command's stdin, which is closed after it. */
  readonly stdin?: string;
  /** Kills the command when aborted (reported as `aborted`, code 124). */
  readonly signal?: AbortSignal;
}

/**
 * Runs `cmd` to completion, killing it at the deadline.
 *
 * @example
 * ```ts
 * const out = await runCommand(["nft", "-f", "-"], { stdin: "flush ruleset\n" });
 * ```
 */
export async function runCommand(
  cmd: readonly string[],
  opts: RunOptions = {},
): Promise<CommandOutput> {
  const [program, ...args] = [...(opts.prefix ?? []), ...cmd];
  if (program === undefined) throw new Error("Cannot run an empty command");
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const child = new Deno.Command(program, {
    args,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    ...(opts.env ? { env: opts.env } : {}),
    ...(opts.clearEnv ? { clearEnv: true } : {}),
  }).spawn();
  let timedOut = false;
  let aborted = false;
  const kill = () => {
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
  };
  const timer = setTimeout(() => {
    timedOut = true;
    kill();
  }, timeoutMs);
  const onAbort = () => {
    aborted = true;
    kill();
  };
  if (opts.signal?.aborted) onAbort();
  else opts.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    if (opts.stdin !== undefined) {
      const w = child.stdin.getWriter();
      // A child that exits without reading its stdin closes the pipe.
      await w.write(new TextEncoder().encode(opts.stdin)).catch(() => {});
      await w.close().catch(() => {});
    }
    const out = await child.output();
    const dec = new TextDecoder();
    const stderr = dec.decode(out.stderr);
    if (!timedOut && !aborted) {
      return {
        code: out.code,
        stdout: dec.decode(out.stdout),
        stderr,
      };
    }
    const why = timedOut
      ? `killed after its deadline of ${timeoutMs} ms`
      : "killed: stopping";
    return {
      code: TIMED_OUT,
      stdout: dec.decode(out.stdout),
      stderr: `${stderr}${stderr ? "\n" : ""}${why}`,
      ...(timedOut ? { timedOut } : { aborted }),
    };
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener("abort", onAbort);
  }
}

/**
 * A {@linkcode CommandRunner} over {@linkcode runCommand}, with options
 * fixed for every command it runs.
 *
 * @example
 * ```ts
 * const run = commandRunner({ timeoutMs: 5_000 });
 * const out = await run(["iptables-save", "-t", "nat"]);
 * ```
 */
export function commandRunner(opts: CommandRunnerOptions = {}): CommandRunner {
  return (cmd, stdin, signal) =>
    runCommand(cmd, {
      ...opts,
      ...(stdin !== undefined && { stdin }),
      ...(signal !== undefined && { signal }),
    });
}

/**
 * This process may not run a program, or read a variable, that a
 * configured command needs (`--allow-run`, `--allow-env`): restarting
 * cannot fix it, so weft exits 2 on it, as on a flag naming a file outside
 * its permissions.
 */
export class RunPermissionError extends Error {
  override readonly name = "RunPermissionError";
}
