/**
 * The manifests the cluster tier applies differ from the ones users apply
 * only in their image references.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import { gatedTest } from "../_gate.ts";
import {
  KUBE_FLANNEL_YML,
  kubeFlannelImages,
  manifest,
  migrationManifest,
  parsePingCount,
} from "./_k8s.ts";

function changedLines(a: string, b: string): string[] {
  const x = a.split("\n"), y = b.split("\n");
  assertEquals(x.length, y.length);
  return y.filter((line, i) => line !== x[i]).map((l) => l.trim());
}

Deno.test("manifest() changes only the image references of deploy/weft.yaml", async () => {
  const stock = await Deno.readTextFile(
    new URL("../../deploy/weft.yaml", import.meta.url),
  );
  const changed = changedLines(stock, await manifest("localhost/weft:v9"));
  assertEquals(changed, Array(3).fill("image: localhost/weft:v9"));
});

Deno.test("deploy/weft-k3s.yaml is deploy/weft.yaml with k3s's pod network, CNI conf dir and CNI plugin dir", async () => {
  const read = (name: string) =>
    Deno.readTextFile(new URL(`../../deploy/${name}`, import.meta.url));
  const stock = await read("weft.yaml");
  const k3s = (await read("weft-k3s.yaml")).split("\n");
  // A comment block of its own first, then weft.yaml's lines.
  const start = k3s.indexOf(stock.split("\n")[0]!);
  assert(start > 0, "weft-k3s.yaml does not contain weft.yaml's first line");
  assertEquals(k3s.slice(0, start).filter((l) => !l.startsWith("#")), []);
  assertEquals(changedLines(stock, k3s.slice(start).join("\n")), [
    '"Network": "10.42.0.0/16",',
    "path: /var/lib/rancher/k3s/data/cni",
    "path: /var/lib/rancher/k3s/agent/etc/cni/net.d",
  ]);
  const applied = await manifest("localhost/weft:v9", "deploy/weft-k3s.yaml");
  assertEquals(
    changedLines(k3s.join("\n"), applied),
    Array(3).fill("image: localhost/weft:v9"),
  );
});

Deno.test("migrationManifest() uncomments the weft/agent affinity and drops the ConfigMap", async () => {
  const m = await migrationManifest("w:2");
  assertEquals(/^kind: ConfigMap$/m.test(m), false);
  assertEquals(
    m.split("\n").filter((l) =>
      /key: weft\/agent|operator: In|values: \["weft"\]/.test(l)
    )
      .map((l) => l.trim()),
    [
      "operator: In",
      "- key: weft/agent",
      "operator: In",
      'values: ["weft"]',
    ],
  );
  assertEquals(m.match(/image: w:2/g)?.length, 3);
});

await gatedTest({
  name:
    "kubeFlannelImages() changes only the image references of flannel's kube-flannel.yml",
  needs: [
    async () =>
      (await Deno.stat(KUBE_FLANNEL_YML).catch(() => null))
        ? undefined
        : `no ${KUBE_FLANNEL_YML}: run tests/k8s/prepare.sh`,
  ],
  fn: async () => {
    const stock = await Deno.readTextFile(KUBE_FLANNEL_YML);
    const changed = changedLines(stock, await kubeFlannelImages("a:1", "p:1"));
    assertEquals(changed, ["image: p:1", "image: a:1", "image: a:1"]);
  },
});

Deno.test("parsePingCount() reads busybox ping's summary", () => {
  assertEquals(
    parsePingCount(
      "--- 10.244.2.2 ping statistics ---\n895 packets transmitted, 893 packets received, 0% packet loss\n",
    ),
    { sent: 895, received: 893 },
  );
  assertEquals(parsePingCount("ping: bad address"), { sent: 0, received: 0 });
});
