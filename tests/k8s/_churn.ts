/**
 * The cluster changing while agents roll: a node joins, a node is deleted,
 * and pods are created and deleted on every node, all while a window's
 * action runs ({@linkcode churnDuring}). Then what every kernel must hold
 * afterwards: which nodes still hold the deleted node's route, neighbour
 * or FDB entry ({@linkcode nodesHolding}), the new node's in every node
 * ({@linkcode assertPeerPresent}), and every pod reaching every pod on the
 * other nodes with every probe answered ({@linkcode assertAllReach}).
 *
 * @module
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import {
  crossNodeReach,
  echoPodSpec,
  type K8sCluster,
  type K8sNode,
  type PodInfo,
  pods,
  PROBE_CPU,
  until,
} from "./_k8s.ts";

/**
 * The pods traffic runs between: a DaemonSet, so a node that joins gets
 * one; each serves its name over HTTP on :8080, with /tmp in memory and
 * CAP_SYS_NICE, as echo pods (tests/k8s/_k8s.ts) do.
 */
export const PROBES = `apiVersion: apps/v1
kind: DaemonSet
metadata: {name: probe, namespace: default}
spec:
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
${echoPodSpec(PROBE_CPU)}
`;

/** What the other nodes' kernels hold for one node. */
export interface Peer {
  readonly name: string;
  readonly ip: string;
  /** Its podCIDR, e.g. 10.244.3.0/24. */
  readonly cidr: string;
  /** Its VtepMAC annotation. */
  readonly mac: string;
}

interface NodeJson {
  metadata: { name: string; annotations?: Record<string, string> };
  spec: { podCIDR?: string };
}

/** A node as its peers see it, read from its Node object. */
export async function peerOf(c: K8sCluster, node: K8sNode): Promise<Peer> {
  const n = await until(
    `${node.name}'s podCIDR and VtepMAC`,
    120_000,
    async () => {
      const j = await c.getJson<NodeJson>(["node", node.name]);
      const data = j.metadata.annotations
        ?.["flannel.alpha.coreos.com/backend-data"];
      return j.spec.podCIDR && data ? j : undefined;
    },
  );
  const data = JSON.parse(
    n.metadata.annotations!["flannel.alpha.coreos.com/backend-data"]!,
  ) as { VtepMAC?: string };
  return {
    name: node.name,
    ip: node.ip,
    cidr: n.spec.podCIDR!,
    mac: data.VtepMAC ?? "",
  };
}

/** `cidr`'s network address, the peer's gateway and neighbour on flannel.1. */
function gatewayOf(cidr: string): string {
  return cidr.split("/")[0]!;
}

/**
 * Deletions of `peers`' overlay entries (route, neighbour, FDB) among the
 * lines of `ip -o monitor route neigh` and `bridge monitor fdb`.
 */
export function deletedEntries(lines: string[], peers: Peer[]): string[] {
  return lines.filter((l) =>
    l.startsWith("Deleted ") && peers.some((p) => {
      const gw = gatewayOf(p.cidr).replaceAll(".", "\\.");
      return new RegExp(`(^|\\s)${gw}(/\\d+)?\\s`).test(l.slice(8)) ||
        l.includes(p.mac);
    })
  );
}

/** Whether `node` holds a route, neighbour and FDB entry for `peer`. */
async function holds(
  node: K8sNode,
  peer: Peer,
): Promise<{ route: boolean; neigh: boolean; fdb: boolean }> {
  const gw = gatewayOf(peer.cidr);
  const route = await node.exec(["ip", "route", "show", peer.cidr]);
  const neigh = await node.exec(["ip", "neigh", "show", "dev", "flannel.1"]);
  const fdb = await node.exec(["bridge", "fdb", "show", "dev", "flannel.1"]);
  return {
    route: route.includes(`via ${gw} dev flannel.1`),
    neigh: neigh.split("\n").some((l) =>
      l.startsWith(`${gw} `) && l.includes(peer.mac)
    ),
    fdb: fdb.split("\n").some((l) =>
      l.startsWith(`${peer.mac} `) && l.includes(`dst ${peer.ip} `)
    ),
  };
}

/**
 * The nodes of `c` still holding any of `peer`'s entries once every node
 * that will remove them has (waited for up to `timeoutMs`).
 */
export async function nodesHolding(
  c: K8sCluster,
  peer: Peer,
  timeoutMs = 30_000,
): Promise<K8sNode[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left: K8sNode[] = [];
    for (const node of c.nodes) {
      const h = await holds(node, peer);
      if (h.route || h.neigh || h.fdb) left.push(node);
    }
    if (left.length === 0 || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** Asserts that no node of `c` holds `peer`'s entries once they had time to go. */
export async function assertPeerGone(c: K8sCluster, peer: Peer) {
  const left = (await nodesHolding(c, peer)).map((n) => n.name);
  assertEquals(left, [], `nodes still holding ${peer.name}'s entries`);
}

/**
 * Waits until every other node of `c` holds `node`'s route, neighbour and
 * FDB entry, and `node` holds theirs.
 */
export async function assertPeerPresent(
  c: K8sCluster,
  node: K8sNode,
): Promise<void> {
  const peers = new Map<string, Peer>();
  for (const n of c.nodes) peers.set(n.name, await peerOf(c, n));
  for (const other of c.nodes.filter((n) => n !== node)) {
    for (const [at, of] of [[other, node], [node, other]] as const) {
      const peer = peers.get(of.name)!;
      // Times out (and fails) naming the entry still missing.
      await until(
        `${of.name}'s route, neighbour and FDB entry on ${at.name}`,
        60_000,
        async () => {
          const h = await holds(at, peer);
          return h.route && h.neigh && h.fdb ? h : undefined;
        },
      );
    }
  }
}

/** A DaemonSet `name` of busybox pods that sleep: one on every node. */
export function sleepDaemonSet(name: string): string {
  return `apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ${name}, namespace: default}
spec:
  selector: {matchLabels: {app: ${name}}}
  template:
    metadata: {labels: {app: ${name}}}
    spec:
      terminationGracePeriodSeconds: 1
      enableServiceLinks: false
      containers:
      - name: c
        image: localhost/weft-testpod:1
        command: ["sleep", "100000"]
`;
}

/**
 * Waits until DaemonSet `name` (namespace default) has a Ready pod with an
 * address on every node it wants one on; its pods. Not `kubectl rollout
 * status`: that can answer before the controller has counted a new
 * DaemonSet's nodes.
 */
export async function daemonSetReady(
  c: K8sCluster,
  name: string,
): Promise<PodInfo[]> {
  return await until(
    `${name}'s pods Ready with addresses on every node`,
    240_000,
    async () => {
      const l = await pods(c, `app=${name}`);
      const ds = await c.getJson<
        { status: { desiredNumberScheduled?: number } }
      >(["daemonset", name]);
      const want = ds.status.desiredNumberScheduled ?? 0;
      return want > 0 && l.length === want &&
          l.every((p) => p.ready && p.ip !== "")
        ? l
        : undefined;
    },
  );
}

/** Creates a pod on every node and deletes them, `rounds` times. */
async function podChurn(
  c: K8sCluster,
  tag: string,
  rounds: number,
): Promise<number> {
  let created = 0;
  for (let i = 0; i < rounds; i++) {
    const name = `churn-${tag}-${i}`;
    await c.kubectl(["apply", "-f", "-"], sleepDaemonSet(name));
    const list = await daemonSetReady(c, name);
    created += list.length;
    await c.kubectl(["delete", `daemonset/${name}`, "--wait=true"]);
    await until(
      `${name}'s pods gone`,
      120_000,
      async () =>
        (await pods(c, `app=${name}`)).length === 0 ? true : undefined,
    );
  }
  return created;
}

/** What {@linkcode churnDuring} changed. */
export interface Churn {
  /** The node that joined. */
  readonly joined: K8sNode;
  /** The node deleted, as the others knew it. */
  readonly deleted: Peer;
  /** When its Node object was deleted (ms since the epoch). */
  readonly deletedAt: number;
  /** Pods created (and deleted) on the nodes. */
  readonly pods: number;
}

/**
 * Runs `during` while `remove` is stopped and deleted from the API, a new
 * node joins, and a pod is created and deleted on every node, twice.
 */
export async function churnDuring(
  c: K8sCluster,
  tag: string,
  remove: K8sNode,
  during: () => Promise<void>,
): Promise<Churn> {
  const deleted = await peerOf(c, remove);
  const [, joined, deletedAt, created] = await Promise.all([
    during(),
    c.addNode(),
    (async () => {
      await c.stopNode(remove);
      await c.kubectl(["delete", "node", remove.name]);
      return Date.now();
    })(),
    podChurn(c, tag, 2),
  ]);
  return { joined, deleted, deletedAt, pods: created };
}

/**
 * Every pod of `selector` (one per node, Ready) reaches every pod on the
 * other nodes: 3 of 3 pings and an HTTP answer from each.
 */
export async function assertAllReach(
  c: K8sCluster,
  selector: string,
): Promise<void> {
  const list = await until(
    `a Ready ${selector} pod on each of ${c.nodes.length} nodes`,
    120_000,
    async () => {
      const l = (await pods(c, selector)).filter((p) => p.ready);
      return new Set(l.map((p) => p.node)).size === c.nodes.length
        ? l
        : undefined;
    },
  );
  const reach = await crossNodeReach(c, list);
  assertEquals(reach.failed, []);
  assertEquals(reach.answered, list.length * (list.length - 1));
}

/** Non-hostNetwork pods running on `node`. */
async function podsOn(c: K8sCluster, node: string): Promise<PodInfo[]> {
  const list = await c.getJson<
    {
      items: {
        metadata: { name: string };
        spec: { nodeName?: string; hostNetwork?: boolean };
        status: { podIP?: string };
      }[];
    }
  >([
    "pods",
    "-A",
    "--field-selector",
    `spec.nodeName=${node}`,
  ]);
  return list.items.filter((p) => !p.spec.hostNetwork).map((p) => ({
    name: p.metadata.name,
    ip: p.status.podIP ?? "",
    node,
    ready: true,
  }));
}

/** What a node's kernel and files hold for pods. */
export async function podState(node: K8sNode) {
  const ips = (await node.exec([
    "sh",
    "-c",
    "ls /var/lib/cni/networks/cbr0 2>/dev/null || true",
  ])).split("\n").filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)).sort();
  const veths = (await node.exec(["ip", "-o", "link", "show", "type", "veth"]))
    .split("\n").filter((l) => l.trim() !== "" && !l.includes(" eth0@"))
    .length;
  const netns = (await node.exec(["ls", "/run/netns"])).split("\n")
    .filter((f) => f.startsWith("cni-")).length;
  const stored = (await node.exec([
    "sh",
    "-c",
    "ls /var/lib/cni/flannel 2>/dev/null || true",
  ])).split("\n").filter((f) => f !== "");
  return { ips, veths, netns, stored };
}

/**
 * Waits until `node` holds exactly what its running pods need: one
 * address, veth, network namespace and stored CNI configuration each, and
 * nothing of pods deleted. All four counts are waited for, not only the
 * addresses: the bridge plugin's DEL removes a pod's veth before it
 * releases the address, and weft's DEL removes the stored configuration
 * last, so a pod still listed while its DEL runs holds an address and a
 * stored file without a veth for a moment. A leak stays past the
 * deadline and fails with the counts last seen.
 */
export async function podStateClean(
  c: K8sCluster,
  node: K8sNode,
): Promise<void> {
  const { running, state } = await until(
    `${node.name} holding only its running pods' addresses, veths, netns and stored configurations`,
    60_000,
    async () => {
      const running = await podsOn(c, node.name);
      const state = await podState(node);
      const n = running.length;
      if (
        state.ips.length === n && state.stored.length === n &&
        state.veths === n && state.netns === n
      ) return { running, state };
      throw new Error(
        `${n} pods listed; ${state.ips.length} addresses, ${state.veths} ` +
          `veths, ${state.netns} netns, ${state.stored.length} stored`,
      );
    },
  );
  // The counts agree; the addresses must also be the listed pods' own.
  assertEquals(state.ips, running.map((p) => p.ip).sort(), node.name);
}
