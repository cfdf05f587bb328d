/**
 * End to end with the wireguard backend on userspace WireGuard, in etcd
 * mode and in kube mode: see _wireguard.ts for the steps.
 *
 * @module
 */
import { kernelTest } from "../_netns.ts";
import { startScenario } from "./_scenario.ts";
import { nodeWireguard, WG_NET_CONF, wireguardSteps } from "./_wireguard.ts";

for (const mode of ["etcd", "kube"] as const) {
  kernelTest(
    `e2e ${mode} wireguard: pods talk encrypted; restart is hitless; keys rotate; drift and removed nodes are handled`,
    async (t) => {
      // Peers are not notified by rtnetlink: the period bounds their repair.
      await using s = await startScenario({
        prefix: `weft-wg${mode[0]}`,
        mode,
        reconcilePeriod: 2,
        podsPerNode: 1,
        netConf: WG_NET_CONF,
        agentExtra: nodeWireguard,
      });
      await wireguardSteps(t, s);
    },
  );
}
