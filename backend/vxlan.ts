/**
 * The VXLAN backend, flanneld's default, with the kernel layout of a
 * flanneld node (docs/flanneld-compat.md, "VXLAN backend").
 *
 * Each node has one VXLAN device per family (`flannel.<VNI>`,
 * `flannel-v6.<VNI>`) with no learning and no L2/L3 miss callouts: every
 * remote node is known from its lease and gets three static kernel
 * entries, so forwarding never waits on this process and a restart costs
 * no packet:
 *
 *   ip neigh replace 10.244.2.0 lladdr <peer VtepMAC> dev flannel.1 nud permanent
 *   bridge fdb replace <peer VtepMAC> dev flannel.1 dst <peer public IP> self permanent
 *   ip route replace 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink
 *
 * The route goes last: until the neighbour exists the kernel would ARP
 * for the gateway on a device that cannot answer. With DirectRouting, a
 * peer whose public IP is on-link is reached by a plain route via that IP
 * on the external interface and needs no neighbour or FDB entry.
 *
 * The device keeps its MAC across restarts (existing device, else the MAC
 * we published, else a new one), so peers' entries stay valid. Where
 * flanneld falls short, weft differs: an incompatible device is recreated
 * and all peers are replayed (the next pass sees an empty device), a
 * peer's old FDB entry goes when its MAC changes, entries of vanished
 * peers are pruned.
 *
 * MTU, as flanneld v0.28.9 (pkg/backend/vxlan/device.go): `Backend.MTU`
 * is the underlay's MTU (default: the external interface's), and each
 * device asks for it minus 50. The kernel caps a VXLAN device at its
 * lower device's MTU minus the outer headers (50 bytes over IPv4, 70 over
 * IPv6), so on a 1500-byte underlay `flannel-v6.1` ends at 1430 under
 * both agents; weft asks for the capped value directly.
 *
 * @module
 */
import type { Netlink } from "../ffi/types.ts";
import type { NetworkConfig } from "../subnet/config.ts";
import type { IpNet } from "../lib/ip.ts";
import type { Lease, LeaseAttrs } from "../subnet/lease.ts";
import { fail, ok, type Result } from "../lib/result.ts";
import { parseVxlanData } from "../subnet/validate.ts";
import {
  type Backend,
  backendKey,
  type BackendNetwork,
  type BackendOptions,
  type Underlay,
} from "./backend.ts";
import { configureDevice, ensureVxlanDevice } from "./device.ts";
import {
  type FamilyPlan,
  type PeerMode,
  subnetAddress,
  vxlanPeerEntries,
} from "./plan.ts";
import type { FamilyNetwork } from "./reconciler.ts";
import { logger, quote } from "../lib/log.ts";

const log = logger("vxlan");

/** Outer header overhead: IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14. */
export const OVERHEAD_V4 = 50;
/** Outer header overhead with an IPv6 underlay (40-byte IP header). */
export const OVERHEAD_V6 = 70;

/** The Backend section for vxlan, with defaults. */
export interface VxlanConfig {
  /** VXLAN network identifier; default 1. */
  readonly vni: number;
  /** UDP port; 0 (default) means the kernel's 8472. */
  readonly port: number;
  /**
   * Underlay MTU the devices are sized for (device MTU = this − 50);
   * 0 (default) means the external interface's MTU.
   */
  readonly mtu: number;
  readonly gbp: boolean;
  readonly learning: boolean;
  readonly directRouting: boolean;
}

/** Parses the Backend object of a vxlan config. */
export function parseVxlanConfig(
  raw: Record<string, unknown>,
): Result<VxlanConfig> {
  const vni = backendKey(raw, "VNI", "number");
  const port = backendKey(raw, "Port", "number");
  const mtu = backendKey(raw, "MTU", "number");
  const gbp = backendKey(raw, "GBP", "boolean");
  const learning = backendKey(raw, "Learning", "boolean");
  const direct = backendKey(raw, "DirectRouting", "boolean");
  if (!vni.ok) return vni;
  if (!port.ok) return port;
  if (!mtu.ok) return mtu;
  if (!gbp.ok) return gbp;
  if (!learning.ok) return learning;
  if (!direct.ok) return direct;
  const cfg: VxlanConfig = {
    vni: vni.value ?? 1,
    port: port.value ?? 0,
    mtu: mtu.value ?? 0,
    gbp: gbp.value ?? false,
    learning: learning.value ?? false,
    directRouting: direct.value ?? false,
  };
  if (cfg.vni < 0 || cfg.vni > 0xffffff) {
    return fail(`Invalid Backend.VNI ${cfg.vni}: must be 0..16777215`);
  }
  if (cfg.port < 0 || cfg.port > 65535) {
    return fail(`Invalid Backend.Port ${cfg.port}: must be 0..65535`);
  }
  if (cfg.mtu !== 0 && (cfg.mtu < 68 + OVERHEAD_V4 || cfg.mtu > 65535)) {
    return fail(
      `Invalid Backend.MTU ${cfg.mtu}: must be ${
        68 + OVERHEAD_V4
      }..65535 (the underlay MTU; the device gets 50 less)`,
    );
  }
  return ok(cfg);
}

interface FamilySpec {
  readonly family: 4 | 6;
  readonly name: string;
  readonly local: string;
  readonly mtu: number;
  readonly network: IpNet;
}

class VxlanBackend implements Backend {
  readonly type = "vxlan";
  readonly #nl: Netlink;
  readonly #cfg: VxlanConfig;
  readonly #underlay: Underlay;
  readonly #specs: FamilySpec[];
  readonly #opts: BackendOptions;
  /** VTEP MAC per family, once known. */
  readonly #macs = new Map<4 | 6, string>();
  /** The external interface's index now: it changes when it is recreated. */
  #underlayIndex: number;

  constructor(
    nl: Netlink,
    cfg: VxlanConfig,
    underlay: Underlay,
    specs: FamilySpec[],
    opts: BackendOptions,
  ) {
    this.#nl = nl;
    this.#cfg = cfg;
    this.#underlay = underlay;
    this.#specs = specs;
    this.#opts = opts;
    this.#underlayIndex = underlay.index;
  }

  /**
   * Finds the external interface again by name, as flanneld does when its
   * device goes: deleting the interface deletes the VXLAN devices on it,
   * and a recreated interface has a new index.
   */
  #lookupUnderlay(): number {
    const link = this.#nl.linkByName(this.#underlay.name);
    if (!link) {
      throw new Error(
        `External interface "${this.#underlay.name}" not found: waiting for it to come back`,
      );
    }
    if (link.index !== this.#underlayIndex) {
      log.info(
        `External interface "${this.#underlay.name}" is now index ${link.index} (was ${this.#underlayIndex})`,
      );
      this.#underlayIndex = link.index;
    }
    return link.index;
  }

  #ensure(spec: FamilySpec) {
    const linkIndex = this.#lookupUnderlay();
    const r = ensureVxlanDevice(this.#nl, {
      name: spec.name,
      vni: this.#cfg.vni,
      port: this.#cfg.port,
      local: spec.local,
      linkIndex,
      learning: this.#cfg.learning,
      gbp: this.#cfg.gbp,
      mtu: spec.mtu,
    }, {
      ...(this.#macs.has(spec.family) &&
        { publishedMac: this.#macs.get(spec.family)! }),
      ...(this.#opts.sysctl && { sysctl: this.#opts.sysctl }),
    });
    if (r.link.mac) this.#macs.set(spec.family, r.link.mac);
    return r;
  }

  prepare(previous?: LeaseAttrs): LeaseAttrs {
    for (const spec of this.#specs) {
      const data = spec.family === 4
        ? previous?.backendData
        : previous?.backendV6Data;
      const parsed = data === undefined ? undefined : parseVxlanData(data);
      if (parsed?.ok && !this.#macs.has(spec.family)) {
        this.#macs.set(spec.family, parsed.value.VtepMAC);
      }
      this.#ensure(spec);
    }
    const data = (family: 4 | 6) => ({
      VNI: this.#cfg.vni,
      VtepMAC: this.#macs.get(family)!,
    });
    const has = (family: 4 | 6) => this.#specs.some((s) => s.family === family);
    return {
      backendType: "vxlan",
      ...(has(4) && this.#underlay.publicIP !== undefined &&
        { publicIP: this.#underlay.publicIP, backendData: data(4) }),
      ...(has(6) && this.#underlay.publicIPv6 !== undefined &&
        { publicIPv6: this.#underlay.publicIPv6, backendV6Data: data(6) }),
    };
  }

  start(lease: Lease): BackendNetwork {
    const families: FamilyNetwork[] = [];
    for (const spec of this.#specs) {
      const subnet = spec.family === 4 ? lease.subnet : lease.ipv6Subnet;
      if (subnet === undefined) {
        throw new Error(
          `Lease ${
            quote(lease.key)
          } has no IPv${spec.family} subnet, but IPv${spec.family} is enabled`,
        );
      }
      const address = `${subnetAddress(subnet)}/${
        spec.family === 4 ? 32 : 128
      }`;
      const nl = this.#nl;
      const direct = this.#cfg.directRouting;
      families.push({
        family: spec.family,
        label: spec.name,
        ensure: (): FamilyPlan => {
          const { link } = this.#ensure(spec);
          configureDevice(nl, link, address, spec.network);
          return {
            family: spec.family,
            network: spec.network,
            ownSubnet: subnet,
            deviceIndex: link.index,
            externalIndex: this.#underlayIndex,
            manageExternal: direct,
          };
        },
        entries: (plan, peer, modes) => {
          let mode: PeerMode = "vxlan";
          const ip = spec.family === 4
            ? peer.attrs.publicIP
            : peer.attrs.publicIPv6;
          if (direct && ip !== undefined) {
            mode = modes.get(ip) ?? onLink(nl, ip);
            modes.set(ip, mode);
          }
          return vxlanPeerEntries(plan, peer, mode);
        },
      });
    }
    const first = this.#specs[0]!;
    return { mtu: first.mtu, families };
  }
}

/** DirectRouting: one route to the IP and it has no gateway (`ip route get`). */
function onLink(nl: Netlink, ip: string): PeerMode {
  try {
    const routes = nl.routeGet(ip);
    return routes.length === 1 && routes[0]!.gw === undefined
      ? "direct"
      : "vxlan";
  } catch (e) {
    log.warn(
      `Route lookup for ${ip} failed, using vxlan: ${(e as Error).message}`,
    );
    return "vxlan";
  }
}

/**
 * The MTU a VXLAN device ends up with: `Backend.MTU` (else the underlay's)
 * minus 50, as flanneld asks, capped as the kernel caps it (lower device
 * MTU minus the outer headers of the family).
 */
export function deviceMtu(
  backendMtu: number,
  underlayMtu: number,
  family: 4 | 6,
): number {
  const cap = underlayMtu - (family === 4 ? OVERHEAD_V4 : OVERHEAD_V6);
  return Math.max(68, Math.min((backendMtu || underlayMtu) - OVERHEAD_V4, cap));
}

/** Creates a vxlan backend for the config and underlay. */
export function createVxlanBackend(
  nl: Netlink,
  config: NetworkConfig,
  underlay: Underlay,
  opts: BackendOptions = {},
): Result<Backend> {
  const cfg = parseVxlanConfig(config.backend.raw);
  if (!cfg.ok) return cfg;
  log.info(
    `VXLAN config: VNI=${cfg.value.vni} Port=${cfg.value.port} GBP=${cfg.value.gbp} Learning=${cfg.value.learning} DirectRouting=${cfg.value.directRouting}`,
  );
  const specs: FamilySpec[] = [];
  if (config.enableIPv4) {
    if (underlay.ifaceAddr === undefined) {
      return fail(
        `Interface "${underlay.name}" has no IPv4 address to use as the VXLAN source`,
      );
    }
    specs.push({
      family: 4,
      name: `flannel.${cfg.value.vni}`,
      local: underlay.ifaceAddr,
      mtu: deviceMtu(cfg.value.mtu, underlay.mtu, 4),
      network: config.network!,
    });
  }
  if (config.enableIPv6) {
    if (underlay.ifaceV6Addr === undefined) {
      return fail(
        `Interface "${underlay.name}" has no IPv6 address to use as the VXLAN source`,
      );
    }
    specs.push({
      family: 6,
      name: `flannel-v6.${cfg.value.vni}`,
      local: underlay.ifaceV6Addr,
      mtu: deviceMtu(cfg.value.mtu, underlay.mtu, 6),
      network: config.ipv6Network!,
    });
  }
  return ok(new VxlanBackend(nl, cfg.value, underlay, specs, opts));
}
