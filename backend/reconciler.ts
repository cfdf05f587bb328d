/**
 * The reconciler keeps the kernel equal to the desired state derived from
 * the peer leases, per address family.
 *
 * Two paths share one `diff`:
 * - events: a lease added, changed or removed is applied at once by diffing
 *   the peer's new entries against what was programmed for it, with no
 *   kernel dump, so convergence costs a few netlink calls;
 * - passes: when rtnetlink reports a change to our objects, after any
 *   failure, and on a timer, the device is re-ensured and the kernel state
 *   of our device and of the cluster routes is read back and diffed
 *   against the whole desired state, repairing drift and removing stale
 *   entries (peers deleted while weft was down). The timer runs no pass
 *   while the change source is quiet: nothing about our objects was
 *   reported, nothing was lost, so there is nothing new to compare (see
 *   {@linkcode Reconciler.run}).
 *
 * No pass prunes before the subnet manager has delivered its first full
 * listing: a restart must never withdraw routes it has not yet heard of.
 * Peers of that listing handed over while it is still arriving are
 * programmed at once, the way events are, so a large cluster's kernel
 * fills while its LIST is on the wire; but only where that adds an entry
 * or leaves one as it is. A peer that would change an entry already in
 * the kernel (re-point a VTEP MAC's FDB entry, a neighbour or a route) waits
 * for the full pass after the listing: the kernel holds what the last run
 * decided with every lease in view, while the listing so far may lack the
 * earlier claim (a hostile node whose name sorts before its victim's, with
 * the victim's MAC, would otherwise redirect the victim's traffic until
 * the listing completes).
 * A failing peer is counted, logged and retried on the next pass; it never
 * blocks the others.
 *
 * A backend may also keep per-peer objects that are none of these (WireGuard
 * peers, see peer_objects.ts): they follow the same two paths, diffed by
 * their identity. rtnetlink reports no change to them, so while a family has
 * such objects every period runs a pass, quiet change source or not: an
 * object removed by hand is back within one period (`periodMs`, default
 * 10 s). Without such objects, drift is repaired by the pass the kernel's
 * notification of it wakes, not by the timer.
 *
 * @module
 */
import {
  type ChangeCounts,
  type FdbInfo,
  KernelError,
  type NeighInfo,
  type Netlink,
  type RouteInfo,
  RT_TABLE_MAIN,
  RTPROT_WEFT,
} from "../ffi/types.ts";
import { describeRoute } from "../ffi/validate.ts";
import { noChanges } from "../ffi/nlmsg.ts";
import type { Lease, LeaseEvent } from "../subnet/lease.ts";
import {
  asState,
  describeOp,
  diff,
  type FamilyPlan,
  type Op,
  ownedState,
  type PeerEntries,
  type PeerMode,
} from "./plan.ts";
import {
  diffObjects,
  type ObjectOp,
  type PeerObject,
  type PeerObjects,
} from "./peer_objects.ts";
import { logger, quote } from "../lib/log.ts";
import { metrics } from "../lib/metrics.ts";
import { sleep } from "../lib/retry.ts";

const log = logger("reconcile");

/** One address family of a backend network, as the reconciler drives it. */
export interface FamilyNetwork {
  readonly family: 4 | 6;
  /** For logs: the device name, or `host-gw`. */
  readonly label: string;
  /** Ensures the device and its address; returns the plan. May throw. */
  ensure(): FamilyPlan;
  /** Kernel entries for one peer, or undefined if it has none here. */
  entries(
    plan: FamilyPlan,
    lease: Lease,
    modes: Map<string, PeerMode>,
  ): PeerEntries | undefined;
  /** Per-peer objects besides kernel entries (WireGuard peers), if any. */
  readonly objects?: PeerObjects;
}

/** Something that resolves when the kernel reports a change. */
export interface ChangeSource {
  next(): Promise<unknown>;
  close(): void;
  /**
   * Whether the kernel has reported nothing about our objects since the
   * last call, echoes of our own writes included, and the source still
   * hears every notification (no overrun, not stopped). Each call starts
   * a new interval. Without it, every period runs a pass.
   */
  quiet?(): boolean;
}

/**
 * Quiet periods in a row whose pass is skipped: with the default period a
 * full pass at least every ten minutes, a few milliseconds per ten minutes
 * even at thousands of peers. It bounds the one drift the kernel reports
 * in a form the change source does not hear: a route at a peer's
 * destination replaced onto a device weft does not watch (only an
 * "added" notification naming that device, no deletion).
 */
export const MAX_QUIET_SKIPS = 59;

/** Options of {@linkcode Reconciler}. */
export interface ReconcilerOptions {
  /** Our lease key; its events are ignored. */
  readonly ownKey: string;
  /** Backend type whose leases are peers (`vxlan`, `host-gw`). */
  readonly backendType: string;
  /**
   * Time between full passes, milliseconds. Default 10 000. A period
   * runs no pass while the change source is quiet (the kernel reported
   * no change to compare, and lost no notification) and nothing else
   * asks for one, up to {@linkcode MAX_QUIET_SKIPS} periods in a row: see
   * {@linkcode Reconciler.run}.
   */
  readonly periodMs?: number;
  /** Debounce after a kernel notification, milliseconds. Default 100. */
  readonly debounceMs?: number;
  /**
   * Called after each full pass {@linkcode Reconciler.run} makes; the agent
   * collects garbage there. A pass allocates some 10 KB per peer (kernel
   * dumps, desired state) that lives as long as the pass, long enough for
   * V8 to move it to the old generation, where it piles up until the heap
   * limit: at 5000 peers that held the process 25-55 MiB above what a
   * collection after each pass leaves (bench/results/footprint.md).
   * Default: nothing.
   */
  readonly afterPass?: () => void;
}

interface FamilyState {
  readonly net: FamilyNetwork;
  plan: FamilyPlan | undefined;
  /** What we believe the kernel holds, by lease key. */
  programmed: Map<string, PeerEntries>;
  /** The per-peer objects we believe the kernel holds, by lease key. */
  objects: Map<string, PeerObject>;
  /** Peers whose last operation failed. */
  failed: Set<string>;
  /** The last error of each failing peer, for `/readyz?verbose`. */
  errors: Map<string, string>;
  /**
   * Peers whose route waits for a route that is not weft's at its
   * destination, with that route in words (logged once per change).
   */
  waiting: Map<string, string>;
  /**
   * While the first listing arrives: the kernel's entries, read once when
   * its first peers came in and kept up to date with what this run
   * programs since, so no batch dumps the kernel again.
   */
  early?: KernelIndex;
}

/** Our device's neighbours and FDB entries and the routes, by their keys. */
class KernelIndex {
  /** VTEP MAC → remote addresses. */
  readonly #fdbs = new Map<string, Set<string | undefined>>();
  /** Neighbour address → MAC. */
  readonly #neighs = new Map<string, string | undefined>();
  /** Table and destination → next hop and protocol. */
  readonly #routes = new Map<
    string,
    { gw?: string; index?: number; protocol?: number }
  >();

  constructor(kernel: {
    neighs: NeighInfo[];
    fdbs: FdbInfo[];
    routes: RouteInfo[];
  }) {
    for (const f of kernel.fdbs) this.applied({ kind: "fdbSet", fdb: f });
    for (const n of kernel.neighs) this.#neighs.set(n.dst, n.lladdr);
    for (const r of kernel.routes) this.#routes.set(routeKey(r), r);
  }

  /** Whether `op` would change an entry this index holds. */
  changes(op: Op): boolean {
    switch (op.kind) {
      case "fdbSet": {
        const dsts = this.#fdbs.get(op.fdb.lladdr);
        return dsts !== undefined && dsts.size > 0 && !dsts.has(op.fdb.dst);
      }
      case "neighSet": {
        const lladdr = this.#neighs.get(op.neigh.dst);
        return lladdr !== undefined && lladdr !== op.neigh.lladdr;
      }
      case "routeAdd":
      case "routeReplace": {
        const r = this.#routes.get(routeKey(op.route));
        return r !== undefined && !this.holds(op);
      }
      default:
        return false;
    }
  }

  /** Whether the kernel has exactly the route `op` writes, our mark too. */
  holds(op: Op): boolean {
    if (op.kind !== "routeAdd" && op.kind !== "routeReplace") return false;
    const r = this.#routes.get(routeKey(op.route));
    return r !== undefined && r.gw === op.route.gw &&
      r.index === op.route.index && r.protocol === op.route.protocol;
  }

  /** Records an operation the kernel took. */
  applied(op: Op): void {
    switch (op.kind) {
      case "fdbSet": {
        const dsts = this.#fdbs.get(op.fdb.lladdr) ?? new Set();
        this.#fdbs.set(op.fdb.lladdr, dsts.add(op.fdb.dst));
        return;
      }
      case "fdbDel":
        this.#fdbs.get(op.fdb.lladdr)?.delete(op.fdb.dst);
        return;
      case "neighSet":
        this.#neighs.set(op.neigh.dst, op.neigh.lladdr);
        return;
      case "neighDel":
        this.#neighs.delete(op.neigh.dst);
        return;
      case "routeAdd":
      case "routeReplace":
        this.#routes.set(routeKey(op.route), op.route);
        return;
      case "routeDel":
        this.#routes.delete(routeKey(op.route));
    }
  }
}

function routeKey(r: RouteInfo): string {
  return `${r.table ?? RT_TABLE_MAIN} ${r.dst}`;
}

/**
 * A foreign route the kernel reported (a route add failing with "exists")
 * but no pass has read yet: the pass it wakes names it in the log.
 */
const NOT_YET_READ = "";

/**
 * The notifications each kernel write causes: one each, but a neighbour
 * deleted is first reported as changed (RTM_NEWNEIGH, its state failed),
 * then deleted.
 */
const ECHOES_OF: Record<
  Exclude<Op["kind"], "routeHeld">,
  readonly (keyof ChangeCounts)[]
> = {
  routeAdd: ["newRoute"],
  routeReplace: ["newRoute"],
  routeDel: ["delRoute"],
  neighSet: ["newNeigh"],
  neighDel: ["newNeigh", "delNeigh"],
  fdbSet: ["newFdb"],
  fdbDel: ["delFdb"],
};

/** Outcome of one pass, for logs, tests and benchmarks. */
export interface PassResult {
  readonly ops: number;
  readonly errors: number;
}

/** Keeps the kernel equal to what the leases ask for. */
export class Reconciler {
  readonly #nl: Netlink;
  readonly #opts: Required<ReconcilerOptions>;
  readonly #families: FamilyState[];
  readonly #leases = new Map<string, Lease>();
  /** Receive time of the oldest unprogrammed event per key. */
  readonly #pendingSince = new Map<string, number>();
  #lastWrite = { any: -Infinity, del: -Infinity };
  /** Kernel writes that succeeded, by the notification each causes. */
  readonly #writes = noChanges();
  /** Backend type last warned about, by key of an ignored lease. */
  readonly #ignored = new Map<string, string>();
  #synced = false;
  #passes = 0;
  #dirty = true;
  /** A pass was asked for ({@linkcode #trigger}) since the loop last looked. */
  #wanted = false;
  #wake: (() => void) | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(nl: Netlink, families: FamilyNetwork[], opts: ReconcilerOptions) {
    this.#nl = nl;
    this.#opts = {
      periodMs: 10_000,
      debounceMs: 100,
      afterPass: () => {},
      ...opts,
    };
    this.#families = families.map((net) => ({
      net,
      plan: undefined,
      programmed: new Map(),
      objects: new Map(),
      failed: new Set(),
      errors: new Map(),
      waiting: new Map(),
    }));
  }

  /** Peers (of our backend type) currently known. */
  get peerCount(): number {
    return this.#leases.size;
  }

  /** Whether the first listing arrived and a full pass left no failure. */
  get ready(): boolean {
    return this.#synced && this.#passes > 0 && !this.#dirty &&
      this.#families.every((f) => f.plan !== undefined && f.failed.size === 0);
  }

  /**
   * Whether the first listing arrived and a full pass has run since,
   * whatever its outcome: this node has taken in the cluster's state.
   * Readiness uses this, not {@linkcode ready}: one peer the kernel
   * refuses must not make every node unready.
   */
  get synced(): boolean {
    return this.#synced && this.#passes > 0;
  }

  /** Known peers whose entries failed in some family, with the error. */
  failing(): { key: string; family: 4 | 6; error: string }[] {
    const out: { key: string; family: 4 | 6; error: string }[] = [];
    for (const f of this.#families) {
      for (const key of f.failed) {
        if (!this.#leases.has(key)) continue;
        out.push({
          key,
          family: f.net.family,
          error: f.errors.get(key) ?? "failed",
        });
      }
    }
    return out;
  }

  /** Number of full passes run. */
  get passes(): number {
    return this.#passes;
  }

  /**
   * When this reconciler last changed the kernel (`performance.now()`):
   * any change, and deletions. Kernel notifications that follow our own
   * writes are echoes, not drift (see agent.ts).
   */
  get lastWrite(): { readonly any: number; readonly del: number } {
    return this.#lastWrite;
  }

  /**
   * The notifications this reconciler's kernel writes cause, counted by
   * kind (a route added or replaced is a new route; a neighbour deleted
   * is a new one, then a deleted one): an echo of our own writes can be
   * told from someone else's change by its count (see agent.ts).
   */
  get writes(): ChangeCounts {
    return { ...this.#writes };
  }

  /** The current plan of a family (after a pass), for callers and tests. */
  plan(family: 4 | 6): FamilyPlan | undefined {
    return this.#families.find((f) => f.net.family === family)?.plan;
  }

  /**
   * Takes a batch of lease events. The first call without `partial` marks
   * the initial listing complete (it may be empty) and runs a full pass;
   * `partial` batches before it are programmed at once but prune nothing;
   * later calls are applied at once.
   */
  handle(events: LeaseEvent[], partial = false): void {
    const touched = new Set<string>();
    for (const ev of events) {
      const { lease } = ev;
      if (lease.key === this.#opts.ownKey) continue;
      if (ev.type === "removed") {
        this.#ignored.delete(lease.key);
        if (this.#leases.delete(lease.key)) touched.add(lease.key);
      } else if (lease.attrs.backendType !== this.#opts.backendType) {
        // flanneld warns about these too; once per node and type is enough.
        const type = lease.attrs.backendType;
        if (this.#ignored.get(lease.key) !== type) {
          this.#ignored.set(lease.key, type);
          metrics.peersInvalid.inc();
          log.warn(
            `Ignoring lease ${quote(lease.key)}: backend type ${
              quote(type)
            }, this node runs "${this.#opts.backendType}"`,
          );
        }
        if (this.#leases.delete(lease.key)) touched.add(lease.key);
        continue;
      } else {
        this.#leases.set(lease.key, lease);
        touched.add(lease.key);
      }
      if (!this.#pendingSince.has(lease.key)) {
        this.#pendingSince.set(lease.key, ev.receivedAt);
      }
    }
    if (!this.#synced) {
      if (partial) {
        if (touched.size > 0) this.#applyEarly(touched);
        return;
      }
      this.#synced = true;
      for (const f of this.#families) delete f.early;
      this.#trigger();
      return;
    }
    if (touched.size > 0) this.#applyKeys(touched);
  }

  /** Applies the changes for some peers without reading the kernel. */
  #applyKeys(keys: Set<string>): void {
    if (this.#dirty || this.#families.some((f) => f.plan === undefined)) {
      this.#trigger();
      return;
    }
    this.#program(keys, this.#families);
  }

  /**
   * Programs peers of a listing still arriving: sets up the devices once,
   * then the peers' entries, deleting nothing but what this run itself
   * programmed. The full pass after the listing repairs whatever fails.
   */
  #applyEarly(keys: Set<string>): void {
    const ready: FamilyState[] = [];
    for (const f of this.#families) {
      try {
        f.plan ??= f.net.ensure();
        ready.push(f);
      } catch {
        // The first full pass sets the device up and reports why.
      }
    }
    this.#program(keys, ready, true);
  }

  /**
   * `ops` less those of peers that would change an entry the kernel
   * already has (see the module doc); all of them when the kernel cannot
   * be read. The peers held back, for the caller.
   */
  #withoutChanges(
    f: FamilyState,
    ops: Op[],
  ): { ops: Op[]; held: Set<string> } {
    if (!f.early) {
      const kernel = this.#readKernel(f.plan!);
      if (kernel) f.early = new KernelIndex(kernel);
    }
    const held = new Set<string>();
    for (const op of ops) {
      if (op.peer === undefined) continue;
      if (!f.early || f.early.changes(op)) held.add(op.peer);
    }
    for (const key of held) {
      log.v(
        1,
        `Peer ${
          quote(key)
        } would change existing kernel entries: waiting for the complete listing`,
      );
    }
    return {
      ops: ops.filter((op) =>
        op.peer === undefined ||
        !held.has(op.peer) && !f.early?.holds(op)
      ),
      held,
    };
  }

  /**
   * `ops` less the route writes of peers waiting for a foreign route: the
   * event path has not read the kernel, the full pass it wakes does. The
   * peers held back, for the caller.
   */
  #withoutWaiting(
    f: FamilyState,
    ops: Op[],
  ): { ops: Op[]; held: Set<string> } {
    const held = new Set<string>();
    const out = ops.filter((op) => {
      const wait = op.peer !== undefined && f.waiting.has(op.peer) &&
        op.kind.startsWith("route");
      if (wait) held.add(op.peer!);
      return !wait;
    });
    return { ops: out, held };
  }

  /**
   * Logs each peer that starts waiting for a foreign route, or waits for
   * another one, and each that no longer waits; keeps `waiting`.
   */
  #setWaiting(f: FamilyState, waiting: Map<string, string>): void {
    for (const [key, route] of waiting) {
      if (route === NOT_YET_READ || f.waiting.get(key) === route) continue;
      log.warn(
        `Lease "${key}" waits: route "${route}" at its destination is not weft's; weft neither replaces nor deletes it`,
      );
    }
    for (const key of f.waiting.keys()) {
      if (waiting.has(key) || !this.#leases.has(key)) continue;
      log.info(
        `Lease "${key}" no longer waits for a foreign route: its route is programmed`,
      );
    }
    f.waiting = waiting;
  }

  /**
   * Diffs `keys` against what was programmed for them, and applies; with
   * `early` (a listing still arriving), only additions (see the module
   * doc).
   */
  #program(keys: Set<string>, families: FamilyState[], early = false): void {
    for (const f of families) {
      const plan = f.plan!;
      const modes = new Map<string, PeerMode>();
      const before: PeerEntries[] = [];
      const after: PeerEntries[] = [];
      for (const key of keys) {
        const old = f.programmed.get(key);
        if (old) before.push(old);
        const lease = this.#leases.get(key);
        const now = lease ? f.net.entries(plan, lease, modes) : undefined;
        if (now) after.push(now);
      }
      const wasWaiting = [...keys].some((key) => f.waiting.has(key));
      const all = diff(after, asState(before));
      const { ops, held } = early
        ? this.#withoutChanges(f, all)
        : this.#withoutWaiting(f, all);
      const { failed, waits } = this.#apply(f, ops);
      if (f.net.objects) this.#programObjects(f, f.net.objects, keys, failed);
      if (early) {
        for (const op of ops) {
          if (op.peer === undefined || !failed.has(op.peer)) {
            f.early?.applied(op);
          }
        }
      }
      for (const key of keys) {
        f.programmed.delete(key);
        if (failed.has(key)) f.failed.add(key);
        else {
          f.failed.delete(key);
          f.errors.delete(key);
        }
      }
      for (const e of after) {
        if (!failed.has(e.key) && !held.has(e.key) && !waits.has(e.key)) {
          f.programmed.set(e.key, e);
        }
      }
      const waiting = new Map(f.waiting);
      for (const key of keys) if (!held.has(key)) waiting.delete(key);
      for (const [key, route] of waits) waiting.set(key, route);
      this.#setWaiting(f, waiting);
      if (failed.size > 0) this.#dirty = true;
      if (failed.size > 0 || waits.size > 0 || wasWaiting) {
        this.#trigger();
      }
    }
    this.#observeLatency(keys);
    this.#updateGauge();
  }

  /**
   * One full pass: ensure devices, read the kernel, diff against the
   * whole desired state, apply. Does nothing before the initial listing.
   */
  pass(): PassResult {
    if (!this.#synced) return { ops: 0, errors: 0 };
    const started = performance.now();
    let ops = 0, errors = 0;
    let dirty = false;
    for (const f of this.#families) {
      try {
        f.plan = f.net.ensure();
      } catch (e) {
        errors++;
        dirty = true;
        metrics.kernelErrors.inc({ op: "device" });
        log.error(`Cannot set up ${f.net.label}: ${(e as Error).message}`);
        continue;
      }
      const plan = f.plan;
      const kernel = this.#readKernel(plan);
      if (!kernel) {
        errors++;
        dirty = true;
        continue;
      }
      const modes = new Map<string, PeerMode>();
      const desired = new Map<string, PeerEntries>();
      for (const lease of this.#leases.values()) {
        const e = f.net.entries(plan, lease, modes);
        if (e) desired.set(e.key, e);
      }
      const todo = diff(desired.values(), ownedState(plan, kernel));
      const writes = todo.filter((op) => op.kind !== "routeHeld");
      if (writes.length > 0) {
        log.info(
          `${f.net.label}: ${writes.length} kernel change(s) to reach the desired state of ${desired.size} peer(s)`,
        );
      }
      const { failed, waits } = this.#apply(f, todo);
      if (f.net.objects) {
        const n = this.#syncObjects(f, f.net.objects, failed);
        if (n === undefined) {
          errors++;
          dirty = true;
        } else ops += n;
      }
      ops += writes.length;
      errors += failed.size;
      if (failed.size > 0) dirty = true;
      f.failed = failed;
      for (const key of [...f.errors.keys()]) {
        if (!failed.has(key)) f.errors.delete(key);
      }
      f.programmed = new Map(
        [...desired].filter(([key]) => !failed.has(key) && !waits.has(key)),
      );
      this.#setWaiting(f, waits);
      for (const op of writes) {
        metrics.reconcileRepairs.inc({ kind: op.kind });
      }
    }
    this.#dirty = dirty;
    this.#passes++;
    metrics.reconcilePasses.inc();
    metrics.reconcileDuration.observe((performance.now() - started) / 1000);
    // Everything pending is settled by a full pass, removals included.
    this.#observeLatency(this.#pendingSince.keys());
    this.#updateGauge();
    return { ops, errors };
  }

  /**
   * Event path for per-peer objects: diffs `keys`' objects against what
   * was set for them, applies, records; failing keys go into `failed`.
   */
  #programObjects(
    f: FamilyState,
    objects: PeerObjects,
    keys: Set<string>,
    failed: Set<string>,
  ): void {
    const plan = f.plan!;
    const before: PeerObject[] = [];
    const after = new Map<string, PeerObject>();
    for (const key of keys) {
      const old = f.objects.get(key);
      if (old) before.push(old);
      const lease = this.#leases.get(key);
      const now = lease ? objects.desired(plan, lease) : undefined;
      if (now) after.set(key, now);
    }
    this.#applyObjects(f, objects, diffObjects(objects, after, before), failed);
    for (const key of keys) f.objects.delete(key);
    for (const [key, obj] of after) {
      if (!failed.has(key)) f.objects.set(key, obj);
    }
  }

  /**
   * Pass path for per-peer objects: reads them back, diffs against every
   * lease's, applies. Returns the number of changes, or undefined when
   * the read-back failed.
   */
  #syncObjects(
    f: FamilyState,
    objects: PeerObjects,
    failed: Set<string>,
  ): number | undefined {
    const plan = f.plan!;
    let actual: PeerObject[];
    try {
      actual = objects.list(plan);
    } catch (e) {
      metrics.kernelErrors.inc({ op: "dump" });
      log.error(`Cannot read ${f.net.label} peers: ${(e as Error).message}`);
      return undefined;
    }
    const desired = new Map<string, PeerObject>();
    for (const lease of this.#leases.values()) {
      const o = objects.desired(plan, lease);
      if (o) desired.set(lease.key, o);
    }
    const ops = diffObjects(objects, desired, actual);
    if (ops.length > 0) {
      log.info(
        `${f.net.label}: ${ops.length} peer change(s) to reach the desired state of ${desired.size} peer(s)`,
      );
    }
    this.#applyObjects(f, objects, ops, failed);
    f.objects = new Map([...desired].filter(([key]) => !failed.has(key)));
    for (const op of ops) {
      metrics.reconcileRepairs.inc({ kind: `peer_${op.kind}` });
    }
    return ops.length;
  }

  /** Applies object changes in order; failing peers go into `failed`. */
  #applyObjects(
    f: FamilyState,
    objects: PeerObjects,
    ops: ObjectOp[],
    failed: Set<string>,
  ): void {
    for (const op of ops) {
      if (op.peer !== undefined && failed.has(op.peer)) continue;
      const what = objects.describe(op.kind, op.obj);
      log.v(2, what);
      try {
        if (op.kind === "set") objects.set(f.plan!, op.obj);
        else objects.del(f.plan!, op.obj);
      } catch (e) {
        this.#recordFailure(f, failed, `peer_${op.kind}`, op.peer, what, e);
      }
    }
  }

  #readKernel(plan: FamilyPlan) {
    try {
      const dev = plan.deviceIndex;
      return {
        neighs: dev === undefined ? [] : this.#nl.neighList(dev, plan.family),
        fdbs: dev === undefined ? [] : this.#nl.fdbList(dev),
        // Blackholes too: one a moved own subnet left is replaced when a
        // peer claims that subnet (plan.ts).
        routes: this.#nl.routeList({ family: plan.family, blackholes: true }),
      };
    } catch (e) {
      metrics.kernelErrors.inc({ op: "dump" });
      log.error(`Cannot read kernel state: ${(e as Error).message}`);
      return undefined;
    }
  }

  /**
   * Applies ops in order; returns the peers that failed, and those whose
   * route waits for a foreign one (with that route in words).
   */
  #apply(
    f: FamilyState,
    ops: Op[],
  ): { failed: Set<string>; waits: Map<string, string> } {
    const failed = new Set<string>();
    const waits = new Map<string, string>();
    const name = (index?: number) =>
      index === f.plan?.deviceIndex ? f.net.label : `if${index}`;
    for (const op of ops) {
      if (op.peer !== undefined && failed.has(op.peer)) continue;
      if (op.kind === "routeHeld") {
        // For the log: the foreign route's device by name (rare, so the
        // lookup costs nothing that matters).
        const dev = (index?: number) =>
          index === undefined
            ? name(index)
            : this.#nl.linkByIndex(index)?.name ?? name(index);
        waits.set(op.peer, describeRoute(op.route, dev, RTPROT_WEFT));
        continue;
      }
      const level = op.kind.startsWith("route") ? 2 : 4;
      if (log.enabled(level)) log.v(level, describeOp(op, name));
      try {
        this.#run(op);
        for (const k of ECHOES_OF[op.kind]) this.#writes[k]++;
        const now = performance.now();
        this.#lastWrite = {
          any: now,
          del: op.kind.endsWith("Del") ? now : this.#lastWrite.del,
        };
      } catch (e) {
        const missing = e instanceof KernelError && e.notFound;
        if (missing && op.kind.endsWith("Del")) continue;
        if (
          op.kind === "routeAdd" && op.peer !== undefined &&
          e instanceof KernelError && e.exists
        ) {
          // Someone's route arrived since the kernel was read (or the
          // event path never read it): the pass this wakes names it.
          waits.set(op.peer, NOT_YET_READ);
          continue;
        }
        this.#recordFailure(
          f,
          failed,
          op.kind,
          op.peer,
          describeOp(op, name),
          e,
        );
      }
    }
    return { failed, waits };
  }

  /**
   * Records one failed write: counted by `op`, logged, and kept against
   * its peer for `/readyz?verbose` (a write of no peer marks the pass).
   */
  #recordFailure(
    f: FamilyState,
    failed: Set<string>,
    op: string,
    peer: string | undefined,
    what: string,
    e: unknown,
  ): void {
    metrics.kernelErrors.inc({ op });
    const msg = `${what}: ${(e as Error).message}`;
    log.error(`Failed: ${msg}${peer ? ` (peer ${quote(peer)})` : ""}`);
    if (peer !== undefined) {
      failed.add(peer);
      f.errors.set(peer, msg);
    } else failed.add(`stale:${op}`);
  }

  #run(op: Op): void {
    const nl = this.#nl;
    switch (op.kind) {
      case "neighSet":
        return nl.neighSet(op.neigh);
      case "neighDel":
        return nl.neighDel(op.neigh);
      case "fdbSet":
        return nl.fdbSet(op.fdb);
      case "fdbDel":
        return nl.fdbDel(op.fdb);
      case "routeAdd":
        return nl.routeAdd(op.route);
      case "routeReplace":
        return nl.routeReplace(op.route);
      case "routeDel":
        return nl.routeDel(op.route);
      case "routeHeld":
        return;
    }
  }

  /** Records event-to-kernel latency for `keys` now programmed. */
  #observeLatency(keys: Iterable<string>): void {
    const now = performance.now();
    for (const key of [...keys]) {
      const since = this.#pendingSince.get(key);
      if (since === undefined || this.#failed(key)) continue;
      this.#pendingSince.delete(key);
      metrics.eventToKernel.observe((now - since) / 1000);
    }
  }

  #failed(key: string): boolean {
    return this.#families.some((f) => f.failed.has(key));
  }

  /** Peers programmed = known peers minus those failing in any family. */
  #updateGauge(): void {
    const failing = new Set<string>();
    for (const f of this.#families) {
      for (const key of f.failed) if (this.#leases.has(key)) failing.add(key);
    }
    metrics.peersProgrammed.set(this.#leases.size - failing.size);
    metrics.peersFailing.set(failing.size);
    const waiting = new Set<string>();
    for (const f of this.#families) {
      for (const key of f.waiting.keys()) {
        if (this.#leases.has(key)) waiting.add(key);
      }
    }
    metrics.peersWaitingForeignRoute.set(waiting.size);
  }

  /**
   * Asks the run loop for a pass soon. Remembered until the loop looks,
   * so an ask that comes as the period ends is not taken for a quiet
   * period.
   */
  #trigger(): void {
    this.#wanted = true;
    this.#wake?.();
  }

  /**
   * Runs passes until `signal` aborts: soon after a kernel change reported
   * by `changes`, when an event asks for one, with backoff after a
   * failure, and on the period. A period runs no pass (up to
   * {@linkcode MAX_QUIET_SKIPS} in a row) while `changes` is quiet (see {@linkcode ChangeSource.quiet}: an
   * overrun or a stopped monitor is never quiet), the last pass left
   * nothing failed or dirty, no peer waits for a foreign route, and every
   * family's objects are ones rtnetlink reports; each such period counts
   * in `weft_reconcile_quiet_skips_total`. Without `changes`, or without
   * its `quiet()`, every period runs a pass.
   *
   * A peer waiting for a foreign route keeps the periods running: that
   * route may go without a notification (IPv4 flushes the routes of a
   * device that goes down or loses its address silently, and the device
   * is not ours), and only a pass sees it gone.
   */
  async run(signal: AbortSignal, changes?: ChangeSource): Promise<void> {
    let failures = 0;
    const watchChanges = async () => {
      while (changes && !signal.aborted) {
        try {
          await changes.next();
        } catch (e) {
          if (!signal.aborted) {
            log.warn(`Kernel notifications stopped: ${(e as Error).message}`);
          }
          return;
        }
        await sleep(this.#opts.debounceMs, signal).catch(() => {});
        this.#trigger();
      }
    };
    const watcher = watchChanges();
    signal.addEventListener("abort", () => {
      changes?.close();
      this.#trigger();
    }, { once: true });
    // The first round is not the timer's.
    this.#wanted = true;
    let skipped = 0;
    // Per-peer objects change without a notification (see the module doc).
    const notified = this.#families.every((f) => f.net.objects === undefined);
    while (!signal.aborted) {
      const byTimer = !this.#wanted;
      this.#wanted = false;
      const quiet = notified && (changes?.quiet?.() ?? false);
      if (
        this.#synced && byTimer && quiet && failures === 0 && !this.#dirty &&
        this.#families.every((f) => f.waiting.size === 0) &&
        skipped < MAX_QUIET_SKIPS
      ) {
        skipped++;
        metrics.reconcileQuietSkips.inc();
      } else if (this.#synced) {
        skipped = 0;
        const r = this.pass();
        this.#opts.afterPass();
        failures = r.errors > 0 ? failures + 1 : 0;
      }
      const wait = failures > 0
        ? Math.min(this.#opts.periodMs, 500 * 2 ** Math.min(failures, 6))
        : this.#opts.periodMs;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        this.#timer = setTimeout(resolve, wait);
      });
      clearTimeout(this.#timer);
      this.#wake = undefined;
    }
    await watcher;
  }
}
