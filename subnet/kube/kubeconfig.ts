/**
 * Parsing of a kubeconfig file (`--kubeconfig-file`), pure: the text in,
 * the server and credentials of the current context out, or a reason that
 * names the file and the field. Relative file paths are resolved against
 * the kubeconfig's directory, as client-go does. Reading the files it
 * names is the client's job. A kubeconfig in JSON (a subset of YAML), or
 * in YAML of the usual shape (block mappings and sequences of one-line
 * scalars, as kubeadm, k3s, kind and kubectl write them), is read without
 * loading the YAML parser: npm:yaml pulls in Deno's Node compatibility
 * layer (its cost is measured in bench/results/compare.md). Any other YAML
 * falls back to npm:yaml.
 *
 * @module
 */
import { fail, ok, type Result } from "../../lib/result.ts";
import { lowerScheme } from "../../lib/url.ts";
import { parseYamlSubset } from "./_yaml_subset.ts";

/** Where a PEM blob comes from: inline (`*-data`, decoded) or a file. */
export type PemSource = { readonly data: string } | { readonly file: string };

/** What weft needs from a kubeconfig's current context. */
export interface KubeconfigConnection {
  /** `clusters[].cluster.server`, e.g. `https://10.0.0.1:6443`. */
  readonly server: string;
  /** `certificate-authority(-data)`. */
  readonly ca?: PemSource;
  /** `client-certificate(-data)`, always with {@linkcode clientKey}. */
  readonly clientCert?: PemSource;
  readonly clientKey?: PemSource;
  /** `token`. */
  readonly token?: string;
  /** `tokenFile`, re-read when it changes. */
  readonly tokenFile?: string;
  /** `insecure-skip-tls-verify: true`. */
  readonly insecureSkipTlsVerify: boolean;
  /** Names for messages. */
  readonly context: string;
  readonly cluster: string;
  readonly user?: string;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function dirOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

function resolvePath(base: string, p: string): string {
  return p.startsWith("/") ? p : `${dirOf(base)}/${p}`;
}

function decodeBase64(text: string): string | undefined {
  try {
    const bin = atob(text.replace(/\s+/g, ""));
    return new TextDecoder().decode(
      Uint8Array.from(bin, (c) => c.charCodeAt(0)),
    );
  } catch {
    return undefined;
  }
}

/** Finds `name` in a kubeconfig list (`clusters`, `users`, `contexts`). */
function named(
  doc: Record<string, unknown>,
  list: string,
  inner: string,
  name: string,
): Record<string, unknown> | undefined {
  const items = doc[list];
  if (!Array.isArray(items)) return undefined;
  for (const item of items) {
    if (isObject(item) && item.name === name) {
      const v = item[inner];
      return isObject(v) ? v : {};
    }
  }
  return undefined;
}

/**
 * Parses kubeconfig `text` read from `path`. `serverOverride`
 * (`--kube-api-url`) replaces the cluster's server.
 *
 * `fullYaml` parses what the subset parser refuses; by default npm:yaml,
 * loaded only then.
 *
 * @example
 * ```ts
 * const c = await parseKubeconfig(Deno.readTextFileSync(p), p);
 * if (!c.ok) throw new Error(c.reason); // names the file and the field
 * ```
 */
export async function parseKubeconfig(
  text: string,
  path: string,
  serverOverride?: string,
  fullYaml: (text: string) => Promise<unknown> = async (t) =>
    (await import("./_yaml.ts")).parseYaml(t),
): Promise<Result<KubeconfigConnection>> {
  const where = `kubeconfig "${path}"`;
  let doc: unknown;
  try {
    if (text.trimStart().startsWith("{")) {
      doc = JSON.parse(text);
    } else {
      const subset = parseYamlSubset(text);
      doc = subset.ok ? subset.value : await fullYaml(text);
    }
  } catch (e) {
    return fail(
      `Cannot parse ${where}: ${(e as Error).message.split("\n")[0]}`,
    );
  }
  if (!isObject(doc)) return fail(`Cannot parse ${where}: not a YAML mapping`);
  const contextName = doc["current-context"];
  if (typeof contextName !== "string" || contextName === "") {
    return fail(`Cannot use ${where}: current-context is not set`);
  }
  const context = named(doc, "contexts", "context", contextName);
  if (context === undefined) {
    return fail(
      `Cannot use ${where}: current-context "${contextName}" is not in contexts`,
    );
  }
  const clusterName = context.cluster;
  if (typeof clusterName !== "string" || clusterName === "") {
    return fail(
      `Cannot use ${where}: context "${contextName}" has no cluster`,
    );
  }
  const cluster = named(doc, "clusters", "cluster", clusterName);
  if (cluster === undefined) {
    return fail(
      `Cannot use ${where}: cluster "${clusterName}" of context "${contextName}" is not in clusters`,
    );
  }
  const rawServer = serverOverride || cluster.server;
  const server = typeof rawServer === "string"
    ? lowerScheme(rawServer)
    : rawServer;
  if (typeof server !== "string" || server === "") {
    return fail(`Cannot use ${where}: cluster "${clusterName}" has no server`);
  }
  try {
    const u = new URL(server);
    if (u.protocol !== "https:" && u.protocol !== "http:") throw new Error();
  } catch {
    return fail(
      `Cannot use ${where}: server "${server}" of cluster "${clusterName}" is not an http(s) URL`,
    );
  }

  const pem = (
    obj: Record<string, unknown>,
    field: string,
    owner: string,
  ): Result<PemSource | undefined> => {
    const data = obj[`${field}-data`];
    if (data !== undefined && data !== null && data !== "") {
      const decoded = typeof data === "string" ? decodeBase64(data) : undefined;
      if (decoded === undefined || !decoded.includes("-----BEGIN")) {
        return fail(
          `Cannot use ${where}: ${field}-data of ${owner} is not base64-encoded PEM`,
        );
      }
      return ok({ data: decoded });
    }
    const file = obj[field];
    if (file !== undefined && file !== null && file !== "") {
      if (typeof file !== "string") {
        return fail(`Cannot use ${where}: ${field} of ${owner} is not a path`);
      }
      return ok({ file: resolvePath(path, file) });
    }
    return ok(undefined);
  };

  const clusterLabel = `cluster "${clusterName}"`;
  const ca = pem(cluster, "certificate-authority", clusterLabel);
  if (!ca.ok) return ca;
  const insecure = cluster["insecure-skip-tls-verify"] === true;

  let clientCert: PemSource | undefined;
  let clientKey: PemSource | undefined;
  let token: string | undefined;
  let tokenFile: string | undefined;
  const userName = context.user;
  if (typeof userName === "string" && userName !== "") {
    const user = named(doc, "users", "user", userName);
    if (user === undefined) {
      return fail(
        `Cannot use ${where}: user "${userName}" of context "${contextName}" is not in users`,
      );
    }
    const userLabel = `user "${userName}"`;
    for (const unsupported of ["exec", "auth-provider"]) {
      if (user[unsupported] !== undefined && user[unsupported] !== null) {
        return fail(
          `Cannot use ${where}: ${userLabel} uses ${unsupported}, which weft does not support; use a token, tokenFile or client certificate`,
        );
      }
    }
    const cert = pem(user, "client-certificate", userLabel);
    if (!cert.ok) return cert;
    const key = pem(user, "client-key", userLabel);
    if (!key.ok) return key;
    if ((cert.value === undefined) !== (key.value === undefined)) {
      const missing = cert.value === undefined
        ? "client-certificate"
        : "client-key";
      return fail(
        `Cannot use ${where}: ${userLabel} has no ${missing}(-data) to go with its ${
          missing === "client-key" ? "client-certificate" : "client-key"
        }`,
      );
    }
    clientCert = cert.value;
    clientKey = key.value;
    if (typeof user.token === "string" && user.token !== "") {
      token = user.token;
    } else if (typeof user.tokenFile === "string" && user.tokenFile !== "") {
      tokenFile = resolvePath(path, user.tokenFile);
    }
    if (user.username !== undefined || user.password !== undefined) {
      if (token === undefined && tokenFile === undefined && !clientCert) {
        return fail(
          `Cannot use ${where}: ${userLabel} uses username/password, which Kubernetes no longer supports`,
        );
      }
    }
  }
  return ok({
    server: server.replace(/\/+$/, ""),
    ...(ca.value !== undefined && { ca: ca.value }),
    ...(clientCert !== undefined && { clientCert }),
    ...(clientKey !== undefined && { clientKey }),
    ...(token !== undefined && { token }),
    ...(tokenFile !== undefined && { tokenFile }),
    insecureSkipTlsVerify: insecure,
    context: contextName,
    cluster: clusterName,
    ...(typeof userName === "string" && userName !== "" && { user: userName }),
  });
}
