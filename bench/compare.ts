/**
 * Benchmark (not a test): weft beside upstream flanneld, one after the
 * other, against the same real kube-apiserver holding N realistic Node
 * objects annotated as flannel vxlan nodes, and in etcd mode against the
 * same etcd holding N flannel leases.
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
 * - idle CPU: utime + stime over a window after the additions, at one N;
 *   with `--arp-churn`, the benchmark meanwhile flips neighbour entries on
 *   the agent's eth0 between reachable and stale at that rate, as traffic
 *   to peers does on a real node, and weft's full passes are counted.
 * - convergence: a new Node is POSTed and the time until its route shows
 *   up in `ip monitor route`; p50 and p99 over the additions.
 * - floors: `ip -batch` + `bridge -batch` for the same N−1 peers in a
 *   fresh namespace, and, for reference, a paginated LIST of the nodes
 *   (`limit=500`, read and parsed) by this process.
 *
 * Run: `deno run -A bench/compare.ts [--weft=<checkout>] [--logs=<dir>]
 * [--out=<dir>] [--idle=<s>] [--arp-churn=<changes/s>] [--additions=60]
 * [--modes=kube,etcd] [--agents=weft,flanneld] [--tag=<namespace tag>]
 * [N...]`
 * (default N = 0 10 100 1000 5000 in both modes; idle CPU over <s>
 * seconds, default 60, at N=1000; results go to bench/results/ unless
 * `--out` says otherwise);
 * `--from=bench/results/compare.json` re-renders saved figures.
 * Writes bench/results/compare.md and compare.svg (through
 * compare_report.ts, which renders them). Needs root and the
 * servers built by `.ci/build_servers.sh`.
 *
 * @module
 */
import { joinOnBridge, Netns, run } from "../tests/_netns.ts";
import { KubeServers } from "../tests/servers/kube.ts";
import { EtcdServer } from "../tests/servers/etcd.ts";
import { serverBinary } from "../tests/servers/paths.ts";
import { agentPermissions } from "../tests/_cluster.ts";
import { inNetns } from "../ffi/_native.ts";
import { libs } from "../ffi/libnl.ts";
import { openNetlink } from "../ffi/netlink.ts";
import { NUD_PERMANENT } from "../ffi/types.ts";
import { realisticNode } from "./kube.ts";
import { type FloorPeer, ipBatchFloor } from "./_floor.ts";
import { percentile, readProc } from "./_stats.ts";
import {
  type Agent,
  type AgentResult,
  type CompareRow,
  type Mode,
  writeCompareResults,
  writeReadme,
} from "./compare_report.ts";

export type { Agent, AgentResult, CompareRow, Mode };
export {
  compareSvg,
  formatCompare,
  readmeSection,
  writeCompareResults,
} from "./compare_report.ts";

const P = "flannel.alpha.coreos.com";
const NET_CONF =
  '{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}';
const SELF = "bench-self";
const SELF_SUBNET = "10.0.1.0/24";
const API_PORT = 6443;
const ROOT = new URL("../", import.meta.url).pathname;

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
  /** Idle CPU is measured at this N (after the additions). Default 1000. */
  readonly idleAtN?: number;
  /** Length of the idle window, s. Default 60. */
  readonly idleSec?: number;
  /**
   * ARP state changes a second on the agent's eth0 during the idle window,
   * as a real node's traffic to its peers makes them. Default 0.
   */
  readonly arpChurn?: number;
  /**
   * Only these agents run (default both). With one, no row is written and
   * its figures are only in the progress lines: for a size the other
   * agent cannot sync at.
   */
  readonly agents?: Agent[];
  /** Where the leases live. Default kube. */
  readonly mode?: Mode;
  /**
   * Namespace tag: namespaces are `weft-t-<tag>-hub-*` and
   * `weft-t-<tag>-<agent>-*`. Default `cmp`; a run beside another one
   * (an idle measurement outside the shared lock) takes its own.
   */
  readonly nsTag?: string;
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

/** Where the leases live: the API server (kube mode) or etcd. */
interface Store extends AsyncDisposable {
  readonly mode: Mode;
  /** Host port of the server the relay forwards to. */
  readonly port: number;
  /** Port of the relay inside the agent's namespace. */
  readonly relayPort: number;
  /** The agent's flags that name the store. */
  flags(): string[];
  /** Peers `from..to-1` (24 requests in flight). */
  populate(from: number, to: number): Promise<void>;
  /** Before each agent: the agent's own lease starts from scratch. */
  reset(): Promise<void>;
  /** Adds peer `i`; returns its subnet. */
  add(i: number): Promise<string>;
  /** Removes peer `i`. */
  remove(i: number): Promise<void>;
  /** CPU seconds used so far by the server(s) serving the agent. */
  cpuSec(): Promise<number>;
  /**
   * When a watcher of this benchmark, beside the agent's, received peer
   * `i`'s addition (`performance.now()`), if it did: the API server's
   * delivery without the agent.
   */
  deliveredAt(i: number): Promise<number | undefined>;
  /** Reads every lease the way an agent does; ms and bytes. */
  timeList(): Promise<{ ms: number; bytes: number }>;
}

/** Runs `job(i)` for `from..to-1`, 24 at a time. */
async function inParallel(
  from: number,
  to: number,
  job: (i: number) => Promise<unknown>,
): Promise<void> {
  let next = from;
  const worker = async () => {
    while (next < to) await job(next++);
  };
  await Promise.all(Array.from({ length: 24 }, worker));
}

/** Kube mode: Nodes in a kube-apiserver, read through a JSON kubeconfig. */
export class KubeStore implements Store {
  readonly mode = "kube";
  readonly relayPort = API_PORT;
  readonly #k: KubeServers;
  readonly #kubeconfig: string;
  readonly #netConf: string;

  private constructor(k: KubeServers, kubeconfig: string, netConf: string) {
    this.#k = k;
    this.#kubeconfig = kubeconfig;
    this.#netConf = netConf;
  }

  static async start(dir: string): Promise<KubeStore> {
    const k = await KubeServers.start();
    await Deno.writeTextFile(`${dir}/net-conf.json`, NET_CONF);
    return new KubeStore(
      k,
      await jsonKubeconfig(`${dir}/kubeconfig`, k),
      `${dir}/net-conf.json`,
    );
  }

  get port(): number {
    return this.#k.port;
  }

  flags(): string[] {
    return [
      "--kube-subnet-mgr",
      `--kubeconfig-file=${this.#kubeconfig}`,
      `--net-config-path=${this.#netConf}`,
    ];
  }

  populate(from: number, to: number): Promise<void> {
    return inParallel(from, to, (i) => this.#k.createNode(peerNode(i)));
  }

  async reset(): Promise<void> {
    const r = await this.#k.request("DELETE", `/api/v1/nodes/${SELF}`);
    if (r.status !== 200 && r.status !== 404) {
      throw new Error(`DELETE node ${SELF}: ${r.status}`);
    }
    await this.#k.createNode(selfNode());
  }

  async add(i: number): Promise<string> {
    if (!this.#watching) await this.#watch();
    const node = peerNode(i) as { spec: { podCIDR: string } };
    await this.#k.createNode(node as unknown as Record<string, unknown>);
    return node.spec.podCIDR;
  }

  async remove(i: number): Promise<void> {
    const name = (peerNode(i) as { metadata: { name: string } }).metadata.name;
    await this.#k.request("DELETE", `/api/v1/nodes/${name}`);
  }

  /** Node name → when our own watch saw it added. */
  readonly #seen = new Map<string, number>();
  #watching: Promise<void> | undefined;
  readonly #stop = new AbortController();
  #client: Deno.HttpClient | undefined;

  /** Starts (once) a watch on Nodes from now, straight to the server. */
  async #watch(): Promise<void> {
    this.#client ??= Deno.createHttpClient({ caCerts: [this.#k.caPem] });
    const headers = { Authorization: `Bearer ${this.#k.adminToken}` };
    const list = await fetch(`${this.#k.url}/api/v1/nodes?limit=1`, {
      headers,
      client: this.#client,
    });
    const rv =
      ((await list.json()) as { metadata: { resourceVersion: string } })
        .metadata.resourceVersion;
    const res = await fetch(
      `${this.#k.url}/api/v1/nodes?watch=1&resourceVersion=${rv}`,
      { headers, client: this.#client, signal: this.#stop.signal },
    );
    this.#watching = (async () => {
      const dec = new TextDecoder();
      let rest = "";
      try {
        for await (const chunk of res.body!) {
          const now = performance.now();
          rest += dec.decode(chunk, { stream: true });
          const lines = rest.split("\n");
          rest = lines.pop()!;
          for (const line of lines) {
            const ev = JSON.parse(line) as {
              type: string;
              object: { metadata: { name: string } };
            };
            if (ev.type === "ADDED") {
              this.#seen.set(ev.object.metadata.name, now);
            }
          }
        }
      } catch {
        // Stopped, or the stream broke: later additions go unmeasured.
      }
    })();
  }

  async deliveredAt(i: number): Promise<number | undefined> {
    const name = (peerNode(i) as { metadata: { name: string } }).metadata.name;
    for (let waited = 0; waited < 2000; waited += 5) {
      const at = this.#seen.get(name);
      if (at !== undefined) return at;
      await sleep(5);
    }
    return undefined;
  }

  async cpuSec(): Promise<number> {
    let sum = 0;
    for (const pid of [this.#k.pid, this.#k.etcd.pid]) {
      if (pid !== undefined) sum += (await procStats(pid)).cpuSec;
    }
    return sum;
  }

  /** Fetches every node with `limit=500` pages. */
  async timeList(): Promise<{ ms: number; bytes: number }> {
    const t0 = performance.now();
    let bytes = 0;
    let cont = "";
    do {
      const r = await this.#k.request<
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

  async [Symbol.asyncDispose](): Promise<void> {
    this.#stop.abort();
    await this.#watching;
    this.#client?.close();
    await this.#k[Symbol.asyncDispose]();
  }
}

const ETCD_PREFIX = "/coreos.com/network";

/** etcd's lease key of a subnet: `10.0.1.0/24` → `.../subnets/10.0.1.0-24`. */
function subnetKey(subnet: string): string {
  return `${ETCD_PREFIX}/subnets/${subnet.replace("/", "-")}`;
}

/**
 * etcd mode: flannel's layout in an etcd 3.6 (`<prefix>/config`, one key
 * per lease under `<prefix>/subnets/` with a 24 h etcd lease), the value
 * as flanneld writes it.
 */
class EtcdStore implements Store {
  readonly mode = "etcd";
  readonly relayPort = 2379;
  readonly #etcd: EtcdServer;
  readonly #lease: string;

  private constructor(etcd: EtcdServer, lease: string) {
    this.#etcd = etcd;
    this.#lease = lease;
  }

  static async start(): Promise<EtcdStore> {
    const bin = await serverBinary("etcd");
    if (!bin) throw new Error("etcd is missing: run .ci/build_servers.sh");
    const etcd = await EtcdServer.start({ bin, args: ["--unsafe-no-fsync"] });
    await etcd.put(`${ETCD_PREFIX}/config`, NET_CONF);
    const grant = await etcd.request("/v3/lease/grant", { TTL: "86400" });
    return new EtcdStore(etcd, String(grant.ID));
  }

  get port(): number {
    return Number(new URL(this.#etcd.endpoint).port);
  }

  flags(): string[] {
    return [
      `--etcd-endpoints=http://127.0.0.1:${this.relayPort}`,
      `--etcd-prefix=${ETCD_PREFIX}`,
    ];
  }

  populate(from: number, to: number): Promise<void> {
    return inParallel(from, to, (i) => this.add(i));
  }

  /** Deletes the lease(s) of the agent's public IP. */
  async reset(): Promise<void> {
    const keys = await this.#etcd.list(`${ETCD_PREFIX}/subnets/`);
    for (const [key, raw] of keys) {
      if (raw.value.includes('"PublicIP":"198.18.0.1"')) {
        await this.#etcd.delete(key);
      }
    }
  }

  async add(i: number): Promise<string> {
    const subnet = (peerNode(i) as { spec: { podCIDR: string } }).spec.podCIDR;
    await this.#etcd.put(
      subnetKey(subnet),
      JSON.stringify({
        PublicIP: publicIp(i),
        PublicIPv6: null,
        BackendType: "vxlan",
        BackendData: { VNI: 1, VtepMAC: vtepMac(i) },
        BackendV6Data: null,
      }),
      this.#lease,
    );
    return subnet;
  }

  async remove(i: number): Promise<void> {
    const subnet = (peerNode(i) as { spec: { podCIDR: string } }).spec.podCIDR;
    await this.#etcd.delete(subnetKey(subnet));
  }

  deliveredAt(): Promise<number | undefined> {
    return Promise.resolve(undefined);
  }

  async cpuSec(): Promise<number> {
    const pid = this.#etcd.pid;
    return pid === undefined ? NaN : (await procStats(pid)).cpuSec;
  }

  async timeList(): Promise<{ ms: number; bytes: number }> {
    const t0 = performance.now();
    const keys = await this.#etcd.list(`${ETCD_PREFIX}/subnets/`);
    let bytes = 0;
    for (const [k, v] of keys) bytes += k.length + v.value.length;
    return { ms: performance.now() - t0, bytes };
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#etcd.close();
  }
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
    // Without TCP_NODELAY a small watch event written while the previous
    // segment is unacknowledged waits for the agent's delayed ACK (40 ms
    // on Linux): that wait, not the API server, was the ~48 ms
    // convergence both agents showed through this relay.
    client.setNoDelay(true);
    up.setNoDelay(true);
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
): Promise<{ cpuSec: number; rss: number; hwm: number }> {
  const stat = await readProc(`/proc/${pid}/stat`);
  // Fields after the command name, which may hold spaces: state is 3rd.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(f[11]) + Number(f[12]); // utime, stime
  const status = await readProc(`/proc/${pid}/status`);
  const kb = (k: string) =>
    Number(new RegExp(`^${k}:\\s+(\\d+) kB$`, "m").exec(status)?.[1] ?? NaN) *
    1024;
  return { cpuSec: ticks / 100, rss: kb("VmRSS"), hwm: kb("VmHWM") };
}

/** weft's health and metrics port inside its namespace. */
const METRICS_PORT = 18400;

/** Sum and count of weft's event-to-kernel histogram, read in `ns`. */
async function eventToKernel(
  ns: Netns,
): Promise<{ sum: number; count: number } | undefined> {
  const text = await weftMetrics(ns);
  const v = (name: string) =>
    Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? NaN);
  const sum = v("weft_event_to_kernel_seconds_sum");
  const count = v("weft_event_to_kernel_seconds_count");
  return Number.isFinite(sum) && Number.isFinite(count)
    ? { sum, count }
    : undefined;
}

/** weft's full reconcile passes so far (NaN for flanneld). */
async function fullPasses(ns: Netns): Promise<number> {
  const m = /^weft_reconcile_passes_total (\d+)$/m.exec(await weftMetrics(ns));
  return m ? Number(m[1]) : NaN;
}

/** weft's /metrics in `ns` ("" if nothing answers). */
async function weftMetrics(ns: Netns): Promise<string> {
  const out = await new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      ns.name,
      "curl",
      "-sf",
      `http://127.0.0.1:${METRICS_PORT}/metrics`,
    ],
    stdout: "piped",
    stderr: "null",
  }).output();
  return new TextDecoder().decode(out.stdout);
}

/**
 * Changes the state of `perSecond` neighbour entries a second on `eth0`
 * in `ns`, in steps of 100 ms, between reachable and stale: what traffic
 * to peers does to a real node's underlay ARP entries. Until stopped.
 */
function arpChurn(ns: Netns, perSecond: number): { stop(): Promise<void> } {
  let stopped = false;
  const perStep = Math.max(1, Math.round(perSecond / 10));
  const loop = (async () => {
    for (let step = 0; !stopped; step++) {
      const lines = Array.from({ length: perStep }, (_, k) => {
        const i = (step * perStep + k) % 250;
        const nud = step % 2 === 0 ? "reachable" : "stale";
        return `neigh replace 198.19.254.${i + 1} lladdr 02:00:00:00:fe:${
          i.toString(16).padStart(2, "0")
        } dev eth0 nud ${nud}`;
      });
      await run(["ip", "-n", ns.name, "-batch", "-"], lines.join("\n") + "\n");
      await sleep(100);
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      await loop;
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- one agent run -------------------------------------------------------------

/** What every agent run of one benchmark shares. */
export interface RunContext {
  readonly store: Store;
  /** Holds the kubeconfig and net-conf.json, readable by the agents. */
  readonly dir: string;
  readonly flanneld: string;
  readonly weftMain: string;
  /** The V8 flags of the checkout's `deno task start`, if any. */
  readonly v8Flags: string[];
  readonly logDir: string | undefined;
  readonly idleAtN: number;
  readonly idleSec: number;
  /** ARP state changes a second on eth0 during the idle window. */
  readonly arpChurn: number;
  readonly additions: number;
  readonly syncTimeoutMs: number;
  readonly progress: (line: string) => void;
  /** Namespace tag (see {@linkcode CompareOptions.nsTag}). */
  readonly nsTag: string;
  /** A module weft's `deno run` preloads (bench/_quorum_list.ts). */
  readonly weftPreload?: string;
}

function agentCommand(agent: Agent, ctx: RunContext, dir: string): string[] {
  const flags = [
    ...ctx.store.flags(),
    `--subnet-file=${dir}/subnet.env`,
    // Both agents serve /healthz, as in a DaemonSet with probes; weft's
    // also serves /metrics, read for its event → kernel histogram.
    `--healthz-port=${METRICS_PORT}`,
    "--iface=eth0",
    "--ip-masq=false",
  ];
  if (agent === "flanneld") return [ctx.flanneld, ...flags];
  return [
    Deno.execPath(),
    "run",
    ...(ctx.weftPreload ? [`--preload=${ctx.weftPreload}`] : []),
    ...ctx.v8Flags,
    ...agentPermissions(
      dir,
      [`127.0.0.1:${ctx.store.relayPort}`],
      METRICS_PORT,
      [ctx.dir],
    ),
    ctx.weftMain,
    ...flags,
  ];
}

/**
 * Runs one agent at N in fresh namespaces against `ctx.store`: its cold
 * sync, then the additions and, at `ctx.idleAtN`, the idle window.
 */
export async function runAgent(
  agent: Agent,
  n: number,
  ctx: RunContext,
): Promise<AgentResult> {
  const { store } = ctx;
  const want = Math.max(n - 1, 0);
  await store.reset();
  await using hub = await Netns.create(`${ctx.nsTag}-hub`);
  await using ns = await Netns.create(`${ctx.nsTag}-${agent}`);
  await joinOnBridge(hub, [ns], ["198.18.0.1/15"]);
  await hub.ip("addr", "add", "198.18.0.254/15", "dev", "br0");
  await ns.ip("route", "add", "default", "via", "198.18.0.254");
  const dir = await Deno.makeTempDir({ prefix: `weft-cmp-${agent}-` });
  await using relay = new CountingRelay(ns.path, store.relayPort, store.port);
  await using mon = new RouteMonitor(ns);
  using nl = openNetlink({ netns: ns.path });
  const log = `${dir}/agent.log`;
  const cmd = agentCommand(agent, ctx, dir);
  // Ready: subnet.env written (both agents write it once the lease and
  // the device are set up, before any peer), seen through inotify.
  const fsw = Deno.watchFs(dir, { recursive: false });
  let readyAt: number | undefined;
  let onReady = () => {};
  const watching = (async () => {
    for await (const ev of fsw) {
      if (ev.paths.some((p) => p.endsWith("/subnet.env"))) {
        readyAt ??= performance.now();
        onReady();
        return;
      }
    }
  })();

  const cpu0 = await store.cpuSec();
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
  let rssReady = NaN;
  onReady = () => {
    procStats(pid).then((s) => rssReady = s.rss, () => {});
  };
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
    let serverCpuSec = NaN;
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
      if (routes < want || readyAt === undefined) continue;
      const at = performance.now();
      const s = await procStats(pid);
      const cpuNow = await store.cpuSec();
      const [r0, t0b] = [relay.rx, relay.tx];
      const dev = nl.linkByName("flannel.1");
      if (want > 0) {
        if (!dev) continue;
        const neighs = nl.neighList(dev.index, 4).filter((x) =>
          (x.state & NUD_PERMANENT) !== 0
        ).length;
        const fdbs = nl.fdbList(dev.index).length;
        if (neighs < want || fdbs < want) {
          continue;
        }
      }
      // The monitor's time if it saw every route, else this poll's; with
      // no peer, the sync is the ready moment.
      const times = [...mon.seen.values()];
      syncAt = want === 0
        ? readyAt
        : mon.seen.size >= want
        ? Math.max(...times)
        : at;
      firstRouteAt = times.length > 0 ? Math.min(...times) : NaN;
      stats = s;
      serverCpuSec = cpuNow - cpu0;
      rx = r0;
      tx = t0b;
    }
    const syncMs = syncAt - t0;
    ctx.progress(
      `  ${agent} N=${n}: ready at ${
        (readyAt! - t0).toFixed(0)
      } ms, synced in ${syncMs.toFixed(0)} ms (API connection at ${
        ((relay.firstConnAt ?? NaN) - t0).toFixed(0)
      } ms, first route at ${(firstRouteAt - t0).toFixed(0)} ms), CPU ${
        stats!.cpuSec.toFixed(2)
      } s, ${(rx / 2 ** 20).toFixed(1)} MiB from the API server, ${
        serverCpuSec.toFixed(2)
      } s apiserver+etcd CPU`,
    );
    await sleep(2000);
    const { rss } = await procStats(pid);

    // Convergence of new nodes, one at a time.
    const before = agent === "weft" ? await eventToKernel(ns) : undefined;
    const conv: number[] = [];
    const delivery: number[] = [];
    let timeouts = 0;
    for (let a = 0; a < ctx.additions; a++) {
      const t = performance.now();
      const subnet = await store.add(50_000 + a);
      const at = await mon.wait(subnet, 15_000);
      if (at === undefined) timeouts++;
      else conv.push(at - t);
      const seen = await store.deliveredAt(50_000 + a);
      if (seen !== undefined) delivery.push(seen - t);
      if (exited) throw await fail("exited during the additions");
    }
    const after = agent === "weft" ? await eventToKernel(ns) : undefined;
    const agentSideMs = before && after && after.count > before.count
      ? ((after.sum - before.sum) / (after.count - before.count)) * 1000
      : undefined;
    const end = await procStats(pid);
    const rssEnd = end.rss;
    let idle: { idleCpuPct: number; idleSec: number } | undefined;
    if (n === ctx.idleAtN && ctx.idleSec > 0) {
      const c0 = end.cpuSec;
      const p0 = await fullPasses(ns);
      const churn = ctx.arpChurn > 0 ? arpChurn(ns, ctx.arpChurn) : undefined;
      try {
        await sleep(ctx.idleSec * 1000);
      } finally {
        await churn?.stop();
      }
      const c1 = (await procStats(pid)).cpuSec;
      const passes = (await fullPasses(ns)) - p0;
      idle = {
        idleCpuPct: ((c1 - c0) / ctx.idleSec) * 100,
        idleSec: ctx.idleSec,
      };
      ctx.progress(
        `  ${agent} N=${n}: idle CPU ${
          idle.idleCpuPct.toFixed(3)
        }% of a core over ${ctx.idleSec} s${
          ctx.arpChurn > 0
            ? ` with ${ctx.arpChurn} ARP state changes a second on eth0`
            : ""
        }${Number.isNaN(passes) ? "" : `, ${passes} full passes`}`,
      );
    }
    const rssPeak = (await procStats(pid)).hwm;
    ctx.progress(
      `  ${agent} N=${n}: convergence p50 ${
        percentile(conv, 50).toFixed(1)
      } ms, p99 ${percentile(conv, 99).toFixed(1)} ms${
        agentSideMs !== undefined
          ? ` (event → kernel in the agent: ${agentSideMs.toFixed(2)} ms)`
          : ""
      }${
        delivery.length > 0
          ? `, write → event at the benchmark's own watch p50 ${
            percentile(delivery, 50).toFixed(1)
          } ms`
          : ""
      }, RSS ${(rss / 2 ** 20).toFixed(1)} MiB, at the end ${
        (rssEnd / 2 ** 20).toFixed(1)
      } MiB`,
    );
    return {
      agent,
      n,
      syncMs,
      firstConnMs: (relay.firstConnAt ?? NaN) - t0,
      readyMs: readyAt! - t0,
      rssReady,
      rssPeak,
      serverCpuSec,
      ...idle,
      firstRouteMs: firstRouteAt - t0,
      cpuSec: stats!.cpuSec,
      rss,
      rssEnd,
      rxBytes: rx,
      txBytes: tx,
      convergenceMs: conv,
      convergenceTimeouts: timeouts,
      ...(agentSideMs !== undefined && { agentSideMs }),
      ...(delivery.length > 0 && { deliveryMs: delivery }),
    };
  } finally {
    fsw.close();
    await watching.catch(() => {});
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
      await Deno.copyFile(
        log,
        `${ctx.logDir}/${ctx.store.mode}-${agent}-${n}.log`,
      ).catch(
        () => {},
      );
    }
    await inParallel(0, ctx.additions, (a) => store.remove(50_000 + a));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

// ---- the benchmark ----------------------------------------------------------

/**
 * A kubeconfig in JSON, which is YAML too: flanneld reads it as any
 * kubeconfig, weft without loading its YAML parser (see
 * subnet/kube/kubeconfig.ts; a YAML kubeconfig costs weft about 15 MiB).
 */
async function jsonKubeconfig(path: string, k: KubeServers): Promise<string> {
  await Deno.writeTextFile(
    path,
    JSON.stringify({
      apiVersion: "v1",
      kind: "Config",
      "current-context": "bench",
      clusters: [{
        name: "bench",
        cluster: {
          server: `https://127.0.0.1:${API_PORT}`,
          "certificate-authority-data": btoa(k.caPem),
        },
      }],
      contexts: [{ name: "bench", context: { cluster: "bench", user: "b" } }],
      users: [{ name: "b", user: { token: k.adminToken } }],
    }),
  );
  return path;
}

/**
 * The V8 flags of the checkout (`deploy/v8-flags.txt`, which `deno task
 * start` and `deno task compile` read), none if it has no such file.
 */
export async function startV8Flags(root: string): Promise<string[]> {
  try {
    const text = await Deno.readTextFile(`${root}/deploy/v8-flags.txt`);
    return text.split(/\s+/).filter((w) => w !== "");
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
}

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
  ns: number[] = [0, 10, 100, 1000, 5000],
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
  const mode = opts.mode ?? "kube";
  const dir = await Deno.makeTempDir({ prefix: "weft-cmp-" });
  try {
    await using store = mode === "kube"
      ? await KubeStore.start(dir)
      : await EtcdStore.start();
    const ctx: RunContext = {
      store,
      dir,
      v8Flags: await startV8Flags(opts.weftRoot ?? ROOT),
      idleAtN: opts.idleAtN ?? 1000,
      idleSec: opts.idleSec ?? 60,
      arpChurn: opts.arpChurn ?? 0,
      nsTag: opts.nsTag ?? "cmp",
      flanneld,
      weftMain,
      logDir: opts.logDir,
      additions: opts.additions ?? 60,
      syncTimeoutMs: opts.syncTimeoutMs ?? 180_000,
      progress,
    };
    const rows: CompareRow[] = [];
    let have = 0;
    for (const [idx, n] of [...ns].sort((a, b) => a - b).entries()) {
      const t0 = performance.now();
      await store.populate(have, Math.max(n - 1, 0));
      have = Math.max(n - 1, have);
      progress(
        `${mode} N=${n}: ${Math.max(n - 1, 0)} peers + ${SELF} (created in ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s)`,
      );
      const list = await store.timeList(); // also warms the server
      const floorMs = n > 1
        ? await ipBatchFloor(
          Array.from({ length: n - 1 }, (_, i) => floorPeer(i)),
        )
        : NaN;
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
      for (const agent of order) {
        if (opts.agents && !opts.agents.includes(agent)) continue;
        res[agent] = await runAgent(agent, n, ctx);
      }
      // A row compares both; one agent alone is only in the progress lines.
      if (!res.flanneld || !res.weft) continue;
      rows.push({
        mode,
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

if (import.meta.main) {
  const out = Deno.args.find((a) => a.startsWith("--out="));
  const from = Deno.args.find((a) => a.startsWith("--from="));
  if (from) {
    // Re-renders saved figures (compare.json) without running anything;
    // --readme also regenerates the README's section from them.
    const saved = JSON.parse(
      await Deno.readTextFile(from.slice("--from=".length)),
    ) as { rows: CompareRow[]; machine: string };
    if (Deno.args.includes("--readme")) {
      await writeReadme(
        saved.rows,
        `Machine: ${saved.machine}, flanneld v0.28.9, shared with other work (expect run-to-run spread).`,
      );
      Deno.exit(0);
    }
    console.log(
      await writeCompareResults(saved.rows, out?.slice("--out=".length)),
    );
    Deno.exit(0);
  }
  const weft = Deno.args.find((a) => a.startsWith("--weft="));
  const logs = Deno.args.find((a) => a.startsWith("--logs="));
  const idle = Deno.args.find((a) => a.startsWith("--idle="));
  const churn = Deno.args.find((a) => a.startsWith("--arp-churn="));
  const agents = Deno.args.find((a) => a.startsWith("--agents="));
  const additions = Deno.args.find((a) => a.startsWith("--additions="));
  const modesArg = Deno.args.find((a) => a.startsWith("--modes="));
  const tag = Deno.args.find((a) => a.startsWith("--tag="));
  const modes = (modesArg?.slice("--modes=".length) ?? "kube,etcd")
    .split(",") as Mode[];
  const sizes = Deno.args.filter((a) => !a.startsWith("--")).map(Number);
  const rows: CompareRow[] = [];
  for (const mode of modes) {
    rows.push(
      ...await benchCompare(
        sizes.length > 0 ? sizes : [0, 10, 100, 1000, 5000],
        {
          mode,
          ...(idle && { idleSec: Number(idle.slice("--idle=".length)) }),
          ...(churn &&
            { arpChurn: Number(churn.slice("--arp-churn=".length)) }),
          ...(agents &&
            { agents: agents.slice("--agents=".length).split(",") as Agent[] }),
          ...(additions &&
            { additions: Number(additions.slice("--additions=".length)) }),
          progress: (l) => console.error(l),
          ...(weft && { weftRoot: weft.slice("--weft=".length) }),
          ...(logs && { logDir: logs.slice("--logs=".length) }),
          ...(tag && { nsTag: tag.slice("--tag=".length) }),
        },
      ),
    );
    // Saved after each mode, so a failure later keeps what was measured.
    await writeCompareResults(rows, out?.slice("--out=".length));
  }
  console.log(await writeCompareResults(rows, out?.slice("--out=".length)));
}
