/**
 * Hostile Nodes for the cluster tier, applied with kubectl as an attacker
 * with Node rights would: a new Node copying a live node's VtepMAC, one
 * stealing a live node's podCIDR, one whose podCIDR is wider than the
 * nodes' (covering theirs), and the OLDEST node re-pointing its own
 * backend-data to the youngest node's VtepMAC. One weft pod is deleted
 * while they are in place, so its replacement decides with all of them
 * present. What must hold is in {@linkcode hostileNodes}.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import type { K8sCluster, K8sNode, PodInfo } from "./_k8s.ts";
import { pods, until } from "./_k8s.ts";
import { samples } from "../_metrics.ts";

const ANN = "flannel.alpha.coreos.com/";
/** weft's `--healthz-port` in deploy/weft.yaml. */
const HEALTH_PORT = 10262;
/**
 * The refusals the four hostile changes cause on every node: the copied
 * and the re-pointed MAC; the stolen and the wide podCIDR (in kube mode a
 * podCIDR of another length is judged by overlap with earlier claims, as
 * flanneld accepts mixed lengths).
 */
const REASONS = ["duplicate_mac", "overlap"] as const;

interface NodeJson {
  metadata: {
    name: string;
    creationTimestamp: string;
    annotations?: Record<string, string>;
  };
  spec: { podCIDR?: string };
}

/** A node's refusal counters, by reason. */
async function refusals(node: K8sNode): Promise<Record<string, number>> {
  const text = await node.exec([
    "curl",
    "-s",
    "-m",
    "5",
    `http://127.0.0.1:${HEALTH_PORT}/metrics`,
  ]);
  const by = samples(text, "weft_peers_refused_total", "reason");
  return Object.fromEntries(REASONS.map((r) => [r, by.get(r) ?? 0]));
}

/** What a node's kernel holds for the victims: routes and FDB lines. */
async function entries(
  node: K8sNode,
  cidrs: readonly string[],
  macs: readonly string[],
): Promise<string> {
  const routes = await Promise.all(
    cidrs.map((c) => node.exec(["ip", "route", "show", c])),
  );
  const fdb = (await node.exec(["bridge", "fdb", "show", "dev", "flannel.1"]))
    .split("\n").filter((l) => macs.some((m) => l.startsWith(m)));
  return [...routes.map((r) => r.trim()), ...fdb.sort()].join("\n");
}

/** A hostile Node as kubectl applies it. */
function nodeJson(
  name: string,
  podCIDR: string,
  mac: string,
  ip: string,
): string {
  return JSON.stringify({
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      labels: { "weft-test/hostile": "true" },
      annotations: {
        [`${ANN}backend-type`]: "vxlan",
        [`${ANN}backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: mac }),
        [`${ANN}kube-subnet-manager`]: "true",
        [`${ANN}public-ip`]: ip,
      },
    },
    spec: { podCIDR, podCIDRs: [podCIDR] },
  });
}

/**
 * Applies the hostile Nodes while `echo` pods on the observer and the
 * victim ping each other (`pingDuring`, zero loss required), deletes the
 * observer's weft pod meanwhile, and checks on every node: the victims'
 * routes and FDB entries as before, no entry for any hostile Node, and
 * each refusal reason counted (on the restarted agent from scratch, on
 * the others as an increase). Everything is taken back at the end.
 */
export async function hostileNodes(
  c: K8sCluster,
  echo: readonly PodInfo[],
  pingDuring: (
    from: PodInfo,
    dst: string,
    seconds: number,
    during: () => Promise<void>,
  ) => Promise<{ sent: number; received: number }>,
): Promise<void> {
  const list = (await c.getJson<{ items: NodeJson[] }>(["nodes"])).items
    .filter((n) => c.nodes.some((k) => k.name === n.metadata.name))
    .sort((a, b) =>
      Date.parse(a.metadata.creationTimestamp) -
        Date.parse(b.metadata.creationTimestamp) ||
      (a.metadata.name < b.metadata.name ? -1 : 1)
    );
  assert(list.length >= 3, `${list.length} nodes`);
  const older = list[0]!;
  const victim = list.at(-1)!;
  const observer = list[1]!;
  const k8s = (n: NodeJson) => c.nodes.find((k) => k.name === n.metadata.name)!;
  const macOf = (n: NodeJson) =>
    JSON.parse(n.metadata.annotations?.[`${ANN}backend-data`] ?? "{}")
      .VtepMAC as string;
  const victimMac = macOf(victim);
  const victimCidr = victim.spec.podCIDR!;
  const base = k8s(victim).ip.split(".").slice(0, 3).join(".");
  const hostile = [
    nodeJson("hostile-mac", "10.244.250.0/24", victimMac, `${base}.250`),
    nodeJson("hostile-cidr", victimCidr, "0a:fe:00:00:00:fb", `${base}.251`),
    nodeJson(
      "hostile-wide",
      "10.244.0.0/20",
      "0a:fe:00:00:00:fc",
      `${base}.252`,
    ),
  ];
  const originalData = older.metadata.annotations![`${ANN}backend-data`]!;
  const annotate = (data: string) =>
    c.kubectl([
      "annotate",
      "node",
      older.metadata.name,
      "--overwrite",
      `${ANN}backend-data=${data}`,
    ]);
  // The victims' entries on every node but the victim, before.
  const watched = c.nodes.filter((n) => n.name !== victim.metadata.name);
  const before = new Map<string, string>();
  for (const n of watched) {
    before.set(n.name, await entries(n, [victimCidr], [victimMac]));
    assert(
      before.get(n.name)!.includes(k8s(victim).ip),
      `${n.name} does not reach ${victim.metadata.name}: ${before.get(n.name)}`,
    );
  }
  const counted = new Map<string, Record<string, number>>();
  for (const n of c.nodes) counted.set(n.name, await refusals(n));
  const from = echo.find((p) => p.node === observer.metadata.name)!;
  const to = echo.find((p) => p.node === victim.metadata.name)!;
  assert(from && to, "echo pods on the observer and the victim");
  try {
    const count = await pingDuring(from, to.ip, 150, async () => {
      for (const n of hostile) await c.kubectl(["apply", "-f", "-"], n);
      await annotate(JSON.stringify({ VNI: 1, VtepMAC: victimMac }));
      // The observer's agent restarts with every hostile Node present.
      const old = (await pods(c, "app=weft", "kube-flannel")).find((p) =>
        p.node === observer.metadata.name
      )!;
      await c.kubectl(["-n", "kube-flannel", "delete", "pod", old.name]);
      await until("the replacement weft pod to be Ready", 90_000, async () => {
        const now = await pods(c, "app=weft", "kube-flannel");
        return now.some((p) =>
            p.node === observer.metadata.name && p.ready && p.name !== old.name
          )
          ? true
          : undefined;
      });
      // Each reason counted on every node: from scratch on the restarted
      // one (it refuses all four: both MAC copies), as an increase on the
      // others (the oldest node does not count its own re-pointed MAC).
      for (const n of c.nodes) {
        const restarted = n.name === observer.metadata.name;
        const was: Record<string, number> = restarted
          ? { duplicate_mac: 1 }
          : counted.get(n.name)!;
        await until(`${n.name} counting the refusals`, 20_000, async () => {
          const now = await refusals(n);
          return REASONS.every((r) => now[r]! > (was[r] ?? 0))
            ? now
            : undefined;
        });
      }
    });
    console.log(
      `  hostile Nodes: ${count.received}/${count.sent} answered`,
    );
    assertEquals(count.received, count.sent);
    for (const n of watched) {
      assertEquals(
        await entries(n, [victimCidr], [victimMac]),
        before.get(n.name),
        `${n.name}: the victim's route or FDB entry changed`,
      );
      const all = await n.exec(["ip", "route", "show"]);
      for (const bad of ["10.244.250.0/24", "10.244.0.0/20"]) {
        assert(!all.includes(bad), `${n.name} routes ${bad}:\n${all}`);
      }
      const fdb = await n.exec(["bridge", "fdb", "show", "dev", "flannel.1"]);
      for (const ip of [250, 251, 252].map((x) => `${base}.${x}`)) {
        assert(!fdb.includes(`dst ${ip} `), `${n.name} FDB → ${ip}:\n${fdb}`);
      }
    }
  } finally {
    await annotate(originalData);
    await c.kubectl([
      "delete",
      "node",
      "-l",
      "weft-test/hostile=true",
      "--wait=true",
    ]);
  }
  // The older node is reachable again once its lease is back.
  const olderCidr = older.spec.podCIDR!;
  for (const n of c.nodes.filter((n) => n.name !== older.metadata.name)) {
    await until(
      `${n.name} routing ${olderCidr} again`,
      30_000,
      async () =>
        (await n.exec(["ip", "route", "show", olderCidr])).includes("flannel.1")
          ? true
          : undefined,
    );
  }
}
