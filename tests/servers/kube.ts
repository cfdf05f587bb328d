/**
 * A throwaway Kubernetes control plane for the kube-mode tests: etcd >= 3.5
 * and kube-apiserver (both built by `.ci/build_servers.sh`) on 127.0.0.1
 * with free ports, certificates generated with openssl (a CA, the serving
 * certificate for 127.0.0.1, client certificates on demand), a static admin
 * token in group `system:masters` (`--token-auth-file`), RBAC on and
 * service-account signing keys so the TokenRequest API works. There is no
 * controller manager: tests set pod CIDRs themselves. The apiserver can be
 * stopped and started again on the same port and etcd (watch resumption),
 * and etcd compacted (410 Gone). The admin helpers use plain fetch, not
 * weft's client, so they do not test weft with itself.
 *
 * @module
 */
import type { Need } from "../_gate.ts";
import { serverBinary } from "./paths.ts";
import { EtcdServer } from "./etcd.ts";
import { halt } from "../_netns.ts";
import {
  CLIENT_EXT,
  makeCa,
  SERVER_EXT,
  serviceAccountKeys,
  signedCert,
} from "./pki.ts";

/** A test need (`_gate.ts`): kube-apiserver and etcd >= 3.5 are built. */
export const KUBE_SERVERS: Need = async () =>
  (await kubeServersAvailable())
    ? undefined
    : "kube-apiserver or etcd >= 3.5 is missing (run .ci/build_servers.sh)";

/** Whether kube-apiserver and etcd >= 3.5 are built. */
export async function kubeServersAvailable(): Promise<
  { apiserver: string; etcd: string } | undefined
> {
  const apiserver = await serverBinary("kube-apiserver");
  const etcd = await serverBinary("etcd");
  return apiserver && etcd ? { apiserver, etcd } : undefined;
}

/** Options of {@linkcode KubeServers.start}. */
export interface KubeServersOptions {
  /** `--watch-cache`. Default true (as in production). */
  readonly watchCache?: boolean;
  /** Extra kube-apiserver flags. */
  readonly apiserverArgs?: readonly string[];
}

/** A client certificate and key, as files and PEM text. */
export interface ClientCert {
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: string;
  readonly key: string;
}

/** What a kubeconfig written by {@linkcode KubeServers.writeKubeconfig} holds. */
export interface KubeconfigSpec {
  readonly server?: string;
  /** PEM of the CA; default the cluster CA; null: none. */
  readonly caPem?: string | null;
  /** `insecure-skip-tls-verify: true`. */
  readonly insecure?: boolean;
  /** Write the CA as a file path rather than inline data. */
  readonly caAsFile?: boolean;
  readonly token?: string;
  readonly tokenFile?: string;
  readonly clientCert?: ClientCert;
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A JSON answer from the API server. */
export interface ApiAnswer<T = Record<string, unknown>> {
  readonly status: number;
  readonly body: T;
}

/** A running (or stopped) test control plane. */
export class KubeServers implements AsyncDisposable {
  readonly dir: string;
  readonly etcd: EtcdServer;
  readonly adminToken: string;
  readonly caFile: string;
  readonly caPem: string;
  readonly port: number;
  readonly #bin: string;
  readonly #opts: KubeServersOptions;
  readonly #http: Deno.HttpClient;
  #child: Deno.ChildProcess | undefined;
  #closed = false;
  #logs = 0;

  private constructor(
    dir: string,
    etcd: EtcdServer,
    bin: string,
    caPem: string,
    opts: KubeServersOptions,
  ) {
    this.dir = dir;
    this.etcd = etcd;
    this.#bin = bin;
    this.#opts = opts;
    this.caFile = `${dir}/ca.crt`;
    this.caPem = caPem;
    this.adminToken = crypto.randomUUID();
    this.port = freePort();
    this.#http = Deno.createHttpClient({ caCerts: [caPem] });
  }

  /** Starts etcd and kube-apiserver; throws when the binaries are missing. */
  static async start(opts: KubeServersOptions = {}): Promise<KubeServers> {
    const bins = await kubeServersAvailable();
    if (!bins) {
      throw new Error(
        "kube-apiserver or etcd >= 3.5 is missing: run .ci/build_servers.sh",
      );
    }
    const dir = await Deno.makeTempDir({ prefix: "weft-kube-" });
    let etcd: EtcdServer | undefined;
    try {
      await makeCa(dir);
      await signedCert(dir, `${dir}/apiserver`, "/CN=kube-apiserver", [
        ...SERVER_EXT,
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc",
      ]);
      await serviceAccountKeys(dir);
      etcd = await EtcdServer.start({
        bin: bins.etcd,
        args: ["--unsafe-no-fsync", "--quota-backend-bytes=8589934592"],
      });
      const caPem = await Deno.readTextFile(`${dir}/ca.crt`);
      const k = new KubeServers(dir, etcd, bins.apiserver, caPem, opts);
      await Deno.writeTextFile(
        `${dir}/tokens.csv`,
        `${k.adminToken},weft-admin,weft-admin,"system:masters"\n`,
      );
      await k.startApiserver();
      return k;
    } catch (e) {
      await etcd?.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw e;
    }
  }

  /** `https://127.0.0.1:<port>`. */
  get url(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  /** The server's process id while it runs (benchmarks read its CPU). */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Whether kube-apiserver runs. */
  get running(): boolean {
    return this.#child !== undefined;
  }

  #args(): string[] {
    const d = this.dir;
    return [
      `--etcd-servers=${this.etcd.endpoint}`,
      "--bind-address=127.0.0.1",
      "--advertise-address=127.0.0.1",
      `--secure-port=${this.port}`,
      `--cert-dir=${d}/apiserver`,
      `--tls-cert-file=${d}/apiserver.crt`,
      `--tls-private-key-file=${d}/apiserver.key`,
      `--client-ca-file=${d}/ca.crt`,
      `--token-auth-file=${d}/tokens.csv`,
      "--authorization-mode=RBAC",
      "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
      `--service-account-key-file=${d}/sa.pub`,
      `--service-account-signing-key-file=${d}/sa.key`,
      "--service-cluster-ip-range=10.96.0.0/16",
      "--endpoint-reconciler-type=none",
      "--profiling=false",
      `--watch-cache=${this.#opts.watchCache ?? true}`,
      ...(this.#opts.apiserverArgs ?? []),
    ];
  }

  /** Starts kube-apiserver (again) and waits until /readyz says ok. */
  async startApiserver(): Promise<void> {
    if (this.#child) return;
    const log = `${this.dir}/apiserver-${++this.#logs}.log`;
    // The shell only redirects stderr to the log, then becomes the server.
    this.#child = new Deno.Command("sh", {
      args: ["-c", 'exec "$0" "$@" 2>"$LOG"', this.#bin, ...this.#args()],
      env: { LOG: log },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const child = this.#child;
    let exited: Deno.CommandStatus | undefined;
    child.status.then((s) => exited = s);
    const deadline = Date.now() + 90_000;
    while (Date.now() < deadline) {
      if (exited) {
        this.#child = undefined;
        throw new Error(
          `kube-apiserver exited with ${exited.code} during startup:\n${await tail(
            log,
          )}`,
        );
      }
      try {
        const r = await this.request("GET", "/readyz");
        if (r.status === 200) return;
      } catch {
        // Not listening yet.
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`kube-apiserver not ready in 90 s:\n${await tail(log)}`);
  }

  /** Stops kube-apiserver (SIGTERM, SIGKILL after 15 s); etcd keeps running. */
  async stopApiserver(signal: Deno.Signal = "SIGTERM"): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    await halt(child, signal, 15_000);
  }

  /** Stops and starts kube-apiserver on the same port and etcd. */
  async restartApiserver(signal: Deno.Signal = "SIGTERM"): Promise<void> {
    await this.stopApiserver(signal);
    await this.startApiserver();
  }

  /** Sends a request as the admin (or with `token`); parses JSON answers. */
  async request<T = Record<string, unknown>>(
    method: string,
    path: string,
    body?: unknown,
    opts: { contentType?: string; token?: string } = {},
  ): Promise<ApiAnswer<T>> {
    const res = await fetch(`${this.url}${path}`, {
      method,
      client: this.#http,
      headers: {
        "Authorization": `Bearer ${opts.token ?? this.adminToken}`,
        "Accept": "application/json",
        ...(body !== undefined &&
          { "Content-Type": opts.contentType ?? "application/json" }),
      },
      ...(body !== undefined && { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(30_000),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // Plain text (/readyz).
    }
    return { status: res.status, body: parsed as T };
  }

  /** Like {@linkcode request} but throws unless the answer is 2xx. */
  async must<T = Record<string, unknown>>(
    method: string,
    path: string,
    body?: unknown,
    contentType?: string,
  ): Promise<T> {
    const r = await this.request<T>(
      method,
      path,
      body,
      contentType ? { contentType } : {},
    );
    if (r.status < 200 || r.status >= 300) {
      throw new Error(
        `${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`,
      );
    }
    return r.body;
  }

  /** Creates a Node (POST, status included as kubelet does). */
  createNode(node: Record<string, unknown>): Promise<Record<string, unknown>> {
    return this.must("POST", "/api/v1/nodes", {
      apiVersion: "v1",
      kind: "Node",
      ...node,
    });
  }

  /** GETs a Node. */
  getNode(name: string): Promise<NodeJson> {
    return this.must<NodeJson>("GET", `/api/v1/nodes/${name}`);
  }

  /** PATCHes a Node (or its `status`) with a merge patch. */
  patchNode(
    name: string,
    patch: unknown,
    subresource = "",
  ): Promise<Record<string, unknown>> {
    return this.must(
      "PATCH",
      `/api/v1/nodes/${name}${subresource ? `/${subresource}` : ""}`,
      patch,
      "application/merge-patch+json",
    );
  }

  /** Deletes a Node. */
  async deleteNode(name: string): Promise<void> {
    await this.must("DELETE", `/api/v1/nodes/${name}`);
  }

  /**
   * Creates a ServiceAccount bound (ClusterRoleBinding) to a ClusterRole
   * made of `rules` (created as `clusterRole`).
   */
  async createServiceAccount(
    namespace: string,
    name: string,
    clusterRole: { name: string; rules: unknown[] },
  ): Promise<void> {
    await this.must("POST", `/api/v1/namespaces/${namespace}/serviceaccounts`, {
      apiVersion: "v1",
      kind: "ServiceAccount",
      metadata: { name },
    });
    await this.must("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRole",
      metadata: { name: clusterRole.name },
      rules: clusterRole.rules,
    });
    await this.must(
      "POST",
      "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
      {
        apiVersion: "rbac.authorization.k8s.io/v1",
        kind: "ClusterRoleBinding",
        metadata: { name: `${clusterRole.name}-${name}` },
        roleRef: {
          apiGroup: "rbac.authorization.k8s.io",
          kind: "ClusterRole",
          name: clusterRole.name,
        },
        subjects: [{ kind: "ServiceAccount", name, namespace }],
      },
    );
  }

  /**
   * Issues a token for a ServiceAccount (TokenRequest API). With
   * `boundSecret`, the token dies with that Secret (rotation tests).
   */
  async serviceAccountToken(
    namespace: string,
    name: string,
    opts: { boundSecret?: { name: string; uid: string } } = {},
  ): Promise<string> {
    const r = await this.must<{ status: { token: string } }>(
      "POST",
      `/api/v1/namespaces/${namespace}/serviceaccounts/${name}/token`,
      {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenRequest",
        spec: {
          expirationSeconds: 3600,
          ...(opts.boundSecret && {
            boundObjectRef: {
              apiVersion: "v1",
              kind: "Secret",
              name: opts.boundSecret.name,
              uid: opts.boundSecret.uid,
            },
          }),
        },
      },
    );
    return r.status.token;
  }

  /** Creates an Opaque Secret and returns its uid. */
  async createSecret(namespace: string, name: string): Promise<string> {
    const s = await this.must<{ metadata: { uid: string } }>(
      "POST",
      `/api/v1/namespaces/${namespace}/secrets`,
      { apiVersion: "v1", kind: "Secret", metadata: { name }, type: "Opaque" },
    );
    return s.metadata.uid;
  }

  /** Deletes a Secret. */
  async deleteSecret(namespace: string, name: string): Promise<void> {
    await this.must(
      "DELETE",
      `/api/v1/namespaces/${namespace}/secrets/${name}`,
    );
  }

  /** A client certificate signed by the cluster CA (`O=` are groups). */
  async clientCert(cn: string, groups: string[] = []): Promise<ClientCert> {
    const base = `${this.dir}/client-${cn.replace(/[^a-z0-9-]/gi, "_")}`;
    const subj = `/${groups.map((g) => `O=${g}/`).join("")}CN=${cn}`;
    await signedCert(this.dir, base, subj, CLIENT_EXT);
    return {
      certFile: `${base}.crt`,
      keyFile: `${base}.key`,
      cert: await Deno.readTextFile(`${base}.crt`),
      key: await Deno.readTextFile(`${base}.key`),
    };
  }

  /** A CA that did not sign anything here (wrong-CA tests). */
  async otherCa(): Promise<string> {
    const d = `${this.dir}/other-ca`;
    await Deno.mkdir(d, { recursive: true });
    await makeCa(d);
    return await Deno.readTextFile(`${d}/ca.crt`);
  }

  /** Writes a kubeconfig with one context and returns its path. */
  async writeKubeconfig(path: string, spec: KubeconfigSpec): Promise<string> {
    const b64 = (s: string) => btoa(s);
    const ca = spec.caPem === undefined ? this.caPem : spec.caPem;
    let caLine: string;
    if (ca === null) {
      caLine = spec.insecure ? "insecure-skip-tls-verify: true" : "";
    } else if (spec.caAsFile) {
      await Deno.writeTextFile(`${path}.ca.crt`, ca);
      caLine = `certificate-authority: ${path}.ca.crt`;
    } else {
      caLine = `certificate-authority-data: ${b64(ca)}`;
    }
    const user: string[] = [];
    if (spec.token) user.push(`token: ${spec.token}`);
    if (spec.tokenFile) user.push(`tokenFile: ${spec.tokenFile}`);
    if (spec.clientCert) {
      user.push(`client-certificate: ${spec.clientCert.certFile}`);
      user.push(`client-key-data: ${b64(spec.clientCert.key)}`);
    }
    const text = `apiVersion: v1
kind: Config
current-context: test
clusters:
- name: test-cluster
  cluster:
    server: ${spec.server ?? this.url}
    ${caLine}
contexts:
- name: test
  context:
    cluster: test-cluster
    user: test-user
users:
- name: test-user
  user:
${user.map((l) => `    ${l}`).join("\n") || "    {}"}
`;
    await Deno.writeTextFile(path, text);
    return path;
  }

  /** The apiserver's current log. */
  apiserverLog(): Promise<string> {
    return tail(`${this.dir}/apiserver-${this.#logs}.log`, 200);
  }

  /** Stops everything and removes the directory. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.stopApiserver();
    await this.etcd.close();
    this.#http.close();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** The parts of a Node JSON the tests read. */
export interface NodeJson {
  metadata: {
    name: string;
    resourceVersion: string;
    annotations?: Record<string, string>;
  };
  spec: { podCIDR?: string; podCIDRs?: string[] };
  status: {
    conditions?: {
      type: string;
      status: string;
      reason?: string;
      message?: string;
      lastTransitionTime?: string;
      lastHeartbeatTime?: string;
    }[];
  };
}

async function tail(path: string, lines = 40): Promise<string> {
  try {
    return (await Deno.readTextFile(path)).split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/**
 * A TCP forwarder to the API server that a test can cut: `pause()` drops
 * every open connection and refuses new ones until `resume()`. TLS passes
 * through untouched, so the client sees the real server certificate.
 */
export class TcpProxy implements AsyncDisposable {
  readonly #listener: Deno.TcpListener;
  readonly #target: { hostname: string; port: number };
  readonly #conns = new Set<Deno.TcpConn>();
  #paused = false;
  #closed = false;
  readonly #loop: Promise<void>;

  constructor(targetPort: number, targetHost = "127.0.0.1") {
    this.#target = { hostname: targetHost, port: targetPort };
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.#loop = this.#accept();
  }

  /** `https://127.0.0.1:<port>`. */
  get url(): string {
    return `https://127.0.0.1:${(this.#listener.addr as Deno.NetAddr).port}`;
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return; // closed
      }
      if (this.#paused) {
        conn.close();
        continue;
      }
      this.#pipe(conn).catch(() => {});
    }
  }

  async #pipe(client: Deno.TcpConn): Promise<void> {
    let upstream: Deno.TcpConn;
    try {
      upstream = await Deno.connect(this.#target);
    } catch {
      client.close();
      return;
    }
    this.#conns.add(client);
    this.#conns.add(upstream);
    const close = () => {
      for (const c of [client, upstream]) {
        if (this.#conns.delete(c)) {
          try {
            c.close();
          } catch {
            // Already closed.
          }
        }
      }
    };
    await Promise.race([
      client.readable.pipeTo(upstream.writable, { preventClose: true }),
      upstream.readable.pipeTo(client.writable, { preventClose: true }),
    ]).catch(() => {});
    close();
  }

  /** Drops every connection and refuses new ones. */
  pause(): void {
    this.#paused = true;
    for (const c of [...this.#conns]) {
      this.#conns.delete(c);
      try {
        c.close();
      } catch {
        // Already closed.
      }
    }
  }

  /** Accepts connections again. */
  resume(): void {
    this.#paused = false;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.pause();
    this.#listener.close();
    await this.#loop;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
