/**
 * The machinery of the fault suite (tests/e2e/faults_test.ts), shared by
 * its etcd-mode and Kubernetes-mode runs: durations from the environment,
 * polling, per-row checks, and {@linkcode FaultRun}, which wraps a
 * namespace cluster with what every phase needs (agents whose exit is
 * noticed, their logs, background pings, the kernel state each node must
 * have, rows of the table) and writes the table at the end.
 *
 * @module
 */
import {
  type Agent,
  agentPermissions,
  type Cluster,
  type ClusterNode,
  type EtcdLease,
  SWITCH_IP,
} from "../_cluster.ts";
import { run } from "../_netns.ts";
import {
  expectedPeers,
  inCidr,
  overlayProblems,
  readOverlay,
  V4,
  V6,
} from "./kernel.ts";
import {
  type FaultRow,
  type Outcome,
  outcomeText,
  tally,
  toConsole,
  toMarkdown,
} from "./report.ts";
import { BackgroundPing, type Loss } from "./traffic.ts";
import { type FaultProxy, type ProxyMode, rateStats } from "./proxy.ts";
import { fmtMs } from "./report.ts";
import { describeCommit } from "../_commit.ts";

/** The repository root, with a trailing slash. */
export const ROOT = new URL("../..", import.meta.url).pathname;

export function envNumber(name: string, dflt: number): number {
  const v = Number(Deno.env.get(name) ?? "");
  return Number.isFinite(v) && v > 0 ? v : dflt;
}

export const OUTAGE_S = envNumber("WEFT_FAULT_OUTAGE_S", 15);
export const PROXY_S = envNumber("WEFT_FAULT_PROXY_S", 6);
export const RESULTS = Deno.env.get("WEFT_FAULT_RESULTS") ??
  `${ROOT}bench/results/faults.md`;
/** `WEFT_FAULT_ONLY=drift,corpus` runs only those phases (for debugging). */
export const ONLY = Deno.env.get("WEFT_FAULT_ONLY")
  ? new Set(Deno.env.get("WEFT_FAULT_ONLY")!.split(","))
  : undefined;
export const NETWORK = "10.244.0.0/16";
/** The IPv6 cluster network of the dual-stack phases. */
export const NETWORK6 = "fc00::/48";
/** Drift must be repaired this fast (rtnetlink-driven, not the 10 s timer). */
export const REPAIR_LIMIT_MS = 2000;
/** Requests per second the proxied agent may send during an error storm. */
export const STORM_PEAK_LIMIT = 5;
/**
 * The agent's peak RSS through the proxy faults, in MiB: about three times
 * what it holds in steady state, far below what a body read without bound
 * costs (ten 100 MB answers held 1.1 GiB).
 */
export const PEAK_RSS_LIMIT_MIB = 256;

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Base64 of a string's UTF-8 bytes, or of bytes. */
export function b64(v: string | Uint8Array): string {
  const bytes = typeof v === "string" ? enc.encode(v) : v;
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** Polls `fn` until true; the time it took, or undefined on timeout. */
export async function waitUntil(
  fn: () => boolean | Promise<boolean>,
  timeoutMs: number,
  stepMs = 20,
): Promise<number | undefined> {
  const start = performance.now();
  while (true) {
    if (await fn()) return performance.now() - start;
    if (performance.now() - start > timeoutMs) return undefined;
    await sleep(stepMs);
  }
}

/** Collects failed expectations of one row. */
export class Checks {
  readonly failures: string[] = [];
  readonly notes: string[] = [];
  that(ok: boolean, why: string): boolean {
    if (!ok) this.failures.push(why);
    return ok;
  }
  note(n: string): void {
    this.notes.push(n);
  }
  outcome(): Outcome {
    if (this.failures.length > 0) {
      return {
        kind: "fail",
        why: [...this.failures, ...this.notes.map((n) => `(${n})`)].join("; "),
      };
    }
    return this.notes.length > 0
      ? { kind: "pass", note: this.notes.join("; ") }
      : { kind: "pass" };
  }
}

/** `3 of 412` (lost of sent), or a dash. */
export function lossText(l: Loss | undefined): string {
  return l === undefined ? "—" : `${l.lost} of ${l.transmitted}`;
}

/** A process started by the suite itself (config and flag cases). */
export interface Spawned {
  readonly child: Deno.ChildProcess;
  readonly logPath: string;
  readonly started: number;
  exit?: Deno.CommandStatus;
}

/**
 * A cluster under test plus the suite's bookkeeping. Subclasses say where
 * the leases come from (etcd keys or Node objects).
 */
export abstract class FaultRun {
  readonly c: Cluster;
  readonly rows: FaultRow[];
  readonly #exits = new Map<Agent, Deno.CommandStatus>();

  constructor(c: Cluster, rows: FaultRow[]) {
    this.c = c;
    this.rows = rows;
  }

  /** Every node's lease as the store has it now. */
  abstract leases(): Promise<EtcdLease[]>;

  node(i: number): ClusterNode {
    return this.c.nodes[i - 1]!;
  }

  nodes(...i: number[]): ClusterNode[] {
    return i.map((n) => this.node(n));
  }

  /** Starts a node's agent and remembers when it exits. */
  async start(
    n: ClusterNode,
    extra: string[] = [],
    hosts: string[] = [],
    env: Record<string, string> = {},
    launcher: string[] = [],
  ): Promise<Agent> {
    const a = await this.c.startAgent(n, extra, hosts, env, launcher);
    a.child.status.then((st) => this.#exits.set(a, st));
    return a;
  }

  /**
   * Stops a node's agent with `signal` and waits for it; an agent still
   * running 10 s later is killed and the table gets a failed row for it
   * (SIGTERM must stop weft at any moment, startup included).
   */
  async stop(
    n: ClusterNode,
    signal: Deno.Signal = "SIGTERM",
  ): Promise<Deno.CommandStatus | undefined> {
    const a = n.agent;
    if (!a) return undefined;
    let forced = false;
    const timer = setTimeout(() => {
      forced = true;
      try {
        a.child.kill("SIGKILL");
      } catch { /* exited meanwhile */ }
    }, 10_000);
    const st = await this.c.stopAgent(n, signal);
    clearTimeout(timer);
    if (forced) {
      const log = (await this.logSince(n, 0)).trimEnd().split("\n").slice(-3);
      this.row({
        section: "agent lifecycle",
        fault: `${signal} to ${n.name}'s agent`,
        expected: "exits 0 within 10 s, dataplane left in place",
        lost: "—",
        recovery: "—",
        outcome: {
          kind: "fail",
          why: `still running 10 s after ${signal}, killed; log ends: ${
            log.join(" / ")
          }`,
        },
      });
    }
    return st;
  }

  /**
   * Kills a node's agent (SIGKILL) while `pings` run, restarts it, waits
   * for it to be ready and for `nodes` to converge, with zero loss;
   * failures go to `chk`. The losses of the pings (stopped here) and the
   * time to ready.
   */
  async killAndRestart(
    n: ClusterNode,
    nodes: ClusterNode[],
    chk: Checks,
    pings: BackgroundPing[],
  ): Promise<{ losses: Loss[]; ready: number | undefined }> {
    await sleep(500);
    const st = await this.c.stopAgent(n, "SIGKILL");
    chk.that(st?.signal === "SIGKILL", `agent not killed: ${st?.code}`);
    await this.start(n);
    const ready = await this.c.waitReady(n, 20_000).catch((e) => {
      chk.that(false, String(e.message));
      return undefined;
    });
    const conv = await this.converged(nodes, 5000);
    chk.that(conv !== undefined, "cluster did not converge");
    await sleep(500);
    const losses = await Promise.all(pings.map((p) => p.stop()));
    for (const l of losses) {
      chk.that(l.lost === 0, `${l.lost} lost (${l.summary})`);
    }
    return { losses, ready };
  }

  /**
   * Injects kernel drift on `n` while `pings` run and times its repair
   * (until `n` matches `leases` again, default etcd's now): within
   * {@linkcode REPAIR_LIMIT_MS}, and echoes lost only while the entry was
   * wrong. Failures go to `chk`; the pings are stopped here.
   */
  async timeRepair(
    n: ClusterNode,
    inject: () => Promise<unknown>,
    chk: Checks,
    pings: BackgroundPing[],
    leases?: readonly EtcdLease[],
  ): Promise<{ losses: Loss[]; repair: number | undefined }> {
    await sleep(300);
    const t0 = performance.now();
    await inject();
    const injected = performance.now() - t0;
    const ms = await this.converged([n], 5000, leases);
    const repair = ms === undefined ? undefined : ms + injected;
    await sleep(300);
    const losses = await Promise.all(pings.map((p) => p.stop()));
    if (chk.that(repair !== undefined, "not repaired within 5 s")) {
      chk.that(
        repair! <= REPAIR_LIMIT_MS,
        `repaired in ${fmtMs(repair)} > ${REPAIR_LIMIT_MS} ms`,
      );
      const bound = Math.ceil(repair! / 50) + 2;
      for (const l of losses) {
        chk.that(
          l.lost <= bound,
          `${l.lost} lost, more than the repair window allows (${bound})`,
        );
      }
    } else {
      chk.note((await this.problems([n], leases)).join(", "));
    }
    return { losses, repair };
  }

  /**
   * Starts the nodes' agents and pods, waits for convergence and checks
   * that node1's pod reaches node2's over each of `families`; closes the
   * cluster if any of it fails. `start` starts an agent (default as
   * {@linkcode start} does).
   */
  async boot(
    nodes: ClusterNode[],
    families: (4 | 6)[] = [4],
    start: (n: ClusterNode) => Promise<unknown> = (n) => this.start(n),
  ): Promise<void> {
    try {
      for (const n of nodes) await start(n);
      for (const n of nodes) await this.c.waitReady(n);
      for (const n of nodes) await this.c.addPod(n, 1);
      if ((await this.converged(nodes, 20_000)) === undefined) {
        throw new Error(
          `Cluster did not converge: ${
            (await this.problems(nodes)).join("; ")
          }`,
        );
      }
      const to = this.c.pod("node2-pod1");
      for (const f of families) {
        const dst = f === 4 ? to.ip : to.ip6;
        if (dst === undefined) throw new Error(`Pod has no IPv${f} address`);
        // The first IPv6 echoes can wait for neighbour discovery.
        const warm = await this.c.pingRun("node1-pod1", dst, {
          count: 3,
          interval: 0.2,
          deadline: 8,
        });
        if (warm.received === 0) {
          throw new Error(`No traffic between pods (${dst}): ${warm.text}`);
        }
      }
    } catch (e) {
      await this.close();
      throw e;
    }
  }

  /** Tears the cluster down (and whatever a subclass started with it). */
  async close(): Promise<void> {
    await this.c.close();
  }

  /** Whether the node's agent is running. */
  async alive(n: ClusterNode): Promise<boolean> {
    const a = n.agent;
    if (!a) return false;
    await sleep(0);
    return !this.#exits.has(a);
  }

  /**
   * The agent's peak resident memory so far (VmHWM), in MiB; undefined
   * when it is not running. The agent is the spawned process itself
   * (`ip netns exec` and the detached `sh -c exec` both exec into it).
   */
  async peakRssMiB(n: ClusterNode): Promise<number | undefined> {
    const pid = n.agent?.child.pid;
    if (pid === undefined) return undefined;
    // Through cat: Deno lets only --allow-all read another process's /proc
    // files, and the suite runs with a permission list.
    const status = (await run(["cat", `/proc/${pid}/status`])).stdout;
    const kb = status.match(/^VmHWM:\s+(\d+) kB$/m)?.[1];
    return kb === undefined ? undefined : Number(kb) / 1024;
  }

  async logSize(n: ClusterNode): Promise<number> {
    try {
      return (await Deno.stat(`${n.dir}/weft.log`)).size;
    } catch {
      return 0;
    }
  }

  async logSince(n: ClusterNode, offset: number): Promise<string> {
    const bytes = await Deno.readFile(`${n.dir}/weft.log`);
    return dec.decode(bytes.subarray(offset));
  }

  async httpCode(n: ClusterNode, path: string): Promise<string> {
    const r = await n.ns.tryExec([
      "curl",
      "-s",
      "-m",
      "2",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `http://127.0.0.1:${n.healthPort}${path}`,
    ]);
    return r.stdout;
  }

  /**
   * Background ping between two pods (ids), 20 per second, to the target
   * pod's IPv4 address or (`family` 6) its IPv6 one.
   */
  ping(
    from = "node1-pod1",
    to = "node2-pod1",
    family: 4 | 6 = 4,
  ): BackgroundPing {
    const pod = this.c.pod(to);
    const dst = family === 4 ? pod.ip : pod.ip6;
    if (dst === undefined) throw new Error(`Pod "${to}" has no IPv6 address`);
    return BackgroundPing.start(this.c.pod(from).ns.name, dst);
  }

  /**
   * The problems of each node against `leases` (default: etcd's now), on
   * both overlays when the cluster is dual-stack.
   */
  async problems(
    nodes: ClusterNode[],
    leases?: readonly EtcdLease[],
  ): Promise<string[]> {
    const ls = leases ?? await this.leases();
    const out: string[] = [];
    const overlays = this.c.opts.ipv6 ? [V4, V6] : [V4];
    await Promise.all(nodes.flatMap((n) =>
      overlays.map(async (o) => {
        const own = ls.find((l) => l.value.PublicIP === n.ip);
        const ownSubnet = o.family === 4 ? own?.subnet : own?.ipv6Subnet;
        const p = overlayProblems(
          await readOverlay(n.ns, o),
          expectedPeers(ls, o.family === 4 ? n.ip : n.ip6, o.family),
          {
            ...(ownSubnet !== undefined && {
              ownAddr: `${ownSubnet.split("/")[0]}/${
                o.family === 4 ? 32 : 128
              }`,
            }),
            inNetwork: (ip) => inCidr(ip, o.family === 4 ? NETWORK : NETWORK6),
            device: o.device,
          },
        );
        out.push(...p.map((x) => `${n.name}: ${x}`));
      })
    ));
    return out;
  }

  /** Waits until the nodes match the leases; ms, or undefined. */
  converged(
    nodes: ClusterNode[],
    timeoutMs: number,
    leases?: readonly EtcdLease[],
  ): Promise<number | undefined> {
    return waitUntil(
      async () => (await this.problems(nodes, leases)).length === 0,
      timeoutMs,
    );
  }

  /** Whether the node routes `subnet` (either family) over the overlay. */
  async hasRoute(n: ClusterNode, subnet: string): Promise<boolean> {
    const o = subnet.includes(":") ? V6 : V4;
    const r = await n.ns.json<{ dst: string; dev: string }[]>(
      `-${o.family}`,
      "route",
      "show",
      subnet,
    );
    return r.some((x) => x.dst === subnet && x.dev === o.device);
  }

  /** Time until every node has (or, `present` false, lacks) a route. */
  routeOnAll(
    nodes: ClusterNode[],
    subnet: string,
    present: boolean,
    timeoutMs: number,
  ): Promise<number | undefined> {
    return waitUntil(async () => {
      for (const n of nodes) {
        if ((await this.hasRoute(n, subnet)) !== present) return false;
      }
      return true;
    }, timeoutMs);
  }

  row(r: FaultRow): void {
    this.rows.push(r);
    console.log(
      `  ${r.section} | ${r.fault} | lost ${r.lost} | ${r.recovery} | ${
        outcomeText(r.outcome)
      }`,
    );
  }

  /** Runs a phase as a test step; its failed rows fail the step. */
  async phase(
    t: Deno.TestContext,
    section: string,
    fn: () => Promise<void>,
  ): Promise<void> {
    const before = this.rows.length;
    await t.step(section, async () => {
      try {
        await fn();
      } catch (e) {
        this.row({
          section,
          fault: "(phase stopped by an error)",
          expected: "—",
          lost: "—",
          recovery: "—",
          outcome: {
            kind: "fail",
            why: String((e as Error)?.message ?? e).slice(0, 400),
          },
        });
        throw e;
      }
      const failed = this.rows.slice(before).filter((r) =>
        r.outcome.kind === "fail"
      );
      if (failed.length > 0) {
        throw new Error(
          failed.map((r) => `${r.fault}: ${outcomeText(r.outcome)}`).join(
            "\n",
          ),
        );
      }
    });
  }

  /** Spawns weft with its permissions inside a node's namespace. */
  async spawn(
    n: ClusterNode,
    args: readonly string[],
    logPath: string,
    env: Record<string, string> = {},
    hosts: string[] = [`${SWITCH_IP}:2379`],
  ): Promise<Spawned> {
    const log = await Deno.open(logPath, { create: true, write: true });
    const child = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        n.ns.name,
        Deno.execPath(),
        "run",
        ...agentPermissions(n.dir, hosts, 0),
        `${ROOT}main.ts`,
        ...args,
      ],
      env: { NODE_NAME: n.name, ...env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      cwd: ROOT,
    }).spawn();
    const s: Spawned = { child, logPath, started: performance.now() };
    // stdout and stderr both go to the log (usage goes to stderr), written
    // as they come so the suite can read the log while the agent runs.
    const pump = async (r: ReadableStream<Uint8Array>) => {
      try {
        for await (const chunk of r) log.writeSync(chunk);
      } catch { /* the child went away */ }
    };
    Promise.all([pump(child.stdout), pump(child.stderr)]).finally(() =>
      log.close()
    );
    child.status.then((st) => s.exit = st);
    return s;
  }

  /**
   * Holds each proxy fault for {@linkcode PROXY_S} while pods ping: a peer
   * added during the fault must reach the node once the proxy behaves,
   * and its removal too; the agent must live and back off.
   */
  async proxyFaults(o: ProxyFaultsOptions): Promise<void> {
    const n = o.node;
    for (const f of o.faults) {
      const chk = new Checks();
      if (f.args) {
        // Flags for this fault: the agent starts with them before it.
        await o.restart(f.args);
        chk.that(
          await this.c.waitReady(n, 30_000).then(() => true, () => false),
          `${n.name} not ready with ${f.args.join(" ")}`,
        );
      }
      const p = this.ping(...o.ping);
      await sleep(300);
      const from = Date.now();
      await o.proxy.set(f.mode);
      if (f.restart) await o.restart();
      await sleep(1000);
      const probe = await o.probe();
      await sleep(PROXY_S * 1000 - 1000);
      const during = await this.hasRoute(n, probe.subnet);
      chk.that(
        await this.alive(n),
        `${n.name}'s agent exited during the fault`,
      );
      // An answer that never ends (a 100 MB line, a trickle) must cost a
      // bounded buffer, not memory per retry.
      const peak = await this.peakRssMiB(n);
      chk.that(
        peak !== undefined && peak <= PEAK_RSS_LIMIT_MIB,
        `${n.name}'s agent peaked at ${
          peak?.toFixed(0)
        } MiB RSS (limit ${PEAK_RSS_LIMIT_MIB})`,
      );
      const to = Date.now();
      await o.proxy.set({ kind: "pass" });
      const t0 = performance.now();
      // The clients back off up to 30 s between tries (as client-go's
      // reflector does), then list: recovery may take that long.
      const recovered = await this.routeOnAll([n], probe.subnet, true, 45_000);
      let ready: number | undefined;
      if (f.restart) {
        ready = await this.c.waitReady(n, 30_000).then(
          () => performance.now() - t0,
          () => undefined,
        );
        chk.that(ready !== undefined, `${n.name} not ready after the fault`);
      }
      await probe.remove();
      const gone = await this.routeOnAll([n], probe.subnet, false, 15_000);
      const loss = await p.stop();
      const stats = rateStats(await o.proxy.records(), from, to);
      chk.that(await this.alive(n), `${n.name}'s agent exited`);
      chk.that(
        recovered !== undefined,
        `a peer added during the fault never reached ${n.name}`,
      );
      chk.that(gone !== undefined, "the probe peer's removal was not applied");
      chk.that(loss.lost === 0, `${loss.lost} lost`);
      chk.that(
        stats.peakPerSecond <= STORM_PEAK_LIMIT,
        `${stats.peakPerSecond} requests in one second (limit ${STORM_PEAK_LIMIT})`,
      );
      chk.note(
        `${stats.requests} requests in ${PROXY_S} s, peak ${stats.peakPerSecond}/s; agent peak RSS ${
          peak?.toFixed(0)
        } MiB`,
      );
      if (f.mode.kind === "status" && f.mode.retryAfterS !== undefined) {
        // Every request is answered 429 here. A request that arrives
        // within IN_FLIGHT_MS of an answer was on its way before the agent
        // could read that answer (another caller's); any later one must
        // wait Retry-After (a little slack for timer granularity). The
        // storm limit above bounds how many can arrive in flight.
        const wait = f.mode.retryAfterS * 1000 - 50;
        const gaps = stats.gapsAfterAnswerMs;
        const early = gaps.filter((g) => g >= IN_FLIGHT_MS && g < wait);
        const waited = gaps.filter((g) => g >= wait);
        const inFlight = gaps.length - early.length - waited.length;
        const honoured = early.length === 0 && waited.length > 0;
        const text = early.length > 0
          ? `Retry-After not honoured (a request ${
            fmtMs(Math.min(...early))
          } after an answer)`
          : waited.length === 0
          ? "no request followed a 429 answer: Retry-After not exercised"
          : `Retry-After honoured (${waited.length} request(s) ${
            fmtMs(Math.min(...waited))
          } or more after an answer, ${inFlight} already in flight)`;
        if (o.retryAfterRequired && !honoured) chk.that(false, text);
        else chk.note(text);
      }
      if (f.idleTimeoutS !== undefined) {
        // The agent's watchdog must give up on the silent stream and open
        // the watch again, more than once within the fault.
        const watches = (await o.proxy.records()).filter((r) =>
          r.at >= from && r.at < to &&
          (r.path.startsWith("/v3/watch") || /[?&]watch=(1|true)/.test(r.path))
        ).length;
        chk.that(
          watches >= 2,
          `${watches} watch request(s) in ${PROXY_S} s of silence: the ${f.idleTimeoutS} s idle timeout never reopened the watch`,
        );
        chk.note(`${watches} watches opened during the silence`);
      }
      chk.note(
        `peer added during the fault applied ${
          during ? "during it" : "only after it"
        }`,
      );
      this.row({
        section: o.section,
        fault: `${f.name}, ${PROXY_S} s`,
        expected:
          `no crash; peak RSS ≤ ${PEAK_RSS_LIMIT_MIB} MiB; retries backed off (≤ ${STORM_PEAK_LIMIT} requests/s${
            o.retryAfterRequired ? ", Retry-After honoured" : ""
          }); change made during the fault applied once the proxy behaves`,
        lost: lossText(loss),
        recovery: f.restart ? `ready ${fmtMs(ready)} after` : fmtMs(recovered),
        outcome: chk.outcome(),
      });
    }
  }
}

/** One misbehaviour of the proxy, held for {@linkcode PROXY_S}. */
export interface ProxyFault {
  readonly name: string;
  readonly mode: ProxyMode;
  /** Restart the agent as the fault begins. */
  readonly restart?: boolean;
  /** Agent flags for this fault: the agent is restarted with them first. */
  readonly args?: readonly string[];
  /**
   * The idle timeout `args` give the agent, s (shorter than the fault):
   * the watch must be opened again within the fault.
   */
  readonly idleTimeoutS?: number;
}

/** A silent watch held longer than the agent's idle timeout. */
export const SILENT_PAST_IDLE: ProxyFault = {
  name:
    "watches silent longer than the idle timeout (agent started with --watch-idle-timeout=2)",
  mode: { kind: "silent" },
  args: ["--watch-idle-timeout=2"],
  idleTimeoutS: 2,
};

/**
 * A request arriving this soon after an answer was sent before its client
 * read that answer (ms, loopback).
 */
const IN_FLIGHT_MS = 50;

/** The faults every API gets: cut streams, silence, 429, 500s. */
export const STANDARD_FAULTS: readonly ProxyFault[] = [
  {
    name: "responses cut mid-stream (64 bytes in)",
    mode: { kind: "cut", afterBytes: 64 },
  },
  { name: "watches that send nothing", mode: { kind: "silent" } },
  {
    name: "429 with Retry-After: 2",
    mode: { kind: "status", status: 429, retryAfterS: 2 },
  },
  { name: "500 storm", mode: { kind: "status", status: 500 } },
  {
    name: "persistent 401 Unauthorized",
    mode: { kind: "status", status: 401 },
  },
  { name: "persistent 403 Forbidden", mode: { kind: "status", status: 403 } },
  {
    name: "200 with JSON of the wrong shape",
    mode: { kind: "body", body: "garbage" },
  },
  { name: "200 with an HTML error page", mode: { kind: "body", body: "html" } },
  { name: "200 with a 100 MB line", mode: { kind: "body", body: "huge" } },
  {
    name: "200 trickling one byte every 500 ms",
    mode: { kind: "body", body: "trickle" },
  },
];

/** Options of {@linkcode FaultRun.proxyFaults}. */
export interface ProxyFaultsOptions {
  readonly section: string;
  readonly proxy: FaultProxy;
  /** The node whose agent talks through the proxy. */
  readonly node: ClusterNode;
  /** Pods pinging each other meanwhile: [from, to]. */
  readonly ping: [string, string];
  readonly faults: readonly ProxyFault[];
  /** Restarts the node's agent (for faults with `restart` or `args`). */
  readonly restart: (args?: readonly string[]) => Promise<void>;
  /** Adds a valid fake peer; its subnet, and how to remove it. */
  readonly probe: () => Promise<{ subnet: string; remove(): Promise<void> }>;
  /** Whether a `Retry-After` must be honoured (Kubernetes) or is noted only. */
  readonly retryAfterRequired: boolean;
}

/** A phase of a fault test: its `WEFT_FAULT_ONLY` key, step name, body. */
export type Phase = readonly [key: string, name: string, () => Promise<void>];

/**
 * A need for tests/_gate.ts: why a test whose phases have these keys does
 * not run, when `WEFT_FAULT_ONLY` selects none of them.
 */
export function onlyNeed(keys: readonly string[]): () => string | undefined {
  return () =>
    ONLY && !keys.some((k) => ONLY!.has(k))
      ? `WEFT_FAULT_ONLY selects none of ${keys.join(", ")}`
      : undefined;
}

/** Runs the phases `WEFT_FAULT_ONLY` selects (all by default) as steps. */
export async function runPhases(
  t: Deno.TestContext,
  s: FaultRun,
  phases: readonly Phase[],
): Promise<void> {
  for (const [key, name, fn] of phases) {
    if (ONLY && !ONLY.has(key)) continue;
    await s.phase(t, name, fn);
  }
}

/** Writes the table to {@linkcode RESULTS} and prints it. */
export async function writeReport(rows: readonly FaultRow[]): Promise<void> {
  const t = tally(rows);
  const rev = await describeCommit();
  const uname = await run(["uname", "-r"]);
  const md = [
    "# Fault and bad-input suite",
    "",
    `Written by \`deno task test:e2e\` (tests/e2e/faults_test.ts) on ${
      new Date().toISOString()
    }: weft at ${rev}, Linux ${uname.stdout.trim()}, ` +
    `Deno ${Deno.version.deno}.`,
    "",
    "Namespace clusters (etcd mode; etcd mode dual-stack; host-gw; vxlan " +
    "DirectRouting; Kubernetes mode with a real kube-apiserver in the " +
    "switch namespace, single and dual stack) run weft as one process per " +
    "node; a pod on node1 pings a pod on another node every 50 ms (over " +
    "IPv4 and IPv6 on the dual-stack clusters) while each fault is " +
    'injected. "Packets lost" counts echoes without reply, the one in ' +
    "flight when ping stopped excepted. Wall-clock steps are made in one " +
    "agent with libfaketime (`FAKETIME_TIMESTAMP_FILE`, monotonic clock " +
    "untouched), never on the host.",
    "",
    `Durations: API outage ${OUTAGE_S} s (\`WEFT_FAULT_OUTAGE_S\`, default 15; ` +
    "set `WEFT_FAULT_OUTAGE_S=60` for the one-minute outage), each proxy " +
    `fault ${PROXY_S} s (\`WEFT_FAULT_PROXY_S\`, default 6). Drift must be ` +
    `repaired within ${REPAIR_LIMIT_MS} ms.`,
    "",
    `Totals: ${t.pass} pass, ${t.fail} fail.`,
    "",
    toMarkdown(rows),
  ].join("\n");
  try {
    await Deno.mkdir(RESULTS.replace(/\/[^/]*$/, ""), { recursive: true });
    await Deno.writeTextFile(RESULTS, md);
  } catch (e) {
    console.error(`Cannot write ${RESULTS}: ${(e as Error).message}`);
  }
  console.log(`\n${toConsole(rows)}\n`);
  console.log(
    `fault suite: ${t.pass} pass, ${t.fail} fail; table in ${RESULTS}`,
  );
}
