/**
 * The scenario the demo shows and the end-to-end tier asserts: a namespace
 * cluster (tests/_cluster.ts) whose agents use either etcd (Debian's etcd
 * in the switch namespace) or a real kube-apiserver (tests/e2e/_kube.ts),
 * all agents started and ready, and pods on every node. Also the readers
 * both need: who has which subnet and VTEP MAC, from the store and from
 * each node's kernel.
 *
 * @module
 */
import {
  type AgentExtra,
  Cluster,
  type ClusterNode,
  DEFAULT_NET_CONF,
  SWITCH_IP,
} from "../_cluster.ts";
import { KUBE_PORT, KubeControlPlane, type KubeNode } from "./_kube.ts";

/** Which subnet manager the agents use. */
export type Mode = "etcd" | "kube";

/** Options of {@linkcode startScenario}. */
export interface ScenarioOptions {
  /** Namespace and temp dir prefix. */
  readonly prefix: string;
  /** Default "etcd". */
  readonly mode?: Mode;
  /** Default 3. */
  readonly nodes?: number;
  /** Pods per node, created after all agents are ready. Default 2. */
  readonly podsPerNode?: number;
  /** `--reconcile-period` of the agents (seconds); default the agent's. */
  readonly reconcilePeriod?: number;
  /** Agents and servers outlive this process (demo --keep). */
  readonly detached?: boolean;
  /** Called as each stage finishes, for progress output. */
  readonly progress?: (msg: string) => void;
  /** The network config (etcd, or every node's net-conf.json). */
  readonly netConf?: string;
  /** What each agent needs besides weft's usual permissions. */
  readonly agentExtra?: (node: ClusterNode) => AgentExtra;
}

/** One node as the store publishes it. */
export interface PublishedNode {
  readonly name: string;
  /** `10.244.7.0/24`. */
  readonly subnet: string;
  readonly publicIP: string;
  readonly vtepMAC: string;
  /** Where it was read: the etcd key, or `node/<name>` annotations. */
  readonly source: string;
  /** The raw record: the etcd value or the flannel annotations. */
  readonly raw: string;
}

/** A running scenario. Dispose to tear everything down. */
export class Scenario implements AsyncDisposable {
  readonly cluster: Cluster;
  readonly mode: Mode;
  readonly kube: KubeControlPlane | undefined;
  /** Per node, ms from the agent's spawn to /readyz 200. */
  readonly readyMs = new Map<string, number>();

  constructor(cluster: Cluster, mode: Mode, kube?: KubeControlPlane) {
    this.cluster = cluster;
    this.mode = mode;
    this.kube = kube;
  }

  /** The net-conf.json of a kube-mode node. */
  netConfPath(node: ClusterNode): string {
    return `${node.dir}/net-conf.json`;
  }

  /** Starts a node's agent with the flags of this scenario's mode. */
  async startAgent(node: ClusterNode): Promise<void> {
    if (this.mode === "etcd") {
      await this.cluster.startAgent(node);
      return;
    }
    await this.cluster.startAgent(node, [
      "--kube-subnet-mgr",
      `--kubeconfig-file=${node.dir}/kubeconfig`,
      `--net-config-path=${this.netConfPath(node)}`,
    ], [`${SWITCH_IP}:${KUBE_PORT}`]);
  }

  /** Waits for /readyz on a node; returns ms since its agent was spawned. */
  async waitReady(node: ClusterNode, timeoutMs = 30_000): Promise<number> {
    const started = node.agent?.started ?? performance.now();
    await this.cluster.waitReady(node, timeoutMs);
    const ms = performance.now() - started;
    this.readyMs.set(node.name, ms);
    return ms;
  }

  /** Every node's lease as the store has it, in node order. */
  async published(): Promise<PublishedNode[]> {
    if (this.kube) {
      const nodes = await this.kube.nodes();
      return nodes.map(publishedFromKube).sort(byName);
    }
    const leases = await this.cluster.leases();
    const out: PublishedNode[] = [];
    for (const l of leases) {
      const node = this.cluster.nodes.find((n) => n.ip === l.value.PublicIP);
      out.push({
        name: node?.name ?? `(${l.value.PublicIP})`,
        subnet: l.subnet,
        publicIP: l.value.PublicIP,
        vtepMAC: l.value.BackendData?.VtepMAC ?? "",
        source: l.key,
        raw: JSON.stringify(l.value),
      });
    }
    return out.sort(byName);
  }

  /**
   * Removes a node's lease from the store: the etcd key (`etcdctl del`),
   * or the Node object.
   */
  async removeLease(node: ClusterNode): Promise<void> {
    const mine = (await this.published()).find((p) => p.name === node.name);
    if (!mine) throw new Error(`No lease for ${node.name}`);
    if (this.kube) {
      await this.kube.deleteNode(node.name);
      return;
    }
    const r = await this.cluster.etcdctl("del", mine.source);
    if (r.code !== 0 || r.stdout.trim() !== "1") {
      throw new Error(`etcdctl del ${mine.source}: ${r.stdout}${r.stderr}`);
    }
  }

  /** Tears down agents, pods, servers, namespaces and files. */
  async close(): Promise<void> {
    try {
      await this.kube?.close();
    } finally {
      await this.cluster.close();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function byName(a: { name: string }, b: { name: string }): number {
  return a.name.localeCompare(b.name);
}

const ANN = "flannel.alpha.coreos.com/";

function publishedFromKube(n: KubeNode): PublishedNode {
  const a = n.metadata.annotations ?? {};
  let mac = "";
  try {
    mac = (JSON.parse(a[`${ANN}backend-data`] ?? "{}") as {
      VtepMAC?: string;
    }).VtepMAC ?? "";
  } catch { /* not published yet */ }
  const flannel = Object.fromEntries(
    Object.entries(a).filter(([k]) => k.startsWith(ANN)),
  );
  return {
    name: n.metadata.name,
    subnet: n.spec.podCIDR ?? "",
    publicIP: a[`${ANN}public-ip`] ?? "",
    vtepMAC: mac,
    source: `node/${n.metadata.name}`,
    raw: JSON.stringify(flannel),
  };
}

/**
 * Builds the cluster, starts the store (etcd, or etcd + kube-apiserver with
 * Node objects carrying `spec.podCIDR` 10.244.N.0/24), starts every agent,
 * waits until all are ready, then creates the pods through weft's CNI
 * plugin. On failure everything built so far is torn down.
 */
export async function startScenario(opts: ScenarioOptions): Promise<Scenario> {
  const mode = opts.mode ?? "etcd";
  const say = opts.progress ?? (() => {});
  const cluster = await Cluster.create({
    prefix: opts.prefix,
    nodes: opts.nodes ?? 3,
    etcd: mode === "etcd",
    detached: opts.detached ?? false,
    ...(opts.netConf !== undefined && { netConf: opts.netConf }),
    ...(opts.agentExtra && { agentExtra: opts.agentExtra }),
    ...(opts.reconcilePeriod !== undefined &&
      { reconcilePeriod: opts.reconcilePeriod }),
  });
  let s: Scenario | undefined;
  try {
    if (mode === "etcd") {
      say(
        `etcd running in ${cluster.hub.name} at ${cluster.etcdEndpoint}; network config written to /coreos.com/network/config`,
      );
      s = new Scenario(cluster, mode);
    } else {
      const kube = await KubeControlPlane.start(
        cluster.hub,
        SWITCH_IP,
        `${cluster.dir}/kube`,
      );
      s = new Scenario(cluster, mode, kube);
      say(
        `kube-apiserver running in ${cluster.hub.name} at ${kube.server} (ready in ${
          (kube.startMs / 1000).toFixed(1)
        } s), RBAC: flannel ClusterRole bound to the agents' group`,
      );
      for (const node of cluster.nodes) {
        await kube.createNode(node.name, `10.244.${node.n}.0/24`);
        await kube.writeKubeconfig(node.name, `${node.dir}/kubeconfig`);
        await Deno.writeTextFile(
          s.netConfPath(node),
          opts.netConf ?? DEFAULT_NET_CONF,
        );
      }
      say(
        `Node objects created with spec.podCIDR 10.244.N.0/24; per-node kubeconfigs and net-conf.json written`,
      );
    }
    for (const node of cluster.nodes) await s.startAgent(node);
    await Promise.all(cluster.nodes.map((n) => s!.waitReady(n)));
    say(`all ${cluster.nodes.length} agents ready`);
    for (const node of cluster.nodes) {
      for (let i = 1; i <= (opts.podsPerNode ?? 2); i++) {
        await cluster.addPod(node, i);
      }
    }
    return s;
  } catch (e) {
    if (s) await s.close();
    else await cluster.close();
    throw e;
  }
}
