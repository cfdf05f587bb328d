/**
 * `deno task demo`: a three-node weft cluster on one machine. Three node
 * namespaces share an underlay bridge (198.18.0.0/24) in a switch
 * namespace that also runs the store: Debian's etcd, or with `--kube` a
 * real kube-apiserver (with etcd >= 3.5). Each node runs weft as its own
 * process with flanneld's flags and the least-privilege permission list;
 * two pods per node are wired by weft's CNI plugin (Debian's bridge and
 * host-local underneath). The demo pings every pod from every pod on the
 * other nodes, measures throughput with iperf3 and prints a report in the
 * shape of a real flannel cluster's debug log: cluster table, each node's
 * subnet.env, the backend's device (flannel.1 with its neighbours and FDB,
 * or flannel-wg with its WireGuard peers), routes, then the traffic.
 * `--backend` picks vxlan (default), host-gw or wireguard (userspace
 * wireguard-go here: this kernel has no WireGuard module).
 *
 * Exit status: 0 when every ping answered, 1 otherwise or on any error,
 * 2 for a usage error. Needs root (namespaces, netlink, iptables).
 *
 * @module
 */
import { isRoot, run } from "./_netns.ts";
import { Cluster, type ClusterNode } from "./_cluster.ts";
import { kubeUnavailable } from "./e2e/_kube.ts";
import { k8sDemo } from "./k8s/demo.ts";
import { cleanupStale as cleanupK8s } from "./k8s/_k8s.ts";
import {
  type Mode,
  type PublishedNode,
  type Scenario,
  startScenario,
} from "./e2e/_scenario.ts";
import {
  nodeWireguard,
  publishedKey,
  wgText,
  WIREGUARD_GO,
} from "./e2e/_wireguard.ts";

const PREFIX = "weft-demo";
const TASK = "deno task demo";

/** Backends the demo runs, the first by default. */
const BACKENDS = ["vxlan", "host-gw", "wireguard"] as const;
type BackendName = typeof BACKENDS[number];

const USAGE =
  `Usage: ${TASK} [--kube | --k8s] [--backend vxlan|host-gw|wireguard] [--keep]
       ${TASK} --clean

Builds a three-node weft cluster in network namespaces on this machine
(etcd subnet manager, VXLAN backend unless told), creates two pods per node through
weft's CNI plugin, checks pod-to-pod traffic across nodes and prints a
report; then removes everything. Needs root.

  --kube   use a real kube-apiserver (--kube-subnet-mgr, Node objects with
           spec.podCIDR) instead of etcd
  --k8s    a real cluster instead: control plane, three kubelet + containerd
           nodes, weft applied as a DaemonSet with kubectl (tests/k8s/)
  --backend B  vxlan (default), host-gw, or wireguard (userspace
           wireguard-go, built by .ci/build_servers.sh --only-wireguard)
  --keep   leave the cluster running for inspection
  --clean  remove a cluster left by --keep or by an interrupted run, and exit
  --help   this text`;

interface Args {
  readonly kube: boolean;
  readonly k8s: boolean;
  readonly keep: boolean;
  readonly clean: boolean;
  readonly help: boolean;
  readonly backend: BackendName;
}

function parseArgs(argv: string[]): Args | string {
  const a = {
    kube: false,
    k8s: false,
    keep: false,
    clean: false,
    help: false,
    backend: "vxlan" as BackendName,
    backendGiven: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--backend" || arg.startsWith("--backend=")) {
      const v = arg === "--backend" ? argv[++i] : arg.slice(10);
      if (!BACKENDS.includes(v as BackendName)) {
        return `Unknown --backend ${JSON.stringify(v ?? "")} (choose ${
          BACKENDS.join(", ")
        })`;
      }
      a.backend = v as BackendName;
      a.backendGiven = true;
      continue;
    }
    switch (arg) {
      case "--kube":
        a.kube = true;
        break;
      case "--k8s":
        a.k8s = true;
        break;
      case "--keep":
        a.keep = true;
        break;
      case "--clean":
        a.clean = true;
        break;
      case "--help":
      case "-h":
        a.help = true;
        break;
      default:
        return `Unknown argument "${arg}"`;
    }
  }
  if (a.kube && a.k8s) return "--kube and --k8s exclude each other";
  if (a.clean && (a.kube || a.k8s || a.keep || a.backendGiven)) {
    return "--clean takes no other argument";
  }
  if (a.k8s && a.backendGiven) {
    return "--backend applies to the namespace demo, not --k8s";
  }
  const { backendGiven: _, ...args } = a;
  return args;
}

// ---------------------------------------------------------------- output

function clock(): string {
  return new Date().toTimeString().slice(0, 8);
}

/** A section header: `21:55:17 - INFO: ...`. */
function info(msg: string): void {
  console.log(`\n${clock()} - INFO: ${msg}`);
}

function block(text: string): void {
  const t = text.replace(/\s+$/, "");
  if (t) console.log(t);
}

function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const r of rows) {
    r.forEach((cell, i) => widths[i] = Math.max(widths[i] ?? 0, cell.length));
  }
  return rows.map((r) =>
    r.map((cell, i) => i === r.length - 1 ? cell : cell.padEnd(widths[i]! + 2))
      .join("")
  ).join("\n");
}

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}

// ---------------------------------------------------------- preflight

/** What the demo runs, and the Debian package that provides it. */
const NEEDS: readonly [path: string, pkg: string][] = [
  ["/usr/sbin/ip", "iproute2"],
  ["/usr/sbin/bridge", "iproute2"],
  ["/usr/bin/ping", "iputils-ping"],
  ["/usr/bin/iperf3", "iperf3"],
  ["/usr/bin/curl", "curl"],
  ["/usr/sbin/iptables-restore", "iptables"],
  ["/usr/lib/cni/bridge", "containernetworking-plugins"],
  ["/usr/lib/cni/host-local", "containernetworking-plugins"],
];
const NEEDS_WIREGUARD: readonly [string, string][] = [
  ["/usr/bin/wg", "wireguard-tools"],
];
const NEEDS_ETCD: readonly [string, string][] = [
  ["/usr/bin/etcd", "etcd-server"],
  ["/usr/bin/etcdctl", "etcd-client"],
];

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function libnlPresent(): Promise<boolean> {
  const r = await run(["sh", "-c", "ldconfig -p | grep -q libnl-route-3"]);
  return r.code === 0;
}

/** The Debian packages missing for this mode (empty when none). */
async function missingPackages(
  mode: Mode,
  backend: BackendName,
): Promise<string[]> {
  const missing = new Set<string>();
  for (
    const [path, pkg] of [
      ...NEEDS,
      ...(mode === "etcd" ? NEEDS_ETCD : []),
      ...(backend === "wireguard" ? NEEDS_WIREGUARD : []),
    ]
  ) {
    if (!await exists(path)) missing.add(pkg);
  }
  if (!await libnlPresent()) {
    missing.add("libnl-3-200").add("libnl-route-3-200");
  }
  return [...missing];
}

// ------------------------------------------------------------- report

async function nsText(node: ClusterNode, cmd: string[]): Promise<string> {
  const r = await node.ns.tryExec(cmd);
  return r.code === 0 ? r.stdout : `(${cmd.join(" ")}: ${r.stderr.trim()})`;
}

/** The agent's real command line, from /proc (after `ip netns exec`). */
async function agentCommand(node: ClusterNode): Promise<string> {
  const pid = node.agent?.child.pid;
  if (pid === undefined) return "(not running)";
  // Deno guards /proc/<pid> behind --allow-all; cat reads it plainly.
  const r = await run(["cat", `/proc/${pid}/cmdline`]);
  const argv = r.stdout.split("\0").filter((a) => a !== "");
  if (r.code !== 0 || argv.length === 0) return `(pid ${pid})`;
  const main = argv.findIndex((a) => a.endsWith("main.ts"));
  return [
    `NODE_NAME=${node.name} ip netns exec ${node.ns.name} \\`,
    `  ${argv.slice(0, main).join(" ")} \\`,
    `  ${argv.slice(main).join(" ")}`,
  ].join("\n");
}

async function reportNodes(
  s: Scenario,
  pub: PublishedNode[],
  backend: BackendName,
): Promise<void> {
  const c = s.cluster;
  info("Cluster info:");
  block(table([
    [
      "name",
      "subnet",
      "public IP",
      backend === "wireguard" ? "PublicKey" : "VtepMAC",
      "ready after",
    ],
    ...pub.map((p) => [
      p.name,
      p.subnet,
      p.publicIP,
      backend === "wireguard" ? publishedKey(p) : p.vtepMAC || "-",
      secs(s.readyMs.get(p.name) ?? NaN),
    ]),
  ]));
  console.log("");
  block(table([
    ["pod", "podIP", "nodeName", "netns"],
    ...c.pods.map((p) => [p.id, p.ip, p.node.name, p.ns.name]),
  ]));

  info(`How weft runs on ${c.nodes[0]!.name} (one process per node):`);
  block(await agentCommand(c.nodes[0]!));

  for (const node of c.nodes) {
    console.log(
      `\n=== ${node.name} node info (ip netns exec ${node.ns.name}) ===`,
    );
    info(`Flannel dynamic configuration (${node.subnetFile})`);
    block(await Deno.readTextFile(node.subnetFile));
    info("Network IPv4 addresses (ip -4 addr)");
    block(await nsText(node, ["ip", "-4", "addr"]));
    if (backend === "vxlan") {
      info("VXLAN network devices (ip -d link show flannel.1)");
      block(await nsText(node, ["ip", "-d", "link", "show", "flannel.1"]));
    } else if (backend === "wireguard") {
      info("WireGuard device (ip -d link show flannel-wg; userspace: a tun)");
      block(await nsText(node, ["ip", "-d", "link", "show", "flannel-wg"]));
      info("WireGuard peers (wg show flannel-wg)");
      block(await wgText(node));
    }
    info("Network routes (ip route)");
    block(await nsText(node, ["ip", "route"]));
    if (backend === "vxlan") {
      info("ARP cache entries (ip neigh)");
      block(await nsText(node, ["ip", "neigh"]));
      info(
        "Forwarding Database entries of flannel.1 (bridge fdb show dev flannel.1)",
      );
      block(await nsText(node, ["bridge", "fdb", "show", "dev", "flannel.1"]));
    }
    info("Virtual Ethernet network devices connected to cni0");
    block(await nsText(node, ["ip", "-br", "link", "show", "master", "cni0"]));
    const mine = pub.find((p) => p.name === node.name);
    info(
      s.mode === "kube"
        ? `Flannel annotations of Node ${node.name}`
        : `Lease in etcd (${mine?.source ?? "none"})`,
    );
    block(mine?.raw ?? "(none)");
  }
}

interface TrafficResult {
  readonly pingsOk: number;
  readonly pingsTotal: number;
  readonly failures: string[];
}

/** The overlay device and how its MTU is derived, per backend. */
const DEVICE: Readonly<Record<BackendName, [string, string] | undefined>> = {
  "vxlan": [
    "flannel.1",
    "underlay − 50: outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14",
  ],
  "host-gw": undefined,
  "wireguard": [
    "flannel-wg",
    "underlay − 80, as flanneld: IPv6 40 + UDP 8 + WireGuard header 16 + tag 16",
  ],
};

async function reportTraffic(
  s: Scenario,
  backend: BackendName,
): Promise<TrafficResult> {
  const c = s.cluster;
  const failures: string[] = [];
  const [n1, n2] = c.nodes;
  const from = c.pod(`${n1!.name}-pod1`);
  const to = c.pod(`${n2!.name}-pod1`);

  info(`Traffic verification: path from ${from.id} to ${to.id}`);
  block(`${from.id}$ ip route get ${to.ip}`);
  block((await from.ns.exec(["ip", "route", "get", to.ip])).trim());
  block(`${n1!.name}$ ip route get ${to.ip}`);
  block((await n1!.ns.exec(["ip", "route", "get", to.ip])).trim());

  const m = await c.pingMatrix();
  const ok = m.filter((r) => r.ok).length;
  info(
    `Ping matrix: every pod to every pod on the other nodes (rtt ms, one echo each): ${ok}/${m.length} ok`,
  );
  const ids = c.pods.map((p) => p.id);
  block(table([
    ["from \\ to", ...ids],
    ...ids.map((a) => [
      a,
      ...ids.map((b) => {
        const r = m.find((r) => r.from === a && r.to === b);
        if (!r) return "·";
        return r.ok ? (r.rttMs?.toFixed(3) ?? "ok") : "FAIL";
      }),
    ]),
  ]));
  for (const r of m.filter((r) => !r.ok)) {
    failures.push(`ping ${r.from} -> ${r.to} failed`);
  }

  info(`Throughput: iperf3 ${from.id} -> ${to.id}, TCP, 3 s`);
  try {
    const r = await c.iperf(from.id, to.id, 3);
    block(
      `${
        (r.bitsPerSecond / 1e9).toFixed(2)
      } Gbit/s received, ${r.retransmits} retransmits (${backend} over a veth underlay, one CPU-bound stream)`,
    );
  } catch (e) {
    failures.push(`iperf3: ${(e as Error).message}`);
    block(`FAILED: ${(e as Error).message}`);
  }

  const small = c.pod(`${n1!.name}-pod2`);
  const far = c.pod(`${n2!.name}-pod2`);
  info(`MTU`);
  const mtuOf = async (
    ns: { exec(cmd: string[]): Promise<string> },
    dev: string,
  ) =>
    (JSON.parse(await ns.exec(["ip", "-j", "link", "show", dev])) as {
      mtu: number;
    }[])[0]?.mtu;
  const env = await n1!.subnetEnv();
  const dev = DEVICE[backend];
  block(table([
    ["underlay eth0", String(await mtuOf(n1!.ns, "eth0"))],
    ...(dev ? [[dev[0], `${await mtuOf(n1!.ns, dev[0])} (${dev[1]})`]] : []),
    ["FLANNEL_MTU", env.FLANNEL_MTU ?? "(missing)"],
    ["cni0", String(await mtuOf(n1!.ns, "cni0"))],
    [`${small.id} eth0`, String(await mtuOf(small.ns, "eth0"))],
  ]));
  // The largest ICMP payload that fits the pod MTU: MTU − IPv4 20 − ICMP 8.
  const mtu = Number(env.FLANNEL_MTU);
  const payload = mtu - 28;
  const fits = await c.pingRun(small.id, far.ip, {
    count: 2,
    size: payload,
    dontFragment: true,
    deadline: 3,
  });
  const tooBig = await c.pingRun(small.id, far.ip, {
    count: 1,
    size: payload + 1,
    dontFragment: true,
    deadline: 1,
  });
  block(
    `ping -M do -s ${payload} ${far.ip} (${mtu}-byte packets, ${small.id} -> ${far.id}): ${fits.received}/${fits.transmitted} answered`,
  );
  block(
    `ping -M do -s ${payload + 1} ${far.ip} (${mtu + 1} bytes): ${
      tooBig.received === 0
        ? "refused at the pod, larger than its MTU (as it should be)"
        : "ANSWERED (the MTU is not enforced)"
    }`,
  );
  if (fits.received !== fits.transmitted || fits.transmitted === 0) {
    failures.push(`${mtu}-byte packets do not cross the overlay`);
  }
  return { pingsOk: ok, pingsTotal: m.length, failures };
}

// ---------------------------------------------------------------- main

let active: Scenario | undefined;
/** Set by SIGINT/SIGTERM; the handler tears down and exits 130. */
let interrupted = false;

async function teardown(): Promise<void> {
  if (active) await active.close().catch(() => {});
  active = undefined;
  await Cluster.cleanup(PREFIX);
}

async function main(argv: string[]): Promise<number> {
  const args = parseArgs(argv);
  if (typeof args === "string") {
    console.error(`${args}\n\n${USAGE}`);
    return 2;
  }
  if (args.help) {
    console.log(USAGE);
    return 0;
  }
  if (!isRoot()) {
    console.error(
      `The demo needs root: it creates network namespaces, VXLAN devices and iptables rules. Run it as root, e.g.:\n  sudo ${TASK}${
        argv.length ? ` ${argv.join(" ")}` : ""
      }`,
    );
    return 1;
  }
  if (args.clean) {
    await Cluster.cleanup(PREFIX);
    await cleanupK8s();
    console.log(
      `Removed the demo cluster: namespaces ${PREFIX}-*, their processes, /tmp/${PREFIX} and host-local state`,
    );
    return 0;
  }
  if (args.k8s) return await k8sDemo(args.keep);
  const mode: Mode = args.kube ? "kube" : "etcd";
  const missing = await missingPackages(mode, args.backend);
  if (missing.length > 0) {
    console.error(
      `Missing Debian packages: ${
        missing.join(" ")
      }. Install them with:\n  sudo bash tests/prepare.sh --demo\nor\n  sudo apt-get install -y ${
        missing.join(" ")
      }`,
    );
    return 1;
  }
  if (args.backend === "wireguard" && !await exists(WIREGUARD_GO)) {
    console.error(
      `--backend wireguard needs userspace WireGuard (this kernel may lack the module): ${WIREGUARD_GO} is missing. Build it with:\n  bash .ci/build_servers.sh --only-wireguard`,
    );
    return 1;
  }
  if (mode === "kube") {
    const why = await kubeUnavailable();
    if (why) {
      console.error(`--kube cannot run: ${why}`);
      return 1;
    }
  }

  const onSignal = () => {
    interrupted = true;
    console.error("\nInterrupted: removing the demo cluster");
    // The interrupted step may still be creating a namespace or process:
    // sweep again once it had time to.
    teardown()
      .then(() => new Promise((r) => setTimeout(r, 500)))
      .then(() => Cluster.cleanup(PREFIX))
      .finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  const t0 = performance.now();
  console.log(
    `weft demo: 3 nodes, ${
      mode === "kube" ? "Kubernetes (--kube-subnet-mgr)" : "etcd"
    } subnet manager, ${args.backend} backend`,
  );
  info(
    `Building namespaces ${PREFIX}-sw (switch: bridge br0, 198.18.0.254/24) and ${PREFIX}-n1..n3 (eth0 198.18.0.1-3)`,
  );
  let failures: string[] = [];
  let traffic: TrafficResult | undefined;
  try {
    active = await startScenario({
      prefix: PREFIX,
      mode,
      detached: args.keep,
      progress: (msg) => info(msg),
      netConf:
        `{"Network":"10.244.0.0/16","Backend":{"Type":"${args.backend}"}}`,
      ...(args.backend === "wireguard" && { agentExtra: nodeWireguard }),
    });
    const s = active;
    const pub = await s.published();
    info(`Pods created through weft's CNI plugin (bridge cni0 + host-local)`);
    await reportNodes(s, pub, args.backend);
    traffic = await reportTraffic(s, args.backend);
    failures = traffic.failures;
  } catch (e) {
    failures.push((e as Error).stack ?? String(e));
    console.error(`\nThe demo failed: ${(e as Error).stack ?? e}`);
    console.error(`Logs: /tmp/${PREFIX}/node*/weft.log, /tmp/${PREFIX}/*.log`);
  }

  // Whatever failed after an interrupt failed because of the teardown:
  // leave the exit to the signal handler.
  if (interrupted) return await new Promise<number>(() => {});
  info("Summary");
  if (traffic) {
    block(
      `${traffic.pingsOk}/${traffic.pingsTotal} cross-node pod pings answered; whole run ${
        secs(performance.now() - t0)
      }`,
    );
  }
  for (const f of failures) block(`FAILED: ${f.split("\n")[0]}`);

  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
  if (args.keep && active) {
    const n = active.cluster.nodes[0]!;
    block(
      [
        "",
        "The cluster is left running (--keep). Look around:",
        `  ip netns list | grep ${PREFIX}`,
        `  ip netns exec ${n.ns.name} ip route`,
        args.backend === "wireguard"
          ? `  ip netns exec ${n.ns.name} unshare -m sh -c 'mount --bind ${n.dir}/wireguard /var/run/wireguard && wg show'`
          : `  ip netns exec ${n.ns.name} bridge fdb show dev flannel.1`,
        `  ip netns exec ${PREFIX}-1p1 ping ${
          active.cluster.pod(`${active.cluster.nodes[1]!.name}-pod1`).ip
        }`,
        `  tail -f /tmp/${PREFIX}/${n.name}/weft.log`,
        `Remove it with:\n  sudo ${TASK} --clean`,
      ].join("\n"),
    );
  } else {
    await teardown();
    block(`Removed the cluster (namespaces, processes, /tmp/${PREFIX}).`);
  }
  return failures.length > 0 ? 1 : 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
