/**
 * The switch operators make, on clusters that have only ever run flanneld:
 * flannel v0.28.9's own `Documentation/kube-flannel.yml` applied with
 * flanneld v0.28.9 as its agent, workload pods on every node, then
 *
 * 1. in place: `kubectl set image` changes the agent container of the
 *    running `kube-flannel-ds` to weft, and `kubectl rollout undo` takes it
 *    back to flanneld;
 * 2. on a second such cluster: the node-by-node path of
 *    docs/migrate-from-flanneld.md (label a node, its agent moves), and back
 *    (label removed, node by node).
 *
 * Each switch and rollback is one window: traffic between every ordered
 * pair of three nodes (tests/k8s/_traffic.ts: ICMP every 50 ms and a TCP
 * connection) must lose nothing, while a fourth node is deleted, a new one
 * joins and a pod is created and deleted on every node, twice
 * (tests/k8s/_churn.ts). Afterwards every pod reaches every pod on the
 * other nodes 3 of 3, the deleted node is in no kernel, the new node is in
 * every kernel, and on each of the three nodes what the previous agent left
 * was adopted: the VXLAN device (same ifindex and MAC, VtepMAC annotation
 * unchanged), no route, neighbour or FDB entry of a peer deleted while the
 * traffic flowed (`ip monitor` and `bridge monitor` ran through the
 * window), the same iptables rules as before (no duplicates), the same
 * subnet.env; and pods the previous agent's network set up are deleted
 * cleanly under the new one. The per-pair counts go to
 * bench/results/k8s.md.
 *
 * The CNI plugin: flannel's own (github.com/flannel-io/cni-plugin) is not
 * served here, so the manifest's install-cni-plugin step runs weft's image,
 * which installs weft's plugin as /opt/cni/bin/flannel under both agents.
 * What that leaves untested: pods set up by flannel's Go plugin being torn
 * down by weft's.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import { gatedTest, ROOT } from "../_gate.ts";
import {
  agentOf,
  assertAgents,
  CLUSTER,
  IMAGES,
  K8sCluster,
  type K8sNode,
  kubeFlannelImages,
  migrationManifest,
  pods,
  rollout,
} from "./_k8s.ts";
import {
  assertAllReach,
  assertPeerPresent,
  type Churn,
  churnDuring,
  daemonSetReady,
  deletedEntries,
  nodesHolding,
  peerOf,
  podStateClean,
  PROBES,
  sleepDaemonSet,
} from "./_churn.ts";
import {
  assertNoLoss,
  summary,
  trafficDuring,
  type TrafficWindow,
  writeSection,
} from "./_traffic.ts";

const NS = "kube-flannel";
const FLANNELD = "localhost/flanneld:v0.28.9";
const WEFT = "localhost/weft:v0.1.1";

/** docs/migrate-from-flanneld.md, step 1. */
const PIN_FLANNELD = `
spec:
  template:
    spec:
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions:
              - key: kubernetes.io/os
                operator: In
                values: ["linux"]
              - key: weft/agent
                operator: NotIn
                values: ["weft"]
`;

/** What an agent left on a node that the next one must keep. */
interface Left {
  /** flannel.1's ifindex and MAC (`ip -o link`). */
  readonly device: string;
  /** The Node's VtepMAC annotation. */
  readonly vtepMac: string;
  /** Every iptables rule and chain of either agent, sorted, no counters. */
  readonly rules: string[];
  readonly subnetEnv: string;
}

async function left(c: K8sCluster, node: K8sNode): Promise<Left> {
  const link = await node.exec(["ip", "-o", "link", "show", "flannel.1"]);
  const m = link.match(/^(\d+): flannel\.1: .* link\/ether (\S+) /);
  assert(m, `${node.name}: flannel.1: ${link}`);
  const rules = [];
  for (const table of ["nat", "filter"]) {
    const save = await node.exec(["iptables-save", "-t", table]);
    rules.push(
      ...save.split("\n").filter((l) => /FLANNEL|flanneld/.test(l)).map((l) =>
        `${table} ${l.replace(/ \[\d+:\d+\]$/, "")}`
      ),
    );
  }
  return {
    device: `${m[1]} ${m[2]}`,
    vtepMac: (await peerOf(c, node)).mac,
    rules: rules.sort(),
    subnetEnv: await node.exec(["cat", "/run/flannel/subnet.env"]),
  };
}

/**
 * `ip monitor route neigh` and `bridge monitor fdb` in a node's network
 * namespace for the length of a window.
 */
class Monitor {
  readonly #children: Deno.ChildProcess[];
  constructor(readonly node: K8sNode) {
    const pid = node.proc?.child.pid;
    if (pid === undefined) throw new Error(`${node.name} is not running`);
    this.#children = [
      ["ip", "-o", "monitor", "route", "neigh"],
      ["bridge", "monitor", "fdb"],
    ].map((cmd) =>
      new Deno.Command("nsenter", {
        args: ["-t", String(pid), "-n", ...cmd],
        stdin: "null",
        stdout: "piped",
        stderr: "null",
      }).spawn()
    );
  }

  /** Stops both monitors: their lines. */
  async stop(): Promise<string[]> {
    const lines: string[] = [];
    for (const child of this.#children) {
      child.kill("SIGTERM");
      const out = await child.output();
      lines.push(...new TextDecoder().decode(out.stdout).split("\n"));
    }
    return lines.filter((l) => l.trim() !== "");
  }
}

/** Which agent runs on `node` and when its container started (ms). */
async function agentStart(
  c: K8sCluster,
  node: string,
): Promise<{ agent: string; startedAt: number }> {
  const list = await c.getJson<{
    items: {
      metadata: { name: string };
      status: {
        containerStatuses?: {
          state?: { running?: { startedAt?: string } };
        }[];
      };
    }[];
  }>(["pods", "-n", NS, "--field-selector", `spec.nodeName=${node}`]);
  assertEquals(list.items.length, 1, `one agent pod on ${node}`);
  const pod = list.items[0]!;
  const started = pod.status.containerStatuses?.[0]?.state?.running?.startedAt;
  assert(started, `${pod.metadata.name} is not running`);
  return {
    agent: await agentOf(c, pod.metadata.name) ?? "unknown",
    startedAt: Date.parse(started),
  };
}

/**
 * The node of `c` that neither carries traffic nor is deleted next: the
 * fourth one, deleted in the next window.
 */
function spare(c: K8sCluster, stable: K8sNode[]): K8sNode {
  const n = c.nodes.find((x) => !stable.includes(x));
  assert(n, "a fourth node to delete");
  return n;
}

interface Switch {
  /** A table's first column: what the window does. */
  readonly what: string;
  /** Short, for names of objects and files. */
  readonly tag: string;
  /** The agent on each node after it (one for all, or by node name). */
  readonly to: "weft" | "flanneld" | ((node: string) => "weft" | "flanneld");
  /** The operator's commands, waited on until the cluster says done. */
  readonly act: () => Promise<void>;
}

/**
 * One switch under traffic and churn, then every check of this file.
 * `stable` are the three nodes whose pods carry the traffic.
 */
async function switchWindow(
  c: K8sCluster,
  stable: K8sNode[],
  s: Switch,
  notes: string[],
): Promise<TrafficWindow> {
  const probes = (await pods(c, "app=probe")).filter((p) =>
    stable.some((n) => n.name === p.node)
  );
  assertEquals(probes.length, stable.length);
  const before = new Map<string, Left>();
  for (const n of stable) before.set(n.name, await left(c, n));
  const peers = await Promise.all(stable.map((n) => peerOf(c, n)));

  // Pods the previous agent's network set up, deleted under the next one.
  const old = `old-${s.tag}`;
  await c.kubectl(["apply", "-f", "-"], sleepDaemonSet(old));
  await daemonSetReady(c, old);

  const monitors = stable.map((n) => new Monitor(n));
  let churn: Churn | undefined;
  const window = await trafficDuring(c, probes, s.what, async () => {
    churn = await churnDuring(c, s.tag, spare(c, stable), s.act);
  }, "exclusive");
  const seen = await Promise.all(monitors.map((m) => m.stop()));
  console.log(`  ${summary(window)}`);
  const deletions = monitors.map((m, i) =>
    deletedEntries(seen[i]!, peers.filter((p) => p.name !== m.node.name))
      .map((l) => `${m.node.name}: ${l}`)
  ).flat();
  if (deletions.length > 0) console.log(deletions.join("\n"));
  assertNoLoss(window);
  assertEquals(deletions, [], "a peer's entry deleted while traffic flowed");
  assert(churn);
  const { joined, deleted, deletedAt } = churn;

  await assertAgents(c, s.to);
  // flanneld removes a peer's entries when it sees the Node deleted, and
  // never otherwise: a node whose weft stopped before the deletion and
  // whose flanneld started after it keeps them. Only such a node may.
  const kept = await nodesHolding(c, deleted);
  for (const n of kept) {
    const { agent, startedAt } = await agentStart(c, n.name);
    assert(
      agent === "flanneld" && startedAt >= deletedAt - 1000,
      `${n.name} (${agent}, started ${
        new Date(startedAt).toISOString()
      }) kept the entries of ${deleted.name}, deleted ${
        new Date(deletedAt).toISOString()
      }`,
    );
  }
  if (kept.length > 0) {
    notes.push(
      `After "${s.what}": flanneld, started on ${
        kept.map((n) => n.name).join(", ")
      } after the Node ${deleted.name} was deleted, kept its route, neighbour and FDB entry there.`,
    );
  }
  await assertPeerPresent(c, joined);
  await assertAllReach(c, "app=probe");

  for (const n of stable) {
    const was = before.get(n.name)!;
    const now = await left(c, n);
    assertEquals(now.device, was.device, `${n.name}: flannel.1 recreated`);
    assertEquals(now.vtepMac, was.vtepMac, `${n.name}: VtepMAC changed`);
    assertEquals(now.rules, was.rules, `${n.name}: iptables rules differ`);
    assertEquals(now.subnetEnv, was.subnetEnv, `${n.name}: subnet.env`);
  }

  await c.kubectl(["delete", `daemonset/${old}`, "--wait=true"]);
  for (const n of c.nodes) await podStateClean(c, n);
  return window;
}

/** Up with four nodes, flanneld's manifest, probes on every node. */
async function flanneldCluster(): Promise<K8sCluster> {
  const t0 = Date.now();
  const c = await K8sCluster.up({
    images: IMAGES,
    nodes: 4,
    log: (l) => console.log(`  ${l}`),
  });
  try {
    console.log(`  cluster up in ${Date.now() - t0} ms`);
    await c.kubectl(
      ["apply", "-f", "-"],
      await kubeFlannelImages(FLANNELD, WEFT),
    );
    await rollout(c, NS, "daemonset/kube-flannel-ds", 180);
    await assertAgents(c, "flanneld");
    await c.kubectl(["apply", "-f", "-"], PROBES);
    await daemonSetReady(c, "probe");
    await assertAllReach(c, "app=probe");
    return c;
  } catch (e) {
    await c.close();
    throw e;
  }
}

/** Where this file's windows go in bench/results/k8s.md. */
const SECTION_IN_PLACE =
  "## kube-flannel-ds switched in place from flanneld to weft and back";
const SECTION_BY_NODE =
  "## flanneld to weft node by node (docs/migrate-from-flanneld.md) and back";

const CHURN_LINES = [
  "Each window also deletes a fourth node (stopped, then `kubectl delete",
  "node`), adds a new one, and creates and deletes a pod on every node,",
  "twice. Every figure below is for the three nodes that stay.",
];

/**
 * Runs `steps` in order on `c`, one switch window each (a failed step ends
 * the test: each starts from the state the one before left), then writes
 * their windows to `section` of bench/results/k8s.md.
 */
async function switchSteps(
  t: Deno.TestContext,
  c: K8sCluster,
  steps: readonly { readonly name: string; readonly s: Switch }[],
  section: string,
  intro: readonly string[],
): Promise<void> {
  const stable = c.nodes.slice(0, 3);
  const windows: TrafficWindow[] = [];
  const notes: string[] = [];
  for (const { name, s } of steps) {
    const ok = await t.step(name, async () => {
      windows.push(await switchWindow(c, stable, s, notes));
    });
    if (!ok) return;
  }
  await writeSection(
    section,
    "tests/k8s/switch_test.ts",
    [...intro, ...CHURN_LINES],
    windows,
    notes,
  );
}

/** `kubectl -n kube-flannel ARGS`, then kube-flannel-ds rolled out. */
async function onFlannelDs(c: K8sCluster, args: string[]): Promise<void> {
  await c.kubectl(["-n", NS, ...args]);
  await rollout(c, NS, "daemonset/kube-flannel-ds", 240);
}

await gatedTest({
  name:
    "k8s switch: a running kube-flannel-ds is switched to weft by kubectl set image and rolled back, while nodes and pods change, no packet lost",
  needs: [ROOT, CLUSTER],
  fn: async (t) => {
    await using c = await flanneldCluster();
    await switchSteps(
      t,
      c,
      [{
        name:
          "kubectl set image: flanneld to weft on every node; weft adopts what flanneld left",
        s: {
          what: "set image flanneld → weft",
          tag: "up",
          to: "weft",
          act: () =>
            onFlannelDs(c, [
              "set",
              "image",
              "daemonset/kube-flannel-ds",
              `kube-flannel=${WEFT}`,
            ]),
        },
      }, {
        name:
          "kubectl rollout undo: weft back to flanneld on every node; flanneld keeps what weft left",
        s: {
          what: "rollout undo weft → flanneld",
          tag: "back",
          to: "flanneld",
          act: () =>
            onFlannelDs(c, ["rollout", "undo", "daemonset/kube-flannel-ds"]),
        },
      }],
      SECTION_IN_PLACE,
      [
        "flannel v0.28.9's own Documentation/kube-flannel.yml applied with",
        "flanneld v0.28.9 as its agent on a cluster that never ran weft, pods on",
        "every node; then `kubectl set image daemonset/kube-flannel-ds",
        "kube-flannel=<weft>` and `kubectl rollout undo`. A window runs from the",
        "command to the DaemonSet rolled out and the churn done.",
      ],
    );
  },
});

await gatedTest({
  name:
    "k8s switch: flanneld moved to weft node by node as docs/migrate-from-flanneld.md says, and back, while nodes and pods change, no packet lost",
  needs: [ROOT, CLUSTER],
  fn: async (t) => {
    await using c = await flanneldCluster();
    const stable = c.nodes.slice(0, 3);
    const moved = new Set<string>();
    const planned = (node: string) => moved.has(node) ? "weft" : "flanneld";
    /** Labels (or unlabels) the nodes one at a time, each moved before the next. */
    const move = async (label: string, weft: boolean) => {
      for (const node of stable) {
        await c.kubectl(["label", "node", node.name, label]);
        if (weft) moved.add(node.name);
        else moved.delete(node.name);
        await assertAgents(c, planned);
      }
    };
    await switchSteps(
      t,
      c,
      [{
        name:
          "labelled one at a time, each node moves from flanneld to weft; weft adopts what flanneld left",
        s: {
          what: "node by node flanneld → weft",
          tag: "label",
          to: planned,
          act: async () => {
            await onFlannelDs(c, [
              "patch",
              "daemonset",
              "kube-flannel-ds",
              "--type=strategic",
              "-p",
              PIN_FLANNELD,
            ]);
            await c.kubectl(
              ["apply", "-f", "-"],
              await migrationManifest(WEFT),
            );
            await move("weft/agent=weft", true);
          },
        },
      }, {
        name:
          "the labels removed one at a time, each node moves back to flanneld; flanneld keeps what weft left",
        s: {
          what: "node by node weft → flanneld",
          tag: "unlabel",
          to: planned,
          act: () => move("weft/agent-", false),
        },
      }],
      SECTION_BY_NODE,
      [
        "flannel v0.28.9's own Documentation/kube-flannel.yml applied with",
        "flanneld v0.28.9 as its agent on a cluster that never ran weft, pods on",
        "every node; then docs/migrate-from-flanneld.md's steps 1 to 3 (flanneld",
        "pinned to unlabelled nodes, weft's DaemonSet for labelled ones, three",
        "nodes labelled one at a time), and back by removing the labels one at",
        "a time. A window runs from the first command to the last node's agent",
        "Ready and the churn done. A node joining meanwhile is unlabelled: it",
        "runs flanneld.",
      ],
    );
  },
});
