/**
 * The fault suite's phases for peers reached by plain routing on the
 * external interface (`10.244.2.0/24 via 198.18.0.2 dev eth0 proto 87`):
 * an etcd-mode cluster with Backend host-gw, or with vxlan DirectRouting
 * (all nodes share the underlay subnet, so every peer is direct). Pods
 * ping across nodes while an agent is killed and restarted, routes drift,
 * routes weft does not own sit inside the cluster network on `eth0`,
 * routes a flanneld left are adopted, and (host-gw) a peer publishes a
 * public IP that is not on the link.
 *
 * @module
 */
import type { ClusterNode, EtcdLease } from "../_cluster.ts";
import { keyName } from "./corpus.ts";
import { DIR, EtcdRun } from "./etcd.ts";
import { heldRoute } from "./foreign.ts";
import { type FaultRow, fmtMs } from "./report.ts";
import {
  Checks,
  lossText,
  NETWORK,
  REPAIR_LIMIT_MS,
  sleep,
  waitUntil,
} from "./run.ts";

/** weft's rtnetlink route protocol, as `ip -j route` prints it. */
const PROTO_WEFT = "87";
const EXT = "eth0";

interface Route {
  dst: string;
  gateway?: string;
  dev: string;
  protocol?: string;
}

/** Which direct-routing setup a run is. */
export interface DirectMode {
  /** Section of the table. */
  readonly section: string;
  /** `Backend` of the network config. */
  readonly backend: Record<string, unknown>;
  /** The lease `BackendType` of the nodes. */
  readonly type: "host-gw" | "vxlan";
}

export const HOST_GW: DirectMode = {
  section: "host-gw backend",
  backend: { Type: "host-gw" },
  type: "host-gw",
};

export const DIRECT_ROUTING: DirectMode = {
  section: "vxlan DirectRouting (peers on the underlay subnet)",
  backend: { Type: "vxlan", DirectRouting: true },
  type: "vxlan",
};

/** A cluster whose peers are routed via their public IPs on `eth0`. */
export class DirectFaults extends EtcdRun {
  readonly mode: DirectMode;

  constructor(
    c: ConstructorParameters<typeof EtcdRun>[0],
    rows: FaultRow[],
    mode: DirectMode,
  ) {
    super(c, rows);
    this.mode = mode;
  }

  /** Builds a three-node cluster with pods that reach each other. */
  static async create(
    rows: FaultRow[],
    prefix: string,
    mode: DirectMode,
  ): Promise<DirectFaults> {
    const c = await EtcdRun.cluster({
      nodes: 3,
      prefix,
      netConf: JSON.stringify({ Network: NETWORK, Backend: mode.backend }),
    });
    const s = new DirectFaults(c, rows, mode);
    await s.boot(s.nodes(1, 2, 3));
    return s;
  }

  routes(n: ClusterNode): Promise<Route[]> {
    return n.ns.json<Route[]>("-4", "route", "show", "table", "main");
  }

  /**
   * Per node: each peer's route `S via <public IP> dev eth0 proto 87`,
   * exactly one route per peer subnet, and no other proto 87 route.
   */
  override async problems(
    nodes: ClusterNode[],
    leases?: readonly EtcdLease[],
  ): Promise<string[]> {
    const ls = leases ?? await this.leases();
    const out: string[] = [];
    for (const n of nodes) {
      const routes = await this.routes(n);
      const want = new Map(
        ls.filter((l) =>
          l.value.PublicIP !== n.ip && l.value.BackendType === this.mode.type
        ).map((l) => [l.subnet, l.value.PublicIP]),
      );
      for (const [dst, gw] of want) {
        const rs = routes.filter((r) => r.dst === dst);
        const r = rs[0];
        if (!r) out.push(`${n.name}: route ${dst} missing`);
        else if (
          rs.length > 1 || r.gateway !== gw || r.dev !== EXT ||
          r.protocol !== PROTO_WEFT
        ) {
          out.push(
            `${n.name}: route ${dst} is ${
              rs.map((r) =>
                `via ${r.gateway} dev ${r.dev} proto ${r.protocol ?? "boot"}`
              ).join(" and ")
            }`,
          );
        }
      }
      for (const r of routes) {
        if (r.protocol === PROTO_WEFT && !want.has(r.dst)) {
          out.push(`${n.name}: extra route ${r.dst} via ${r.gateway}`);
        }
      }
    }
    return out;
  }

  /** The run's peers as node1 must route them. */
  async #peers(): Promise<{ subnet: string; ip: string }[]> {
    return (await this.leases()).filter((l) =>
      l.value.PublicIP !== this.node(1).ip
    ).map((l) => ({ subnet: l.subnet, ip: l.value.PublicIP }));
  }

  #peer(peers: { subnet: string; ip: string }[], n: number) {
    return peers.find((p) => p.ip === this.node(n).ip)!;
  }

  /** kill -9 and restart of node2: hitless, same lease. */
  async restarts(): Promise<void> {
    const n2 = this.node(2);
    const chk = new Checks();
    const keyOf = async () =>
      (await this.leases()).find((l) => l.value.PublicIP === n2.ip)?.key;
    const before = await keyOf();
    const { losses: [loss], ready } = await this.killAndRestart(
      n2,
      this.nodes(1, 2, 3),
      chk,
      [this.ping()],
    );
    const after = await keyOf();
    chk.that(after === before, `lease changed: ${before} → ${after}`);
    this.row({
      section: this.mode.section,
      fault: "node2 agent kill -9, restarted",
      expected: "zero loss; same lease; ready again",
      lost: lossText(loss),
      recovery: `ready ${fmtMs(ready)}`,
      outcome: chk.outcome(),
    });
  }

  /**
   * Drift of node1's routes, repaired from rtnetlink notifications, with
   * routes weft does not own inside the cluster network on `eth0` (an
   * administrator's `proto static` one, and a `proto boot` one no lease
   * wants, as a flanneld leaves behind) that must outlive every repair.
   */
  async drift(): Promise<void> {
    const n1 = this.node(1);
    const peers = await this.#peers();
    const p2 = this.#peer(peers, 2);
    const p3 = this.#peer(peers, 3);
    const passes = async () =>
      Number(
        (await this.c.metrics(n1)).match(
          /^weft_reconcile_passes_total (\d+)/m,
        )?.[1] ?? 0,
      );
    const foreign = [
      {
        dst: `10.244.${await this.freeOctet()}.0/24`,
        gw: "198.18.0.77",
        proto: "static",
        what: "an administrator's route (proto static)",
      },
      {
        dst: `10.244.${await this.freeOctet()}.0/24`,
        gw: "198.18.0.78",
        proto: "boot",
        what: "a route no lease wants, proto boot (as flanneld leaves them)",
      },
    ];
    for (const f of foreign) {
      await n1.ns.ip(
        "route",
        "add",
        f.dst,
        "via",
        f.gw,
        "dev",
        EXT,
        "proto",
        f.proto,
      );
    }
    const passesBefore = await passes();
    const cases = [
      {
        name: "route to node2 deleted",
        inject: () => n1.ns.ip("route", "del", p2.subnet, "dev", EXT),
      },
      {
        name: "route to node2 changed to node3's gateway, proto 87 kept",
        inject: () =>
          n1.ns.ip(
            "route",
            "replace",
            p2.subnet,
            "via",
            p3.ip,
            "dev",
            EXT,
            "proto",
            PROTO_WEFT,
          ),
      },
    ];
    for (const k of cases) {
      const chk = new Checks();
      const { losses: [loss], repair } = await this.timeRepair(
        n1,
        k.inject,
        chk,
        [this.ping()],
      );
      this.row({
        section: this.mode.section,
        fault: k.name,
        expected: `repaired within ${REPAIR_LIMIT_MS} ms`,
        lost: lossText(loss),
        recovery: fmtMs(repair),
        outcome: chk.outcome(),
      });
    }
    // At least two full passes must have looked at the foreign routes.
    const ran = await waitUntil(
      async () => (await passes()) - passesBefore >= 2,
      25_000,
      500,
    );
    const routes = await this.routes(n1);
    for (const f of foreign) {
      const chk = new Checks();
      const r = routes.find((r) => r.dst === f.dst);
      chk.that(ran !== undefined, "fewer than two full passes ran");
      chk.that(
        r !== undefined && r.gateway === f.gw &&
          (r.protocol ?? "boot") === f.proto,
        `route ${f.dst} via ${f.gw} proto ${f.proto} ${
          r ? `became via ${r.gateway} proto ${r.protocol ?? "boot"}` : "gone"
        }`,
      );
      chk.note(`${(await passes()) - passesBefore} full passes ran`);
      this.row({
        section: this.mode.section,
        fault:
          `foreign route inside Network on ${EXT}: ${f.dst} via ${f.gw}, ${f.what}, through the repairs above`,
        expected: "left alone (not weft's protocol 87)",
        lost: "—",
        recovery: "—",
        outcome: chk.outcome(),
      });
      await n1.ns.ip("route", "del", f.dst, "dev", EXT);
    }
    // A boot route at a lease's destination through another gateway than
    // the lease's public IP is not flanneld's: someone's, left alone.
    await heldRoute(this, n1, {
      what:
        `node1's route to node3 replaced through node2's IP (proto boot, not flanneld's: its gateway would be node3's IP)`,
      subnet: p3.subnet,
      args: ["via", p2.ip, "dev", EXT],
      verb: "replace",
      theirs: (r) => r.gateway === p2.ip && r.protocol === undefined,
      ours: async () =>
        (await this.routes(n1)).some((r) =>
          r.dst === p3.subnet && r.gateway === p3.ip &&
          r.protocol === PROTO_WEFT
        ),
    });
  }

  /**
   * Routes a flanneld left (same shape, protocol boot) on a node whose
   * agent starts: replaced in place to protocol 87, never deleted first.
   */
  async adoption(): Promise<void> {
    const n1 = this.node(1);
    const peers = await this.#peers();
    const chk = new Checks();
    const p = this.ping();
    await sleep(300);
    await this.stop(n1);
    for (const x of peers) {
      await n1.ns.ip("route", "replace", x.subnet, "via", x.ip, "dev", EXT);
    }
    const left = (await this.routes(n1)).filter((r) =>
      peers.some((x) => x.subnet === r.dst) && r.protocol === undefined
    );
    chk.that(
      left.length === peers.length,
      `precondition: ${left.length} of ${peers.length} routes are proto boot`,
    );
    const monitor = new Deno.Command("ip", {
      args: ["netns", "exec", n1.ns.name, "ip", "monitor", "route"],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const seen = new Response(monitor.stdout).text();
    await sleep(200);
    const t0 = performance.now();
    await this.start(n1);
    const ready = await this.c.waitReady(n1, 20_000).catch(() => undefined);
    const conv = await this.converged([n1], 10_000);
    const adopted = conv === undefined ? undefined : performance.now() - t0;
    await sleep(1000);
    monitor.kill("SIGTERM");
    await monitor.status;
    const events = (await seen).split("\n");
    const flaps = events.filter((l) =>
      l.startsWith("Deleted") && peers.some((x) => l.includes(x.subnet))
    );
    const loss = await p.stop();
    chk.that(ready !== undefined, "node1 not ready");
    chk.that(
      conv !== undefined,
      `not adopted: ${(await this.problems([n1])).join(", ")}`,
    );
    chk.that(flaps.length === 0, `routes deleted: ${flaps.join(" / ")}`);
    chk.that(loss.lost === 0, `${loss.lost} lost`);
    chk.note(
      `${
        events.filter((l) => peers.some((x) => l.includes(x.subnet))).length
      } route events, none a deletion`,
    );
    this.row({
      section: this.mode.section,
      fault:
        "node1 restarted with its peers' routes left by a flanneld (same shape, proto boot)",
      expected:
        "adopted in place (proto 87), no route deleted (ip monitor), zero loss",
      lost: lossText(loss),
      recovery: `adopted ${fmtMs(adopted)} after start`,
      outcome: chk.outcome(),
    });
  }

  /**
   * A host-gw peer whose public IP is not on the link: the kernel refuses
   * its route. As docs/hostile-inputs.md decides, that is the peer's
   * problem: counted in `weft_peers_failing`, named in the log and in
   * `/readyz?verbose`, never unready, and the other peers are untouched.
   */
  async offLink(): Promise<void> {
    const n1 = this.node(1);
    const live = this.nodes(1, 2, 3);
    const subnet = `10.244.${await this.freeOctet()}.0/24`;
    const key = DIR + keyName(subnet);
    const chk = new Checks();
    const p = this.ping();
    const offsets = new Map<ClusterNode, number>();
    for (const n of live) offsets.set(n, await this.logSize(n));
    await this.put(
      key,
      JSON.stringify({
        PublicIP: "10.99.0.5",
        PublicIPv6: null,
        BackendType: "host-gw",
        BackendData: null,
      }),
    );
    const failing = async (n: ClusterNode) =>
      Number(
        (await this.c.metrics(n)).match(/^weft_peers_failing (\d+)/m)?.[1] ??
          NaN,
      );
    const seen = await waitUntil(
      async () => {
        for (const n of live) if ((await failing(n)) !== 1) return false;
        return true;
      },
      10_000,
      200,
    );
    chk.that(
      seen !== undefined,
      "weft_peers_failing did not reach 1 everywhere",
    );
    for (const n of live) {
      const log = await this.logSince(n, offsets.get(n)!);
      chk.that(
        log.split("\n").some((l) => l.startsWith("E") && l.includes(key)),
        `${n.name}: no error naming "${key}"`,
      );
      chk.that(
        (await this.httpCode(n, "/readyz")) === "200",
        `${n.name} not ready`,
      );
      chk.that(
        !(await this.routes(n)).some((r) => r.dst === subnet),
        `${n.name} has a route to ${subnet}`,
      );
    }
    const verbose = await n1.ns.tryExec([
      "curl",
      "-s",
      "-m",
      "2",
      `http://127.0.0.1:${n1.healthPort}/readyz?verbose`,
    ]);
    chk.that(
      verbose.stdout.includes("[i]") && verbose.stdout.includes(key),
      `/readyz?verbose does not name the peer: ${verbose.stdout.trim()}`,
    );
    const conv = await this.converged(
      live,
      5000,
      (await this.leases()).filter((l) => l.key !== key),
    );
    chk.that(conv !== undefined, "valid peers affected");
    await this.del(key);
    const cleared = await waitUntil(
      async () => {
        for (const n of live) if ((await failing(n)) !== 0) return false;
        return true;
      },
      10_000,
      200,
    );
    chk.that(
      cleared !== undefined,
      "weft_peers_failing stayed up after removal",
    );
    const loss = await p.stop();
    chk.that(loss.lost === 0, `${loss.lost} lost`);
    this.row({
      section: this.mode.section,
      fault: "peer whose public IP is not on the link (10.99.0.5)",
      expected:
        "kernel refuses its route; weft_peers_failing 1, error and /readyz?verbose name the key; /readyz 200; no route; zero loss",
      lost: lossText(loss),
      recovery: `counted ${fmtMs(seen)}; cleared ${
        fmtMs(cleared)
      } after removal`,
      outcome: chk.outcome(),
    });
  }
}
