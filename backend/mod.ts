/**
 * The backends: importing this module registers `vxlan` and `host-gw`.
 *
 * @module
 */
export * from "./backend.ts";
export { Reconciler } from "./reconciler.ts";
export type { ChangeSource, FamilyNetwork, PassResult } from "./reconciler.ts";
import "./vxlan.ts";
import "./hostgw.ts";
