/**
 * `deno task demo --k8s`: the same three-node demo, but as users run weft:
 * a real control plane and three kubelet + containerd nodes
 * (tests/k8s/_k8s.ts), `kubectl apply -f deploy/weft.yaml`, a test
 * Deployment spread over the nodes, and every pod pinging every pod on the
 * other nodes. tests/k8s/prepare.sh runs first: it installs the Debian
 * packages, builds the cluster binaries (.ci/build_servers.sh, Go module
 * proxy, cached) and the images (reused while their inputs are unchanged).
 *
 * @module
 */
import {
  crossNodePings,
  deployWeft,
  echoManifest,
  IMAGES,
  K8sCluster,
  pods,
  PREFIX,
  rollout,
} from "./_k8s.ts";

const REPO = new URL("../..", import.meta.url).pathname;
const CACHE = Deno.env.get("WEFT_CACHE") ?? "/var/cache/weft";

function info(msg: string): void {
  console.log(`\n${new Date().toTimeString().slice(0, 8)} - INFO: ${msg}`);
}

async function step(cmd: string[]): Promise<void> {
  const r = await new Deno.Command(cmd[0]!, {
    args: cmd.slice(1),
    cwd: REPO,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (r.code !== 0) throw new Error(`${cmd.join(" ")} exited ${r.code}`);
}

/** Builds what is missing, runs the demo; resolves to the exit status. */
export async function k8sDemo(keep: boolean): Promise<number> {
  const t0 = performance.now();
  info(
    "tests/k8s/prepare.sh: Debian packages, cluster binaries (.ci/build_servers.sh --with-cluster), images",
  );
  await step(["bash", "tests/k8s/prepare.sh"]);

  info(
    `Control plane in ${PREFIX}-cp (198.18.0.2), nodes ${PREFIX}-n1..n3 (198.18.0.11-13), each with its own mount namespace`,
  );
  let cluster: K8sCluster | undefined;
  let status = 1;
  try {
    const tUp = performance.now();
    cluster = await K8sCluster.up({
      images: IMAGES,
      log: (l) => console.log(l),
    });
    const c = cluster;
    console.log(
      `cluster up in ${((performance.now() - tUp) / 1000).toFixed(1)} s`,
    );
    console.log(await c.kubectl(["get", "nodes", "-o", "wide"]));

    info("kubectl apply -f deploy/weft.yaml (image: localhost/weft:v0.1.0)");
    const tApply = performance.now();
    await deployWeft(c);
    const weft = await pods(c, "app=weft", "kube-flannel");
    const ready = weft.filter((p) => p.ready).length;
    console.log(
      await c.kubectl(["-n", "kube-flannel", "get", "pods", "-o", "wide"]),
    );
    console.log(
      `weft DaemonSet ready on ${ready}/${c.nodes.length} nodes (kubelet, containerd) in ${
        ((performance.now() - tApply) / 1000).toFixed(1)
      } s`,
    );
    const nodes = await c.kubectl([
      "get",
      "nodes",
      "-o",
      "custom-columns=NODE:.metadata.name,PODCIDR:.spec.podCIDR,PUBLIC-IP:.metadata.annotations.flannel\\.alpha\\.coreos\\.com/public-ip,VTEP:.metadata.annotations.flannel\\.alpha\\.coreos\\.com/backend-data",
    ]);
    console.log(nodes);

    info("A test Deployment: 2 busybox pods per node");
    await c.kubectl(["apply", "-f", "-"], echoManifest(2 * c.nodes.length));
    await rollout(c, "default", "deployment/echo");
    const echo = await pods(c, "app=echo");
    console.log(await c.kubectl(["get", "pods", "-o", "wide"]));
    const n1 = c.nodes[0]!;
    info(`${n1.name}: subnet.env, routes, neighbours, FDB`);
    console.log(await n1.exec(["cat", "/run/flannel/subnet.env"]));
    console.log(await n1.exec(["ip", "route"]));
    console.log(await n1.exec(["ip", "neigh", "show", "dev", "flannel.1"]));
    console.log(await n1.exec(["bridge", "fdb", "show", "dev", "flannel.1"]));

    info("Every pod pings every pod on the other nodes");
    const pings = await crossNodePings(c, echo);
    for (const f of pings.failed) console.log(`no answer: ${f}`);
    console.log(
      `${pings.answered}/${pings.total} cross-node pod pings answered`,
    );
    console.log(
      `whole run ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
    status = ready === c.nodes.length && pings.answered === pings.total &&
        pings.total > 0
      ? 0
      : 1;
    if (keep) {
      console.log(
        [
          "",
          "The cluster is up (--keep) until you press Ctrl-C. Look around:",
          `  ip netns exec ${PREFIX}-cp ${CACHE}/bin/kubectl --kubeconfig=${c.dir}/admin.kubeconfig get pods -A -o wide`,
          `  nsenter -t ${n1.proc?.child.pid} -m -n ip route`,
          `  tail -f ${n1.dir}/kubelet.log`,
        ].join("\n"),
      );
      await new Promise<void>((resolve) => {
        Deno.addSignalListener("SIGINT", () => resolve());
        Deno.addSignalListener("SIGTERM", () => resolve());
      });
    }
  } catch (e) {
    console.error(`\nThe demo failed: ${(e as Error).stack ?? e}`);
    if (cluster) console.error(`Logs: ${cluster.dir}`);
    if (keep) {
      console.error("--keep: the cluster stays until Ctrl-C");
      await new Promise<void>((resolve) => {
        Deno.addSignalListener("SIGINT", () => resolve());
      });
    }
  } finally {
    await cluster?.close();
  }
  return status;
}
