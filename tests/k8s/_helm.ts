/**
 * The cluster tier's Helm steps, run on the cluster tests/k8s/cluster_test.ts
 * already has up (a second cluster would cost a minute): weft's chart
 * (chart/weft) installed with `helm install`, then flannel v0.28.9's own
 * chart installed running the real flanneld, switched to weft by `helm
 * upgrade` changing only the agent's image, and switched back by `helm
 * rollback`, each switch under traffic between every ordered pair of nodes
 * (ICMP and TCP, tests/k8s/_traffic.ts). The
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
  assertAgents,
  crossNodePings,
  type K8sCluster,
  type PodInfo,
  pods,
  rollout,
  until,
} from "./_k8s.ts";
import {
  assertNoLoss,
  summary,
  trafficDuring,
  writeSection,
} from "./_traffic.ts";

const NS = "kube-flannel";
const WEFT_IMAGE = ["localhost/weft", "v0.1.1"] as const;
/** The heading of this file's section of bench/results/k8s.md. */
const SECTION = "## Helm: flannel's chart switched to weft and back";

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

      const upgrade = await trafficDuring(
        c,
        list,
        "helm upgrade flanneld → weft",
        async () => {
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
        },
      );
      await assertAgents(c, "weft");
      // The agent and the install-cni step run the image; nothing else moved.
      assertEquals(
        await changedLines(opts, "flannel", 1, 2),
        Array(2).fill(`image: ${WEFT_IMAGE.join(":")}`),
      );

      const rollback = await trafficDuring(
        c,
        list,
        "helm rollback weft → flanneld",
        async () => {
          await helmOk(opts, ["rollback", "flannel", "1", ...ns]);
          await rollout(c, NS, "daemonset/kube-flannel-ds", 120);
        },
      );
      await assertAgents(c, "flanneld");

      await writeSection(
        SECTION,
        "tests/k8s/_helm.ts",
        [
          "flannel v0.28.9's own chart (chart/kube-flannel) installed with flanneld",
          "v0.28.9, then `helm upgrade --reuse-values` setting only `flannel.image`",
          "to weft's, then `helm rollback` to flanneld, while a pod on each node",
          "sends to a pod on each other node. A window runs from the helm command",
          "to the DaemonSet rolled out on every node.",
        ],
        [upgrade, rollback],
      );
      for (const w of [upgrade, rollback]) {
        console.log(`  ${summary(w)}`);
        assertNoLoss(w);
      }
    },
  );
}
