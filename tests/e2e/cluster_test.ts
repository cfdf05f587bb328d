/**
 * End-to-end, etcd mode: three weft agents (separate processes with
 * flanneld's flags and the least-privilege permission list) in node
 * namespaces, Debian's etcd in the switch namespace, pods wired by weft's
 * CNI plugin; see _steps.ts for what is checked.
 *
 * @module
 */
import { kernelTest } from "../_netns.ts";
import { startScenario } from "./_scenario.ts";
import { scenarioSteps } from "./_steps.ts";

kernelTest(
  "e2e etcd: pods talk across VXLAN; agents survive kill -9 and SIGTERM, repair drift and forget removed nodes",
  async (t) => {
    // A long reconcile period: repairs inside the 2 s limit must come from
    // rtnetlink notifications, not from the timer.
    await using s = await startScenario({
      prefix: "weft-e2e",
      mode: "etcd",
      reconcilePeriod: 300,
    });
    await scenarioSteps(t, s);
  },
);
