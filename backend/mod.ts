/**
 * The backends' public face: the interfaces, the registry of backend
 * types and the reconciler.
 *
 * @module
 */
export * from "./backend.ts";
export { Reconciler } from "./reconciler.ts";
export type { ChangeSource, FamilyNetwork, PassResult } from "./reconciler.ts";
export { BACKENDS, createBackend } from "./registry.ts";
