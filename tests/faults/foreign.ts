/**
 * Fault rows for kernel state weft does not own (docs/hostile-inputs.md,
 * "Routes weft owns" and "The overlay device"), on the etcd-mode cluster
 * of tests/e2e/faults_test.ts while node1's pod pings node2's:
 *
 * - a route someone else put at a subnet that a lease then claims (another
 *   protocol on eth0; another device), which node1 neither replaces nor
 *   deletes through two full passes while the lease waits (one log line
 *   naming route and lease, `weft_peers_waiting_foreign_route`), and
 *   programs once its owner removes it;
 * - a bridge named flannel.1 on node3, which stops node3's agent with an
 *   error naming it and its kind instead of being deleted.
 *
 * @module
 */
import type { ClusterNode } from "../_cluster.ts";
import type { EtcdRun } from "./etcd.ts";
import { DEVICE, expectedPeers } from "./kernel.ts";
import { fmtMs } from "./report.ts";
import { Checks, lossText, REPAIR_LIMIT_MS, sleep, waitUntil } from "./run.ts";
import { samples } from "../_metrics.ts";

const SECTION = "foreign kernel state";

async function metric(
  s: EtcdRun,
  n: ClusterNode,
  name: string,
): Promise<number> {
  return samples(await s.c.metrics(n), name).get("") ?? NaN;
}

/** A route as `ip -j route show` lists it. */
export interface RouteJson {
  dst: string;
  dev?: string;
  gateway?: string;
  protocol?: string;
}

/** A foreign route at a destination a lease wants, as a row pair. */
export interface HeldRoute {
  /** Who put it there, for the row: "an operator's route (proto static)". */
  readonly what: string;
  /** Its destination. */
  readonly subnet: string;
  /**
   * `ip route` arguments after the destination (`via G dev D proto P`);
   * written with `replace` when weft's route is there already, else `add`.
   */
  readonly args: readonly string[];
  readonly verb: "add" | "replace";
  /** Whether a route `ip -j route show` lists is the foreign one. */
  theirs(r: RouteJson): boolean;
  /** Whether weft's route to the destination is in place. */
  ours(): Promise<boolean>;
  /** Makes a lease claim the destination, after the route is there. */
  claim?(): Promise<void>;
}

/** Every row of this file for the etcd-mode vxlan cluster, in order. */
export async function foreignState(s: EtcdRun): Promise<void> {
  const n1 = s.node(1);
  // An earlier phase ("deleted") leaves node3's agent stopped and its lease
  // gone; the rows below route to node3 and restart it.
  const n3 = s.node(3);
  if (n3.agent === undefined) {
    await s.start(n3);
    await s.c.waitReady(n3, 20_000);
    if ((await s.converged(s.nodes(1, 2, 3), 10_000)) === undefined) {
      throw new Error("node3 started again, but the cluster did not converge");
    }
  }
  // A veth pair stands for "another device" (no dummy module needed).
  await n1.ns.ip("link", "add", "weft-fr", "type", "veth", "peer", "weft-frp");
  await n1.ns.ip("link", "set", "weft-frp", "up");
  await n1.ns.ip("link", "set", "weft-fr", "up");
  const probed = async (
    i: number,
    what: string,
    args: string[],
    theirs: (r: RouteJson) => boolean,
  ) => {
    const subnet = `10.244.${await s.freeOctet()}.0/24`;
    let key = "";
    await heldRoute(s, n1, {
      what,
      subnet,
      args,
      verb: "add",
      theirs,
      ours: () => s.hasRoute(n1, subnet),
      claim: async () => {
        key = (await s.probe(230 + i, subnet)).key;
      },
    });
    await s.del(key);
    await waitUntil(async () => !(await s.hasRoute(n1, subnet)), 5000);
  };
  await probed(
    0,
    "an operator's route (proto static, via 198.18.0.250 on eth0)",
    ["via", "198.18.0.250", "dev", "eth0", "proto", "static"],
    (r) => r.gateway === "198.18.0.250" && r.protocol === "static",
  );
  await probed(
    1,
    "a route on another device (weft-fr, proto boot)",
    ["dev", "weft-fr"],
    (r) => r.dev === "weft-fr",
  );
  // node3's route, so node1's ping to node2 keeps flowing.
  const p3 = expectedPeers(await s.c.leases(), n1.ip).find((p) =>
    p.publicIP === s.node(3).ip
  )!;
  const p2gw =
    expectedPeers(await s.c.leases(), n1.ip).find((p) =>
      p.publicIP === s.node(2).ip
    )!.gw;
  await heldRoute(s, n1, {
    what:
      `node1's route to node3 replaced through node2's VTEP (proto boot, onlink: not flanneld's shape)`,
    subnet: p3.subnet,
    args: ["via", p2gw, "dev", DEVICE, "onlink"],
    verb: "replace",
    theirs: (r) => r.gateway === p2gw && r.protocol !== "87",
    ours: () => s.hasRoute(n1, p3.subnet),
  });
  await n1.ns.ip("link", "del", "weft-fr");
  await notVxlan(s, s.node(3));
}

/**
 * Two rows: `k`'s route is put in place (then, with `claim`, a lease
 * claims its destination) and must stay through two full passes on `n1`
 * while the lease waits, named once in the log and counted; then its
 * owner removes it and weft's route must follow within the repair limit.
 * node1's pod pings node2's throughout, without loss.
 */
export async function heldRoute(
  s: EtcdRun,
  n1: ClusterNode,
  k: HeldRoute,
): Promise<void> {
  const ping = s.ping();
  const chk = new Checks();
  const { subnet } = k;
  const offset = (await Deno.stat(`${n1.dir}/weft.log`)).size;
  const routes = () =>
    n1.ns.json<RouteJson[]>("route", "show", "proto", "all", subnet);
  const holds = async () => {
    const r = await routes();
    return r.length === 1 && k.theirs(r[0]!);
  };
  const waits = async () =>
    (await s.logSince(n1, offset)).split("\n").filter((l) =>
      l.includes(`waits: route "${subnet} `)
    );
  await n1.ns.ip("route", k.verb, subnet, ...k.args);
  await k.claim?.();
  const logged = await waitUntil(
    async () => (await waits()).length > 0,
    10_000,
  );
  chk.that(logged !== undefined, "no log line names the route and the lease");
  // A second full pass: any route deletion wakes one (see agent.ts).
  const passes = await metric(s, n1, "weft_reconcile_passes_total");
  await n1.ns.ip("route", "add", "192.0.2.0/24", "dev", "eth0");
  await n1.ns.ip("route", "del", "192.0.2.0/24", "dev", "eth0");
  const again = await waitUntil(
    async () => (await metric(s, n1, "weft_reconcile_passes_total")) > passes,
    10_000,
  );
  chk.that(again !== undefined, "no full pass after the first one");
  chk.that(
    await holds(),
    `${subnet} is not (only) theirs any more: ${
      JSON.stringify(await routes())
    }`,
  );
  const lines = await waits();
  chk.that(lines.length === 1, `${lines.length} log lines, want 1`);
  const waiting = await metric(s, n1, "weft_peers_waiting_foreign_route");
  chk.that(waiting === 1, `weft_peers_waiting_foreign_route ${waiting}`);
  const said = lines[0]?.match(/Lease ".*?" waits: route ".*?"/)?.[0];
  if (said) chk.note(said);
  s.row({
    section: SECTION,
    fault: `${k.what} at ${subnet}${
      k.claim ? `, then a lease claims ${subnet}` : ""
    }`,
    expected:
      "node1 neither replaces nor deletes it through 2 full passes; the lease waits: 1 log line naming route and lease, weft_peers_waiting_foreign_route 1",
    lost: "—",
    recovery: "—",
    outcome: chk.outcome(),
  });

  const gone = new Checks();
  const t0 = performance.now();
  await n1.ns.ip("route", "del", subnet, ...k.args);
  const ms = await waitUntil(k.ours, 5000);
  const repair = ms === undefined ? undefined : performance.now() - t0;
  if (gone.that(repair !== undefined, "not programmed within 5 s")) {
    gone.that(
      repair! <= REPAIR_LIMIT_MS,
      `programmed in ${fmtMs(repair)} > ${REPAIR_LIMIT_MS} ms`,
    );
  }
  const after = await metric(s, n1, "weft_peers_waiting_foreign_route");
  gone.that(after === 0, `weft_peers_waiting_foreign_route ${after}`);
  gone.that(
    (await s.logSince(n1, offset)).includes("no longer waits"),
    "no log line says the lease no longer waits",
  );
  await sleep(300);
  const loss = await ping.stop();
  gone.that(
    loss.lost === 0,
    `node1→node2: ${loss.lost} lost (${loss.summary})`,
  );
  s.row({
    section: SECTION,
    fault: `its owner removes it`,
    expected:
      `weft's route to ${subnet} is in place within ${REPAIR_LIMIT_MS} ms (the deletion wakes a pass); node1→node2 loses nothing throughout`,
    lost: lossText(loss),
    recovery: fmtMs(repair),
    outcome: gone.outcome(),
  });
}

async function notVxlan(s: EtcdRun, n3: ClusterNode): Promise<void> {
  const ping = s.ping();
  const chk = new Checks();
  await s.stop(n3);
  await n3.ns.ip("link", "del", DEVICE);
  await n3.ns.ip("link", "add", DEVICE, "type", "bridge");
  const offset = (await Deno.stat(`${n3.dir}/weft.log`)).size;
  const agent = await s.start(n3);
  const st = await Promise.race([
    agent.child.status,
    sleep(20_000).then(() => undefined),
  ]);
  if (chk.that(st !== undefined, "the agent still runs 20 s later")) {
    chk.that(st!.code !== 0, "the agent exited 0");
  } else await s.stop(n3, "SIGKILL");
  const log = await s.logSince(n3, offset);
  chk.that(
    log.includes(
      `Link "${DEVICE}" exists and is not a VXLAN device (kind "bridge")`,
    ),
    `no error naming ${DEVICE} and its kind: ${log.trim().split("\n").at(-1)}`,
  );
  const [link] = await n3.ns.json<{ linkinfo?: { info_kind?: string } }[]>(
    "-d",
    "link",
    "show",
    DEVICE,
  );
  chk.that(link?.linkinfo?.info_kind === "bridge", `${DEVICE} was not kept`);
  await n3.ns.ip("link", "del", DEVICE);
  await s.start(n3);
  const ready = await s.c.waitReady(n3, 20_000).catch((e) => {
    chk.that(false, String(e.message));
    return undefined;
  });
  chk.that(
    (await s.converged(s.nodes(1, 2, 3), 10_000)) !== undefined,
    "cluster did not converge once the bridge was removed",
  );
  const loss = await ping.stop();
  chk.that(loss.lost === 0, `node1→node2: ${loss.lost} lost (${loss.summary})`);
  s.row({
    section: SECTION,
    fault: `node3 restarted with a bridge named ${DEVICE}`,
    expected:
      `the agent exits non-zero naming ${DEVICE} and kind "bridge", which stays; once removed, the agent starts and the cluster converges; node1→node2 loses nothing`,
    lost: lossText(loss),
    recovery: `ready ${fmtMs(ready)}`,
    outcome: chk.outcome(),
  });
}
