/**
 * The flannel CNI plugin (conflist type `flannel`), run by the container
 * runtime as `/opt/cni/bin/flannel`, which is the weft binary under that
 * name. ADD reads subnet.env, renders the delegate configuration (see
 * ./delegate.ts), stores it as `<dataDir>/<containerID>` and runs the
 * delegate plugin (`bridge`) found in `CNI_PATH`; DEL runs the delegate
 * with the stored configuration and removes it (nothing stored: success;
 * a stored file that cannot be read: DEL with the configuration ADD would
 * render now, and a CNI error naming the file if that fails too); CHECK
 * runs the delegate's CHECK with the stored configuration. ADD, DEL and
 * CHECK of one container run one at a time across processes, under an
 * exclusive lock on `<dataDir>/.locks/<containerID>`, which exists while
 * the stored configuration does. Errors are printed as CNI error JSON on
 * stdout with exit status 1.
 *
 * Where weft differs from the Go plugin: CHECK is delegated (the Go
 * plugin's is a no-op; see {@linkcode withRouteGateways}), a missing subnet.env is "try again later" (11)
 * rather than an internal error, and STATUS (CNI 1.1) reports whether
 * subnet.env is there.
 *
 * @module
 */
import { readBounded } from "../lib/bytes.ts";
import {
  missingSubnetEnvKeys,
  parseSubnetEnv,
  type SubnetEnvFile,
} from "../subnet/subnet_env.ts";
import { writeFileAtomic } from "../lib/atomic_write.ts";
import { type FileLock, lockFile } from "../lib/file_lock.ts";
import { runCommand } from "../lib/command.ts";
import {
  CNI_ERR,
  type CniFailure,
  type FlannelNetConf,
  goMarshal,
  parseNetConf,
  renderDelegate,
  validateDelegate,
} from "./delegate.ts";

/** CNI versions this plugin accepts in a configuration. */
export const SUPPORTED_VERSIONS = [
  "0.1.0",
  "0.2.0",
  "0.3.0",
  "0.3.1",
  "0.4.0",
  "1.0.0",
  "1.1.0",
] as const;

/** Output of a delegate plugin run. */
export interface ExecOutput {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Side effects of the plugin, injectable for tests. */
export interface CniDeps {
  /** Writes to the plugin's stdout (the CNI result channel). */
  readonly stdout: (text: string) => void;
  /** Writes to the plugin's stderr (the runtime logs it). */
  readonly stderr: (text: string) => void;
  /** Reads a file; rejects with `Deno.errors.NotFound` when missing. */
  readonly readTextFile: (path: string) => Promise<string>;
  /** Writes a file atomically, creating its directory. */
  readonly writeFile: (
    path: string,
    data: string,
    mode: number,
    dirMode: number,
  ) => Promise<void>;
  /** Removes a file; a missing file is not an error. */
  readonly remove: (path: string) => Promise<void>;
  /**
   * Waits for the exclusive lock on `path` (across processes), creating
   * the file and its directory (mode 0700).
   */
  readonly lock: (path: string) => Promise<FileLock>;
  /**
   * Runs a plugin binary with exactly `env` (the `CNI_*` variables,
   * `CNI_COMMAND` set for the delegate, and `PATH`); rejects with
   * `Deno.errors.NotFound` when there is no such file. Nothing else is
   * inherited: a runtime's environment may hold `LD_LIBRARY_PATH`
   * (containerd's does), and Deno refuses to start a child that would
   * inherit an `LD_*` variable unless every program may be run.
   */
  readonly exec: (
    path: string,
    env: Record<string, string>,
    stdin: string,
  ) => Promise<ExecOutput>;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** The real side effects, through Deno. */
export const denoCniDeps: CniDeps = {
  stdout: (text) => {
    Deno.stdout.writeSync(enc.encode(text));
  },
  stderr: (text) => {
    Deno.stderr.writeSync(enc.encode(text));
  },
  readTextFile: (path) => Deno.readTextFile(path),
  writeFile: (path, data, mode, dirMode) =>
    writeFileAtomic(path, data, mode, dirMode),
  remove: async (path) => {
    try {
      await Deno.remove(path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  },
  exec: (path, env, stdin) =>
    runCommand([path], { env, stdin, clearEnv: true }),
  lock: (path) => lockFile(path, 0o700),
};

class CniError extends Error {
  constructor(readonly failure: CniFailure) {
    super(failure.msg);
  }
}

function cniFail(code: number, msg: string): never {
  throw new CniError({ code, msg });
}

function versionAtLeast(v: string, min: string): boolean {
  const a = v.split(".").map(Number);
  const b = min.split(".").map(Number);
  for (let i = 0; i < 3; i++) {
    const x = a[i] ?? 0, y = b[i] ?? 0;
    if (x !== y) return x > y;
  }
  return true;
}

/** The variables of the CNI protocol (spec, "Parameters"). */
export const CNI_VARS = [
  "CNI_COMMAND",
  "CNI_CONTAINERID",
  "CNI_NETNS",
  "CNI_IFNAME",
  "CNI_ARGS",
  "CNI_PATH",
] as const;

const CONTAINER_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$/;

function requireEnv(
  env: Record<string, string | undefined>,
  command: string,
): void {
  const needed = ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
    .filter((k) => !(command === "DEL" && k === "CNI_NETNS"));
  const missing = needed.filter((k) => !env[k]);
  if (missing.length) {
    cniFail(
      CNI_ERR.invalidEnv,
      `Required environment variables ${
        missing.map((m) => `"${m}"`).join(", ")
      } missing`,
    );
  }
  const id = env.CNI_CONTAINERID!;
  if (!CONTAINER_ID.test(id)) {
    cniFail(
      CNI_ERR.invalidEnv,
      `Invalid CNI_CONTAINERID "${id}": only letters, digits, "_", "." and "-" are allowed`,
    );
  }
  const ifname = env.CNI_IFNAME!;
  if (
    ifname.length > 15 || ifname === "." || ifname === ".." ||
    /[/:\s]/.test(ifname)
  ) {
    cniFail(CNI_ERR.invalidEnv, `Invalid CNI_IFNAME "${ifname}"`);
  }
}

function parseConf(stdin: string): FlannelNetConf {
  const conf = parseNetConf(stdin);
  if (!conf.ok) throw new CniError(conf.reason);
  const v = conf.value.cniVersion;
  if (v !== "" && !(SUPPORTED_VERSIONS as readonly string[]).includes(v)) {
    cniFail(
      CNI_ERR.incompatibleVersion,
      `Incompatible CNI version "${v}": the plugin supports ${
        SUPPORTED_VERSIONS.join(", ")
      }`,
    );
  }
  return conf.value;
}

async function loadSubnetEnv(
  deps: CniDeps,
  path: string,
): Promise<SubnetEnvFile> {
  let text: string;
  try {
    text = await deps.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      cniFail(
        CNI_ERR.tryAgainLater,
        `Subnet file "${path}" does not exist yet: the network agent (weft or flanneld) has not written it`,
      );
    }
    cniFail(
      CNI_ERR.ioFailure,
      `Cannot read subnet file "${path}": ${(e as Error).message}`,
    );
  }
  const env = parseSubnetEnv(text);
  if (!env.ok) {
    cniFail(CNI_ERR.internal, `Bad subnet file "${path}": ${env.reason}`);
  }
  const missing = missingSubnetEnvKeys(env.value);
  if (missing) {
    cniFail(
      CNI_ERR.tryAgainLater,
      `Subnet file "${path}" is missing ${missing}`,
    );
  }
  return env.value;
}

/**
 * Directories whose `bridge` the shipped build may run (deploy/permissions.txt
 * lists `<dir>/bridge` for each, and a test keeps the two equal): where
 * runtimes put the reference plugins. k3s's containerd has used `data/cni`
 * (symlinks to k3s's multi-call binary) since 2024, `data/current/bin`
 * before; Fedora and RHEL install them in `/usr/libexec/cni`, Debian in
 * `/usr/lib/cni`, everyone else in `/opt/cni/bin`.
 */
export const ALLOWED_DELEGATE_DIRS = [
  "/opt/cni/bin",
  "/usr/libexec/cni",
  "/usr/lib/cni",
  "/var/lib/rancher/k3s/data/cni",
  "/var/lib/rancher/k3s/data/current/bin",
] as const;

/** Runs the delegate plugin `type` from `CNI_PATH` for `command`. */
async function delegate(
  deps: CniDeps,
  env: Record<string, string | undefined>,
  command: "ADD" | "DEL" | "CHECK",
  type: string,
  conf: string,
): Promise<string> {
  if (type === "" || type.includes("/")) {
    cniFail(CNI_ERR.invalidNetworkConfig, `Invalid delegate type "${type}"`);
  }
  const childEnv: Record<string, string> = {};
  for (const k of [...CNI_VARS, "PATH"]) {
    const v = env[k];
    if (v !== undefined) childEnv[k] = v;
  }
  childEnv.CNI_COMMAND = command;
  const cniPath = env.CNI_PATH ?? "";
  // Candidates this process may not run: the build's --allow-run names each
  // delegate by the path it is run as (Deno checks that path as written, a
  // symlink's own path and not its target, and a directory there covers
  // none of its files), so a CNI_PATH directory outside that list is "not
  // here" (as a missing file is), not a failure.
  const notAllowed: string[] = [];
  for (const dir of cniPath.split(":").filter((d) => d !== "")) {
    const path = `${dir.replace(/\/+$/, "")}/${type}`;
    let out: ExecOutput;
    try {
      out = await deps.exec(path, childEnv, conf);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue;
      if (e instanceof Deno.errors.NotCapable) {
        notAllowed.push(path);
        continue;
      }
      const why = e instanceof Deno.errors.PermissionDenied
        ? "; it needs execute permission (and search permission on its directories) for the user weft runs as"
        : "";
      cniFail(
        CNI_ERR.internal,
        `Cannot run delegate plugin "${path}": ${(e as Error).message}${why}`,
      );
    }
    if (out.stderr) deps.stderr(out.stderr);
    if (out.code === 0) return out.stdout;
    // A delegate's CNI error goes out as it is (Go's skel does the same).
    let parsed: unknown;
    try {
      parsed = JSON.parse(out.stdout);
    } catch {
      parsed = undefined;
    }
    const p = parsed as Partial<CniFailure> | undefined;
    if (p && typeof p.code === "number" && typeof p.msg === "string") {
      throw new CniError({
        code: p.code,
        msg: p.msg,
        ...(typeof p.details === "string" && p.details
          ? { details: p.details }
          : {}),
      });
    }
    cniFail(
      CNI_ERR.internal,
      `Delegate plugin "${path}" ${command} exited ${out.code}: ${
        (out.stdout || out.stderr).trim()
      }`,
    );
  }
  cniFail(
    CNI_ERR.internal,
    `Cannot find delegate plugin "${type}" in CNI_PATH "${cniPath}"${
      notAllowed.length === 0
        ? ""
        : `: this weft build has no run permission on ${
          notAllowed.map((p) => `"${p}"`).join(", ")
        } (its --allow-run names each delegate by the path it is run as; the shipped list, deploy/permissions.txt, allows ${
          ALLOWED_DELEGATE_DIRS.map((d) => `"${d}/bridge"`).join(", ")
        })`
    }`,
  );
}

function storedPath(conf: FlannelNetConf, containerId: string): string {
  return `${dataDir(conf)}/${containerId}`;
}

/**
 * The container's lock file. `.locks` cannot be a stored configuration:
 * a container ID starts with a letter or digit.
 */
function lockPath(conf: FlannelNetConf, containerId: string): string {
  return `${dataDir(conf)}/.locks/${containerId}`;
}

function dataDir(conf: FlannelNetConf): string {
  return conf.dataDir.replace(/\/+$/, "");
}

/**
 * Runs `fn` under the container's lock (see the module doc). `fn` says
 * whether it left a configuration stored for the container; when none is
 * stored any more the lock file goes on the way out (after a failure,
 * the stored file is looked at to tell).
 */
async function underLock(
  deps: CniDeps,
  env: Record<string, string | undefined>,
  conf: FlannelNetConf,
  fn: () => Promise<boolean>,
): Promise<void> {
  const id = env.CNI_CONTAINERID!;
  const path = lockPath(conf, id);
  let lock: FileLock;
  try {
    lock = await deps.lock(path);
  } catch (e) {
    cniFail(
      CNI_ERR.ioFailure,
      `Cannot lock "${path}" for container "${id}": ${(e as Error).message}`,
    );
  }
  let stored: boolean | undefined;
  try {
    stored = await fn();
  } finally {
    stored ??= (await readStored(deps, storedPath(conf, id))).text !==
      undefined;
    await lock.release(!stored);
  }
}

/**
 * The configuration stored for a container: its text, nothing (never
 * added, or deleted), or why it cannot be read.
 */
async function readStored(
  deps: CniDeps,
  path: string,
): Promise<{ text?: string; cause?: string }> {
  try {
    return { text: await deps.readTextFile(path) };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return {};
    return { cause: `cannot be read (${(e as Error).message})` };
  }
}

function storedType(text: string): string | undefined {
  try {
    const v = JSON.parse(text) as { type?: unknown };
    return typeof v?.type === "string" ? v.type : undefined;
  } catch {
    return undefined;
  }
}

/** What ADD stores: the delegate configuration rendered from subnet.env. */
async function renderStored(
  deps: CniDeps,
  conf: FlannelNetConf,
): Promise<{ type: string; bytes: string }> {
  const subnetEnv = await loadSubnetEnv(deps, conf.subnetFile);
  const invalid = validateDelegate(conf);
  if (invalid) throw new CniError(invalid);
  const rendered = renderDelegate(conf, subnetEnv);
  if (!rendered.ok) throw new CniError(rendered.reason);
  return {
    type: rendered.value.type as string,
    bytes: goMarshal(rendered.value),
  };
}

async function cmdAdd(
  deps: CniDeps,
  env: Record<string, string | undefined>,
  conf: FlannelNetConf,
): Promise<boolean> {
  const { type, bytes } = await renderStored(deps, conf);
  const path = storedPath(conf, env.CNI_CONTAINERID!);
  try {
    await deps.writeFile(path, bytes, 0o600, 0o700);
  } catch (e) {
    cniFail(CNI_ERR.ioFailure, (e as Error).message);
  }
  const result = await delegate(deps, env, "ADD", type, bytes);
  deps.stdout(result);
  return true;
}

/**
 * DEL: the delegate's DEL with the stored configuration, then the file
 * goes. A stored file that cannot be read or parsed does not make DEL
 * succeed and leak: the delegate's DEL runs with the configuration ADD
 * would render now (same delegate, same IPAM store, so the veth and the
 * address are found by container and interface); only if that fails too
 * is DEL a CNI error naming the file and both causes, and the file stays
 * for the runtime's retry.
 */
async function cmdDel(
  deps: CniDeps,
  env: Record<string, string | undefined>,
  conf: FlannelNetConf,
): Promise<boolean> {
  const id = env.CNI_CONTAINERID!;
  const path = storedPath(conf, id);
  const { text: stored, cause: unreadable } = await readStored(deps, path);
  // Nothing stored: never added, or already deleted. Success per the spec.
  if (stored === undefined && unreadable === undefined) return false;
  const type = stored === undefined ? undefined : storedType(stored);
  if (type !== undefined) {
    await delegate(deps, env, "DEL", type, stored!);
    await deps.remove(path);
    return false;
  }
  const cause = unreadable ??
    `is not a delegate configuration (JSON with a "type")`;
  const unreleased: (why: string) => never = (why) =>
    cniFail(
      CNI_ERR.ioFailure,
      `Cannot release container "${id}": stored delegate configuration "${path}" ${cause}, and ${why}; its interface and address may remain`,
    );
  let derived: { type: string; bytes: string };
  try {
    derived = await renderStored(deps, conf);
  } catch (e) {
    unreleased(`none can be derived: ${(e as Error).message}`);
  }
  try {
    await delegate(deps, env, "DEL", derived.type, derived.bytes);
  } catch (e) {
    unreleased(
      `the delegate's DEL with the configuration derived from "${conf.subnetFile}" failed: ${
        (e as Error).message
      }`,
    );
  }
  deps.stderr(
    `Stored delegate configuration "${path}" ${cause}: released container "${id}" with the configuration derived from "${conf.subnetFile}"\n`,
  );
  await deps.remove(path);
  return false;
}

async function cmdCheck(
  deps: CniDeps,
  env: Record<string, string | undefined>,
  conf: FlannelNetConf,
): Promise<boolean> {
  if (conf.cniVersion !== "" && !versionAtLeast(conf.cniVersion, "0.4.0")) {
    cniFail(
      CNI_ERR.incompatibleVersion,
      `CNI version "${conf.cniVersion}" does not allow CHECK`,
    );
  }
  const path = storedPath(conf, env.CNI_CONTAINERID!);
  const { text: stored, cause } = await readStored(deps, path);
  if (cause !== undefined) {
    cniFail(
      CNI_ERR.ioFailure,
      `Stored delegate configuration "${path}" ${cause}`,
    );
  }
  if (stored === undefined) {
    cniFail(
      CNI_ERR.unknownContainer,
      `No delegate configuration stored for container "${env.CNI_CONTAINERID}" in "${conf.dataDir}"`,
    );
  }
  const parsed = JSON.parse(stored) as Record<string, unknown>;
  if (typeof parsed.type !== "string") {
    cniFail(
      CNI_ERR.internal,
      `Stored delegate configuration "${path}" has no "type"`,
    );
  }
  if (conf.cniVersion !== "") parsed.cniVersion = conf.cniVersion;
  if (conf.prevResult !== undefined) {
    parsed.prevResult = parsed.type === "bridge"
      ? withRouteGateways(conf.prevResult)
      : conf.prevResult;
  }
  await delegate(deps, env, "CHECK", parsed.type, goMarshal(parsed));
  return true;
}

/**
 * The bridge plugin installs an IPAM route without `gw` via the gateway of
 * its family (plugins' `ipam.ConfigureIface`), but its CHECK looks for the
 * route exactly as the result lists it, without a gateway, and so fails on
 * every healthy pod of flannel's configuration. The Go flannel plugin
 * avoids this by not checking at all; weft checks, with the gateway ADD
 * used filled in.
 */
export function withRouteGateways(prevResult: unknown): unknown {
  if (typeof prevResult !== "object" || prevResult === null) return prevResult;
  const r = prevResult as { ips?: unknown; routes?: unknown };
  if (!Array.isArray(r.ips) || !Array.isArray(r.routes)) return prevResult;
  const gateway = (v6: boolean): string | undefined => {
    for (const ip of r.ips as { address?: unknown; gateway?: unknown }[]) {
      if (
        typeof ip?.address === "string" && typeof ip.gateway === "string" &&
        ip.address.includes(":") === v6
      ) {
        return ip.gateway;
      }
    }
    return undefined;
  };
  const routes = (r.routes as Record<string, unknown>[]).map((route) => {
    if (typeof route?.dst !== "string" || route.gw) return route;
    const gw = gateway(route.dst.includes(":"));
    return gw === undefined ? route : { ...route, gw };
  });
  return { ...r, routes };
}

async function cmdStatus(
  deps: CniDeps,
  conf: FlannelNetConf,
): Promise<void> {
  try {
    await loadSubnetEnv(deps, conf.subnetFile);
  } catch (e) {
    if (e instanceof CniError) {
      throw new CniError({
        code: CNI_ERR.pluginNotAvailable,
        msg: e.failure.msg,
      });
    }
    throw e;
  }
}

/**
 * Runs one CNI command as the flannel plugin and returns the exit status
 * (0, or 1 after printing a CNI error). `env` holds the `CNI_*`
 * variables (others are ignored); `stdin` the network configuration.
 *
 * @example
 * ```ts
 * Deno.exit(await runCni({ CNI_COMMAND: "VERSION" }, ""));
 * ```
 */
export async function runCni(
  env: Record<string, string | undefined>,
  stdin: string,
  deps: CniDeps = denoCniDeps,
): Promise<number> {
  let version = "1.1.0";
  try {
    const command = env.CNI_COMMAND ?? "";
    if (command === "VERSION") {
      deps.stdout(
        JSON.stringify({
          cniVersion: "1.1.0",
          supportedVersions: SUPPORTED_VERSIONS,
        }) + "\n",
      );
      return 0;
    }
    if (command === "") {
      cniFail(
        CNI_ERR.invalidEnv,
        `Required environment variables "CNI_COMMAND" missing`,
      );
    }
    const conf = parseConf(stdin);
    if (conf.cniVersion !== "") version = conf.cniVersion;
    switch (command) {
      case "ADD":
        requireEnv(env, command);
        await underLock(deps, env, conf, () => cmdAdd(deps, env, conf));
        break;
      case "DEL":
        requireEnv(env, command);
        await underLock(deps, env, conf, () => cmdDel(deps, env, conf));
        break;
      case "CHECK":
        requireEnv(env, command);
        await underLock(deps, env, conf, () => cmdCheck(deps, env, conf));
        break;
      case "STATUS":
        await cmdStatus(deps, conf);
        break;
      case "GC":
        // Stored configurations are removed by DEL; nothing else to collect.
        break;
      default:
        cniFail(CNI_ERR.invalidEnv, `Unknown CNI_COMMAND "${command}"`);
    }
    return 0;
  } catch (e) {
    const failure = e instanceof CniError
      ? e.failure
      : { code: CNI_ERR.internal, msg: (e as Error).message ?? String(e) };
    deps.stdout(
      JSON.stringify({
        cniVersion: version,
        code: failure.code,
        msg: failure.msg,
        ...(failure.details ? { details: failure.details } : {}),
      }) + "\n",
    );
    return 1;
  }
}

/**
 * Whether this process was started as the CNI plugin: the executable is
 * named `flannel` (installed as `/opt/cni/bin/flannel`), or the first
 * argument is `cni`.
 */
export function isCniInvocation(
  execPath: string,
  args: readonly string[],
): boolean {
  const base = execPath.slice(execPath.lastIndexOf("/") + 1);
  return base === "flannel" || args[0] === "cni";
}

/** Largest network configuration accepted on stdin: 1 MiB. */
export const MAX_STDIN_BYTES = 1 << 20;

/** Reads stdin (at most 1 MiB), then {@linkcode runCni} with the `CNI_*` variables. */
export async function cniMain(deps: CniDeps = denoCniDeps): Promise<number> {
  const all = await readBounded(Deno.stdin.readable, MAX_STDIN_BYTES);
  if (all === undefined) {
    deps.stdout(
      JSON.stringify({
        cniVersion: "1.1.0",
        code: CNI_ERR.decodingFailure,
        msg:
          `Network configuration on stdin is larger than ${MAX_STDIN_BYTES} bytes`,
      }) + "\n",
    );
    return 1;
  }
  // The protocol's variables and PATH: `--allow-env=CNI_*,PATH` is enough.
  const env: Record<string, string | undefined> = {};
  for (const k of [...CNI_VARS, "PATH"]) env[k] = Deno.env.get(k);
  return await runCni(env, dec.decode(all), deps);
}
