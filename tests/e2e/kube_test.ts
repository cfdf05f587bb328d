/**
 * End-to-end, Kubernetes mode: the same scenario as cluster_test.ts with a
 * real kube-apiserver (and etcd >= 3.5) in the switch namespace, Node
 * objects carrying spec.podCIDR, and agents running
 * `--kube-subnet-mgr --kubeconfig-file` under flannel's stock RBAC.
 * Without root or the server binaries (.ci/build_servers.sh) the test is
 * ignored with the reason, or fails under CI=true (`_gate.ts`).
 *
 * @module
 */
import { gatedTest, ROOT } from "../_gate.ts";
import { kubeUnavailable } from "./_kube.ts";
import { startScenario } from "./_scenario.ts";
import { scenarioSteps } from "./_steps.ts";

const NAME =
  "e2e kube: pods talk across VXLAN; agents survive kill -9 and SIGTERM, repair drift and forget deleted Nodes";
await gatedTest({
  name: NAME,
  needs: [ROOT, kubeUnavailable],
  fn: async (t) => {
    await using s = await startScenario({
      prefix: "weft-e2k",
      mode: "kube",
      reconcilePeriod: 300,
    });
    await scenarioSteps(t, s);
  },
});
