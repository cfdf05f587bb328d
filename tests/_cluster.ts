/**
 * A cluster of weft nodes on one machine, for the demo, the end-to-end
 * tier and the fault suite. A switch namespace holds a bridge (the
 * underlay, 198.18.0.0/24, gateway .254) and a real etcd (Debian's
 * `etcd-server`); each node namespace has `eth0` on that bridge with a
 * default route, and runs weft as its own process with flanneld's flags,
 * as a DaemonSet would. Pods are namespaces wired by weft's CNI plugin
 * with Debian's bridge and host-local plugins.
 *
 * Everything is named `<prefix>-...` (default `weft-c`) so a new run can
 * remove an earlier run's leftovers first.
 *
 * @module
 */
import { runCommand } from "../lib/command.ts";
import { cleanupStale, Netns, plugIntoBridge, run } from "./_netns.ts";

const ROOT = new URL("..", import.meta.url).pathname;
export const SWITCH_IP = "198.18.0.254";
/** The switch's IPv6 address on a dual-stack underlay (`ipv6` option). */
export const SWITCH_IP6 = "fd00:18::fe";

/**
 * `etcd` and its arguments for a one-member cluster `name` serving clients
 * on the switch address and loopback of the namespace it runs in.
 */
export function etcdCommand(name: string, dataDir: string): string[] {
  return [
    "etcd",
    "--name",
    name,
    "--data-dir",
    dataDir,
    "--listen-client-urls",
    `http://${SWITCH_IP}:2379,http://127.0.0.1:2379`,
    "--advertise-client-urls",
    `http://${SWITCH_IP}:2379`,
    "--listen-peer-urls",
    "http://127.0.0.1:2380",
    "--initial-advertise-peer-urls",
    "http://127.0.0.1:2380",
    "--initial-cluster",
    `${name}=http://127.0.0.1:2380`,
  ];
}
/** The network config a cluster gets unless told otherwise. */
export const DEFAULT_NET_CONF =
  '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}';
/** Where Debian's host-local plugin keeps its allocations. */
const HOST_LOCAL_DIR = "/var/lib/cni/networks";

/** How one node's agent is started. */
export interface NodeSpec {
  readonly name: string;
  /** Node number n: address 198.18.0.n. */
  readonly n: number;
}

/** A running weft agent. */
export interface Agent {
  readonly child: Deno.ChildProcess;
  readonly logPath: string;
  readonly started: number;
}

/** One node of the cluster. */
export class ClusterNode {
  readonly ns: Netns;
  readonly name: string;
  readonly n: number;
  readonly dir: string;
  agent: Agent | undefined;
  #agents = 0;

  constructor(ns: Netns, name: string, n: number, dir: string) {
    this.ns = ns;
    this.name = name;
    this.n = n;
    this.dir = dir;
  }

  get ip(): string {
    return `198.18.0.${this.n}`;
  }

  /** Its IPv6 underlay address (only wired with the `ipv6` option). */
  get ip6(): string {
    return `fd00:18::${this.n}`;
  }

  get subnetFile(): string {
    return `${this.dir}/subnet.env`;
  }

  get healthPort(): number {
    return 10256;
  }

  /** Reads this node's subnet.env as key/value pairs. */
  async subnetEnv(): Promise<Record<string, string>> {
    const text = await Deno.readTextFile(this.subnetFile);
    return Object.fromEntries(
      text.trim().split("\n").map((l) => l.split("=", 2) as [string, string]),
    );
  }
}

/** Options of {@linkcode Cluster.create}. */
export interface ClusterOptions {
  readonly nodes?: number;
  /** Name prefix of namespaces and the temp dir. Default `weft-c`. */
  readonly prefix?: string;
  /** net-conf.json written to etcd. */
  readonly netConf?: string;
  /** Extra flags for every agent. */
  readonly agentFlags?: string[];
  /**
   * Flags for `deno run` itself in every agent, before the script (say,
   * the V8 flags of `deploy/v8-flags.txt`, which the image runs with).
   */
  readonly denoFlags?: readonly string[];
  /** Reconcile period passed to agents (seconds). */
  readonly reconcilePeriod?: number;
  /**
   * Start Debian's etcd in the switch namespace and write `netConf` to it.
   * Default true; false for a cluster whose agents use the Kubernetes API.
   */
  readonly etcd?: boolean;
  /**
   * Agents and etcd write their logs to their files themselves and outlive
   * this process (`deno task demo --keep`). Default false: this process
   * copies their logs, and they lose their log when it exits.
   */
  readonly detached?: boolean;
  /**
   * Give the underlay IPv6 too (fd00:18::n/64, switch fd00:18::fe), for a
   * dual-stack `netConf`. Default false.
   */
  readonly ipv6?: boolean;
  /**
   * Per node: what its agent needs besides weft's usual permissions (a
   * program run inside the node namespace before deno, commands, variables).
   */
  readonly agentExtra?: (node: ClusterNode) => AgentExtra;
}

/** See {@linkcode ClusterOptions.agentExtra}. */
export interface AgentExtra {
  readonly launcher?: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  /** More `--allow-run` entries. */
  readonly run?: readonly string[];
}

/**
 * Copies a child's output to a file as it arrives. (`pipeTo(file.writable)`
 * holds data back until the stream ends, which hides a live agent's log.)
 */
export function teeToFile(
  stream: ReadableStream<Uint8Array>,
  file: Deno.FsFile,
): void {
  (async () => {
    try {
      for await (const chunk of stream) file.writeSync(chunk);
    } catch { /* the child went away */ }
  })();
}

/** Environment variables weft reads. */
export const ENV_NAMES =
  "FLANNELD_*,WEFT_*,NODE_NAME,POD_NAME,POD_NAMESPACE,KUBERNETES_SERVICE_HOST,KUBERNETES_SERVICE_PORT,DENO_TLS_CA_STORE,DENO_CERT,SSL_CERT_FILE";

/**
 * Permissions the agent runs with: exactly the files, hosts, variables
 * and commands it uses, never -A. `hosts` are the API server or etcd
 * endpoints (`host:port`); the health port is added.
 */
export function agentPermissions(
  dir: string,
  hosts: string[],
  healthPort: number,
  readPaths: string[] = [],
  extra: AgentExtra = {},
): string[] {
  const envNames = Object.keys(extra.env ?? {});
  return [
    "--no-prompt",
    // Deno's pointer operations (UnsafePointer.create, pointer views)
    // refuse a path-scoped FFI grant, so FFI cannot be narrowed to the
    // libnl files; the code dlopens only libnl-3, libnl-route-3 and libc.
    "--allow-ffi",
    `--allow-env=${[ENV_NAMES, ...envNames].join(",")}`,
    `--allow-net=${[...hosts, `0.0.0.0:${healthPort}`].join(",")}`,
    `--allow-read=${[dir, "/proc/sys/net", ...readPaths].join(",")}`,
    `--allow-write=${dir},/proc/sys/net`,
    `--allow-run=${
      [
        "iptables-restore,iptables-save,ip6tables-restore,ip6tables-save,nft",
        ...extra.run ?? [],
      ].join(",")
    }`,
  ];
}

/** What `ping` printed in its summary. */
export interface PingSummary {
  readonly transmitted: number;
  readonly received: number;
  readonly rttAvgMs?: number;
  /** stderr and the summary, for messages. */
  readonly text: string;
}

/** Parses ping's summary lines (iputils). */
export function parsePing(stdout: string, stderr = ""): PingSummary {
  const counts = stdout.match(/(\d+) packets transmitted, (\d+) received/);
  const rtt = stdout.match(/= [\d.]+\/([\d.]+)\//);
  return {
    transmitted: Number(counts?.[1] ?? 0),
    received: Number(counts?.[2] ?? 0),
    ...(rtt?.[1] !== undefined && { rttAvgMs: Number(rtt[1]) }),
    text: (stderr + stdout).trim(),
  };
}

/** A subnet lease as stored in etcd. */
export interface EtcdLease {
  /** `/coreos.com/network/subnets/10.244.7.0-24`. */
  readonly key: string;
  /** `10.244.7.0/24`. */
  readonly subnet: string;
  /** `fc00:0:0:7::/64`, from a dual-stack key (`...-24&fc00:0:0:7::-64`). */
  readonly ipv6Subnet?: string;
  readonly value: {
    PublicIP: string;
    PublicIPv6?: string | null;
    BackendType: string;
    BackendData?: { VNI?: number; VtepMAC?: string };
    BackendV6Data?: { VNI?: number; VtepMAC?: string };
  };
  /** The etcd lease ID (decimal), "0" for a reservation. */
  readonly etcdLease: string;
}

/** A pod namespace wired by the CNI plugin. */
export interface Pod {
  readonly node: ClusterNode;
  readonly ns: Netns;
  readonly ip: string;
  /** Its IPv6 address, on a dual-stack cluster. */
  readonly ip6?: string;
  readonly id: string;
}

/** A running namespace cluster. Dispose to tear it down. */
export class Cluster implements AsyncDisposable {
  readonly prefix: string;
  readonly dir: string;
  readonly hub: Netns;
  readonly nodes: ClusterNode[];
  readonly opts: ClusterOptions;
  etcd: Deno.ChildProcess | undefined;
  readonly pods: Pod[] = [];

  private constructor(
    prefix: string,
    dir: string,
    hub: Netns,
    nodes: ClusterNode[],
    opts: ClusterOptions,
  ) {
    this.prefix = prefix;
    this.dir = dir;
    this.hub = hub;
    this.nodes = nodes;
    this.opts = opts;
  }

  get etcdEndpoint(): string {
    return `http://${SWITCH_IP}:2379`;
  }

  /** Removes leftovers of an earlier run with the same prefix. */
  static async cleanup(prefix = "weft-c"): Promise<void> {
    await cleanupStale(`${prefix}-`);
    await Deno.remove(`/tmp/${prefix}`, { recursive: true }).catch(() => {});
    // host-local keeps its allocations on the host, under the network name
    // (`<prefix>-<node>`, see #cni): without this they pile up run after run.
    try {
      for await (const e of Deno.readDir(HOST_LOCAL_DIR)) {
        if (e.name.startsWith(`${prefix}-`)) {
          await Deno.remove(`${HOST_LOCAL_DIR}/${e.name}`, { recursive: true })
            .catch(() => {});
        }
      }
    } catch { /* no host-local state at all */ }
  }

  /** Builds the namespaces, the underlay and etcd with the network config. */
  static async create(opts: ClusterOptions = {}): Promise<Cluster> {
    const prefix = opts.prefix ?? "weft-c";
    await Cluster.cleanup(prefix);
    const dir = `/tmp/${prefix}`;
    await Deno.mkdir(dir, { recursive: true });
    const hub = await Netns.named(`${prefix}-sw`);
    const nodes: ClusterNode[] = [];
    for (let i = 1; i <= (opts.nodes ?? 3); i++) {
      const ns = await Netns.named(`${prefix}-n${i}`);
      const nodeDir = `${dir}/node${i}`;
      await Deno.mkdir(nodeDir, { recursive: true });
      nodes.push(new ClusterNode(ns, `node${i}`, i, nodeDir));
    }
    const c = new Cluster(prefix, dir, hub, nodes, opts);
    try {
      await hub.ip("link", "add", "br0", "type", "bridge");
      await hub.ip("addr", "add", `${SWITCH_IP}/24`, "dev", "br0");
      if (opts.ipv6) {
        await hub.ip("addr", "add", `${SWITCH_IP6}/64`, "dev", "br0", "nodad");
      }
      await hub.ip("link", "set", "br0", "up");
      for (const node of nodes) await c.#wire(node);
      if (opts.etcd ?? true) {
        await c.startEtcd();
        await c.putConfig(opts.netConf ?? DEFAULT_NET_CONF);
      }
    } catch (e) {
      await c.close();
      throw e;
    }
    return c;
  }

  async #wire(node: ClusterNode): Promise<void> {
    const port = `${this.prefix}-p${node.n}`.slice(-15);
    await plugIntoBridge(this.hub, node.ns, port);
    await node.ns.ip("addr", "add", `${node.ip}/24`, "dev", "eth0");
    await node.ns.ip("link", "set", "eth0", "up");
    await node.ns.ip("route", "add", "default", "via", SWITCH_IP);
    await node.ns.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    if (this.opts.ipv6) {
      await node.ns.ip("addr", "add", `${node.ip6}/64`, "dev", "eth0", "nodad");
      await node.ns.ip("-6", "route", "add", "default", "via", SWITCH_IP6);
      await node.ns.exec([
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=1",
      ]);
    }
  }

  /** Starts (or restarts) etcd in the switch namespace. */
  async startEtcd(): Promise<void> {
    const data = `${this.dir}/etcd`;
    await Deno.mkdir(data, { recursive: true });
    const log = await Deno.open(`${this.dir}/etcd.log`, {
      create: true,
      append: true,
      write: true,
    });
    this.etcd = new Deno.Command(this.opts.detached ? "sh" : "ip", {
      args: [
        ...this.#detach(`${this.dir}/etcd.log`),
        "netns",
        "exec",
        this.hub.name,
        ...etcdCommand("demo", data),
      ],
      stdout: "null",
      stderr: this.opts.detached ? "null" : "piped",
    }).spawn();
    if (!this.opts.detached) teeToFile(this.etcd.stderr, log);
    for (let i = 0; i < 100; i++) {
      const r = await this.etcdctl("endpoint", "health");
      if (r.code === 0) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`etcd did not become healthy; see ${this.dir}/etcd.log`);
  }

  /** Stops etcd (SIGKILL) and waits for it. */
  async stopEtcd(): Promise<void> {
    if (!this.etcd) return;
    try {
      this.etcd.kill("SIGKILL");
    } catch { /* already gone */ }
    await this.etcd.status;
    this.etcd = undefined;
  }

  /** Runs etcdctl (v3 API) against the cluster's etcd. */
  etcdctl(...args: string[]) {
    return run([
      "ip",
      "netns",
      "exec",
      this.hub.name,
      "env",
      "ETCDCTL_API=3",
      "etcdctl",
      "--endpoints",
      "http://127.0.0.1:2379",
      ...args,
    ]);
  }

  /**
   * With `detached`, the arguments that make `sh` run `ip ...` with its
   * output appended to `logPath` by the child itself
   * (`sh -c 'exec "$@" >>log 2>&1'`): the pid stays the program's and the
   * log keeps going after this process exits.
   */
  #detach(logPath: string): string[] {
    return this.opts.detached
      ? ["-c", 'exec "$@" >>"$0" 2>&1', logPath, "ip"]
      : [];
  }

  /** Writes the network config to `/coreos.com/network/config`. */
  async putConfig(netConf: string): Promise<void> {
    const r = await this.etcdctl("put", "/coreos.com/network/config", netConf);
    if (r.code !== 0) throw new Error(`etcdctl put config: ${r.stderr}`);
  }

  /** The flags a node's agent runs with, flanneld's names. */
  agentArgs(node: ClusterNode): string[] {
    return [
      ...(this.opts.etcd ?? true
        ? [`--etcd-endpoints=${this.etcdEndpoint}`]
        : []),
      `--subnet-file=${node.subnetFile}`,
      "--ip-masq",
      `--healthz-port=${node.healthPort}`,
      "--iface=eth0",
      ...(this.opts.reconcilePeriod !== undefined
        ? [`--reconcile-period=${this.opts.reconcilePeriod}`]
        : []),
      ...(this.opts.agentFlags ?? []),
    ];
  }

  /**
   * Starts weft on a node (a separate process in its namespace). `hosts`
   * are more `host:port` the agent may reach (e.g. a fault proxy);
   * `launcher` runs deno through another program (`ld.so --preload ...`).
   */
  async startAgent(
    node: ClusterNode,
    extra: string[] = [],
    hosts: string[] = [],
    env: Record<string, string> = {},
    launcher: string[] = [],
  ): Promise<Agent> {
    const logPath = `${node.dir}/weft.log`;
    const more = this.opts.agentExtra?.(node) ?? {};
    const log = await Deno.open(logPath, {
      create: true,
      append: true,
      write: true,
    });
    const child = new Deno.Command(this.opts.detached ? "sh" : "ip", {
      args: [
        ...this.#detach(logPath),
        "netns",
        "exec",
        node.ns.name,
        ...more.launcher ?? [],
        ...launcher,
        Deno.execPath(),
        "run",
        ...(this.opts.denoFlags ?? []),
        ...agentPermissions(
          node.dir,
          [`${SWITCH_IP}:2379`, ...hosts],
          node.healthPort,
          [],
          more,
        ),
        `${ROOT}main.ts`,
        ...this.agentArgs(node),
        ...extra,
      ],
      env: { NODE_NAME: node.name, ...more.env, ...env },
      stdout: "null",
      stderr: this.opts.detached ? "null" : "piped",
      cwd: ROOT,
    }).spawn();
    if (!this.opts.detached) teeToFile(child.stderr, log);
    node.agent = { child, logPath, started: performance.now() };
    return node.agent;
  }

  /** Stops a node's agent with a signal and waits for it to exit. */
  async stopAgent(
    node: ClusterNode,
    signal: Deno.Signal = "SIGTERM",
  ): Promise<Deno.CommandStatus | undefined> {
    const a = node.agent;
    if (!a) return undefined;
    node.agent = undefined;
    try {
      a.child.kill(signal);
    } catch { /* already exited */ }
    return await a.child.status;
  }

  /** Waits until a node's /readyz answers 200. */
  async waitReady(node: ClusterNode, timeoutMs = 30_000): Promise<number> {
    const start = performance.now();
    while (performance.now() - start < timeoutMs) {
      const r = await node.ns.tryExec([
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        `http://127.0.0.1:${node.healthPort}/readyz`,
      ]);
      if (r.stdout === "200") return performance.now() - start;
      if (node.agent) {
        const done = await Promise.race([
          node.agent.child.status,
          new Promise((r) => setTimeout(() => r(undefined), 200)),
        ]);
        if (done !== undefined) {
          throw new Error(
            `weft on ${node.name} exited: ${
              (await Deno.readTextFile(node.agent.logPath)).slice(-2000)
            }`,
          );
        }
      }
    }
    throw new Error(
      `weft on ${node.name} not ready after ${timeoutMs} ms; log ${node.dir}/weft.log`,
    );
  }

  /** Fetches a node's /metrics text. */
  async metrics(node: ClusterNode): Promise<string> {
    return await node.ns.exec([
      "curl",
      "-s",
      `http://127.0.0.1:${node.healthPort}/metrics`,
    ]);
  }

  /** Creates a pod namespace on a node through weft's CNI plugin. */
  async addPod(node: ClusterNode, index: number): Promise<string> {
    const id = `${node.name}-pod${index}`;
    const ns = await Netns.named(`${this.prefix}-${node.n}p${index}`);
    const out = await this.#cni(node, "ADD", id, ns.path);
    const result = JSON.parse(out) as { ips?: { address: string }[] };
    const addrs = (result.ips ?? []).map((a) => a.address.split("/")[0]!);
    const ip = addrs.find((a) => !a.includes(":"));
    const ip6 = addrs.find((a) => a.includes(":"));
    if (!ip) throw new Error(`CNI ADD for ${id} returned no IP: ${out}`);
    this.pods.push({ node, ns, ip, id, ...(ip6 !== undefined && { ip6 }) });
    return ip;
  }

  /** Deletes a pod through the CNI plugin and removes its namespace. */
  async delPod(id: string): Promise<void> {
    const i = this.pods.findIndex((p) => p.id === id);
    const pod = this.pods[i];
    if (!pod) return;
    await this.#cni(pod.node, "DEL", id, pod.ns.path);
    await pod.ns.close();
    this.pods.splice(i, 1);
  }

  async #cni(
    node: ClusterNode,
    command: string,
    id: string,
    netns: string,
  ): Promise<string> {
    const conf = JSON.stringify({
      cniVersion: "0.3.1",
      // host-local keeps its state under /var/lib/cni/networks/<name>:
      // a name per node keeps the nodes' allocations apart on one host.
      name: `${this.prefix}-${node.name}`,
      type: "flannel",
      subnetFile: node.subnetFile,
      dataDir: `${node.dir}/cni`,
      delegate: { hairpinMode: true, isDefaultGateway: true },
    });
    const out = await runCommand([
      "ip",
      "netns",
      "exec",
      node.ns.name,
      Deno.execPath(),
      "run",
      "--no-prompt",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-run",
      `${ROOT}main.ts`,
      "cni",
    ], {
      env: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: id,
        CNI_NETNS: netns,
        CNI_IFNAME: "eth0",
        CNI_PATH: "/usr/lib/cni",
      },
      stdin: conf,
    });
    if (out.code !== 0) {
      throw new Error(
        `CNI ${command} ${id} failed: ${out.stdout} ${out.stderr}`,
      );
    }
    return out.stdout;
  }

  /**
   * Pings every pod from every pod on another node, one echo each; `rttMs`
   * is the round trip ping reported (absent when it failed).
   */
  async pingMatrix(): Promise<
    { from: string; to: string; ok: boolean; rttMs?: number }[]
  > {
    const results: { from: string; to: string; ok: boolean; rttMs?: number }[] =
      [];
    for (const a of this.pods) {
      for (const b of this.pods) {
        if (a.node === b.node) continue;
        const s = await this.pingRun(a.id, b.ip, { count: 1, deadline: 2 });
        results.push({
          from: a.id,
          to: b.id,
          ok: s.received === s.transmitted && s.transmitted > 0,
          ...(s.rttAvgMs !== undefined && { rttMs: s.rttAvgMs }),
        });
      }
    }
    return results;
  }

  /** The pod with this id; throws when there is none. */
  pod(id: string): Pod {
    const p = this.pods.find((p) => p.id === id);
    if (!p) throw new Error(`No pod "${id}"`);
    return p;
  }

  /**
   * Runs `ping` from a pod and returns the counts from its summary
   * (`N packets transmitted, M received`). With `interval` below 0.2 s
   * this needs root, which the harness has.
   */
  async pingRun(
    fromPod: string,
    dst: string,
    opts: {
      count: number;
      interval?: number;
      deadline?: number;
      size?: number;
      dontFragment?: boolean;
    },
  ): Promise<PingSummary> {
    const out = await this.pod(fromPod).ns.tryExec([
      "ping",
      "-n",
      "-q",
      "-c",
      String(opts.count),
      "-i",
      String(opts.interval ?? 0.2),
      ...(opts.deadline !== undefined ? ["-w", String(opts.deadline)] : []),
      ...(opts.size !== undefined ? ["-s", String(opts.size)] : []),
      ...(opts.dontFragment ? ["-M", "do"] : []),
      dst,
    ]);
    return parsePing(out.stdout, out.stderr);
  }

  /**
   * Measures TCP throughput from one pod to another with iperf3
   * (`iperf3 -s -1` in the server pod, `iperf3 -c -t seconds -J` in the
   * client pod).
   */
  async iperf(
    fromPod: string,
    toPod: string,
    seconds = 3,
  ): Promise<{ bitsPerSecond: number; retransmits: number }> {
    const server = this.pod(toPod);
    const srv = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        server.ns.name,
        "iperf3",
        "-s",
        "-1",
        "-B",
        server.ip,
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      let last = "";
      // The server needs a moment to listen: retry "connection refused".
      for (let i = 0; i < 50; i++) {
        const r = await this.pod(fromPod).ns.tryExec([
          "iperf3",
          "-c",
          server.ip,
          "-t",
          String(seconds),
          "-J",
        ]);
        // iperf3 -J reports failures in an "error" key, sometimes with
        // exit status 0.
        let j: {
          error?: string;
          end?: {
            sum_received?: { bits_per_second: number };
            sum_sent?: { retransmits?: number };
          };
        } = {};
        try {
          j = JSON.parse(r.stdout);
        } catch { /* not JSON: keep the text for the message */ }
        const bps = j.end?.sum_received?.bits_per_second;
        if (r.code === 0 && j.error === undefined && bps !== undefined) {
          return {
            bitsPerSecond: bps,
            retransmits: j.end?.sum_sent?.retransmits ?? 0,
          };
        }
        last = j.error ?? r.stdout + r.stderr;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`iperf3 ${fromPod} -> ${toPod} failed: ${last}`);
    } finally {
      try {
        srv.kill("SIGKILL");
      } catch { /* exited after its one test */ }
      await srv.status;
    }
  }

  /** The leases in etcd: key, subnet and the decoded value. */
  async leases(): Promise<EtcdLease[]> {
    const r = await this.etcdctl(
      "get",
      "--prefix",
      "/coreos.com/network/subnets/",
      "-w",
      "json",
    );
    if (r.code !== 0) throw new Error(`etcdctl get leases: ${r.stderr}`);
    // Lease IDs are int64: keep them as strings, past 2^53 JSON numbers lie.
    const j = JSON.parse(
      r.stdout.replace(/"lease":\s*(\d+)/g, '"lease":"$1"'),
    ) as {
      kvs?: { key: string; value: string; lease?: number | string }[];
    };
    return (j.kvs ?? []).map((kv) => {
      const key = atob(kv.key);
      const value = JSON.parse(atob(kv.value)) as EtcdLease["value"];
      const [v4, v6] = key.split("/").pop()!.split("&") as [string, string?];
      return {
        key,
        subnet: v4.replace("-", "/"),
        ...(v6 !== undefined && { ipv6Subnet: v6.replace(/-(\d+)$/, "/$1") }),
        value,
        etcdLease: String(kv.lease ?? "0"),
      };
    });
  }

  /** Tears everything down: agents, pods, etcd, namespaces, files. */
  async close(): Promise<void> {
    for (const node of this.nodes) await this.stopAgent(node, "SIGKILL");
    await this.stopEtcd();
    for (const pod of this.pods) await pod.ns.close();
    for (const node of this.nodes) await node.ns.close();
    await this.hub.close();
    await Cluster.cleanup(this.prefix);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
