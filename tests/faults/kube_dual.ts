/**
 * The fault suite's dual-stack Kubernetes-mode cluster: three nodes whose
 * agents run `--kube-subnet-mgr` against a real kube-apiserver in the
 * switch namespace (tests/e2e/_kube.ts), with Node objects holding an
 * IPv4 and an IPv6 pod CIDR and a net-conf.json with `EnableIPv6`. Its
 * phase is the corpus of Node objects whose IPv6 half is hostile
 * (tests/faults/corpus_v6.ts), with pods pinging over both families.
 *
 * @module
 */
import {
  Cluster,
  type ClusterNode,
  type EtcdLease,
  SWITCH_IP,
} from "../_cluster.ts";
import { KUBE_PORT, KubeControlPlane } from "../e2e/_kube.ts";
import {
  DUAL_NODE_CASES,
  dualIds,
  dualLease,
  type DualNodeSlot,
  dualTraces,
  splitOwn,
} from "./corpus_v6.ts";
import { type CorpusCase, corpusRun } from "./corpus_run.ts";
import { DUAL_NET_CONF } from "./dual_stack.ts";
import { dualSlotEntries } from "./kernel.ts";
import type { FaultRow } from "./report.ts";
import { FaultRun } from "./run.ts";

const ANN = "flannel.alpha.coreos.com/";

interface DualNode {
  metadata: { name: string; annotations?: Record<string, string> };
  spec: { podCIDR?: string; podCIDRs?: string[] };
}

/** A dual-stack Kubernetes-mode cluster and its corpus phase. */
export class KubeDualFaults extends FaultRun {
  readonly kube: KubeControlPlane;

  private constructor(c: Cluster, rows: FaultRow[], kube: KubeControlPlane) {
    super(c, rows);
    this.kube = kube;
  }

  /** Builds the cluster, the control plane, agents, pods; checks traffic. */
  static async create(
    rows: FaultRow[],
    prefix: string,
  ): Promise<KubeDualFaults> {
    const c = await Cluster.create({
      nodes: 3,
      prefix,
      etcd: false,
      ipv6: true,
    });
    let kube: KubeControlPlane;
    try {
      kube = await KubeControlPlane.start(c.hub, SWITCH_IP, `${c.dir}/kube`);
    } catch (e) {
      await c.close();
      throw e;
    }
    const s = new KubeDualFaults(c, rows, kube);
    try {
      for (const n of s.nodes(1, 2, 3)) {
        await s.#post({
          apiVersion: "v1",
          kind: "Node",
          metadata: { name: n.name },
          spec: {
            podCIDR: `10.244.${n.n}.0/24`,
            podCIDRs: [`10.244.${n.n}.0/24`, `fc00:0:0:${n.n}::/64`],
          },
        });
        await kube.writeKubeconfig(n.name, `${n.dir}/kubeconfig`);
        await Deno.writeTextFile(`${n.dir}/net-conf.json`, DUAL_NET_CONF);
      }
    } catch (e) {
      await s.close();
      throw e;
    }
    await s.boot(s.nodes(1, 2, 3), [4, 6], (n) => s.startKube(n));
    return s;
  }

  override async close(): Promise<void> {
    await this.kube.close();
    await this.c.close();
  }

  startKube(n: ClusterNode): Promise<unknown> {
    return this.start(n, [
      "--kube-subnet-mgr",
      `--kubeconfig-file=${n.dir}/kubeconfig`,
      `--net-config-path=${n.dir}/net-conf.json`,
    ], [`${SWITCH_IP}:${KUBE_PORT}`]);
  }

  /** Creates an object; throws with the apiserver's answer unless 201. */
  async #post(obj: unknown): Promise<void> {
    const r = await this.kube.api("POST", "/api/v1/nodes", obj);
    if (r.status !== 201) {
      throw new Error(
        `the apiserver answered ${r.status}: ${
          JSON.stringify(r.body).slice(0, 200)
        }`,
      );
    }
  }

  /** Every annotated dual-stack node's lease. */
  async leases(): Promise<EtcdLease[]> {
    const r = await this.kube.api("GET", "/api/v1/nodes");
    const out: EtcdLease[] = [];
    for (const n of (r.body as { items: DualNode[] }).items) {
      const a = n.metadata.annotations ?? {};
      const cidrs = n.spec.podCIDRs ?? [];
      if (a[`${ANN}kube-subnet-manager`] !== "true") continue;
      try {
        out.push({
          key: n.metadata.name,
          subnet: cidrs.find((c) => !c.includes(":")) ?? "",
          ipv6Subnet: cidrs.find((c) => c.includes(":")) ?? "",
          value: {
            PublicIP: a[`${ANN}public-ip`] ?? "",
            PublicIPv6: a[`${ANN}public-ipv6`] ?? "",
            BackendType: a[`${ANN}backend-type`] ?? "",
            BackendData: JSON.parse(a[`${ANN}backend-data`] ?? ""),
            BackendV6Data: JSON.parse(a[`${ANN}backend-v6-data`] ?? ""),
          },
          etcdLease: "0",
        });
      } catch { /* not annotated by an agent yet */ }
    }
    return out;
  }

  /** Hostile dual-stack Node objects, then node1 restarted with them. */
  async nodeCorpus(): Promise<void> {
    const n1 = this.node(1);
    const real = await this.leases();
    const { own, peers, realSubnets } = splitOwn(real, n1.ip);
    const cases: CorpusCase[] = [];
    /** The control and every other case that must be programmed. */
    const programmed: EtcdLease[] = [];
    for (const [i, k] of DUAL_NODE_CASES.entries()) {
      const slot: DualNodeSlot = {
        name: `fault6-${String(i).padStart(2, "0")}`,
        ...dualIds(i, 253 - i, "e4", own, peers, n1.ip6),
      };
      const obj = k.make(slot);
      if (k.expect === "programmed") {
        programmed.push({
          ...dualLease(slot.name, slot),
          ipv6Subnet: k.claims6?.(slot) ?? slot.subnet6,
        });
      }
      const [v4, v6] = dualTraces(
        slot,
        k.claims6 ? k.claims6(slot) : slot.subnet6,
        realSubnets,
      );
      cases.push({
        name: k.name,
        expect: k.expect,
        id: slot.name,
        write: () => this.#post(obj),
        remove: () => this.kube.deleteNode(slot.name),
        entries: (s) => dualSlotEntries(s.v4, s.v6!, v4, v6),
        ...(k.reason && { reason: k.reason }),
        ...(k.counter && { counter: k.counter }),
      });
    }
    await corpusRun(this, {
      section:
        "Kubernetes: dual-stack node corpus (IPv6 annotations, IPv6 pod CIDRs)",
      cases,
      expected: [...real, ...programmed],
      live: this.nodes(1, 2, 3),
      pings: [["node1-pod1", "node2-pod1", 4], ["node1-pod1", "node2-pod1", 6]],
      restart: (n) => this.startKube(n),
      noun: "node",
    });
  }
}
