/**
 * Test harness for kernel tests: throwaway network namespaces, commands run
 * inside them, JSON read back from iproute2, and `kernelTest`: a
 * `gatedTest` (`_gate.ts`) that needs root.
 *
 * Every namespace is named `weft-t-<tag>-<random>` so leftovers are easy to
 * find (`ip netns list | grep weft-t-`) and `cleanupStale()` removes them.
 *
 * @module
 */
import { type CommandOutput, runCommand } from "../lib/command.ts";
import { gatedTest, ROOT } from "./_gate.ts";

/** Whether this process runs as root. */
export function isRoot(): boolean {
  return Deno.uid() === 0;
}

/**
 * Declares a test that needs root and network namespaces: ignored with
 * the reason without root, failing under `CI=true` (see `_gate.ts`).
 */
export function kernelTest(
  name: string,
  fn: (t: Deno.TestContext) => Promise<void> | void,
): void {
  gatedTest({ name, needs: [ROOT], fn });
}

/** Output of a finished command. */
export type Output = CommandOutput;

/**
 * Runs a command and returns its output; never throws on exit status.
 * It is killed after `timeoutMs` (default 60 s: runCommand's).
 */
export function run(
  cmd: string[],
  stdin?: string,
  timeoutMs?: number,
): Promise<Output> {
  return runCommand(cmd, {
    ...(stdin !== undefined && { stdin }),
    ...(timeoutMs !== undefined && { timeoutMs }),
  });
}

/**
 * Stops a child process: `signal`, then SIGKILL if it is still there after
 * `graceMs`; resolves once it has exited.
 */
export async function halt(
  child: Deno.ChildProcess,
  signal: Deno.Signal,
  graceMs: number,
): Promise<void> {
  const kill = (s: Deno.Signal) => {
    try {
      child.kill(s);
    } catch { /* already exited */ }
  };
  kill(signal);
  const timer = setTimeout(() => kill("SIGKILL"), graceMs);
  await child.status;
  clearTimeout(timer);
}

/** Runs a command and returns stdout, throwing with stderr on failure. */
export async function sh(cmd: string[], stdin?: string): Promise<string> {
  const out = await run(cmd, stdin);
  if (out.code !== 0) {
    throw new Error(
      `Command "${cmd.join(" ")}" exited ${out.code}: ${out.stderr.trim()}`,
    );
  }
  return out.stdout;
}

/** A network namespace owned by a test; deleted on dispose. */
export class Netns implements AsyncDisposable {
  readonly name: string;
  #closed = false;

  protected constructor(name: string) {
    this.name = name;
  }

  /** Creates a fresh namespace with loopback up. */
  static async create(tag: string): Promise<Netns> {
    const rand = crypto.randomUUID().slice(0, 6);
    const ns = new Netns(`weft-t-${tag}-${rand}`);
    await sh(["ip", "netns", "add", ns.name]);
    await ns.ip("link", "set", "lo", "up");
    return ns;
  }

  /** Creates a namespace with an exact name (cluster harnesses). */
  static async named(name: string): Promise<Netns> {
    const ns = new Netns(name);
    await sh(["ip", "netns", "add", name]);
    await ns.ip("link", "set", "lo", "up");
    return ns;
  }

  /** Path of the namespace file, for `setns(2)`. */
  get path(): string {
    return `/run/netns/${this.name}`;
  }

  /** Runs a command inside the namespace and returns stdout. */
  exec(cmd: string[], stdin?: string): Promise<string> {
    return sh(["ip", "netns", "exec", this.name, ...cmd], stdin);
  }

  /** Runs a command inside the namespace; never throws on exit status. */
  tryExec(cmd: string[]): Promise<Output> {
    return run(["ip", "netns", "exec", this.name, ...cmd]);
  }

  /** `ip <args>` inside the namespace. */
  ip(...args: string[]): Promise<string> {
    return sh(["ip", "-n", this.name, ...args]);
  }

  /** `ip -j <args>` (or `bridge -j` when args[0] is "bridge") parsed. */
  async json<T = Record<string, unknown>[]>(...args: string[]): Promise<T> {
    const out = args[0] === "bridge"
      ? await sh(["bridge", "-n", this.name, "-j", ...args.slice(1)])
      : await sh(["ip", "-n", this.name, "-j", ...args]);
    return JSON.parse(out.trim() === "" ? "[]" : out) as T;
  }

  /** Pings `dst` from inside the namespace; true when a reply came back. */
  async ping(dst: string, count = 1, timeoutSeconds = 2): Promise<boolean> {
    const out = await this.tryExec([
      "ping",
      "-c",
      String(count),
      "-W",
      String(timeoutSeconds),
      "-i",
      "0.2",
      dst,
    ]);
    return out.code === 0;
  }

  /** Kills every process in the namespace and deletes it. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const pids = await run(["ip", "netns", "pids", this.name]);
    for (const pid of pids.stdout.split("\n").filter((p) => p !== "")) {
      await run(["kill", "-9", pid]);
    }
    await run(["ip", "netns", "del", this.name]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * Joins namespaces on one L2 segment: a bridge `br0` in `hub`, and a veth
 * pair per node with `eth0` inside the node, addressed `addrs[i]`
 * (`198.18.0.x/24`).
 */
export async function joinOnBridge(
  hub: Netns,
  nodes: Netns[],
  addrs: string[],
): Promise<void> {
  await hub.ip("link", "add", "br0", "type", "bridge");
  await hub.ip("link", "set", "br0", "up");
  for (const [i, node] of nodes.entries()) {
    await plugIntoBridge(hub, node, `p${i}`);
    await node.ip("addr", "add", addrs[i]!, "dev", "eth0");
    await node.ip("link", "set", "eth0", "up");
  }
}

/**
 * Plugs `node` into a bridge of `hub` (`br0` unless named): a veth pair
 * whose end in `node` is `eth0` (left down, without an address) and whose
 * end `port` in `hub` is a bridge port, up.
 */
export async function plugIntoBridge(
  hub: Netns,
  node: Netns,
  port: string,
  bridge = "br0",
): Promise<void> {
  await hub.ip(
    "link",
    "add",
    port,
    "type",
    "veth",
    "peer",
    "name",
    "eth0",
    "netns",
    node.name,
  );
  await hub.ip("link", "set", port, "master", bridge, "up");
}

/** Deletes the namespaces named `<prefix>...` that earlier, crashed runs left, killing what still runs in them. */
export async function cleanupStale(prefix = "weft-t-"): Promise<void> {
  const list = await run(["ip", "netns", "list"]);
  for (const line of list.stdout.split("\n")) {
    const name = line.split(" ")[0];
    if (!name?.startsWith(prefix)) continue;
    // Processes left inside (agents, servers) would keep it alive.
    const pids = await run(["ip", "netns", "pids", name]);
    for (const pid of pids.stdout.split("\n").filter((p) => p)) {
      await run(["kill", "-9", pid]);
    }
    await run(["ip", "netns", "del", name]);
  }
}
