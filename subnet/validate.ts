/**
 * Validation of a peer's lease against the network config. A lease that
 * fails here is never programmed: its reason is logged once and counted.
 * Pure: it returns a value or a reason.
 *
 * @module
 */
import type { NetworkConfig } from "./config.ts";
import {
  formatNet,
  type Ip,
  type IpNet,
  ipString,
  netContainsIp,
  netContainsNet,
  parseIp,
  parseSubnet,
} from "../lib/ip.ts";
import type { Lease, VxlanBackendData, WireguardBackendData } from "./lease.ts";
import { parseUnicastMac } from "../lib/mac.ts";
import { quote } from "../lib/log.ts";
import { fail, ok, type Result } from "../lib/result.ts";

const BACKEND_TYPE = /^[a-z0-9][a-z0-9-]{0,31}$/;

/** Backend data as a JSON object, or the reason naming `field`. */
function dataObject(
  data: unknown,
  field: string,
): Result<Record<string, unknown>> {
  return typeof data !== "object" || data === null || Array.isArray(data)
    ? fail(`Invalid ${field} ${quote(data)}: not a JSON object`)
    : ok(data as Record<string, unknown>);
}

/**
 * Parses the backend data of the types that carry some (vxlan, wireguard);
 * other types' data passes as it is.
 */
function parseBackendData(
  type: string,
  data: unknown,
  field: string,
): Result<unknown> {
  if (type === "vxlan") return parseVxlanData(data, field);
  if (type === "wireguard") return parseWireguardData(data, field);
  return ok(data);
}

/** Parses vxlan backend data `{"VNI":1,"VtepMAC":"..."}`. */
export function parseVxlanData(
  data: unknown,
  field = "backend-data",
): Result<VxlanBackendData> {
  const obj = dataObject(data, field);
  if (!obj.ok) return obj;
  const d = obj.value;
  const vni = d.VNI ?? 0;
  if (
    typeof vni !== "number" || !Number.isInteger(vni) || vni < 0 ||
    vni > 0xffffff
  ) {
    return fail(`Invalid ${field} VNI ${quote(vni)}`);
  }
  const mac = parseUnicastMac(d.VtepMAC);
  if (!mac.ok) return fail(`Invalid ${field} VtepMAC: ${mac.reason}`);
  return ok({ VNI: vni, VtepMAC: mac.value });
}

/**
 * Checks a WireGuard key as `wg` prints it: standard base64 of 32 bytes
 * (44 characters ending in `=`). Returns the trimmed text.
 */
export function parseWgKey(text: unknown): Result<string> {
  if (typeof text !== "string") return fail(`${quote(text)} is not a string`);
  const t = text.trim();
  if (/^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/.test(t)) return ok(t);
  let bytes: number;
  try {
    bytes = atob(t).length;
  } catch {
    return fail(`${quote(t)} is not base64`);
  }
  return fail(`${quote(t)} decodes to ${bytes} bytes, want 32`);
}

/**
 * Parses wireguard backend data `{"PublicKey":"...","Port":51820}`; a
 * missing or zero `Port` is 0 ("the same port as mine").
 */
export function parseWireguardData(
  data: unknown,
  field = "backend-data",
): Result<WireguardBackendData> {
  const obj = dataObject(data, field);
  if (!obj.ok) return obj;
  const d = obj.value;
  const key = parseWgKey(d.PublicKey);
  if (!key.ok) return fail(`Invalid ${field} PublicKey: ${key.reason}`);
  const port = d.Port ?? 0;
  if (
    typeof port !== "number" || !Number.isInteger(port) || port < 0 ||
    port > 65535
  ) {
    return fail(`Invalid ${field} Port ${quote(port)}: must be 0..65535`);
  }
  return ok({ PublicKey: key.value, Port: port });
}

function familySubnet(
  subnet: string | undefined,
  network: IpNet | undefined,
  label: string,
): Result<string | undefined> {
  if (subnet === undefined) return ok(undefined);
  const net = parseSubnet(subnet);
  if (!net.ok) return fail(`Invalid ${label}: ${net.reason}`);
  if (network === undefined) return ok(undefined);
  if (!netContainsNet(network, net.value)) {
    return fail(
      `${label} "${subnet}" is outside the network "${formatNet(network)}"`,
    );
  }
  return ok(formatNet(net.value));
}

function publicIp(
  text: string | undefined,
  family: 4 | 6,
  label: string,
  config: NetworkConfig,
): Result<string> {
  if (text === undefined || text === "") return fail(`Missing ${label}`);
  const ip = parseIp(text);
  if (!ip.ok || ip.value.family !== family) {
    return fail(`Invalid ${label} ${quote(text)}`);
  }
  const canonical = ipString(ip.value);
  // An encapsulation endpoint inside the overlay would loop packets
  // through the tunnel; with host-gw it would route pods via a pod.
  const why = notUnicast(ip.value) ??
    insideCluster(canonical, config.network) ??
    insideCluster(canonical, config.ipv6Network);
  if (why !== undefined) {
    return fail(`Invalid ${label} ${quote(text)}: ${why}`);
  }
  return ok(canonical);
}

/**
 * Why an address cannot be a peer's VTEP or gateway on the underlay, if it
 * cannot. Only global or private unicast addresses can (Go's
 * `IsGlobalUnicast || IsPrivate`, stricter for IPv4): not unspecified,
 * loopback, multicast, broadcast, link-local, `0.0.0.0/8`, the reserved
 * `240.0.0.0/4`, an IPv4-mapped or IPv4-compatible IPv6 address (which
 * would smuggle an IPv4 destination into an IPv6 entry), or one of
 * {@linkcode V6_SPECIAL}.
 */
export function notUnicast(ip: Ip): string | undefined {
  const v = ip.value;
  if (v === 0n) return "unspecified address";
  if (ip.family === 4) {
    if (v >> 24n === 0n) return "address in 0.0.0.0/8";
    if (v >> 24n === 127n) return "loopback address";
    if (v >> 16n === 0xa9fen) return "link-local address";
    if (v === 0xffffffffn) return "broadcast address";
    if (v >> 28n === 0xen) return "multicast address";
    if (v >> 28n === 0xfn) return "reserved address (240.0.0.0/4)";
    return undefined;
  }
  if (v === 1n) return "loopback address";
  if (v >> 120n === 0xffn) return "multicast address";
  if (v >> 118n === 0x3fan) return "link-local address";
  if (v >> 32n === 0xffffn) return "IPv4-mapped address";
  if (v >> 32n === 0n) return "IPv4-compatible address";
  for (const [prefix, len, what] of V6_SPECIAL) {
    if (v >> BigInt(128 - len) === prefix >> BigInt(128 - len)) {
      return `${what} (${formatNet({ family: 6, addr: prefix, prefix: len })})`;
    }
  }
  return undefined;
}

/**
 * IPv6 ranges that are not a host's own underlay address: each either
 * stands for an IPv4 destination reached through a translator or relay
 * (so a peer could aim the tunnel at any IPv4 host), or is deprecated or
 * never routed. Unique-local and documentation addresses stay allowed.
 */
const V6_SPECIAL: readonly [bigint, number, string][] = [
  [0x0064ff9b_00000000_00000000_00000000n, 96, "NAT64 address"],
  [0x0064ff9b_00010000_00000000_00000000n, 48, "local-use NAT64 address"],
  [0x00000000_00000000_ffff0000_00000000n, 96, "IPv4-translated address"],
  [0x01000000_00000000_00000000_00000000n, 64, "discard-only address"],
  [0x20010000_00000000_00000000_00000000n, 32, "Teredo address"],
  [0x20020000_00000000_00000000_00000000n, 16, "6to4 address"],
  [0xfec00000_00000000_00000000_00000000n, 10, "site-local address"],
];

/** Why a public IP inside the cluster network is refused, if it is. */
function insideCluster(
  ip: string,
  network: IpNet | undefined,
): string | undefined {
  if (network === undefined) return undefined;
  const p = parseIp(ip);
  if (!p.ok || !netContainsIp(network, p.value)) return undefined;
  return `inside the cluster network "${formatNet(network)}"`;
}

/**
 * Checks a peer lease: subnets canonical and inside the network, a public
 * IP per subnet family, a sane backend type and, for vxlan, backend data
 * with a unicast VTEP MAC; for wireguard, a 32-byte public key and a port. Returns the lease with canonical strings.
 */
export function validateLease(
  lease: Lease,
  config: NetworkConfig,
): Result<Lease> {
  const type = lease.attrs.backendType;
  if (typeof type !== "string" || !BACKEND_TYPE.test(type)) {
    return fail(`Invalid backend type ${quote(type)}`);
  }
  const v4 = familySubnet(
    config.enableIPv4 ? lease.subnet : undefined,
    config.network,
    "subnet",
  );
  if (!v4.ok) return v4;
  const v6 = familySubnet(
    config.enableIPv6 ? lease.ipv6Subnet : undefined,
    config.ipv6Network,
    "IPv6 subnet",
  );
  if (!v6.ok) return v6;
  if (v4.value === undefined && v6.value === undefined) {
    return fail("No subnet of an enabled address family");
  }
  let publicIP: string | undefined;
  let publicIPv6: string | undefined;
  let backendData: unknown = lease.attrs.backendData;
  let backendV6Data: unknown = lease.attrs.backendV6Data;
  if (v4.value !== undefined) {
    const ip = publicIp(lease.attrs.publicIP, 4, "public IP", config);
    if (!ip.ok) return ip;
    publicIP = ip.value;
    const d = parseBackendData(type, backendData, "backend-data");
    if (!d.ok) return d;
    backendData = d.value;
  }
  if (v6.value !== undefined) {
    const ip = publicIp(lease.attrs.publicIPv6, 6, "public IPv6", config);
    if (!ip.ok) return ip;
    publicIPv6 = ip.value;
    const d = parseBackendData(type, backendV6Data, "backend-v6-data");
    if (!d.ok) return d;
    backendV6Data = d.value;
  }
  return ok({
    key: lease.key,
    ...(v4.value !== undefined && { subnet: v4.value }),
    ...(v6.value !== undefined && { ipv6Subnet: v6.value }),
    attrs: {
      backendType: type,
      ...(publicIP !== undefined && { publicIP }),
      ...(publicIPv6 !== undefined && { publicIPv6 }),
      ...(backendData !== undefined && { backendData }),
      ...(backendV6Data !== undefined && { backendV6Data }),
    },
    ...(lease.expiration !== undefined && { expiration: lease.expiration }),
    ...(lease.claimedAt !== undefined && { claimedAt: lease.claimedAt }),
    ...(lease.createdAt !== undefined && { createdAt: lease.createdAt }),
  });
}

/** This node's underlay, as far as the cluster network must avoid it. */
export interface HostAddresses {
  /** Addresses of the external interface and the public IPs. */
  readonly addrs: readonly string[];
  /** Gateways of the default routes. */
  readonly gateways: readonly string[];
}

/**
 * Refuses a cluster network that contains this node's underlay address or
 * its default gateway: weft would route the underlay into the overlay and
 * cut the node off. Checked once at start, before anything is programmed.
 */
export function checkNetworkAgainstHost(
  config: NetworkConfig,
  host: HostAddresses,
): Result<void> {
  for (const network of [config.network, config.ipv6Network]) {
    if (network === undefined) continue;
    const hit = (list: readonly string[]) =>
      list.find((a) => {
        const ip = parseIp(a);
        return ip.ok && netContainsIp(network, ip.value);
      });
    const addr = hit(host.addrs);
    if (addr !== undefined) {
      return fail(
        `Network "${
          formatNet(network)
        }" contains this node's underlay address "${addr}": choose a cluster network that does not overlap the node network`,
      );
    }
    const gw = hit(host.gateways);
    if (gw !== undefined) {
      return fail(
        `Network "${
          formatNet(network)
        }" contains this node's default gateway "${gw}": choose a cluster network that does not overlap the node network`,
      );
    }
  }
  return ok(undefined);
}
