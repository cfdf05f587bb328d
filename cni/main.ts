/**
 * Runs the flannel CNI plugin directly:
 * `deno run --allow-read --allow-write --allow-env --allow-run cni/main.ts`
 * with the `CNI_*` environment and the configuration on stdin. `main.ts`
 * dispatches here for `weft cni` and when the binary is named `flannel`.
 *
 * @module
 */
import { cniMain } from "./plugin.ts";

if (import.meta.main) {
  Deno.exit(await cniMain());
}
