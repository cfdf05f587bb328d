/**
 * The manifests the cluster tier applies differ from the ones users apply
 * only in their image references.
 *
 * @module
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { gatedTest } from "../_gate.ts";
import {
  KUBE_FLANNEL_YML,
  kubeFlannelWithWeft,
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
    "kubeFlannelWithWeft() changes only the image references of flannel's kube-flannel.yml",
  needs: [
    async () =>
      (await Deno.stat(KUBE_FLANNEL_YML).catch(() => null))
        ? undefined
        : `no ${KUBE_FLANNEL_YML}: run tests/k8s/prepare.sh`,
  ],
  fn: async () => {
    const stock = await Deno.readTextFile(KUBE_FLANNEL_YML);
    const changed = changedLines(stock, await kubeFlannelWithWeft("w:1"));
    assertEquals(changed, Array(3).fill("image: w:1"));
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
