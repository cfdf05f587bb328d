/**
 * The etcd data model flanneld uses, as pure codecs: key names
 * (`<prefix>/subnets/10.5.52.0-24`, dual stack
 * `10.5.52.0-24&fc00::-64`, flanneld's `MakeSubnetKey`/`ParseSubnetKey`)
 * and lease values (Go's `json.Marshal` of flanneld's `LeaseAttrs`, byte for
 * byte, so a cluster can mix weft and flanneld nodes). Decoding never
 * throws: it returns the lease or the reason it cannot be read; checking
 * the lease against the network config is the LeaseTable's job.
 *
 * @module
 */
import { formatNet, parseIpNet } from "../../lib/ip.ts";
import type { Lease, LeaseAttrs } from "../lease.ts";
import { fail, ok, type Result } from "../../lib/result.ts";
import { quote } from "../../lib/log.ts";

/** flanneld's default `--etcd-prefix`. */
export const DEFAULT_PREFIX = "/coreos.com/network";

/**
 * Joins and cleans a key path the way Go's `path.Join` does (flanneld builds
 * every key with it): repeated and trailing slashes go, `.` and `..`
 * elements are resolved.
 */
export function joinKey(...parts: string[]): string {
  const joined = parts.filter((p) => p !== "").join("/");
  if (joined === "") return "";
  const rooted = joined.startsWith("/");
  const out: string[] = [];
  for (const el of joined.split("/")) {
    if (el === "" || el === ".") continue;
    if (el === "..") {
      if (out.length > 0 && out[out.length - 1] !== "..") out.pop();
      else if (!rooted) out.push("..");
      continue;
    }
    out.push(el);
  }
  const body = out.join("/");
  return rooted ? `/${body}` : body === "" ? "." : body;
}

/** The key holding the network config: `<prefix>/config`. */
export function configKey(prefix: string): string {
  return joinKey(prefix, "config");
}

/** The directory of lease keys, with its trailing slash: `<prefix>/subnets/`. */
export function subnetsDir(prefix: string): string {
  return `${joinKey(prefix, "subnets")}/`;
}

/**
 * The IPv4 part of an IPv6-only lease key: flanneld names such a lease
 * `0.0.0.0-0&fc00:0:0:5::-64` (its key always starts with an IPv4 subnet,
 * here the empty one) and stores `"PublicIP":"0.0.0.0"` in it.
 */
export const NO_IPV4_SUBNET = "0.0.0.0/0";

/** Subnets of a lease key, canonical `addr/len` strings. */
export interface SubnetPair {
  readonly subnet: string;
  readonly ipv6Subnet?: string;
}

/**
 * The key name of a lease, flanneld's `MakeSubnetKey`:
 * `10.5.52.0-24`, or `10.5.52.0-24&fc00::-64` with an IPv6 subnet
 * (IPv6 only: `0.0.0.0-0&fc00::-64`, see {@linkcode NO_IPV4_SUBNET}).
 */
export function subnetKeyName(pair: SubnetPair): string {
  const name = pair.subnet.replace("/", "-");
  return pair.ipv6Subnet === undefined
    ? name
    : `${name}&${pair.ipv6Subnet.replace("/", "-")}`;
}

/** The full etcd key of a lease: `<prefix>/subnets/<name>`. */
export function subnetKey(prefix: string, pair: SubnetPair): string {
  return joinKey(prefix, "subnets", subnetKeyName(pair));
}

// flanneld's subnetRegex, anchored at both ends: a name must be a subnet,
// not merely end like one. IPv6 hex digits are lower case only, as there.
const KEY_NAME =
  /^(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})-(\d{1,3})(?:&([0-9a-f:]+)-(\d{1,3}))?$/;

/**
 * Parses a key name (the part after `subnets/`), flanneld's
 * `ParseSubnetKey`. Host bits are kept as written: the lease validation
 * reports them.
 */
export function parseSubnetKeyName(name: string): Result<SubnetPair> {
  const m = KEY_NAME.exec(name);
  if (!m) return fail(`Key name ${quote(name)} is not a subnet`);
  const v4 = parseIpNet(`${m[1]}/${m[2]}`);
  if (!v4.ok || v4.value.family !== 4) {
    return fail(`Key name ${quote(name)} is not a subnet: bad IPv4 part`);
  }
  if (m[3] === undefined) return ok({ subnet: formatNet(v4.value) });
  const v6 = parseIpNet(`${m[3]}/${m[4]}`);
  if (!v6.ok || v6.value.family !== 6) {
    return fail(`Key name ${quote(name)} is not a subnet: bad IPv6 part`);
  }
  return ok({ subnet: formatNet(v4.value), ipv6Subnet: formatNet(v6.value) });
}

/**
 * Parses a full key under `dir` (from {@linkcode subnetsDir}) into its
 * subnets.
 */
export function parseSubnetKey(key: string, dir: string): Result<SubnetPair> {
  if (!key.startsWith(dir)) {
    return fail(`Key ${quote(key)} is not under "${dir}"`);
  }
  return parseSubnetKeyName(key.slice(dir.length));
}

/**
 * JSON text as Go's `encoding/json` writes it: compact, with `<`, `>`, `&`,
 * U+2028 and U+2029 escaped (Go's default HTML-safe escaping).
 */
export function goJson(value: unknown): string {
  return (JSON.stringify(value) ?? "null").replace(
    /[<>&\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/**
 * Encodes lease attributes as flanneld stores them (`json.Marshal` of its
 * `LeaseAttrs`): `PublicIP` always (`"0.0.0.0"` when unset), `PublicIPv6`
 * always (`null` when unset), then `BackendType`, `BackendData` and
 * `BackendV6Data`, each omitted when empty.
 *
 * @example
 * ```ts
 * encodeLeaseAttrs({ publicIP: "192.168.64.3", backendType: "vxlan",
 *   backendData: { VNI: 1, VtepMAC: "3a:bb:55:60:be:4e" } });
 * // {"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:bb:55:60:be:4e"}}
 * ```
 */
export function encodeLeaseAttrs(attrs: LeaseAttrs): string {
  let out = `{"PublicIP":${goJson(attrs.publicIP ?? "0.0.0.0")}`;
  out += `,"PublicIPv6":${
    attrs.publicIPv6 === undefined ? "null" : goJson(attrs.publicIPv6)
  }`;
  if (attrs.backendType !== "") {
    out += `,"BackendType":${goJson(attrs.backendType)}`;
  }
  if (attrs.backendData !== undefined && attrs.backendData !== null) {
    out += `,"BackendData":${goJson(attrs.backendData)}`;
  }
  if (attrs.backendV6Data !== undefined && attrs.backendV6Data !== null) {
    out += `,"BackendV6Data":${goJson(attrs.backendV6Data)}`;
  }
  return out + "}";
}

const ATTR_FIELDS = [
  "PublicIP",
  "PublicIPv6",
  "BackendType",
  "BackendData",
  "BackendV6Data",
] as const;
type AttrField = typeof ATTR_FIELDS[number];
/** Field by lower-cased name: one `toLowerCase` per key read, not 2 per field. */
const FIELD_BY_LOWER = new Map<string, AttrField>(
  ATTR_FIELDS.map((f) => [f.toLowerCase(), f]),
);

/**
 * Decodes a lease value the way Go's `json.Unmarshal` fills flanneld's
 * `LeaseAttrs`: field names match case-insensitively (the last duplicate
 * wins), unknown fields are ignored, `null` means absent. Types are
 * checked here; addresses and backend data are checked by the lease
 * validation.
 */
export function decodeLeaseAttrs(text: string): Result<LeaseAttrs> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return fail(
      `Cannot parse lease value ${quote(text)}: ${(e as Error).message}`,
    );
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    return fail(`Cannot parse lease value ${quote(text)}: not a JSON object`);
  }
  const fields = new Map<AttrField, unknown>();
  for (const [k, v] of Object.entries(doc)) {
    const name = FIELD_BY_LOWER.get(k.toLowerCase());
    if (name !== undefined) fields.set(name, v);
  }
  const str = (name: AttrField): Result<string | undefined> => {
    const v = fields.get(name);
    if (v === undefined || v === null) return ok(undefined);
    if (typeof v !== "string") {
      return fail(`Invalid lease value: ${name} ${quote(v)} is not a string`);
    }
    return ok(v);
  };
  const publicIP = str("PublicIP");
  if (!publicIP.ok) return publicIP;
  const publicIPv6 = str("PublicIPv6");
  if (!publicIPv6.ok) return publicIPv6;
  const backendType = str("BackendType");
  if (!backendType.ok) return backendType;
  const data = fields.get("BackendData");
  const v6Data = fields.get("BackendV6Data");
  return ok({
    backendType: backendType.value ?? "",
    ...(publicIP.value !== undefined && { publicIP: publicIP.value }),
    ...(publicIPv6.value !== undefined && { publicIPv6: publicIPv6.value }),
    ...(data !== undefined && data !== null && { backendData: data }),
    ...(v6Data !== undefined && v6Data !== null && { backendV6Data: v6Data }),
  });
}

/**
 * Turns an etcd key and value under `dir` into a lease, or the reason it
 * is not one. The lease key is the full etcd key.
 */
export function leaseFromKv(
  key: string,
  value: string,
  dir: string,
  expiration?: Date,
  createRevision?: bigint,
): Result<Lease> {
  const pair = parseSubnetKey(key, dir);
  if (!pair.ok) return pair;
  const attrs = decodeLeaseAttrs(value);
  if (!attrs.ok) return attrs;
  return ok({
    key,
    subnet: pair.value.subnet,
    ...(pair.value.ipv6Subnet !== undefined &&
      { ipv6Subnet: pair.value.ipv6Subnet }),
    attrs: attrs.value,
    ...(expiration !== undefined && { expiration }),
    ...(createRevision !== undefined && { createdAt: Number(createRevision) }),
  });
}
