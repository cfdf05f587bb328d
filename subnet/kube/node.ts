/**
 * Pure helpers between Kubernetes Node objects and leases: the flannel
 * annotation keys (with flanneld's prefix rules), the slim record weft keeps
 * per node instead of the whole object, the lease a node stands for
 * (flanneld's `nodeToLease`), and the annotations this node must publish.
 * Nothing here does I/O; foreign data comes back as a value or a reason.
 *
 * @module
 */
import type { NetworkConfig } from "../config.ts";
import {
  formatNet,
  type IpNet,
  netContainsNet,
  normalizeIp,
  parseIp,
  parseIpNet,
} from "../../lib/ip.ts";
import type { Lease, LeaseAttrs } from "../lease.ts";
import { fail, ok, type Result } from "../../lib/result.ts";
import { goJson } from "../etcd/keys.ts";
import { quote } from "../../lib/log.ts";

/** flanneld's default `--kube-annotation-prefix`. */
export const DEFAULT_ANNOTATION_PREFIX = "flannel.alpha.coreos.com";

/** The full names of the node annotations flannel reads and writes. */
export interface AnnotationKeys {
  /** `kube-subnet-manager`: `"true"` once a flannel agent owns the node. */
  readonly subnetKubeManaged: string;
  readonly backendData: string;
  readonly backendV6Data: string;
  readonly backendType: string;
  readonly publicIP: string;
  readonly publicIPv6: string;
  /** `public-ip-overwrite`: set by users, published instead of our IP. */
  readonly publicIPOverwrite: string;
  readonly publicIPv6Overwrite: string;
  /** `node-public-ip`: set by users, the address to use as `--public-ip`. */
  readonly nodePublicIP: string;
  readonly nodePublicIPv6: string;
}

const PREFIX_FORMAT = /(?:[a-z0-9_-]+\.)+[a-z0-9_-]+\/(?:[a-z0-9_-]+-)?$/;

/**
 * Builds the annotation keys from `--kube-annotation-prefix` with flanneld's
 * rules: at most one "/"; "/" appended when there is none; then "-" when the
 * prefix ends in neither "/" nor "-".
 *
 * @example
 * ```ts
 * annotationKeys("example.com/weft"); // keys like "example.com/weft-public-ip"
 * annotationKeys("flannel.alpha.coreos.com"); // "flannel.alpha.coreos.com/public-ip"
 * ```
 */
export function annotationKeys(
  prefix: string = DEFAULT_ANNOTATION_PREFIX,
): Result<AnnotationKeys> {
  const slashes = prefix.split("/").length - 1;
  if (slashes > 1) {
    return fail(
      `Invalid annotation prefix "${prefix}": it can contain at most one slash`,
    );
  }
  let p = slashes === 0 ? `${prefix}/` : prefix;
  if (!p.endsWith("/") && !p.endsWith("-")) p += "-";
  if (!PREFIX_FORMAT.test(p)) {
    return fail(
      `Invalid annotation prefix "${prefix}": must be in the format fqdn/[0-9a-z-_]*`,
    );
  }
  return ok({
    subnetKubeManaged: `${p}kube-subnet-manager`,
    backendData: `${p}backend-data`,
    backendV6Data: `${p}backend-v6-data`,
    backendType: `${p}backend-type`,
    publicIP: `${p}public-ip`,
    publicIPv6: `${p}public-ipv6`,
    publicIPOverwrite: `${p}public-ip-overwrite`,
    publicIPv6Overwrite: `${p}public-ipv6-overwrite`,
    nodePublicIP: `${p}node-public-ip`,
    nodePublicIPv6: `${p}node-public-ipv6`,
  });
}

/** The annotations whose values a slim node keeps: those a lease is made of. */
function keptKeys(keys: AnnotationKeys): Set<string> {
  return new Set([
    keys.subnetKubeManaged,
    keys.backendData,
    keys.backendV6Data,
    keys.backendType,
    keys.publicIP,
    keys.publicIPv6,
  ]);
}

/**
 * What weft keeps of a Node: the name, the pod CIDRs and the flannel
 * annotations that make a lease. A full Node (status, images, managed
 * fields) is tens of kilobytes; this is a few hundred bytes.
 */
export interface SlimNode {
  readonly name: string;
  /** `spec.podCIDRs`, or `[spec.podCIDR]` on old API servers. */
  readonly podCIDRs: readonly string[];
  /** Only the flannel annotations named in {@linkcode AnnotationKeys}. */
  readonly annotations: Readonly<Record<string, string>>;
  /**
   * When the node's lease was last written, in ms (whole seconds): see
   * {@linkcode claimTime}. Undefined when no managedFields entry owns a
   * lease field.
   */
  readonly claimedAt?: number;
  /**
   * What made the node too large to read (a flannel annotation longer than
   * {@linkcode MAX_ANNOTATION_BYTES}, not kept in `annotations`; or the
   * whole object); the node is refused for it.
   */
  readonly oversized?: Oversized;
}

/** A part of a Node refused for its size. */
export interface Oversized {
  /** `annotation <key>`, `Node object`. */
  readonly what: string;
  readonly bytes: number;
  /** The bound it passed. */
  readonly limit: number;
}

/**
 * The longest flannel annotation value read. A real one is at most a few
 * hundred bytes; the API server allows 256 KiB of annotations per object,
 * which a node could spend on one value to make every agent parse and
 * log it on every patch.
 */
const MAX_ANNOTATION_BYTES = 64 << 10;

const encoder = new TextEncoder();

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Reads the pod CIDRs of a Node's spec (podCIDRs, else podCIDR). */
export function podCidrsOf(spec: unknown): string[] {
  if (!isObject(spec)) return [];
  const list = spec.podCIDRs;
  if (Array.isArray(list) && list.length > 0) {
    return list.filter((c): c is string => typeof c === "string");
  }
  return typeof spec.podCIDR === "string" && spec.podCIDR !== ""
    ? [spec.podCIDR]
    : [];
}

/** Reduces a Node object from the API to a {@linkcode SlimNode}. */
export function slimNode(
  obj: unknown,
  keys: AnnotationKeys,
  kept: Set<string> = keptKeys(keys),
): Result<SlimNode> {
  if (!isObject(obj) || !isObject(obj.metadata)) {
    return fail("Node object has no metadata");
  }
  const name = obj.metadata.name;
  if (typeof name !== "string" || name === "") {
    return fail("Node object has no name");
  }
  const annotations: Record<string, string> = {};
  let oversized: Oversized | undefined;
  const all = obj.metadata.annotations;
  if (isObject(all)) {
    for (const k of kept) {
      const v = all[k];
      if (typeof v !== "string") continue;
      // A UTF-8 byte is at most one UTF-16 unit: only long ones are encoded.
      const bytes = v.length * 3 > MAX_ANNOTATION_BYTES
        ? encoder.encode(v).length
        : v.length;
      if (bytes > MAX_ANNOTATION_BYTES) {
        oversized ??= {
          what: `annotation ${k}`,
          bytes,
          limit: MAX_ANNOTATION_BYTES,
        };
      } else annotations[k] = v;
    }
  }
  const claimedAt = claimTime(obj.metadata.managedFields, kept);
  return ok({
    name,
    podCIDRs: podCidrsOf(obj.spec),
    annotations,
    ...(claimedAt !== undefined && { claimedAt }),
    ...(oversized && { oversized }),
  });
}

/**
 * When a Node's lease was last written: the latest `time` of its
 * managedFields entries that own one of the lease's annotations (`kept`)
 * or its pod CIDRs. The API server sets an entry's time to its own clock
 * when a write by that manager changes a value, and leaves it on a
 * re-patch with the same values, so it tells when the node's present
 * claims were made, the same to every reader. Resolution is one second
 * (RFC 3339 `time`). Limits (a write of managedFields alone) are in
 * docs/hostile-inputs.md.
 */
function claimTime(
  managedFields: unknown,
  kept: ReadonlySet<string>,
): number | undefined {
  if (!Array.isArray(managedFields)) return undefined;
  let latest: number | undefined;
  for (const entry of managedFields) {
    if (!isObject(entry) || !ownsLeaseField(entry.fieldsV1, kept)) continue;
    const t = Date.parse(String(entry.time ?? ""));
    if (Number.isFinite(t) && (latest === undefined || t > latest)) latest = t;
  }
  return latest;
}

/** Whether a managedFields `fieldsV1` set owns a lease field. */
function ownsLeaseField(fields: unknown, kept: ReadonlySet<string>): boolean {
  if (!isObject(fields)) return false;
  const spec = fields["f:spec"];
  if (isObject(spec) && ("f:podCIDR" in spec || "f:podCIDRs" in spec)) {
    return true;
  }
  const meta = fields["f:metadata"];
  const annotations = isObject(meta) ? meta["f:annotations"] : undefined;
  if (!isObject(annotations)) return false;
  for (const k of kept) if (`f:${k}` in annotations) return true;
  return false;
}

/** A slim node reduced with a key set computed once. */
export function slimmer(
  keys: AnnotationKeys,
): (obj: unknown) => Result<SlimNode> {
  const kept = keptKeys(keys);
  return (obj) => slimNode(obj, keys, kept);
}

/** The pod CIDRs of a node split by family, canonical. */
export interface NodeCidrs {
  readonly v4?: IpNet;
  readonly v6?: IpNet;
}

/**
 * Splits a node's pod CIDRs by family, with flanneld's rule that a node
 * has at most two (single stack or dual stack).
 */
export function splitPodCidrs(
  name: string,
  cidrs: readonly string[],
): Result<NodeCidrs> {
  if (cidrs.length > 2) {
    return fail(
      `node ${quote(name)} pod cidrs should be IPv4/IPv6 only or dualstack`,
    );
  }
  let v4: IpNet | undefined;
  let v6: IpNet | undefined;
  for (const c of cidrs) {
    const n = parseIpNet(c);
    if (!n.ok) return fail(`Cannot parse podCIDR ${quote(c)}`);
    if (n.value.family === 4) v4 = n.value;
    else v6 = n.value;
  }
  return ok({
    ...(v4 !== undefined && { v4 }),
    ...(v6 !== undefined && { v6 }),
  });
}

/**
 * A backend data annotation: absent or empty is no data (flanneld keeps it
 * as an empty `json.RawMessage`; only the vxlan backend needs it, and the
 * lease validation says so), anything else must be JSON.
 */
function parseJsonAnnotation(
  text: string | undefined,
  label: string,
): Result<unknown> {
  if (text === undefined || text === "") return ok(undefined);
  try {
    return ok(JSON.parse(text));
  } catch {
    return fail(`Invalid ${label} ${quote(text)}: not JSON`);
  }
}

/**
 * flanneld's `nodeToLease`: the lease a peer node stands for. A node that
 * no flannel agent has annotated (`kube-subnet-manager` not `"true"`) gives
 * a reason instead. A missing `backend-data` / `backend-v6-data` is not one:
 * a host-gw node needs neither (flanneld itself writes `backend-v6-data`
 * only when it has an IPv6 address), and for vxlan the LeaseTable's
 * validation names the missing data. The lease is checked further there.
 */
export function nodeToLease(
  node: SlimNode,
  keys: AnnotationKeys,
  config: Pick<NetworkConfig, "enableIPv4" | "enableIPv6">,
): Result<Lease> {
  const a = node.annotations;
  if (node.oversized) {
    const { what, bytes, limit } = node.oversized;
    return fail(
      `${what} of ${bytes} bytes refused for its size (at most ${limit})`,
    );
  }
  if (a[keys.subnetKubeManaged] !== "true") {
    return fail(`not annotated ${keys.subnetKubeManaged}=true`);
  }
  const backendType = a[keys.backendType];
  if (backendType === undefined || backendType === "") {
    return fail(`Missing ${keys.backendType}`);
  }
  const cidrs = splitPodCidrs(node.name, node.podCIDRs);
  if (!cidrs.ok) return cidrs;
  let subnet: string | undefined;
  let ipv6Subnet: string | undefined;
  let publicIP: string | undefined;
  let publicIPv6: string | undefined;
  let backendData: unknown;
  let backendV6Data: unknown;
  if (config.enableIPv4) {
    if (cidrs.value.v4 === undefined) return fail("No IPv4 podCIDR");
    subnet = formatNet(cidrs.value.v4);
    publicIP = a[keys.publicIP];
    if (publicIP === undefined) return fail(`Missing ${keys.publicIP}`);
    // flanneld's extension backend without a PreStartupCommand publishes
    // empty backend data.
    if (backendType !== "extension" || a[keys.backendData] !== "") {
      const d = parseJsonAnnotation(a[keys.backendData], keys.backendData);
      if (!d.ok) return d;
      backendData = d.value;
    }
  }
  if (config.enableIPv6) {
    if (cidrs.value.v6 === undefined) return fail("No IPv6 podCIDR");
    ipv6Subnet = formatNet(cidrs.value.v6);
    publicIPv6 = a[keys.publicIPv6];
    if (publicIPv6 === undefined) return fail(`Missing ${keys.publicIPv6}`);
    const d = parseJsonAnnotation(a[keys.backendV6Data], keys.backendV6Data);
    if (!d.ok) return d;
    backendV6Data = d.value;
  }
  return ok({
    key: node.name,
    ...(node.claimedAt !== undefined && { claimedAt: node.claimedAt }),
    ...(subnet !== undefined && { subnet }),
    ...(ipv6Subnet !== undefined && { ipv6Subnet }),
    attrs: {
      backendType,
      ...(publicIP !== undefined && { publicIP }),
      ...(publicIPv6 !== undefined && { publicIPv6 }),
      ...(backendData !== undefined && { backendData }),
      ...(backendV6Data !== undefined && { backendV6Data }),
    },
  });
}

/**
 * Backend data as flanneld writes it. VXLAN data is Go's marshaling of
 * `struct{VNI uint16; VtepMAC hardwareAddr}`: `{"VNI":1,"VtepMAC":"..."}`
 * in that key order; anything else is JSON as Go writes it (`null` when
 * absent; `<`, `>`, `&` escaped, as in extension data).
 */
export function backendDataJson(type: string, data: unknown): string {
  if (
    type === "vxlan" && typeof data === "object" && data !== null &&
    "VtepMAC" in data
  ) {
    const d = data as { VNI?: unknown; VtepMAC: unknown };
    return JSON.stringify({ VNI: d.VNI ?? 0, VtepMAC: d.VtepMAC });
  }
  return goJson(data ?? null);
}

/**
 * The annotations our node must carry for `attrs`, as flanneld's
 * `AcquireLease` sets them, given what the node has now. Returns only the
 * keys whose value must change (empty: nothing to patch).
 * `public-ip-overwrite` / `public-ipv6-overwrite`, when set, are published
 * instead of our own address.
 */
export function annotationPatch(
  current: Readonly<Record<string, string>>,
  attrs: LeaseAttrs,
  keys: AnnotationKeys,
): Record<string, string> {
  const want: Record<string, string> = {};
  const type = attrs.backendType;
  want[keys.backendType] = type;
  // flanneld writes IPv4 data for vxlan only when there is some, and for
  // every other backend always; IPv6 data when there is some (vxlan) or an
  // IPv6 public address (other backends).
  const v4 = type === "vxlan"
    ? attrs.backendData !== undefined && attrs.backendData !== null
    : true;
  if (v4) {
    // flanneld's extension backend publishes empty data (not `null`) when
    // it has no PreStartupCommand output.
    want[keys.backendData] = type === "extension" &&
        attrs.backendData === undefined
      ? ""
      : backendDataJson(type, attrs.backendData);
    const over = current[keys.publicIPOverwrite];
    const ip = over !== undefined && over !== "" ? over : attrs.publicIP;
    if (ip !== undefined) want[keys.publicIP] = ip;
  }
  const v6 = type === "vxlan"
    ? attrs.backendV6Data !== undefined && attrs.backendV6Data !== null
    : attrs.publicIPv6 !== undefined;
  if (v6) {
    want[keys.backendV6Data] = backendDataJson(type, attrs.backendV6Data);
    const over = current[keys.publicIPv6Overwrite];
    const ip = over !== undefined && over !== "" ? over : attrs.publicIPv6;
    if (ip !== undefined) want[keys.publicIPv6] = ip;
  }
  want[keys.subnetKubeManaged] = "true";
  const patch: Record<string, string> = {};
  for (const [k, v] of Object.entries(want)) {
    if (current[k] !== v) patch[k] = v;
  }
  return patch;
}

/**
 * Checks our own node's pod CIDRs against the network config and returns
 * our subnets; errors use flanneld's wording and name both prefixes.
 */
export function ownSubnets(
  name: string,
  cidrs: readonly string[],
  config: NetworkConfig,
): Result<{ subnet?: string; ipv6Subnet?: string }> {
  if (cidrs.length === 0) {
    return fail(`node ${quote(name)} pod cidr not assigned`);
  }
  const split = splitPodCidrs(name, cidrs);
  if (!split.ok) return split;
  const { v4, v6 } = split.value;
  let subnet: string | undefined;
  let ipv6Subnet: string | undefined;
  if (config.enableIPv4) {
    if (v4 === undefined) {
      return fail(
        `node ${
          quote(name)
        } has no IPv4 PodCIDR but the flannel net config enables IPv4 (podCIDRs ${
          quote(cidrs)
        })`,
      );
    }
    const network = config.network!;
    if (!netContainsNet(network, v4)) {
      return fail(
        `subnet "${
          formatNet(network)
        }" specified in the flannel net config doesn't contain "${
          formatNet(v4)
        }" PodCIDR of the ${quote(name)} node`,
      );
    }
    subnet = formatNet(v4);
  }
  if (config.enableIPv6) {
    if (v6 === undefined) {
      return fail(
        `node ${
          quote(name)
        } has no IPv6 PodCIDR but the flannel net config enables IPv6 (podCIDRs ${
          quote(cidrs)
        })`,
      );
    }
    const network = config.ipv6Network!;
    if (!netContainsNet(network, v6)) {
      return fail(
        `subnet "${
          formatNet(network)
        }" specified in the flannel net config doesn't contain "${
          formatNet(v6)
        }" IPv6 PodCIDR of the ${quote(name)} node`,
      );
    }
    ipv6Subnet = formatNet(v6);
  }
  return ok({
    ...(subnet !== undefined && { subnet }),
    ...(ipv6Subnet !== undefined && { ipv6Subnet }),
  });
}

/**
 * The `node-public-ip` / `node-public-ipv6` annotations: addresses a user
 * set on the node for the agent to use as `--public-ip` / `--public-ipv6`.
 * Empty or absent means no override; anything else must be an address of
 * the right family.
 */
export function nodePublicIPOverride(
  name: string,
  annotations: Readonly<Record<string, string>>,
  keys: AnnotationKeys,
): Result<{ ipv4?: string; ipv6?: string }> {
  const out: { ipv4?: string; ipv6?: string } = {};
  for (
    const [key, family] of [
      [keys.nodePublicIP, 4],
      [keys.nodePublicIPv6, 6],
    ] as const
  ) {
    const v = annotations[key];
    if (v === undefined || v === "") continue;
    const ip = parseIp(v);
    if (!ip.ok || ip.value.family !== family) {
      return fail(
        `Invalid annotation ${key}=${quote(v)} on node ${
          quote(name)
        }: not an IPv${family} address`,
      );
    }
    if (family === 4) out.ipv4 = normalizeIp(v)!;
    else out.ipv6 = normalizeIp(v)!;
  }
  return ok(out);
}
