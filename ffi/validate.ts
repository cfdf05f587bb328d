/**
 * Checks on what callers hand to `ffi/` before any syscall, turning
 * addresses into the bytes libnl wants, and the iproute2 words that name an
 * object in error messages (`10.244.1.0/24 via 10.244.1.0 dev flannel.1
 * onlink`). Pure: needs no permissions, so it is unit-tested without root.
 *
 * @module
 */
import {
  type Family,
  formatIp,
  type Ip,
  ipv4Octets,
  networkAddr,
  parseIp,
  parseIpNet,
} from "../lib/ip.ts";
import {
  type AddrInfo,
  type FdbInfo,
  KernelError,
  type NeighInfo,
  NTF_SELF,
  type RouteInfo,
  RT_TABLE_MAIN,
  type VxlanLinkSpec,
} from "./types.ts";

/** Longest device name the kernel accepts (IFNAMSIZ - 1). */
export const IFNAMSIZ_MAX = 15;
/** Largest VXLAN network identifier (24 bits). */
export const VNI_MAX = 2 ** 24 - 1;

/** An address in network byte order, ready for `nl_addr_build`. */
export interface AddrBytes {
  readonly family: Family;
  readonly bytes: Uint8Array;
  /** Prefix length; the full length for a plain address. */
  readonly prefix: number;
}

/** A {@linkcode KernelError} for input rejected before reaching the kernel. */
export function invalid(
  op: string,
  object: string,
  reason: string,
): KernelError {
  return new KernelError(op, object, 0, reason);
}

/** Big-endian bytes of an address value. */
export function ipToBytes(family: Family, value: bigint): Uint8Array {
  const n = family === 4 ? 4 : 16;
  const out = new Uint8Array(n);
  if (family === 4) {
    const v = Number(value);
    out[0] = v >>> 24;
    out[1] = (v >>> 16) & 255;
    out[2] = (v >>> 8) & 255;
    out[3] = v & 255;
    return out;
  }
  let v = value;
  for (let i = n - 1; i >= 0; i--) {
    out[i] = Number(v & 255n);
    v >>= 8n;
  }
  return out;
}

/** Canonical text of an address given as 4 or 16 big-endian bytes. */
export function bytesToIp(bytes: Uint8Array): string {
  if (bytes.length === 4) {
    return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  }
  let v = 0n;
  for (const b of bytes) v = (v << 8n) | BigInt(b);
  return formatIp(6, v);
}

/** `aa:bb:cc:dd:ee:ff` from link-layer address bytes. */
export function bytesToMac(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) {
    if (i > 0) s += ":";
    s += (bytes[i]! < 16 ? "0" : "") + bytes[i]!.toString(16);
  }
  return s;
}

function fastV4(text: string): Uint8Array | undefined {
  const o = ipv4Octets(text);
  return o === undefined ? undefined : new Uint8Array(o);
}

/** Parses an IP address or throws a {@linkcode KernelError} (code 0). */
export function ipBytes(text: string, op: string, object: string): AddrBytes {
  const v4 = typeof text === "string" ? fastV4(text) : undefined;
  if (v4 !== undefined) return { family: 4, bytes: v4, prefix: 32 };
  const ip = parseIp(text);
  if (!ip.ok) {
    throw invalid(op, object, `Cannot parse IP address "${String(text)}"`);
  }
  return fromIp(ip.value);
}

function fromIp(ip: Ip): AddrBytes {
  return {
    family: ip.family,
    bytes: ipToBytes(ip.family, ip.value),
    prefix: ip.family === 4 ? 32 : 128,
  };
}

/**
 * Parses `addr/prefix`. With `strict`, host bits must be zero (a route
 * destination); otherwise they are kept (an interface address).
 */
export function cidrBytes(
  text: string,
  op: string,
  object: string,
  strict: boolean,
): AddrBytes {
  const slash = typeof text === "string" ? text.indexOf("/") : -1;
  const v4 = slash > 0 ? fastV4(text.slice(0, slash)) : undefined;
  const plen = text.slice(slash + 1);
  if (v4 !== undefined && /^\d{1,2}$/.test(plen) && +plen <= 32) {
    const prefix = +plen;
    const value = ((v4[0]! << 24) | (v4[1]! << 16) | (v4[2]! << 8) | v4[3]!) >>>
      0;
    const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
    if (!strict || ((value & mask) >>> 0) === value) {
      return { family: 4, bytes: v4, prefix };
    }
  }
  const net = parseIpNet(text);
  if (!net.ok) throw invalid(op, object, `Cannot parse CIDR "${String(text)}"`);
  const v = net.value;
  if (strict && networkAddr(v) !== v.addr) {
    throw invalid(
      op,
      object,
      `Invalid prefix "${text}": host bits set for prefix length ${v.prefix}`,
    );
  }
  return {
    family: v.family,
    bytes: ipToBytes(v.family, v.addr),
    prefix: v.prefix,
  };
}

const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

/** Parses a MAC address (`aa:bb:cc:dd:ee:ff`) into 6 bytes. */
export function macBytes(text: string, op: string, object: string): Uint8Array {
  if (typeof text !== "string" || !MAC_RE.test(text)) {
    throw invalid(op, object, `Cannot parse MAC address "${String(text)}"`);
  }
  const out = new Uint8Array(6);
  for (let i = 0; i < 6; i++) {
    out[i] = parseInt(text.slice(i * 3, i * 3 + 2), 16);
  }
  return out;
}

function isInt(n: unknown, min: number, max: number): n is number {
  return typeof n === "number" && Number.isInteger(n) && n >= min && n <= max;
}

/** Checks an interface index (a positive 31-bit integer). */
export function checkIndex(index: number, op: string, object: string): number {
  if (!isInt(index, 1, 2 ** 31 - 1)) {
    throw invalid(op, object, `Invalid interface index "${String(index)}"`);
  }
  return index;
}

/** Checks a device name the way the kernel does (`dev_valid_name`). */
export function checkName(name: string, op: string, object: string): string {
  if (
    typeof name !== "string" || name === "" || name.length > IFNAMSIZ_MAX ||
    name === "." || name === ".." || /[\s/:]/.test(name) ||
    new TextEncoder().encode(name).length > IFNAMSIZ_MAX
  ) {
    throw invalid(
      op,
      object,
      `Invalid device name "${
        String(name)
      }": 1 to ${IFNAMSIZ_MAX} bytes, no "/", ":" or spaces`,
    );
  }
  return name;
}

/** Checks a VXLAN network identifier (0..2^24-1). */
export function checkVni(vni: number, op: string, object: string): number {
  if (!isInt(vni, 0, VNI_MAX)) {
    throw invalid(
      op,
      object,
      `Invalid VNI "${String(vni)}": must be 0..${VNI_MAX}`,
    );
  }
  return vni;
}

/** Checks an MTU (68..65535: the IPv4 minimum up to the 16-bit maximum). */
export function checkMtu(mtu: number, op: string, object: string): number {
  if (!isInt(mtu, 68, 65535)) {
    throw invalid(
      op,
      object,
      `Invalid MTU "${String(mtu)}": must be 68..65535`,
    );
  }
  return mtu;
}

/** Checks a UDP port (0..65535, 0 meaning the kernel default). */
export function checkPort(port: number, op: string, object: string): number {
  if (!isInt(port, 0, 65535)) {
    throw invalid(
      op,
      object,
      `Invalid port "${String(port)}": must be 0..65535`,
    );
  }
  return port;
}

/** Checks a small unsigned value (route scope, table, NUD state, NTF flags). */
export function checkUint(
  what: string,
  value: number,
  max: number,
  op: string,
  object: string,
): number {
  if (!isInt(value, 0, max)) {
    throw invalid(
      op,
      object,
      `Invalid ${what} "${String(value)}": must be 0..${max}`,
    );
  }
  return value;
}

/** Names a device index for messages: a resolver's answer, else `if<N>`. */
export type DevName = (index: number) => string | undefined;

function dev(index: number | undefined, name: DevName | undefined): string {
  if (index === undefined) return "";
  return ` dev ${name?.(index) ?? `if${index}`}`;
}

/** `ip link` words for a vxlan spec: `flannel.1 type vxlan id 1 local ...`. */
export function describeVxlan(spec: VxlanLinkSpec, name?: DevName): string {
  return `${spec.name} type vxlan id ${spec.vni} local ${spec.local}${
    dev(spec.linkIndex, name)
  } dstport ${spec.port}${spec.learning ? "" : " nolearning"}${
    spec.gbp ? " gbp" : ""
  } mtu ${spec.mtu} address ${spec.mac}`;
}

/** `ip addr` words: `10.244.2.0/32 dev flannel.1`. */
export function describeAddr(addr: AddrInfo, name?: DevName): string {
  return `${addr.local}${dev(addr.index, name)}`;
}

/**
 * `ip route` words: `10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink`.
 * The protocol is named unless it is `implied` (default boot, what `ip`
 * and libnl write when given none).
 */
export function describeRoute(
  route: RouteInfo,
  name?: DevName,
  implied = 3,
): string {
  let s = `${route.blackhole ? "blackhole " : ""}${route.dst}`;
  if (route.gw !== undefined) s += ` via ${route.gw}`;
  s += dev(route.index, name);
  if (route.onlink) s += " onlink";
  if (route.table !== undefined && route.table !== RT_TABLE_MAIN) {
    s += ` table ${route.table}`;
  }
  if (route.src !== undefined) s += ` src ${route.src}`;
  const proto = route.protocol ?? 3;
  if (proto !== implied) s += ` proto ${PROTOCOL_NAMES[proto] ?? proto}`;
  return s;
}

/** rtnetlink protocol names as `ip route` prints them (/etc/iproute2/rt_protos). */
const PROTOCOL_NAMES: Record<number, string> = {
  0: "unspec",
  1: "redirect",
  2: "kernel",
  3: "boot",
  4: "static",
  186: "bgp",
  187: "isis",
  188: "ospf",
  189: "rip",
};

const NUD_WORDS: [number, string][] = [
  [0x01, "incomplete"],
  [0x02, "reachable"],
  [0x04, "stale"],
  [0x08, "delay"],
  [0x10, "probe"],
  [0x20, "failed"],
  [0x40, "noarp"],
  [0x80, "permanent"],
];

/** iproute2's word for a NUD state (`permanent`), or hex for a mix. */
export function nudWord(state: number): string {
  return NUD_WORDS.find(([bit]) => bit === state)?.[1] ??
    `0x${state.toString(16)}`;
}

/** `ip neigh` words: `10.244.0.0 dev flannel.1 lladdr e6:... nud permanent`. */
export function describeNeigh(neigh: NeighInfo, name?: DevName): string {
  return `${neigh.dst}${dev(neigh.index, name)}${
    neigh.lladdr === undefined ? "" : ` lladdr ${neigh.lladdr}`
  }${neigh.state === 0 ? "" : ` nud ${nudWord(neigh.state)}`}`;
}

/** `bridge fdb` words: `e6:... dev flannel.1 dst 172.80.0.2 self permanent`. */
export function describeFdb(fdb: FdbInfo, name?: DevName): string {
  return `${fdb.lladdr}${dev(fdb.index, name)}${
    fdb.dst === undefined ? "" : ` dst ${fdb.dst}`
  }${(fdb.flags & NTF_SELF) !== 0 ? " self" : ""}${
    fdb.state === 0 ? "" : ` ${nudWord(fdb.state)}`
  }`;
}
