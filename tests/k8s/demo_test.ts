/**
 * `deno task demo --k8s` as a person runs it: the whole command, from its
 * prepare step to its report, read back for the two lines the demo
 * promises (the DaemonSet ready on every node, every cross-node ping
 * answered). Needs root and what tests/k8s/prepare.sh builds; under
 * `CI=true` nothing is ignored.
 *
 * @module
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { gatedTest, ROOT } from "../_gate.ts";
import { CLUSTER } from "./_k8s.ts";

const REPO = new URL("../..", import.meta.url).pathname;

await gatedTest({
  name: "k8s: `deno task demo --k8s` reports 3/3 ready nodes and every ping",
  needs: [ROOT, CLUSTER],
  fn: async () => {
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["task", "demo", "--k8s"],
      cwd: REPO,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(r.stdout);
    const why = `exit ${r.code}\n--- stdout (tail)\n${
      out.slice(-4000)
    }\n--- stderr (tail)\n${new TextDecoder().decode(r.stderr).slice(-4000)}`;
    assertEquals(r.code, 0, why);
    const ready = out.match(
      /^weft DaemonSet ready on (\d+)\/(\d+) nodes \(kubelet, containerd\)/m,
    );
    assertEquals(ready?.slice(1), ["3", "3"], why);
    const pings = out.match(/^(\d+)\/(\d+) cross-node pod pings answered$/m);
    assertEquals(pings !== null && Number(pings[2]) > 0, true, why);
    assertEquals(pings?.[1], pings?.[2], why);
    console.log(`  ${ready![0]}\n  ${pings![0]}`);
  },
});
