/**
 * A real Kubernetes control plane for a namespace cluster: etcd >= 3.5 and
 * kube-apiserver (the binaries `.ci/build_servers.sh` caches, found with
 * `serverBinary()`) run inside the cluster's switch namespace, the
 * apiserver bound to the underlay address so every node namespace reaches
 * it as a real node would. There is no controller manager: the harness
 * creates the Node objects itself, with `spec.podCIDR`, as the node IPAM
 * controller would have.
 *
 * Identity is plain X.509 from `openssl`: a throwaway CA, a serving
 * certificate, an admin (`system:masters`) used through `curl` inside the
 * switch namespace, and one client certificate per node in group
 * `weft:agents`, bound to flannel's stock ClusterRole (pods get; nodes get,
 * list, watch; nodes/status patch), so the agents run with exactly the
 * RBAC a flannel DaemonSet gets.
 *
 * @module
 */
import { type Netns, run } from "../_netns.ts";
import { serverBinary } from "../servers/paths.ts";
import {
  CLIENT_EXT,
  makeCa,
  SERVER_EXT,
  serviceAccountKeys,
  signedCert,
} from "../servers/pki.ts";

/** Port of the apiserver. */
export const KUBE_PORT = 6443;

/** Group the node agents' certificates carry. */
const AGENT_GROUP = "weft:agents";

/** flannel's ClusterRole (Documentation/kube-flannel.yml). */
const FLANNEL_ROLE = {
  apiVersion: "rbac.authorization.k8s.io/v1",
  kind: "ClusterRole",
  metadata: { name: "flannel" },
  rules: [
    { apiGroups: [""], resources: ["pods"], verbs: ["get"] },
    { apiGroups: [""], resources: ["nodes"], verbs: ["get", "list", "watch"] },
    { apiGroups: [""], resources: ["nodes/status"], verbs: ["patch"] },
  ],
};

/** Response of {@linkcode KubeControlPlane.api}. */
export interface ApiResponse {
  readonly status: number;
  readonly body: unknown;
}

/** A Node object as far as the demo and tests read it. */
export interface KubeNode {
  metadata: { name: string; annotations?: Record<string, string> };
  spec: { podCIDR?: string };
  status?: {
    conditions?: {
      type: string;
      status: string;
      reason?: string;
      message?: string;
    }[];
  };
}

/** Why the control plane cannot run here, or undefined when it can. */
export async function kubeUnavailable(): Promise<string | undefined> {
  const apiserver = await serverBinary("kube-apiserver");
  const etcd = await serverBinary("etcd");
  if (!apiserver || !etcd) {
    return `kube-apiserver and etcd >= 3.5 binaries not found (looked in $TEST_ASSET_*, $KUBEBUILDER_ASSETS, ${
      Deno.env.get("WEFT_CACHE") ?? "/var/cache/weft"
    }/bin); build them with: bash .ci/build_servers.sh`;
  }
  if ((await run(["openssl", "version"]).catch(() => undefined))?.code !== 0) {
    return "openssl is needed for the certificates: apt-get install -y openssl";
  }
  return undefined;
}

function b64(text: string): string {
  let bin = "";
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin);
}

/** etcd and kube-apiserver in a namespace. Dispose to stop both. */
export class KubeControlPlane implements AsyncDisposable {
  readonly ns: Netns;
  readonly ip: string;
  readonly dir: string;
  readonly #pki: string;
  #etcd: Deno.ChildProcess | undefined;
  #apiserver: Deno.ChildProcess | undefined;
  /** Milliseconds from spawning kube-apiserver to /readyz 200. */
  startMs = 0;

  private constructor(ns: Netns, ip: string, dir: string) {
    this.ns = ns;
    this.ip = ip;
    this.dir = dir;
    this.#pki = `${dir}/pki`;
  }

  /** `https://<ip>:6443`. */
  get server(): string {
    return `https://${this.ip}:${KUBE_PORT}`;
  }

  /**
   * Generates the certificates, starts etcd and kube-apiserver in `ns`
   * (apiserver on `ip`), waits for /readyz and installs flannel's RBAC.
   * Throws with the tail of the server log when something does not start.
   */
  static async start(
    ns: Netns,
    ip: string,
    dir: string,
  ): Promise<KubeControlPlane> {
    const why = await kubeUnavailable();
    if (why) throw new Error(why);
    const cp = new KubeControlPlane(ns, ip, dir);
    try {
      await Deno.mkdir(cp.#pki, { recursive: true });
      await cp.#certificates();
      await cp.#startEtcd();
      await cp.#startApiserver();
      await cp.#rbac();
    } catch (e) {
      await cp.close();
      throw e;
    }
    return cp;
  }

  async #certificates(): Promise<void> {
    const p = this.#pki;
    await makeCa(p, "weft-cluster-ca");
    await signedCert(p, `${p}/apiserver`, "/CN=kube-apiserver", [
      ...SERVER_EXT,
      `subjectAltName=IP:${this.ip},IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,DNS:localhost`,
    ]);
    await signedCert(
      p,
      `${p}/admin`,
      "/O=system:masters/CN=weft-admin",
      CLIENT_EXT,
    );
    await serviceAccountKeys(p);
  }

  #spawn(name: string, args: string[]): Deno.ChildProcess {
    const log = `${this.dir}/${name}.log`;
    // The server appends to its log itself (sh redirects, then execs), so
    // the log is complete at any moment and outlives this process.
    return new Deno.Command("sh", {
      args: [
        "-c",
        'exec "$@" >>"$0" 2>&1',
        log,
        "ip",
        "netns",
        "exec",
        this.ns.name,
        ...args,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
  }

  async #tail(name: string): Promise<string> {
    const text = await Deno.readTextFile(`${this.dir}/${name}.log`).catch(
      () => "",
    );
    return text.split("\n").slice(-15).join("\n");
  }

  async #startEtcd(): Promise<void> {
    const bin = (await serverBinary("etcd"))!;
    // Ports other than 2379/2380, so Debian's etcd of an etcd-mode cluster
    // in the same namespace would not clash.
    this.#etcd = this.#spawn("etcd", [
      bin,
      "--name",
      "kube",
      "--data-dir",
      `${this.dir}/etcd`,
      "--listen-client-urls",
      "http://127.0.0.1:2479",
      "--advertise-client-urls",
      "http://127.0.0.1:2479",
      "--listen-peer-urls",
      "http://127.0.0.1:2480",
      "--initial-advertise-peer-urls",
      "http://127.0.0.1:2480",
      "--initial-cluster",
      "kube=http://127.0.0.1:2480",
      "--unsafe-no-fsync",
    ]);
    for (let i = 0; i < 100; i++) {
      const r = await this.ns.tryExec([
        "curl",
        "-s",
        "http://127.0.0.1:2479/health",
      ]);
      if (r.stdout.includes('"health":"true"')) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(
      `etcd for kube-apiserver did not become healthy:\n${await this.#tail(
        "etcd",
      )}`,
    );
  }

  async #startApiserver(): Promise<void> {
    const bin = (await serverBinary("kube-apiserver"))!;
    const p = this.#pki;
    const started = performance.now();
    this.#apiserver = this.#spawn("kube-apiserver", [
      bin,
      "--etcd-servers=http://127.0.0.1:2479",
      `--bind-address=${this.ip}`,
      `--advertise-address=${this.ip}`,
      `--secure-port=${KUBE_PORT}`,
      `--tls-cert-file=${p}/apiserver.crt`,
      `--tls-private-key-file=${p}/apiserver.key`,
      `--client-ca-file=${p}/ca.crt`,
      "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
      `--service-account-key-file=${p}/sa.pub`,
      `--service-account-signing-key-file=${p}/sa.key`,
      "--service-cluster-ip-range=10.96.0.0/16",
      "--authorization-mode=RBAC",
      "--anonymous-auth=false",
      "--profiling=false",
      `--cert-dir=${p}`,
    ]);
    for (;;) {
      const r = await this.api("GET", "/readyz");
      if (r.status === 200) break;
      const exited = await Promise.race([
        this.#apiserver.status,
        new Promise((r) => setTimeout(() => r(undefined), 250)),
      ]);
      if (exited !== undefined) {
        throw new Error(
          `kube-apiserver exited:\n${await this.#tail("kube-apiserver")}`,
        );
      }
      if (performance.now() - started > 90_000) {
        throw new Error(
          `kube-apiserver not ready after 90 s:\n${await this.#tail(
            "kube-apiserver",
          )}`,
        );
      }
    }
    this.startMs = performance.now() - started;
  }

  async #rbac(): Promise<void> {
    await this.#mustCreate("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
      ...FLANNEL_ROLE,
    });
    await this.#mustCreate(
      "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
      {
        apiVersion: "rbac.authorization.k8s.io/v1",
        kind: "ClusterRoleBinding",
        metadata: { name: "flannel" },
        roleRef: {
          apiGroup: "rbac.authorization.k8s.io",
          kind: "ClusterRole",
          name: "flannel",
        },
        subjects: [{
          apiGroup: "rbac.authorization.k8s.io",
          kind: "Group",
          name: AGENT_GROUP,
        }],
      },
    );
  }

  async #mustCreate(path: string, obj: unknown): Promise<ApiResponse> {
    const r = await this.api("POST", path, obj);
    if (r.status !== 201) {
      throw new Error(
        `POST ${path} answered ${r.status}: ${JSON.stringify(r.body)}`,
      );
    }
    return r;
  }

  /**
   * Calls the API as cluster admin (curl inside the switch namespace, the
   * only place the apiserver is reachable from). Never throws on HTTP
   * status; status 0 means no connection.
   */
  async api(
    method: string,
    path: string,
    body?: unknown,
    contentType = "application/json",
  ): Promise<ApiResponse> {
    const p = this.#pki;
    const r = await run(
      [
        "ip",
        "netns",
        "exec",
        this.ns.name,
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        `${p}/ca.crt`,
        "--cert",
        `${p}/admin.crt`,
        "--key",
        `${p}/admin.key`,
        "-X",
        method,
        "-H",
        `Content-Type: ${contentType}`,
        ...(body === undefined ? [] : ["--data-binary", "@-"]),
        "-w",
        "\n%{http_code}",
        `${this.server}${path}`,
      ],
      body === undefined ? undefined : JSON.stringify(body),
    );
    const i = r.stdout.lastIndexOf("\n");
    const status = Number(r.stdout.slice(i + 1)) || 0;
    const text = r.stdout.slice(0, Math.max(i, 0));
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch { /* not JSON (e.g. /readyz says "ok") */ }
    return { status, body: parsed };
  }

  /** Creates a Node with `spec.podCIDR`, as the node IPAM controller would. */
  async createNode(name: string, podCIDR: string): Promise<void> {
    await this.#mustCreate("/api/v1/nodes", {
      apiVersion: "v1",
      kind: "Node",
      metadata: { name },
      spec: { podCIDR, podCIDRs: [podCIDR] },
    });
  }

  /** Deletes a Node object. */
  async deleteNode(name: string): Promise<void> {
    const r = await this.api("DELETE", `/api/v1/nodes/${name}`);
    if (r.status !== 200 && r.status !== 202) {
      throw new Error(`DELETE node "${name}" answered ${r.status}`);
    }
  }

  /** All Node objects. */
  async nodes(): Promise<KubeNode[]> {
    const r = await this.api("GET", "/api/v1/nodes");
    if (r.status !== 200) throw new Error(`GET nodes answered ${r.status}`);
    return (r.body as { items: KubeNode[] }).items;
  }

  /**
   * Writes a kubeconfig for a node's agent at `path`: a client certificate
   * `CN=weft:<name>, O=weft:agents`, everything inline.
   */
  async writeKubeconfig(name: string, path: string): Promise<void> {
    const cert = `node-${name}`;
    await signedCert(
      this.#pki,
      `${this.#pki}/${cert}`,
      `/O=${AGENT_GROUP}/CN=weft:${name}`,
      CLIENT_EXT,
    );
    const read = (f: string) => Deno.readTextFile(`${this.#pki}/${f}`);
    const kubeconfig = [
      "apiVersion: v1",
      "kind: Config",
      "clusters:",
      "- name: weft",
      "  cluster:",
      `    server: ${this.server}`,
      `    certificate-authority-data: ${b64(await read("ca.crt"))}`,
      "users:",
      `- name: ${name}`,
      "  user:",
      `    client-certificate-data: ${b64(await read(`${cert}.crt`))}`,
      `    client-key-data: ${b64(await read(`${cert}.key`))}`,
      "contexts:",
      "- name: weft",
      "  context:",
      "    cluster: weft",
      `    user: ${name}`,
      "current-context: weft",
      "",
    ].join("\n");
    await Deno.writeTextFile(path, kubeconfig, { mode: 0o600 });
  }

  /** Stops kube-apiserver and etcd. Idempotent. */
  async close(): Promise<void> {
    for (const c of [this.#apiserver, this.#etcd]) {
      if (!c) continue;
      try {
        c.kill("SIGKILL");
      } catch { /* already exited */ }
      await c.status;
    }
    this.#apiserver = undefined;
    this.#etcd = undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
