/**
 * The fault suite's dual-stack phases: an etcd-mode cluster of three
 * nodes with `EnableIPv6` and `IPv6Network` on an underlay with both
 * families, pods with an address of each, and pods pinging each other
 * over IPv4 and IPv6 while faults are injected: an agent killed and
 * restarted, IPv6 kernel drift, and the IPv6 corpus (tests/faults/corpus_v6.ts)
 * of hostile dual-stack leases.
 *
 * @module
 */
import type { EtcdLease } from "../_cluster.ts";
import {
  DUAL_CASES,
  dualIds,
  dualLease,
  type DualSlot,
  dualTraces,
  splitOwn,
} from "./corpus_v6.ts";
import { DIR, EtcdRun } from "./etcd.ts";
import { type CorpusCase, corpusRun } from "./corpus_run.ts";
import {
  DEVICE6,
  dualSlotEntries,
  expectedPeers,
  readOverlay,
  V6,
} from "./kernel.ts";
import { type FaultRow, fmtMs } from "./report.ts";
import { Checks, lossText, NETWORK, NETWORK6, REPAIR_LIMIT_MS } from "./run.ts";

/** The dual-stack network config (IPv6SubnetLen defaults to 64). */
export const DUAL_NET_CONF = JSON.stringify({
  Network: NETWORK,
  EnableIPv6: true,
  IPv6Network: NETWORK6,
  Backend: { Type: "vxlan" },
});

/** The dual-stack etcd-mode cluster and its phases. */
export class DualStackFaults extends EtcdRun {
  /** Builds the cluster; pods reach each other over both families. */
  static async create(
    rows: FaultRow[],
    prefix: string,
  ): Promise<DualStackFaults> {
    const c = await EtcdRun.cluster({
      nodes: 3,
      prefix,
      ipv6: true,
      netConf: DUAL_NET_CONF,
    });
    const s = new DualStackFaults(c, rows);
    await s.boot(s.nodes(1, 2, 3), [4, 6]);
    return s;
  }

  /** Pings node1→node2 over both families. */
  #pings() {
    return [this.ping(), this.ping("node1-pod1", "node2-pod1", 6)];
  }

  /** kill -9 and restart: hitless on both families, same identity. */
  async restarts(): Promise<void> {
    const n2 = this.node(2);
    const identity = async () => {
      const lease = (await this.leases()).find((l) =>
        l.value.PublicIP === n2.ip
      );
      return JSON.stringify({
        key: lease?.key,
        mac: (await readOverlay(n2.ns)).device?.mac,
        mac6: (await readOverlay(n2.ns, V6)).device?.mac,
        published: lease?.value.BackendData?.VtepMAC,
        published6: lease?.value.BackendV6Data?.VtepMAC,
      });
    };
    const before = await identity();
    const chk = new Checks();
    const { losses: [l4, l6], ready } = await this.killAndRestart(
      n2,
      this.nodes(1, 2, 3),
      chk,
      this.#pings(),
    );
    const after = await identity();
    chk.that(after === before, `identity changed: ${before} → ${after}`);
    this.row({
      section: "dual stack (etcd mode, IPv4 + IPv6)",
      fault: "node2 agent kill -9, restarted",
      expected:
        "zero loss over IPv4 and IPv6; same lease key (both subnets) and both VTEP MACs; ready again",
      lost: `${lossText(l4)} (v4) + ${lossText(l6)} (v6)`,
      recovery: `ready ${fmtMs(ready)}`,
      outcome: chk.outcome(),
    });
  }

  /** IPv6 kernel drift on node1, repaired from rtnetlink notifications. */
  async drift(): Promise<void> {
    const n1 = this.node(1);
    const leases = await this.leases();
    const peers = expectedPeers(leases, n1.ip6, 6);
    const p2 = peers.find((p) => p.publicIP === this.node(2).ip6)!;
    const p3 = peers.find((p) => p.publicIP === this.node(3).ip6)!;
    const cases: { name: string; inject: () => Promise<unknown> }[] = [
      {
        name: "IPv6 route to node2 deleted",
        inject: () => n1.ns.ip("-6", "route", "del", p2.subnet, "dev", DEVICE6),
      },
      {
        // weft's mark kept: its own route, drifted. Without the mark it
        // is someone's route, left alone (tests/faults/foreign.ts).
        name: "IPv6 route to node2 changed to node3's gateway, proto 87 kept",
        inject: () =>
          n1.ns.ip(
            "-6",
            "route",
            "replace",
            p2.subnet,
            "via",
            p3.gw,
            "dev",
            DEVICE6,
            "onlink",
            "proto",
            "87",
          ),
      },
      {
        name: "IPv6 neighbour of node2 lladdr changed",
        inject: () =>
          n1.ns.ip(
            "-6",
            "neigh",
            "replace",
            p2.gw,
            "lladdr",
            "02:de:ad:be:ef:06",
            "dev",
            DEVICE6,
            "nud",
            "permanent",
          ),
      },
      {
        name: "IPv6 FDB entry of node2 pointed at another host",
        inject: () =>
          n1.ns.exec([
            "bridge",
            "fdb",
            "replace",
            p2.mac,
            "dev",
            DEVICE6,
            "dst",
            "fd00:18::99",
            "self",
            "permanent",
          ]),
      },
      {
        name: "flannel-v6.1 deleted",
        inject: () => n1.ns.ip("link", "del", DEVICE6),
      },
    ];
    for (const k of cases) {
      const chk = new Checks();
      const { losses: [l4, l6], repair } = await this.timeRepair(
        n1,
        k.inject,
        chk,
        this.#pings(),
        leases,
      );
      chk.that(l4!.lost === 0, `${l4!.lost} lost over IPv4`);
      this.row({
        section: "dual stack (etcd mode, IPv4 + IPv6)",
        fault: k.name,
        expected:
          `repaired within ${REPAIR_LIMIT_MS} ms; IPv4 untouched (zero loss)`,
        lost: `${lossText(l4)} (v4) + ${lossText(l6)} (v6)`,
        recovery: fmtMs(repair),
        outcome: chk.outcome(),
      });
    }
  }

  /** Hostile dual-stack leases in etcd, then a restart with them present. */
  async peerCorpus(): Promise<void> {
    const n1 = this.node(1);
    const real = await this.leases();
    const { own, peers, realSubnets } = splitOwn(real, n1.ip);
    const cases: CorpusCase[] = [];
    let control: EtcdLease | undefined;
    for (const [i, k] of DUAL_CASES.entries()) {
      const slot: DualSlot = {
        dir: DIR,
        ...dualIds(i, await this.freeOctet(), "f4", own, peers, n1.ip6),
      };
      const input = k.make(slot);
      if (k.expect === "programmed") control = dualLease(input.key, slot);
      const [v4, v6] = dualTraces(
        slot,
        k.claims6 ? k.claims6(slot) : slot.subnet6,
        realSubnets,
      );
      cases.push(
        this.etcdCase(
          k.name,
          k.expect,
          input,
          (s) => dualSlotEntries(s.v4, s.v6!, v4, v6),
          k,
        ),
      );
    }
    await corpusRun(this, {
      section: "dual-stack peer corpus (etcd lease keys and values, IPv6 half)",
      restart: (n) => this.start(n),
      noun: "key",
      cases,
      expected: [...real, control!],
      live: this.nodes(1, 2, 3),
      pings: [["node1-pod1", "node2-pod1", 4], ["node1-pod1", "node2-pod1", 6]],
    });
  }
}
