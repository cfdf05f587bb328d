/**
 * weft as users run it: deploy/weft.yaml applied with the real kubectl to a
 * real cluster (tests/k8s/_k8s.ts: kube-apiserver, controller-manager,
 * scheduler, three nodes with containerd 2, kubelet and kube-proxy), then
 * checked from the outside: the runtime the kubelets report, readiness,
 * files the init step installed, annotations and conditions, pod traffic
 * across nodes, cluster DNS and what pods do across nodes
 * (tests/k8s/_pod_paths.ts); a fourth node joins; then traffic between
 * every ordered pair of nodes (tests/k8s/_traffic.ts) must lose nothing
 * while the DaemonSet is updated and while a weft pod is deleted, each
 * time as a node is deleted, a node joins and pods come and go
 * (tests/k8s/_churn.ts); a node deleted leaves every kernel; 50 pods
 * created and deleted must leave no IPs, veths, network namespaces or
 * stored CNI configurations; then the Helm steps of _helm.ts.
 *
 * One cluster serves every step (it takes about a minute to build). Needs
 * root and the binaries of `.ci/build_servers.sh --with-cluster
 * --with-containerd`; under `CI=true` nothing is ignored. Hostile Nodes
 * (tests/k8s/_hostile.ts) are applied after the node deletion.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import { gatedTest, ROOT } from "../_gate.ts";
import { HELM } from "../servers/helm.ts";
import { helmSteps } from "./_helm.ts";
import {
  assertAgents,
  CLUSTER,
  CLUSTER_CIDR,
  crossNodeReach,
  deployWeft,
  echoManifest,
  execPod,
  httpGet,
  IMAGES,
  installedCni,
  K8sCluster,
  type K8sNode,
  parsePingCount,
  type PodInfo,
  pods,
  PROBE_CPU,
  rollout,
  servicePod,
  until,
} from "./_k8s.ts";
import { hostileNodes } from "./_hostile.ts";
import {
  assertAllReach,
  assertPeerGone,
  assertPeerPresent,
  type Churn,
  churnDuring,
  daemonSetReady,
  peerOf,
  podState,
  podStateClean,
  PROBES,
} from "./_churn.ts";
import { assertNoLoss, laneLock, summary, trafficDuring } from "./_traffic.ts";
import { nodeOf, podPathSteps } from "./_pod_paths.ts";

/**
 * What the kubelet reports for the nodes' containerd (the version
 * `.ci/build_servers.sh --with-containerd` pins).
 */
const CONTAINER_RUNTIME = "containerd://2.4.2";

interface NodeJson {
  metadata: { name: string; annotations?: Record<string, string> };
  spec: { podCIDR?: string; podCIDRs?: string[] };
  status: {
    nodeInfo?: { containerRuntimeVersion: string };
    conditions?: {
      type: string;
      status: string;
      reason?: string;
      message?: string;
    }[];
  };
}

async function subnetEnv(node: K8sNode): Promise<Record<string, string>> {
  const text = await node.exec(["cat", "/run/flannel/subnet.env"]);
  return Object.fromEntries(
    text.trim().split("\n").map((l) => l.split("=") as [string, string]),
  );
}

/**
 * Pings `dst` from `from` every 50 ms for `seconds` while `during` runs.
 * ping runs in the background inside the pod and its summary is read from a
 * file afterwards: a `kubectl exec` stream that stays silent (ping -q) was
 * seen to end after 60 s with no output at all, which would lose the count.
 */
async function pingDuring(
  c: K8sCluster,
  from: PodInfo,
  dst: string,
  seconds: number,
  during: () => Promise<void>,
): Promise<{ sent: number; received: number }> {
  const out = `/tmp/ping-${Date.now()}.txt`;
  const started = await execPod(c, from.name, [
    "sh",
    "-c",
    `ping -q -i 0.05 -w ${seconds} ${dst} >${out} 2>&1 </dev/null & echo started`,
  ]);
  assertEquals(started.stdout.trim(), "started", started.stderr);
  const t0 = Date.now();
  await during();
  assert(
    Date.now() - t0 < seconds * 1000 - 2000,
    `the disruption outlasted the ${seconds} s ping window`,
  );
  const text = await until(
    `the ping summary in ${from.name}:${out}`,
    (seconds + 30) * 1000,
    async () => {
      const r = await execPod(c, from.name, ["cat", out]);
      return /packets transmitted/.test(r.stdout) ? r.stdout : undefined;
    },
    1000,
  );
  const count = parsePingCount(text);
  assert(count.sent > seconds * 10, `too few pings sent: ${text}`);
  return count;
}

await gatedTest({
  name:
    "k8s: weft deployed with kubectl runs pods across nodes under kubelet and containerd",
  needs: [ROOT, CLUSTER, HELM],
  fn: async (t) => {
    const t0 = Date.now();
    await using c = await K8sCluster.up({
      images: IMAGES,
      log: (l) => console.log(`  ${l}`),
    });
    console.log(`  cluster up in ${Date.now() - t0} ms`);

    await t.step(
      `every kubelet reports its runtime as ${CONTAINER_RUNTIME}`,
      async () => {
        const runtimes = await until(
          "every node's containerRuntimeVersion",
          60_000,
          async () => {
            const list = await c.getJson<{ items: NodeJson[] }>(["nodes"]);
            const v = list.items.map((n) =>
              n.status.nodeInfo?.containerRuntimeVersion ?? ""
            );
            return v.length === 3 && v.every((r) => r !== "") ? v : undefined;
          },
          1000,
        );
        for (const r of runtimes) {
          assert(r.startsWith(CONTAINER_RUNTIME), `a node runs ${r}`);
        }
      },
    );

    await t.step(
      "the DaemonSet is Ready on 3/3 nodes through its readiness probe",
      async () => {
        const t1 = Date.now();
        await deployWeft(c);
        console.log(`  kubectl apply to 3/3 Ready in ${Date.now() - t1} ms`);
        const ds = await c.getJson<
          {
            status: { numberReady: number; desiredNumberScheduled: number };
            spec: {
              template: {
                spec: {
                  containers: {
                    readinessProbe?: { httpGet?: { path: string } };
                  }[];
                };
              };
            };
          }
        >(["-n", "kube-flannel", "daemonset", "weft"]);
        assertEquals(
          [ds.status.numberReady, ds.status.desiredNumberScheduled],
          [3, 3],
        );
        assertEquals(
          ds.spec.template.spec.containers[0]?.readinessProbe?.httpGet?.path,
          "/readyz",
        );
        const weft = await pods(c, "app=weft", "kube-flannel");
        assertEquals(weft.filter((p) => p.ready).length, 3);
      },
    );

    await t.step(
      "the init step installed the CNI plugin and conflist on every node",
      async () => {
        const { got, want } = await installedCni(c);
        assertEquals(got, want);
      },
    );

    await t.step(
      "weft reached the API through the kubernetes Service ClusterIP",
      async () => {
        const svc = await c.getJson<{ spec: { clusterIP: string } }>([
          "service",
          "kubernetes",
        ]);
        for (const p of await pods(c, "app=weft", "kube-flannel")) {
          const log = await c.kubectl(["-n", "kube-flannel", "logs", p.name]);
          assert(
            log.includes(
              `Kubernetes subnet manager for node "${p.node}" via https://${svc.spec.clusterIP}:443`,
            ),
            log,
          );
        }
      },
    );

    await t.step(
      "podCIDRs come from the controller-manager; annotations and NetworkUnavailable=False are set",
      async () => {
        const nodes = await c.getJson<{ items: NodeJson[] }>(["nodes"]);
        const cidrs = new Set<string>();
        for (const n of nodes.items) {
          const cidr = n.spec.podCIDRs?.[0] ?? "";
          assert(
            /^10\.244\.\d+\.0\/24$/.test(cidr),
            `${n.metadata.name}: ${cidr}`,
          );
          cidrs.add(cidr);
          const a = n.metadata.annotations ?? {};
          const node = nodeOf(c, n.metadata.name);
          assertEquals(a["flannel.alpha.coreos.com/backend-type"], "vxlan");
          assertEquals(
            a["flannel.alpha.coreos.com/kube-subnet-manager"],
            "true",
          );
          assertEquals(a["flannel.alpha.coreos.com/public-ip"], node.ip);
          assert(
            /^\{"VNI":1,"VtepMAC":"([0-9a-f]{2}:){5}[0-9a-f]{2}"\}$/.test(
              a["flannel.alpha.coreos.com/backend-data"] ?? "",
            ),
          );
          const cond = n.status.conditions?.find((x) =>
            x.type === "NetworkUnavailable"
          );
          assertEquals(
            [cond?.status, cond?.reason, cond?.message],
            ["False", "FlannelIsUp", "Flannel is running on this node"],
          );
          const env = await subnetEnv(node);
          assertEquals(env.FLANNEL_NETWORK, CLUSTER_CIDR);
          assertEquals(env.FLANNEL_SUBNET, cidr.replace(".0/24", ".1/24"));
        }
        assertEquals(cidrs.size, 3);
      },
    );

    // The echo pods carry the traffic windows' probes.
    await c.kubectl(["apply", "-f", "-"], echoManifest(3, "echo", PROBE_CPU));
    await rollout(c, "default", "deployment/echo");
    const echo = await pods(c, "app=echo");
    assertEquals(new Set(echo.map((p) => p.node)).size, 3);
    const [a, b, d] = echo as [PodInfo, PodInfo, PodInfo];

    await t.step("pods reach pods on other nodes (ICMP and TCP)", async () => {
      const reach = await crossNodeReach(c, echo);
      assertEquals(reach.failed, []);
      assertEquals(reach.answered, 6);
    });

    await t.step(
      "a pod reaches a ClusterIP Service backed by a pod on another node",
      async () => {
        const svc = await servicePod<{ spec: { clusterIP: string } }>(
          c,
          b.name,
          "echo-target",
        );
        const body = await until(
          "the echo-target Service to answer",
          30_000,
          async () => {
            const r = await httpGet(c, a.name, svc.spec.clusterIP, 80);
            return r === b.name ? r : undefined;
          },
        );
        assertEquals(body, b.name);
        assert(a.node !== b.node);
      },
    );

    await t.step(
      "a pod reaches the API server through the kubernetes Service",
      async () => {
        // CoreDNS is not deployed yet (podPathSteps resolves the name later),
        // so kubernetes.default is looked up in the API (what CoreDNS would
        // answer), and the pod connects to that
        // ClusterIP: kube-proxy's DNAT to kube-apiserver on the control
        // plane, across the overlay's masquerade rules.
        const ip = (await c.kubectl([
          "-n",
          "default",
          "get",
          "service",
          "kubernetes",
          "-o",
          "jsonpath={.spec.clusterIP}",
        ])).trim();
        assert(/^10\.96\.\d+\.\d+$/.test(ip), `kubernetes.default: ${ip}`);
        const r = await execPod(c, a.name, [
          "sh",
          "-c",
          `nc -w 3 ${ip} 443 </dev/null && echo connected`,
        ]);
        assertEquals(r.stdout.trim(), "connected", r.stderr);
      },
    );

    await t.step("the pod MTU is FLANNEL_MTU", async () => {
      for (const p of echo) {
        const env = await subnetEnv(nodeOf(c, p.node));
        const r = await execPod(c, p.name, ["cat", "/sys/class/net/eth0/mtu"]);
        assertEquals(r.stdout.trim(), env.FLANNEL_MTU);
      }
    });

    await podPathSteps(t, c, echo);

    await c.kubectl(["apply", "-f", "-"], PROBES);
    await daemonSetReady(c, "probe");

    let spare: K8sNode | undefined;
    await t.step(
      "a fourth node joins and gets a podCIDR, routes and traffic",
      async () => {
        spare = await c.addNode();
        await until("weft Ready on 4/4 nodes", 120_000, async () => {
          const w = await pods(c, "app=weft", "kube-flannel");
          return w.filter((p) => p.ready).length === 4 ? true : undefined;
        });
        const n4 = await c.getJson<NodeJson>(["node", spare.name]);
        assert(/^10\.244\.\d+\.0\/24$/.test(n4.spec.podCIDRs?.[0] ?? ""));
        await assertPeerPresent(c, spare);
        await assertAllReach(c, "app=probe");
      },
    );

    /**
     * `act` under traffic between every ordered pair of the echo pods'
     * nodes while the spare node is deleted, a new one joins and pods come
     * and go on every node; then both nodes' entries checked in every
     * kernel and every probe pod reaching every other.
     */
    const churnWindow = async (
      what: string,
      tag: string,
      act: () => Promise<void>,
    ) => {
      assert(spare);
      let churn: Churn | undefined;
      const w = await trafficDuring(c, [a, b, d], what, async () => {
        churn = await churnDuring(c, tag, spare!, act);
      }, "exclusive");
      assert(churn);
      // The next window deletes the node that joined, whatever this one saw.
      spare = churn.joined;
      console.log(`  ${summary(w)}`);
      assertNoLoss(w);
      await assertPeerGone(c, churn.deleted);
      await assertPeerPresent(c, churn.joined);
      await assertAgents(c, "weft");
      await assertAllReach(c, "app=probe");
    };

    await t.step(
      "a rolling update of the DaemonSet loses no packet while a node leaves, a node joins and pods come and go",
      () =>
        churnWindow("rolling update weft → weft", "update", async () => {
          await c.kubectl([
            "-n",
            "kube-flannel",
            "set",
            "image",
            "daemonset/weft",
            "weft=localhost/weft:v0.1.1",
            "install-cni-plugin=localhost/weft:v0.1.1",
            "install-cni=localhost/weft:v0.1.1",
          ]);
          await rollout(c, "kube-flannel", "daemonset/weft", 240);
        }),
    );

    await t.step(
      "deleting a weft pod loses no packet while a node leaves, a node joins and pods come and go",
      () =>
        churnWindow("weft pod deleted", "delete", async () => {
          const victim = (await pods(c, "app=weft", "kube-flannel")).find((
            p,
          ) => p.node === a.node);
          assert(victim);
          await c.kubectl([
            "-n",
            "kube-flannel",
            "delete",
            "pod",
            victim.name,
          ]);
          await until(
            "the replacement weft pod to be Ready",
            60_000,
            async () => {
              const now = await pods(c, "app=weft", "kube-flannel");
              return now.some((p) =>
                  p.ready && p.node === a.node && p.name !== victim.name
                )
                ? true
                : undefined;
            },
          );
        }),
    );

    await t.step(
      "a node deleted from the API disappears from the others' kernels",
      async () => {
        assert(spare);
        const gone = await peerOf(c, spare);
        // Its probe (a DaemonSet's) goes with it; pods a, b and d stay.
        await c.stopNode(spare);
        await c.kubectl(["delete", "node", spare.name]);
        await assertPeerGone(c, gone);
        assertEquals(c.nodes.length, 3);
      },
    );

    await t.step(
      "hostile Nodes (a copied VtepMAC, a stolen podCIDR, a wider podCIDR, the oldest node re-pointing its MAC) change no victim's route or FDB entry, lose no packet, and are counted, also by a restarted agent",
      () =>
        hostileNodes(
          c,
          echo,
          (from, dst, seconds, during) =>
            pingDuring(c, from, dst, seconds, during),
        ),
    );

    await t.step(
      "50 pods created and deleted leave no IPs, veths, netns or stored configurations; DEL is idempotent",
      () =>
        laneLock("exclusive", async () => {
          const seen = new Set<string>();
          for (let round = 0; round < 2; round++) {
            await c.kubectl(["apply", "-f", "-"], echoManifest(25, "churn"));
            await rollout(c, "default", "deployment/churn", 240);
            for (const node of c.nodes) {
              for (const id of (await podState(node)).stored) {
                seen.add(`${node.name}/${id}`);
              }
            }
            await c.kubectl(["delete", "deployment/churn", "--wait=true"]);
            await until(
              "churn pods gone",
              120_000,
              async () =>
                (await pods(c, "app=churn")).length === 0 ? true : undefined,
            );
          }
          await c.kubectl(["delete", "service/churn"]);
          for (const node of c.nodes) await podStateClean(c, node);
          // DEL of a sandbox already deleted, twice: success, nothing run.
          const gone = [...seen].find((s) =>
            s.startsWith(`${c.nodes[0]!.name}/`)
          );
          assert(gone, "churn pods ran on the first node");
          const id = gone.split("/")[1]!;
          const conf = JSON.stringify({
            cniVersion: "0.3.1",
            name: "cbr0",
            type: "flannel",
            delegate: { hairpinMode: true, isDefaultGateway: true },
          });
          for (let i = 0; i < 2; i++) {
            const r = await c.nodes[0]!.tryExec([
              "sh",
              "-c",
              `echo '${conf}' | CNI_COMMAND=DEL CNI_CONTAINERID=${id} CNI_NETNS= CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin /opt/cni/bin/flannel`,
            ]);
            assertEquals([r.code, r.stdout], [0, ""], r.stderr);
          }
        }),
    );

    await helmSteps(t, c, () => pods(c, "app=echo"));
  },
});
