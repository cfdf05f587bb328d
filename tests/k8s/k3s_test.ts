/**
 * weft on k3s's layout: deploy/weft-k3s.yaml applied unchanged (only its
 * image reference replaced) to two nodes whose containerd uses k3s's CNI
 * directories: `bin_dir` /var/lib/rancher/k3s/data/cni, whose entries are
 * symlinks into the build's directory data/<build>/bin (data/current
 * points there too), and `conf_dir` /var/lib/rancher/k3s/agent/etc/cni/net.d;
 * the pod network is k3s's default 10.42.0.0/16. Nothing is in
 * /opt/cni/bin or /etc/cni/net.d, so a pod that gets an address got it
 * through weft's plugin from data/cni, running bridge by its symlink there.
 *
 * k3s itself is not run (no k3s binary is reachable here): the nodes are
 * the harness's (tests/k8s/_k8s.ts), with Debian's reference plugins in
 * place of k3s's multi-call binary.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import { gatedTest, ROOT } from "../_gate.ts";
import {
  CLUSTER,
  CNI_PLUGINS,
  crossNodeReach,
  echoManifest,
  IMAGES,
  installedCni,
  K8sCluster,
  manifest,
  type NodeCni,
  type PodInfo,
  pods,
  rollout,
} from "./_k8s.ts";

const K3S = "/var/lib/rancher/k3s";
/** The directory k3s extracts its build into (named after its hash). */
const BUILD = "d1e2a3d4";
const CONF_DIR = `${K3S}/agent/etc/cni/net.d`;
const BIN_DIR = `${K3S}/data/cni`;

/** k3s's CNI directories, with Debian's plugins laid out as k3s's. */
const K3S_CNI: NodeCni = {
  binDir: BIN_DIR,
  confDir: CONF_DIR,
  dirs: [K3S],
  install: `mkdir -p ${K3S}/data/${BUILD}/bin ${BIN_DIR} ${CONF_DIR}
for p in ${CNI_PLUGINS.join(" ")}; do
  cp /usr/lib/cni/$p ${K3S}/data/${BUILD}/bin/
  ln -s ../${BUILD}/bin/$p ${BIN_DIR}/$p
done
ln -s ${BUILD} ${K3S}/data/current`,
};

interface NodeJson {
  metadata: { name: string };
  spec: { podCIDR?: string };
}

/** Whether `ip` lies in the IPv4 `/24` `cidr`. */
function inSlash24(ip: string, cidr: string): boolean {
  return cidr.endsWith(".0/24") &&
    ip.startsWith(cidr.slice(0, -"0/24".length));
}

await gatedTest({
  name:
    "k8s: deploy/weft-k3s.yaml on nodes with k3s's CNI layout runs pods across nodes through weft's CNI plugin",
  needs: [ROOT, CLUSTER],
  fn: async (t) => {
    const t0 = Date.now();
    await using c = await K8sCluster.up({
      nodes: 2,
      images: IMAGES,
      clusterCidrs: ["10.42.0.0/16"],
      cni: K3S_CNI,
      log: (l) => console.log(`  ${l}`),
    });
    console.log(`  cluster up in ${Date.now() - t0} ms`);

    await t.step(
      "deploy/weft-k3s.yaml applied unchanged installs weft's plugin and conflist in k3s's directories",
      async () => {
        await c.kubectl(
          ["apply", "-f", "-"],
          await manifest("localhost/weft:v0.1.0", "deploy/weft-k3s.yaml"),
        );
        await rollout(c, "kube-flannel", "daemonset/weft");
        const { got, want } = await installedCni(c, CONF_DIR, BIN_DIR);
        assertEquals(got, want);
        for (const node of c.nodes) {
          assertEquals(
            await node.exec(["ls", "-A", "/opt/cni/bin", "/etc/cni/net.d"]),
            "/etc/cni/net.d:\n\n/opt/cni/bin:\n",
          );
          assert(
            (await node.exec(["cat", "/run/flannel/subnet.env"])).includes(
              "FLANNEL_NETWORK=10.42.0.0/16\n",
            ),
          );
        }
      },
    );

    await c.kubectl(["apply", "-f", "-"], echoManifest(2));
    await rollout(c, "default", "deployment/echo");
    const echo = await pods(c, "app=echo");
    assertEquals(new Set(echo.map((p) => p.node)).size, 2);
    const nodes = await c.getJson<{ items: NodeJson[] }>(["nodes"]);
    const podCidr = (p: PodInfo) =>
      nodes.items.find((n) => n.metadata.name === p.node)?.spec.podCIDR ?? "";

    await t.step(
      "pods get addresses from 10.42.0.0/16, in their node's podCIDR",
      () => {
        for (const p of echo) {
          assert(/^10\.42\.\d+\.0\/24$/.test(podCidr(p)), podCidr(p));
          assert(inSlash24(p.ip, podCidr(p)), `${p.name}: ${p.ip}`);
        }
      },
    );

    await t.step(
      "pods reach pods on the other node (ICMP and TCP)",
      async () => {
        const reach = await crossNodeReach(c, echo);
        assertEquals(reach.failed, []);
        assertEquals(reach.answered, 2);
      },
    );

    await t.step(
      "weft's plugin set the pods up: its stored delegate and its lock file, bridge's address from data/cni",
      async () => {
        for (const p of echo) {
          const node = c.nodes.find((n) => n.name === p.node)!;
          // The pod's sandbox is the one stored container on its node (the
          // weft pods use the host's network).
          const ids = (await node.exec(["ls", "/var/lib/cni/flannel"]))
            .split("\n").filter((f) => f !== "");
          assertEquals(ids.length, 1, ids.join(" "));
          const id = ids[0]!;
          const stored = JSON.parse(
            await node.exec(["cat", `/var/lib/cni/flannel/${id}`]),
          );
          assertEquals(stored.type, "bridge");
          assertEquals(stored.ipam.ranges, [[{ subnet: podCidr(p) }]]);
          assertEquals(stored.ipam.routes, [{ dst: "10.42.0.0/16" }]);
          // flannel's Go plugin keeps no lock files: this one is weft's.
          assertEquals(
            await node.exec(["ls", "/var/lib/cni/flannel/.locks"]),
            `${id}\n`,
          );
          // host-local, run by bridge from CNI_PATH, recorded the address.
          assertEquals(
            (await node.exec(["cat", `/var/lib/cni/networks/cbr0/${p.ip}`]))
              .split(/\s+/)[0],
            id,
          );
        }
      },
    );
  },
});
