/**
 * The cluster tier's Helm steps, run on the cluster tests/k8s/cluster_test.ts
 * already has up (a second cluster would cost a minute): weft's chart
 * (chart/weft) installed with `helm install`, then flannel v0.28.9's own
 * chart installed running the real flanneld, switched to weft by `helm
 * upgrade` changing only the agent's image, and switched back by `helm
 * rollback`, each switch under pings between every pair of nodes. The
 * per-pair counts go to bench/results/k8s.md.
 *
 * Images: flannel's chart runs the locally built ones, given as values
 * (flanneld's image for the agent; weft's for the CNI plugin install,
 * since flannel-cni-plugin's image is not reachable here and weft's serves
 * the same /flannel).
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import {
  FLANNEL_CHART,
  helm,
  helmOk,
  type HelmOptions,
  WEFT_CHART,
} from "../servers/helm.ts";
import {
  countPings,
  crossNodePings,
  execPod,
  type K8sCluster,
  type PingSequence,
  type PodInfo,
  pods,
  rollout,
  until,
} from "./_k8s.ts";
import { describeCommit } from "../_commit.ts";

const NS = "kube-flannel";
const WEFT_IMAGE = ["localhost/weft", "v0.1.1"] as const;
const ROOT = new URL("../..", import.meta.url).pathname;
const RESULTS = `${ROOT}bench/results/k8s.md`;
/** The heading of this file's section of bench/results/k8s.md. */
const SECTION = "## Helm: flannel's chart switched to weft and back";

/** A ping running from one pod to another until stopped. */
interface Ping {
  readonly from: PodInfo;
  readonly to: PodInfo;
  readonly file: string;
}

/**
 * One pair's count over one switch. Stopping ping (SIGINT) leaves the
 * echoes sent in the last round trip unanswered: they are `inFlight`, and
 * `lost` counts only echoes before the last answered one.
 */
interface PairCount extends PingSequence {
  readonly pair: string;
}

/** Echoes sent in the last second before the stop may still be in flight. */
const IN_FLIGHT_MAX = 1000 / 50;

/** Starts a ping every 50 ms from each pod to each pod on another node. */
async function startPings(
  c: K8sCluster,
  list: PodInfo[],
  tag: string,
): Promise<Ping[]> {
  const pings: Ping[] = [];
  for (const from of list) {
    for (const to of list.filter((p) => p.node !== from.node)) {
      const file = `/tmp/helm-${tag}-${to.ip}`;
      // -w 600 bounds a ping a failed step never stops.
      const r = await execPod(c, from.name, [
        "sh",
        "-c",
        `ping -i 0.05 -w 600 ${to.ip} >${file}.txt 2>&1 </dev/null & echo $! >${file}.pid; echo started`,
      ]);
      assertEquals(r.stdout.trim(), "started", r.stderr);
      pings.push({ from, to, file });
    }
  }
  return pings;
}

/** Stops the pings (SIGINT: busybox ping prints its summary) and counts. */
async function stopPings(c: K8sCluster, pings: Ping[]): Promise<PairCount[]> {
  const counts: PairCount[] = [];
  for (const p of pings) {
    await execPod(c, p.from.name, [
      "sh",
      "-c",
      `kill -INT $(cat ${p.file}.pid)`,
    ]);
    const text = await until(
      `the ping summary in ${p.from.name}:${p.file}.txt`,
      30_000,
      async () => {
        const r = await execPod(c, p.from.name, ["cat", `${p.file}.txt`]);
        return /packets transmitted/.test(r.stdout) ? r.stdout : undefined;
      },
      500,
    );
    counts.push({
      pair: `${p.from.node} → ${p.to.node}`,
      ...countPings(text, 50),
    });
  }
  return counts;
}

/** Runs `during` under pings between every pair of `list`; 0 lost asserted. */
async function pingPairsDuring(
  c: K8sCluster,
  list: PodInfo[],
  tag: string,
  during: () => Promise<void>,
): Promise<{ counts: PairCount[]; ms: number }> {
  const pings = await startPings(c, list, tag);
  const t0 = Date.now();
  await during();
  const ms = Date.now() - t0;
  // The window goes on a little past the rollout, over the new agents'
  // first seconds.
  await new Promise((r) => setTimeout(r, 3000));
  const counts = await stopPings(c, pings);
  for (const n of counts) {
    assert(n.sent > ms / 50 / 2, `${n.pair}: too few pings sent (${n.sent})`);
  }
  return { counts, ms };
}

/**
 * Waits until flannel's DaemonSet runs `agent` ("weft" or "flanneld", each
 * told by a start-up line of its own, never by the other's absence) in one
 * Ready pod per node and no other pod.
 */
async function assertAgents(
  c: K8sCluster,
  agent: "weft" | "flanneld",
): Promise<void> {
  await until(`${agent} in every pod of kube-flannel-ds`, 60_000, async () => {
    const list = await pods(c, "app=flannel", NS);
    if (list.length !== c.nodes.length || list.some((p) => !p.ready)) return;
    for (const p of list) {
      const log = await c.kubectl(["-n", NS, "logs", p.name]);
      const runs = log.includes("(flanneld-compatible) starting")
        ? "weft"
        // flanneld v0.28.9's main.go, right after parsing its flags.
        : log.includes("CLI flags config:")
        ? "flanneld"
        : undefined;
      if (runs !== agent) return;
    }
    return true;
  });
}

/** The lines of helm's manifest of a release's revisions that differ. */
async function changedLines(
  opts: HelmOptions,
  release: string,
  a: number,
  b: number,
): Promise<string[]> {
  const get = async (rev: number) =>
    (await helmOk(opts, [
      "get",
      "manifest",
      release,
      `--namespace=${NS}`,
      `--revision=${rev}`,
    ])).split("\n");
  const [x, y] = [await get(a), await get(b)];
  assertEquals(x.length, y.length);
  return y.filter((l, i) => l !== x[i]).map((l) => l.trim());
}

/** Replaces (or appends) this file's section of bench/results/k8s.md. */
async function writeResults(
  upgrade: { counts: PairCount[]; ms: number },
  rollback: { counts: PairCount[]; ms: number },
): Promise<void> {
  const commit = await describeCommit();
  const rows = (what: string, r: { counts: PairCount[] }) =>
    r.counts.map((n) =>
      `| ${what} | ${n.pair} | ${n.sent} | ${n.received} | ${n.lost} | ${n.inFlight} | ${n.longestGapMs} ms |`
    );
  const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  const section = [
    SECTION,
    "",
    `tests/k8s/_helm.ts (part of \`deno task test:k8s\`), ${
      new Date().toISOString().slice(0, 10)
    }, commit ${commit}. flannel v0.28.9's own chart (chart/kube-flannel)`,
    "installed with flanneld v0.28.9, then `helm upgrade --reuse-values` setting",
    "only `flannel.image` to weft's, then `helm rollback` to flanneld, while a",
    "pod on each node pings a pod on each other node every 50 ms. A window runs",
    "from the helm command to the DaemonSet rolled out on every node, plus 3 s.",
    "",
    `helm upgrade to weft rolled out in ${
      s(upgrade.ms)
    }; helm rollback to flanneld in ${s(rollback.ms)}.`,
    "",
    "Lost: echoes with no reply sent before the last answered one; in flight:",
    "those sent after it, within the last round trip before ping was stopped",
    `(at most ${IN_FLIGHT_MAX}, one second, allowed). Longest gap: the longest run of`,
    "unanswered echoes between two answered ones.",
    "",
    "| switch | pair (from → to) | sent | answered | lost | in flight at stop | longest gap |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ...rows("upgrade flanneld → weft", upgrade),
    ...rows("rollback weft → flanneld", rollback),
    "",
  ].join("\n");
  const text = await Deno.readTextFile(RESULTS).catch(() => "");
  const start = text.indexOf(SECTION);
  const next = start < 0 ? -1 : text.indexOf("\n## ", start + SECTION.length);
  const updated = start < 0
    ? `${text.trimEnd()}\n\n${section}`
    : `${text.slice(0, start)}${section}${
      next < 0 ? "" : text.slice(next + 1)
    }`;
  await Deno.writeTextFile(RESULTS, updated);
}

/**
 * Waits until no agent pod is left (a deleted DaemonSet's pods terminate
 * after it is gone), so that the next DaemonSet's are the only ones.
 */
async function agentPodsGone(c: K8sCluster): Promise<void> {
  await until("the agent pods gone", 60_000, async () => {
    const left = [
      ...await pods(c, "app=weft", NS),
      ...await pods(c, "app=flannel", NS),
    ];
    return left.length === 0 ? true : undefined;
  });
}

/** One pod of `echo` per node. */
async function onePerNode(
  c: K8sCluster,
  echo: () => Promise<PodInfo[]>,
): Promise<PodInfo[]> {
  const list = [...new Map((await echo()).map((p) => [p.node, p])).values()];
  assertEquals(list.length, c.nodes.length);
  return list;
}

/**
 * The Helm steps. `echo` is the test workload (pods on every node); the
 * agents the earlier steps deployed with kubectl are removed first (the
 * dataplane they leave keeps the pods connected meanwhile), since helm
 * takes over no object it did not create.
 */
export async function helmSteps(
  t: Deno.TestContext,
  c: K8sCluster,
  echo: () => Promise<PodInfo[]>,
): Promise<void> {
  const home = `${c.dir}/helm`;
  const opts: HelmOptions = {
    home,
    kubeconfig: `${c.dir}/admin.kubeconfig`,
    netns: `${c.prefix}-cp`,
  };
  const ns = [`--namespace=${NS}`];

  await t.step(
    "helm install of chart/weft: a bad value is refused naming it; the DaemonSet is Ready on every node and pods reach pods across nodes",
    async () => {
      await c.kubectl([
        "-n",
        NS,
        "delete",
        "--ignore-not-found",
        "daemonset/weft",
        "daemonset/kube-flannel-ds",
        "configmap/kube-flannel-cfg",
        "serviceaccount/weft",
        "serviceaccount/flannel",
      ]);
      await c.kubectl([
        "delete",
        "--ignore-not-found",
        "clusterrole/weft",
        "clusterrolebinding/weft",
        "clusterrole/flannel",
        "clusterrolebinding/flannel",
      ]);
      await c.kubectl(["label", "nodes", "--all", "weft/agent-"]);
      await agentPodsGone(c);

      const bad = await helm(opts, [
        "install",
        "weft",
        WEFT_CHART,
        ...ns,
        "--set=flannel.backend=udp",
      ]);
      assert(bad.code !== 0 && /flannel\/backend/.test(bad.stderr), bad.stderr);
      assertEquals(
        (await helmOk(opts, ["list", ...ns, "--short"])).trim(),
        "",
      );

      await helmOk(opts, [
        "install",
        "weft",
        WEFT_CHART,
        ...ns,
        `--set=flannel.image.repository=${WEFT_IMAGE[0]}`,
        `--set=flannel.image.tag=${WEFT_IMAGE[1]}`,
      ]);
      await rollout(c, NS, "daemonset/weft", 120);
      const weft = await pods(c, "app=weft", NS);
      assertEquals(weft.filter((p) => p.ready).length, c.nodes.length);
      const pings = await crossNodePings(c, await onePerNode(c, echo));
      assertEquals(pings.failed, []);
    },
  );

  await t.step(
    "flannel v0.28.9's chart switched to weft by helm upgrade of the image values and back by helm rollback, no packet lost",
    async () => {
      await helmOk(opts, ["uninstall", "weft", ...ns, "--wait"]);
      await agentPodsGone(c);
      await helmOk(opts, [
        "install",
        "flannel",
        FLANNEL_CHART,
        ...ns,
        "--set=flannel.image.repository=localhost/flanneld",
        "--set=flannel.image.tag=v0.28.9",
        `--set=flannel.flannel_cni.image.repository=${WEFT_IMAGE[0]}`,
        `--set=flannel.flannel_cni.image.tag=${WEFT_IMAGE[1]}`,
      ]);
      await rollout(c, NS, "daemonset/kube-flannel-ds", 120);
      await assertAgents(c, "flanneld");

      const list = await onePerNode(c, echo);

      const upgrade = await pingPairsDuring(c, list, "up", async () => {
        await helmOk(opts, [
          "upgrade",
          "flannel",
          FLANNEL_CHART,
          ...ns,
          "--reuse-values",
          `--set=flannel.image.repository=${WEFT_IMAGE[0]}`,
          `--set=flannel.image.tag=${WEFT_IMAGE[1]}`,
        ]);
        await rollout(c, NS, "daemonset/kube-flannel-ds", 120);
      });
      await assertAgents(c, "weft");
      // The agent and the install-cni step run the image; nothing else moved.
      assertEquals(
        await changedLines(opts, "flannel", 1, 2),
        Array(2).fill(`image: ${WEFT_IMAGE.join(":")}`),
      );

      const rollback = await pingPairsDuring(c, list, "back", async () => {
        await helmOk(opts, ["rollback", "flannel", "1", ...ns]);
        await rollout(c, NS, "daemonset/kube-flannel-ds", 120);
      });
      await assertAgents(c, "flanneld");

      await writeResults(upgrade, rollback);
      for (
        const [what, r] of [["upgrade", upgrade], [
          "rollback",
          rollback,
        ]] as const
      ) {
        console.log(
          `  helm ${what}: ${
            r.counts.map((n) =>
              `${n.pair} ${n.received}/${n.sent} (${n.lost} lost, ${n.inFlight} in flight)`
            ).join(", ")
          }`,
        );
        for (const n of r.counts) {
          assertEquals(n.lost, 0, `${what} ${n.pair}: ${n.lost} lost`);
          assert(
            n.inFlight <= IN_FLIGHT_MAX,
            `${what} ${n.pair}: the last ${n.inFlight} echoes unanswered`,
          );
        }
      }
    },
  );
}
