/**
 * Claim order rows of the fault suite: a lease that copies a live node's
 * VtepMAC must lose to the node that claimed it first, whether the copier
 * is a newer key or Node, or an OLDER node re-pointing its own lease (to a
 * vxlan lease with the MAC, or to host-gw carrying it), and an observing
 * agent restarted while the copy is in place must reach the verdict the
 * running agents reached. Each row: pods on the observer and the victim
 * ping each other throughout (nothing lost), every live agent keeps the
 * victim's route and FDB entry (nothing redirected), the copier is named
 * in a warning with the victim's name, and the refusal is counted in
 * `weft_peers_refused_total{reason="duplicate_mac"}` on the victim and on
 * the restarted observer.
 *
 * @module
 */
import type { ClusterNode, EtcdLease } from "../_cluster.ts";
import { readOverlay, V4 } from "./kernel.ts";
import { DIR, type EtcdRun } from "./etcd.ts";
import type { KubeFaults } from "./kube_faults.ts";
import { keyName } from "./corpus.ts";
import { fmtMs } from "./report.ts";
import { b64, Checks, type FaultRun, lossText, waitUntil } from "./run.ts";
import { samples } from "../_metrics.ts";

const SECTION = "claim order (duplicate VtepMAC)";
const ANN = "flannel.alpha.coreos.com/";

/** Who is who in the rows: by how old their lease (key or Node) is. */
export interface ClaimRoles {
  /** The oldest node: it turns hostile in the "older" rows. */
  readonly older: ClusterNode;
  /** The node whose MAC is copied: the youngest. */
  readonly victim: ClusterNode;
  /** The victim's lease as warnings name it: etcd key or node name. */
  readonly victimId: string;
  /** Restarted while the copy is in place. */
  readonly observer: ClusterNode;
  /** How the order was established, for the row's note. */
  readonly why: string;
}

/** One hostile write and how to take it back. */
export interface ClaimAttack {
  readonly fault: string;
  /** The key or node name a warning must quote. */
  readonly id: string;
  /** Whether the copier is `older` (its lease is refused as a whole). */
  readonly byOlder: boolean;
  readonly apply: () => Promise<unknown>;
  readonly undo: () => Promise<unknown>;
}

/** What {@linkcode claimOrder} needs of a mode. */
export interface ClaimMode {
  readonly roles: ClaimRoles;
  readonly attacks: readonly ClaimAttack[];
  /** Restarts a node's agent as the run started it (stopped first). */
  readonly restart: (n: ClusterNode) => Promise<unknown>;
}

/** The refusals of one reason in a node's /metrics, 0 when absent. */
async function refused(
  s: FaultRun,
  n: ClusterNode,
  reason: string,
): Promise<number> {
  return samples(await s.c.metrics(n), "weft_peers_refused_total", "reason")
    .get(reason) ?? 0;
}

/** Whether a node's log since `offset` warns about `id`, naming `holder`. */
async function warns(
  s: FaultRun,
  n: ClusterNode,
  offset: number,
  id: string,
  holder: RegExp,
): Promise<boolean> {
  return (await s.logSince(n, offset)).split("\n").some((l) =>
    l.startsWith("W") && l.includes(`"${id}"`) && holder.test(l)
  );
}

/** The victim's FDB entry on `n`: where its MAC points, if anywhere. */
async function fdbOf(n: ClusterNode, mac: string): Promise<string[]> {
  const o = await readOverlay(n.ns, V4);
  return o.fdb.filter((f) => f.mac === mac).map((f) => f.dst ?? "?");
}

/** Runs every attack of `mode` as one row each (see the module doc). */
export async function claimOrder(s: FaultRun, mode: ClaimMode): Promise<void> {
  const { older, victim, observer, why, victimId } = mode.roles;
  const live = [older, victim, observer];
  const real = await s.leases();
  const victimLease = real.find((l) => l.value.PublicIP === victim.ip)!;
  const mac = victimLease.value.BackendData!.VtepMAC!;
  for (const attack of mode.attacks) {
    const chk = new Checks();
    chk.note(why);
    // While the older node's lease is hostile, every other node refuses
    // it whole; the older node itself still programs its real peers.
    const expected: readonly EtcdLease[] = attack.byOlder
      ? real.filter((l) => l.value.PublicIP !== older.ip)
      : real;
    const offsets = new Map<ClusterNode, number>();
    for (const n of live) offsets.set(n, await s.logSize(n));
    const victimBefore = await refused(s, victim, "duplicate_mac");
    const pings = [
      s.ping(`${observer.name}-pod1`, `${victim.name}-pod1`),
      s.ping(`${victim.name}-pod1`, `${observer.name}-pod1`),
    ];
    let ready: number | undefined;
    try {
      await attack.apply();
      const holder = new RegExp(
        `VtepMAC "${mac}" is (already used by [a-z ]+ "${
          victimId.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
        }"|this node's own)`,
      );
      // The running agents refuse the copy...
      for (const n of [victim, observer]) {
        chk.that(
          (await waitUntil(
            () => warns(s, n, offsets.get(n)!, attack.id, holder),
            10_000,
          )) !== undefined,
          `${n.name} did not warn about "${attack.id}" naming ${victim.name}`,
        );
      }
      // ...and so does the observer restarted with the copy in place: its
      // log from the restart on, not the warning its last run wrote.
      const restartedAt = await s.logSize(observer);
      const t0 = performance.now();
      await mode.restart(observer);
      await s.c.waitReady(observer, 20_000).then(
        () => ready = performance.now() - t0,
        (e) => chk.that(false, String(e.message)),
      );
      chk.that(
        (await waitUntil(
          () => warns(s, observer, restartedAt, attack.id, holder),
          10_000,
        )) !== undefined,
        `restarted ${observer.name} did not refuse "${attack.id}"`,
      );
      // Every agent ends where it was: the victim's route and FDB entry
      // kept, nothing pointing at the copier.
      const nodes = attack.byOlder ? [victim, observer] : live;
      const conv = await s.converged(nodes, 10_000, expected);
      if (!chk.that(conv !== undefined, "an agent moved off the victim")) {
        chk.note((await s.problems(nodes, expected)).join(", "));
      }
      for (const n of [observer, older]) {
        const dsts = await fdbOf(n, mac);
        chk.that(
          dsts.length === 1 && dsts[0] === victim.ip,
          `${n.name}: FDB of ${mac} → ${
            dsts.join(",") || "none"
          }, not ${victim.ip}`,
        );
        chk.that(
          await s.hasRoute(n, victimLease.subnet),
          `${n.name} lost the route to ${victimLease.subnet}`,
        );
      }
      const observed = await refused(s, observer, "duplicate_mac");
      chk.that(
        observed >= 1,
        `restarted ${observer.name}: duplicate_mac refusals ${observed}`,
      );
      const victimAfter = await refused(s, victim, "duplicate_mac");
      chk.that(
        victimAfter > victimBefore,
        `${victim.name}: duplicate_mac refusals ${victimBefore} → ${victimAfter}`,
      );
    } finally {
      await attack.undo();
    }
    const losses = await Promise.all(pings.map((p) => p.stop()));
    for (const l of losses) {
      chk.that(l.lost === 0, `${l.lost} lost (${l.summary})`);
    }
    chk.that(
      (await s.converged(live, 15_000, real)) !== undefined,
      `not back to the real leases after the copy was removed: ${
        (await s.problems(live, real)).join(", ")
      }`,
    );
    s.row({
      section: SECTION,
      fault: attack.fault,
      expected:
        `${victim.name} keeps its MAC and route on every agent, ${observer.name} restarted meanwhile agrees; refusals counted`,
      lost: losses.map(lossText).join(", "),
      recovery: ready === undefined ? "—" : `restart ready ${fmtMs(ready)}`,
      outcome: chk.outcome(),
    });
  }
}

/** The live nodes' etcd keys with their create revisions. */
async function createRevisions(
  s: EtcdRun,
): Promise<Map<string, { rev: number; lease: EtcdLease }>> {
  const r = await s.c.etcdctl("get", "--prefix", DIR, "-w", "json");
  if (r.code !== 0) throw new Error(`etcdctl get: ${r.stderr}`);
  const kvs = (JSON.parse(r.stdout) as {
    kvs?: { key: string; create_revision: number }[];
  }).kvs ?? [];
  const leases = await s.leases();
  const out = new Map<string, { rev: number; lease: EtcdLease }>();
  for (const kv of kvs) {
    const lease = leases.find((l) => l.key === atob(kv.key));
    if (lease) {
      out.set(lease.value.PublicIP, { rev: kv.create_revision, lease });
    }
  }
  return out;
}

/** The claim-order rows of an etcd-mode run whose agents are `live`. */
export async function etcdClaims(
  s: EtcdRun,
  live: readonly ClusterNode[],
): Promise<ClaimMode> {
  const revs = await createRevisions(s);
  const byAge = [...live].sort((a, b) =>
    revs.get(a.ip)!.rev - revs.get(b.ip)!.rev
  );
  const [older, observer, victim] = byAge as [
    ClusterNode,
    ClusterNode,
    ClusterNode,
  ];
  const own = revs.get(older.ip)!.lease;
  const mac = revs.get(victim.ip)!.lease.value.BackendData!.VtepMAC!;
  const rewrite = (value: unknown) =>
    s.etcd("/v3/kv/put", {
      key: b64(own.key),
      value: b64(JSON.stringify(value)),
      lease: own.etcdLease,
    });
  const newerKey = DIR + keyName(`10.244.${await s.freeOctet()}.0/24`);
  const copy = (type: string) => ({
    ...own.value,
    BackendType: type,
    BackendData: { VNI: 1, VtepMAC: mac },
  });
  return {
    roles: {
      older,
      victim,
      victimId: revs.get(victim.ip)!.lease.key,
      observer,
      why: `create revisions ${
        byAge.map((n) => `${n.name} ${revs.get(n.ip)!.rev}`).join(", ")
      }`,
    },
    restart: async (n) => {
      await s.stop(n);
      await s.start(n);
    },
    attacks: [
      {
        fault: `a newer key copies ${victim.name}'s VtepMAC`,
        id: newerKey,
        byOlder: false,
        apply: () =>
          s.put(
            newerKey,
            JSON.stringify({
              PublicIP: "198.18.0.231",
              PublicIPv6: null,
              BackendType: "vxlan",
              BackendData: { VNI: 1, VtepMAC: mac },
            }),
          ),
        undo: () => s.del(newerKey),
      },
      {
        fault:
          `older ${older.name} re-points its own key to ${victim.name}'s VtepMAC`,
        id: own.key,
        byOlder: true,
        apply: () => rewrite(copy("vxlan")),
        undo: () => rewrite(own.value),
      },
      {
        fault:
          `older ${older.name} switches its key to host-gw with ${victim.name}'s VtepMAC`,
        id: own.key,
        byOlder: true,
        apply: () => rewrite(copy("host-gw")),
        undo: () => rewrite(own.value),
      },
    ],
  };
}

/** The claim-order rows of a Kubernetes-mode run whose agents are `live`. */
export async function kubeClaims(
  s: KubeFaults,
  live: readonly ClusterNode[],
): Promise<ClaimMode> {
  const nodes = await s.kube.nodes() as unknown as {
    metadata: {
      name: string;
      creationTimestamp: string;
      annotations: Record<string, string>;
    };
  }[];
  const meta = (n: ClusterNode) =>
    nodes.find((x) => x.metadata.name === n.name)!.metadata;
  // Node age has one-second resolution: equal ages sort by name, as a
  // restarted agent lists them (the old tie-break was list order).
  const byAge = [...live].sort((a, b) =>
    Date.parse(meta(a).creationTimestamp) -
      Date.parse(meta(b).creationTimestamp) ||
    (a.name < b.name ? -1 : 1)
  );
  const [older, observer, victim] = byAge as [
    ClusterNode,
    ClusterNode,
    ClusterNode,
  ];
  const original = meta(older).annotations;
  const mac = JSON.parse(meta(victim).annotations[`${ANN}backend-data`]!)
    .VtepMAC as string;
  const patch = async (annotations: Record<string, string>) => {
    const r = await s.kube.api(
      "PATCH",
      `/api/v1/nodes/${older.name}`,
      { metadata: { annotations } },
      "application/merge-patch+json",
    );
    if (r.status !== 200) throw new Error(`PATCH answered ${r.status}`);
  };
  const restore = () =>
    patch({
      [`${ANN}backend-type`]: original[`${ANN}backend-type`]!,
      [`${ANN}backend-data`]: original[`${ANN}backend-data`]!,
    });
  const copy = (type: string) =>
    patch({
      [`${ANN}backend-type`]: type,
      [`${ANN}backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: mac }),
    });
  const newer = "claims-newer";
  const subnet = `10.244.${200 + live.length}.0/24`;
  // The victim's claim must be at least a second old: the API keeps
  // managedFields times in whole seconds.
  const aged = await waitUntil(async () => {
    const fresh = (await s.kube.nodes() as unknown as {
      metadata: { name: string; managedFields?: { time?: string }[] };
    }[]).find((x) => x.metadata.name === victim.name)!;
    const times = (fresh.metadata.managedFields ?? []).map((f) =>
      Date.parse(f.time ?? "")
    ).filter(Number.isFinite);
    return Date.now() - Math.max(...times) >= 1500;
  }, 5000);
  if (aged === undefined) {
    throw new Error(
      `${victim.name}'s claim is not a second old after 5 s: the claim order rows would be ambiguous`,
    );
  }
  return {
    roles: {
      older,
      victim,
      victimId: victim.name,
      observer,
      why: `created ${
        byAge.map((n) => `${n.name} ${meta(n).creationTimestamp}`).join(", ")
      }`,
    },
    restart: async (n) => {
      await s.stop(n);
      await s.startKube(n);
    },
    attacks: [
      {
        fault: `a newer Node copies ${victim.name}'s VtepMAC`,
        id: newer,
        byOlder: false,
        apply: async () => {
          const r = await s.kube.api("POST", "/api/v1/nodes", {
            apiVersion: "v1",
            kind: "Node",
            metadata: {
              name: newer,
              annotations: {
                [`${ANN}backend-type`]: "vxlan",
                [`${ANN}backend-data`]: JSON.stringify({
                  VNI: 1,
                  VtepMAC: mac,
                }),
                [`${ANN}kube-subnet-manager`]: "true",
                [`${ANN}public-ip`]: "198.18.0.232",
              },
            },
            spec: { podCIDR: subnet, podCIDRs: [subnet] },
          });
          if (r.status !== 201) throw new Error(`POST answered ${r.status}`);
        },
        undo: () => s.kube.deleteNode(newer),
      },
      {
        fault:
          `older ${older.name} re-points its backend-data to ${victim.name}'s VtepMAC`,
        id: older.name,
        byOlder: true,
        apply: () => copy("vxlan"),
        undo: restore,
      },
      {
        fault:
          `older ${older.name} switches to host-gw with ${victim.name}'s VtepMAC`,
        id: older.name,
        byOlder: true,
        apply: () => copy("host-gw"),
        undo: restore,
      },
    ],
  };
}
