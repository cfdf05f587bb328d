/**
 * The flannel CNI plugin's pure half: its network configuration (conflist
 * entry of type `flannel`) and the delegate configuration it renders for
 * the real plugin (`bridge` by default) from subnet.env. The merge rules
 * are those of flannel-io/cni-plugin (`cmdAdd`, `doCmdAdd`,
 * `getDelegateIPAM`), and the bytes are those of Go's `json.Marshal` of
 * the delegate map (keys sorted, `<>&` escaped), so the file stored for
 * DEL is interchangeable with one written by the Go plugin.
 *
 * @module
 */
import {
  canonicalNet,
  formatNet,
  ipString,
  parseIp,
  parseIpNet,
} from "../lib/ip.ts";
import type { SubnetEnvFile } from "../subnet/subnet_env.ts";

/** Where subnet.env is read when the configuration does not say. */
export const DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env";
/** Where delegate configurations are stored for DEL. */
export const DEFAULT_DATA_DIR = "/var/lib/cni/flannel";

type Json = Record<string, unknown>;

/** The flannel plugin's configuration, as the runtime passes it on stdin. */
export interface FlannelNetConf {
  readonly cniVersion: string;
  readonly name: string;
  readonly subnetFile: string;
  readonly dataDir: string;
  /** `delegate` as given; see {@linkcode validateDelegate}. */
  readonly delegate: Json;
  /** `ipam`, merged into the delegate's. */
  readonly ipam?: Json;
  /** `runtimeConfig`, copied into the delegate. */
  readonly runtimeConfig?: Json;
  /** `prevResult` (CHECK). */
  readonly prevResult?: unknown;
  /** The whole configuration as parsed. */
  readonly raw: Json;
}

/** A CNI error: spec code and message. */
export interface CniFailure {
  readonly code: number;
  readonly msg: string;
  readonly details?: string;
}

/** A value, or the CNI error that replaces it. */
export type CniResult<T> = { ok: true; value: T } | {
  ok: false;
  reason: CniFailure;
};

function ok<T>(value: T): CniResult<T> {
  return { ok: true, value };
}

/** CNI error codes (CNI spec, "Error codes"). */
export const CNI_ERR = {
  incompatibleVersion: 1,
  unsupportedField: 2,
  unknownContainer: 3,
  invalidEnv: 4,
  ioFailure: 5,
  decodingFailure: 6,
  invalidNetworkConfig: 7,
  tryAgainLater: 11,
  pluginNotAvailable: 50,
  internal: 999,
} as const;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Parses the plugin configuration. Defaults: `subnetFile`
 * {@linkcode DEFAULT_SUBNET_FILE}, `dataDir` {@linkcode DEFAULT_DATA_DIR}.
 */
export function parseNetConf(text: string): CniResult<FlannelNetConf> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    return failCni(
      CNI_ERR.decodingFailure,
      `Cannot parse network configuration: ${(e as Error).message}`,
    );
  }
  if (!isObject(raw)) {
    return failCni(
      CNI_ERR.decodingFailure,
      "Cannot parse network configuration: not a JSON object",
    );
  }
  const str = (key: string, def: string): CniResult<string> => {
    const v = raw[key];
    if (v === undefined || v === null || v === "") return ok(def);
    if (typeof v !== "string") {
      return failCni(
        CNI_ERR.decodingFailure,
        `Cannot parse network configuration: "${key}" must be a string`,
      );
    }
    return ok(v);
  };
  const obj = (key: string): CniResult<Json | undefined> => {
    const v = raw[key];
    if (v === undefined || v === null) return ok(undefined);
    if (!isObject(v)) {
      return failCni(
        CNI_ERR.decodingFailure,
        `Cannot parse network configuration: "${key}" must be an object`,
      );
    }
    return ok(v);
  };
  const cniVersion = str("cniVersion", "");
  const name = str("name", "");
  const subnetFile = str("subnetFile", DEFAULT_SUBNET_FILE);
  const dataDir = str("dataDir", DEFAULT_DATA_DIR);
  const delegate = obj("delegate");
  const ipam = obj("ipam");
  const runtimeConfig = obj("runtimeConfig");
  for (
    const r of [
      cniVersion,
      name,
      subnetFile,
      dataDir,
      delegate,
      ipam,
      runtimeConfig,
    ]
  ) {
    if (!r.ok) return r;
  }
  const d = { ...(delegate.ok && delegate.value ? delegate.value : {}) };
  const value = (r: CniResult<unknown>) => (r as { value: unknown }).value;
  return ok({
    cniVersion: value(cniVersion) as string,
    name: value(name) as string,
    subnetFile: value(subnetFile) as string,
    dataDir: value(dataDir) as string,
    delegate: d,
    ...(value(ipam) ? { ipam: value(ipam) as Json } : {}),
    ...(value(runtimeConfig)
      ? { runtimeConfig: value(runtimeConfig) as Json }
      : {}),
    ...(raw.prevResult !== undefined ? { prevResult: raw.prevResult } : {}),
    raw,
  });
}

/**
 * flannel's checks on `delegate` before ADD: a `type`, if any, is a
 * string; `name` and `ipam` are set by flannel and must not be given.
 */
export function validateDelegate(conf: FlannelNetConf): CniFailure | undefined {
  const d = conf.delegate;
  if ("type" in d && typeof d.type !== "string") {
    return fail(
      CNI_ERR.invalidNetworkConfig,
      `Invalid "delegate": "type" must be a string, got ${
        JSON.stringify(d.type)
      }`,
    );
  }
  if ("name" in d) {
    return fail(
      CNI_ERR.invalidNetworkConfig,
      `Invalid "delegate": it must not have "name", flannel sets it`,
    );
  }
  if ("ipam" in d) {
    return fail(
      CNI_ERR.invalidNetworkConfig,
      `Invalid "delegate": it must not have "ipam", flannel sets it`,
    );
  }
  return undefined;
}

function fail(code: number, msg: string): CniFailure {
  return { code, msg };
}

function failCni<T>(code: number, msg: string): CniResult<T> {
  return { ok: false, reason: { code, msg } };
}

/**
 * A value Go marshals as a struct: fields in declaration order, not
 * sorted like map keys.
 */
export class GoStruct {
  constructor(readonly fields: readonly (readonly [string, unknown])[]) {}
}

/** A CNI `types.Route` (`dst`, `gw`, then the 1.2 additions), omitempty. */
function parseRoute(v: unknown, i: number): CniResult<GoStruct> {
  const bad = (why: string) =>
    failCni<GoStruct>(
      CNI_ERR.invalidNetworkConfig,
      `Invalid "ipam.routes[${i}]": ${why}`,
    );
  if (!isObject(v)) return bad("not an object");
  const dst = typeof v.dst === "string" ? parseIpNet(v.dst) : undefined;
  if (!dst?.ok) return bad(`"dst" ${JSON.stringify(v.dst)} is not a CIDR`);
  const fields: [string, unknown][] = [["dst", formatNet(dst.value)]];
  if (v.gw !== undefined && v.gw !== null && v.gw !== "") {
    const gw = typeof v.gw === "string" ? parseIp(v.gw) : undefined;
    if (!gw?.ok) {
      return bad(`"gw" ${JSON.stringify(v.gw)} is not an IP address`);
    }
    fields.push(["gw", ipString(gw.value)]);
  }
  for (const key of ["mtu", "advmss", "priority"]) {
    const n = v[key];
    if (n === undefined || n === null || n === 0) continue;
    if (typeof n !== "number" || !Number.isInteger(n)) {
      return bad(`"${key}" must be an integer`);
    }
    fields.push([key, n]);
  }
  for (const key of ["table", "scope"]) {
    const n = v[key];
    if (n === undefined || n === null) continue;
    if (typeof n !== "number" || !Number.isInteger(n)) {
      return bad(`"${key}" must be an integer`);
    }
    fields.push([key, n]);
  }
  return ok(new GoStruct(fields));
}

/**
 * Renders the delegate configuration (flannel's `doCmdAdd`): the
 * delegate gets `name`, `type` (default `bridge`), `ipMasq` (default the
 * opposite of FLANNEL_IPMASQ), `mtu` (default FLANNEL_MTU), `isGateway`
 * (bridge, default true), the configuration's `cniVersion`, its
 * `runtimeConfig`, and an `ipam` built from its `ipam` (type default
 * `host-local`) with `ranges` from the subnets and `routes` to the
 * networks appended to any given.
 */
export function renderDelegate(
  conf: FlannelNetConf,
  env: SubnetEnvFile,
): CniResult<Json> {
  const d: Json = { ...conf.delegate };
  if (conf.runtimeConfig) d.runtimeConfig = conf.runtimeConfig;
  d.name = conf.name;
  if (!("type" in d)) d.type = "bridge";
  if (!("ipMasq" in d)) d.ipMasq = !env.ipMasq;
  if (!("mtu" in d)) d.mtu = env.mtu;
  if (d.type === "bridge" && !("isGateway" in d)) d.isGateway = true;
  if (conf.cniVersion !== "") d.cniVersion = conf.cniVersion;

  const ipam: Json = { ...(conf.ipam ?? {}) };
  if (!("type" in ipam)) ipam.type = "host-local";
  const ranges: Json[][] = [];
  if (env.subnet) ranges.push([{ subnet: env.subnet }]);
  if (env.ipv6Subnet) ranges.push([{ subnet: env.ipv6Subnet }]);
  ipam.ranges = ranges;
  const routes: GoStruct[] = [];
  const given = conf.ipam?.routes;
  if (given !== undefined && given !== null) {
    if (!Array.isArray(given)) {
      return failCni(
        CNI_ERR.invalidNetworkConfig,
        `Invalid "ipam.routes": not a list`,
      );
    }
    for (const [i, r] of given.entries()) {
      const route = parseRoute(r, i);
      if (!route.ok) return route;
      routes.push(route.value);
    }
  }
  for (const nw of [...env.networks, ...env.ipv6Networks]) {
    const net = parseIpNet(nw);
    if (net.ok) {
      routes.push(new GoStruct([["dst", formatNet(canonicalNet(net.value))]]));
    }
  }
  ipam.routes = routes;
  d.ipam = ipam;
  return ok(d);
}

function goString(s: string): string {
  return JSON.stringify(s)
    .replaceAll("<", "\\u003c")
    .replaceAll(">", "\\u003e")
    .replaceAll("&", "\\u0026")
    .replaceAll("\u2028", "\\u2028")
    .replaceAll("\u2029", "\\u2029");
}

/**
 * Go's `json.Marshal` of decoded JSON: object keys sorted, arrays and
 * scalars as they are, {@linkcode GoStruct} fields in order, HTML
 * characters escaped.
 */
export function goMarshal(v: unknown): string {
  if (v instanceof GoStruct) {
    return `{${
      v.fields.map(([k, x]) => `${goString(k)}:${goMarshal(x)}`).join(",")
    }}`;
  }
  if (v === null || v === undefined) return "null";
  if (typeof v === "string") return goString(v);
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new Error(`Cannot marshal number ${v}`);
    return JSON.stringify(v);
  }
  if (typeof v === "boolean") return v ? "true" : "false";
  if (Array.isArray(v)) return `[${v.map(goMarshal).join(",")}]`;
  if (typeof v === "object") {
    const o = v as Json;
    const keys = Object.keys(o).filter((k) => o[k] !== undefined).sort();
    return `{${
      keys.map((k) => `${goString(k)}:${goMarshal(o[k])}`).join(",")
    }}`;
  }
  throw new Error(`Cannot marshal a ${typeof v}`);
}
