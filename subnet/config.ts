/**
 * net-conf.json (kube mode) and `<prefix>/config` (etcd mode): parsing and
 * validation with flanneld's rules, which weft applies in both modes.
 * Keys match case-insensitively, as Go's encoding/json does, so every file
 * flanneld accepts is accepted here. The result has every default filled in.
 *
 * @module
 */
import {
  type Family,
  formatIp,
  formatNet,
  type IpNet,
  maskOf,
  networkAddr,
  parseIp,
  parseIpNet,
  sizeOf,
} from "../lib/ip.ts";
import { fail, ok, type Result } from "../lib/result.ts";

/** The backend section of net-conf.json. `type` is lower-cased. */
export interface BackendConfig {
  readonly type: string;
  /** The whole Backend object as given, for backend-specific keys. */
  readonly raw: Record<string, unknown>;
}

/** A validated network configuration with defaults filled in. */
export interface NetworkConfig {
  readonly enableIPv4: boolean;
  readonly enableIPv6: boolean;
  readonly enableNFTables: boolean;
  /** IPv4 cluster network (canonical), when IPv4 is enabled. */
  readonly network?: IpNet;
  readonly subnetLen: number;
  /** Lowest subnet address etcd mode hands out. */
  readonly subnetMin?: bigint;
  /** Highest subnet address etcd mode hands out. */
  readonly subnetMax?: bigint;
  readonly ipv6Network?: IpNet;
  readonly ipv6SubnetLen: number;
  readonly ipv6SubnetMin?: bigint;
  readonly ipv6SubnetMax?: bigint;
  readonly backend: BackendConfig;
  /** True when the input had no Backend and vxlan was assumed. */
  readonly backendDefaulted: boolean;
}

const KEYS = [
  "Network",
  "IPv6Network",
  "EnableIPv4",
  "EnableIPv6",
  "EnableNFTables",
  "SubnetLen",
  "SubnetMin",
  "SubnetMax",
  "IPv6SubnetLen",
  "IPv6SubnetMin",
  "IPv6SubnetMax",
  "Backend",
] as const;
type Key = typeof KEYS[number];

/** Finds keys case-insensitively, like Go's encoding/json. */
function pickKeys(obj: Record<string, unknown>): Map<Key, unknown> {
  const out = new Map<Key, unknown>();
  for (const [k, v] of Object.entries(obj)) {
    const key = KEYS.find((name) => name.toLowerCase() === k.toLowerCase());
    if (key !== undefined && !out.has(key)) out.set(key, v);
  }
  return out;
}

interface FamilyRules {
  readonly family: Family;
  readonly names: {
    network: string;
    len: string;
    min: string;
    max: string;
  };
  /** Longest allowed explicit subnet length. */
  readonly maxLen: number;
  /** Longest network prefix that still splits into four subnets. */
  readonly maxNetPrefix: number;
  /** Default subnet length for large networks. */
  readonly defaultLen: number;
}

const V4: FamilyRules = {
  family: 4,
  names: {
    network: "Network",
    len: "SubnetLen",
    min: "SubnetMin",
    max: "SubnetMax",
  },
  maxLen: 30,
  maxNetPrefix: 28,
  defaultLen: 24,
};
const V6: FamilyRules = {
  family: 6,
  names: {
    network: "IPv6Network",
    len: "IPv6SubnetLen",
    min: "IPv6SubnetMin",
    max: "IPv6SubnetMax",
  },
  maxLen: 126,
  maxNetPrefix: 124,
  defaultLen: 64,
};

interface FamilyConfig {
  network: IpNet;
  subnetLen: number;
  subnetMin: bigint;
  subnetMax: bigint;
}

function familyConfig(
  rules: FamilyRules,
  fields: Map<Key, unknown>,
): Result<FamilyConfig> {
  const { names } = rules;
  const rawNet = fields.get(names.network as Key);
  if (typeof rawNet !== "string" || rawNet === "") {
    return fail(
      `Missing ${names.network}: define a correct ${names.network} in the network config`,
    );
  }
  const parsed = parseIpNet(rawNet);
  if (!parsed.ok || parsed.value.family !== rules.family) {
    return fail(
      `Cannot parse ${names.network} "${rawNet}": not an IPv${rules.family} CIDR`,
    );
  }
  const network: IpNet = {
    family: rules.family,
    addr: networkAddr(parsed.value),
    prefix: parsed.value.prefix,
  };
  if (network.prefix === 0) {
    return fail(
      `${names.network} "${
        formatNet(network)
      }" is the whole address space: it would take the underlay and the default route into the overlay`,
    );
  }

  const rawLen = fields.get(names.len as Key);
  let subnetLen: number;
  if (rawLen === undefined || rawLen === null || rawLen === 0) {
    if (network.prefix > rules.maxNetPrefix) {
      return fail(
        `${names.network} "${
          formatNet(network)
        }" is too small: the minimum useful prefix is /${rules.maxNetPrefix}`,
      );
    }
    subnetLen = network.prefix <= rules.defaultLen - 2
      ? rules.defaultLen
      : network.prefix + 2;
  } else {
    if (
      typeof rawLen !== "number" || !Number.isInteger(rawLen) || rawLen < 0
    ) {
      return fail(`Invalid ${names.len} ${JSON.stringify(rawLen)}`);
    }
    if (rawLen > rules.maxLen) {
      return fail(
        `Invalid ${names.len} ${rawLen}: must be at most /${rules.maxLen}`,
      );
    }
    if (rawLen < network.prefix + 2) {
      return fail(
        `Invalid ${names.len} ${rawLen}: ${names.network} "${
          formatNet(network)
        }" must hold at least four subnets (${names.len} >= ${
          network.prefix + 2
        })`,
      );
    }
    subnetLen = rawLen;
  }

  const size = sizeOf({ family: rules.family, addr: 0n, prefix: subnetLen });
  const end = network.addr + sizeOf(network);
  const bound = (name: string, dflt: bigint): Result<bigint> => {
    const raw = fields.get(name as Key);
    if (raw === undefined || raw === null || raw === "") return ok(dflt);
    const ip = typeof raw === "string" ? parseIp(raw) : undefined;
    if (!ip?.ok || ip.value.family !== rules.family) {
      return fail(`Cannot parse ${name} ${JSON.stringify(raw)}`);
    }
    const v = ip.value.value;
    if (v < network.addr || v >= end) {
      return fail(
        `${name} "${raw}" is not in the range of ${names.network} "${
          formatNet(network)
        }"`,
      );
    }
    if ((v & maskOf(rules.family, subnetLen)) !== v) {
      return fail(
        `${name} "${raw}" is not on a ${names.len} boundary (/${subnetLen})`,
      );
    }
    return ok(v);
  };
  const min = bound(names.min, network.addr + size);
  if (!min.ok) return min;
  const max = bound(names.max, end - size);
  if (!max.ok) return max;
  if (min.value > max.value) {
    return fail(
      `${names.min} "${
        formatIp(rules.family, min.value)
      }" is above ${names.max} "${formatIp(rules.family, max.value)}"`,
    );
  }
  return ok({ network, subnetLen, subnetMin: min.value, subnetMax: max.value });
}

function boolField(
  fields: Map<Key, unknown>,
  key: Key,
  dflt: boolean,
): Result<boolean> {
  const v = fields.get(key);
  if (v === undefined || v === null) return ok(dflt);
  if (typeof v !== "boolean") {
    return fail(`Invalid ${key} ${JSON.stringify(v)}: must be true or false`);
  }
  return ok(v);
}

/**
 * Parses and validates a network config document.
 *
 * @example
 * ```ts
 * const cfg = parseNetConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}');
 * // cfg.ok && cfg.value.subnetLen === 24
 * ```
 */
export function parseNetConfig(text: string): Result<NetworkConfig> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return fail(`Cannot parse network config JSON: ${(e as Error).message}`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    return fail("Cannot parse network config: not a JSON object");
  }
  const fields = pickKeys(doc as Record<string, unknown>);
  const enableIPv4 = boolField(fields, "EnableIPv4", true);
  if (!enableIPv4.ok) return enableIPv4;
  const enableIPv6 = boolField(fields, "EnableIPv6", false);
  if (!enableIPv6.ok) return enableIPv6;
  const enableNFTables = boolField(fields, "EnableNFTables", false);
  if (!enableNFTables.ok) return enableNFTables;
  if (!enableIPv4.value && !enableIPv6.value) {
    return fail(
      "Invalid network config: EnableIPv4 and EnableIPv6 are both false",
    );
  }

  const rawBackend = fields.get("Backend");
  let backend: BackendConfig;
  let backendDefaulted = false;
  if (rawBackend === undefined || rawBackend === null) {
    backend = { type: "vxlan", raw: { Type: "vxlan" } };
    backendDefaulted = true;
  } else if (typeof rawBackend !== "object" || Array.isArray(rawBackend)) {
    return fail(
      `Invalid Backend ${JSON.stringify(rawBackend)}: must be an object`,
    );
  } else {
    const raw = rawBackend as Record<string, unknown>;
    const typeKey = Object.keys(raw).find((k) => k.toLowerCase() === "type");
    const type = typeKey === undefined ? undefined : raw[typeKey];
    if (type !== undefined && typeof type !== "string") {
      return fail(`Invalid Backend.Type ${JSON.stringify(type)}`);
    }
    if (type === undefined || type === "") {
      backend = { type: "vxlan", raw };
      backendDefaulted = true;
    } else {
      backend = { type: type.toLowerCase(), raw };
    }
  }

  let v4: FamilyConfig | undefined;
  if (enableIPv4.value) {
    const r = familyConfig(V4, fields);
    if (!r.ok) return r;
    v4 = r.value;
  }
  let v6: FamilyConfig | undefined;
  if (enableIPv6.value) {
    const r = familyConfig(V6, fields);
    if (!r.ok) return r;
    v6 = r.value;
  }
  return ok({
    enableIPv4: enableIPv4.value,
    enableIPv6: enableIPv6.value,
    enableNFTables: enableNFTables.value,
    ...(v4 && {
      network: v4.network,
      subnetMin: v4.subnetMin,
      subnetMax: v4.subnetMax,
    }),
    subnetLen: v4?.subnetLen ?? 0,
    ...(v6 && {
      ipv6Network: v6.network,
      ipv6SubnetMin: v6.subnetMin,
      ipv6SubnetMax: v6.subnetMax,
    }),
    ipv6SubnetLen: v6?.subnetLen ?? 0,
    backend,
    backendDefaulted,
  });
}
