/**
 * The WireGuard backend, flanneld v0.28.9's `wireguard`
 * (docs/wireguard.md): pod traffic between nodes is encrypted by
 * WireGuard devices, one peer per remote node whose allowed IPs are that
 * node's subnet.
 *
 *   ip link add flannel-wg type wireguard        (or wireguard-go flannel-wg)
 *   wg set flannel-wg listen-port 51820 private-key /run/flannel/wgkey
 *   ip addr add 10.244.1.0/32 dev flannel-wg; ip link set flannel-wg up
 *   ip route replace 10.244.0.0/16 dev flannel-wg scope link
 *   wg set flannel-wg peer <key> endpoint 198.18.0.2:51820 allowed-ips 10.244.2.0/24
 *
 * In `separate` mode (the default) each family has its own device
 * (`flannel-wg`, `flannel-wg-v6`, ports `ListenPort`, `ListenPortV6`);
 * in `auto`, `ipv4` and `ipv6` mode one device, `flannel-wg`, carries both
 * families' subnets to one endpoint per peer. One private key serves both
 * devices; it lives in a file and survives restarts (keys.ts).
 *
 * Peers are per-peer objects of the reconciler (peer_objects.ts): set from
 * the leases, read back with `wg show`, and whatever differs is set again,
 * so a peer removed by hand comes back and a peer whose lease went is
 * removed. There are no per-peer routes: the network route sends pod
 * traffic to the device and WireGuard picks the peer by allowed IPs.
 *
 * MTU, as flanneld: `Backend.MTU` (default: the external interface's) minus
 * 80 for the devices and for FLANNEL_MTU.
 *
 * @module
 */
import { type LinkInfo, type Netlink, RT_SCOPE_LINK } from "../../ffi/types.ts";
import type { NetworkConfig } from "../../subnet/config.ts";
import type { IpNet } from "../../lib/ip.ts";
import { formatNet, parseIp } from "../../lib/ip.ts";
import type { Lease, LeaseAttrs } from "../../subnet/lease.ts";
import { parseWireguardData } from "../../subnet/validate.ts";
import { fail, ok, type Result } from "../../lib/result.ts";
import { logger } from "../../lib/log.ts";
import type {
  Backend,
  BackendNetwork,
  BackendOptions,
  Underlay,
} from "../backend.ts";
import { configureDevice } from "../device.ts";
import type { FamilyPlan } from "../plan.ts";
import { subnetAddress } from "../plan.ts";
import type { PeerObjects } from "../peer_objects.ts";
import type { FamilyNetwork } from "../reconciler.ts";
import {
  OVERHEAD,
  parseWireguardConfig,
  type WireguardConfig,
} from "./config.ts";
import {
  ensureWgDevice,
  type UserspaceStarter,
  userspaceStarter,
} from "./device.ts";
import { DEFAULT_KEY_FILE, loadOrCreateKey } from "./keys.ts";
import { type Wg, WgCli, type WgDump, type WgPeer } from "./wg.ts";

const log = logger("wireguard");

/** A WireGuard peer as a reconciler object: its id is its public key. */
export type WgPeerObject = WgPeer & { readonly id: string };

/** One device and the families it carries. */
export interface DeviceSpec {
  readonly name: string;
  readonly listenPort: number;
  /** Families whose subnets it carries; the first is its plan's family. */
  readonly families: readonly (4 | 6)[];
}

/** The devices a mode asks for, given the enabled families. */
export function deviceSpecs(
  cfg: WireguardConfig,
  families: readonly (4 | 6)[],
): DeviceSpec[] {
  if (cfg.mode !== "separate") {
    return [{ name: "flannel-wg", listenPort: cfg.listenPort, families }];
  }
  return families.map((f) =>
    f === 4
      ? { name: "flannel-wg", listenPort: cfg.listenPort, families: [4] }
      : { name: "flannel-wg-v6", listenPort: cfg.listenPortV6, families: [6] }
  );
}

/** Go's `net.IP.IsPrivate`: RFC 1918 and fc00::/7. */
function isPrivate(text: string): boolean {
  const ip = parseIp(text);
  if (!ip.ok) return false;
  const v = ip.value.value;
  if (ip.value.family === 6) return v >> 121n === 0x7en;
  return v >> 24n === 10n || v >> 20n === 0xac1n || v >> 16n === 0xc0a8n;
}

/**
 * `auto` mode's endpoint family for a peer, as flanneld's
 * `selectPublicEndpoint`: the only one the peer has; else IPv4 when the
 * peer's IPv4 is public and we have IPv4; else IPv6 when both sides' IPv6
 * are public; else IPv4.
 */
export function autoFamily(
  peer: { publicIP?: string; publicIPv6?: string },
  own: { ifaceAddr?: string; ifaceV6Addr?: string },
): 4 | 6 {
  if (peer.publicIPv6 === undefined) return 4;
  if (peer.publicIP === undefined) return 6;
  if (!isPrivate(peer.publicIP) && own.ifaceAddr !== undefined) return 4;
  if (
    !isPrivate(peer.publicIPv6) && own.ifaceV6Addr !== undefined &&
    !isPrivate(own.ifaceV6Addr)
  ) return 6;
  return 4;
}

/** Inputs of {@linkcode desiredPeer} besides the lease. */
export interface PeerContext {
  readonly device: DeviceSpec;
  readonly mode: WireguardConfig["mode"];
  readonly psk?: string;
  readonly keepalive: number;
  readonly underlay: { ifaceAddr?: string; ifaceV6Addr?: string };
}

/**
 * The peer a lease asks for on a device, or undefined when it has nothing
 * for it. Endpoint: the peer's public IP of the mode's family and the
 * port it published (0: ours); allowed IPs: its subnets of the device's
 * families. Pure; the lease was validated (validate.ts).
 */
export function desiredPeer(
  ctx: PeerContext,
  lease: Lease,
): WgPeerObject | undefined {
  const a = lease.attrs;
  const fam = (f: 4 | 6) => {
    const subnet = f === 4 ? lease.subnet : lease.ipv6Subnet;
    const raw = f === 4 ? a.backendData : a.backendV6Data;
    const data = raw === undefined ? undefined : parseWireguardData(raw);
    if (subnet === undefined || !data?.ok) return undefined;
    return { subnet, data: data.value };
  };
  const carried = ctx.device.families.map(fam).filter((x) => x !== undefined);
  if (carried.length === 0) return undefined;
  const endpointFamily = {
    separate: () => ctx.device.families[0]!,
    ipv4: () => 4 as const,
    ipv6: () => 6 as const,
    auto: () => autoFamily(a, ctx.underlay),
  }[ctx.mode]();
  const ip = endpointFamily === 4 ? a.publicIP : a.publicIPv6;
  const via = fam(endpointFamily);
  // flanneld takes the key of the last family it reads (IPv6 over IPv4).
  const key = carried[carried.length - 1]!.data.PublicKey;
  const port = via?.data.Port || ctx.device.listenPort;
  return {
    id: key,
    publicKey: key,
    ...(ip !== undefined &&
      { endpoint: endpointFamily === 4 ? `${ip}:${port}` : `[${ip}]:${port}` }),
    allowedIps: carried.map((c) => c.subnet).sort(),
    ...(ctx.psk !== undefined && { psk: ctx.psk }),
    keepalive: ctx.keepalive,
  };
}

/** Whether the kernel's peer is what `want` asks for. */
export function samePeer(want: WgPeer, have: WgPeer): boolean {
  return want.publicKey === have.publicKey &&
    want.endpoint === have.endpoint &&
    want.psk === have.psk &&
    want.keepalive === have.keepalive &&
    want.allowedIps.join(",") === [...have.allowedIps].sort().join(",");
}

/** Knobs of the backend that are not in net-conf.json (tests). */
export interface WireguardOptions {
  readonly wg?: Wg;
  readonly startUserspace?: UserspaceStarter;
  /** Private key file; default `$WIREGUARD_KEY_FILE` or /run/flannel/wgkey. */
  readonly keyFile?: string;
  /** Reads (or creates) the private key file; default loadOrCreateKey. */
  readonly loadKey?: (path: string) => string;
  /** Writes the PSK file (`<key file>.psk`, mode 0400). */
  readonly writeSecret?: (path: string, text: string) => void;
}

function writeSecret(path: string, text: string): void {
  Deno.writeTextFileSync(path, text + "\n", { mode: 0o400 });
}

class WireguardBackend implements Backend {
  readonly type = "wireguard";
  readonly #nl: Netlink;
  readonly #config: NetworkConfig;
  readonly #cfg: WireguardConfig;
  readonly #underlay: Underlay;
  readonly #devices: DeviceSpec[];
  readonly #mtu: number;
  readonly #opts: Required<WireguardOptions>;
  #privateKey = "";

  constructor(
    nl: Netlink,
    config: NetworkConfig,
    cfg: WireguardConfig,
    underlay: Underlay,
    opts: Required<WireguardOptions>,
  ) {
    this.#nl = nl;
    this.#config = config;
    this.#cfg = cfg;
    this.#underlay = underlay;
    this.#opts = opts;
    this.#mtu = (cfg.mtu || underlay.mtu) - OVERHEAD;
    const families: (4 | 6)[] = [];
    if (config.enableIPv4) families.push(4);
    if (config.enableIPv6) families.push(6);
    this.#devices = deviceSpecs(cfg, families);
  }

  get #pskFile(): string {
    return `${this.#opts.keyFile}.psk`;
  }

  #ensure(dev: DeviceSpec): { link: LinkInfo; dump: WgDump } {
    return ensureWgDevice(this.#nl, this.#opts.wg, this.#opts.startUserspace, {
      name: dev.name,
      mtu: this.#mtu,
      listenPort: dev.listenPort,
      privateKeyFile: this.#opts.keyFile,
      privateKey: this.#privateKey,
    });
  }

  prepare(_previous?: LeaseAttrs): LeaseAttrs {
    this.#privateKey = this.#opts.loadKey(this.#opts.keyFile);
    if (this.#cfg.psk !== undefined) {
      this.#opts.writeSecret(this.#pskFile, this.#cfg.psk);
    }
    let publicKey: string | undefined;
    for (const dev of this.#devices) {
      publicKey = this.#ensure(dev).dump.publicKey;
    }
    if (publicKey === undefined) {
      throw new Error(`WireGuard device reports no public key`);
    }
    const u = this.#underlay;
    // flanneld writes ListenPortV6 into the IPv6 data in every mode; with
    // one device (not `separate`) that port is not listened on, so weft
    // publishes the port the device has.
    const v6Port = this.#cfg.mode === "separate"
      ? this.#cfg.listenPortV6
      : this.#cfg.listenPort;
    return {
      backendType: "wireguard",
      ...(u.publicIP !== undefined && { publicIP: u.publicIP }),
      ...(this.#config.enableIPv4 && {
        backendData: { PublicKey: publicKey, Port: this.#cfg.listenPort },
      }),
      ...(u.publicIPv6 !== undefined && { publicIPv6: u.publicIPv6 }),
      ...(this.#config.enableIPv6 && {
        backendV6Data: { PublicKey: publicKey, Port: v6Port },
      }),
    };
  }

  start(lease: Lease): BackendNetwork {
    const families = this.#devices.map((dev) => this.#family(dev, lease));
    return { mtu: this.#mtu, families };
  }

  #family(dev: DeviceSpec, lease: Lease): FamilyNetwork {
    const nets = dev.families.map((f) => {
      const subnet = f === 4 ? lease.subnet : lease.ipv6Subnet;
      const network = f === 4 ? this.#config.network : this.#config.ipv6Network;
      if (subnet === undefined || network === undefined) {
        throw new Error(
          `Lease "${lease.key}" has no IPv${f} subnet, but IPv${f} is enabled`,
        );
      }
      return { family: f, subnet, network };
    });
    const ctx: PeerContext = {
      device: dev,
      mode: this.#cfg.mode,
      ...(this.#cfg.psk !== undefined && { psk: this.#cfg.psk }),
      keepalive: this.#cfg.keepalive,
      underlay: this.#underlay,
    };
    const wg = this.#opts.wg;
    const pskFile = this.#pskFile;
    // The dump ensure() read in this pass: the peers a pass lists next
    // (passes are synchronous, so nothing changes them in between).
    let ensured: WgDump | undefined;
    const objects: PeerObjects<WgPeerObject> = {
      desired: (_plan, l) => desiredPeer(ctx, l),
      list: () => {
        const dump = ensured ?? wg.show(dev.name);
        ensured = undefined;
        return dump.peers.map((p) => ({ ...p, id: p.publicKey }));
      },
      same: samePeer,
      set: (_plan, p) => wg.setPeer(dev.name, p, pskFile),
      del: (_plan, p) => wg.removePeer(dev.name, p.publicKey),
      describe: (kind, p) =>
        kind === "del"
          ? `wg set ${dev.name} peer ${p.publicKey} remove`
          : `wg set ${dev.name} peer ${p.publicKey}${
            p.endpoint ? ` endpoint ${p.endpoint}` : ""
          } allowed-ips ${p.allowedIps.join(",")}${
            p.keepalive ? ` persistent-keepalive ${p.keepalive}` : ""
          }${p.psk !== undefined ? " preshared-key <file>" : ""}`,
    };
    const first = nets[0]!;
    return {
      family: first.family,
      label: dev.name,
      ensure: (): FamilyPlan => {
        const { link, dump } = this.#ensure(dev);
        ensured = dump;
        for (const n of nets) this.#configure(link, n.subnet, n.network);
        return {
          family: first.family,
          network: first.network,
          ownSubnet: first.subnet,
          deviceIndex: link.index,
          externalIndex: this.#underlay.index,
          manageExternal: false,
        };
      },
      entries: () => undefined,
      objects,
    };
  }

  /** Address /32 (/128), up, and the link-scope route for the network. */
  #configure(link: LinkInfo, subnet: string, network: IpNet): void {
    const bits = network.family === 4 ? 32 : 128;
    configureDevice(
      this.#nl,
      link,
      `${subnetAddress(subnet)}/${bits}`,
      network,
    );
    const dst = formatNet(network);
    const have = this.#nl.routeList({ family: network.family }).some((r) =>
      r.dst === dst && r.index === link.index && r.gw === undefined
    );
    if (!have) {
      log.v(1, `ip route replace ${dst} dev ${link.name} scope link`);
      this.#nl.routeReplace({ dst, index: link.index, scope: RT_SCOPE_LINK });
    }
  }
}

/** Creates a wireguard backend for the config and underlay. */
export function createWireguardBackend(
  nl: Netlink,
  config: NetworkConfig,
  underlay: Underlay,
  opts: BackendOptions & WireguardOptions = {},
): Result<Backend> {
  const cfg = parseWireguardConfig(config.backend.raw);
  if (!cfg.ok) return cfg;
  if (config.enableIPv4 && underlay.publicIP === undefined) {
    return fail(`Interface "${underlay.name}" has no IPv4 address to publish`);
  }
  if (config.enableIPv6 && underlay.publicIPv6 === undefined) {
    return fail(`Interface "${underlay.name}" has no IPv6 address to publish`);
  }
  if (cfg.value.mode === "ipv6" && !config.enableIPv6) {
    return fail(`Backend.Mode "ipv6" needs IPv6 enabled`);
  }
  if (cfg.value.mode === "ipv4" && !config.enableIPv4) {
    return fail(`Backend.Mode "ipv4" needs IPv4 enabled`);
  }
  log.info(
    `WireGuard config: Mode=${cfg.value.mode} ListenPort=${cfg.value.listenPort} ListenPortV6=${cfg.value.listenPortV6} PersistentKeepaliveInterval=${cfg.value.keepalive} PSK=${
      cfg.value.psk === undefined ? "no" : "yes"
    }`,
  );
  return ok(
    new WireguardBackend(nl, config, cfg.value, underlay, {
      wg: opts.wg ?? new WgCli(),
      startUserspace: opts.startUserspace ?? userspaceStarter(),
      loadKey: opts.loadKey ?? loadOrCreateKey,
      writeSecret: opts.writeSecret ?? writeSecret,
      keyFile: opts.keyFile ??
        (Deno.env.get("WIREGUARD_KEY_FILE") || DEFAULT_KEY_FILE),
    }),
  );
}
