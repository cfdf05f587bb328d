/**
 * The backend types weft implements, in one table: adding a backend is
 * one line here, and nothing registers itself by being imported.
 *
 * @module
 */
import type { Netlink } from "../ffi/types.ts";
import type { NetworkConfig } from "../subnet/config.ts";
import { fail, type Result } from "../lib/result.ts";
import type {
  Backend,
  BackendFactory,
  BackendOptions,
  Underlay,
} from "./backend.ts";
import { createHostGwBackend } from "./hostgw.ts";
import { createAllocBackend } from "./alloc/alloc.ts";
import { createExtensionBackend } from "./extension/extension.ts";
import { createVxlanBackend } from "./vxlan.ts";
import { createWireguardBackend } from "./wireguard/wireguard.ts";

/** net-conf.json `Backend.Type` → implementation. */
export const BACKENDS: Readonly<Record<string, BackendFactory>> = {
  "vxlan": createVxlanBackend,
  "host-gw": createHostGwBackend,
  "extension": createExtensionBackend,
  "alloc": createAllocBackend,
  "wireguard": createWireguardBackend,
};

/** Creates the backend named by `config.backend.type`. */
export function createBackend(
  nl: Netlink,
  config: NetworkConfig,
  underlay: Underlay,
  opts: BackendOptions = {},
): Result<Backend> {
  const factory = Object.hasOwn(BACKENDS, config.backend.type)
    ? BACKENDS[config.backend.type]
    : undefined;
  if (!factory) {
    return fail(
      `Unsupported backend type "${config.backend.type}" (weft supports: ${
        Object.keys(BACKENDS).join(", ")
      })`,
    );
  }
  return factory(nl, config, underlay, opts);
}
