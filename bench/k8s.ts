/**
 * Figures of the cluster tier (tests/k8s/), `deno task bench k8s
 * [--pods=50]`: how long the cluster takes to come up, `kubectl apply -f
 * deploy/weft.yaml` until the DaemonSet is Ready on every node, and, over N
 * pods created one at a time on the second and third nodes, the time from
 * `kubectl create` returning to the pod answering a ping from the first
 * node (its network namespace, across VXLAN). The pod's IP is learnt by
 * polling the API, so the figure includes the kubelet's status update and a
 * kubectl round trip (~0.1 s). The table goes to bench/results/k8s.md.
 *
 * Needs root and what `tests/k8s/prepare.sh` builds; run it under the heavy
 * lock on a shared machine.
 *
 * @module
 */
import { deployWeft, IMAGES, K8sCluster } from "../tests/k8s/_k8s.ts";
import { machine, percentile } from "./_stats.ts";

const RESULTS = new URL("./results/", import.meta.url).pathname;

/** Pod manifest pinned to `node`, as the test pods are. */
function testPod(name: string, node: string): string {
  return `apiVersion: v1
kind: Pod
metadata: {name: ${name}, namespace: default}
spec:
  nodeName: ${node}
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: localhost/weft-testpod:1, command: ["sleep", "3600"]}
`;
}

/** Runs the cluster benchmark with `pods` pods; returns the markdown table. */
export async function benchK8s(pods: number): Promise<string> {
  const t0 = performance.now();
  await using c = await K8sCluster.up({ images: IMAGES });
  const up = performance.now() - t0;
  const t1 = performance.now();
  await deployWeft(c);
  const apply = performance.now() - t1;
  const from = c.nodes[0]!;

  const reach: number[] = [];
  for (let i = 0; i < pods; i++) {
    const name = `reach-${i}`;
    await c.kubectl(
      ["create", "-f", "-"],
      testPod(name, c.nodes[1 + (i % 2)]!.name),
    );
    const start = performance.now();
    let ip = "";
    while (ip === "" && performance.now() - start < 60_000) {
      ip = (await c.kubectl(
        ["get", "pod", name, "-o", "jsonpath={.status.podIP}"],
      )).trim();
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
  return [
    "| measurement | value |",
    "| --- | ---: |",
    `| cluster up (control plane + 3 nodes registered) | ${s(up)} |`,
    `| kubectl apply to DaemonSet Ready on 3/3 | ${s(apply)} |`,
    `| pod created to reachable from another node, p50 (${pods} pods) | ${
      s(percentile(reach, 50))
    } |`,
    `| pod created to reachable from another node, p99 (${pods} pods) | ${
      s(percentile(reach, 99))
    } |`,
    `| pod created to reachable from another node, max (${pods} pods) | ${
      s(Math.max(...reach))
    } |`,
  ].join("\n");
}

/** `deno task bench k8s [--pods=N]`: runs it and writes bench/results/k8s.md. */
export async function k8sBench(args: readonly string[]): Promise<void> {
  const pods = Number(
    args.find((a) => a.startsWith("--pods="))?.slice(7) ?? 50,
  );
  if (!Number.isInteger(pods) || pods < 1) {
    throw new Error(`--pods must be a positive integer, got ${pods}`);
  }
  const table = await benchK8s(pods);
  const m = await machine();
  // Sections other tests write (## headings) are kept.
  const old = await Deno.readTextFile(`${RESULTS}k8s.md`).catch(() => "");
  const kept = old.includes("\n## ") ? old.slice(old.indexOf("\n## ")) : "";
  const md = `# The cluster tier's figures (bench/k8s.ts)\n\n${
    new Date().toISOString().slice(0, 10)
  }. Machine: ${m}.\n\n${table}\n${kept}`;
  await Deno.mkdir(RESULTS, { recursive: true });
  await Deno.writeTextFile(`${RESULTS}k8s.md`, md);
  console.log(md);
  console.error(`Wrote ${RESULTS}k8s.md`);
}
