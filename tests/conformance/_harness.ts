/**
 * The conformance harness: flanneld v0.28.9 and weft started with the same
 * network config, flags, environment and peers, each in its own node
 * namespace of one cluster, then their kernel and API state compared
 * field by field.
 *
 * One switch namespace (`weft-conf-sw`) holds the underlay bridge
 * (198.18.0.254/24 and fd00:18::fe/64), Debian's etcd (etcd mode) and
 * etcd ≥ 3.5 plus kube-apiserver (kube mode, see tests/e2e/_kube.ts).
 * Each case gets fresh node namespaces: `weft-conf-f` (flanneld, 198.18.0.1)
 * and `weft-conf-w` (weft, 198.18.0.2), and one more peer that no agent runs:
 * a lease (etcd) or Node (kube) for 198.18.0.9 with a fixed VTEP MAC, so
 * both agents program the same foreign peer besides each other.
 *
 * A snapshot of a node is plain data in flanneld's and iproute2's words.
 * Normalising replaces, in each node's snapshot, what must differ between
 * the two nodes by role tokens: the node's own subnet, public IP and VTEP
 * MAC become `<self…>`, the other agent's become `<peer…>`. Beyond that,
 * only what carries no meaning is dropped: the order of routes,
 * neighbours, FDB entries and rule tables (sorted), packet counters,
 * interface indexes and statistics. weft's route protocol is compared on
 * its own (`routeProtocols`). Any other difference is a real one.
 *
 * @module
 */
import { cleanupStale, Netns, plugIntoBridge, run } from "../_netns.ts";
import { agentPermissions, etcdCommand } from "../_cluster.ts";
import { serverBinary } from "../servers/paths.ts";
import type { Need } from "../_gate.ts";
import { KubeControlPlane } from "../e2e/_kube.ts";

/** Namespace and temp dir prefix of this tier (others use `weft-c`, `weft-t-`). */
export const PREFIX = "weft-conf";
export const SWITCH_IP = "198.18.0.254";
export const SWITCH_IP6 = "fd00:18::fe";
export const ETCD_PREFIX = "/coreos.com/network";
/** The foreign peer (no agent). */
export const PEER9 = {
  name: "peer9",
  ip: "198.18.0.9",
  ip6: "fd00:18::9",
  subnet: "10.244.9.0/24",
  subnet6: "fc00:0:0:9::/64",
  mac: "0a:58:0a:f4:09:00",
  mac6: "0a:58:0a:f4:09:06",
};
const ROOT = new URL("../..", import.meta.url).pathname;

export type Mode = "etcd" | "kube";
export type Role = "flanneld" | "weft";

/** One node of a case: who runs there and its addresses. */
export interface NodeSpec {
  readonly role: Role;
  readonly name: string;
  readonly n: number;
}

export const NODES: readonly NodeSpec[] = [
  { role: "flanneld", name: "nodef", n: 1 },
  { role: "weft", name: "nodew", n: 2 },
];

/** What a case sets up. Every field applies to both agents alike. */
export interface CaseInput {
  readonly netConf: string;
  /** Extra flags (after the mode's own). */
  readonly flags?: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  /** Node annotations set before the agents start (kube mode); `{n}` = node number. */
  readonly annotations?: Readonly<Record<string, string>>;
  /** Extra IPv4 addresses on eth0, `{n}` = node number (`198.18.0.10{n}/24`). */
  readonly extraAddrs?: readonly string[];
  /** No foreign peer. */
  readonly noPeer9?: boolean;
  /** Kube mode: one more Node with a podCIDR and no annotations at all. */
  readonly bareNode?: boolean;
  /** Run weft on the flanneld node too (weft↔weft traffic). */
  readonly weftOnly?: boolean;
  /** Runs after both agents settled; the case is then settled again. */
  readonly after?: (
    h: Harness,
    ns: Netns,
    node: NodeSpec,
    input: CaseInput,
  ) => Promise<void>;
  /** Milliseconds both must stay unchanged to count as settled (default 1500). */
  readonly quietMs?: number;
  /** Settling starts this long after the agents (default 0). */
  readonly minMs?: number;
  /** Programs weft may run beyond its list (an extension command). */
  readonly weftRun?: readonly string[];
  /**
   * flanneld gets this net-conf instead of `netConf` (the one weft reads
   * `netConf` as), so that weft's state is compared with what flanneld
   * does for the config weft says it uses.
   */
  readonly flanneldNetConf?: string;
  /** Start flanneld first and weft once flanneld wrote its subnet.env. */
  readonly flanneldFirst?: boolean;
  /** Changes to the foreign peer. */
  readonly peer9?: Peer9Input;
}

/** A foreign peer that a moving case adds, changes or removes. */
export interface PeerSpec {
  /** Node name (kube mode). */
  readonly name: string;
  /** Its IPv4 subnet: the etcd key or podCIDR. */
  readonly subnet: string;
  readonly ip: string;
  readonly mac: string;
  /** etcd mode: the key's etcd lease TTL; none by default. */
  readonly ttlSeconds?: number;
}

/** How a case changes the foreign peer. */
export interface Peer9Input {
  /** Its IPv4 subnet (lease key or podCIDR), default `10.244.9.0/24`. */
  readonly subnet?: string;
  /** Kube mode: annotations (after the prefix) the Node does not carry. */
  readonly omit?: readonly string[];
}

/**
 * Where a case's extension commands record their runs, one line each
 * (see `hooks` in the snapshot).
 */
export function hookLog(nodeName: string): string {
  return `/tmp/${PREFIX}/hooks-${nodeName}.log`;
}

/** A node's state, as compared. */
export type Snapshot = Record<string, unknown>;

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** flanneld v0.28.9, built by `.ci/build_servers.sh --with-flanneld`. */
export const FLANNELD: Need = async () =>
  (await serverBinary("flanneld"))
    ? undefined
    : "flanneld v0.28.9 is not built: run .ci/build_servers.sh --with-flanneld";

interface Running {
  readonly child: Deno.ChildProcess;
  readonly log: string;
  code: number | undefined;
}

/** The cluster the cases run in. */
export class Harness implements AsyncDisposable {
  readonly dir: string;
  readonly sw: Netns;
  readonly flanneld: string;
  etcd: Deno.ChildProcess | undefined;
  kube: KubeControlPlane | undefined;
  nodes = new Map<Role, Netns>();
  pods = new Map<Role, Netns>();
  #agents = new Map<Role, Running>();
  #seq = 0;

  private constructor(dir: string, sw: Netns, flanneld: string) {
    this.dir = dir;
    this.sw = sw;
    this.flanneld = flanneld;
  }

  /** Removes this tier's leftovers (namespaces named `weft-conf-*`). */
  static async cleanup(): Promise<void> {
    await cleanupStale(`${PREFIX}-`);
    await Deno.remove(`/tmp/${PREFIX}`, { recursive: true }).catch(() => {});
  }

  /** Builds the switch, starts etcd and the Kubernetes control plane. */
  static async create(opts: { kube?: boolean } = {}): Promise<Harness> {
    await Harness.cleanup();
    const dir = `/tmp/${PREFIX}`;
    await Deno.mkdir(dir, { recursive: true });
    const sw = await Netns.named(`${PREFIX}-sw`);
    const h = new Harness(dir, sw, (await serverBinary("flanneld"))!);
    try {
      await sw.ip("link", "add", "br0", "type", "bridge");
      await sw.ip("addr", "add", `${SWITCH_IP}/24`, "dev", "br0");
      await sw.ip("addr", "add", `${SWITCH_IP6}/64`, "dev", "br0", "nodad");
      await sw.ip("link", "set", "br0", "up");
      await h.#startEtcd();
      if (opts.kube ?? true) {
        h.kube = await KubeControlPlane.start(sw, SWITCH_IP, `${dir}/kube`);
      }
    } catch (e) {
      await h.close();
      throw e;
    }
    return h;
  }

  async #startEtcd(): Promise<void> {
    const data = `${this.dir}/etcd`;
    const log = await Deno.open(`${this.dir}/etcd.log`, {
      create: true,
      write: true,
      truncate: true,
    });
    this.etcd = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        this.sw.name,
        ...etcdCommand("conformance", data),
        "--unsafe-no-fsync",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const tee = async (s: ReadableStream<Uint8Array>) => {
      try {
        for await (const c of s) log.writeSync(c);
      } catch { /* gone */ }
    };
    tee(this.etcd.stdout);
    tee(this.etcd.stderr);
    for (let i = 0; i < 100; i++) {
      const r = await this.etcdctl("endpoint", "health");
      if (r.code === 0) return;
      await sleep(100);
    }
    throw new Error("Debian etcd did not become healthy");
  }

  /** `etcdctl` (v3 API) against the cluster's etcd. */
  etcdctl(...args: string[]) {
    return run([
      "ip",
      "netns",
      "exec",
      this.sw.name,
      "env",
      "ETCDCTL_API=3",
      "etcdctl",
      "--endpoints=http://127.0.0.1:2379",
      ...args,
    ]);
  }

  /** Fresh node namespaces wired to the switch, and fresh etcd / API state. */
  async reset(mode: Mode, input: CaseInput): Promise<void> {
    await this.stopAgents();
    for (const ns of [...this.nodes.values(), ...this.pods.values()]) {
      await ns.close();
    }
    this.nodes.clear();
    this.pods.clear();
    await this.etcdctl("del", "--prefix", ETCD_PREFIX);
    for (const node of NODES) {
      const ns = await Netns.named(`${PREFIX}-${node.role[0]}`);
      this.nodes.set(node.role, ns);
      await this.wire(ns, node, input);
    }
    const v6 = /"EnableIPv6"\s*:\s*true/.test(input.netConf);
    const v4 = !/"EnableIPv4"\s*:\s*false/.test(input.netConf);
    const type = backendType(input.netConf);
    const vni = Number(/"VNI"\s*:\s*(\d+)/.exec(input.netConf)?.[1] ?? 1);
    if (mode === "etcd") {
      await this.etcdctl("put", `${ETCD_PREFIX}/config`, input.netConf);
      if (!input.noPeer9) {
        // flanneld's key names: IPv6 only is `0.0.0.0-0&<IPv6 subnet>`.
        const key = [
          v4 ? peer9Subnet(input).replace("/", "-") : "0.0.0.0-0",
          v6 && "fc00:0:0:9::-64",
        ].filter(Boolean).join("&");
        await this.etcdctl(
          "put",
          `${ETCD_PREFIX}/subnets/${key}`,
          JSON.stringify(peer9Attrs(type, vni, v4, v6, "etcd")),
        );
      }
    } else {
      const k = this.kube!;
      const nodes = await k.nodes();
      for (const n of nodes) await k.deleteNode(n.metadata.name);
      for (const node of NODES) {
        await this.#createNode(node.name, node.n, v4, v6, {
          "weft.test/case": String(this.#seq),
          ...Object.fromEntries(
            Object.entries(input.annotations ?? {}).map((
              [key, v],
            ) => [key, v.replaceAll("{n}", String(node.n))]),
          ),
        });
      }
      if (input.bareNode) {
        const r = await k.api("POST", "/api/v1/nodes", {
          apiVersion: "v1",
          kind: "Node",
          metadata: { name: "bare" },
          spec: { podCIDR: "10.244.8.0/24", podCIDRs: ["10.244.8.0/24"] },
        });
        if (r.status !== 201) throw new Error(`POST node bare: ${r.status}`);
      }
      if (!input.noPeer9) {
        const omit = new Set(
          (input.peer9?.omit ?? []).map((k) => `flannel.alpha.coreos.com/${k}`),
        );
        await this.#createNode(
          PEER9.name,
          9,
          v4,
          v6,
          Object.fromEntries(
            Object.entries(
              peer9Attrs(type, vni, v4, v6, "kube") as Record<string, string>,
            ).filter(([k]) => !omit.has(k)),
          ),
          peer9Subnet(input),
        );
      }
    }
    this.#seq++;
  }

  async #createNode(
    name: string,
    n: number,
    v4: boolean,
    v6: boolean,
    annotations: Record<string, string>,
    subnet = `10.244.${n}.0/24`,
  ): Promise<void> {
    const cidrs = [v4 && subnet, v6 && `fc00:0:0:${n}::/64`]
      .filter((c): c is string => typeof c === "string");
    const r = await this.kube!.api("POST", "/api/v1/nodes", {
      apiVersion: "v1",
      kind: "Node",
      metadata: { name, annotations },
      spec: { podCIDR: cidrs[0], podCIDRs: cidrs },
    });
    if (r.status !== 201) {
      throw new Error(
        `POST node ${name}: ${r.status} ${JSON.stringify(r.body)}`,
      );
    }
  }

  /** Wires a node namespace: `eth0` on the switch with v4 + v6 addresses. */
  async wire(ns: Netns, node: NodeSpec, input: CaseInput): Promise<void> {
    const port = `${PREFIX}-p${node.n}`;
    await run(["ip", "-n", this.sw.name, "link", "del", port]);
    await plugIntoBridge(this.sw, ns, port);
    await ns.ip("addr", "add", `198.18.0.${node.n}/24`, "dev", "eth0");
    for (const a of input.extraAddrs ?? []) {
      await ns.ip(
        "addr",
        "add",
        a.replaceAll("{n}", String(node.n)),
        "dev",
        "eth0",
      );
    }
    await ns.ip("addr", "add", `fd00:18::${node.n}/64`, "dev", "eth0", "nodad");
    await ns.ip("link", "set", "eth0", "up");
    await ns.ip("route", "add", "default", "via", SWITCH_IP);
    await ns.ip("-6", "route", "add", "default", "via", SWITCH_IP6);
  }

  /** The flags both agents get in a mode, before the case's own. */
  modeFlags(mode: Mode, dir: string): string[] {
    return mode === "etcd"
      ? [
        `--etcd-endpoints=http://${SWITCH_IP}:2379`,
        `--subnet-file=${dir}/subnet.env`,
      ]
      : [
        "--kube-subnet-mgr",
        `--kubeconfig-file=${dir}/kubeconfig`,
        `--net-config-path=${dir}/net-conf.json`,
        `--subnet-file=${dir}/subnet.env`,
      ];
  }

  nodeDir(role: Role): string {
    return `${this.dir}/${role}`;
  }

  /**
   * Starts both agents with the case's input (flanneld first, when the
   * case says so, and weft once flanneld wrote its subnet.env or exited,
   * 30 s at most).
   */
  async startAgents(mode: Mode, input: CaseInput): Promise<void> {
    for (const node of NODES) {
      const dir = this.nodeDir(node.role);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(hookLog(node.name)).catch(() => {});
      await Deno.mkdir(dir, { recursive: true });
      const runsFlanneld = node.role === "flanneld" && !input.weftOnly;
      const netConf = runsFlanneld
        ? input.flanneldNetConf ?? input.netConf
        : input.netConf;
      if (node.role === "weft" && input.flanneldFirst) {
        const env = `${this.nodeDir("flanneld")}/subnet.env`;
        const written = () => Deno.stat(env).then(() => true, () => false);
        const t0 = performance.now();
        while (this.exitCode("flanneld") === undefined && !(await written())) {
          if (performance.now() - t0 > 30_000) {
            throw new Error(
              `flanneld neither wrote ${env} nor exited within 30 s: weft is not started`,
            );
          }
          await sleep(100);
        }
      }
      if (mode === "etcd" && runsFlanneld && input.flanneldNetConf) {
        throw new Error(
          "flanneldNetConf needs kube mode: in etcd mode both agents read one config key",
        );
      }
      if (mode === "kube") {
        await Deno.writeTextFile(`${dir}/net-conf.json`, netConf);
        await this.kube!.writeKubeconfig(node.name, `${dir}/kubeconfig`);
      }
      const flags = [...this.modeFlags(mode, dir), ...(input.flags ?? [])]
        .map((f) => f.replaceAll("{n}", String(node.n)));
      const cmd = runsFlanneld ? [this.flanneld, ...flags] : [
        Deno.execPath(),
        "run",
        ...(input.weftRun ? [`--allow-run=${input.weftRun.join(",")}`] : []),
        ...agentPermissions(dir, [
          `${SWITCH_IP}:2379`,
          `${SWITCH_IP}:6443`,
        ], 0),
        `${ROOT}main.ts`,
        ...flags,
      ];
      const log = `${dir}/agent.log`;
      const child = new Deno.Command("sh", {
        args: [
          "-c",
          'exec ip netns exec "$NS" "$@" >"$LOG" 2>&1',
          "sh",
          ...cmd,
        ],
        env: {
          NS: this.nodes.get(node.role)!.name,
          LOG: log,
          NODE_NAME: node.name,
          // Both agents' WireGuard key stays in the node's directory, not
          // in the host's /run/flannel.
          WIREGUARD_KEY_FILE: `${dir}/wgkey`,
          ...input.env,
        },
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      const running: Running = { child, log, code: undefined };
      child.status.then((s) => running.code = s.code);
      this.#agents.set(node.role, running);
    }
  }

  /**
   * Gives each node a pod the way the bridge CNI plugin would (a `cni0`
   * bridge holding the subnet's first address, a pod namespace on a veth
   * with the second), then pings the other node's pod over each family the
   * subnet.env files name. Returns the families that got replies.
   */
  async podPing(): Promise<{ v4?: boolean; v6?: boolean }> {
    const addrs = new Map<Role, { v4?: string; v6?: string }>();
    for (const node of NODES) {
      const env = await Deno.readTextFile(
        `${this.nodeDir(node.role)}/subnet.env`,
      );
      const v4 = /^FLANNEL_SUBNET=([\d.]+)\.1\/(\d+)$/m.exec(env);
      const v6 = /^FLANNEL_IPV6_SUBNET=([\da-f:]+::)1\/(\d+)$/m.exec(env);
      const ns = this.nodes.get(node.role)!;
      const pod = await Netns.named(`${PREFIX}-pod-${node.role[0]}`);
      this.pods.set(node.role, pod);
      await ns.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
      await ns.exec(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
      await ns.ip("link", "add", "cni0", "type", "bridge");
      await plugIntoBridge(ns, pod, "vethpod", "cni0");
      await ns.ip("link", "set", "cni0", "up");
      await pod.ip("link", "set", "eth0", "up");
      const a: { v4?: string; v6?: string } = {};
      if (v4) {
        await ns.ip("addr", "add", `${v4[1]}.1/${v4[2]}`, "dev", "cni0");
        await pod.ip("addr", "add", `${v4[1]}.2/${v4[2]}`, "dev", "eth0");
        await pod.ip("route", "add", "default", "via", `${v4[1]}.1`);
        a.v4 = `${v4[1]}.2`;
      }
      if (v6) {
        await ns.ip(
          "addr",
          "add",
          `${v6[1]}1/${v6[2]}`,
          "dev",
          "cni0",
          "nodad",
        );
        await pod.ip(
          "addr",
          "add",
          `${v6[1]}2/${v6[2]}`,
          "dev",
          "eth0",
          "nodad",
        );
        await pod.ip("-6", "route", "add", "default", "via", `${v6[1]}1`);
        a.v6 = `${v6[1]}2`;
      }
      addrs.set(node.role, a);
    }
    const from = this.pods.get("flanneld")!, to = addrs.get("weft")!;
    const back = this.pods.get("weft")!, backTo = addrs.get("flanneld")!;
    const out: { v4?: boolean; v6?: boolean } = {};
    for (const fam of ["v4", "v6"] as const) {
      if (!to[fam] || !backTo[fam]) continue;
      const ping = async (ns: Netns, dst: string) => {
        for (let i = 0; i < 5; i++) {
          if (await ns.ping(dst, 1, 1)) return true;
        }
        return false;
      };
      out[fam] = (await ping(from, to[fam]!)) &&
        (await ping(back, backTo[fam]!));
    }
    return out;
  }

  /**
   * Writes a foreign peer (no agent) the way flanneld would publish it: an
   * etcd lease key (under an etcd lease of `ttlSeconds`, else without one)
   * or a Node with its annotations (created, else patched in place).
   * IPv4 vxlan only.
   */
  async putPeer(mode: Mode, p: PeerSpec): Promise<void> {
    const data = { VNI: 1, VtepMAC: p.mac };
    if (mode === "etcd") {
      const value = JSON.stringify({
        PublicIP: p.ip,
        PublicIPv6: null,
        BackendType: "vxlan",
        BackendData: data,
      });
      const key = `${ETCD_PREFIX}/subnets/${p.subnet.replace("/", "-")}`;
      const lease: string[] = [];
      if (p.ttlSeconds !== undefined) {
        const g = await this.etcdctl("lease", "grant", String(p.ttlSeconds));
        const id = /lease ([\da-f]+) granted/.exec(g.stdout)?.[1];
        if (id === undefined) throw new Error(`lease grant: ${g.stderr}`);
        lease.push(`--lease=${id}`);
      }
      const r = await this.etcdctl("put", ...lease, key, value);
      if (r.code !== 0) throw new Error(`put ${key}: ${r.stderr}`);
      return;
    }
    const a = "flannel.alpha.coreos.com/";
    const annotations = {
      [`${a}backend-type`]: "vxlan",
      [`${a}kube-subnet-manager`]: "true",
      [`${a}public-ip`]: p.ip,
      [`${a}backend-data`]: JSON.stringify(data),
    };
    const k = this.kube!;
    const got = await k.api("GET", `/api/v1/nodes/${p.name}`);
    const r = got.status === 404
      ? await k.api("POST", "/api/v1/nodes", {
        apiVersion: "v1",
        kind: "Node",
        metadata: { name: p.name, annotations },
        spec: { podCIDR: p.subnet, podCIDRs: [p.subnet] },
      })
      : await k.api(
        "PATCH",
        `/api/v1/nodes/${p.name}`,
        { metadata: { annotations } },
        "application/merge-patch+json",
      );
    if (r.status !== 200 && r.status !== 201) {
      throw new Error(`node ${p.name}: ${r.status} ${JSON.stringify(r.body)}`);
    }
  }

  /**
   * Moves an agent node's own lease while its agent is stopped: etcd mode
   * deletes its lease key (the agent takes a new subnet at start), kube
   * mode recreates its Node with `subnet` as podCIDR (podCIDRs cannot
   * change in place). Returns the subnet it held.
   */
  async moveOwnLease(mode: Mode, node: NodeSpec, subnet: string) {
    const env = await Deno.readTextFile(
      `${this.nodeDir(node.role)}/subnet.env`,
    );
    const m = /^FLANNEL_SUBNET=([\d.]+)\/(\d+)$/m.exec(env);
    if (!m) throw new Error(`${node.name}: no FLANNEL_SUBNET in subnet.env`);
    const host = m[1]!.split(".").map(Number);
    const old = `${[...host.slice(0, 3), host[3]! - 1].join(".")}/${m[2]}`;
    if (mode === "etcd") {
      const key = `${ETCD_PREFIX}/subnets/${old.replace("/", "-")}`;
      const r = await this.etcdctl("del", key);
      if (r.code !== 0) throw new Error(`del ${key}: ${r.stderr}`);
    } else {
      await this.kube!.deleteNode(node.name);
      // One annotation, as reset() gives every Node: flanneld panics on a
      // Node with none.
      await this.#createNode(node.name, node.n, true, false, {
        "weft.test/case": "own-lease-moved",
      }, subnet);
    }
    return old;
  }

  /** Deletes a foreign peer's lease key or Node. */
  async deletePeer(mode: Mode, p: PeerSpec): Promise<void> {
    if (mode === "kube") return await this.kube!.deleteNode(p.name);
    const key = `${ETCD_PREFIX}/subnets/${p.subnet.replace("/", "-")}`;
    const r = await this.etcdctl("del", key);
    if (r.code !== 0) throw new Error(`del ${key}: ${r.stderr}`);
  }

  /** Whether a foreign peer's lease key or Node exists. */
  async hasPeer(mode: Mode, p: PeerSpec): Promise<boolean> {
    if (mode === "kube") {
      return (await this.kube!.api("GET", `/api/v1/nodes/${p.name}`))
        .status === 200;
    }
    const key = `${ETCD_PREFIX}/subnets/${p.subnet.replace("/", "-")}`;
    return (await this.etcdctl("get", key)).stdout.trim() !== "";
  }

  /** Exit code, or undefined while running. */
  exitCode(role: Role): number | undefined {
    return this.#agents.get(role)?.code;
  }

  async agentLog(role: Role): Promise<string> {
    const a = this.#agents.get(role);
    return a ? await Deno.readTextFile(a.log).catch(() => "") : "";
  }

  /** SIGTERM both agents (SIGKILL after 5 s). */
  async stopAgents(): Promise<void> {
    for (const a of this.#agents.values()) {
      if (a.code !== undefined) continue;
      try {
        a.child.kill("SIGTERM");
      } catch { /* gone */ }
      const t = setTimeout(() => {
        try {
          a.child.kill("SIGKILL");
        } catch { /* gone */ }
      }, 5000);
      await a.child.status;
      clearTimeout(t);
    }
    this.#agents.clear();
  }

  /** Reads a node's whole state. */
  async snapshot(mode: Mode, node: NodeSpec): Promise<Snapshot> {
    const ns = this.nodes.get(node.role)!;
    const j = async (...args: string[]) => {
      const r = await run(
        args[0] === "bridge"
          ? ["bridge", "-n", ns.name, "-j", ...args.slice(1)]
          : ["ip", "-n", ns.name, "-j", ...args],
      );
      return r.code === 0 && r.stdout.trim() ? JSON.parse(r.stdout) : [];
    };
    const flannelDev = (o: { ifname?: string; dev?: string }) =>
      (o.ifname ?? o.dev ?? "").startsWith("flannel");
    const links = (await j("-d", "link", "show")).filter(flannelDev).map(
      cleanLink,
    );
    const addrs = (await j("addr", "show")).filter(flannelDev).map((
      l: { ifname: string; addr_info: Record<string, unknown>[] },
    ) => ({
      dev: l.ifname,
      addrs: l.addr_info.map((a) => ({
        family: a.family,
        local: a.local,
        prefixlen: a.prefixlen,
        scope: a.scope,
      })),
    }));
    const routes = [
      ...(await j("-4", "route", "show", "table", "all")),
      ...(await j("-6", "route", "show", "table", "all")),
    ];
    const protocols = routeProtocols(routes);
    const cleaned = routes.filter((r: Record<string, unknown>) =>
      // the underlay's own IPv6 link-local and multicast routes are the
      // kernel's, identical on both nodes; keep everything else
      !(String(r.dst).startsWith("ff00::") || String(r.dst).startsWith("fe80"))
    ).map(cleanRoute).sort(byJson);
    const neigh = [
      ...(await j("-4", "neigh", "show")),
      ...(await j("-6", "neigh", "show")),
    ].filter((n: Record<string, unknown>) =>
      flannelDev(n as { dev: string }) ||
      (n.state as string[] | undefined)?.includes("PERMANENT")
    ).sort(byJson);
    const fdb = (await j("bridge", "fdb", "show")).filter(flannelDev).sort(
      byJson,
    );
    const dir = this.nodeDir(node.role);
    const subnetEnv = await Deno.readTextFile(`${dir}/subnet.env`).catch(() =>
      null
    );
    const ipt = async (cmd: string) => {
      const r = await ns.tryExec([cmd]);
      // Tables in name order, counters zeroed (as for nft below).
      const blocks: string[][] = [];
      for (const l of r.stdout.split("\n")) {
        if (l.startsWith("#") || l === "") continue;
        if (l.startsWith("*") || blocks.length === 0) blocks.push([]);
        blocks.at(-1)!.push(l.replace(/\[\d+:\d+\]/, "[0:0]"));
      }
      blocks.sort((a, b) => (a[0]! < b[0]! ? -1 : a[0]! > b[0]! ? 1 : 0));
      return blocks.flat();
    };
    const nft = await ns.tryExec(["nft", "list", "ruleset"]);
    const snap: Snapshot = {
      exit: this.exitCode(node.role) ?? "running",
      links,
      addrs,
      routes: cleaned,
      routeProtocols: protocols,
      neigh,
      fdb,
      subnetEnv,
      iptables: await ipt("iptables-save"),
      ip6tables: await ipt("ip6tables-save"),
      nftables: nftBlocks(nft.stdout),
    };
    // Extension commands run: each distinct line once, in order (flanneld
    // runs an add again for every etcd write of the same lease).
    const hooks = await Deno.readTextFile(hookLog(node.name)).catch(() => "");
    if (hooks !== "") {
      snap.hooks = [...new Set(hooks.split("\n").filter((l) => l !== ""))]
        .sort();
    }
    if (mode === "etcd") snap.etcd = await this.#etcdLease(node);
    else snap.node = await this.#nodeState(node.name);
    return snap;
  }

  /** The agent's own lease: key, value and TTL. */
  async #etcdLease(node: NodeSpec): Promise<unknown> {
    const r = await this.etcdctl(
      "get",
      "--prefix",
      `${ETCD_PREFIX}/subnets/`,
      "-w",
      "json",
    );
    if (r.code !== 0) return `etcdctl failed: ${r.stderr}`;
    // Lease IDs are 64-bit: keep them as text, JSON numbers lose digits.
    const raw = r.stdout.replace(/"lease":(\d+)/g, '"lease":"$1"');
    const kvs = (JSON.parse(raw).kvs ?? []) as {
      key: string;
      value: string;
      lease?: number | string;
    }[];
    for (const kv of kvs) {
      const value = atob(kv.value);
      let parsed: { PublicIP?: string; PublicIPv6?: string };
      try {
        parsed = JSON.parse(value);
      } catch {
        continue;
      }
      // The node's own addresses: eth0's, its second one, or a NAT address.
      const ips = [
        `198.18.0.${node.n}`,
        `198.18.0.10${node.n}`,
        `203.0.113.${node.n}`,
        `fd00:18::${node.n}`,
      ];
      if (
        !ips.includes(parsed.PublicIP!) && !ips.includes(parsed.PublicIPv6!)
      ) {
        continue;
      }
      let ttl: unknown = "no lease";
      if (kv.lease) {
        const t = await this.etcdctl(
          "lease",
          "timetolive",
          BigInt(kv.lease).toString(16),
        );
        const m = /granted with TTL\((\d+)s\), remaining\((\d+)s\)/.exec(
          t.stdout,
        );
        ttl = m
          ? {
            granted: Number(m[1]),
            remainingWithin60s: Number(m[1]) - Number(m[2]) < 60,
          }
          : t.stdout.trim();
      }
      return { key: atob(kv.key), value, ttl };
    }
    return null;
  }

  async #nodeState(name: string): Promise<unknown> {
    const r = await this.kube!.api("GET", `/api/v1/nodes/${name}`);
    if (r.status !== 200) return `GET node: ${r.status}`;
    const n = r.body as {
      metadata: { annotations?: Record<string, string> };
      status?: { conditions?: Record<string, string>[] };
    };
    const annotations = Object.fromEntries(
      Object.entries(n.metadata.annotations ?? {}).filter(([k]) =>
        !k.startsWith("weft.test/")
      ).sort(),
    );
    const conditions = (n.status?.conditions ?? []).map((c) => ({
      type: c.type,
      status: c.status,
      reason: c.reason,
      message: c.message,
    }));
    return { annotations, conditions };
  }

  async close(): Promise<void> {
    await this.stopAgents();
    await this.kube?.close();
    if (this.etcd) {
      try {
        this.etcd.kill("SIGKILL");
      } catch { /* gone */ }
      await this.etcd.status;
    }
    await Harness.cleanup();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * `nft list ruleset` as lines, tables in name order (the kernel lists them
 * in creation order, which only says who wrote first), counters zeroed.
 */
function nftBlocks(text: string): string[] {
  const blocks: string[][] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    if (line.startsWith("table ") || blocks.length === 0) blocks.push([]);
    blocks.at(-1)!.push(
      line.replace(/packets \d+ bytes \d+/, "packets 0 bytes 0"),
    );
  }
  blocks.sort((a, b) => (a[0]! < b[0]! ? -1 : a[0]! > b[0]! ? 1 : 0));
  return blocks.flat();
}

function byJson(a: unknown, b: unknown): number {
  const x = JSON.stringify(a), y = JSON.stringify(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

const VOLATILE_LINK = new Set([
  "ifindex",
  "link_index",
  "stats",
  "stats64",
  "txqlen",
  "perm_address",
]);

function cleanLink(l: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(l)) {
    if (!VOLATILE_LINK.has(k)) out[k] = v;
  }
  return out;
}

/** weft's route protocol (`RTPROT_WEFT`), as `ip -j route` prints it. */
export const WEFT_PROTO = "87";

function cleanRoute(r: Record<string, unknown>): Record<string, unknown> {
  const out = { ...r };
  delete out.expires;
  // weft marks its routes with its own protocol: compared on its own, in
  // `routeProtocols`, so that every other route attribute still is.
  if (out.protocol === WEFT_PROTO) delete out.protocol;
  return out;
}

/** The protocols of the routes not made by the kernel, in name order. */
function routeProtocols(routes: Record<string, unknown>[]): string[] {
  return [
    ...new Set(
      routes.filter((r) => r.protocol !== "kernel" && r.table !== "local")
        .map((r) => String(r.protocol ?? "boot")),
    ),
  ].sort();
}

/** The Backend type of a net-conf, as the agents would read it. */
export function backendType(netConf: string): string {
  try {
    const t = JSON.parse(netConf)?.Backend?.Type;
    return typeof t === "string" ? t.toLowerCase() : "vxlan";
  } catch {
    return "vxlan";
  }
}

function peer9Subnet(input: CaseInput): string {
  return input.peer9?.subnet ?? PEER9.subnet;
}

function peer9Attrs(
  type: string,
  vni: number,
  v4: boolean,
  v6: boolean,
  mode: Mode,
): unknown {
  const data = { VNI: vni, VtepMAC: PEER9.mac };
  const data6 = { VNI: vni, VtepMAC: PEER9.mac6 };
  const isVxlan = type === "vxlan";
  if (mode === "etcd") {
    return {
      // flanneld writes "0.0.0.0" for an IPv6-only lease.
      PublicIP: v4 ? PEER9.ip : "0.0.0.0",
      ...(v6 && { PublicIPv6: PEER9.ip6 }),
      BackendType: type,
      ...(isVxlan && v4 && { BackendData: data }),
      ...(isVxlan && v6 && { BackendV6Data: data6 }),
    };
  }
  const p = "flannel.alpha.coreos.com/";
  return {
    [`${p}backend-type`]: type,
    [`${p}kube-subnet-manager`]: "true",
    ...(v4 && { [`${p}public-ip`]: PEER9.ip }),
    ...(v6 && { [`${p}public-ipv6`]: PEER9.ip6 }),
    ...(isVxlan && v4 && { [`${p}backend-data`]: JSON.stringify(data) }),
    ...(isVxlan && v6 && { [`${p}backend-v6-data`]: JSON.stringify(data6) }),
    ...(!isVxlan && { [`${p}backend-data`]: "null" }),
  };
}

/** Role tokens for one node's snapshot: what must differ, and nothing else. */
export interface Tokens {
  readonly [text: string]: string;
}

/** The values that name "self" and "peer" in a node's snapshot. */
export function tokensOf(
  self: Snapshot,
  selfNode: NodeSpec,
  peer: Snapshot,
  peerNode: NodeSpec,
): Map<string, string> {
  const map = new Map<string, string>();
  const add = (snap: Snapshot, node: NodeSpec, who: string) => {
    map.set(`198.18.0.${node.n}`, `<${who}-ip>`);
    map.set(`198.18.0.10${node.n}`, `<${who}-ip2>`);
    map.set(`fd00:18::${node.n}`, `<${who}-ip6>`);
    map.set(`203.0.113.${node.n}`, `<${who}-nat-ip>`);
    map.set(node.name, `<${who}-node>`);
    map.set(`${PREFIX}-p${node.n}`, `<${who}-port>`);
    for (const l of (snap.links as { ifname: string; address?: string }[])) {
      if (l.address) map.set(l.address, `<${who}-mac:${l.ifname}>`);
    }
    const env = (snap.subnetEnv as string | null) ?? "";
    const sub = /^FLANNEL_SUBNET=([\d.]+)\/(\d+)$/m.exec(env);
    if (sub) {
      const host = sub[1]!;
      const parts = host.split(".").map(Number);
      const net = [...parts.slice(0, 3), parts[3]! - 1].join(".");
      map.set(host, `<${who}-subnet.1>`);
      map.set(net, `<${who}-subnet>`);
    }
    const sub6 = /^FLANNEL_IPV6_SUBNET=([\da-f:]+)\/(\d+)$/m.exec(env);
    if (sub6) {
      const host = sub6[1]!;
      map.set(host, `<${who}-subnet6.1>`);
      map.set(host.replace(/:1$/, ":"), `<${who}-subnet6>`);
    }
    // Link-local addresses come from the MAC (EUI-64).
    for (const a of (snap.addrs as { addrs: { local: string }[] }[])) {
      for (const x of a.addrs) {
        if (x.local.startsWith("fe80:")) map.set(x.local, `<${who}-ll>`);
      }
    }
  };
  add(self, selfNode, "self");
  add(peer, peerNode, "peer");
  return map;
}

/** Replaces each token (a whole IP / MAC / name) by its role. */
export function normalize(
  snap: Snapshot,
  tokens: Map<string, string>,
): Snapshot {
  let text = JSON.stringify(snap);
  const sorted = [...tokens.keys()].sort((a, b) => b.length - a.length);
  for (const t of sorted) {
    const esc = t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    text = text.replace(
      new RegExp(`(?<![\\w.:])${esc}(?![\\w]|\\.\\d|:[\\da-f])`, "gi"),
      tokens.get(t)!,
    );
  }
  const out = JSON.parse(text) as Snapshot;
  // Order by the normalised text: raw order follows subnets and MACs.
  for (const k of ["routes", "neigh", "fdb", "hooks"]) {
    if (Array.isArray(out[k])) (out[k] as unknown[]).sort(byJson);
  }
  return out;
}

/** Fields whose normalised values differ, with both sides. */
export function differences(
  a: Snapshot,
  b: Snapshot,
): Map<string, { flanneld: unknown; weft: unknown }> {
  const out = new Map<string, { flanneld: unknown; weft: unknown }>();
  for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
    if (JSON.stringify(a[k]) !== JSON.stringify(b[k])) {
      out.set(k, { flanneld: a[k], weft: b[k] });
    }
  }
  return out;
}

/**
 * Runs both agents until their state stops changing (or `timeoutMs`), and
 * returns both normalised snapshots.
 */
export async function settle(
  h: Harness,
  mode: Mode,
  input: CaseInput,
  timeoutMs = 30_000,
  /**
   * A change: when it started and each node's raw snapshot before it, so
   * that `converged` counts from the change, not from the first look.
   */
  change?: { readonly t0: number; readonly before: readonly Snapshot[] },
): Promise<
  {
    flanneld: Snapshot;
    weft: Snapshot;
    ms: number;
    /**
     * When each agent's state was last seen changed, in ms after the
     * change (or the start): an upper bound, one snapshot's time late.
     */
    converged: Record<Role, number>;
  }
> {
  const t0 = performance.now();
  if (input.minMs) await sleep(input.minMs);
  const quiet = input.quietMs ?? 1500;
  let last = "";
  let since = performance.now();
  let snaps: Snapshot[] = [];
  const lastOf = NODES.map((_, i) =>
    change ? JSON.stringify(change.before[i]) : ""
  );
  const changedAt = NODES.map(() => 0);
  const from = change?.t0 ?? t0;
  for (;;) {
    snaps = await Promise.all(NODES.map((n) => h.snapshot(mode, n)));
    const text = JSON.stringify(snaps);
    const now = performance.now();
    snaps.forEach((snap, i) => {
      const t = JSON.stringify(snap);
      if (t !== lastOf[i]) {
        if (lastOf[i] !== "") changedAt[i] = now - from;
        lastOf[i] = t;
      }
    });
    // Up (subnet.env written) or gone; an agent that keeps retrying a
    // refused input counts as settled once nothing changed for a while.
    // IPv6 addresses must be past duplicate address detection (up to
    // about 2 s): their local routes only appear then, and one agent's
    // device may be seconds younger than the other's. That holds after
    // the 8 s too (a device made at 7 s is still tentative at 8.5 s),
    // up to the timeout.
    const tentative = await Promise.all(
      NODES.map((n) =>
        run([
          "ip",
          "-n",
          h.nodes.get(n.role)!.name,
          "-6",
          "addr",
          "show",
          "tentative",
        ])
          .then((r) => r.stdout.trim() !== "")
      ),
    );
    const started = !tentative.some((t) => t) &&
      (now - t0 > 8000 ||
        snaps.every((s) => s.exit !== "running" || s.subnetEnv !== null));
    if (text !== last) {
      last = text;
      since = now;
    } else if (started && now - since >= quiet) break;
    if (now - t0 > timeoutMs) break;
    await sleep(250);
  }
  const [f, w] = snaps as [Snapshot, Snapshot];
  const [nf, nw] = NODES as [NodeSpec, NodeSpec];
  return {
    flanneld: normalize(f, tokensOf(f, nf, w, nw)),
    weft: normalize(w, tokensOf(w, nw, f, nf)),
    ms: performance.now() - t0,
    converged: { flanneld: changedAt[0]!, weft: changedAt[1]! },
  };
}

/**
 * The part of a compared field that one documented deviation covers; the
 * rest of the field, and every other field, is still compared.
 */
export interface Narrow {
  /** The snapshot field: `routes`, `subnetEnv`, `etcd`, ... */
  readonly field: string;
  /**
   * The elements of a list field (matched against their JSON, or the line
   * itself) or the lines of a text field it covers; default all of them.
   */
  readonly where?: RegExp;
  /**
   * The one attribute (a dotted path) of those elements, or of an object
   * field, it covers; default the whole element.
   */
  readonly attr?: string;
  /** Its name in the table: `subnetEnv FLANNEL_MTU`. */
  readonly label: string;
  /** Its section in docs/flanneld-differences.md. */
  readonly anchor: string;
}

type Diffs = Map<string, { flanneld: unknown; weft: unknown }>;

function takePath(obj: unknown, path: string): [unknown, unknown] {
  if (typeof obj !== "object" || obj === null) return [obj, undefined];
  const [head, ...tail] = path.split(".");
  const copy = { ...(obj as Record<string, unknown>) };
  if (tail.length === 0) {
    const v = copy[head!];
    delete copy[head!];
    return [copy, v];
  }
  const [rest, v] = takePath(copy[head!], tail.join("."));
  copy[head!] = rest;
  return [copy, v];
}

/** Splits a field value into what `n` covers and the rest. */
function splitField(value: unknown, n: Narrow): [unknown, unknown] {
  const hit = (x: unknown) =>
    !n.where || n.where.test(typeof x === "string" ? x : JSON.stringify(x));
  if (typeof value === "string") {
    const lines = value.split("\n");
    return [
      lines.filter((l) => !hit(l)).join("\n"),
      lines.filter(hit),
    ];
  }
  if (Array.isArray(value)) {
    const rest: unknown[] = [], covered: unknown[] = [];
    for (const el of value) {
      if (!hit(el)) rest.push(el);
      else if (n.attr === undefined) covered.push(el);
      else {
        const [r, v] = takePath(el, n.attr);
        rest.push(r);
        covered.push(v);
      }
    }
    return [rest, covered];
  }
  if (n.attr !== undefined) return takePath(value, n.attr);
  return [null, value];
}

/**
 * Every difference between the two snapshots: the fields outside the
 * narrow deviations, and the covered parts that differ, keyed by the
 * deviation's label.
 */
export function compareSnapshots(
  flanneld: Snapshot,
  weft: Snapshot,
  narrows: readonly Narrow[],
): Map<string, { flanneld: unknown; weft: unknown }> {
  const rest = narrowed(flanneld, weft, narrows);
  const diff = differences(rest.flanneld, rest.weft);
  for (const [k, v] of rest.diffs) diff.set(k, v);
  return diff;
}

/**
 * Takes out of both snapshots what each narrow deviation covers, and
 * returns the rest (to compare as usual) with the covered parts that
 * differ, keyed by the deviation's label.
 */
export function narrowed(
  flanneld: Snapshot,
  weft: Snapshot,
  narrows: readonly Narrow[],
): { flanneld: Snapshot; weft: Snapshot; diffs: Diffs } {
  const f: Snapshot = { ...flanneld }, w: Snapshot = { ...weft };
  const diffs: Diffs = new Map();
  for (const n of narrows) {
    const [fr, fc] = splitField(f[n.field], n);
    const [wr, wc] = splitField(w[n.field], n);
    f[n.field] = fr;
    w[n.field] = wr;
    if (JSON.stringify(fc) !== JSON.stringify(wc)) {
      diffs.set(n.label, { flanneld: fc, weft: wc });
    }
  }
  return { flanneld: f, weft: w, diffs };
}
