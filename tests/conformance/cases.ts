/**
 * The conformance cases: the inputs both agents get, and the fields in
 * which weft deliberately differs, each naming its section of
 * docs/flanneld-differences.md. A case without deviations asserts that
 * every compared field is equal.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  type CaseInput,
  ETCD_PREFIX,
  type Harness,
  hookLog,
  type Mode,
  type Narrow,
  NODES,
  type NodeSpec,
  PEER9,
  type PeerSpec,
  type Snapshot,
} from "./_harness.ts";
import type { Netns } from "../_netns.ts";

/** The document every deviation links to. */
export const DOC = "docs/flanneld-differences.md";

export interface Case {
  readonly id: string;
  readonly title: string;
  readonly input: CaseInput;
  /** Default both. */
  readonly modes?: readonly Mode[];
  /**
   * Field → anchor in DOC, in every mode: the whole field differs (one
   * agent has no state there at all, or runs another backend). Prefer
   * `narrow`.
   */
  readonly deviations?: Readonly<Record<string, string>>;
  /** Deviations covering part of a field only (see Narrow), by mode. */
  readonly narrow?: readonly (Narrow & { readonly modes?: readonly Mode[] })[];
  /**
   * flanneld was given another net-conf (`input.flanneldNetConf`): the
   * anchor in DOC saying why weft reads `input.netConf` as that one.
   */
  readonly inputDeviation?: string;
  /**
   * Why the backend cannot run here for either agent (no kernel module):
   * the row says "not compared here", whatever else the case asserts.
   */
  readonly notCompared?: string;
  readonly etcdDeviations?: Readonly<Record<string, string>>;
  readonly kubeDeviations?: Readonly<Record<string, string>>;
  /** What was fixed in weft for this case to be equal. */
  readonly fixed?: string;
  /** The fixing commit's subject starts with this (default "flanneld parity"). */
  readonly fixedIn?: string;
  /** Extra assertions on the normalised snapshots (both agents). */
  readonly check?: (flanneld: Snapshot, weft: Snapshot, mode: Mode) => void;
  readonly afterText?: string;
  readonly afterMs?: number;
  /** After comparing: pods on both nodes ping each other over these families. */
  readonly ping?: readonly ("v4" | "v6")[];
  /**
   * Changes made one after the other once the start was compared, both
   * agents running on the same cluster: after each, the full state is
   * compared again and each agent's convergence time recorded.
   */
  readonly steps?: readonly Step[];
}

/** One change of a moving case. */
export interface Step {
  readonly id: string;
  /** What changes, for the table. */
  readonly text: string;
  /** Makes the change (and waits until the cluster shows it). */
  readonly change: (h: Harness, mode: Mode, input: CaseInput) => Promise<void>;
  /** What differs after this step (only these; nothing of the case's). */
  readonly narrow?: readonly (Narrow & { readonly modes?: readonly Mode[] })[];
  readonly check?: (flanneld: Snapshot, weft: Snapshot, mode: Mode) => void;
}

const NET = '"Network":"10.244.0.0/16"';
const DUAL = `${NET},"EnableIPv6":true,"IPv6Network":"fc00::/48"`;
const V6ONLY = '"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"';
const conf = (extra: string, backend = '{"Type":"vxlan"}') =>
  `{${extra},"Backend":${backend}}`;
const vx = (keys = "") => conf(NET, `{"Type":"vxlan"${keys}}`);
const VX = vx();

type Link = {
  ifname: string;
  mtu: number;
  linkinfo?: { info_data?: Record<string, unknown> };
};
type Route = { dst: string; type?: string; gateway?: string; dev?: string };

function links(s: Snapshot): Link[] {
  return s.links as Link[];
}
function routes(s: Snapshot): Route[] {
  return s.routes as Route[];
}
function both(f: (s: Snapshot, who: string) => void) {
  return (a: Snapshot, b: Snapshot) => {
    f(a, "flanneld");
    f(b, "weft");
  };
}
function mtu(dev: string, want: number) {
  return both((s, who) =>
    assert.equal(
      links(s).find((l) => l.ifname === dev)?.mtu,
      want,
      `${who} ${dev} mtu`,
    )
  );
}
function vxlanData(dev: string, key: string, want: unknown) {
  return both((s, who) =>
    assert.deepEqual(
      links(s).find((l) => l.ifname === dev)?.linkinfo?.info_data?.[key],
      want,
      `${who} ${dev} ${key}`,
    )
  );
}
function hasRoute(pred: (r: Route) => boolean, what: string) {
  return both((s, who) => assert.ok(routes(s).some(pred), `${who}: ${what}`));
}
function exited(code: number) {
  return both((s, who) => assert.equal(s.exit, code, `${who} exit code`));
}
function running() {
  return both((s, who) =>
    assert.equal(s.exit, "running", `${who} still running`)
  );
}
function envHas(line: string) {
  return both((s, who) =>
    assert.ok(
      String(s.subnetEnv).split("\n").includes(line),
      `${who} subnet.env has ${line}`,
    )
  );
}
function published(key: string, want: string) {
  return (a: Snapshot, b: Snapshot, mode: Mode) => {
    for (const [s, who] of [[a, "flanneld"], [b, "weft"]] as const) {
      if (mode === "kube") {
        const ann =
          (s.node as { annotations: Record<string, string> }).annotations;
        assert.equal(
          ann[`flannel.alpha.coreos.com/${key}`],
          want,
          `${who} ${key}`,
        );
      } else {
        const v = JSON.parse((s.etcd as { value: string }).value);
        assert.equal(
          v[key === "public-ip" ? "PublicIP" : "PublicIPv6"],
          want,
          `${who} ${key}`,
        );
      }
    }
  };
}
const all =
  (...fs: ((a: Snapshot, b: Snapshot, m: Mode) => void)[]) =>
  (a: Snapshot, b: Snapshot, m: Mode) => {
    for (const f of fs) f(a, b, m);
  };

/** The `FLANNEL_MTU` line of subnet.env, as a narrow deviation. */
function mtuLine(anchor: string): Narrow {
  return {
    field: "subnetEnv",
    where: /^FLANNEL_MTU=/,
    label: "subnetEnv FLANNEL_MTU",
    anchor,
  };
}

/** An entry naming the foreign peer (its subnet, address or MAC). */
const PEER9_ENTRY = /10\.244\.9\.|"198\.18\.0\.9"|0a:58:0a:f4:09:0/;

/** The foreign peer as the moving case changes it. */
const P9: PeerSpec = {
  name: PEER9.name,
  subnet: PEER9.subnet,
  ip: PEER9.ip,
  mac: PEER9.mac,
};
const P9_MOVED: PeerSpec = { ...P9, ip: "198.18.0.19" };
const P9_NEW_MAC: PeerSpec = { ...P9_MOVED, mac: "0a:58:0a:f4:09:99" };
/** The subnets the agents held before `motion-own-lease` moved them. */
const MOVED: string[] = [];
/** A second foreign peer, added and removed by the moving case. */
const P7: PeerSpec = {
  name: "peer7",
  subnet: "10.244.7.0/24",
  ip: "198.18.0.7",
  mac: "0a:58:0a:f4:07:00",
};

/** Polls until `cond` holds, or throws after `ms`. */
async function until(what: string, cond: () => Promise<boolean>, ms = 20_000) {
  const t0 = performance.now();
  while (!(await cond())) {
    if (performance.now() - t0 > ms) {
      throw new Error(`${what}: not within ${ms} ms`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Whether both agents route `dst` through the VXLAN device. */
function routed(dst: string, want: boolean) {
  return both((s, who) =>
    assert.equal(
      routes(s).some((r) => r.dst === dst && r.dev === "flannel.1"),
      want,
      `${who}: route to ${dst}`,
    )
  );
}

type Fdb = { mac: string; dst?: string };
function fdbOf(s: Snapshot, mac: string): string[] {
  return (s.fdb as Fdb[]).filter((f) => f.mac === mac).map((f) => f.dst ?? "");
}

/**
 * What differs once the device was recreated: the peer entries flanneld
 * does not replay, and in etcd mode the VtepMAC its lease still publishes.
 */
const REPLAYED: readonly (Narrow & { readonly modes?: readonly Mode[] })[] = [
  {
    field: "routes",
    where: /"gateway":"[^"]*","dev":"flannel\.1"/,
    label: "peer routes",
    anchor: "device-recreated",
  },
  { field: "neigh", label: "peer neighbours", anchor: "device-recreated" },
  { field: "fdb", label: "peer FDB entries", anchor: "device-recreated" },
  {
    field: "etcd",
    attr: "value",
    label: "etcd lease value (VtepMAC)",
    anchor: "device-recreated",
    modes: ["etcd"],
  },
];

/** flanneld's recreated device has no peers; weft's has both again. */
function replayed(f: Snapshot, w: Snapshot) {
  const peers = (s: Snapshot) =>
    routes(s).filter((r) => r.dev === "flannel.1" && r.gateway).length;
  assert.equal(peers(f), 0, "flanneld does not replay its peers");
  assert.equal(peers(w), 2, "weft replays both peers");
}

/** The peers routed through the IPv6 VXLAN device. */
function v6Peers(s: Snapshot): string[] {
  return routes(s).filter((r) => r.dev === "flannel-v6.1" && r.gateway)
    .map((r) => r.dst);
}

/** IPv6 only in etcd mode, flanneld programs no peer at all. */
const V6_ETCD_PEERS: readonly Narrow[] = [
  {
    field: "routes",
    where: /"gateway":"[^"]*","dev":"flannel-v6\.1"/,
    label: "IPv6 peer routes",
    anchor: "ipv6-only-etcd-peers",
  },
  {
    field: "neigh",
    label: "IPv6 peer neighbours",
    anchor: "ipv6-only-etcd-peers",
  },
  {
    field: "fdb",
    label: "IPv6 peer FDB entries",
    anchor: "ipv6-only-etcd-peers",
  },
];

/** Deletes eth0 (the veth pair goes with it) and wires a new one. */
async function recreateUnderlay(
  h: Harness,
  ns: Netns,
  node: NodeSpec,
  input: CaseInput,
) {
  await ns.ip("link", "del", "eth0");
  await new Promise((r) => setTimeout(r, 1500));
  await h.wire(ns, node, input);
}

/**
 * An extension command that records how it was run in `hookLog` (its
 * arguments, flanneld's variables, its stdin in base64); `pre` also prints
 * backend data that JSON must escape. In an environment variable, so the
 * command string stays one word per argument (flanneld runs no shell).
 */
const HOOK_SCRIPT =
  `echo "$* NETWORK=\${NETWORK-unset} SUBNET=\${SUBNET-unset} ` +
  `IPV6SUBNET=\${IPV6SUBNET-unset} PUBLIC_IP=\${PUBLIC_IP-unset} ` +
  `PUBLIC_IPV6=\${PUBLIC_IPV6-unset} stdin=$(base64 -w0)" ` +
  `>>${hookLog("$NODE_NAME")}; [ "$1" != pre ] || echo ' <pre & data> '`;
const hook = (event: string) => `/bin/sh -c $WEFT_CONF_HOOK hook ${event}`;
const EXTENSION = conf(
  NET,
  JSON.stringify({
    Type: "extension",
    PreStartupCommand: hook("pre"),
    PostStartupCommand: hook("post ${SUBNET}"),
    SubnetAddCommand: hook("add $SUBNET $PUBLIC_IP"),
    SubnetRemoveCommand: hook("remove $SUBNET"),
  }),
);

/** Deletes the foreign peer's lease (etcd) or Node (kube), once. */
async function deletePeer9(h: Harness, _ns: Netns, node: NodeSpec) {
  if (node.role !== "flanneld") return;
  await h.etcdctl("del", `${ETCD_PREFIX}/subnets/10.244.9.0-24`);
  if ((await h.kube?.nodes())?.some((n) => n.metadata.name === PEER9.name)) {
    await h.kube!.deleteNode(PEER9.name);
  }
}

/** Both agents ran `event` for each of `who` (role tokens of the IP). */
function ran(event: string, who: string[]) {
  return both((s, agent) => {
    const lines = (s.hooks as string[] | undefined) ?? [];
    for (const w of who) {
      assert.ok(
        lines.some((l) => l.startsWith(`${event} `) && l.includes(w)),
        `${agent} ran no ${event} for ${w}:\n${lines.join("\n")}`,
      );
    }
  });
}

export const CASES: readonly Case[] = [
  // ---- net-conf.json --------------------------------------------------------
  {
    id: "vxlan-default",
    title: "default vxlan",
    ping: ["v4"],
    input: { netConf: VX },
    check: all(
      mtu("flannel.1", 1450),
      vxlanData("flannel.1", "port", 8472),
      envHas("FLANNEL_MTU=1450"),
    ),
  },
  {
    id: "vni-7",
    title: "VNI 7: device flannel.7",
    ping: ["v4"],
    input: { netConf: vx(',"VNI":7') },
    check: vxlanData("flannel.7", "id", 7),
  },
  {
    id: "port-4789",
    title: "Port 4789",
    ping: ["v4"],
    input: { netConf: vx(',"Port":4789') },
    check: vxlanData("flannel.1", "port", 4789),
  },
  {
    id: "gbp",
    title: "GBP",
    input: { netConf: vx(',"GBP":true') },
    check: vxlanData("flannel.1", "gbp", true),
  },
  {
    id: "learning",
    title: "Learning",
    input: { netConf: vx(',"Learning":true') },
    check: vxlanData("flannel.1", "learning", true),
  },
  {
    id: "directrouting",
    title: "DirectRouting, both nodes on one L2 segment",
    ping: ["v4"],
    input: { netConf: vx(',"DirectRouting":true') },
    check: hasRoute(
      (r) =>
        r.dst === "<peer-subnet>/24" && r.gateway === "<peer-ip>" &&
        r.dev === "eth0",
      "direct route to the other agent",
    ),
  },
  {
    id: "mtu-1400",
    title: "Backend.MTU 1400 is the underlay MTU",
    ping: ["v4"],
    input: { netConf: vx(',"MTU":1400') },
    fixed: "device MTU is Backend.MTU − 50",
    check: all(mtu("flannel.1", 1350), envHas("FLANNEL_MTU=1350")),
  },
  {
    id: "mtu-9000",
    title: "Backend.MTU above the underlay's",
    input: { netConf: vx(',"MTU":9000') },
    fixed: "device MTU is Backend.MTU − 50, capped by the kernel",
    check: mtu("flannel.1", 1450),
    narrow: [mtuLine("mtu-above-underlay")],
  },
  {
    id: "subnetlen-26",
    title: "SubnetLen 26",
    modes: ["etcd"],
    // The foreign peer's /24 lease does not fit SubnetLen 26: only its
    // entries differ.
    narrow: ["routes", "neigh", "fdb"].map((field) => ({
      field,
      where: PEER9_ENTRY,
      label: `${field} of the /24 peer`,
      anchor: "foreign-lease-size",
    })),
    input: { netConf: `{${NET},"SubnetLen":26,"Backend":{"Type":"vxlan"}}` },
    check: envHas("FLANNEL_NETWORK=10.244.0.0/16"),
  },
  {
    id: "subnet-min-max",
    title: "SubnetMin / SubnetMax",
    modes: ["etcd"],
    input: {
      netConf:
        `{${NET},"SubnetMin":"10.244.50.0","SubnetMax":"10.244.51.0","Backend":{"Type":"vxlan"}}`,
    },
  },
  {
    id: "network-22",
    title: "Network /22 with SubnetLen 24",
    modes: ["etcd"],
    input: {
      netConf: '{"Network":"10.244.0.0/22","Backend":{"Type":"vxlan"}}',
      noPeer9: true,
    },
  },
  {
    id: "hostgw",
    title: "host-gw",
    ping: ["v4"],
    input: { netConf: conf(NET, '{"Type":"host-gw"}') },
    check: all(
      envHas("FLANNEL_MTU=1500"),
      hasRoute(
        (r) => r.dst === "<peer-subnet>/24" && r.gateway === "<peer-ip>",
        "host-gw route",
      ),
    ),
  },
  {
    id: "nftables",
    title: "EnableNFTables",
    ping: ["v4"],
    fixed: "both flannel tables created, as flanneld does",
    fixedIn: "conformance findings",
    input: {
      netConf: `{${NET},"EnableNFTables":true,"Backend":{"Type":"vxlan"}}`,
    },
  },
  {
    id: "nftables-masq",
    title: "EnableNFTables with --ip-masq",
    input: {
      netConf: `{${NET},"EnableNFTables":true,"Backend":{"Type":"vxlan"}}`,
      flags: ["--ip-masq"],
    },
    narrow: [{
      field: "nftables",
      where: / return$/,
      label: "nftables masquerade return rule",
      anchor: "nftables-masquerade-rule",
    }],
  },
  {
    id: "backend-missing",
    title: "no Backend",
    input: { netConf: `{${NET}}` },
    deviations: {
      links: "missing-backend",
      addrs: "missing-backend",
      routes: "missing-backend",
      subnetEnv: "missing-backend",
      neigh: "missing-backend",
      fdb: "missing-backend",
    },
    etcdDeviations: { etcd: "missing-backend" },
    kubeDeviations: { node: "missing-backend" },
  },
  {
    id: "backend-empty",
    title: "empty Backend object",
    input: { netConf: `{${NET},"Backend":{}}` },
    deviations: {
      exit: "empty-backend",
      links: "empty-backend",
      addrs: "empty-backend",
      routes: "empty-backend",
      neigh: "empty-backend",
      fdb: "empty-backend",
      subnetEnv: "empty-backend",
      iptables: "empty-backend",
      nftables: "empty-backend",
    },
    etcdDeviations: { etcd: "empty-backend" },
    kubeDeviations: { node: "empty-backend" },
    check: (f, w) => {
      assert.equal(f.exit, 1, "flanneld refuses");
      assert.equal(w.exit, "running", "weft runs vxlan");
    },
  },
  {
    id: "backend-missing-as-vxlan",
    title: "no Backend, beside flanneld given vxlan",
    modes: ["kube"],
    // weft's state for a net-conf without Backend, every attribute
    // compared with flanneld's for the vxlan config weft says it uses.
    input: { netConf: `{${NET}}`, flanneldNetConf: VX },
    inputDeviation: "missing-backend",
    check: mtu("flannel.1", 1450),
  },
  {
    id: "backend-empty-as-vxlan",
    title: "empty Backend object, beside flanneld given vxlan",
    modes: ["kube"],
    input: { netConf: `{${NET},"Backend":{}}`, flanneldNetConf: VX },
    inputDeviation: "empty-backend",
    check: mtu("flannel.1", 1450),
  },
  {
    id: "type-wireguard",
    title: "wireguard (no kernel module here)",
    input: { netConf: conf(NET, '{"Type":"wireguard"}') },
    notCompared: "no WireGuard kernel module here: both agents exit 1",
    check: exited(1),
  },
  {
    id: "type-ipip",
    title: "ipip (no kernel module here)",
    input: { netConf: conf(NET, '{"Type":"ipip"}') },
    notCompared: "no ipip kernel module here: both agents exit 1",
    etcdDeviations: { etcd: "unsupported-backend-lease" },
    kubeDeviations: { node: "unsupported-backend-lease" },
    check: exited(1),
  },
  {
    id: "type-udp",
    title: "udp",
    input: { netConf: conf(NET, '{"Type":"udp"}') },
    deviations: {
      exit: "udp-backend",
      links: "udp-backend",
      addrs: "udp-backend",
      routes: "udp-backend",
      subnetEnv: "udp-backend",
      iptables: "udp-backend",
      nftables: "udp-backend",
    },
    etcdDeviations: { etcd: "udp-backend" },
    kubeDeviations: { node: "udp-backend" },
    check: (f, w) => {
      assert.equal(f.exit, "running", "flanneld runs udp");
      assert.equal(w.exit, 1, "weft refuses udp");
    },
  },
  {
    id: "type-unknown",
    title: "unknown backend type",
    input: { netConf: conf(NET, '{"Type":"carrier-pigeon"}') },
    check: exited(1),
  },
  {
    id: "vni-string",
    title: "VNI of the wrong JSON type",
    input: { netConf: vx(',"VNI":"1"') },
  },
  {
    id: "dual-stack",
    title: "dual stack vxlan",
    ping: ["v4", "v6"],
    fixed: "the kernel's route for the IPv6 device address is kept",
    fixedIn: "conformance findings",
    input: { netConf: conf(DUAL) },
    check: all(
      mtu("flannel.1", 1450),
      mtu("flannel-v6.1", 1430),
      envHas("FLANNEL_MTU=1450"),
    ),
  },
  {
    id: "dual-stack-mtu-1400",
    title: "dual stack, Backend.MTU 1400",
    input: { netConf: conf(DUAL, '{"Type":"vxlan","MTU":1400}') },
    fixed: "device MTU is Backend.MTU − 50",
    check: all(mtu("flannel.1", 1350), mtu("flannel-v6.1", 1350)),
  },
  {
    id: "ipv6-only",
    title: "IPv6 only vxlan over the IPv6 underlay",
    modes: ["kube"],
    ping: ["v6"],
    fixed: "the kernel's route for the IPv6 device address is kept",
    fixedIn: "conformance findings",
    input: { netConf: conf(V6ONLY) },
    check: mtu("flannel-v6.1", 1430),
    narrow: [mtuLine("ipv6-only-mtu")],
  },
  {
    id: "ipv6-only-etcd",
    title: "IPv6 only in etcd mode, flanneld's lease first",
    modes: ["etcd"],
    fixed: "IPv6-only etcd mode, keys `0.0.0.0-0&<IPv6 subnet>`",
    fixedIn: "etcd mode runs IPv6 only",
    // flanneld takes over any IPv6-only lease it lists first (see
    // ipv6-only-lease-takeover): it must be up before weft's exists.
    input: { netConf: conf(V6ONLY), noPeer9: true, flanneldFirst: true },
    narrow: [mtuLine("ipv6-only-mtu"), ...V6_ETCD_PEERS],
    check: all(mtu("flannel-v6.1", 1430), (f, w) => {
      for (const [s, who] of [[f, "flanneld"], [w, "weft"]] as const) {
        assert.match(
          (s.etcd as { key: string }).key,
          /\/subnets\/0\.0\.0\.0-0&<self-subnet6>-64$/,
          `${who}'s key`,
        );
      }
      assert.deepEqual(v6Peers(f), [], "flanneld programs no peer");
      assert.deepEqual(v6Peers(w), ["<peer-subnet6>/64"], "weft: flanneld's");
    }),
  },
  {
    id: "ipv6-only-etcd-takeover",
    title: "IPv6 only in etcd mode with another node's lease in etcd",
    modes: ["etcd"],
    // The foreign peer's lease, as flanneld writes it, is listed before
    // either agent's: flanneld takes it over, weft allocates its own.
    input: { netConf: conf(V6ONLY), flanneldFirst: true },
    narrow: [mtuLine("ipv6-only-mtu"), ...V6_ETCD_PEERS],
    check: (f, w) => {
      // Had flanneld not taken the foreign key over, weft would route the
      // foreign subnet as it is (it is no agent's own, so no token).
      assert.deepEqual(v6Peers(f), [], "flanneld programs no peer");
      assert.deepEqual(
        v6Peers(w),
        ["<peer-subnet6>/64"],
        "weft: one peer, flanneld at the foreign key",
      );
    },
  },
  {
    id: "dual-stack-hostgw",
    title: "dual stack host-gw, a peer Node without backend-v6-data",
    ping: ["v4", "v6"],
    // The foreign peer Node has no backend-v6-data annotation.
    fixed: "a Node without backend data is programmed (host-gw needs none)",
    fixedIn: "Kube mode: a peer Node without backend data",
    input: { netConf: conf(DUAL, '{"Type":"host-gw"}') },
    check: hasRoute(
      (r) => r.dst === "fc00:0:0:9::/64" && r.gateway === "fd00:18::9",
      "IPv6 route to the Node without backend-v6-data",
    ),
  },
  {
    id: "dual-stack-v6-data-missing",
    title: "dual stack vxlan, a peer Node without backend-v6-data",
    modes: ["kube"],
    // flanneld drops the whole event (both families) when the IPv6 data
    // does not decode; weft refuses the Node, naming the annotation.
    input: { netConf: conf(DUAL), peer9: { omit: ["backend-v6-data"] } },
    check: both((s, who) =>
      assert.ok(
        !JSON.stringify(s.routes).includes("10.244.9.0"),
        `${who}: no route to the Node without backend-v6-data`,
      )
    ),
  },
  {
    id: "podcidr-mixed-length",
    title: "a peer Node's podCIDR is a /25 (the node mask size changed)",
    modes: ["kube"],
    fixed: "podCIDRs of another length are programmed when free",
    fixedIn: "Kube mode: a peer Node without backend data",
    input: { netConf: VX, peer9: { subnet: "10.244.9.0/25" } },
    check: hasRoute(
      (r) => r.dst === "10.244.9.0/25" && r.dev === "flannel.1",
      "route to the /25",
    ),
  },
  {
    id: "dual-stack-directrouting",
    title: "dual stack DirectRouting",
    ping: ["v4", "v6"],
    fixed: "the kernel's route for the IPv6 device address is kept",
    fixedIn: "conformance findings",
    input: { netConf: conf(DUAL, '{"Type":"vxlan","DirectRouting":true}') },
  },
  {
    id: "dual-stack-weft-weft",
    title: "dual stack, weft on both nodes",
    ping: ["v4", "v6"],
    input: { netConf: conf(DUAL), weftOnly: true },
  },
  {
    id: "ipv6-only-weft-weft",
    title: "IPv6 only over the IPv6 underlay, weft on both nodes",
    modes: ["kube"],
    ping: ["v6"],
    input: { netConf: conf(V6ONLY), weftOnly: true },
  },
  // ---- flags ----------------------------------------------------------------
  {
    id: "ip-masq",
    title: "--ip-masq",
    input: { netConf: VX, flags: ["--ip-masq"] },
    check: envHas("FLANNEL_IPMASQ=true"),
  },
  {
    id: "ip-masq-no-random",
    title: "--ip-masq --ip-masq-fully-random-disable",
    input: {
      netConf: VX,
      flags: ["--ip-masq", "--ip-masq-fully-random-disable"],
    },
  },
  {
    id: "ip-masq-dual",
    title: "--ip-masq, dual stack",
    fixed: "the kernel's route for the IPv6 device address is kept",
    fixedIn: "conformance findings",
    input: { netConf: conf(DUAL), flags: ["--ip-masq"] },
  },
  {
    id: "no-forward-rules",
    title: "--iptables-forward-rules=false",
    input: { netConf: VX, flags: ["--iptables-forward-rules=false"] },
  },
  {
    id: "blackhole",
    title: "--ip-blackhole-route",
    input: {
      netConf: VX,
      flags: ["--ip-blackhole-route", "--iptables-resync=1"],
      minMs: 1500,
    },
    fixed: "flag accepted; blackhole route for the own subnet",
    check: hasRoute(
      (r) => r.type === "blackhole" && r.dst === "<self-subnet>/24",
      "blackhole route",
    ),
  },
  {
    id: "blackhole-dual",
    title: "--ip-blackhole-route, dual stack",
    input: {
      netConf: conf(DUAL),
      flags: ["--ip-blackhole-route", "--iptables-resync=1"],
      minMs: 1500,
    },
    fixed: "flag accepted; blackhole routes for both own subnets",
    check: all(
      hasRoute(
        (r) => r.type === "blackhole" && r.dst === "<self-subnet>/24",
        "IPv4 blackhole route",
      ),
      hasRoute(
        (r) => r.type === "blackhole" && r.dst === "<self-subnet6>/64",
        "IPv6 blackhole route",
      ),
    ),
  },
  {
    id: "iface-name",
    title: "--iface=eth0",
    input: { netConf: VX, flags: ["--iface=eth0"] },
  },
  {
    id: "iface-ip",
    title: "--iface=<own IP>",
    input: { netConf: VX, flags: ["--iface=198.18.0.{n}"] },
  },
  {
    id: "iface-missing-then-eth0",
    title: "--iface=nope --iface=eth0",
    input: { netConf: VX, flags: ["--iface=nope", "--iface=eth0"] },
  },
  {
    id: "iface-none",
    title: "--iface=nope only",
    input: { netConf: VX, flags: ["--iface=nope"] },
    check: exited(1),
  },
  {
    id: "iface-regex",
    title: "--iface-regex=^eth",
    input: { netConf: VX, flags: ["--iface-regex=^eth"] },
  },
  {
    id: "iface-can-reach",
    title: "--iface-can-reach",
    input: { netConf: VX, flags: ["--iface-can-reach=198.18.0.254"] },
  },
  {
    id: "public-ip",
    title: "--public-ip, a second address of eth0",
    input: {
      netConf: VX,
      flags: ["--public-ip=198.18.0.10{n}"],
      extraAddrs: ["198.18.0.10{n}/24"],
    },
    check: all(
      published("public-ip", "<self-ip2>"),
      vxlanData("flannel.1", "local", "<self-ip2>"),
    ),
  },
  {
    id: "public-ip-nat",
    title: "--iface=eth0 --public-ip=<not local> (NAT)",
    input: {
      netConf: VX,
      flags: ["--iface=eth0", "--public-ip=203.0.113.{n}"],
    },
    narrow: [{
      field: "links",
      attr: "linkinfo.info_data.local",
      label: "links local address",
      anchor: "nat-vxlan-local",
    }],
    check: all(
      published("public-ip", "<self-nat-ip>"),
      (f, w) => {
        const local = (s: Snapshot) => links(s)[0]?.linkinfo?.info_data?.local;
        assert.equal(local(f), "<self-nat-ip>");
        assert.equal(local(w), "<self-ip>");
      },
    ),
  },
  {
    id: "public-ipv6",
    title: "--public-ipv6, dual stack",
    fixed: "the kernel's route for the IPv6 device address is kept",
    fixedIn: "conformance findings",
    input: { netConf: conf(DUAL), flags: ["--public-ipv6=fd00:18::{n}"] },
  },
  {
    id: "annotation-prefix",
    title: "--kube-annotation-prefix=example.com",
    modes: ["kube"],
    input: {
      netConf: VX,
      flags: ["--kube-annotation-prefix=example.com"],
      noPeer9: true,
    },
  },
  {
    id: "renew-margin",
    title: "--subnet-lease-renew-margin=30",
    modes: ["etcd"],
    input: { netConf: VX, flags: ["--subnet-lease-renew-margin=30"] },
  },
  {
    id: "v-12",
    title: "-v=12 (klog takes any level)",
    input: { netConf: VX, flags: ["--v=12"] },
    fixed: "any int32 -v accepted",
    check: running(),
  },
  { id: "v-2", title: "-v 2", input: { netConf: VX, flags: ["-v", "2"] } },
  {
    id: "vmodule",
    title: "-vmodule",
    input: { netConf: VX, flags: ["-vmodule=vxlan=4"] },
    fixed: "-vmodule accepted",
    check: running(),
  },
  {
    id: "log-backtrace-at",
    title: "-log_backtrace_at",
    input: { netConf: VX, flags: ["-log_backtrace_at=main.go:1"] },
    fixed: "-log_backtrace_at accepted",
    check: running(),
  },
  {
    id: "env-ip-masq",
    title: "FLANNELD_IP_MASQ=true",
    input: { netConf: VX, env: { FLANNELD_IP_MASQ: "true" } },
    check: envHas("FLANNEL_IPMASQ=true"),
  },
  {
    id: "env-iface",
    title: "FLANNELD_IFACE=eth0",
    input: { netConf: VX, env: { FLANNELD_IFACE: "eth0" } },
  },
  {
    id: "env-flag-wins",
    title: "flag beats FLANNELD_ variable",
    input: {
      netConf: VX,
      flags: ["--ip-masq=false"],
      env: { FLANNELD_IP_MASQ: "true" },
    },
    check: envHas("FLANNEL_IPMASQ=false"),
  },
  {
    id: "unknown-flag",
    title: "unknown flag",
    modes: ["etcd"],
    input: { netConf: VX, flags: ["--no-such-flag"] },
    deviations: { exit: "bad-flag-exit-code" },
    check: (f, w) => {
      assert.equal(f.exit, 0, "flanneld prints its usage and exits 0");
      assert.equal(w.exit, 2, "weft exits 2");
    },
  },
  {
    id: "bad-int",
    title: "non-integer --iptables-resync",
    modes: ["etcd"],
    input: { netConf: VX, flags: ["--iptables-resync=soon"] },
    deviations: { exit: "bad-flag-exit-code" },
    check: (f, w) => {
      assert.equal(f.exit, 0, "flanneld prints its usage and exits 0");
      assert.equal(w.exit, 2, "weft exits 2");
    },
  },
  {
    id: "network-unavailable-off",
    title: "--set-node-network-unavailable=false",
    modes: ["kube"],
    input: { netConf: VX, flags: ["--set-node-network-unavailable=false"] },
  },
  // ---- annotations (kube) -----------------------------------------------------
  {
    id: "node-public-ip",
    title: "node-public-ip annotation",
    modes: ["kube"],
    input: {
      netConf: VX,
      annotations: {
        "flannel.alpha.coreos.com/node-public-ip": "198.18.0.10{n}",
      },
      extraAddrs: ["198.18.0.10{n}/24"],
    },
    check: published("public-ip", "<self-ip2>"),
  },
  {
    id: "node-public-ip-over-flag",
    title: "node-public-ip annotation wins over --public-ip",
    modes: ["kube"],
    input: {
      netConf: VX,
      flags: ["--public-ip=198.18.0.{n}"],
      annotations: {
        "flannel.alpha.coreos.com/node-public-ip": "198.18.0.10{n}",
      },
      extraAddrs: ["198.18.0.10{n}/24"],
    },
    fixed: "the annotation wins over the flag",
    check: all(
      published("public-ip", "<self-ip2>"),
      vxlanData("flannel.1", "local", "<self-ip2>"),
    ),
  },
  {
    id: "public-ip-overwrite",
    title: "public-ip-overwrite annotation",
    modes: ["kube"],
    input: {
      netConf: VX,
      annotations: {
        "flannel.alpha.coreos.com/public-ip-overwrite": "203.0.113.{n}",
      },
    },
    check: published("public-ip", "<self-nat-ip>"),
  },
  {
    id: "node-public-ipv6",
    title: "node-public-ipv6 annotation, dual stack",
    modes: ["kube"],
    fixed: "the kernel's route for the IPv6 device address is kept",
    fixedIn: "conformance findings",
    input: {
      netConf: conf(DUAL),
      annotations: {
        "flannel.alpha.coreos.com/node-public-ipv6": "fd00:18::{n}",
      },
    },
  },
  {
    id: "bare-node",
    title: "a peer Node without any annotation",
    modes: ["kube"],
    input: { netConf: VX, bareNode: true },
  },
  // ---- backends without a data path ----------------------------------------
  {
    id: "extension",
    title:
      "extension: published PreStartupCommand output; the commands' arguments, variables and stdin",
    input: {
      netConf: EXTENSION,
      env: { WEFT_CONF_HOOK: HOOK_SCRIPT },
      weftRun: ["/bin/sh"],
      after: deletePeer9,
    },
    afterText: "then the foreign peer deleted",
    check: all(
      ran("pre", [""]),
      ran("post", ["<self-subnet>/24"]),
      ran("add", ["<peer-ip>", "198.18.0.9"]),
      ran("remove", ["10.244.9.0/24"]),
      envHas("FLANNEL_MTU=1500"),
    ),
  },
  {
    id: "extension-no-pre",
    title:
      "extension without PreStartupCommand: empty backend data, peers' stdin a bare newline",
    input: {
      netConf: conf(
        NET,
        JSON.stringify({
          Type: "extension",
          SubnetAddCommand: hook("add $SUBNET"),
        }),
      ),
      env: { WEFT_CONF_HOOK: HOOK_SCRIPT },
      weftRun: ["/bin/sh"],
    },
    check: all(
      ran("add", ["<peer-subnet>/24 NETWORK"]),
      (f, w, mode) => {
        for (const [s, who] of [[f, "flanneld"], [w, "weft"]] as const) {
          const data = mode === "kube"
            ? (s.node as { annotations: Record<string, string> })
              .annotations["flannel.alpha.coreos.com/backend-data"]
            : JSON.parse((s.etcd as { value: string }).value).BackendData;
          assert.equal(data, mode === "kube" ? "" : undefined, who);
        }
      },
    ),
  },
  {
    id: "alloc",
    title: "alloc: a lease and subnet.env, nothing else",
    input: { netConf: conf(NET, '{"Type":"alloc"}') },
    check: all(
      envHas("FLANNEL_MTU=1500"),
      both((s, who) => assert.deepEqual(s.links, [], `${who} links`)),
    ),
  },
  // ---- the underlay changes -------------------------------------------------
  {
    id: "underlay-recreated",
    title: "eth0 deleted and recreated",
    input: { netConf: VX, after: recreateUnderlay },
    afterText: "then eth0 deleted and recreated",
    afterMs: 5000,
    fixed: "the device follows the recreated interface",
    narrow: REPLAYED,
    check: (f, w) => {
      replayed(f, w);
      vxlanData("flannel.1", "link", "eth0")(f, w);
    },
  },
  // ---- peers that move ------------------------------------------------------
  {
    id: "motion-own-lease",
    title:
      "--ip-blackhole-route: each agent's own lease moves, a new peer claims its old subnet",
    input: {
      netConf: VX,
      flags: ["--ip-blackhole-route", "--iptables-resync=1"],
    },
    steps: [{
      id: "own-lease-moved",
      text:
        "both agents stopped; each one's lease moved (etcd: its key deleted; kube: its Node recreated with another podCIDR) and its old subnet given to a new peer; both started again",
      change: async (h, mode, input) => {
        await h.stopAgents();
        MOVED.length = 0;
        for (const node of NODES) {
          const old = await h.moveOwnLease(
            mode,
            node,
            `10.244.${20 + node.n}.0/24`,
          );
          MOVED.push(old);
          await h.putPeer(mode, {
            name: `mover${node.n}`,
            subnet: old,
            ip: `198.18.0.7${node.n}`,
            mac: `0a:58:0a:f4:7${node.n}:00`,
          });
        }
        await h.startAgents(mode, input);
      },
      // Both replace the blackhole their old lease left with the new
      // peer's route, and blackhole the new own subnet.
      check: both((s, who) => {
        for (const old of MOVED) {
          assert.ok(
            routes(s).some((r) => r.dst === old && r.dev === "flannel.1"),
            `${who}: the new peer's route to ${old}`,
          );
          assert.ok(
            !routes(s).some((r) => r.dst === old && r.type === "blackhole"),
            `${who}: no blackhole left at ${old}`,
          );
        }
        assert.ok(
          routes(s).some((r) =>
            r.type === "blackhole" && r.dst === "<self-subnet>/24"
          ),
          `${who}: blackhole for the new own subnet`,
        );
      }),
    }],
  },
  {
    id: "motion-directrouting",
    title: "DirectRouting: a peer moving off the local L2 and back",
    input: { netConf: vx(',"DirectRouting":true') },
    steps: [
      {
        id: "off-l2",
        text: "the peer's public IP moves behind the gateway (198.19.0.9)",
        change: (h, mode) => h.putPeer(mode, { ...P9, ip: "198.19.0.9" }),
        check: hasRoute(
          (r) => r.dst === "10.244.9.0/24" && r.dev === "flannel.1",
          "the peer is reached through the VXLAN device",
        ),
      },
      {
        id: "on-l2",
        text: "the peer's public IP back on the local L2",
        change: (h, mode) => h.putPeer(mode, P9),
        // flanneld replaces the route and leaves the VXLAN neighbour and
        // FDB entry of the peer's time off the L2.
        narrow: ["neigh", "fdb"].map((field) => ({
          field,
          where: PEER9_ENTRY,
          label: `${field} of the peer's VXLAN time`,
          anchor: "directrouting-stale",
        })),
        check: hasRoute(
          (r) =>
            r.dst === "10.244.9.0/24" && r.gateway === PEER9.ip &&
            r.dev === "eth0",
          "a direct route to the peer again",
        ),
      },
    ],
  },
  {
    id: "motion",
    title: "peers added, changed and removed while both agents run",
    input: { netConf: VX },
    steps: [
      {
        id: "peer-added",
        text: "a peer added",
        change: (h, mode) => h.putPeer(mode, P7),
        check: routed("10.244.7.0/24", true),
      },
      {
        id: "public-ip-changed",
        text: "a peer's public IP changed",
        change: (h, mode) => h.putPeer(mode, P9_MOVED),
        check: both((s, who) =>
          assert.deepEqual(
            fdbOf(s, P9.mac),
            [P9_MOVED.ip],
            `${who}: FDB follows`,
          )
        ),
      },
      {
        id: "peer-gone",
        text: "etcd: a peer's lease expired (3 s TTL); kube: its Node deleted",
        change: async (h, mode) => {
          if (mode === "kube") await h.deletePeer(mode, P7);
          else {
            await h.putPeer(mode, { ...P7, ttlSeconds: 3 });
            await until(
              "the lease expires",
              async () => !(await h.hasPeer(mode, P7)),
            );
          }
        },
        check: routed("10.244.7.0/24", false),
      },
      {
        id: "deleted-while-down",
        text: "both agents stopped, a peer deleted, both started again",
        change: async (h, mode, input) => {
          await h.stopAgents();
          await h.deletePeer(mode, P9_MOVED);
          await h.startAgents(mode, input);
        },
        // flanneld never lists what it had programmed: the deleted peer's
        // entries stay. weft prunes them once its first listing is in.
        narrow: ["routes", "neigh", "fdb"].map((field) => ({
          field,
          where: PEER9_ENTRY,
          label: `${field} of the deleted peer`,
          anchor: "stale-after-restart",
        })),
        check: (f, w) => {
          assert.ok(
            routes(f).some((r) => r.dst === "10.244.9.0/24"),
            "flanneld keeps the deleted peer's route",
          );
          assert.deepEqual(fdbOf(f, P9.mac), [P9_MOVED.ip]);
          assert.ok(!JSON.stringify(w).match(PEER9_ENTRY), "weft pruned it");
        },
      },
      {
        id: "peer-readded",
        text: "the peer back, as it was",
        change: (h, mode) => h.putPeer(mode, P9_MOVED),
        check: routed("10.244.9.0/24", true),
      },
      {
        id: "vtep-mac-changed",
        text: "a peer's VtepMAC changed",
        change: (h, mode) => h.putPeer(mode, P9_NEW_MAC),
        // flanneld adds the new MAC's FDB entry and leaves the old one.
        narrow: [{
          field: "fdb",
          where: /0a:58:0a:f4:09:00/,
          label: "FDB entry of the old VtepMAC",
          anchor: "vtep-mac-changed",
        }],
        check: (f, w) => {
          assert.deepEqual(fdbOf(f, P9.mac), [P9_MOVED.ip], "flanneld: old");
          assert.deepEqual(fdbOf(w, P9.mac), [], "weft: old entry removed");
          for (const [s, who] of [[f, "flanneld"], [w, "weft"]] as const) {
            assert.deepEqual(fdbOf(s, P9_NEW_MAC.mac), [P9_MOVED.ip], who);
          }
        },
      },
      {
        id: "device-deleted",
        text: "the VXLAN device deleted",
        change: async (h) => {
          for (const n of NODES) {
            await h.nodes.get(n.role)!.ip("link", "del", "flannel.1");
          }
        },
        // (The old VtepMAC's FDB entry of the previous step goes with it.)
        narrow: REPLAYED,
        check: replayed,
      },
    ],
  },
];
