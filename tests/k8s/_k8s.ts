/**
 * A real Kubernetes cluster on one machine, run the way users run weft:
 * `kubectl apply -f deploy/weft.yaml`, the kubelet starts the DaemonSet's
 * pods through containerd, containerd calls the CNI plugin the init step
 * installed, weft reaches the API through the `kubernetes` Service.
 *
 * Layout (all namespaces named `weft-k-*`, state in `/tmp/weft-k-*`):
 * - `weft-k-sw`: the underlay switch, bridge `br0` 198.18.0.1/24, the
 *   default gateway of every other namespace (it forwards nothing).
 * - `weft-k-cp` (198.18.0.2): etcd >= 3.5 on loopback, kube-apiserver on
 *   :6443, kube-controller-manager (`--allocate-node-cidrs
 *   --cluster-cidr=10.244.0.0/16`: podCIDRs come from the real node IPAM,
 *   and the DaemonSet, ServiceAccount and token controllers run) and
 *   kube-scheduler; the options can make pods, Services and the underlay
 *   dual stack (IPv6 ULAs). Every binary is built by `.ci/build_servers.sh
 *   --with-cluster`.
 * - `weft-k-nN` (198.18.0.1N): a node running containerd 2 (v2.4.2, its
 *   runc shim and `ctr`, built by `.ci/build_servers.sh --with-containerd`,
 *   with Debian's runc), a kubelet and kube-proxy (iptables mode unless
 *   {@linkcode K8sClusterOptions.proxyMode} says nftables). kubelet and
 *   kube-proxy write iptables chains into the namespace they run in and the
 *   CNI bridge is created where the plugin runs, so all of them stay inside.
 *
 * Why each node also has its own mount namespace: the DaemonSet writes to
 * the node through hostPath volumes (/etc/cni/net.d, /opt/cni/bin,
 * /run/flannel), containerd and the kubelet keep state and sockets in fixed
 * places (/var/lib/containerd, /run/containerd, /run/nri, /var/lib/kubelet,
 * /var/log/pods, /var/lib/cni, /run/netns): three nodes sharing the host's
 * files would overwrite each other's subnet.env, CNI configuration and
 * sockets. `unshare -m --propagation private` gives each node a private
 * copy of the host's mounts with a per-node directory bind-mounted over each
 * of those paths; nothing is mounted in the host's own view (only empty
 * mount points are created). This is lighter than nodes as privileged
 * containers (no nested runtime, no image for the node itself), and every
 * process is a plain child of the harness. The node's /sys is remounted so
 * it shows the node's network namespace, with the host's cgroup mounts
 * bound back under it.
 *
 * cgroup v1 (hybrid) without systemd: the kubelet runs with
 * `cgroupDriver: cgroupfs`, `failCgroupV1: false` (it refuses cgroup v1
 * otherwise) and its own `cgroupRoot` (`/weft-k-nN`, so three kubelets do
 * not share kubepods); containerd needs `restrict_oom_score_adj = true`
 * (root here lacks CAP_SYS_RESOURCE, and without it every sandbox fails
 * with "can't get final child's PID from pipe"). containerd 2 runs on
 * cgroup v1; its runc shim logs, for every pod, that cgroup v1 support is
 * deprecated since v2.2 and goes by May 2029.
 *
 * Images: tests/k8s/images.sh builds them offline (weft from the
 * Containerfile in its deno-run variant, a pause and a busybox test-pod
 * image); `ctr -n k8s.io images import` puts them into a containerd root
 * once, and each node starts from a hard-linked copy of it
 * ({@linkcode containerdTemplate}).
 * The weft image runs its CNI plugin with deno from /usr/local/lib/weft,
 * which is bind-mounted from the image's own copy on each node.
 *
 * @module
 */
import { halt, Netns, plugIntoBridge, run, sh } from "../_netns.ts";
import { serverBinary } from "../servers/paths.ts";
import type { Need } from "../_gate.ts";
import {
  CLIENT_EXT,
  makeCa,
  SERVER_EXT,
  serviceAccountKeys,
  signedCert,
} from "../servers/pki.ts";

/**
 * Prefix of every namespace, directory and cgroup of a cluster of this
 * harness (`WEFT_K8S_PREFIX`, default `weft-k`), unless {@linkcode K8sClusterOptions.prefix} names another:
 * clusters with different prefixes run side by side (each has its own
 * switch namespace, so their addresses may repeat).
 */
export const PREFIX = Deno.env.get("WEFT_K8S_PREFIX") ?? "weft-k";
/** The cluster's pod network (kube-controller-manager's --cluster-cidr). */
export const CLUSTER_CIDR = "10.244.0.0/16";
const SERVICE_CIDR = "10.96.0.0/16";
/** The kubelet's clusterDNS: the kube-dns Service of tests/k8s/coredns.yaml. */
export const CLUSTER_DNS = "10.96.0.10";
const CP_IP = "198.18.0.2";
/** Reference plugins a node needs besides the flannel plugin. */
export const CNI_PLUGINS = ["bridge", "host-local", "loopback", "portmap"];
const REPO = new URL("../..", import.meta.url).pathname;

/** The containerd 2 binaries, from `.ci/build_servers.sh --with-containerd`. */
const CONTAINERD_BINARIES = [
  "containerd",
  "ctr",
  "containerd-shim-runc-v2",
] as const;

/**
 * Binaries the tier needs, from `.ci/build_servers.sh --with-cluster` and
 * (containerd's) `--with-containerd`.
 */
export const BINARIES = [
  "etcd",
  "kube-apiserver",
  "kube-controller-manager",
  "kube-scheduler",
  "kubelet",
  "kube-proxy",
  "kubectl",
  ...CONTAINERD_BINARIES,
] as const;
type Binary = typeof BINARIES[number];

/** What to run to build a missing binary. */
function buildCommand(name: Binary): string {
  const flag = (CONTAINERD_BINARIES as readonly string[]).includes(name)
    ? "--with-containerd"
    : "--with-cluster";
  return `.ci/build_servers.sh ${flag}`;
}

/** Debian packages and tools the tier needs on the host. */
export const TOOLS = ["runc", "buildah", "mmdebstrap"];

/** What is missing to run this tier, or undefined when everything is there. */
export async function k8sUnavailable(): Promise<string | undefined> {
  const missing: string[] = [];
  for (const b of BINARIES) {
    if (!(await binary(b))) missing.push(`${b} (${buildCommand(b)})`);
  }
  for (const t of TOOLS) {
    if ((await run(["sh", "-c", `command -v ${t}`])).code !== 0) {
      missing.push(t);
    }
  }
  return missing.length === 0 ? undefined : `missing: ${missing.join(", ")}`;
}

async function binary(name: Binary): Promise<string | undefined> {
  if (name === "etcd" || name === "kube-apiserver") {
    return await serverBinary(name);
  }
  const dir = `${Deno.env.get("WEFT_CACHE") ?? "/var/cache/weft"}/bin`;
  const path = `${dir}/${name}`;
  return (await Deno.stat(path).catch(() => null))?.isFile ? path : undefined;
}

async function must(name: Binary): Promise<string> {
  const b = await binary(name);
  if (!b) {
    throw new Error(`${name} is missing: run ${buildCommand(name)}`);
  }
  return b;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `fn` until it returns a value other than undefined. */
export async function until<T>(
  what: string,
  timeoutMs: number,
  fn: () => Promise<T | undefined>,
  everyMs = 500,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    await sleep(everyMs);
  }
  throw new Error(
    `Timed out after ${timeoutMs} ms waiting for ${what}${
      last ? `: ${(last as Error).message}` : ""
    }`,
  );
}

/** A background process whose output goes to a log file. */
class Proc {
  constructor(
    readonly name: string,
    readonly child: Deno.ChildProcess,
    readonly log: string,
  ) {}

  static spawn(name: string, cmd: string[], log: string): Proc {
    const child = new Deno.Command("sh", {
      args: ["-c", 'exec "$0" "$@" >"$LOG" 2>&1', ...cmd],
      env: { LOG: log },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    return new Proc(name, child, log);
  }

  async tail(lines = 30): Promise<string> {
    const text = await Deno.readTextFile(this.log).catch(() => "");
    return text.split("\n").slice(-lines).join("\n");
  }

  stop(graceMs = 10_000): Promise<void> {
    return halt(this.child, "SIGTERM", graceMs);
  }
}

function kubeconfig(server: string, ca: string, cert: string, key: string) {
  return `apiVersion: v1
kind: Config
clusters:
- name: weft-k
  cluster:
    server: ${server}
    certificate-authority: ${ca}
users:
- name: user
  user:
    client-certificate: ${cert}
    client-key: ${key}
contexts:
- name: weft-k
  context: {cluster: weft-k, user: user}
current-context: weft-k
`;
}

/** One node: its namespace, state directory and processes. */
export class K8sNode {
  readonly name: string;
  readonly ip: string;
  readonly dir: string;
  readonly netns: Netns;
  /** The node's IPv6 underlay address, when the cluster has one. */
  ipv6: string | undefined;
  proc: Proc | undefined;
  /** Set once the node's script has exited. */
  exited = false;

  constructor(name: string, ip: string, dir: string, netns: Netns) {
    this.name = name;
    this.ip = ip;
    this.dir = dir;
    this.netns = netns;
  }

  /** Runs a command in the node's network and mount namespaces. */
  async exec(cmd: string[]): Promise<string> {
    const pid = this.proc?.child.pid;
    if (pid === undefined) throw new Error(`Node ${this.name} is not running`);
    return await sh(["nsenter", "-t", String(pid), "-m", "-n", ...cmd]);
  }

  /** Like {@linkcode exec}, never throwing on the exit status. */
  tryExec(cmd: string[]) {
    const pid = this.proc?.child.pid;
    if (pid === undefined) throw new Error(`Node ${this.name} is not running`);
    return run(["nsenter", "-t", String(pid), "-m", "-n", ...cmd]);
  }
}

/**
 * Where a node's containerd finds CNI plugins and configuration, and how
 * the reference plugins get there.
 */
export interface NodeCni {
  /** containerd's CRI `bin_dirs` (the one entry). */
  readonly binDir: string;
  /** containerd's CRI `conf_dir`. */
  readonly confDir: string;
  /** Directories kept private to each node besides the harness's own. */
  readonly dirs: readonly string[];
  /**
   * Shell lines, run in the node's mount namespace once its private
   * directories are mounted, that put the reference plugins
   * ({@linkcode CNI_PLUGINS}, Debian's, in /usr/lib/cni) in `binDir`.
   */
  readonly install: string;
}

/** The usual layout: plugins copied into /opt/cni/bin, conf in /etc/cni/net.d. */
const DEFAULT_CNI: NodeCni = {
  binDir: "/opt/cni/bin",
  confDir: "/etc/cni/net.d",
  dirs: [],
  install: `for p in ${
    CNI_PLUGINS.join(" ")
  }; do cp /usr/lib/cni/$p /opt/cni/bin/; done`,
};

/** Options of {@linkcode K8sCluster.up}. */
export interface K8sClusterOptions {
  /** Number of nodes at start. Default 3. */
  readonly nodes?: number;
  /** Where tests/k8s/images.sh wrote the image tarballs. */
  readonly images: string;
  /** Progress lines (default: none). */
  readonly log?: (line: string) => void;
  /** Names of its namespaces, directories and cgroups (default PREFIX). */
  readonly prefix?: string;
  /** Pod networks, one per family (default `[CLUSTER_CIDR]`). */
  readonly clusterCidrs?: readonly string[];
  /** Service networks, one per family (default `["10.96.0.0/16"]`). */
  readonly serviceCidrs?: readonly string[];
  /**
   * An IPv6 underlay `<prefix>::/64`, e.g. `fd00:198:18::` (default none):
   * the switch gets `::1`, node N `::1N` beside its IPv4 address, with a
   * default IPv6 route via the switch; the kubelet gets both node IPs.
   */
  readonly underlayV6?: string;
  /** kube-proxy's `mode` (default `iptables`). */
  readonly proxyMode?: "iptables" | "nftables";
  /** Every node's CNI directories (default /opt/cni/bin, /etc/cni/net.d). */
  readonly cni?: NodeCni;
}

/** A cluster's addressing and proxy mode: its options, defaults filled in. */
interface ClusterNet {
  readonly clusterCidrs: readonly string[];
  readonly serviceCidrs: readonly string[];
  readonly proxyMode: "iptables" | "nftables";
  readonly underlayV6?: string;
}

/** A running cluster; `close()` removes everything it made. */
export class K8sCluster implements AsyncDisposable {
  readonly dir: string;
  /** Start of every name this cluster makes (`<prefix>-cp`, ...). */
  readonly prefix: string;
  readonly nodes: K8sNode[] = [];
  readonly #sw: Netns;
  readonly #cp: Netns;
  readonly #procs: Proc[] = [];
  readonly #images: string;
  readonly #log: (line: string) => void;
  readonly #net: ClusterNet;
  readonly #cni: NodeCni;
  /** Every node number handed out, so that none is given twice. */
  readonly #numbers = new Set<number>();
  #closed = false;

  private constructor(
    prefix: string,
    dir: string,
    sw: Netns,
    cp: Netns,
    opts: K8sClusterOptions,
  ) {
    this.#net = {
      clusterCidrs: opts.clusterCidrs ?? [CLUSTER_CIDR],
      serviceCidrs: opts.serviceCidrs ?? [SERVICE_CIDR],
      proxyMode: opts.proxyMode ?? "iptables",
      ...(opts.underlayV6 !== undefined && { underlayV6: opts.underlayV6 }),
    };
    this.prefix = prefix;
    this.dir = dir;
    this.#sw = sw;
    this.#cp = cp;
    this.#images = opts.images;
    this.#log = opts.log ?? (() => {});
    this.#cni = opts.cni ?? DEFAULT_CNI;
  }

  /** Builds the underlay, starts the control plane and the nodes. */
  static async up(opts: K8sClusterOptions): Promise<K8sCluster> {
    const prefix = opts.prefix ?? PREFIX;
    await cleanupStale(prefix);
    const dir = await Deno.makeTempDir({ prefix: `${prefix}-` });
    const sw = await Netns.named(`${prefix}-sw`);
    const cp = await Netns.named(`${prefix}-cp`);
    const c = new K8sCluster(prefix, dir, sw, cp, opts);
    try {
      await sw.ip("link", "add", "br0", "type", "bridge");
      await sw.ip("addr", "add", "198.18.0.1/24", "dev", "br0");
      if (opts.underlayV6 !== undefined) {
        const v6 = `${opts.underlayV6}1/64`;
        await sw.ip("-6", "addr", "add", v6, "dev", "br0", "nodad");
      }
      await sw.ip("link", "set", "br0", "up");
      await c.#plug(cp, "cp", `${CP_IP}/24`);
      await c.#pki();
      await c.#controlPlane();
      // The nodes start together (each mostly waits for its kubelet to
      // register), listed in the order of their numbers.
      await Promise.all(
        Array.from({ length: opts.nodes ?? 3 }, () => c.addNode()),
      );
      c.nodes.sort((x, y) =>
        x.name.localeCompare(y.name, undefined, { numeric: true })
      );
      return c;
    } catch (e) {
      await c.close();
      throw e;
    }
  }

  /** Connects `ns` to the switch with `eth0` = `cidr`, default via .1. */
  async #plug(ns: Netns, port: string, cidr: string): Promise<void> {
    await plugIntoBridge(this.#sw, ns, `p-${port}`);
    await ns.ip("addr", "add", cidr, "dev", "eth0");
    await ns.ip("link", "set", "eth0", "up");
    await ns.ip("route", "add", "default", "via", "198.18.0.1");
  }

  async #pki(): Promise<void> {
    const d = this.dir;
    await makeCa(d, "weft-k-ca");
    await signedCert(d, `${d}/apiserver`, "/CN=kube-apiserver", [
      ...SERVER_EXT,
      `subjectAltName=IP:${CP_IP},IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local`,
    ]);
    await signedCert(
      d,
      `${d}/admin`,
      "/O=system:masters/CN=weft-k-admin",
      CLIENT_EXT,
    );
    await signedCert(d, `${d}/kube-proxy`, "/CN=system:kube-proxy", CLIENT_EXT);
    await serviceAccountKeys(d);
    const server = `https://${CP_IP}:6443`;
    await Deno.writeTextFile(
      `${d}/admin.kubeconfig`,
      kubeconfig(server, `${d}/ca.crt`, `${d}/admin.crt`, `${d}/admin.key`),
    );
    await Deno.writeTextFile(
      `${d}/kube-proxy.kubeconfig`,
      kubeconfig(
        server,
        `${d}/ca.crt`,
        `${d}/kube-proxy.crt`,
        `${d}/kube-proxy.key`,
      ),
    );
  }

  /**
   * Starts a control-plane process in `ns` and in the control plane's CPU
   * cgroup ({@linkcode cpuCgroup}).
   */
  #spawn(name: string, ns: Netns, cmd: string[]): Proc {
    const p = Proc.spawn(
      name,
      [
        // Before `ip netns exec`, which mounts a /sys without cgroups.
        ...cpuCgroup(`${CGROUP}/cpu/${this.prefix}-cp`),
        "ip",
        "netns",
        "exec",
        ns.name,
        ...cmd,
      ],
      `${this.dir}/${name}.log`,
    );
    this.#procs.push(p);
    return p;
  }

  async #controlPlane(): Promise<void> {
    const d = this.dir;
    const t0 = Date.now();
    await cgroupRoot(`${this.prefix}-cp`);
    this.#spawn("etcd", this.#cp, [
      await must("etcd"),
      "--name=weft-k",
      `--data-dir=${d}/etcd`,
      "--listen-client-urls=http://127.0.0.1:2379",
      "--advertise-client-urls=http://127.0.0.1:2379",
      "--listen-peer-urls=http://127.0.0.1:2380",
      "--initial-advertise-peer-urls=http://127.0.0.1:2380",
      "--initial-cluster=weft-k=http://127.0.0.1:2380",
      "--listen-metrics-urls=",
      "--unsafe-no-fsync",
    ]);
    const api = this.#spawn("kube-apiserver", this.#cp, [
      await must("kube-apiserver"),
      "--etcd-servers=http://127.0.0.1:2379",
      `--advertise-address=${CP_IP}`,
      "--bind-address=0.0.0.0",
      "--secure-port=6443",
      `--cert-dir=${d}/apiserver-certs`,
      `--tls-cert-file=${d}/apiserver.crt`,
      `--tls-private-key-file=${d}/apiserver.key`,
      `--client-ca-file=${d}/ca.crt`,
      `--kubelet-client-certificate=${d}/admin.crt`,
      `--kubelet-client-key=${d}/admin.key`,
      // Node names are not in any DNS: reach kubelets by their node IP.
      "--kubelet-preferred-address-types=InternalIP",
      "--authorization-mode=Node,RBAC",
      "--enable-admission-plugins=NodeRestriction",
      "--allow-privileged=true",
      "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
      `--service-account-key-file=${d}/sa.pub`,
      `--service-account-signing-key-file=${d}/sa.key`,
      `--service-cluster-ip-range=${this.#net.serviceCidrs.join(",")}`,
      "--profiling=false",
    ]);
    let exited = false;
    api.child.status.then(() => exited = true);
    await until("kube-apiserver /readyz", 120_000, async () => {
      if (exited) throw new Error("kube-apiserver exited");
      const r = await run([
        "ip",
        "netns",
        "exec",
        this.#cp.name,
        "curl",
        "-sk",
        "--max-time",
        "2",
        "--cert",
        `${d}/admin.crt`,
        "--key",
        `${d}/admin.key`,
        `https://${CP_IP}:6443/readyz`,
      ]);
      return r.stdout.trim() === "ok" ? true : undefined;
    }).catch(async (e) => {
      throw new Error(`${(e as Error).message}\n${await api.tail()}`);
    });
    this.#spawn("kube-controller-manager", this.#cp, [
      await must("kube-controller-manager"),
      `--kubeconfig=${d}/admin.kubeconfig`,
      `--authentication-kubeconfig=${d}/admin.kubeconfig`,
      `--authorization-kubeconfig=${d}/admin.kubeconfig`,
      "--bind-address=127.0.0.1",
      "--leader-elect=false",
      "--allocate-node-cidrs",
      `--cluster-cidr=${this.#net.clusterCidrs.join(",")}`,
      // One mask per family present: a mask of an absent family is an error.
      ...this.#net.clusterCidrs.map((cidr) =>
        cidr.includes(":")
          ? "--node-cidr-mask-size-ipv6=64"
          : "--node-cidr-mask-size-ipv4=24"
      ),
      `--service-cluster-ip-range=${this.#net.serviceCidrs.join(",")}`,
      "--use-service-account-credentials",
      `--service-account-private-key-file=${d}/sa.key`,
      `--root-ca-file=${d}/ca.crt`,
      "--node-monitor-grace-period=20s",
    ]);
    this.#spawn("kube-scheduler", this.#cp, [
      await must("kube-scheduler"),
      `--kubeconfig=${d}/admin.kubeconfig`,
      `--authentication-kubeconfig=${d}/admin.kubeconfig`,
      `--authorization-kubeconfig=${d}/admin.kubeconfig`,
      "--bind-address=127.0.0.1",
      "--leader-elect=false",
    ]);
    // The default ServiceAccount appears once the controllers run.
    await until("the default ServiceAccount", 60_000, async () => {
      const r = await this.tryKubectl([
        "get",
        "serviceaccount",
        "default",
        "-o",
        "name",
      ]);
      return r.code === 0 ? true : undefined;
    });
    this.#log(`control plane up in ${Date.now() - t0} ms`);
  }

  /** Runs the real kubectl as the admin; throws on failure. */
  async kubectl(args: string[], stdin?: string): Promise<string> {
    const r = await this.tryKubectl(args, stdin);
    if (r.code !== 0) {
      throw new Error(
        `kubectl ${args.join(" ")} exited ${r.code}: ${r.stderr.trim()}`,
      );
    }
    return r.stdout;
  }

  /**
   * Runs the real kubectl as the admin. A `--timeout=<N>s` among the
   * arguments (rollout status, wait) extends the command's own deadline
   * past it, so kubectl's answer is what the caller sees.
   */
  async tryKubectl(args: string[], stdin?: string) {
    const timeoutS = Math.max(
      0,
      ...args.map((a) => Number(a.match(/^--timeout=(\d+)s$/)?.[1] ?? 0)),
    );
    return run(
      [
        "ip",
        "netns",
        "exec",
        this.#cp.name,
        await must("kubectl"),
        `--kubeconfig=${this.dir}/admin.kubeconfig`,
        ...args,
      ],
      stdin,
      Math.max(60_000, (timeoutS + 30) * 1000),
    );
  }

  /** `kubectl get -o json` parsed. */
  async getJson<T = Record<string, unknown>>(args: string[]): Promise<T> {
    return JSON.parse(await this.kubectl(["get", ...args, "-o", "json"])) as T;
  }

  /** Adds a node `<prefix>-n<N>` (198.18.0.1<N>) and starts its services. */
  async addNode(): Promise<K8sNode> {
    // Numbered before the first await: nodes added at once get their own.
    const i = Math.max(
      0,
      ...this.#numbers,
      ...this.nodes.map((n) => Number(n.name.slice(`${this.prefix}-n`.length))),
    ) + 1;
    this.#numbers.add(i);
    const name = `${this.prefix}-n${i}`;
    const ip = `198.18.0.${10 + i}`;
    const dir = `${this.dir}/${name}`;
    await Deno.mkdir(dir, { recursive: true });
    const netns = await Netns.named(name);
    const node = new K8sNode(name, ip, dir, netns);
    this.nodes.push(node);
    await this.#plug(netns, `n${i}`, `${ip}/24`);
    await netns.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    await netns.exec(["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    const v6 = this.#net.underlayV6;
    if (v6 !== undefined) {
      node.ipv6 = `${v6}${10 + i}`;
      await netns.ip(
        "-6",
        "addr",
        "add",
        `${node.ipv6}/64`,
        "dev",
        "eth0",
        "nodad",
      );
      await netns.ip("-6", "route", "add", "default", "via", `${v6}1`);
      await netns.exec(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
      await netns.exec([
        "sysctl",
        "-qw",
        "net.bridge.bridge-nf-call-ip6tables=1",
      ]);
    }
    const d = this.dir;
    await signedCert(
      d,
      `${dir}/kubelet`,
      `/O=system:nodes/CN=system:node:${name}`,
      CLIENT_EXT,
    );
    await Deno.writeTextFile(
      `${dir}/kubelet.kubeconfig`,
      kubeconfig(
        `https://${CP_IP}:6443`,
        `${d}/ca.crt`,
        `${dir}/kubelet.crt`,
        `${dir}/kubelet.key`,
      ),
    );
    await Deno.writeTextFile(
      `${dir}/containerd.toml`,
      containerdConfig(await must("containerd-shim-runc-v2"), this.#cni),
    );
    await Deno.writeTextFile(
      `${dir}/kubelet.yaml`,
      kubeletConfig(name, `${d}/ca.crt`),
    );
    await Deno.writeTextFile(
      `${dir}/kube-proxy.yaml`,
      kubeProxyConfig(name, `${d}/kube-proxy.kubeconfig`, this.#net),
    );
    await Deno.writeTextFile(
      `${dir}/node.sh`,
      await nodeScript(node, this.#images, this.#cni),
    );
    await copyContainerdRoot(
      await containerdTemplate(this.#images),
      `${dir}/fs/var/lib/containerd`,
    );
    await cgroupRoot(name);
    node.proc = Proc.spawn(
      name,
      [
        ...cpuCgroup(`${CGROUP}/cpu/${name}/system`),
        "unshare",
        "-m",
        "--propagation",
        "private",
        "nsenter",
        `--net=${netns.path}`,
        "bash",
        `${dir}/node.sh`,
      ],
      `${dir}/node.log`,
    );
    this.#procs.push(node.proc);
    node.proc.child.status.then(() => node.exited = true);
    const t0 = Date.now();
    await until(`node ${name} registered`, 180_000, async () => {
      if (node.exited) {
        throw new Error(
          `node script of ${name} exited:\n${await node.proc!.tail()}`,
        );
      }
      const r = await this.tryKubectl(["get", "node", name, "-o", "name"]);
      return r.code === 0 ? true : undefined;
    }, 1000);
    this.#log(`node ${name} registered in ${Date.now() - t0} ms`);
    return node;
  }

  /** Stops a node's processes and deletes its namespace (not its Node object). */
  async stopNode(node: K8sNode): Promise<void> {
    await node.proc?.stop(5_000);
    await killCgroup(node.name);
    await node.netns.close();
    const i = this.nodes.indexOf(node);
    if (i >= 0) this.nodes.splice(i, 1);
  }

  /** Stops everything and removes namespaces, cgroups and files. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const n of [...this.nodes].reverse()) {
      await this.stopNode(n).catch(() => {});
    }
    for (const p of [...this.#procs].reverse()) {
      await p.stop(5_000).catch(() => {});
    }
    await cleanupStale(this.prefix);
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * A containerd 2 configuration for a node. Version 4 (containerd >= 2.3:
 * servers are plugins) is what `containerd config default` writes; a
 * version 3 file works too but is migrated, with a warning, at every start.
 * `shim` is the runc shim's path: named outright so that a containerd 1.x
 * shim earlier on PATH is never picked.
 */
function containerdConfig(shim: string, cni: NodeCni): string {
  return `version = 4
root = "/var/lib/containerd"
state = "/run/containerd"
[plugins."io.containerd.server.v1.grpc"]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "localhost/weft-pause:1"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = "${shim}"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["${cni.binDir}"]
    conf_dir = "${cni.confDir}"
`;
}

function kubeletConfig(name: string, ca: string): string {
  return `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupRoot: /${name}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: ${ca}}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
failSwapOn: false
resolvConf: /etc/resolv.conf
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
localStorageCapacityIsolation: false
rotateCertificates: false
podPidsLimit: -1
clusterDNS: [${CLUSTER_DNS}]
clusterDomain: cluster.local
`;
}

function kubeProxyConfig(
  name: string,
  kubeconfigPath: string,
  net: ClusterNet,
): string {
  return `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ${net.proxyMode}
clusterCIDR: ${net.clusterCidrs.join(",")}
hostnameOverride: ${name}
clientConnection: {kubeconfig: ${kubeconfigPath}}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
`;
}

/** Directories a node keeps to itself (see the module doc). */
const NODE_DIRS = [
  "/etc/cni/net.d",
  "/opt/cni/bin",
  "/run/flannel",
  "/var/lib/cni",
  "/var/lib/kubelet",
  "/var/lib/containerd",
  "/run/containerd",
  "/run/nri",
  "/var/log/pods",
  "/var/log/containers",
  "/run/netns",
  "/usr/local/lib/weft",
];

/**
 * The images of `images` (tests/k8s/images.sh's tarballs) imported and
 * unpacked once into a containerd root, kept beside them as
 * `containerd-root` and rebuilt when the tarballs or the containerd binary
 * change: every node starts from a copy ({@linkcode copyContainerdRoot})
 * instead of importing some 900 MB of images itself, which took a node 15
 * to 40 s and loaded the disk while other nodes carried the measured
 * traffic. The root is built by the nodes' own containerd with their
 * configuration, at the path they use (/var/lib/containerd, bound there in
 * a private mount namespace). Lanes running at once (tests/k8s/run.sh)
 * take a lock, so one builds and the other waits.
 */
async function containerdTemplate(images: string): Promise<string> {
  const root = `${images}/containerd-root`;
  const containerd = await must("containerd");
  return await withFileLock(
    `${images}/containerd-root.lock`,
    true,
    async () => {
      const imports = ["weft-pause.tar", "weft-testpod.tar"];
      // weft's tags are one image under several names (images.sh): the first
      // is imported, the others are tagged, not read again.
      const weftTags: string[] = [];
      for await (const e of Deno.readDir(images)) {
        if (/^(weft-coredns|flanneld)\.tar$/.test(e.name)) imports.push(e.name);
        const tag = e.name.match(/^weft-(v.*)\.tar$/)?.[1];
        if (tag !== undefined) weftTags.push(tag);
      }
      imports.sort();
      weftTags.sort();
      const [firstTag, ...moreTags] = weftTags;
      if (firstTag === undefined) throw new Error(`No weft image in ${images}`);
      imports.push(`weft-${firstTag}.tar`);
      const stamp = [
        (await Deno.readTextFile(`${images}/inputs.sha256`)).trim(),
        (await sh(["sha256sum", containerd])).split(" ")[0],
        ...imports,
        ...moreTags,
      ].join(" ");
      const stampFile = `${root}.stamp`;
      if (await Deno.readTextFile(stampFile).catch(() => "") === stamp) {
        return root;
      }
      const t0 = Date.now();
      await Deno.remove(stampFile).catch(() => {});
      await Deno.remove(root, { recursive: true }).catch(() => {});
      const work = await Deno.makeTempDir({ prefix: "weft-containerd-root-" });
      try {
        await Deno.mkdir(root);
        await Deno.writeTextFile(
          `${work}/containerd.toml`,
          containerdConfig(await must("containerd-shim-runc-v2"), DEFAULT_CNI),
        );
        const ctr = await must("ctr");
        const script = `set -euo pipefail
mkdir -p /var/lib/containerd /run/containerd "${work}/state"
mount --bind "${root}" /var/lib/containerd
mount --bind "${work}/state" /run/containerd
${containerd} --config "${work}/containerd.toml" >"${work}/containerd.log" 2>&1 &
for i in $(seq 100); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.1; done
for img in ${imports.join(" ")}; do
  ${ctr} -n k8s.io images import --no-unpack=false "${images}/$img" >/dev/null
done
${
          moreTags.map((t) =>
            `${ctr} -n k8s.io images tag localhost/weft:${firstTag} localhost/weft:${t} >/dev/null`
          ).join("\n")
        }
kill %1
wait %1 || true`;
        const r = await run([
          "unshare",
          "-m",
          "--propagation",
          "private",
          "bash",
          "-c",
          script,
        ]);
        if (r.code !== 0) {
          const log = await Deno.readTextFile(`${work}/containerd.log`)
            .catch(() => "");
          throw new Error(
            `Importing ${imports.join(", ")} from ${images} into ${root} ` +
              `failed (exit ${r.code}): ${r.stderr.trim()}\n` +
              `containerd's log ends:\n${
                log.split("\n").slice(-20).join("\n")
              }`,
          );
        }
        await Deno.writeTextFile(stampFile, stamp);
        console.log(
          `  containerd root with ${imports.join(", ")} built in ${
            Date.now() - t0
          } ms`,
        );
        return root;
      } finally {
        await Deno.remove(work, { recursive: true }).catch(() => {});
      }
    },
  );
}

/**
 * Runs `fn` holding a flock(2) on `path` (created if missing), exclusive
 * or shared: between the tier's lanes (tests/k8s/run.sh) and between the
 * nodes of one cluster started at once.
 */
export async function withFileLock<T>(
  path: string,
  exclusive: boolean,
  fn: () => Promise<T>,
): Promise<T> {
  const file = await Deno.open(path, { write: true, create: true });
  try {
    await file.lock(exclusive);
    return await fn();
  } finally {
    file.close();
  }
}

/**
 * Copies the template root to a node's /var/lib/containerd: image blobs
 * and unpacked layers, which containerd never writes again, as hard links
 * (a plain copy where the two directories are on different file systems);
 * every other file (its databases) as a copy of its own. The instance
 * UUID is left out, so each node's containerd makes its own.
 */
async function copyContainerdRoot(from: string, to: string): Promise<void> {
  await sh([
    "bash",
    "-c",
    `set -euo pipefail
from="$1" to="$2"
mkdir -p "$to"
if ! cp -a --link "$from/." "$to/" 2>/dev/null; then
  rm -rf "$to"; mkdir -p "$to"; cp -a "$from/." "$to/"
fi
cd "$from"
find . -type f ! -path './io.containerd.content.v1.content/blobs/*' \
  ! -path './io.containerd.snapshotter.v1.overlayfs/snapshots/*' -print0 |
  while IFS= read -r -d '' f; do cp -a --remove-destination "$f" "$to/$f"; done
rm -f "$to/io.containerd.grpc.v1.introspection/uuid"`,
    "copy-containerd-root",
    from,
    to,
  ]);
}

async function nodeScript(
  node: K8sNode,
  images: string,
  cni: NodeCni,
): Promise<string> {
  const n = node.dir;
  const binds = [...NODE_DIRS, ...cni.dirs].map((p) =>
    `mkdir -p "${p}" "${n}/fs${p}" && mount --bind "${n}/fs${p}" "${p}"`
  ).join("\n");
  return `#!/bin/bash
# ${node.name}: runs in its own mount namespace and its network namespace.
set -euo pipefail
# /sys of this network namespace, the host's cgroup hierarchies under it.
mkdir -p "${n}/cgroup"
mount --rbind /sys/fs/cgroup "${n}/cgroup"
mount -t sysfs sysfs /sys
mount --rbind "${n}/cgroup" /sys/fs/cgroup
${binds}
${cni.install}
tar -C /usr/local/lib -xf "${images}/weft-lib.tar"
ip link set lo up
${await must(
    "containerd",
  )} --config "${n}/containerd.toml" >"${n}/containerd.log" 2>&1 &
for i in $(seq 100); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.1; done
${await must(
    "kubelet",
  )} --config="${n}/kubelet.yaml" --kubeconfig="${n}/kubelet.kubeconfig" \\
  --hostname-override=${node.name} --node-ip=${
    [node.ip, node.ipv6].filter((a) => a).join(",")
  } >"${n}/kubelet.log" 2>&1 &
${await must(
    "kube-proxy",
  )} --config="${n}/kube-proxy.yaml" >"${n}/kube-proxy.log" 2>&1 &
trap 'kill $(jobs -p) 2>/dev/null; wait' TERM INT
wait
`;
}

// Through the shell: Deno lets only --allow-all read or write /sys.
const CGROUP = "/sys/fs/cgroup";

/**
 * The command prefix that moves a process into CPU cgroup `dir` before it
 * runs the rest of the command line.
 *
 * Each node's processes (kubelet, containerd, kube-proxy, image imports)
 * run in `<node>/system`, its pods in `<node>/kubepods`, the control plane
 * in `<prefix>-cp`: on the CPU each weighs as one machine would. In the
 * root cgroup every busy thread would weigh as much as a whole node, and a
 * node importing images while it joins would starve the others' pods.
 */
function cpuCgroup(dir: string): string[] {
  return [
    "sh",
    "-c",
    'mkdir -p "$0" && echo $$ >"$0/cgroup.procs" && exec "$@"',
    dir,
  ];
}

/** Creates the kubelet's cgroupRoot in every v1 hierarchy (cpuset filled). */
async function cgroupRoot(name: string): Promise<void> {
  await sh([
    "sh",
    "-c",
    `for c in ${CGROUP}/*/; do [ "$c" = ${CGROUP}/unified/ ] || mkdir -p "$c$0"; done
for f in cpuset.cpus cpuset.mems; do cat ${CGROUP}/cpuset/$f > ${CGROUP}/cpuset/$0/$f; done`,
    name,
  ]);
}

/**
 * Kills every process in a node's cgroups at any depth (containers sit at
 * <root>/kubepods/<qos>/pod<uid>/<id>), then removes them; a cgroup whose
 * killed processes are still exiting refuses rmdir for a moment.
 */
async function killCgroup(name: string): Promise<void> {
  await run([
    "sh",
    "-c",
    `for i in 1 2 3 4 5; do
  pids=$(find ${CGROUP}/*/"$0" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
  [ -z "$pids" ] && break
  kill -9 $pids 2>/dev/null; sleep 0.2
done
for i in 1 2 3 4 5 6 7 8 9 10; do
  left=0
  for c in ${CGROUP}/*/"$0"; do
    [ -d "$c" ] || continue
    find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || left=1
  done
  [ "$left" = 0 ] && break
  sleep 0.5
done
true`,
    name,
  ]);
}

/** Removes what an earlier cluster named `prefix` left behind. */
export async function cleanupStale(prefix = PREFIX): Promise<void> {
  const list = await run(["ip", "netns", "list"]);
  const names = list.stdout.split("\n").map((l) => l.split(" ")[0] ?? "")
    .filter((n) => n.startsWith(`${prefix}-`));
  for (const name of names) {
    const pids = await run(["ip", "netns", "pids", name]);
    for (const pid of pids.stdout.split("\n").filter((p) => p)) {
      await run(["kill", "-9", pid]);
    }
  }
  const cgroups = await run(["ls", `${CGROUP}/memory`]);
  for (const cg of cgroups.stdout.split("\n")) {
    if (cg.startsWith(`${prefix}-`)) await killCgroup(cg);
  }
  for (const name of names) {
    // A namespace whose last process is still exiting may refuse once.
    for (let i = 0; i < 5; i++) {
      if ((await run(["ip", "netns", "del", name])).code === 0) break;
      await sleep(200);
    }
  }
  for await (const e of Deno.readDir("/tmp")) {
    if (e.isDirectory && e.name.startsWith(`${prefix}-`)) {
      await Deno.remove(`/tmp/${e.name}`, { recursive: true }).catch(() => {});
    }
  }
}

/** deploy/weft.yaml (or `file`) with only the image reference replaced. */
export async function manifest(
  image: string,
  file = "deploy/weft.yaml",
): Promise<string> {
  const text = await Deno.readTextFile(`${REPO}${file}`);
  return text.replaceAll("image: weft:v0.1.0", `image: ${image}`);
}

/**
 * What the init step installed on each node: `<confDir>/10-flannel.conflist`
 * and `<binDir>/flannel`, with what they should hold (the ConfigMap's
 * cni-conf.json, the image's /usr/local/bin/weft).
 */
export async function installedCni(
  c: K8sCluster,
  confDir = "/etc/cni/net.d",
  binDir = "/opt/cni/bin",
): Promise<{ got: string[]; want: string[] }> {
  const cm = await c.getJson<{ data: Record<string, string> }>([
    "-n",
    "kube-flannel",
    "configmap",
    "kube-flannel-cfg",
  ]);
  const plugin = await Deno.readTextFile(`${REPO}deploy/weft-deno-run.sh`);
  const got: string[] = [], want: string[] = [];
  for (const node of c.nodes) {
    got.push(await node.exec(["cat", `${confDir}/10-flannel.conflist`]));
    got.push(await node.exec(["cat", `${binDir}/flannel`]));
    want.push(cm.data["cni-conf.json"] ?? "", plugin);
  }
  return { got, want };
}

/** A pod as the tests see it. */
export interface PodInfo {
  readonly name: string;
  readonly ip: string;
  readonly node: string;
  readonly ready: boolean;
}

interface PodJson {
  metadata: { name: string };
  spec: { nodeName?: string };
  status: {
    podIP?: string;
    conditions?: { type: string; status: string }[];
  };
}

/** Pods matching a label selector in a namespace. */
export async function pods(
  c: K8sCluster,
  selector: string,
  namespace = "default",
): Promise<PodInfo[]> {
  const list = await c.getJson<{ items: PodJson[] }>([
    "pods",
    "-n",
    namespace,
    "-l",
    selector,
  ]);
  return list.items.map((p) => ({
    name: p.metadata.name,
    ip: p.status.podIP ?? "",
    node: p.spec.nodeName ?? "",
    ready:
      p.status.conditions?.some((c) =>
        c.type === "Ready" && c.status === "True"
      ) ?? false,
  }));
}

/** Applies deploy/weft.yaml (image reference replaced) and waits for 3/3. */
export async function deployWeft(
  c: K8sCluster,
  image = "localhost/weft:v0.1.0",
): Promise<void> {
  await c.kubectl(["apply", "-f", "-"], await manifest(image));
  await rollout(c, "kube-flannel", "daemonset/weft");
}

/** The agent a pod of the kube-flannel namespace runs, told by its log. */
export async function agentOf(
  c: K8sCluster,
  pod: string,
): Promise<"weft" | "flanneld" | undefined> {
  const log = await c.kubectl(["-n", "kube-flannel", "logs", pod]);
  // Each told by a start-up line of its own, never by the other's absence:
  // weft's first line; flanneld v0.28.9's main.go right after its flags.
  return log.includes("(flanneld-compatible) starting")
    ? "weft"
    : log.includes("CLI flags config:")
    ? "flanneld"
    : undefined;
}

/**
 * Waits until the kube-flannel namespace holds one Ready agent pod per
 * node, of whichever DaemonSet, and each runs the agent `want` names for
 * its node (one agent for all, or a function of the node's name).
 */
export async function assertAgents(
  c: K8sCluster,
  want: "weft" | "flanneld" | ((node: string) => "weft" | "flanneld"),
): Promise<void> {
  const of = typeof want === "function" ? want : () => want;
  await until(
    `${typeof want === "function" ? "the planned agent" : want} on every node`,
    120_000,
    async () => {
      const list = [
        ...await pods(c, "app=flannel", "kube-flannel"),
        ...await pods(c, "app=weft", "kube-flannel"),
      ];
      const nodes = c.nodes.map((n) => n.name).sort();
      if (
        list.some((p) => !p.ready) ||
        JSON.stringify(list.map((p) => p.node).sort()) !== JSON.stringify(nodes)
      ) return;
      for (const p of list) {
        if (await agentOf(c, p.name) !== of(p.node)) return;
      }
      return true;
    },
  );
}

/** `kubectl rollout status` with a deadline. */
export async function rollout(
  c: K8sCluster,
  namespace: string,
  what: string,
  timeoutS = 180,
): Promise<void> {
  await c.kubectl([
    "-n",
    namespace,
    "rollout",
    "status",
    what,
    `--timeout=${timeoutS}s`,
  ]);
}

/**
 * An echo pod's spec, as lines of a pod template's `spec:` (six spaces
 * in): busybox serving its own name over HTTP on :8080. With `cpu`, the
 * container requests that much CPU: the pod is then Burstable, its cgroup
 * weighted by the request, where a BestEffort pod weighs 2 against its
 * node's 1024 and waits whole seconds for a CPU while a node joins.
 */
export function echoPodSpec(cpu?: string): string {
  return `      terminationGracePeriodSeconds: 1
      enableServiceLinks: false
      containers:
      - name: echo
        image: localhost/weft-testpod:1
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        securityContext: {capabilities: {add: ["SYS_NICE"]}}${
    cpu === undefined ? "" : `\n        resources: {requests: {cpu: ${cpu}}}`
  }
        volumeMounts: [{name: tmp, mountPath: /tmp}]
      volumes: [{name: tmp, emptyDir: {medium: Memory}}]`;
}

/** The CPU a pod carrying a traffic window's probes requests. */
export const PROBE_CPU = "500m";

/**
 * The test workload: `replicas` busybox pods spread over the nodes, each
 * serving its own name over HTTP on :8080, and the `echo` Service. /tmp is
 * in memory, the pods may lower their nice value and, with `cpu`, request
 * CPU ({@linkcode echoPodSpec}): the traffic probes of tests/k8s/_traffic.ts
 * write there and run at nice -10, so that neither a disk busy with a
 * joining node's image imports nor a busy CPU delays them.
 */
export function echoManifest(
  replicas: number,
  name = "echo",
  cpu?: string,
): string {
  return `apiVersion: apps/v1
kind: Deployment
metadata: {name: ${name}, namespace: default}
spec:
  replicas: ${replicas}
  selector: {matchLabels: {app: ${name}}}
  template:
    metadata: {labels: {app: ${name}}}
    spec:
${echoPodSpec(cpu)}
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: ${name}}}}
---
apiVersion: v1
kind: Service
metadata: {name: ${name}, namespace: default}
spec:
  selector: {app: ${name}}
  ports: [{port: 80, targetPort: 8080}]
`;
}

/**
 * A Service `name` in front of one echo pod: the pod is labelled
 * `<name>=yes`, the Service selects `app: echo` pods with that label and
 * maps port 80 to 8080; `spec` adds lines to its spec (a type, families).
 * Returns the Service as the API holds it.
 */
export async function servicePod<T>(
  c: K8sCluster,
  pod: string,
  name: string,
  spec: readonly string[] = [],
): Promise<T> {
  await c.kubectl(["label", "--overwrite", "pod", pod, `${name}=yes`]);
  await c.kubectl(
    ["apply", "-f", "-"],
    [
      "apiVersion: v1",
      "kind: Service",
      `metadata: {name: ${name}, namespace: default}`,
      "spec:",
      ...spec.map((l) => `  ${l}`),
      `  selector: {app: echo, ${name}: "yes"}`,
      "  ports: [{port: 80, targetPort: 8080}]",
      "",
    ].join("\n"),
  );
  return await c.getJson<T>(["service", name]);
}

/** Runs a command in a pod's first container (`kubectl exec`). */
export function execPod(
  c: K8sCluster,
  pod: string,
  cmd: string[],
  namespace = "default",
) {
  return c.tryKubectl(["exec", "-n", namespace, pod, "--", ...cmd]);
}

/** What busybox ping printed in its summary. */
export interface PingCount {
  readonly sent: number;
  readonly received: number;
}

/** Parses busybox ping's "N packets transmitted, M packets received". */
export function parsePingCount(text: string): PingCount {
  const m = text.match(/(\d+) packets transmitted, (\d+) packets received/);
  return { sent: Number(m?.[1] ?? 0), received: Number(m?.[2] ?? 0) };
}

/** {@linkcode PingCount} with where the unanswered echoes were. */
export interface PingSequence extends PingCount {
  /** Echoes before the last answered one that got no reply. */
  readonly lost: number;
  /** Echoes sent after the last answered one (in flight at a stop). */
  readonly inFlight: number;
  /** Longest run of unanswered echoes between answered ones, ms. */
  readonly longestGapMs: number;
  /** The sequence numbers of the lost echoes. */
  readonly lostSeqs: number[];
}

/**
 * Counts a busybox ping's output (its `seq=N` reply lines and summary),
 * sent every `intervalMs`.
 */
export function countPings(text: string, intervalMs: number): PingSequence {
  const total = parsePingCount(text);
  const seqs = [
    ...new Set([...text.matchAll(/ seq=(\d+) /g)].map((m) => Number(m[1]))),
  ].sort((x, y) => x - y);
  const last = seqs.at(-1) ?? -1;
  let longest = 0, prev = -1;
  const lostSeqs: number[] = [];
  for (const q of seqs) {
    longest = Math.max(longest, q - prev - 1);
    for (let m = prev + 1; m < q; m++) lostSeqs.push(m);
    prev = q;
  }
  return {
    ...total,
    lost: last + 1 - seqs.length,
    inFlight: total.sent - (last + 1),
    longestGapMs: longest * intervalMs,
    lostSeqs,
  };
}

/** An HTTP GET through busybox nc; the body's last line. */
export async function httpGet(
  c: K8sCluster,
  pod: string,
  host: string,
  port: number,
): Promise<string> {
  const r = await execPod(c, pod, [
    "sh",
    "-c",
    `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${host} ${port}`,
  ]);
  return r.stdout.trim().split("\n").pop() ?? "";
}

/**
 * Pings every pod from every pod on another node (3 probes each) and
 * returns how many of the pairs answered every probe.
 */
export async function crossNodePings(
  c: K8sCluster,
  list: PodInfo[],
): Promise<{ answered: number; total: number; failed: string[] }> {
  let answered = 0, total = 0;
  const failed: string[] = [];
  for (const a of list) {
    for (const b of list) {
      if (a.node === b.node) continue;
      total++;
      const r = await execPod(c, a.name, ["ping", "-c", "3", "-W", "2", b.ip]);
      const n = parsePingCount(r.stdout);
      if (n.sent === 3 && n.received === 3) answered++;
      else {
        failed.push(
          `${a.name} (${a.node}) -> ${b.ip} (${b.node}): ${n.received} of ${n.sent} answered`,
        );
      }
    }
  }
  return { answered, total, failed };
}

/**
 * Every pod pings (see {@linkcode crossNodePings}) and GETs (TCP, the echo
 * server's :8080) every pod on another node; the pairs that failed.
 */
export async function crossNodeReach(
  c: K8sCluster,
  list: PodInfo[],
): Promise<{ answered: number; failed: string[] }> {
  const { answered, failed } = await crossNodePings(c, list);
  for (const from of list) {
    for (const to of list.filter((p) => p.node !== from.node)) {
      const got = await httpGet(c, from.name, to.ip, 8080);
      if (got !== to.name) {
        failed.push(`${from.name} -> http://${to.ip}:8080 gave "${got}"`);
      }
    }
  }
  return { answered, failed };
}

/** flanneld's own manifest, from the flannel module in the Go module cache. */
export const KUBE_FLANNEL_YML = `${
  Deno.env.get("WEFT_CACHE") ?? "/var/cache/weft"
}/gomod/github.com/flannel-io/flannel@v0.28.9/Documentation/kube-flannel.yml`;

/**
 * flannel's kube-flannel.yml with its agent image (also the install-cni
 * step's) and its CNI plugin installer's image replaced.
 */
export async function kubeFlannelImages(
  agent: string,
  plugin: string,
): Promise<string> {
  const text = await Deno.readTextFile(KUBE_FLANNEL_YML);
  const swapped = text
    .replace(
      /image: ghcr\.io\/flannel-io\/flannel-cni-plugin:\S+/g,
      `image: ${plugin}`,
    )
    .replace(/image: ghcr\.io\/flannel-io\/flannel:\S+/g, `image: ${agent}`);
  if (swapped.includes("ghcr.io/")) {
    throw new Error(`An image of ${KUBE_FLANNEL_YML} was not swapped`);
  }
  return swapped;
}

/**
 * deploy/weft.yaml as docs/migrate-from-flanneld.md step 2 has it: the
 * `weft/agent In [weft]` affinity uncommented, the image set, and the
 * ConfigMap dropped (flanneld's stays in charge of the network config).
 */
export async function migrationManifest(image: string): Promise<string> {
  const text = await manifest(image);
  const uncommented = text
    .replace("# - key: weft/agent", "- key: weft/agent")
    .replace("#   operator: In", "  operator: In")
    .replace('#   values: ["weft"]', '  values: ["weft"]');
  const docs = uncommented.split(/^---$/m).filter((d) =>
    !/^kind: ConfigMap$/m.test(d)
  );
  if (uncommented === text || docs.length !== 6) {
    throw new Error(
      "deploy/weft.yaml no longer has the migration affinity or its 7 documents",
    );
  }
  return docs.join("---");
}

/**
 * Where tests/k8s/prepare.sh leaves the images (`WEFT_K8S_IMAGES` names
 * another directory images.sh wrote).
 */
export const IMAGES = Deno.env.get("WEFT_K8S_IMAGES") ??
  `${Deno.env.get("WEFT_CACHE") ?? "/var/cache/weft"}/images/k8s`;

/** The cluster binaries, tools, images and flannel's manifest. */
export const CLUSTER: Need = async () => {
  const tools = await k8sUnavailable();
  if (tools) return `${tools}: run tests/k8s/prepare.sh`;
  if (!(await Deno.stat(`${IMAGES}/flanneld.tar`).catch(() => null))) {
    return `no flanneld image in ${IMAGES}: run tests/k8s/prepare.sh`;
  }
  if (!(await Deno.stat(`${IMAGES}/weft-coredns.tar`).catch(() => null))) {
    return `no CoreDNS image in ${IMAGES}: run tests/k8s/prepare.sh`;
  }
  if (!(await Deno.stat(`${IMAGES}/weft-v0.1.1.tar`).catch(() => null))) {
    return `no images in ${IMAGES}: run tests/k8s/prepare.sh`;
  }
  if (!(await Deno.stat(KUBE_FLANNEL_YML).catch(() => null))) {
    return `no ${KUBE_FLANNEL_YML}: run tests/k8s/prepare.sh`;
  }
  return undefined;
};
