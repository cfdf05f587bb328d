/**
 * Benchmark (not a test): weft beside upstream flanneld, one
 * after the other, against the same real kube-apiserver holding N
 * realistic Node objects annotated as flannel vxlan nodes.
 *
 * Each agent runs alone in a fresh network namespace (`eth0` on a bridge
 * in a fresh hub namespace, `198.18.0.1/15`, default route via
 * `198.18.0.254`) with the same flags: `--kube-subnet-mgr
 * --kubeconfig-file --net-config-path --subnet-file --iface=eth0
 * --ip-masq=false`, `NODE_NAME=bench-self`. weft is `deno run <the
 * agent's permissions> main.ts`.
 *
 * How each figure is taken, the same way for both agents:
 * - API server path and bytes: the kubeconfig says
 *   `https://127.0.0.1:6443`; inside the agent's namespace that port is a
 *   TCP relay owned by this process (its listening socket is created on a
 *   thread moved into the namespace with setns(2)), which forwards to the
 *   apiserver on the host loopback and counts bytes in each direction.
 *   TLS passes through, so the count is what crossed the wire: TLS
 *   records of gzip-compressed or plain JSON as the apiserver chose.
 * - cold sync: from just before the process is spawned to the moment all
 *   N−1 routes are on `flannel.1` (timestamps from an `ip monitor route`
 *   running in the namespace; a route dump every second backs it up), then
 *   confirmed by dumping neighbours and FDB entries (both agents add them
 *   before the route).
 * - CPU seconds to sync: utime + stime of the agent process
 *   (`/proc/<pid>/stat`) at that moment; RSS: `VmRSS` of the agent
 *   process (for weft, the deno process) 2 s after the sync.
 * - convergence: a new Node is POSTed and the time until its route shows
 *   up in `ip monitor route`; p50 and p99 over the additions.
 * - floors: `ip -batch` + `bridge -batch` for the same N−1 peers in a
 *   fresh namespace, and, for reference, a paginated LIST of the nodes
 *   (`limit=500`, read and parsed) by this process.
 *
 * Run: `deno run -A bench/compare.ts [--weft=<checkout>] [--logs=<dir>]
 * [--out=<dir>] [N...]` (default 100 1000 5000; results go to
 * bench/results/ unless `--out` says otherwise);
 * `--from=bench/results/compare.json` re-renders saved figures.
 * Writes bench/results/compare.md and compare.svg. Needs root and the
 * servers built by `.ci/build_servers.sh`.
 *
 * @module
 */
import { joinOnBridge, Netns, run } from "../tests/_netns.ts";
import { KubeServers } from "../tests/servers/kube.ts";
import { serverBinary } from "../tests/servers/paths.ts";
import { agentPermissions } from "../tests/_cluster.ts";
import { inNetns } from "../ffi/_native.ts";
import { libs } from "../ffi/libnl.ts";
import { openNetlink } from "../ffi/netlink.ts";
import { NUD_PERMANENT } from "../ffi/types.ts";
import { realisticNode } from "./kube.ts";
import { type FloorPeer, ipBatchFloor } from "./_floor.ts";
import { machine, percentile, readProc } from "./_stats.ts";

const P = "flannel.alpha.coreos.com";
const NET_CONF =
  '{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}';
const SELF = "bench-self";
const SELF_SUBNET = "10.0.1.0/24";
const API_PORT = 6443;
const ROOT = new URL("../", import.meta.url).pathname;

/** The agents compared. */
export type Agent = "flanneld" | "weft";

/** What one agent run measured. */
export interface AgentResult {
  readonly agent: Agent;
  readonly n: number;
  /** Process start to all N−1 peers programmed, ms. */
  readonly syncMs: number;
  /** Process start to its first connection to the API server, ms. */
  readonly firstConnMs: number;
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
}

/** One N: both agents and the floors. */
export interface CompareRow {
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

/** Options of {@linkcode benchCompare}. */
export interface CompareOptions {
  /** New nodes added, one at a time, per agent and N. Default 60. */
  readonly additions?: number;
  /** Progress lines. Default: nothing. */
  readonly progress?: (line: string) => void;
  /** Give up on a cold sync after this long, ms. Default 180 000. */
  readonly syncTimeoutMs?: number;
  /**
   * Directory of the weft checkout whose `main.ts` runs. Default: this
   * repository. (A clean `git archive` snapshot keeps other people's
   * uncommitted edits out of a measurement.)
   */
  readonly weftRoot?: string;
  /** If set, each agent's log is kept there as `<agent>-<N>.log`. */
  readonly logDir?: string;
}

// ---- cluster content -------------------------------------------------------

/** Peer i's public IP: 198.19.<hi>.<lo> (inside 198.18.0.0/15). */
function publicIp(i: number): string {
  return `198.19.${(i >> 8) & 255}.${i & 255}`;
}

/** Peer i's VTEP MAC, unique per node as real ones are. */
function vtepMac(i: number): string {
  const h = (b: number) => (b & 255).toString(16).padStart(2, "0");
  return `0a:42:00:${h(i >> 16)}:${h(i >> 8)}:${h(i)}`;
}

/**
 * A realistic flannel vxlan Node (bench/kube.ts) with a public IP in
 * 198.18.0.0/15 and a unique VTEP MAC.
 */
function peerNode(i: number): Record<string, unknown> {
  const node = realisticNode(i) as {
    metadata: { annotations: Record<string, string> };
  };
  node.metadata.annotations[`${P}/public-ip`] = publicIp(i);
  node.metadata.annotations[`${P}/backend-data`] = JSON.stringify({
    VNI: 1,
    VtepMAC: vtepMac(i),
  });
  return node as unknown as Record<string, unknown>;
}

function floorPeer(i: number): FloorPeer {
  const node = peerNode(i) as { spec: { podCIDR: string } };
  return { subnet: node.spec.podCIDR, mac: vtepMac(i), vtep: publicIp(i) };
}

/** The agent's own node, as kubelet registers it: no flannel annotations. */
function selfNode(): Record<string, unknown> {
  const node = realisticNode(65000) as {
    metadata: Record<string, unknown>;
    spec: Record<string, unknown>;
  };
  return {
    ...node,
    metadata: {
      name: SELF,
      labels: node.metadata.labels,
      // kubelet's own annotations, none of flannel's. (flanneld v0.28.9
      // panics on a Node with no annotations at all.)
      annotations: {
        "kubeadm.alpha.kubernetes.io/cri-socket":
          "unix:///run/containerd/containerd.sock",
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
      },
    },
    spec: { podCIDR: SELF_SUBNET, podCIDRs: [SELF_SUBNET] },
  };
}

/** Creates peer nodes `from..to-1` (24 requests in flight). */
async function populate(k: KubeServers, from: number, to: number) {
  let next = from;
  const worker = async () => {
    while (next < to) await k.createNode(peerNode(next++));
  };
  await Promise.all(Array.from({ length: 24 }, worker));
}

/** Fetches every node with `limit=500` pages; returns ms and bytes. */
async function timeList(
  k: KubeServers,
): Promise<{ ms: number; bytes: number }> {
  const t0 = performance.now();
  let bytes = 0;
  let cont = "";
  do {
    const r = await k.request<
      { items: unknown[]; metadata: { continue?: string } }
    >(
      "GET",
      `/api/v1/nodes?limit=500${
        cont ? `&continue=${encodeURIComponent(cont)}` : ""
      }`,
    );
    if (r.status !== 200) throw new Error(`LIST answered ${r.status}`);
    bytes += JSON.stringify(r.body).length;
    cont = r.body.metadata.continue ?? "";
  } while (cont !== "");
  return { ms: performance.now() - t0, bytes };
}

// ---- the relay into the agent's namespace ---------------------------------

/**
 * A TCP relay listening on 127.0.0.1:`port` inside a namespace and
 * forwarding to the host's 127.0.0.1:`target`, counting bytes.
 */
class CountingRelay implements AsyncDisposable {
  rx = 0;
  tx = 0;
  /** performance.now() of the first connection, if any. */
  firstConnAt: number | undefined;
  readonly #listener: Deno.TcpListener;
  readonly #conns = new Set<Deno.Conn>();
  readonly #loop: Promise<void>;

  constructor(netnsPath: string, port: number, target: number) {
    // Deno creates the socket synchronously on this thread, so it belongs
    // to the namespace the thread is in during the call.
    this.#listener = inNetns(
      libs(),
      netnsPath,
      () => Deno.listen({ hostname: "127.0.0.1", port }),
    );
    this.#loop = this.#accept(target);
  }

  async #accept(target: number): Promise<void> {
    for (;;) {
      let c: Deno.TcpConn;
      try {
        c = await this.#listener.accept();
      } catch {
        return;
      }
      this.firstConnAt ??= performance.now();
      this.#serve(c, target).catch(() => {});
    }
  }

  async #serve(client: Deno.TcpConn, target: number): Promise<void> {
    const up = await Deno.connect({ hostname: "127.0.0.1", port: target });
    this.#conns.add(client).add(up);
    const pump = async (
      from: Deno.Conn,
      to: Deno.Conn,
      count: (n: number) => void,
    ) => {
      const buf = new Uint8Array(256 * 1024);
      try {
        for (;;) {
          const n = await from.read(buf);
          if (n === null) break;
          count(n);
          for (let off = 0; off < n;) {
            off += await to.write(buf.subarray(off, n));
          }
        }
      } catch {
        // Closed under us.
      }
    };
    await Promise.race([
      pump(up, client, (n) => this.rx += n),
      pump(client, up, (n) => this.tx += n),
    ]);
    for (const c of [client, up]) {
      if (this.#conns.delete(c)) {
        try {
          c.close();
        } catch {
          // Already closed.
        }
      }
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#listener.close();
    for (const c of this.#conns) {
      try {
        c.close();
      } catch {
        // Already closed.
      }
    }
    this.#conns.clear();
    await this.#loop;
  }
}

// ---- watching the agent's kernel ------------------------------------------

/** `ip monitor route` in a namespace: when each flannel.1 route appeared. */
class RouteMonitor implements AsyncDisposable {
  /** dst → performance.now() when first seen. */
  readonly seen = new Map<string, number>();
  readonly #child: Deno.ChildProcess;
  readonly #done: Promise<void>;
  readonly #waiters = new Map<string, () => void>();

  constructor(ns: Netns) {
    this.#child = new Deno.Command("ip", {
      args: ["-n", ns.name, "monitor", "route"],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    this.#done = this.#read();
  }

  async #read(): Promise<void> {
    let rest = "";
    const dec = new TextDecoder();
    for await (const chunk of this.#child.stdout) {
      const now = performance.now();
      rest += dec.decode(chunk, { stream: true });
      const lines = rest.split("\n");
      rest = lines.pop()!;
      for (const line of lines) {
        const m = /^(\d+\.\d+\.\d+\.\d+\/\d+) via \S+ dev flannel\.1/.exec(
          line,
        );
        if (!m) continue;
        const dst = m[1]!;
        if (!this.seen.has(dst)) this.seen.set(dst, now);
        this.#waiters.get(dst)?.();
      }
    }
  }

  /** Resolves with the time `dst` was first seen, or undefined on timeout. */
  wait(dst: string, timeoutMs: number): Promise<number | undefined> {
    const at = this.seen.get(dst);
    if (at !== undefined) return Promise.resolve(at);
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.#waiters.delete(dst);
        resolve(undefined);
      }, timeoutMs);
      this.#waiters.set(dst, () => {
        clearTimeout(t);
        this.#waiters.delete(dst);
        resolve(this.seen.get(dst));
      });
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.#child.kill("SIGTERM");
    } catch {
      // Already gone.
    }
    await this.#child.status;
    await this.#done.catch(() => {});
  }
}

/** CPU seconds (utime + stime) and VmRSS bytes of a process. */
async function procStats(
  pid: number,
): Promise<{ cpuSec: number; rss: number }> {
  const stat = await readProc(`/proc/${pid}/stat`);
  // Fields after the command name, which may hold spaces: state is 3rd.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(f[11]) + Number(f[12]); // utime, stime
  const status = await readProc(`/proc/${pid}/status`);
  const kb = Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? NaN);
  return { cpuSec: ticks / 100, rss: kb * 1024 };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- one agent run -------------------------------------------------------------

interface RunContext {
  readonly k: KubeServers;
  readonly dir: string;
  readonly kubeconfig: string;
  readonly netConf: string;
  readonly flanneld: string;
  readonly weftMain: string;
  readonly logDir: string | undefined;
  readonly additions: number;
  readonly syncTimeoutMs: number;
  readonly progress: (line: string) => void;
}

function agentCommand(agent: Agent, ctx: RunContext, dir: string): string[] {
  const flags = [
    "--kube-subnet-mgr",
    `--kubeconfig-file=${ctx.kubeconfig}`,
    `--net-config-path=${ctx.netConf}`,
    `--subnet-file=${dir}/subnet.env`,
    "--iface=eth0",
    "--ip-masq=false",
  ];
  if (agent === "flanneld") return [ctx.flanneld, ...flags];
  return [
    Deno.execPath(),
    "run",
    ...agentPermissions(dir, [`127.0.0.1:${API_PORT}`], 0, [ctx.dir]),
    ctx.weftMain,
    ...flags,
  ];
}

async function resetSelf(k: KubeServers): Promise<void> {
  const r = await k.request("DELETE", `/api/v1/nodes/${SELF}`);
  if (r.status !== 200 && r.status !== 404) {
    throw new Error(`DELETE node ${SELF}: ${r.status}`);
  }
  await k.createNode(selfNode());
}

async function runAgent(
  agent: Agent,
  n: number,
  ctx: RunContext,
): Promise<AgentResult> {
  const { k } = ctx;
  const want = n - 1;
  await resetSelf(k);
  await using hub = await Netns.create("cmp-hub");
  await using ns = await Netns.create(`cmp-${agent}`);
  await joinOnBridge(hub, [ns], ["198.18.0.1/15"]);
  await hub.ip("addr", "add", "198.18.0.254/15", "dev", "br0");
  await ns.ip("route", "add", "default", "via", "198.18.0.254");
  const dir = await Deno.makeTempDir({ prefix: `weft-cmp-${agent}-` });
  await using relay = new CountingRelay(ns.path, API_PORT, k.port);
  await using mon = new RouteMonitor(ns);
  using nl = openNetlink({ netns: ns.path });
  const log = `${dir}/agent.log`;
  const cmd = agentCommand(agent, ctx, dir);

  const t0 = performance.now();
  const child = new Deno.Command("sh", {
    args: [
      "-c",
      'exec ip netns exec "$NS" "$@" >"$LOG" 2>&1',
      "sh",
      ...cmd,
    ],
    env: { NS: ns.name, LOG: log, NODE_NAME: SELF },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let exited = false;
  child.status.then(() => exited = true);
  const pid = child.pid;
  const fail = async (why: string) => {
    const text = await Deno.readTextFile(log).catch(() => "");
    return new Error(
      `${agent} at N=${n}: ${why}\n${text.split("\n").slice(-30).join("\n")}`,
    );
  };

  try {
    // Cold sync.
    let syncAt: number | undefined;
    let firstRouteAt = NaN;
    let stats: { cpuSec: number; rss: number } | undefined;
    let rx = 0, tx = 0;
    let lastDump = 0;
    while (syncAt === undefined) {
      if (exited) throw await fail("exited before the sync");
      if (performance.now() - t0 > ctx.syncTimeoutMs) {
        throw await fail(
          `no sync in ${ctx.syncTimeoutMs} ms (${mon.seen.size} routes seen)`,
        );
      }
      await sleep(20);
      let routes = mon.seen.size;
      const now = performance.now();
      if (routes < want && now - lastDump >= 1000) {
        lastDump = now;
        const dev = nl.linkByName("flannel.1");
        if (dev) {
          routes = nl.routeList({ family: 4 }).filter((r) =>
            r.index === dev.index
          ).length;
        }
      }
      if (routes < want) continue;
      const at = performance.now();
      const s = await procStats(pid);
      const [r0, t0b] = [relay.rx, relay.tx];
      const dev = nl.linkByName("flannel.1")!;
      const neighs = nl.neighList(dev.index, 4).filter((x) =>
        (x.state & NUD_PERMANENT) !== 0
      ).length;
      const fdbs = nl.fdbList(dev.index).length;
      if (neighs < want || fdbs < want) {
        continue;
      }
      // The monitor's time if it saw every route, else this poll's.
      const times = [...mon.seen.values()];
      syncAt = mon.seen.size >= want ? Math.max(...times) : at;
      firstRouteAt = times.length > 0 ? Math.min(...times) : at;
      stats = s;
      rx = r0;
      tx = t0b;
    }
    const syncMs = syncAt - t0;
    ctx.progress(
      `  ${agent} N=${n}: synced in ${
        syncMs.toFixed(0)
      } ms (API connection at ${
        ((relay.firstConnAt ?? NaN) - t0).toFixed(0)
      } ms, first route at ${(firstRouteAt - t0).toFixed(0)} ms), CPU ${
        stats!.cpuSec.toFixed(2)
      } s, ${(rx / 2 ** 20).toFixed(1)} MiB from the API server`,
    );
    await sleep(2000);
    const { rss } = await procStats(pid);

    // Convergence of new nodes, one at a time.
    const conv: number[] = [];
    let timeouts = 0;
    for (let a = 0; a < ctx.additions; a++) {
      const i = 50_000 + a;
      const node = peerNode(i) as { spec: { podCIDR: string } };
      const t = performance.now();
      await k.createNode(node as unknown as Record<string, unknown>);
      const at = await mon.wait(node.spec.podCIDR, 15_000);
      if (at === undefined) timeouts++;
      else conv.push(at - t);
      if (exited) throw await fail("exited during the additions");
    }
    const rssEnd = (await procStats(pid)).rss;
    ctx.progress(
      `  ${agent} N=${n}: convergence p50 ${
        percentile(conv, 50).toFixed(1)
      } ms, p99 ${percentile(conv, 99).toFixed(1)} ms, RSS ${
        (rss / 2 ** 20).toFixed(1)
      } MiB, at the end ${(rssEnd / 2 ** 20).toFixed(1)} MiB`,
    );
    return {
      agent,
      n,
      syncMs,
      firstConnMs: (relay.firstConnAt ?? NaN) - t0,
      firstRouteMs: firstRouteAt - t0,
      cpuSec: stats!.cpuSec,
      rss,
      rssEnd,
      rxBytes: rx,
      txBytes: tx,
      convergenceMs: conv,
      convergenceTimeouts: timeouts,
    };
  } finally {
    try {
      child.kill("SIGTERM");
    } catch {
      // Already gone.
    }
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // Already gone.
      }
    }, 10_000);
    await child.status;
    clearTimeout(timer);
    if (ctx.logDir) {
      await Deno.mkdir(ctx.logDir, { recursive: true });
      await Deno.copyFile(log, `${ctx.logDir}/${agent}-${n}.log`).catch(
        () => {},
      );
    }
    await Promise.all(
      Array.from({ length: ctx.additions }, async (_, a) => {
        const name = (peerNode(50_000 + a) as { metadata: { name: string } })
          .metadata.name;
        await k.request("DELETE", `/api/v1/nodes/${name}`);
      }),
    );
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

// ---- the benchmark ----------------------------------------------------------

/** Whether the servers and flanneld this benchmark needs are built. */
export async function compareAvailable(): Promise<boolean> {
  return (await serverBinary("flanneld")) !== undefined &&
    (await serverBinary("kube-apiserver")) !== undefined &&
    (await serverBinary("etcd")) !== undefined;
}

/**
 * Runs flanneld and weft at each N (ascending; the cluster grows between
 * sizes) against one fresh control plane.
 */
export async function benchCompare(
  ns: number[] = [100, 1000, 5000],
  opts: CompareOptions = {},
): Promise<CompareRow[]> {
  const progress = opts.progress ?? (() => {});
  const flanneld = await serverBinary("flanneld");
  if (!flanneld) {
    throw new Error("flanneld is missing: run .ci/build_servers.sh");
  }
  const weftMain = `${opts.weftRoot ?? ROOT}/main.ts`.replace(/\/\/+/g, "/");
  // Compile weft's modules once so the first run does not pay for it.
  await run([Deno.execPath(), "cache", weftMain]);
  await using k = await KubeServers.start();
  const dir = await Deno.makeTempDir({ prefix: "weft-cmp-" });
  try {
    const ctx: RunContext = {
      k,
      dir,
      kubeconfig: await k.writeKubeconfig(`${dir}/kubeconfig`, {
        server: `https://127.0.0.1:${API_PORT}`,
        token: k.adminToken,
      }),
      netConf: `${dir}/net-conf.json`,
      flanneld,
      weftMain,
      logDir: opts.logDir,
      additions: opts.additions ?? 60,
      syncTimeoutMs: opts.syncTimeoutMs ?? 180_000,
      progress,
    };
    await Deno.writeTextFile(ctx.netConf, NET_CONF);
    const rows: CompareRow[] = [];
    let have = 0;
    for (const [idx, n] of [...ns].sort((a, b) => a - b).entries()) {
      const t0 = performance.now();
      await populate(k, have, n - 1);
      have = n - 1;
      progress(
        `N=${n}: ${n - 1} peer nodes + ${SELF} in the API server (created in ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s)`,
      );
      const list = await timeList(k); // also warms the apiserver
      const floorMs = await ipBatchFloor(
        Array.from({ length: n - 1 }, (_, i) => floorPeer(i)),
      );
      progress(
        `  floors: ip -batch ${floorMs.toFixed(0)} ms, LIST ${
          list.ms.toFixed(0)
        } ms (${(list.bytes / 2 ** 20).toFixed(1)} MiB)`,
      );
      // Alternate who goes first, so neither always meets a colder server.
      const order: Agent[] = idx % 2 === 0
        ? ["flanneld", "weft"]
        : ["weft", "flanneld"];
      const res: Partial<Record<Agent, AgentResult>> = {};
      for (const agent of order) res[agent] = await runAgent(agent, n, ctx);
      rows.push({
        n,
        floorMs,
        listMs: list.ms,
        listBytes: list.bytes,
        flanneld: res.flanneld!,
        weft: res.weft!,
      });
    }
    return rows;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

// ---- output ------------------------------------------------------------------

const mib = (b: number) => (b / 2 ** 20).toFixed(1);
const ms = (x: number) => x >= 100 ? x.toFixed(0) : x.toFixed(1);
const verdict = (ok: boolean) => ok ? "met" : "**missed**";

/** The rows as markdown: one table of figures, one of targets. */
export function formatCompare(rows: CompareRow[]): string {
  const lines = [
    "| N nodes | agent | cold sync (ms) | ÷ ip -batch floor | start → API conn → 1st route (ms) | CPU to sync (s) | RSS +2 s / at end (MiB) | from API server (MiB) | convergence p50 (ms) | convergence p99 (ms) |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    for (const a of [r.flanneld, r.weft]) {
      const to = a.convergenceTimeouts > 0
        ? ` (${a.convergenceTimeouts} timed out)`
        : "";
      lines.push(
        `| ${r.n} | ${a.agent} | ${ms(a.syncMs)} | ${
          (a.syncMs / r.floorMs).toFixed(2)
        } | ${a.firstConnMs.toFixed(0)} → ${a.firstRouteMs.toFixed(0)} | ${
          a.cpuSec.toFixed(2)
        } | ${mib(a.rss)} / ${mib(a.rssEnd)} | ${mib(a.rxBytes)} | ${
          ms(percentile(a.convergenceMs, 50))
        } | ${ms(percentile(a.convergenceMs, 99))}${to} |`,
      );
    }
    lines.push(
      `| ${r.n} | *floor* | ${ms(r.floorMs)} (ip -batch); LIST alone ${
        ms(r.listMs)
      } | 1.00 | | | ${mib(r.listBytes)} (LIST JSON) | | |`,
    );
    lines.push(
      `| ${r.n} | **weft ÷ flanneld** | **${
        (r.weft.syncMs / r.flanneld.syncMs).toFixed(2)
      }** | | | ${(r.weft.cpuSec / r.flanneld.cpuSec).toFixed(2)} | **${
        (r.weft.rss / r.flanneld.rss).toFixed(2)
      }** / ${(r.weft.rssEnd / r.flanneld.rssEnd).toFixed(2)} | ${
        (r.weft.rxBytes / r.flanneld.rxBytes).toFixed(2)
      } | ${
        (percentile(r.weft.convergenceMs, 50) /
          percentile(r.flanneld.convergenceMs, 50)).toFixed(2)
      } | **${
        (percentile(r.weft.convergenceMs, 99) /
          percentile(r.flanneld.convergenceMs, 99)).toFixed(2)
      }** |`,
    );
  }
  lines.push("", "| N | target | weft | flanneld / floor | verdict |");
  lines.push("|---:|---|---:|---:|---|");
  for (const r of rows) {
    const w = r.weft, f = r.flanneld;
    const wp99 = percentile(w.convergenceMs, 99);
    const fp99 = percentile(f.convergenceMs, 99);
    lines.push(
      `| ${r.n} | cold sync ≤ flanneld | ${ms(w.syncMs)} ms | ${
        ms(f.syncMs)
      } ms | ${verdict(w.syncMs <= f.syncMs)} |`,
      `| ${r.n} | cold sync ≤ 1.5x ip -batch floor | ${ms(w.syncMs)} ms | ${
        ms(r.floorMs)
      } ms (x${(w.syncMs / r.floorMs).toFixed(2)}) | ${
        verdict(w.syncMs <= 1.5 * r.floorMs)
      } |`,
      `| ${r.n} | convergence p99 ≤ flanneld | ${ms(wp99)} ms | ${
        ms(fp99)
      } ms | ${verdict(wp99 <= fp99 && w.convergenceTimeouts === 0)} |`,
    );
    if (r.n >= 5000) {
      lines.push(
        `| ${r.n} | RSS ≤ 0.7x flanneld | ${mib(w.rss)} MiB | ${
          mib(f.rss)
        } MiB (x${(w.rss / f.rss).toFixed(2)}) | ${
          verdict(w.rss <= 0.7 * f.rss)
        } |`,
      );
    }
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
  const pw = 300, ph = 240, top = 84, left = 50, gap = 40;
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
            esc(`${s.label}, N=${r.n}: ${fmtTick(v)} ${p.unit}`)
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
        }" text-anchor="middle">N=${r.n}</text>`,
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

- One kube-apiserver (etcd >= 3.5, watch cache on) holds N−1 realistic peer
  Nodes (labels, kubelet annotations, capacity, conditions, addresses, node
  info, 30 images with long names: about 13 kB of JSON each) annotated as
  flannel vxlan nodes, plus the agent's own Node \`bench-self\`
  (\`10.0.1.0/24\`, recreated before every run). Network \`10.0.0.0/8\`,
  SubnetLen 24.
- Each agent runs alone, flanneld and weft one after the other (who goes
  first alternates with N), in a fresh namespace with \`eth0\` on a bridge
  (\`198.18.0.1/15\`, default route), same flags: \`--kube-subnet-mgr
  --kubeconfig-file --net-config-path --subnet-file --iface=eth0
  --ip-masq=false\`, \`NODE_NAME=bench-self\`. weft is \`deno run\` with the
  agent's own permission set.
- Cold sync: process spawn → the last of the N−1 routes on \`flannel.1\`
  (timestamps from \`ip monitor route\` in the namespace), confirmed by
  dumping neighbours and FDB entries. CPU: utime+stime of the agent at
  that moment. RSS: VmRSS of the agent process (for weft the deno
  process) 2 s after the sync, and again after the additions.
- Bytes from the API server: the kubeconfig points at 127.0.0.1:6443 in
  the agent's namespace, a TCP relay of the benchmark process (socket made
  in the namespace with setns) that forwards to the apiserver and counts
  bytes; TLS passes through, so this is what crossed the wire (both agents
  get gzip-compressed LISTs).
- Convergence: a new Node is POSTed, then the time until its route shows
  up in \`ip monitor route\`; one at a time.
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

async function flanneldVersion(): Promise<string> {
  const bin = await serverBinary("flanneld");
  if (!bin) return "(missing)";
  const out = await run([bin, "--version"]);
  return (out.stdout + out.stderr).trim() || "(unknown)";
}

if (import.meta.main) {
  const out = Deno.args.find((a) => a.startsWith("--out="));
  const from = Deno.args.find((a) => a.startsWith("--from="));
  if (from) {
    // Re-renders saved figures (compare.json) without running anything.
    const saved = JSON.parse(
      await Deno.readTextFile(from.slice("--from=".length)),
    ) as { rows: CompareRow[] };
    console.log(
      await writeCompareResults(saved.rows, out?.slice("--out=".length)),
    );
    Deno.exit(0);
  }
  const weft = Deno.args.find((a) => a.startsWith("--weft="));
  const logs = Deno.args.find((a) => a.startsWith("--logs="));
  const sizes = Deno.args.filter((a) => !a.startsWith("--")).map(Number);
  const rows = await benchCompare(
    sizes.length > 0 ? sizes : [100, 1000, 5000],
    {
      progress: (l) => console.error(l),
      ...(weft && { weftRoot: weft.slice("--weft=".length) }),
      ...(logs && { logDir: logs.slice("--logs=".length) }),
    },
  );
  console.log(await writeCompareResults(rows, out?.slice("--out=".length)));
}
