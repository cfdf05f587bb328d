/**
 * `subnet.env`, the file through which the agent tells the flannel CNI
 * plugin (and, in etcd mode, its own next start) which subnet this node
 * owns. Byte-compatible with flanneld's `WriteSubnetFile`: only enabled
 * families, in the order NETWORK, SUBNET, IPV6_NETWORK, IPV6_SUBNET, MTU,
 * IPMASQ, where a SUBNET is the first host address of the lease with its
 * prefix length. Written atomically so that a CNI ADD racing with a
 * restart reads either the old file or the new one, never half of one.
 *
 * @module
 */
import {
  canonicalNet,
  formatIp,
  formatNet,
  type IpNet,
  networkAddr,
  parseIpNet,
} from "../lib/ip.ts";
import { fail, ok, type Result } from "../lib/result.ts";
import { writeFileAtomic } from "../lib/atomic_write.ts";

/** What {@linkcode renderSubnetEnv} writes. Prefixes as strings or values. */
export interface SubnetEnvParams {
  /** The cluster network (`Network`), when IPv4 is enabled. */
  readonly network?: string | IpNet;
  /** The lease subnet, `10.244.1.0/24`; required with `network`. */
  readonly subnet?: string | IpNet;
  /** The cluster IPv6 network (`IPv6Network`), when IPv6 is enabled. */
  readonly ipv6Network?: string | IpNet;
  /** The IPv6 lease subnet; required with `ipv6Network`. */
  readonly ipv6Subnet?: string | IpNet;
  /** MTU for pod interfaces (the VXLAN device's MTU). */
  readonly mtu: number;
  /** Whether the agent masquerades (`--ip-masq`). */
  readonly ipMasq: boolean;
}

/** `subnet.env` as read back. Subnets have their host bits cleared. */
export interface SubnetEnvFile {
  /** `FLANNEL_NETWORK`, split on commas (flanneld may write several). */
  readonly networks: readonly string[];
  /** `FLANNEL_SUBNET` as a subnet: `10.244.1.1/24` reads `10.244.1.0/24`. */
  readonly subnet?: string;
  /** `FLANNEL_SUBNET` exactly as written: `10.244.1.1/24`. */
  readonly subnetGateway?: string;
  readonly ipv6Networks: readonly string[];
  readonly ipv6Subnet?: string;
  readonly ipv6SubnetGateway?: string;
  readonly mtu?: number;
  readonly ipMasq?: boolean;
}

function toNet(value: string | IpNet, what: string): IpNet {
  if (typeof value !== "string") return value;
  const net = parseIpNet(value);
  if (!net.ok) {
    throw new Error(`Cannot render subnet.env ${what}: ${net.reason}`);
  }
  return net.value;
}

function firstHost(net: IpNet): string {
  return `${formatIp(net.family, networkAddr(net) + 1n)}/${net.prefix}`;
}

/**
 * Renders `subnet.env`. Throws on a prefix that does not parse or a
 * network given without its subnet: those are programming errors, the
 * values come from the validated config and lease.
 */
export function renderSubnetEnv(params: SubnetEnvParams): string {
  let out = "";
  const family = (
    label: "" | "IPV6_",
    network: string | IpNet | undefined,
    subnet: string | IpNet | undefined,
    want: 4 | 6,
  ) => {
    if (network === undefined && subnet === undefined) return;
    if (network === undefined || subnet === undefined) {
      throw new Error(
        `Cannot render subnet.env: FLANNEL_${label}NETWORK and FLANNEL_${label}SUBNET go together`,
      );
    }
    const nw = toNet(network, `FLANNEL_${label}NETWORK`);
    const sn = toNet(subnet, `FLANNEL_${label}SUBNET`);
    if (nw.family !== want || sn.family !== want) {
      throw new Error(
        `Cannot render subnet.env: FLANNEL_${label}NETWORK "${
          formatNet(nw)
        }" and FLANNEL_${label}SUBNET "${formatNet(sn)}" must be IPv${want}`,
      );
    }
    out += `FLANNEL_${label}NETWORK=${formatNet(canonicalNet(nw))}\n`;
    out += `FLANNEL_${label}SUBNET=${firstHost(sn)}\n`;
  };
  family("", params.network, params.subnet, 4);
  family("IPV6_", params.ipv6Network, params.ipv6Subnet, 6);
  if (!Number.isInteger(params.mtu) || params.mtu <= 0) {
    throw new Error(`Cannot render subnet.env: bad MTU "${params.mtu}"`);
  }
  out += `FLANNEL_MTU=${params.mtu}\n`;
  out += `FLANNEL_IPMASQ=${params.ipMasq}\n`;
  return out;
}

/**
 * Parses `subnet.env` the way the flannel CNI plugin does: `KEY=VALUE`
 * lines, unknown keys ignored, `FLANNEL_IPMASQ` true only when exactly
 * `true`. Rejects values that do not parse, naming the key.
 */
export function parseSubnetEnv(text: string): Result<SubnetEnvFile> {
  const out: {
    networks: string[];
    ipv6Networks: string[];
    subnet?: string;
    subnetGateway?: string;
    ipv6Subnet?: string;
    ipv6SubnetGateway?: string;
    mtu?: number;
    ipMasq?: boolean;
  } = { networks: [], ipv6Networks: [] };
  for (const raw of text.split("\n")) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    const eq = line.indexOf("=");
    if (eq < 0) continue;
    const key = line.slice(0, eq);
    const value = line.slice(eq + 1);
    const nets = (family: 4 | 6): Result<string[]> => {
      const list: string[] = [];
      for (const part of value.split(",")) {
        const net = parseIpNet(part);
        if (!net.ok || net.value.family !== family) {
          return fail(
            `Bad ${key} "${value}": "${part}" is not an IPv${family} CIDR`,
          );
        }
        const s = formatNet(canonicalNet(net.value));
        if (!list.includes(s)) list.push(s);
      }
      return ok(list);
    };
    const subnet = (family: 4 | 6): Result<string> => {
      const net = parseIpNet(value);
      if (!net.ok || net.value.family !== family) {
        return fail(`Bad ${key} "${value}": not an IPv${family} CIDR`);
      }
      return ok(formatNet(canonicalNet(net.value)));
    };
    switch (key) {
      case "FLANNEL_NETWORK":
      case "FLANNEL_IPV6_NETWORK": {
        const r = nets(key === "FLANNEL_NETWORK" ? 4 : 6);
        if (!r.ok) return r;
        if (key === "FLANNEL_NETWORK") out.networks = r.value;
        else out.ipv6Networks = r.value;
        break;
      }
      case "FLANNEL_SUBNET": {
        const r = subnet(4);
        if (!r.ok) return r;
        out.subnet = r.value;
        out.subnetGateway = value;
        break;
      }
      case "FLANNEL_IPV6_SUBNET": {
        const r = subnet(6);
        if (!r.ok) return r;
        out.ipv6Subnet = r.value;
        out.ipv6SubnetGateway = value;
        break;
      }
      case "FLANNEL_MTU": {
        if (!/^\d{1,10}$/.test(value) || Number(value) > 0xffffffff) {
          return fail(`Bad FLANNEL_MTU "${value}": not an unsigned integer`);
        }
        out.mtu = Number(value);
        break;
      }
      case "FLANNEL_IPMASQ":
        out.ipMasq = value === "true";
        break;
    }
  }
  return ok(out);
}

/**
 * Names the keys a CNI ADD needs that the file lacks, as the flannel CNI
 * plugin does (`FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, ...`), or "" when
 * none is missing.
 */
export function missingSubnetEnvKeys(env: SubnetEnvFile): string {
  const m: string[] = [];
  if (env.networks.length === 0 && env.ipv6Networks.length === 0) {
    m.push("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK");
  }
  if (env.subnet === undefined && env.ipv6Subnet === undefined) {
    m.push("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET");
  }
  if (env.mtu === undefined) m.push("FLANNEL_MTU");
  if (env.ipMasq === undefined) m.push("FLANNEL_IPMASQ");
  return m.join(", ");
}

/**
 * Reads and parses `subnet.env`. A missing file is `ok(null)` (etcd mode
 * on a fresh node); an unreadable or malformed one is a failure naming
 * the path.
 */
export async function readSubnetEnv(
  path: string,
): Promise<Result<SubnetEnvFile | null>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return ok(null);
    return fail(`Cannot read subnet file "${path}": ${(e as Error).message}`);
  }
  const parsed = parseSubnetEnv(text);
  if (!parsed.ok) {
    return fail(`Cannot parse subnet file "${path}": ${parsed.reason}`);
  }
  return parsed;
}

/**
 * Renders and atomically writes `subnet.env` (directory 0755, file 0644).
 *
 * @example
 * ```ts
 * await writeSubnetEnv("/run/flannel/subnet.env", {
 *   network: "10.244.0.0/16", subnet: "10.244.1.0/24", mtu: 1450, ipMasq: true,
 * });
 * ```
 */
export async function writeSubnetEnv(
  path: string,
  params: SubnetEnvParams,
): Promise<void> {
  await writeFileAtomic(path, renderSubnetEnv(params), 0o644, 0o755);
}

/**
 * Puts subnet.env back when it differs from what `params` render (deleted
 * by hand, truncated, edited): the CNI plugin of every new pod reads it.
 * Returns whether it had to write; throws when it cannot (a read-only
 * `/run/flannel`), naming the file.
 */
export async function ensureSubnetEnv(
  path: string,
  params: SubnetEnvParams,
): Promise<boolean> {
  const want = renderSubnetEnv(params);
  let have: string | undefined;
  try {
    have = await Deno.readTextFile(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new Error(`Cannot read "${path}": ${(e as Error).message}`);
    }
  }
  if (have === want) return false;
  try {
    await writeFileAtomic(path, want, 0o644, 0o755);
  } catch (e) {
    throw new Error(`Cannot write "${path}": ${(e as Error).message}`);
  }
  return true;
}
