/**
 * Fixtures shared by the traffic tests (unit and kernel tier): the spec of
 * a node with lease 10.244.1.0/24 in 10.244.0.0/16, and the exact text
 * `iptables-save` prints for flanneld's rules of that node.
 *
 * @module
 */
import type { FamilyNets, TrafficSpec } from "./spec.ts";

/** IPv4 networks of the test node. */
export const V4: FamilyNets = {
  network: "10.244.0.0/16",
  subnet: "10.244.1.0/24",
};

/** IPv6 networks of the test node. */
export const V6: FamilyNets = {
  network: "fd00:10:244::/56",
  subnet: "fd00:10:244:1::/64",
};

/** Masquerade and forward rules, IPv4 only, `--random-fully`. */
export const SPEC: TrafficSpec = {
  ipMasq: true,
  forwardRules: true,
  randomFully: true,
  ipv4: V4,
};

/** flanneld's nat rules for {@linkcode SPEC}, as `iptables-save` prints them. */
export const FLANNEL_V4_NAT: readonly string[] = [
  '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
  '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
  '-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
  '-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
  '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
  '-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
  '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
];

/** flanneld's filter rules for {@linkcode SPEC}. */
export const FLANNEL_V4_FILTER: readonly string[] = [
  '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
  '-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
  '-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
];
