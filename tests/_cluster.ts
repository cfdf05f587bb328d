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
import { Netns, run } from "./_netns.ts";

const ROOT = new URL("..", import.meta.url).pathname;
export const SWITCH_IP = "198.18.0.254";

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
  /** Reconcile period passed to agents (seconds). */
  readonly reconcilePeriod?: number;
}

/** Permissions the agent runs with: the least it needs, never -A. */
export function agentPermissions(dir: string): string[] {
  return [
    "--no-prompt",
    "--allow-ffi",
    "--allow-env",
    "--allow-sys=hostname,networkInterfaces",
    `--allow-net`,
    `--allow-read=${dir},/proc/sys/net`,
    `--allow-write=${dir},/proc/sys/net`,
    "--allow-run=iptables-restore,iptables-save,ip6tables-restore,ip6tables-save,nft",
  ];
}

/** A running namespace cluster. Dispose to tear it down. */
export class Cluster implements AsyncDisposable {
  readonly prefix: string;
  readonly dir: string;
  readonly hub: Netns;
  readonly nodes: ClusterNode[];
  readonly opts: ClusterOptions;
  etcd: Deno.ChildProcess | undefined;
  readonly pods: { node: ClusterNode; ns: Netns; ip: string; id: string }[] =
    [];

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
    const list = await run(["ip", "netns", "list"]);
    for (const line of list.stdout.split("\n")) {
      const name = line.split(" ")[0];
      if (!name?.startsWith(`${prefix}-`)) continue;
      const pids = await run(["ip", "netns", "pids", name]);
      for (const pid of pids.stdout.split("\n").filter((p) => p)) {
        await run(["kill", "-9", pid]);
      }
      await run(["ip", "netns", "del", name]);
    }
    await Deno.remove(`/tmp/${prefix}`, { recursive: true }).catch(() => {});
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
      await hub.ip("link", "set", "br0", "up");
      for (const node of nodes) await c.#wire(node);
      await c.startEtcd();
      await c.putConfig(
        opts.netConf ??
          '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}',
      );
    } catch (e) {
      await c.close();
      throw e;
    }
    return c;
  }

  async #wire(node: ClusterNode): Promise<void> {
    const port = `${this.prefix}-p${node.n}`.slice(-15);
    await this.hub.ip(
      "link",
      "add",
      port,
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      node.ns.name,
    );
    await this.hub.ip("link", "set", port, "master", "br0", "up");
    await node.ns.ip("addr", "add", `${node.ip}/24`, "dev", "eth0");
    await node.ns.ip("link", "set", "eth0", "up");
    await node.ns.ip("route", "add", "default", "via", SWITCH_IP);
    await node.ns.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
  }

  /** Starts (or restarts) etcd in the switch namespace. */
  async startEtcd(): Promise<void> {
    const data = `${this.dir}/etcd`;
    await Deno.mkdir(data, { recursive: true });
    const log = await Deno.open(`${this.dir}/etcd.log`, {
      create: true,
      append: true,
    });
    this.etcd = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        this.hub.name,
        "etcd",
        "--name",
        "demo",
        "--data-dir",
        data,
        "--listen-client-urls",
        `http://${SWITCH_IP}:2379,http://127.0.0.1:2379`,
        "--advertise-client-urls",
        `http://${SWITCH_IP}:2379`,
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        "demo=http://127.0.0.1:2380",
      ],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.etcd.stderr.pipeTo(log.writable).catch(() => {});
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

  /** Writes the network config to `/coreos.com/network/config`. */
  async putConfig(netConf: string): Promise<void> {
    const r = await this.etcdctl("put", "/coreos.com/network/config", netConf);
    if (r.code !== 0) throw new Error(`etcdctl put config: ${r.stderr}`);
  }

  /** The flags a node's agent runs with, flanneld's names. */
  agentArgs(node: ClusterNode): string[] {
    return [
      `--etcd-endpoints=${this.etcdEndpoint}`,
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

  /** Starts weft on a node (a separate process in its namespace). */
  async startAgent(node: ClusterNode, extra: string[] = []): Promise<Agent> {
    const logPath = `${node.dir}/weft.log`;
    const log = await Deno.open(logPath, { create: true, append: true });
    const child = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        node.ns.name,
        Deno.execPath(),
        "run",
        ...agentPermissions(node.dir),
        `${ROOT}main.ts`,
        ...this.agentArgs(node),
        ...extra,
      ],
      env: { NODE_NAME: node.name },
      stdout: "null",
      stderr: "piped",
      cwd: ROOT,
    }).spawn();
    child.stderr.pipeTo(log.writable).catch(() => {});
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
    const ip = result.ips?.[0]?.address.split("/")[0];
    if (!ip) throw new Error(`CNI ADD for ${id} returned no IP: ${out}`);
    this.pods.push({ node, ns, ip, id });
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
    const child = new Deno.Command("ip", {
      args: [
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
      ],
      env: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: id,
        CNI_NETNS: netns,
        CNI_IFNAME: "eth0",
        CNI_PATH: "/usr/lib/cni",
      },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(conf));
    await w.close();
    const out = await child.output();
    const stdout = new TextDecoder().decode(out.stdout);
    if (!out.success) {
      throw new Error(
        `CNI ${command} ${id} failed: ${stdout} ${
          new TextDecoder().decode(out.stderr)
        }`,
      );
    }
    return stdout;
  }

  /** Pings every pod from every pod on another node; returns failures. */
  async pingMatrix(): Promise<
    { from: string; to: string; ok: boolean }[]
  > {
    const results: { from: string; to: string; ok: boolean }[] = [];
    for (const a of this.pods) {
      for (const b of this.pods) {
        if (a.node === b.node) continue;
        results.push({
          from: a.id,
          to: b.id,
          ok: await a.ns.ping(b.ip, 1, 2),
        });
      }
    }
    return results;
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
