/**
 * The extension backend: no data path of its own, only operator commands
 * run on lease events, with flanneld's keys, variables and stdin.
 *
 * - `PreStartupCommand` runs before the lease is taken; its output
 *   (stdout then stderr, trimmed) is published as the lease's backend data,
 *   a JSON string. It gets no extra variables.
 * - `PostStartupCommand` runs once the lease is ours, with `NETWORK`,
 *   `SUBNET`, `IPV6SUBNET`, `PUBLIC_IP` and `PUBLIC_IPV6`.
 * - `SubnetAddCommand` and `SubnetRemoveCommand` run for each peer lease
 *   of type `extension` that appears, changes or goes, with `SUBNET` and
 *   `PUBLIC_IP` of the peer and the peer's backend data on stdin.
 *
 * Every command gets weft's environment plus those variables, and its
 * stdin ends with a newline, as flanneld passes it. Commands are split and
 * expanded without a shell (command.ts). The start-up commands failing
 * ends the agent, as in flanneld; a peer command failing is logged with
 * its exit status and output and counted
 * (`weft_extension_command_failures_total`), and never holds up another
 * peer: each runs under a deadline, commands for one peer run in order,
 * those for different peers side by side (a few at a time).
 *
 * Running a program named in net-conf.json is arbitrary execution, so the
 * shipped permission list allows none: {@linkcode ExtensionBackend.setup}
 * fails with a {@linkcode RunPermissionError} naming what is missing
 * (deploy/permissions-extension.txt is the list for extension users).
 *
 * @module
 */
import type { NetworkConfig } from "../../subnet/config.ts";
import type { Lease, LeaseAttrs, LeaseEvent } from "../../subnet/lease.ts";
import { formatNet } from "../../lib/ip.ts";
import { logger } from "../../lib/log.ts";
import { metrics } from "../../lib/metrics.ts";
import { fail, ok, type Result } from "../../lib/result.ts";
import {
  type CommandOutput,
  runCommand,
  type RunOptions,
  RunPermissionError,
} from "../../lib/command.ts";
import {
  type Backend,
  backendKey,
  type BackendNetwork,
  type BackendOptions,
  type Underlay,
} from "../backend.ts";
import {
  commandArgv,
  expand,
  referencedNames,
  splitFields,
} from "./command.ts";

const log = logger("extension");

/** The four commands of net-conf.json's Backend object; "" when unset. */
export interface ExtensionConfig {
  readonly PreStartupCommand: string;
  readonly PostStartupCommand: string;
  readonly SubnetAddCommand: string;
  readonly SubnetRemoveCommand: string;
}

type CommandKey = keyof ExtensionConfig;

const KEYS: readonly CommandKey[] = [
  "PreStartupCommand",
  "PostStartupCommand",
  "SubnetAddCommand",
  "SubnetRemoveCommand",
];

/** Variables weft sets for each command (the rest come from its environment). */
const PROVIDED: Readonly<Record<CommandKey, readonly string[]>> = {
  PreStartupCommand: [],
  PostStartupCommand: [
    "NETWORK",
    "SUBNET",
    "IPV6SUBNET",
    "PUBLIC_IP",
    "PUBLIC_IPV6",
  ],
  SubnetAddCommand: ["SUBNET", "PUBLIC_IP"],
  SubnetRemoveCommand: ["SUBNET", "PUBLIC_IP"],
};

/**
 * Reads the commands the way Go's `json.Unmarshal` fills flanneld's
 * struct: keys match case-insensitively, `null` means unset, anything but
 * a string is an error. A command of only white space is refused (flanneld
 * would crash on it).
 */
export function parseExtensionConfig(
  raw: Record<string, unknown>,
): Result<ExtensionConfig> {
  const out: Record<string, string> = {};
  for (const key of KEYS) {
    const read = backendKey(raw, key, "string");
    if (!read.ok) return read;
    const v = read.value ?? "";
    if (v !== "" && splitFields(v).length === 0) {
      return fail(
        `Invalid Backend.${key} ${JSON.stringify(v)}: names no program`,
      );
    }
    out[key] = v;
  }
  return ok(out as unknown as ExtensionConfig);
}

/** Test seams and limits; production uses the defaults. */
export interface ExtensionOptions {
  /** Runs one command; default {@linkcode runCommand}. */
  readonly run?: (
    argv: readonly string[],
    opts: RunOptions,
  ) => Promise<CommandOutput>;
  /** Deadline of each command, milliseconds; default 60 000. */
  readonly timeoutMs?: number;
  /** Peer commands running at once; default 4. */
  readonly parallel?: number;
  /** weft's environment variable `name`; default `Deno.env.get`. */
  readonly getEnv?: (name: string) => string | undefined;
  /** Whether `program` may be run; default: Deno's run permission. */
  readonly mayRun?: (program: string) => boolean;
  /** Whether variable `name` may be read; default: Deno's env permission. */
  readonly mayReadEnv?: (name: string) => boolean;
}

const granted = (d: Deno.PermissionDescriptor) =>
  Deno.permissions.querySync(d).state === "granted";

/** Go's `%s` of flanneld's zero values, for families a lease lacks. */
const NO_SUBNET = "0.0.0.0/0";
const NO_IP = "0.0.0.0";

/**
 * Runs jobs, in order per key and side by side across keys, at most
 * `parallel` at a time: one slow peer's command delays no other peer.
 */
class KeyedQueue {
  readonly #tails = new Map<string, Promise<void>>();
  readonly #waiting: (() => void)[] = [];
  #active = 0;

  constructor(readonly parallel: number) {}

  push(key: string, job: () => Promise<void>): void {
    const next = (this.#tails.get(key) ?? Promise.resolve()).then(() =>
      this.#slot(job)
    );
    this.#tails.set(key, next);
    void next.then(() => {
      if (this.#tails.get(key) === next) this.#tails.delete(key);
    });
  }

  /** Settles when every job pushed so far has run. */
  async idle(): Promise<void> {
    while (this.#tails.size > 0) await Promise.all(this.#tails.values());
  }

  async #slot(job: () => Promise<void>): Promise<void> {
    while (this.#active >= this.parallel) {
      await new Promise<void>((r) => this.#waiting.push(r));
    }
    this.#active++;
    try {
      await job();
    } catch (e) {
      log.error(`Extension command job failed: ${(e as Error).message}`);
    } finally {
      this.#active--;
      this.#waiting.shift()?.();
    }
  }
}

/** The last `n` characters, on one line, for a log message. */
function tail(s: string, n = 400): string {
  const t = s.trim().replaceAll("\n", " | ");
  return t.length > n ? `...${t.slice(-n)}` : t;
}

/** A peer lease's identity for its commands: a repeat runs nothing. */
function fingerprint(l: Lease): string {
  return JSON.stringify([l.subnet, l.attrs.publicIP, l.attrs.backendData]);
}

/** The extension backend (see the module comment). */
export class ExtensionBackend implements Backend {
  readonly type = "extension";
  readonly #config: NetworkConfig;
  readonly #cmds: ExtensionConfig;
  readonly #underlay: Underlay;
  readonly #run: NonNullable<ExtensionOptions["run"]>;
  readonly #timeoutMs: number;
  readonly #getEnv: (name: string) => string | undefined;
  readonly #mayRun: (program: string) => boolean;
  readonly #mayReadEnv: (name: string) => boolean;
  readonly #queue: KeyedQueue;
  /** What SubnetAddCommand last ran for, by peer key. */
  readonly #added = new Map<string, string>();
  #signal: AbortSignal | undefined;
  #data: string | undefined;

  constructor(
    config: NetworkConfig,
    cmds: ExtensionConfig,
    underlay: Underlay,
    opts: ExtensionOptions = {},
  ) {
    this.#config = config;
    this.#cmds = cmds;
    this.#underlay = underlay;
    this.#run = opts.run ?? runCommand;
    this.#timeoutMs = opts.timeoutMs ?? 60_000;
    this.#queue = new KeyedQueue(opts.parallel ?? 4);
    this.#getEnv = opts.getEnv ?? ((name) => {
      try {
        return Deno.env.get(name);
      } catch {
        return undefined;
      }
    });
    this.#mayRun = opts.mayRun ??
      ((command) => granted({ name: "run", command }));
    this.#mayReadEnv = opts.mayReadEnv ??
      ((variable) => granted({ name: "env", variable }));
  }

  /**
   * What this process lacks to run the configured commands: the program
   * of each (when it does not depend on an event's variables) and every
   * variable taken from weft's environment. Empty when nothing is missing.
   */
  permissionGaps(): string[] {
    const gaps: string[] = [];
    for (const key of KEYS) {
      const command = this.#cmds[key];
      if (command === "") continue;
      const provided = PROVIDED[key];
      for (const name of referencedNames(command)) {
        if (provided.includes(name) || this.#mayReadEnv(name)) continue;
        gaps.push(
          `Backend.${key} refers to $${name}, but this weft build has no env permission on "${name}": add it to --allow-env`,
        );
      }
      const first = splitFields(command)[0]!;
      if (referencedNames(first).some((n) => provided.includes(n))) continue;
      const program = expand(first, (n) => this.#getEnv(n) ?? "");
      if (this.#mayRun(program)) continue;
      gaps.push(
        `Backend.${key} runs "${program}", but this weft build has no run permission on "${program}": its --allow-run list (deploy/permissions.txt, baked into the binary) runs no extension command; add the program to --allow-run or use deploy/permissions-extension.txt (docs/backends.md)`,
      );
    }
    return gaps;
  }

  /**
   * Checks the permissions, then runs PreStartupCommand; its output is
   * the backend data {@linkcode prepare} publishes.
   */
  async setup(signal: AbortSignal): Promise<void> {
    this.#signal = signal;
    const gaps = this.permissionGaps();
    if (gaps.length > 0) throw new RunPermissionError(gaps.join("\n"));
    if (this.#cmds.PreStartupCommand === "") {
      log.info("No PreStartupCommand configured");
      return;
    }
    this.#data = await this.#mustRun("PreStartupCommand", {}, "");
  }

  prepare(_previous?: LeaseAttrs): LeaseAttrs {
    const u = this.#underlay;
    return {
      backendType: "extension",
      // flanneld publishes the interface's own addresses here, not
      // --public-ip.
      ...(u.ifaceAddr !== undefined && { publicIP: u.ifaceAddr }),
      ...(u.ifaceV6Addr !== undefined && { publicIPv6: u.ifaceV6Addr }),
      ...(this.#data !== undefined && { backendData: this.#data }),
    };
  }

  start(lease: Lease): BackendNetwork {
    const started = this.#cmds.PostStartupCommand === ""
      ? Promise.resolve(log.info("No PostStartupCommand configured"))
      : this.#mustRun("PostStartupCommand", {
        NETWORK: this.#config.network
          ? formatNet(this.#config.network)
          : NO_SUBNET,
        SUBNET: lease.subnet ?? NO_SUBNET,
        IPV6SUBNET: lease.ipv6Subnet ?? "::/0",
        PUBLIC_IP: lease.attrs.publicIP ?? NO_IP,
        // Go's %s of flanneld's nil *IP6.
        PUBLIC_IPV6: lease.attrs.publicIPv6 ?? "<nil>",
      }, "").then(() => {});
    return {
      mtu: this.#underlay.mtu,
      families: [],
      started,
      onLeases: (events) => this.handle(events),
    };
  }

  /** Queues the peer commands `events` call for. Returns at once. */
  handle(events: readonly LeaseEvent[]): void {
    for (const { type, lease } of events) {
      // The reconciler warns about leases of other types.
      if (lease.attrs.backendType !== "extension") {
        this.#added.delete(lease.key);
        continue;
      }
      const key: CommandKey = type === "added"
        ? "SubnetAddCommand"
        : "SubnetRemoveCommand";
      if (type === "added") {
        const fp = fingerprint(lease);
        if (this.#added.get(lease.key) === fp) continue;
        this.#added.set(lease.key, fp);
      } else {
        this.#added.delete(lease.key);
      }
      if (this.#cmds[key] === "") continue;
      const data = lease.attrs.backendData;
      if (data !== undefined && data !== null && typeof data !== "string") {
        metrics.extensionCommandFailures.inc({ command: key });
        log.error(
          `Not running ${key} for "${lease.key}": its backend data ${
            JSON.stringify(data)
          } is not a JSON string`,
        );
        continue;
      }
      const vars = {
        SUBNET: lease.subnet ?? NO_SUBNET,
        PUBLIC_IP: lease.attrs.publicIP ?? NO_IP,
      };
      this.#queue.push(lease.key, async () => {
        await this.#exec(key, vars, data ?? "", lease.key);
      });
    }
  }

  /** Settles once every queued peer command has run (for tests). */
  idle(): Promise<void> {
    return this.#queue.idle();
  }

  /** Runs a start-up command; its failure ends the agent. */
  async #mustRun(
    key: CommandKey,
    vars: Record<string, string>,
    stdin: string,
  ): Promise<string> {
    const out = await this.#exec(key, vars, stdin);
    if (out === undefined) {
      throw new Error(
        `Backend.${key} "${this.#cmds[key]}" failed (see the error above)`,
      );
    }
    return out;
  }

  /**
   * Runs one command with `vars` added to the environment and `stdin`
   * plus a newline on its stdin. Returns its output (stdout then stderr,
   * trimmed), or undefined after logging and counting a failure.
   */
  async #exec(
    key: CommandKey,
    vars: Record<string, string>,
    stdin: string,
    peer?: string,
  ): Promise<string | undefined> {
    const command = this.#cmds[key];
    const what = `${key} "${command}"${peer ? ` for "${peer}"` : ""}`;
    const argv = commandArgv(command, (n) => vars[n] ?? this.#getEnv(n) ?? "");
    let out: CommandOutput;
    try {
      out = await this.#run(argv!, {
        env: vars,
        stdin: `${stdin}\n`,
        timeoutMs: this.#timeoutMs,
        ...(this.#signal && { signal: this.#signal }),
      });
    } catch (e) {
      out = { code: 127, stdout: "", stderr: (e as Error).message };
    }
    const output = `${out.stdout}${out.stderr}`.trim();
    if (out.aborted) {
      log.info(`${what} killed: stopping`);
      return undefined;
    }
    if (out.code !== 0) {
      metrics.extensionCommandFailures.inc({ command: key });
      log.error(
        `${what} failed: ${
          out.timedOut ? "killed at its deadline" : `exit status ${out.code}`
        }; output: ${tail(output) || "(none)"}`,
      );
      return undefined;
    }
    log.info(`Ran ${what}${output ? `; output: ${tail(output)}` : ""}`);
    return output;
  }
}

/** Creates the extension backend from net-conf.json's Backend object. */
export function createExtensionBackend(
  _nl: unknown,
  config: NetworkConfig,
  underlay: Underlay,
  opts: BackendOptions & ExtensionOptions = {},
): Result<ExtensionBackend> {
  const cmds = parseExtensionConfig(config.backend.raw);
  if (!cmds.ok) return cmds;
  return ok(new ExtensionBackend(config, cmds.value, underlay, opts));
}
