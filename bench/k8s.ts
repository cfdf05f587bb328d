/**
 * Figures of the cluster tier (tests/k8s/): how long the cluster takes to
 * come up, `kubectl apply -f deploy/weft.yaml` until the DaemonSet is Ready
 * on every node, and, over N pods created one at a time on the second and
 * third nodes, the time from `kubectl create` returning to the pod
 * answering a ping from the first node (its network namespace, across
 * VXLAN). The pod's IP is learnt by polling the API, so the figure
 * includes the kubelet's status update and a kubectl round trip (~0.1 s).
 *
 * Needs root, `tests/k8s/prepare.sh`, and the heavy lock:
 * `flock /tmp/weft-heavy.lock deno run -A bench/k8s.ts [--pods=50]`.
 *
 * @module
 */
import { deployWeft, K8sCluster } from "../tests/k8s/_k8s.ts";
import { machine, percentile } from "./_stats.ts";

const IMAGES = `${Deno.env.get("WEFT_CACHE") ?? "/var/cache/weft"}/images/k8s`;
const n = Number(
  Deno.args.find((a) => a.startsWith("--pods="))?.slice(7) ?? 50,
);

const t0 = performance.now();
await using c = await K8sCluster.up({ images: IMAGES });
const up = performance.now() - t0;
const t1 = performance.now();
await deployWeft(c);
const apply = performance.now() - t1;
const from = c.nodes[0]!;

const reach: number[] = [];
for (let i = 0; i < n; i++) {
  const node = c.nodes[1 + (i % 2)]!;
  const name = `reach-${i}`;
  const pod = `apiVersion: v1
kind: Pod
metadata: {name: ${name}, namespace: default}
spec:
  nodeName: ${node.name}
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: localhost/weft-testpod:1, command: ["sleep", "3600"]}
`;
  await c.kubectl(["create", "-f", "-"], pod);
  const start = performance.now();
  let ip = "";
  while (ip === "" && performance.now() - start < 60_000) {
    ip = (await c.kubectl([
      "get",
      "pod",
      name,
      "-o",
      "jsonpath={.status.podIP}",
    ])).trim();
  }
  if (ip === "") throw new Error(`${name} got no IP in 60 s`);
  const r = await from.tryExec([
    "sh",
    "-c",
    `for i in $(seq 600); do ping -c1 -W1 -q ${ip} >/dev/null && exit 0; sleep 0.02; done; exit 1`,
  ]);
  if (r.code !== 0) throw new Error(`${name} (${ip}) never answered`);
  reach.push(performance.now() - start);
  await c.kubectl(["delete", "pod", name, "--wait=false"]);
}

const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
console.log(`Machine: ${await machine()}\n`);
console.log("| measurement | value |\n| --- | ---: |");
console.log(`| cluster up (control plane + 3 nodes registered) | ${s(up)} |`);
console.log(`| kubectl apply to DaemonSet Ready on 3/3 | ${s(apply)} |`);
console.log(
  `| pod created to reachable from another node, p50 (${n} pods) | ${
    s(percentile(reach, 50))
  } |`,
);
console.log(
  `| pod created to reachable from another node, p99 (${n} pods) | ${
    s(percentile(reach, 99))
  } |`,
);
