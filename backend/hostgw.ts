/**
 * The host-gw backend: no encapsulation, each peer subnet is routed via
 * the peer's public IP on the external interface
 * (`ip route replace 10.244.2.0/24 via 198.18.0.2 dev eth0`). It needs all
 * nodes on one L2 segment, so it refuses to run behind NAT (public IP not
 * an address of the external interface).
 *
 * @module
 */
import type { Netlink } from "../ffi/types.ts";
import type { NetworkConfig } from "../subnet/config.ts";
import type { Lease, LeaseAttrs } from "../subnet/lease.ts";
import { fail, ok, type Result } from "../lib/result.ts";
import { quote } from "../lib/log.ts";
import { type Backend, type BackendNetwork, type Underlay } from "./backend.ts";
import { directPeerEntries } from "./plan.ts";
import type { FamilyNetwork } from "./reconciler.ts";

class HostGwBackend implements Backend {
  readonly type = "host-gw";
  readonly #config: NetworkConfig;
  readonly #underlay: Underlay;

  constructor(config: NetworkConfig, underlay: Underlay) {
    this.#config = config;
    this.#underlay = underlay;
  }

  prepare(_previous?: LeaseAttrs): LeaseAttrs {
    const u = this.#underlay;
    return {
      backendType: "host-gw",
      ...(this.#config.enableIPv4 && u.publicIP !== undefined &&
        { publicIP: u.publicIP }),
      ...(this.#config.enableIPv6 && u.publicIPv6 !== undefined &&
        { publicIPv6: u.publicIPv6 }),
    };
  }

  start(lease: Lease): BackendNetwork {
    const families: FamilyNetwork[] = [];
    const add = (family: 4 | 6) => {
      const network = family === 4
        ? this.#config.network!
        : this.#config.ipv6Network!;
      const ownSubnet = family === 4 ? lease.subnet : lease.ipv6Subnet;
      if (ownSubnet === undefined) {
        throw new Error(`Lease ${quote(lease.key)} has no IPv${family} subnet`);
      }
      const plan = {
        family,
        network,
        ownSubnet,
        externalIndex: this.#underlay.index,
        manageExternal: true,
      } as const;
      families.push({
        family,
        label: `host-gw IPv${family}`,
        ensure: () => plan,
        entries: (p, peer) => directPeerEntries(p, peer),
      });
    };
    if (this.#config.enableIPv4) add(4);
    if (this.#config.enableIPv6) add(6);
    return { mtu: this.#underlay.mtu, families };
  }
}

/** Creates a host-gw backend; refuses when the public IP is not local. */
export function createHostGwBackend(
  _nl: Netlink,
  config: NetworkConfig,
  underlay: Underlay,
): Result<Backend> {
  if (config.enableIPv4 && underlay.publicIP !== underlay.ifaceAddr) {
    return fail(
      `host-gw cannot run behind NAT: public IP "${underlay.publicIP}" is not the address "${underlay.ifaceAddr}" of interface "${underlay.name}"`,
    );
  }
  if (config.enableIPv6 && underlay.publicIPv6 !== underlay.ifaceV6Addr) {
    return fail(
      `host-gw cannot run behind NAT: public IPv6 "${underlay.publicIPv6}" is not the address "${underlay.ifaceV6Addr}" of interface "${underlay.name}"`,
    );
  }
  return ok(new HostGwBackend(config, underlay));
}
