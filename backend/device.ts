/**
 * The VXLAN device (`flannel.<VNI>`, `flannel-v6.<VNI>`): decide whether an
 * existing device can be kept, pick a MAC that survives restarts, create
 * it, and configure it (MTU, the `<subnet>.0/32` address, no other address
 * inside the network, up). Each step is one iproute2 command, named in the
 * log at `-v=1`.
 *
 * @module
 */
import type { LinkInfo, Netlink, VxlanLinkSpec } from "../ffi/types.ts";
import {
  formatNet,
  type IpNet,
  netContainsIp,
  parseIp,
  parseIpNet,
} from "../lib/ip.ts";
import { randomMac } from "../lib/mac.ts";
import { logger } from "../lib/log.ts";

const log = logger("vxlan");

/** The kernel's default VXLAN port when 0 is requested (Linux IANA legacy). */
export const DEFAULT_VXLAN_PORT = 8472;

/**
 * Why an existing link cannot serve as our device, or undefined when it
 * can. Compares what flanneld compares: type, VNI, underlay device, local
 * address, port and GBP.
 */
export function incompatibility(
  link: LinkInfo,
  spec: VxlanLinkSpec,
): string | undefined {
  if (link.kind !== "vxlan" || !link.vxlan) {
    return `it is of type "${link.kind ?? "unknown"}", not vxlan`;
  }
  const v = link.vxlan;
  const want = spec.port === 0 ? DEFAULT_VXLAN_PORT : spec.port;
  const have = v.port === 0 ? DEFAULT_VXLAN_PORT : v.port;
  if (v.vni !== spec.vni) return `VNI is ${v.vni}, want ${spec.vni}`;
  if (v.linkIndex !== spec.linkIndex) {
    return `underlay device index is ${
      v.linkIndex ?? "unset"
    }, want ${spec.linkIndex}`;
  }
  if (v.local !== spec.local) {
    return `local address is ${v.local ?? "unset"}, want ${spec.local}`;
  }
  if (have !== want) return `port is ${have}, want ${want}`;
  if (v.gbp !== spec.gbp) return `GBP is ${v.gbp}, want ${spec.gbp}`;
  return undefined;
}

/**
 * The MAC for our device: the existing compatible device's, else the one
 * we published before (so peers' entries stay valid), else a new random
 * locally administered one.
 */
export function chooseMac(
  existing: LinkInfo | undefined,
  compatible: boolean,
  published: string | undefined,
): string {
  if (existing?.mac && compatible) return existing.mac;
  return published ?? randomMac();
}

/** Options of {@linkcode ensureVxlanDevice}. */
export interface EnsureDeviceOptions {
  /** MAC we published in an earlier lease, if known. */
  readonly publishedMac?: string;
  /** Writes `/proc/sys/...` (IPv6 `accept_ra`); injected for tests. */
  readonly sysctl?: (path: string, value: string) => void;
}

/** Result of {@linkcode ensureVxlanDevice}. */
export interface EnsuredDevice {
  readonly link: LinkInfo;
  /** True when the device was created (or recreated) by this call. */
  readonly created: boolean;
}

/**
 * Makes sure the VXLAN device exists with the given attributes, replacing
 * a VXLAN device with other parameters, flanneld's or an earlier weft's
 * (`ip link del` + `ip link add ... type vxlan`). Throws, deleting
 * nothing, when a link of that name is not a VXLAN device: it is someone
 * else's (a bridge, a dummy, a physical NIC). Does not touch addresses or
 * peers.
 */
export function ensureVxlanDevice(
  nl: Netlink,
  spec: Omit<VxlanLinkSpec, "mac">,
  opts: EnsureDeviceOptions = {},
): EnsuredDevice {
  let existing = nl.linkByName(spec.name);
  const full = { ...spec, mac: "" };
  let compatible = false;
  if (existing && existing.kind !== "vxlan") {
    throw new Error(
      `Link "${spec.name}" exists and is not a VXLAN device (kind "${
        existing.kind ?? "none"
      }"): weft deletes only VXLAN devices of that name; rename or remove it`,
    );
  }
  if (existing) {
    const why = incompatibility(existing, full);
    if (why === undefined) {
      compatible = true;
    } else {
      log.warn(
        `Existing device "${spec.name}" is incompatible (${why}): deleting and recreating it`,
      );
    }
  }
  const mac = chooseMac(existing, compatible, opts.publishedMac);
  let created = false;
  if (existing && !compatible) {
    nl.linkDel(existing.index);
    existing = undefined;
  }
  if (!existing) {
    log.info(
      `Creating device: ip link add ${spec.name} address ${mac} mtu ${spec.mtu} type vxlan id ${spec.vni} local ${spec.local} dev-index ${spec.linkIndex} dstport ${
        spec.port || DEFAULT_VXLAN_PORT
      }${spec.learning ? "" : " nolearning"}${spec.gbp ? " gbp" : ""}`,
    );
    existing = nl.linkAddVxlan({ ...spec, mac });
    created = true;
  } else {
    log.v(1, `Reusing existing device "${spec.name}" (mac ${existing.mac})`);
  }
  if (existing.mtu !== spec.mtu) {
    log.v(1, `ip link set ${spec.name} mtu ${spec.mtu} (was ${existing.mtu})`);
    nl.linkSetMtu(existing.index, spec.mtu);
  }
  if (spec.local.includes(":") && opts.sysctl) {
    opts.sysctl(`/proc/sys/net/ipv6/conf/${spec.name}/accept_ra`, "0");
  }
  return { link: nl.linkByIndex(existing.index) ?? existing, created };
}

/**
 * Gives the device exactly one address inside the network, `address`
 * (`10.244.1.0/32`), removing others inside the network (a lease that
 * moved) and leaving addresses outside it alone; then sets it up.
 */
export function configureDevice(
  nl: Netlink,
  link: LinkInfo,
  address: string,
  network: IpNet,
): void {
  const family = network.family;
  let present = false;
  for (const a of nl.addrList(link.index, family)) {
    if (a.local === address) {
      present = true;
      continue;
    }
    const n = parseIpNet(a.local);
    const ip = n.ok ? parseIp(a.local.split("/")[0]!) : undefined;
    if (ip?.ok && netContainsIp(network, ip.value)) {
      log.info(
        `Removing stale address: ip addr del ${a.local} dev ${link.name} (inside ${
          formatNet(network)
        })`,
      );
      nl.addrDel(a);
    }
  }
  if (!present) {
    log.v(1, `ip addr add ${address} dev ${link.name}`);
    nl.addrAdd({ index: link.index, local: address });
  }
  if (!link.up) {
    log.v(1, `ip link set ${link.name} up`);
    nl.linkSetUp(link.index);
  }
}
