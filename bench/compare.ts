/**
 * Benchmark (not a test): weft beside upstream flanneld against the same
 * real kube-apiserver holding N realistic Node objects annotated as
 * flannel vxlan nodes, and in etcd mode against the same etcd holding N
 * flannel leases. Each cell runs every variant `--reps` times (default
 * 3), rotating who goes first; compare_report.ts turns the runs into
 * medians and ranges, and calls a difference only where the ranges do not
 * overlap.
 *
 * Each agent runs alone in a fresh network namespace (`eth0` on a bridge
 * in a fresh hub namespace, `198.18.0.1/15`, default route via
 * `198.18.0.254`) with the same flags. weft runs as the image runs it:
 * `deploy/permissions.txt` (the benchmark's directories added to the read
 * and write paths), `deploy/v8-flags.txt`, `DENO_TLS_CA_STORE=system`.
 * The kubeconfig is YAML with the CA in a file.
 *
 * How each figure is taken, the same way for every agent:
 * - API server path and bytes: the kubeconfig says
 *   `https://127.0.0.1:6443`; inside the agent's namespace that port is a
 *   TCP relay owned by this process (its listening socket is created on a
 *   thread moved into the namespace with setns(2)), which forwards to the
 *   apiserver on the host loopback and counts bytes in each direction.
 * - cold sync: from just before the process is spawned to the moment all
 *   N−1 routes are on `flannel.1` (timestamps from an `ip monitor route`
 *   running in the namespace; a route dump every second backs it up), then
 *   confirmed by dumping neighbours and FDB entries.
 * - CPU seconds to sync: utime + stime of the agent process
 *   (`/proc/<pid>/stat`, 10 ms ticks) at that moment; RSS: `VmRSS` of the
 *   agent process (for weft, the deno process) 2 s after the sync.
 * - control-plane CPU: the servers' utime + stime over a window of fixed
 *   length from the spawn ({@linkcode serverWindowSec}), the same for every
 *   agent at one N, and over a window of that length with no agent, once
 *   per repetition (the background the report takes off).
 * - convergence: a new Node is POSTed and the time until its route shows
 *   up in `ip monitor route`, pooled over the repetitions.
 * - floors: `ip -batch` + `bridge -batch` for the same N−1 peers in a
 *   fresh namespace; a paginated LIST of the nodes by this process; with
 *   lever variants, a `deno run` of an empty module.
 * - steady state (`--steady`): {@linkcode benchSteady}.
 *
 * Run: `deno run -A bench/compare.ts [N...] [--modes=kube,etcd]
 * [--reps=3] [--additions=70] [--weft=<checkout>] [--levers]
 * [--lever='weft: <what>=<checkout>'] [--lever-v8[-all]=<flags>]
 * [--levers-up-to=100]
 * [--steady=kube:100,kube:1000,...] [--idle-sec=600] [--churn-sec=900]
 * [--malloc-probe]
 * [--previous=<old compare.json>@<commit>] [--logs=<dir>] [--out=<dir>]
 * [--tag=<namespace tag>] [--prof=<dir>]` (default N = 0 10 100 1000 5000 in both
 * modes; with only `--steady`, no cold-sync cells). Steady cells run at the
 * same time, each against its own control plane. `--prof` profiles every
 * weft run into `<dir>` for bench/profile_report.ts.
 * `--from=bench/results/compare.json [--readme]` re-renders saved
 * figures. Writes bench/results/compare.md, compare.json and compare.svg
 * unless `--out` says otherwise. Needs root and the servers built by
 * `.ci/build_servers.sh`.
 *
 * @module
 */
import { joinOnBridge, Netns, run } from "../tests/_netns.ts";
import { KubeServers } from "../tests/servers/kube.ts";
import { EtcdServer } from "../tests/servers/etcd.ts";
import { serverBinary } from "../tests/servers/paths.ts";
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
  commitOf,
  type CompareResults,
  type CompareRow,
  machine,
  type MallocSample,
  type Mode,
  type SteadyResult,
  writeCompareResults,
  writeReadme,
} from "./compare_report.ts";

export type { Agent, AgentResult, CompareResults, CompareRow, Mode };
export {
  commitOf,
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
function selfNode(name = SELF, subnet = SELF_SUBNET): Record<string, unknown> {
  const node = realisticNode(65000) as {
    metadata: Record<string, unknown>;
    spec: Record<string, unknown>;
  };
  return {
    ...node,
    metadata: {
      name,
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
    spec: { podCIDR: subnet, podCIDRs: [subnet] },
  };
}

/** Where the leases live: the API server (kube mode) or etcd. */
interface Store extends AsyncDisposable {
  readonly mode: Mode;
  /** Host port of the server the relay forwards to. */
  readonly port: number;
  /** Port of the relay inside the agent's namespace. */
  readonly relayPort: number;
  /** The agent's flags that name the store (`fullYaml`: see Variant). */
  flags(fullYaml?: boolean): string[];
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

/** Kube mode: Nodes in a kube-apiserver, read through a YAML kubeconfig. */
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
      await yamlKubeconfig(dir, k),
      `${dir}/net-conf.json`,
    );
  }

  get port(): number {
    return this.#k.port;
  }

  flags(fullYaml = false): string[] {
    return [
      "--kube-subnet-mgr",
      `--kubeconfig-file=${
        fullYaml
          ? this.#kubeconfig.replace(/\.yaml$/, "-full.yaml")
          : this.#kubeconfig
      }`,
      `--net-config-path=${this.#netConf}`,
    ];
  }

  populate(from: number, to: number): Promise<void> {
    return inParallel(from, to, (i) => this.#k.createNode(peerNode(i)));
  }

  reset(): Promise<void> {
    return this.createSelf(SELF, SELF_SUBNET);
  }

  /** (Re)creates an agent's own Node as kubelet registers it. */
  async createSelf(name: string, subnet: string): Promise<void> {
    const r = await this.#k.request("DELETE", `/api/v1/nodes/${name}`);
    if (r.status !== 200 && r.status !== 404) {
      throw new Error(`DELETE node ${name}: ${r.status}`);
    }
    await this.#k.createNode(selfNode(name, subnet));
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
): Promise<
  { cpuSec: number; rss: number; hwm: number; anon: number; file: number }
> {
  const stat = await readProc(`/proc/${pid}/stat`);
  // Fields after the command name, which may hold spaces: state is 3rd.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(f[11]) + Number(f[12]); // utime, stime
  const status = await readProc(`/proc/${pid}/status`);
  const kb = (k: string) =>
    Number(new RegExp(`^${k}:\\s+(\\d+) kB$`, "m").exec(status)?.[1] ?? NaN) *
    1024;
  return {
    cpuSec: ticks / 100,
    rss: kb("VmRSS"),
    hwm: kb("VmHWM"),
    anon: kb("RssAnon"),
    file: kb("RssFile") + kb("RssShmem"),
  };
}

/**
 * A process's resident memory by kind of mapping (`/proc/<pid>/smaps`):
 * the main thread's malloc heap (`[heap]`, grown by brk), other anonymous
 * memory (V8's heap pages and code, other threads' malloc arenas, stacks)
 * and file-backed pages (the executable and libraries, as far as paged
 * in). Bytes.
 */
export async function rssByMapping(
  pid: number,
): Promise<{ brk: number; anon: number; file: number }> {
  const out = { brk: 0, anon: 0, file: 0 };
  let kind: keyof typeof out = "anon";
  for (const line of (await readProc(`/proc/${pid}/smaps`)).split("\n")) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      const name = head[1]!;
      kind = name === "[heap]" ? "brk" : name.startsWith("/") ? "file" : "anon";
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB$/.exec(line);
    if (rss) out[kind] += Number(rss[1]) * 1024;
  }
  return out;
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

/** weft's V8 heap in use (`weft_process_heap_used_bytes`), NaN if unread. */
async function heapUsed(ns: Netns): Promise<number> {
  const m = /^weft_process_heap_used_bytes (\S+)$/m.exec(await weftMetrics(ns));
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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- what runs ---------------------------------------------------------------

/** One thing measured: flanneld, weft, or weft with one lever changed. */
export interface Variant {
  /** `flanneld`, `weft`, or `weft: <what differs>`. */
  readonly name: string;
  readonly agent: Agent;
  /** weft's checkout. Default: the benchmark's `weftRoot`. */
  readonly root?: string;
  /**
   * weft's environment beyond `NODE_NAME`. Default: the image's
   * (`DENO_TLS_CA_STORE=system`, see Containerfile).
   */
  readonly env?: Readonly<Record<string, string>>;
  /** weft's V8 flags. Default: the checkout's `deploy/v8-flags.txt`. */
  readonly v8Flags?: readonly string[];
  /** A module weft's `deno run` preloads (bench/_quorum_list.ts). */
  readonly preload?: string;
  /** Runs only at N up to this. Default: every N. */
  readonly upTo?: number;
  /** Runs only in these modes. Default: both. */
  readonly modes?: readonly Mode[];
  /** Additions per run. Default: the benchmark's. */
  readonly additions?: number;
  /**
   * Kube mode: the kubeconfig starts with a `%YAML 1.2` directive, which
   * weft's subset parser refuses, so npm:yaml reads it.
   */
  readonly fullYaml?: boolean;
}

/** The image's environment for weft (Containerfile). */
export const IMAGE_ENV: Readonly<Record<string, string>> = {
  DENO_TLS_CA_STORE: "system",
};

/** What every agent run of one benchmark shares. */
export interface RunContext {
  readonly store: Store;
  /** Holds the kubeconfig and net-conf.json, readable by the agents. */
  readonly dir: string;
  readonly flanneld: string;
  /** The weft checkout a variant without its own `root` runs. */
  readonly weftRoot: string;
  readonly logDir: string | undefined;
  readonly additions: number;
  readonly syncTimeoutMs: number;
  readonly progress: (line: string) => void;
  /** Namespace tag (see {@linkcode CompareOptions.nsTag}). */
  readonly nsTag: string;
  /** If set, weft's runs are profiled there (see {@linkcode profiled}). */
  readonly profDir?: string;
}

/**
 * weft's permission flags as the image has them (`deploy/permissions.txt`
 * of `root`), with `dirs` added to the read and write paths.
 */
export async function shippedPermissions(
  root: string,
  dirs: readonly string[],
): Promise<string[]> {
  const text = await Deno.readTextFile(`${root}/deploy/permissions.txt`);
  return text.split(/\s+/).filter((w) => w !== "").map((w) =>
    w.startsWith("--allow-read=") || w.startsWith("--allow-write=")
      ? `${w},${dirs.join(",")}`
      : w
  );
}

/**
 * `flags` (weft's `--v8-flags=...`, or none) with V8's sampling profiler
 * added: a tick every 100 µs of the main thread's CPU, written to `log`
 * (read by bench/profile_report.ts). The profiler costs CPU of its own,
 * so a profiled run's figures are not compared with unprofiled ones.
 */
export function profiled(flags: readonly string[], log: string): string[] {
  const prof =
    `--prof,--prof-sampling-interval=100,--logfile=${log},--no-logfile-per-isolate`;
  const v8 = flags.find((f) => f.startsWith("--v8-flags="));
  return v8 === undefined
    ? [...flags, `--v8-flags=${prof}`]
    : flags.map((f) => f === v8 ? `${v8},${prof}` : f);
}

async function agentCommand(
  v: Variant,
  ctx: RunContext,
  dir: string,
  profLog?: string,
): Promise<string[]> {
  const flags = [
    ...ctx.store.flags(v.fullYaml),
    `--subnet-file=${dir}/subnet.env`,
    // Both agents serve /healthz, as in a DaemonSet with probes; weft's
    // also serves /metrics, read for its event → kernel histogram.
    `--healthz-port=${METRICS_PORT}`,
    "--iface=eth0",
    "--ip-masq=false",
  ];
  if (v.agent === "flanneld") return [ctx.flanneld, ...flags];
  const root = v.root ?? ctx.weftRoot;
  return [
    Deno.execPath(),
    "run",
    "--no-prompt",
    ...(v.preload ? [`--preload=${v.preload}`] : []),
    ...(profLog === undefined
      ? v.v8Flags ?? await startV8Flags(root)
      : profiled(v.v8Flags ?? await startV8Flags(root), profLog)),
    ...await shippedPermissions(root, [ctx.dir, dir]),
    `${root}/main.ts`,
    ...flags,
  ];
}

/** Spawns `cmd` in `ns` with its output in `log`. */
function spawnIn(
  ns: Netns,
  cmd: string[],
  log: string,
  env: Record<string, string>,
): Deno.ChildProcess {
  return new Deno.Command("sh", {
    args: [
      "-c",
      'exec ip netns exec "$NS" "$@" >"$LOG" 2>&1',
      "sh",
      ...cmd,
    ],
    env: { ...env, NS: ns.name, LOG: log },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
}

/** SIGTERM, then SIGKILL after 10 s; waits for the exit. */
async function stop(child: Deno.ChildProcess): Promise<void> {
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
}

/**
 * The length of the control-plane CPU window at N, s: longer than any
 * agent's cold sync plus the 2 s before RSS is read, in the runs so far.
 */
export function serverWindowSec(n: number): number {
  return n >= 5000 ? 14 : n >= 1000 ? 6 : 4;
}

/**
 * Runs one variant at N in fresh namespaces against `ctx.store`: its cold
 * sync, then the additions.
 */
export async function runAgent(
  v: Variant,
  n: number,
  ctx: RunContext,
  rep = 0,
): Promise<AgentResult> {
  const { store } = ctx;
  const agent = v.agent;
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
  const profLog = ctx.profDir && agent === "weft"
    ? `${ctx.profDir}/${store.mode}-${n}-${
      v.name.replace(/[^\w.-]+/g, "_")
    }-${rep}.v8.log`
    : undefined;
  const cmd = await agentCommand(v, ctx, dir, profLog);
  const additions = v.additions ?? ctx.additions;
  const windowSec = serverWindowSec(n);
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
  const child = spawnIn(ns, cmd, log, {
    NODE_NAME: SELF,
    ...(agent === "weft" ? v.env ?? IMAGE_ENV : {}),
  });
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
      `${v.name} at N=${n}: ${why}\n${text.split("\n").slice(-30).join("\n")}`,
    );
  };

  try {
    // Cold sync.
    let syncAt: number | undefined;
    let firstRouteAt = NaN;
    let stats: { cpuSec: number; rss: number } | undefined;
    let rx = 0;
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
      const r0 = relay.rx;
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
      rx = r0;
    }
    const syncMs = syncAt - t0;
    if (profLog) {
      // What the report cuts the profile at, and the CPU it accounts for.
      await Deno.writeTextFile(
        `${profLog}.json`,
        JSON.stringify({
          variant: v.name,
          mode: store.mode,
          n,
          rep,
          syncMs,
          cpuSec: stats!.cpuSec,
        }),
      );
    }
    await sleep(Math.max(0, syncAt + 2000 - performance.now()));
    const { rss, anon, file } = await procStats(pid);
    const heap = agent === "weft" ? await heapUsed(ns) : NaN;
    // The control plane's CPU over the same window for every agent.
    const left = t0 + windowSec * 1000 - performance.now();
    if (left < 0) {
      throw await fail(
        `sync + 2 s took longer than the ${windowSec} s control-plane window`,
      );
    }
    await sleep(left);
    const serverCpuSec = (await store.cpuSec()) - cpu0;
    ctx.progress(
      `  ${v.name} N=${n}: ready at ${
        (readyAt! - t0).toFixed(0)
      } ms, synced in ${syncMs.toFixed(0)} ms, CPU ${
        stats!.cpuSec.toFixed(2)
      } s, RSS ${(rss / 2 ** 20).toFixed(1)} MiB, ${
        (rx / 2 ** 20).toFixed(1)
      } MiB from the API server, control plane ${
        serverCpuSec.toFixed(2)
      } s over ${windowSec} s`,
    );

    // Convergence of new nodes, one at a time.
    const before = agent === "weft" ? await eventToKernel(ns) : undefined;
    const conv: number[] = [];
    const delivery: number[] = [];
    let timeouts = 0;
    for (let a = 0; a < additions; a++) {
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
    const rssPeak = (await procStats(pid)).hwm;
    if (conv.length > 0) {
      ctx.progress(
        `  ${v.name} N=${n}: convergence p50 ${
          percentile(conv, 50).toFixed(1)
        } ms, p99 ${percentile(conv, 99).toFixed(1)} ms over ${conv.length}`,
      );
    }
    return {
      agent: v.name,
      n,
      rep,
      syncMs,
      firstConnMs: (relay.firstConnAt ?? NaN) - t0,
      readyMs: readyAt! - t0,
      rssReady,
      rssPeak,
      serverCpuSec,
      serverWindowSec: windowSec,
      firstRouteMs: firstRouteAt - t0,
      cpuSec: stats!.cpuSec,
      rss,
      rssAnon: anon,
      rssFile: file,
      ...(Number.isFinite(heap) && { heapUsed: heap }),
      rxBytes: rx,
      convergenceMs: conv,
      convergenceTimeouts: timeouts,
      ...(agentSideMs !== undefined && { agentSideMs }),
      ...(delivery.length > 0 && { deliveryMs: delivery }),
    };
  } finally {
    fsw.close();
    await watching.catch(() => {});
    await stop(child);
    if (ctx.logDir) {
      await Deno.mkdir(ctx.logDir, { recursive: true });
      await Deno.copyFile(
        log,
        `${ctx.logDir}/${ctx.store.mode}-${
          v.name.replace(/[^\w.-]+/g, "_")
        }-${n}-${rep}.log`,
      ).catch(() => {});
    }
    await inParallel(0, additions, (a) => store.remove(50_000 + a));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * A bare `deno run` of an empty module that only keeps running, with
 * weft's V8 flags: RSS 2 s after start and CPU by then, the floor under
 * any Deno program.
 */
async function denoFloor(
  v8Flags: readonly string[],
): Promise<{ cpuSec: number; rss: number; anon: number; file: number }> {
  const dir = await Deno.makeTempDir({ prefix: "weft-cmp-floor-" });
  try {
    await Deno.writeTextFile(
      `${dir}/empty.ts`,
      "setInterval(() => {}, 1e9);\n",
    );
    await run([Deno.execPath(), "cache", `${dir}/empty.ts`]);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", ...v8Flags, `${dir}/empty.ts`],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      await sleep(2000);
      const s = await procStats(child.pid);
      return { cpuSec: s.cpuSec, rss: s.rss, anon: s.anon, file: s.file };
    } finally {
      await stop(child);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// ---- the benchmark ----------------------------------------------------------

/**
 * A kubeconfig in YAML, as users have it: `certificate-authority` names
 * the CA file (as k3s's agent kubeconfigs do), a bearer token.
 */
async function yamlKubeconfig(dir: string, k: KubeServers): Promise<string> {
  await Deno.writeTextFile(`${dir}/ca.crt`, k.caPem);
  const path = `${dir}/kubeconfig.yaml`;
  const text = `apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: ${dir}/ca.crt
    server: https://127.0.0.1:${API_PORT}
  name: bench
contexts:
- context:
    cluster: bench
    user: bench
  name: bench
current-context: bench
preferences: {}
users:
- name: bench
  user:
    token: ${k.adminToken}
`;
  await Deno.writeTextFile(path, text);
  // The same, as only a full YAML parser reads it (a lever variant).
  await Deno.writeTextFile(
    `${dir}/kubeconfig-full.yaml`,
    `%YAML 1.2\n---\n${text}`,
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

/** Options of {@linkcode benchCompare}. */
export interface CompareOptions {
  /** New nodes added, one at a time, per run. Default 70. */
  readonly additions?: number;
  /** Runs per variant and N, rotating who goes first. Default 3. */
  readonly reps?: number;
  /** What runs. Default: flanneld and weft. */
  readonly variants?: readonly Variant[];
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
  /** If set, each run's log is kept there. */
  readonly logDir?: string;
  /** Where the leases live. Default kube. */
  readonly mode?: Mode;
  /**
   * Namespace tag: namespaces are `weft-t-<tag>-hub-*` and
   * `weft-t-<tag>-<agent>-*`. Default `cmp`.
   */
  readonly nsTag?: string;
  /**
   * If set, every weft run is profiled into this directory (V8's
   * sampling profiler, see {@linkcode profiled}), with the run's sync
   * moment beside each log.
   */
  readonly profDir?: string;
}

/** flanneld and weft as the image runs it. */
export const MAIN_VARIANTS: readonly Variant[] = [
  { name: "flanneld", agent: "flanneld" },
  { name: "weft", agent: "weft" },
];

/**
 * Runs every variant at each N (ascending; the cluster grows between
 * sizes), `reps` times, against one fresh control plane.
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
  const weftRoot = (opts.weftRoot ?? ROOT).replace(/\/+$/, "");
  const variants = opts.variants ?? MAIN_VARIANTS;
  // Compile each checkout's modules once so no run pays for it.
  for (const root of new Set(variants.map((v) => v.root ?? weftRoot))) {
    await run([Deno.execPath(), "cache", `${root}/main.ts`]);
  }
  const v8Flags = await startV8Flags(weftRoot);
  const mode = opts.mode ?? "kube";
  const reps = opts.reps ?? 3;
  const dir = await Deno.makeTempDir({ prefix: "weft-cmp-" });
  try {
    await using store = mode === "kube"
      ? await KubeStore.start(dir)
      : await EtcdStore.start();
    const ctx: RunContext = {
      store,
      dir,
      weftRoot,
      nsTag: opts.nsTag ?? "cmp",
      ...(opts.profDir && { profDir: opts.profDir }),
      flanneld,
      logDir: opts.logDir,
      additions: opts.additions ?? 70,
      syncTimeoutMs: opts.syncTimeoutMs ?? 180_000,
      progress,
    };
    const rows: CompareRow[] = [];
    let have = 0;
    for (const n of [...ns].sort((a, b) => a - b)) {
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
      const here = variants.filter((v) =>
        n <= (v.upTo ?? Infinity) && (v.modes ?? [mode]).includes(mode)
      );
      const runs: Record<string, AgentResult[]> = {};
      const bg: number[] = [];
      const floor: CompareRow["denoFloor"][number][] = [];
      for (let rep = 0; rep < reps; rep++) {
        // The control plane's own CPU over the window, no agent running.
        const c0 = await store.cpuSec();
        await sleep(serverWindowSec(n) * 1000);
        bg.push((await store.cpuSec()) - c0);
        if (here.length > 2) floor.push(await denoFloor(v8Flags));
        for (let k = 0; k < here.length; k++) {
          // Who goes first rotates with the repetition and with N.
          const v = here[(k + rep + rows.length) % here.length]!;
          progress(`${mode} N=${n} run ${rep + 1}/${reps}: ${v.name}`);
          (runs[v.name] ??= []).push(await runAgent(v, n, ctx, rep));
        }
      }
      rows.push({
        mode,
        n,
        floorMs,
        listMs: list.ms,
        listBytes: list.bytes,
        bgServerCpuSec: bg,
        denoFloor: floor,
        runs,
      });
    }
    return rows;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

// ---- steady state --------------------------------------------------------------

/** Options of {@linkcode benchSteady}. */
export interface SteadyOptions {
  readonly mode: Mode;
  readonly n: number;
  /** Idle window, s. Default 600. */
  readonly idleSec?: number;
  /** Churn window, s. Default 900. */
  readonly churnSec?: number;
  readonly weftRoot?: string;
  readonly progress?: (line: string) => void;
  readonly logDir?: string;
  readonly nsTag?: string;
  /** Added to weft's environment (`--weft-env=K=V`): a lever. */
  readonly weftEnv?: Readonly<Record<string, string>>;
  /**
   * Preload bench/_malloc_probe.ts into weft (`--malloc-probe`): glibc's
   * and V8's counts every 10 s, kept for the churn window.
   */
  readonly mallocProbe?: boolean;
}

/**
 * flanneld and weft at the same time against one control plane with N−1
 * peers, each in its own namespace as its own node: the idle window, then
 * the churn window (each second one peer added or removed, alternately).
 */
export async function benchSteady(
  opts: SteadyOptions,
): Promise<SteadyResult[]> {
  const { mode, n } = opts;
  const progress = opts.progress ?? (() => {});
  const idleSec = opts.idleSec ?? 600;
  const churnSec = opts.churnSec ?? 900;
  const flanneld = await serverBinary("flanneld");
  if (!flanneld) throw new Error("flanneld is missing");
  const weftRoot = (opts.weftRoot ?? ROOT).replace(/\/+$/, "");
  await run([Deno.execPath(), "cache", `${weftRoot}/main.ts`]);
  const tag = opts.nsTag ?? `st${mode[0]}${n}`;
  const dir = await Deno.makeTempDir({ prefix: "weft-steady-" });
  try {
    await using store = mode === "kube"
      ? await KubeStore.start(dir)
      : await EtcdStore.start();
    await store.populate(0, Math.max(n - 1, 0));
    const ctx: RunContext = {
      store,
      dir,
      weftRoot,
      nsTag: tag,
      flanneld,
      logDir: opts.logDir,
      additions: 0,
      syncTimeoutMs: 180_000,
      progress,
    };
    await using hub = await Netns.create(`${tag}-hub`);
    const weftVariant: Variant = opts.mallocProbe
      ? { ...MAIN_VARIANTS[1]!, preload: `${ROOT}bench/_malloc_probe.ts` }
      : MAIN_VARIANTS[1]!;
    const agents = [
      { v: MAIN_VARIANTS[0]!, node: SELF, subnet: SELF_SUBNET },
      { v: weftVariant, node: `${SELF}-2`, subnet: "10.0.2.0/24" },
    ];
    const spaces: Netns[] = [];
    try {
      for (const a of agents) {
        spaces.push(await Netns.create(`${tag}-${a.v.agent}`));
      }
      await joinOnBridge(hub, spaces, ["198.18.0.1/15", "198.18.0.2/15"]);
      await hub.ip("addr", "add", "198.18.0.254/15", "dev", "br0");
      for (const ns of spaces) {
        await ns.ip("route", "add", "default", "via", "198.18.0.254");
      }
      if (store instanceof KubeStore) {
        for (const a of agents) await store.createSelf(a.node, a.subnet);
      }
      await using relays = new AsyncDisposableStack();
      for (const ns of spaces) {
        relays.use(new CountingRelay(ns.path, store.relayPort, store.port));
      }
      const procs: { child: Deno.ChildProcess; dir: string; log: string }[] =
        [];
      try {
        for (const [i, a] of agents.entries()) {
          const adir = await Deno.makeTempDir({
            prefix: `weft-steady-${a.v.agent}-`,
          });
          const log = `${adir}/agent.log`;
          const cmd = await agentCommand(a.v, ctx, adir);
          procs.push({
            child: spawnIn(spaces[i]!, cmd, log, {
              NODE_NAME: a.node,
              ...(a.v.agent === "weft"
                ? {
                  ...IMAGE_ENV,
                  ...opts.weftEnv,
                  ...(opts.mallocProbe &&
                    { WEFT_BENCH_MALLOC_FILE: `${adir}/malloc.jsonl` }),
                }
                : {}),
            }),
            dir: adir,
            log,
          });
        }
        // Both synced: every peer's route on flannel.1.
        const want = Math.max(n - 1, 0);
        const nls = spaces.map((ns) => openNetlink({ netns: ns.path }));
        try {
          const t0 = performance.now();
          const routes = (i: number) => {
            const dev = nls[i]!.linkByName("flannel.1");
            return dev
              ? nls[i]!.routeList({ family: 4 }).filter((r) =>
                r.index === dev.index
              ).length
              : -1;
          };
          while (!agents.every((_, i) => routes(i) >= want)) {
            if (performance.now() - t0 > 180_000) {
              throw new Error(`${mode} ${n}: not both synced in 180 s`);
            }
            await sleep(200);
          }
        } finally {
          for (const nl of nls) nl.close();
        }
        const stats = () =>
          Promise.all(procs.map((p) => procStats(p.child.pid)));
        const atSync = await stats();
        progress(
          `steady ${mode} ${n}: both synced; idle ${idleSec} s, then churn ${churnSec} s`,
        );
        const idleRss: number[][] = agents.map(() => []);
        const churnRss: number[][] = agents.map(() => []);
        const churnHeap: number[] = [];
        const p0 = await fullPasses(spaces[1]!);
        const s0 = await store.cpuSec();
        const i0 = await stats();
        for (let m = 0; m < idleSec / 60; m++) {
          await sleep(60_000);
          (await stats()).forEach((s, i) => idleRss[i]!.push(s.rss));
        }
        const i1 = await stats();
        const s1 = await store.cpuSec();
        const passes = (await fullPasses(spaces[1]!)) - p0;
        progress(
          `steady ${mode} ${n}: idle CPU flanneld ${
            ((i1[0]!.cpuSec - i0[0]!.cpuSec) / idleSec * 100).toFixed(3)
          }%, weft ${
            ((i1[1]!.cpuSec - i0[1]!.cpuSec) / idleSec * 100).toFixed(3)
          }% (${passes} passes)`,
        );
        // Churn: one peer a second, added or removed alternately. weft's
        // RSS by mapping at its start and each minute.
        const weftPid = procs[1]!.child.pid;
        const churnMaps = [await rssByMapping(weftPid)];
        const churnFrom = Date.now();
        let ops = 0;
        const added: number[] = [];
        const tc = performance.now();
        for (let sec = 1; sec <= churnSec; sec++) {
          if (sec % 2 === 1) {
            const i = 60_000 + sec;
            await store.add(i);
            added.push(i);
          } else {
            await store.remove(added.shift()!);
          }
          ops++;
          if (sec % 60 === 0) {
            (await stats()).forEach((s, i) => churnRss[i]!.push(s.rss));
            churnHeap.push(await heapUsed(spaces[1]!));
            churnMaps.push(await rssByMapping(weftPid));
            progress(
              `steady ${mode} ${n}: churn minute ${sec / 60}: RSS ${
                churnRss.map((r) => ((r.at(-1) ?? NaN) / 2 ** 20).toFixed(1))
                  .join(" / ")
              } MiB (flanneld / weft)`,
            );
          }
          await sleep(Math.max(0, tc + sec * 1000 - performance.now()));
        }
        const c1 = await stats();
        const s2 = await store.cpuSec();
        for (const i of added) await store.remove(i);
        const malloc = opts.mallocProbe
          ? (await Deno.readTextFile(`${procs[1]!.dir}/malloc.jsonl`))
            .split("\n").filter((l) => l !== "")
            .map((l) => JSON.parse(l) as MallocSample)
            .filter((m) => m.t >= churnFrom)
          : undefined;
        return agents.map((a, i) => ({
          agent: a.v.name,
          mode,
          n,
          idleCpuPct: (i1[i]!.cpuSec - i0[i]!.cpuSec) / idleSec * 100,
          idleSec,
          idlePasses: a.v.agent === "weft" ? passes : NaN,
          churnCpuPct: (c1[i]!.cpuSec - i1[i]!.cpuSec) / churnSec * 100,
          churnSec,
          churnOps: ops,
          rssAtSync: atSync[i]!.rss,
          idleRss: idleRss[i]!,
          churnRss: churnRss[i]!,
          rssPeak: c1[i]!.hwm,
          rssAnonEnd: c1[i]!.anon,
          rssFileEnd: c1[i]!.file,
          ...(a.v.agent === "weft" && { churnHeap, churnMaps }),
          ...(a.v.agent === "weft" && malloc && { churnMalloc: malloc }),
          serverIdleCpuPct: (s1 - s0) / idleSec * 100,
          serverChurnCpuPct: (s2 - s1) / churnSec * 100,
        }));
      } finally {
        for (const [i, p] of procs.entries()) {
          await stop(p.child);
          if (opts.logDir) {
            await Deno.mkdir(opts.logDir, { recursive: true });
            await Deno.copyFile(
              p.log,
              `${opts.logDir}/steady-${mode}-${n}-${agents[i]!.v.agent}.log`,
            ).catch(() => {});
          }
          await Deno.remove(p.dir, { recursive: true }).catch(() => {});
        }
      }
    } finally {
      for (const ns of spaces) await ns[Symbol.asyncDispose]();
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

// ---- the command ----------------------------------------------------------------

/**
 * The ratios of a compare.json of the old shape (one run per cell):
 * `previous.json@<commit>`.
 */
async function previousRatios(
  spec: string,
): Promise<CompareResults["previous"]> {
  const [path, commit] = spec.split("@") as [string, string];
  const old = JSON.parse(await Deno.readTextFile(path)) as {
    rows: {
      mode?: Mode;
      n: number;
      weft: { rss: number; cpuSec: number; syncMs: number };
      flanneld: { rss: number; cpuSec: number; syncMs: number };
    }[];
  };
  const ratios: Record<string, Record<string, number>> = {};
  for (const r of old.rows) {
    ratios[`${r.mode ?? "kube"} ${r.n}`] = {
      rss: r.weft.rss / r.flanneld.rss,
      cpuSec: r.weft.cpuSec / r.flanneld.cpuSec,
      syncMs: r.weft.syncMs / r.flanneld.syncMs,
    };
  }
  return { commit, ratios };
}

if (import.meta.main) {
  const arg = (name: string) =>
    Deno.args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const out = arg("out");
  const from = arg("from");
  if (from) {
    // Re-renders saved figures (compare.json) without running anything;
    // --readme also regenerates the README's section from them.
    const saved = JSON.parse(await Deno.readTextFile(from)) as CompareResults;
    if (Deno.args.includes("--readme")) await writeReadme(saved);
    else console.log(await writeCompareResults(saved, out));
    Deno.exit(0);
  }
  const progress = (l: string) =>
    console.error(`${new Date().toISOString().slice(11, 19)} ${l}`);
  const weftRoot = (arg("weft") ?? ROOT).replace(/\/+$/, "");
  const reps = Number(arg("reps") ?? 3);
  const modes = (arg("modes") ?? "kube,etcd").split(",") as Mode[];
  const sizes = Deno.args.filter((a) => !a.startsWith("--")).map(Number);
  const variants: Variant[] = [...MAIN_VARIANTS];
  if (Deno.args.includes("--levers")) {
    const upTo = Number(arg("levers-up-to") ?? 100);
    variants.push(
      {
        name: "weft: HTTPS via node:https (DENO_TLS_CA_STORE unset)",
        agent: "weft",
        env: {},
        // etcd here speaks plain http: no TLS to compare.
        modes: ["kube"],
        upTo,
        additions: 0,
      },
      {
        name: "weft: no V8 flags",
        agent: "weft",
        v8Flags: [],
        upTo,
        additions: 0,
      },
      {
        name: "weft: kubeconfig read by npm:yaml (a `%YAML 1.2` line)",
        agent: "weft",
        fullYaml: true,
        modes: ["kube"],
        upTo,
        additions: 0,
      },
    );
  }
  // --lever-v8=<flags> runs weft with other V8 flags, as a variant;
  // --lever-v8-all=<flags> the same at every N.
  for (const a of Deno.args.filter((a) => a.startsWith("--lever-v8"))) {
    const all = a.startsWith("--lever-v8-all=");
    const flags = a.slice(a.indexOf("=") + 1);
    // `+--flag` adds to the shipped flags.
    const shipped = (await startV8Flags(weftRoot)).join("");
    const v8Flags = flags.startsWith("+")
      ? [`${shipped || "--v8-flags="}${shipped ? "," : ""}${flags.slice(1)}`]
      : [`--v8-flags=${flags}`];
    variants.push({
      name: flags.startsWith("+")
        ? `weft: the shipped V8 flags ${flags.replace("+", "+ ")}`
        : `weft: V8 flags ${flags}`,
      agent: "weft",
      v8Flags,
      upTo: all ? Infinity : Number(arg("levers-up-to") ?? 100),
      additions: 0,
    });
  }
  // --lever='weft: <what>=<checkout>' runs another checkout as a variant.
  for (const a of Deno.args.filter((a) => a.startsWith("--lever="))) {
    const spec = a.slice("--lever=".length);
    const eq = spec.lastIndexOf("=");
    variants.push({
      name: spec.slice(0, eq),
      agent: "weft",
      root: spec.slice(eq + 1).replace(/\/+$/, ""),
      upTo: Number(arg("levers-up-to") ?? 100),
      additions: 0,
    });
  }
  const steadySpecs = (arg("steady") ?? "").split(",").filter((s) => s !== "")
    .map((s) => {
      const [mode, n] = s.split(":");
      return { mode: mode as Mode, n: Number(n) };
    });
  const started = new Date().toISOString();
  const commit = await commitOf(weftRoot);
  const previous = arg("previous")
    ? await previousRatios(arg("previous")!)
    : undefined;
  const rows: CompareRow[] = [];
  let steady: SteadyResult[] = [];
  const results = async (): Promise<CompareResults> => ({
    machine: await machine(),
    commit,
    started,
    finished: new Date().toISOString(),
    args: Deno.args,
    reps,
    rows,
    steady,
    ...(previous && { previous }),
  });
  if (sizes.length > 0 || steadySpecs.length === 0) {
    for (const mode of modes) {
      rows.push(
        ...await benchCompare(
          sizes.length > 0 ? sizes : [0, 10, 100, 1000, 5000],
          {
            mode,
            reps,
            variants,
            progress,
            weftRoot,
            ...(arg("additions") && { additions: Number(arg("additions")) }),
            ...(arg("logs") && { logDir: arg("logs")! }),
            ...(arg("tag") && { nsTag: arg("tag")! }),
            ...(arg("prof") && { profDir: arg("prof")! }),
          },
        ),
      );
      // Saved after each mode, so a failure later keeps what was measured.
      await writeCompareResults(await results(), out);
    }
  }
  if (steadySpecs.length > 0) {
    const parts = await Promise.all(steadySpecs.map((s) =>
      benchSteady({
        ...s,
        weftRoot,
        progress,
        ...(arg("idle-sec") && { idleSec: Number(arg("idle-sec")) }),
        ...(arg("churn-sec") && { churnSec: Number(arg("churn-sec")) }),
        ...(Deno.args.includes("--malloc-probe") && { mallocProbe: true }),
        ...(arg("logs") && { logDir: arg("logs")! }),
        weftEnv: Object.fromEntries(
          Deno.args.filter((a) => a.startsWith("--weft-env=")).map((a) => {
            const kv = a.slice("--weft-env=".length);
            return [
              kv.slice(0, kv.indexOf("=")),
              kv.slice(kv.indexOf("=") + 1),
            ];
          }),
        ),
        ...(arg("tag") && { nsTag: `${arg("tag")}${s.mode[0]}${s.n}` }),
      })
    ));
    steady = parts.flat();
  }
  console.log(await writeCompareResults(await results(), out));
}
