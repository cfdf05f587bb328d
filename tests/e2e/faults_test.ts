/**
 * The fault and bad-input suite: faults injected into running namespace
 * clusters (tests/_cluster.ts: one weft process per node, pods wired by
 * weft's CNI plugin) while a pod on node1 pings a pod on another node
 * every 50 ms, and a corpus of malformed inputs (tests/faults/corpus.ts,
 * tests/faults/corpus_v6.ts). Every fault and every input becomes a row of
 * a table (fault, expected, packets lost, time to recover, result),
 * printed at the end and written to bench/results/faults.md. The tests
 * run, in order: an etcd-mode cluster (Debian's etcd); a dual-stack one
 * (tests/faults/dual_stack.ts); one with Backend host-gw and one with
 * vxlan DirectRouting (tests/faults/direct_routes.ts); a Kubernetes-mode
 * one (a real kube-apiserver in the switch namespace, tests/e2e/_kube.ts)
 * and a dual-stack Kubernetes-mode one (tests/faults/kube_dual.ts), which
 * without the server binaries are ignored with the reason, or fail under
 * CI=true.
 *
 * Durations are short by default so the suite stays within minutes:
 * - `WEFT_FAULT_OUTAGE_S` (15): how long etcd or kube-apiserver is down.
 *   `WEFT_FAULT_OUTAGE_S=60` gives the full one-minute outage.
 * - `WEFT_FAULT_PROXY_S` (6): how long each misbehaving-proxy fault lasts.
 * - `WEFT_FAULT_RESULTS`: where the Markdown table goes
 *   (default bench/results/faults.md).
 * - `WEFT_FAULT_ONLY`: comma-separated phases to run (restarts, drift,
 *   corpus, claims, proxy, outage, deleted, config, runtime, clock, flags,
 *   foreign; dual stack v6restarts, v6drift, v6corpus; hgw for host-gw,
 *   direct for DirectRouting; for Kubernetes kcorpus, kclaims, kproxy,
 *   koutage, ktoken, kca, and k6corpus for its dual-stack cluster);
 *   default all. A test none of whose phases is selected does not start
 *   its cluster. Point `WEFT_FAULT_RESULTS` elsewhere for such a run: the
 *   table holds only the rows that ran.
 *
 * @module
 */
import { type ClusterNode, type EtcdLease, SWITCH_IP } from "../_cluster.ts";
import { run } from "../_netns.ts";
import { gatedTest, ROOT } from "../_gate.ts";
import {
  CONFIG_CASES,
  type ConfigCase,
  FLAG_CASES,
  type FlagCase,
  keyName,
  PEER_CASES,
  type PeerSlot,
} from "../faults/corpus.ts";
import {
  DEVICE,
  expectedPeers,
  readOverlay,
  slotEntries,
} from "../faults/kernel.ts";
import { DIR, EtcdRun } from "../faults/etcd.ts";
import { type CorpusCase, corpusRun } from "../faults/corpus_run.ts";
import { FaultProxy } from "../faults/proxy.ts";
import { KubeFaults } from "../faults/kube_faults.ts";
import { KubeDualFaults } from "../faults/kube_dual.ts";
import { kubeUnavailable } from "./_kube.ts";
import { type FaultRow, fmtMs } from "../faults/report.ts";
import {
  Checks,
  lossText,
  NETWORK,
  onlyNeed,
  OUTAGE_S,
  REPAIR_LIMIT_MS,
  runPhases,
  SILENT_PAST_IDLE,
  sleep,
  STANDARD_FAULTS,
  waitUntil,
  writeReport,
} from "../faults/run.ts";
import { DualStackFaults } from "../faults/dual_stack.ts";
import { claimOrder, etcdClaims, kubeClaims } from "../faults/claims.ts";
import { wallClockSteps } from "../faults/clock.ts";
import { foreignState } from "../faults/foreign.ts";
import {
  DIRECT_ROUTING,
  DirectFaults,
  HOST_GW,
} from "../faults/direct_routes.ts";

const PREFIX = "weft-f";
/** Every row of both tests, in order; the table is rewritten after each. */
const ROWS: FaultRow[] = [];

/** The etcd-mode cluster and its phases. */
class EtcdFaults extends EtcdRun {
  static async create(): Promise<EtcdFaults> {
    const c = await EtcdRun.cluster({ nodes: 5, prefix: PREFIX });
    const s = new EtcdFaults(c, ROWS);
    await s.boot(s.nodes(1, 2, 3));
    return s;
  }

  // ---------------------------------------------------------------- phases

  /** kill -9 and restart, twice in a row: hitless, same subnet and MAC. */
  async restarts(): Promise<void> {
    const n2 = this.node(2);
    const section = "agent restarts";
    const identity = async () => {
      const env = await n2.subnetEnv();
      const lease = (await this.c.leases()).find((l) =>
        l.value.PublicIP === n2.ip
      );
      return {
        subnet: env.FLANNEL_SUBNET,
        key: lease?.key,
        published: lease?.value.BackendData?.VtepMAC,
        mac: (await readOverlay(n2.ns)).device?.mac,
      };
    };
    const before = await identity();
    for (const round of [1, 2]) {
      const chk = new Checks();
      const { losses: [loss], ready } = await this.killAndRestart(
        n2,
        this.nodes(1, 2, 3),
        chk,
        [this.ping()],
      );
      const after = await identity();
      chk.that(
        after.subnet === before.subnet && after.key === before.key,
        `subnet changed: ${before.subnet} → ${after.subnet}`,
      );
      chk.that(
        after.mac === before.mac && after.published === before.mac,
        `MAC changed: ${before.mac} → device ${after.mac}, published ${after.published}`,
      );
      chk.note(`subnet ${after.subnet}, MAC ${after.mac}`);
      this.row({
        section,
        fault: `node2 agent kill -9, restarted (${
          round === 1 ? "first" : "second in a row"
        })`,
        expected: "zero loss; same subnet, lease key and VTEP MAC; ready again",
        lost: lossText(loss),
        recovery: `ready ${fmtMs(ready)}`,
        outcome: chk.outcome(),
      });
    }
  }

  /** Kernel drift on node1, repaired from rtnetlink notifications. */
  async drift(): Promise<void> {
    const section = "kernel drift (node1)";
    const n1 = this.node(1);
    const leases = await this.c.leases();
    const peers = expectedPeers(leases, n1.ip);
    const p2 = peers.find((p) => p.publicIP === this.node(2).ip)!;
    const p3 = peers.find((p) => p.publicIP === this.node(3).ip)!;
    const mac = (await readOverlay(n1.ns)).device?.mac;
    const passes = async () => {
      const m = await this.c.metrics(n1);
      return Number(m.match(/^weft_reconcile_passes_total (\d+)/m)?.[1] ?? 0);
    };

    // Someone else's route in the cluster range, on another device.
    const foreign = `10.244.${await this.freeOctet()}.0/24`;
    // A veth pair stands for "another device" (no dummy module needed).
    await n1.ns.ip(
      "link",
      "add",
      "weft-other",
      "type",
      "veth",
      "peer",
      "name",
      "weft-other-p",
    );
    await n1.ns.ip("link", "set", "weft-other-p", "up");
    await n1.ns.ip("link", "set", "weft-other", "up");
    await n1.ns.ip("route", "add", foreign, "dev", "weft-other");
    const passesBefore = await passes();

    const ghost = `10.244.${await this.freeOctet()}.0`;
    const cases: { name: string; inject: () => Promise<unknown> }[] = [
      {
        name: "route to node2 deleted",
        inject: () => n1.ns.ip("route", "del", p2.subnet, "dev", DEVICE),
      },
      {
        // weft's mark kept: its own route, drifted. Without the mark it
        // is someone's route, left alone (tests/faults/foreign.ts).
        name: "route to node2 changed to node3's gateway, proto 87 kept",
        inject: () =>
          n1.ns.ip(
            "route",
            "replace",
            p2.subnet,
            "via",
            p3.gw,
            "dev",
            DEVICE,
            "onlink",
            "proto",
            "87",
          ),
      },
      {
        name: "neighbour of node2 deleted",
        inject: () => n1.ns.ip("neigh", "del", p2.gw, "dev", DEVICE),
      },
      {
        name: "neighbour of node2 lladdr changed (ip neigh replace)",
        inject: () =>
          n1.ns.ip(
            "neigh",
            "replace",
            p2.gw,
            "lladdr",
            "02:de:ad:be:ef:01",
            "dev",
            DEVICE,
            "nud",
            "permanent",
          ),
      },
      {
        name: "FDB entry of node2 deleted",
        inject: () =>
          n1.ns.exec([
            "bridge",
            "fdb",
            "del",
            p2.mac,
            "dev",
            DEVICE,
            "dst",
            p2.publicIP,
            "self",
          ]),
      },
      {
        name: "FDB entry of node2 pointed at another host",
        inject: () =>
          n1.ns.exec([
            "bridge",
            "fdb",
            "replace",
            p2.mac,
            "dev",
            DEVICE,
            "dst",
            "198.18.0.99",
            "self",
            "permanent",
          ]),
      },
      {
        name: "ghost peer added by hand on flannel.1 (neighbour, FDB, route)",
        inject: async () => {
          await n1.ns.ip(
            "neigh",
            "add",
            ghost,
            "lladdr",
            "02:de:ad:be:ef:02",
            "dev",
            DEVICE,
            "nud",
            "permanent",
          );
          await n1.ns.exec([
            "bridge",
            "fdb",
            "append",
            "02:de:ad:be:ef:02",
            "dev",
            DEVICE,
            "dst",
            "198.18.0.98",
            "self",
            "permanent",
          ]);
          await n1.ns.ip(
            "route",
            "add",
            `${ghost}/24`,
            "via",
            ghost,
            "dev",
            DEVICE,
            "onlink",
          );
        },
      },
      {
        name: "flannel.1 address removed (ip addr flush)",
        inject: () => n1.ns.ip("addr", "flush", "dev", DEVICE),
      },
      {
        name: "flannel.1 set down",
        inject: () => n1.ns.ip("link", "set", DEVICE, "down"),
      },
      {
        name: "flannel.1 deleted",
        inject: () => n1.ns.ip("link", "del", DEVICE),
      },
    ];
    for (const k of cases) {
      const chk = new Checks();
      const { losses: [loss], repair } = await this.timeRepair(
        n1,
        k.inject,
        chk,
        [this.ping()],
        leases,
      );
      const nowMac = (await readOverlay(n1.ns)).device?.mac;
      chk.that(nowMac === mac, `device MAC changed: ${mac} → ${nowMac}`);
      this.row({
        section,
        fault: k.name,
        expected: `repaired within ${REPAIR_LIMIT_MS} ms, MAC unchanged`,
        lost: lossText(loss),
        recovery: fmtMs(repair),
        outcome: chk.outcome(),
      });
    }

    const chk = new Checks();
    const after = await passes();
    const still = (await n1.ns.json<{ dst: string; dev: string }[]>(
      "route",
      "show",
      foreign,
    )).some((r) => r.dev === "weft-other");
    chk.that(still, `foreign route ${foreign} dev weft-other was removed`);
    chk.that(
      after - passesBefore >= 2,
      `only ${after - passesBefore} reconcile pass(es) ran meanwhile`,
    );
    chk.note(`${after - passesBefore} full passes ran`);
    this.row({
      section,
      fault:
        `foreign route ${foreign} on another device (weft-other), through all the repairs above`,
      expected: "left alone",
      lost: "—",
      recovery: "—",
      outcome: chk.outcome(),
    });
    await n1.ns.ip("link", "del", "weft-other");
  }

  /** Malformed peer leases in etcd, then a restart with them present. */
  async peerCorpus(): Promise<void> {
    const real = await this.c.leases();
    const own = real.find((l) => l.value.PublicIP === this.node(1).ip)!;
    const peers = real.filter((l) => l !== own);
    const realSubnets = new Set(real.map((l) => l.subnet));
    const cases: CorpusCase[] = [];
    let control: EtcdLease | undefined;
    for (const [i, k] of PEER_CASES.entries()) {
      const slot: PeerSlot = {
        dir: DIR,
        subnet: `10.244.${await this.freeOctet()}.0/24`,
        publicIP: `198.18.0.${100 + i}`,
        mac: `0a:fa:00:00:00:${(i + 1).toString(16).padStart(2, "0")}`,
        ownSubnet: own.subnet,
        peerSubnets: peers.map((l) => l.subnet),
        peerMacs: peers.map((l) => l.value.BackendData!.VtepMAC!),
        peerIPs: peers.map((l) => l.value.PublicIP),
        ownMac: own.value.BackendData!.VtepMAC!,
      };
      const input = k.make(slot);
      if (k.expect === "programmed") {
        control = {
          key: input.key,
          subnet: slot.subnet,
          value: JSON.parse(input.value as string),
          etcdLease: "0",
        };
      }
      // A claim on a real peer's subnet is judged by MAC and IP alone:
      // the real peer's route must stay.
      const named = input.claims ??
        (input.key === DIR + keyName(slot.subnet) ? slot.subnet : undefined);
      const claims = named !== undefined && realSubnets.has(named)
        ? undefined
        : named;
      const trace = { claims, mac: slot.mac, publicIP: slot.publicIP };
      cases.push(
        this.etcdCase(
          k.name,
          k.expect,
          input,
          (s) =>
            slotEntries(s.v4, trace, (r) =>
              r.dev === DEVICE &&
              (r.dst === claims || r.gw === slot.publicIP)),
          k,
        ),
      );
    }
    await corpusRun(this, {
      section: "peer corpus (etcd lease keys and values)",
      cases,
      expected: [...real, control!],
      live: this.nodes(1, 2, 3),
      restart: (n) => this.start(n),
      noun: "key",
    });
  }

  /** A misbehaving proxy between node3's agent and etcd. */
  async proxy(): Promise<void> {
    const section = "misbehaving API (proxy between node3 and etcd)";
    const n3 = this.node(3);
    const proxy = await FaultProxy.start({
      netns: this.c.hub.name,
      hostname: SWITCH_IP,
      port: 2479,
      upstream: "http://127.0.0.1:2379",
      logPath: `${this.c.dir}/proxy.log`,
    });
    try {
      await this.stop(n3);
      await this.start(n3, [`--etcd-endpoints=${proxy.url}`], [
        `${SWITCH_IP}:2479`,
      ]);
      await this.c.waitReady(n3, 20_000);
      await this.proxyFaults({
        section,
        proxy,
        node: n3,
        ping: ["node1-pod1", "node3-pod1"],
        faults: [...STANDARD_FAULTS, {
          name: "500 storm while the agent restarts",
          mode: { kind: "status", status: 500 },
          restart: true,
        }, SILENT_PAST_IDLE],
        restart: async (args = []) => {
          await this.stop(n3);
          await this.start(n3, [`--etcd-endpoints=${proxy.url}`, ...args], [
            `${SWITCH_IP}:2479`,
          ]);
        },
        probe: async () => {
          const p = await this.probe(241);
          return { subnet: p.subnet, remove: () => this.del(p.key) };
        },
        retryAfterRequired: true,
      });
    } finally {
      await this.stop(n3);
      await this.start(n3);
      await this.c.waitReady(n3, 20_000);
      await proxy.close();
    }
  }

  /** etcd down, then back; then a new node joins. */
  async etcdOutage(): Promise<void> {
    const section = "etcd outage";
    const live = this.nodes(1, 2, 3);
    const offsets = new Map<ClusterNode, number>();
    for (const n of live) offsets.set(n, await this.logSize(n));
    const chk = new Checks();
    const pings = [this.ping(), this.ping("node1-pod1", "node3-pod1")];
    await sleep(500);
    await this.c.stopEtcd();
    const down = performance.now();
    const dead = new Set<string>();
    while (performance.now() - down < OUTAGE_S * 1000) {
      for (const n of live) if (!(await this.alive(n))) dead.add(n.name);
      await sleep(1000);
    }
    await this.c.startEtcd();
    const up = performance.now();
    const probe = await this.probe(242);
    const resumed = await this.routeOnAll(live, probe.subnet, true, 30_000);
    const resumedMs = resumed === undefined
      ? undefined
      : performance.now() - up;
    await this.del(probe.key);
    const removed = await this.routeOnAll(live, probe.subnet, false, 15_000);
    chk.that(removed !== undefined, "a peer removed after recovery stayed");
    const losses = await Promise.all(pings.map((p) => p.stop()));
    for (const n of live) {
      const log = await this.logSince(n, offsets.get(n)!);
      chk.that(
        !log.includes("Lease has been revoked"),
        `${n.name}: lease revoked`,
      );
      if (!(await this.alive(n))) dead.add(n.name);
    }
    chk.that(dead.size === 0, `agent exited: ${[...dead].join(", ")}`);
    chk.that(resumed !== undefined, "watches did not resume within 30 s");
    const lost = losses.reduce((a, l) => a + l.lost, 0);
    chk.that(lost === 0, `${lost} lost`);
    this.row({
      section,
      fault: `etcd killed for ${OUTAGE_S} s, then restarted`,
      expected:
        "zero loss between existing pods; agents keep running; watches resume (a peer added after recovery reaches every node)",
      lost: losses.map(lossText).join(" + "),
      recovery: `watch resumed ${fmtMs(resumedMs)} after etcd`,
      outcome: chk.outcome(),
    });

    const j = new Checks();
    const n4 = this.node(4);
    const t0 = performance.now();
    await this.start(n4);
    const ready = await this.c.waitReady(n4, 20_000).catch(() => undefined);
    j.that(ready !== undefined, "node4 not ready");
    const all = this.nodes(1, 2, 3, 4);
    const conv = await this.converged(all, 15_000);
    const joinMs = conv === undefined ? undefined : performance.now() - t0;
    if (!j.that(conv !== undefined, "did not converge")) {
      j.note((await this.problems(all)).join(", "));
    }
    await this.c.addPod(n4, 1);
    const reach = await this.c.pingRun(
      "node1-pod1",
      this.c.pod("node4-pod1").ip,
      {
        count: 3,
        interval: 0.1,
        deadline: 5,
      },
    );
    j.that(
      reach.received > 0,
      `node1's pod cannot reach node4's: ${reach.text}`,
    );
    this.row({
      section,
      fault: "node4 joins right after the outage",
      expected:
        "its route appears on every node and theirs on it; pods reach it",
      lost: "—",
      recovery: `converged ${fmtMs(joinMs)} after start`,
      outcome: j.outcome(),
    });
  }

  /** A node deleted while its agent and another node's agent were down. */
  async deletedNode(): Promise<void> {
    const section = "node deleted while agents were down";
    const chk = new Checks();
    const [n1, n2, n3] = this.nodes(1, 2, 3) as [
      ClusterNode,
      ClusterNode,
      ClusterNode,
    ];
    const gone = (await this.c.leases()).find((l) =>
      l.value.PublicIP === n3.ip
    )!;
    const p = this.ping();
    await sleep(300);
    await this.c.stopAgent(n3, "SIGKILL");
    await this.c.stopAgent(n2, "SIGKILL");
    await this.del(gone.key);
    const seen = await this.converged([n1], 5000);
    chk.that(seen !== undefined, "node1 (running) kept node3's entries");
    chk.that(
      await this.hasRoute(n2, gone.subnet),
      "precondition: node2 should still hold node3's route while down",
    );
    const t0 = performance.now();
    await this.start(n2);
    const stale = await this.converged([n2], 15_000);
    const staleMs = stale === undefined ? undefined : performance.now() - t0;
    if (!chk.that(stale !== undefined, "stale entries on node2 not removed")) {
      chk.note((await this.problems([n2])).join(", "));
    }
    const ready = await this.c.waitReady(n2, 20_000).catch(() => undefined);
    chk.that(ready !== undefined, "node2 not ready");
    await sleep(300);
    const loss = await p.stop();
    chk.that(loss.lost === 0, `${loss.lost} lost`);
    chk.note(`node1 dropped it via its watch in ${fmtMs(seen)}`);
    this.row({
      section,
      fault:
        "node3's lease deleted while node3's and node2's agents were down; node2 restarted",
      expected:
        "node2's stale neighbour, FDB entry and route for node3 gone after its restart; zero loss node1↔node2",
      lost: lossText(loss),
      recovery: `clean ${fmtMs(staleMs)} after node2's start`,
      outcome: chk.outcome(),
    });
  }

  /** Bad net-conf in etcd for an agent of its own (spare namespace node5). */
  async ownConfig(): Promise<void> {
    const section = "own network config (etcd <prefix>/config)";
    const n5 = this.node(5);
    const batch = 5;
    for (let i = 0; i < CONFIG_CASES.length; i += batch) {
      const group = CONFIG_CASES.slice(i, i + batch).map((k, j) => ({
        k,
        i: i + j,
      }));
      await Promise.all(
        group.map(({ k, i }) => this.#configCase(n5, k, i, section)),
      );
    }
    await this.#sigtermAtStartup(n5);
  }

  /**
   * SIGTERM the moment an agent logs "Acquired lease" (before its run
   * loop), a few times: it must exit 0 within 10 s every time.
   */
  async #sigtermAtStartup(n: ClusterNode): Promise<void> {
    const attempts = 8;
    const hung: string[] = [];
    const codes: number[] = [];
    await Promise.all(Array.from({ length: attempts }, async (_, j) => {
      const prefix = `/weft-fault/term${j}`;
      await this.put(
        `${prefix}/config`,
        JSON.stringify({
          Network: NETWORK,
          Backend: { Type: "vxlan", VNI: 200 + j },
        }),
      );
      const logPath = `${n.dir}/term${j}.log`;
      const a = await this.spawn(n, [
        `--etcd-endpoints=${this.c.etcdEndpoint}`,
        `--etcd-prefix=${prefix}`,
        `--subnet-file=${n.dir}/term${j}/subnet.env`,
        "--iface=eth0",
        "--healthz-port=0",
      ], logPath);
      const text = () => Deno.readTextFile(logPath).catch(() => "");
      await waitUntil(
        async () => (await text()).includes("Acquired lease"),
        20_000,
        5,
      );
      try {
        a.child.kill("SIGTERM");
      } catch { /* exited */ }
      const done = await waitUntil(() => a.exit !== undefined, 10_000, 50);
      if (done === undefined) {
        a.child.kill("SIGKILL");
        hung.push(
          `#${j}: ${
            (await text()).trimEnd().split("\n").slice(-2).join(" / ")
          }`,
        );
      }
      await a.child.status;
      if (a.exit && done !== undefined) codes.push(a.exit.code);
    }));
    const chk = new Checks();
    chk.that(
      hung.length === 0,
      `${hung.length} of ${attempts} still running 10 s after SIGTERM, killed (${
        hung.join("; ")
      })`,
    );
    chk.that(
      codes.every((c) => c === 0),
      `exit codes ${codes.join(", ")}, expected 0`,
    );
    this.row({
      section: "agent lifecycle",
      fault:
        `SIGTERM the moment the agent logs "Acquired lease" (${attempts} agents)`,
      expected: "each exits 0 within 10 s",
      lost: "—",
      recovery: "—",
      outcome: chk.outcome(),
    });
  }

  async #configCase(
    n: ClusterNode,
    k: ConfigCase,
    i: number,
    section: string,
  ): Promise<void> {
    const chk = new Checks();
    const prefix = `/weft-fault/cfg${i}`;
    const key = `${prefix}/config`;
    if (k.value !== undefined) await this.put(key, k.value);
    const logPath = `${n.dir}/cfg${i}.log`;
    const a = await this.spawn(n, [
      `--etcd-endpoints=${this.c.etcdEndpoint}`,
      `--etcd-prefix=${prefix}`,
      `--subnet-file=${n.dir}/cfg${i}/subnet.env`,
      "--iface=eth0",
      "--healthz-port=0",
    ], logPath);
    const text = async () => await Deno.readTextFile(logPath).catch(() => "");
    const mentions = (t: string) =>
      k.expect.mentions.every((m) => t.toLowerCase().includes(m.toLowerCase()));
    let recovery = "—";
    try {
      if (k.expect.kind === "retry") {
        const seen = await waitUntil(
          async () => {
            const t = await text();
            return t.split("\n").some((l) =>
              l.includes(`"${key}"`) && mentions(l)
            );
          },
          15_000,
          100,
        );
        chk.that(
          seen !== undefined,
          `no message naming "${key}" and ${k.expect.mentions.join(", ")}`,
        );
        // Still retrying a little later.
        await sleep(1000);
        chk.that(
          a.exit === undefined,
          `exited with ${a.exit?.code}: ${(await text()).slice(-300)}`,
        );
        const fixedAt = performance.now();
        await this.put(
          key,
          JSON.stringify({
            Network: NETWORK,
            Backend: { Type: "vxlan", VNI: 100 + i },
          }),
        );
        const proceeded = await waitUntil(
          async () => (await text()).includes("Acquired lease"),
          15_000,
          100,
        );
        chk.that(
          proceeded !== undefined,
          "did not proceed once the config was fixed",
        );
        // Let it reach its run loop: SIGTERM during startup is tested apart.
        await waitUntil(
          async () => (await text()).includes("Wrote "),
          5_000,
          50,
        );
        await sleep(300);
        recovery = `message ${fmtMs((seen ?? NaN) + 0)}; proceeded ${
          fmtMs(
            proceeded === undefined ? undefined : performance.now() - fixedAt,
          )
        } after the fix`;
      } else {
        const done = await waitUntil(
          () => a.exit !== undefined,
          15_000,
          100,
        );
        const t = await text();
        chk.that(done !== undefined, "did not exit");
        chk.that(a.exit?.code === 1, `exit code ${a.exit?.code}, expected 1`);
        chk.that(
          t.split("\n").some((l) => l.startsWith("E") && mentions(l)),
          `no error naming ${k.expect.mentions.join(", ")}: ${t.slice(-300)}`,
        );
        recovery = `exited ${fmtMs(done)}`;
      }
    } finally {
      if (a.exit === undefined) {
        try {
          a.child.kill("SIGTERM");
        } catch { /* exited */ }
        const stopped = await waitUntil(() => a.exit !== undefined, 10_000, 50);
        if (stopped === undefined) {
          a.child.kill("SIGKILL");
          chk.that(
            false,
            `still running 10 s after SIGTERM (sent ${
              k.expect.kind === "retry"
                ? "right after it acquired its lease"
                : ""
            }), killed: ${
              (await text()).trimEnd().split("\n").slice(-2).join(" / ")
            }`,
          );
        }
      }
      await a.child.status;
    }
    this.row({
      section,
      fault: k.name,
      expected: k.expect.kind === "retry"
        ? `keeps running, retries with a message naming "${key}"; proceeds once fixed`
        : `exits 1 with a message naming ${k.expect.mentions.join(", ")}`,
      lost: "—",
      recovery,
      outcome: chk.outcome(),
    });
  }

  /**
   * The host misbehaving under a running agent (node1): subnet.env
   * deleted, its directory read-only, iptables-restore hanging, a flood
   * of netlink notifications, and SIGTERM at several moments.
   */
  async runtime(): Promise<void> {
    const section = "host faults at runtime (node1)";
    const n1 = this.node(1);
    const live = this.nodes(1, 2, 3);
    const envText = await Deno.readTextFile(n1.subnetFile);
    const envBack = (ms: number) =>
      waitUntil(async () => {
        try {
          return (await Deno.readTextFile(n1.subnetFile)) === envText;
        } catch {
          return false;
        }
      }, ms);

    {
      const chk = new Checks();
      const p = this.ping();
      await sleep(300);
      await Deno.remove(n1.subnetFile);
      const back = await envBack(12_000);
      chk.that(back !== undefined, "subnet.env not written again within 12 s");
      const loss = await p.stop();
      chk.that(loss.lost === 0, `${loss.lost} lost`);
      chk.that((await this.httpCode(n1, "/readyz")) === "200", "not ready");
      this.row({
        section,
        fault: "subnet.env deleted",
        expected:
          "written again with the same bytes within 2 resync periods; zero loss",
        lost: lossText(loss),
        recovery: fmtMs(back),
        outcome: chk.outcome(),
      });
    }

    {
      const chk = new Checks();
      const p = this.ping();
      await sleep(300);
      // Immutable directory: nothing can be created in it, as on a
      // read-only /run/flannel.
      await Deno.remove(n1.subnetFile);
      await run(["chattr", "+i", n1.dir]);
      const unready = await waitUntil(
        async () => (await this.httpCode(n1, "/readyz")) === "503",
        15_000,
      );
      const why = await n1.ns.tryExec([
        "curl",
        "-s",
        "-m",
        "2",
        `http://127.0.0.1:${n1.healthPort}/readyz`,
      ]);
      chk.that(unready !== undefined, "/readyz stayed 200");
      chk.that(
        why.stdout.includes("[-]subnet.env written") &&
          why.stdout.includes(n1.subnetFile),
        `/readyz does not name subnet.env: ${why.stdout.trim()}`,
      );
      chk.that(await this.alive(n1), "agent exited");
      await run(["chattr", "-i", n1.dir]);
      const back = await envBack(12_000);
      chk.that(back !== undefined, "subnet.env not written after the fix");
      const ready = await waitUntil(
        async () => (await this.httpCode(n1, "/readyz")) === "200",
        12_000,
      );
      chk.that(ready !== undefined, "not ready again after the fix");
      const loss = await p.stop();
      chk.that(loss.lost === 0, `${loss.lost} lost`);
      this.row({
        section,
        fault: "subnet.env directory read-only (immutable), file gone",
        expected:
          "/readyz 503 naming subnet.env; agent and dataplane stay; written again once writable",
        lost: lossText(loss),
        recovery: `unready ${fmtMs(unready)}; ready ${
          fmtMs(ready)
        } after the fix`,
        outcome: chk.outcome(),
      });
    }

    {
      // iptables-restore that never returns, as when another process
      // holds the xtables lock forever.
      const wrap = await Deno.makeTempDir({ prefix: "weft-f-hang-" });
      const real = (await run(["sh", "-c", "command -v iptables-restore"]))
        .stdout.trim();
      await Deno.writeTextFile(
        `${wrap}/iptables-restore`,
        `#!/bin/sh\nif [ "$1" = "--version" ]; then exec ${real} --version; fi\nexec sleep 617\n`,
      );
      await Deno.chmod(`${wrap}/iptables-restore`, 0o755);
      const chk = new Checks();
      const p = this.ping();
      await sleep(300);
      await this.stop(n1);
      // A rule missing, so the check wants a restore.
      await n1.ns.exec(["iptables", "-t", "filter", "-F", "FLANNEL-FWD"]);
      await this.start(n1, [], [], {
        PATH: `${wrap}:${
          Deno.env.get("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        }`,
      });
      const unready = await waitUntil(async () => {
        const r = await n1.ns.tryExec([
          "curl",
          "-s",
          "-m",
          "2",
          `http://127.0.0.1:${n1.healthPort}/readyz`,
        ]);
        return r.stdout.includes("[-]rules in place") &&
          r.stdout.includes("timed out");
      }, 40_000);
      chk.that(
        unready !== undefined,
        "/readyz never reported the rules as timed out",
      );
      const conv = await this.converged(live, 5000);
      chk.that(conv !== undefined, "peers not programmed while rules hang");
      const loss = await p.stop();
      chk.that(loss.lost === 0, `${loss.lost} lost`);
      this.row({
        section,
        fault: "iptables-restore hangs (never returns)",
        expected:
          "killed at its 20 s deadline; /readyz names the rules as timed out; peers programmed; zero loss",
        lost: lossText(loss),
        recovery: `unready ${fmtMs(unready)} after start`,
        outcome: chk.outcome(),
      });

      const chk2 = new Checks();
      // Wait for the next hung restore, then stop the agent in it.
      await sleep(6000);
      const t0 = performance.now();
      const st = await this.stop(n1);
      const took = performance.now() - t0;
      chk2.that(st?.code === 0, `exit status ${st?.code} ${st?.signal ?? ""}`);
      chk2.that(took < 10_000, `took ${fmtMs(took)}`);
      const left = await run(["pgrep", "-x", "-f", "sleep 617"]);
      chk2.that(
        left.stdout.trim() === "",
        "a hung iptables-restore was left behind",
      );
      chk2.that(
        (await this.problems([n1])).length === 0,
        "dataplane changed by the stop",
      );
      this.row({
        section: "agent lifecycle",
        fault: "SIGTERM while iptables-restore hangs",
        expected:
          "exits 0 within 10 s; kills the command; dataplane left in place",
        lost: "—",
        recovery: fmtMs(took),
        outcome: chk2.outcome(),
      });
      await Deno.remove(wrap, { recursive: true });
      await this.start(n1);
      await this.c.waitReady(n1, 30_000);
    }

    {
      // A burst of route changes on another device while the agent is
      // stopped (SIGSTOP) overruns its notification socket for sure
      // (ENOBUFS); a peer's route deleted meanwhile is lost among the
      // dropped notifications, so only the resync pass can repair it.
      const chk = new Checks();
      const p = this.ping();
      const overruns = async () =>
        Number(
          (await this.c.metrics(n1)).match(
            /^weft_netlink_overruns_total (\d+)/m,
          )?.[1] ?? NaN,
        );
      const before = await overruns();
      const offset = await this.logSize(n1);
      // The peer whose route goes: any but node2 (node3 is gone by now
      // when the earlier phases ran; node4 joined instead).
      const other = expectedPeers(await this.c.leases(), n1.ip).find((x) =>
        x.publicIP !== this.node(2).ip
      );
      if (other === undefined) throw new Error("No peer besides node2");
      await n1.ns.ip(
        "link",
        "add",
        "weft-flood",
        "type",
        "veth",
        "peer",
        "name",
        "weft-flood-p",
      );
      await n1.ns.ip("link", "set", "weft-flood", "up");
      const adds: string[] = [];
      const dels: string[] = [];
      for (let i = 0; i < 40_000; i++) {
        const dst = `172.31.${i >> 8}.${i & 255}/32`;
        adds.push(`route add ${dst} dev weft-flood`);
        dels.push(`route del ${dst} dev weft-flood`);
      }
      const pid = n1.agent!.child.pid;
      Deno.kill(pid, "SIGSTOP");
      const t0 = performance.now();
      try {
        await n1.ns.exec(["ip", "-batch", "-"], adds.join("\n") + "\n");
        await n1.ns.ip("route", "del", other.subnet, "dev", DEVICE);
        await n1.ns.exec(["ip", "-batch", "-"], dels.join("\n") + "\n");
      } finally {
        Deno.kill(pid, "SIGCONT");
      }
      const flood = performance.now() - t0;
      const t1 = performance.now();
      const seen = await waitUntil(
        async () => (await overruns()) > before,
        10_000,
        100,
      );
      const conv = await this.converged(live, 10_000);
      const repaired = conv === undefined ? undefined : performance.now() - t1;
      const log = await this.logSince(n1, offset);
      chk.that(await this.alive(n1), "agent exited");
      chk.that(
        seen !== undefined,
        `weft_netlink_overruns_total stayed at ${before}`,
      );
      chk.that(
        /^W.*overran the socket \(ENOBUFS\)/m.test(log),
        "no warning about the overrun in the log",
      );
      chk.that(
        conv !== undefined,
        `route ${other.subnet} not repaired after the overrun: ${
          (await this.problems(live)).join(", ")
        }`,
      );
      chk.that((await this.httpCode(n1, "/readyz")) === "200", "not ready");
      const loss = await p.stop();
      chk.that(loss.lost === 0, `${loss.lost} lost`);
      chk.note(
        `80 000 route notifications in ${
          fmtMs(flood)
        }; overruns ${before} → ${await overruns()}`,
      );
      await n1.ns.ip("link", "del", "weft-flood");
      this.row({
        section,
        fault:
          "netlink notification flood (80 000 route changes on another device, agent stopped meanwhile) with another peer's route deleted inside it",
        expected:
          "overrun seen (weft_netlink_overruns_total up, ENOBUFS warning); full pass repairs the deleted route; ready; zero loss node1↔node2",
        lost: lossText(loss),
        recovery: `repaired ${fmtMs(repaired)} after SIGCONT`,
        outcome: chk.outcome(),
      });
    }

    // SIGTERM at more moments: steady state, during an etcd outage, and
    // before the first listing (etcd unreachable at start).
    const leasesNow = await this.c.leases();
    const sigterm = async (
      fault: string,
      before: () => Promise<void>,
      after: () => Promise<void>,
    ) => {
      const chk = new Checks();
      const p = this.ping();
      await before();
      const t0 = performance.now();
      const st = await this.stop(n1);
      const took = performance.now() - t0;
      chk.that(st?.code === 0, `exit status ${st?.code} ${st?.signal ?? ""}`);
      chk.that(took < 10_000, `took ${fmtMs(took)}`);
      const changed = await this.problems([n1], leasesNow);
      chk.that(
        changed.length === 0,
        `dataplane changed: ${changed.join(", ")}`,
      );
      await sleep(1000);
      const loss = await p.stop();
      chk.that(loss.lost === 0, `${loss.lost} lost`);
      await after();
      this.row({
        section: "agent lifecycle",
        fault,
        expected: "exits 0 within 10 s; dataplane left in place; zero loss",
        lost: lossText(loss),
        recovery: fmtMs(took),
        outcome: chk.outcome(),
      });
    };
    await sigterm("SIGTERM in steady state", async () => {
      await sleep(500);
    }, async () => {
      await this.start(n1);
      await this.c.waitReady(n1, 30_000);
    });
    await sigterm(
      "SIGTERM during an etcd outage (watches retrying)",
      async () => {
        await this.c.stopEtcd();
        await sleep(3000);
      },
      async () => {
        await this.c.startEtcd();
        await this.start(n1);
        await this.c.waitReady(n1, 30_000);
      },
    );
    await sigterm(
      "SIGTERM before the first listing (etcd unreachable at start)",
      async () => {
        await this.stop(n1);
        await this.c.stopEtcd();
        await this.start(n1);
        await sleep(3000);
      },
      async () => {
        await this.c.startEtcd();
        await this.start(n1);
        await this.c.waitReady(n1, 30_000);
      },
    );
    const clean = await this.converged(live, 15_000, leasesNow);
    if (clean === undefined) {
      throw new Error(
        `Cluster did not recover from the runtime faults: ${
          (await this.problems(live)).join(", ")
        }`,
      );
    }
  }

  /** Bad command lines: exit 2 with the usage and the culprit named. */
  async flags(): Promise<void> {
    const section = "command line";
    const n5 = this.node(5);
    const batch = 6;
    for (let i = 0; i < FLAG_CASES.length; i += batch) {
      await Promise.all(
        FLAG_CASES.slice(i, i + batch).map((k, j) =>
          this.#flagCase(n5, k, i + j, section)
        ),
      );
    }
  }

  async #flagCase(
    n: ClusterNode,
    k: FlagCase,
    i: number,
    section: string,
  ): Promise<void> {
    const chk = new Checks();
    const logPath = `${n.dir}/flags${i}.log`;
    // A harmless endpoint first: should a case be accepted by mistake, the
    // agent waits for etcd instead of touching anything.
    const a = await this.spawn(
      n,
      ["--etcd-endpoints=http://127.0.0.1:9", ...k.args],
      logPath,
      { ...k.env },
      ["127.0.0.1:9"],
    );
    const done = await waitUntil(() => a.exit !== undefined, 15_000, 50);
    if (a.exit === undefined) {
      try {
        a.child.kill("SIGKILL");
      } catch { /* exited */ }
    }
    await a.child.status;
    await sleep(50);
    const t = await Deno.readTextFile(logPath).catch(() => "");
    const first = t.split("\n")[0] ?? "";
    chk.that(done !== undefined, "did not exit (flag accepted?)");
    chk.that(a.exit?.code === 2, `exit code ${a.exit?.code}, expected 2`);
    chk.that(t.includes("Usage:"), "no usage printed");
    chk.that(
      k.mentions.every((m) => first.includes(m)),
      `message does not name ${k.mentions.join(", ")}: ${first.slice(0, 200)}`,
    );
    if (first !== "") chk.note(first.slice(0, 120));
    this.row({
      section,
      fault: `${
        k.env
          ? Object.entries(k.env).map(([e, v]) => `${e}=${v}`).join(" ")
          : k.args.join(" ")
      }`,
      expected: "exit 2, usage, message naming the flag and value",
      lost: "—",
      recovery: "—",
      outcome: chk.outcome(),
    });
  }
}

const ETCD_PHASES = [
  "restarts",
  "drift",
  "corpus",
  "claims",
  "proxy",
  "outage",
  "deleted",
  "config",
  "runtime",
  "clock",
  "flags",
  "foreign",
];

await gatedTest({
  name:
    "fault suite, etcd mode: a running cluster survives faults and bad inputs (table in bench/results/faults.md)",
  needs: [ROOT, onlyNeed(ETCD_PHASES)],
  fn: async (t) => {
    const s = await EtcdFaults.create();
    try {
      await runPhases(t, s, [
        ["restarts", "agent restarts", () => s.restarts()],
        ["drift", "kernel drift", () => s.drift()],
        ["corpus", "peer corpus", () => s.peerCorpus()],
        [
          "claims",
          "claim order",
          async () => claimOrder(s, await etcdClaims(s, s.nodes(1, 2, 3))),
        ],
        ["proxy", "misbehaving API", () => s.proxy()],
        ["outage", "etcd outage", () => s.etcdOutage()],
        [
          "deleted",
          "node deleted while agents were down",
          () => s.deletedNode(),
        ],
        ["config", "own network config", () => s.ownConfig()],
        ["runtime", "host faults at runtime", () => s.runtime()],
        ["clock", "wall-clock steps", () => wallClockSteps(s, s.node(2))],
        ["flags", "command line", () => s.flags()],
        ["foreign", "foreign kernel state", () => foreignState(s)],
      ]);
    } finally {
      await s.close();
      await writeReport(ROWS);
    }
  },
});

await gatedTest({
  name:
    "fault suite, dual stack (etcd mode): IPv4 and IPv6 survive restarts, IPv6 drift and hostile IPv6 leases",
  needs: [ROOT, onlyNeed(["v6restarts", "v6drift", "v6corpus"])],
  fn: async (t) => {
    const s = await DualStackFaults.create(ROWS, "weft-f6");
    try {
      await runPhases(t, s, [
        ["v6restarts", "dual-stack agent restart", () => s.restarts()],
        ["v6drift", "IPv6 kernel drift", () => s.drift()],
        ["v6corpus", "dual-stack peer corpus", () => s.peerCorpus()],
      ]);
    } finally {
      await s.close();
      await writeReport(ROWS);
    }
  },
});

for (
  const [mode, prefix, keys] of [
    [HOST_GW, "weft-fh", ["hgw"]],
    [DIRECT_ROUTING, "weft-fd", ["direct"]],
  ] as const
) {
  await gatedTest({
    name:
      `fault suite, ${mode.section}: routes on eth0 survive restarts and drift, foreign routes are left alone`,
    needs: [ROOT, onlyNeed(keys)],
    fn: async (t) => {
      const s = await DirectFaults.create(ROWS, prefix, mode);
      try {
        await runPhases(t, s, [
          [keys[0], "agent restart", () => s.restarts()],
          [keys[0], "route drift and foreign routes", () => s.drift()],
          [keys[0], "routes left by flanneld", () => s.adoption()],
          ...(mode === HOST_GW
            ? [[keys[0], "peer off the link", () => s.offLink()] as const]
            : []),
        ]);
      } finally {
        await s.close();
        await writeReport(ROWS);
      }
    },
  });
}

const KUBE_PHASES = [
  "kcorpus",
  "kclaims",
  "ktoken",
  "kca",
  "kproxy",
  "koutage",
];

await gatedTest({
  name:
    "fault suite, Kubernetes mode: a running cluster survives faults and bad inputs (table in bench/results/faults.md)",
  needs: [ROOT, kubeUnavailable, onlyNeed(KUBE_PHASES)],
  fn: async (t) => {
    const s = await KubeFaults.create(ROWS, "weft-fk");
    try {
      await runPhases(t, s, [
        // Credentials first: the proxy and the outage leave agents in
        // their degraded list-every-minute mode for five minutes.
        ["kcorpus", "node corpus", () => s.nodeCorpus()],
        [
          "kclaims",
          "claim order",
          async () => claimOrder(s, await kubeClaims(s, s.nodes(1, 2, 3))),
        ],
        ["ktoken", "token rotation", () => s.tokenRotation()],
        ["kca", "CA rotation", () => s.caRotation()],
        ["kproxy", "misbehaving API", () => s.proxy()],
        ["koutage", "kube-apiserver outage", () => s.outage()],
      ]);
    } finally {
      await s.close();
      await writeReport(ROWS);
    }
  },
});

await gatedTest({
  name:
    "fault suite, Kubernetes mode, dual stack: hostile IPv6 annotations and pod CIDRs are refused, IPv4 and IPv6 traffic flows",
  needs: [ROOT, kubeUnavailable, onlyNeed(["k6corpus"])],
  fn: async (t) => {
    const s = await KubeDualFaults.create(ROWS, "weft-fk6");
    try {
      await runPhases(t, s, [
        ["k6corpus", "dual-stack node corpus", () => s.nodeCorpus()],
      ]);
    } finally {
      await s.close();
      await writeReport(ROWS);
    }
  },
});
