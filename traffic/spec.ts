/**
 * What traffic rules to install: the cluster network and this node's lease
 * for each enabled family, and which of flanneld's rule sets are wanted.
 * Shared by the iptables and nftables renderers.
 *
 * @module
 */
import { canonicalNet, formatNet, parseIpNet } from "../lib/ip.ts";

/** The networks of one family: cluster network and this node's lease. */
export interface FamilyNets {
  /** The cluster network, `10.244.0.0/16`. */
  readonly network: string;
  /** This node's lease subnet, `10.244.1.0/24`. */
  readonly subnet: string;
}

/** What rules to install. */
export interface TrafficSpec {
  /** `--ip-masq`: the masquerade chain. */
  readonly ipMasq: boolean;
  /** `--iptables-forward-rules`: the forward-accept chain. */
  readonly forwardRules: boolean;
  /** MASQUERADE with `--random-fully` (flag not disabled and supported). */
  readonly randomFully: boolean;
  /** IPv4 networks, when IPv4 is enabled. */
  readonly ipv4?: FamilyNets;
  /** IPv6 networks, when IPv6 is enabled. */
  readonly ipv6?: FamilyNets;
}

/** `10.244.1.5/16` → `10.244.0.0/16`; throws on a prefix that cannot be rendered. */
export function canon(prefix: string): string {
  const net = parseIpNet(prefix);
  if (!net.ok) {
    throw new Error(`Cannot render rules for "${prefix}": ${net.reason}`);
  }
  return formatNet(canonicalNet(net.value));
}
