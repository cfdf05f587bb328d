/**
 * Benchmark (not a test) of the reconciler over the real vxlan backend and
 * `ffi/`. Each measurement runs in a fresh namespace that it
 * creates and deletes, beside a floor measured in the same run:
 *
 * - cold start: `rec.handle(<N added events>)` then the first `rec.pass()`,
 *   from "leases known" to "kernel programmed"; floor: the same 3N objects
 *   through `ip -batch` + `bridge -batch` in another fresh namespace;
 * - steady add: `rec.handle([added])` for one new peer with N programmed
 *   (median of 50); floor: the same 3 calls straight through `ffi/`;
 * - no-op pass: a full `rec.pass()` with nothing to change (median of 20),
 *   and its CPU share at the default 10 s period; floor: the three kernel
 *   dumps a pass must read (`ip neigh`, `bridge fdb`, `ip route`) through
 *   `ffi/`.
 *
 * Needs root. Run: `deno run -A bench/reconcile.ts [N...]` (default 1000
 * 5000).
 *
 * @module
 */
import type { Netns } from "../tests/_netns.ts";
import { countObjects, ipBatchFloor, underlayNs } from "./_floor.ts";
import { openNetlink } from "../ffi/netlink.ts";
import { NTF_SELF, NUD_PERMANENT } from "../ffi/types.ts";
import { createBackend, Reconciler } from "../backend/mod.ts";
import { parseNetConfig } from "../subnet/config.ts";
import { unwrap } from "../lib/result.ts";
import type { Lease, LeaseEvent } from "../subnet/lease.ts";
import { cpuMs, machine, median, quietLogs } from "./_stats.ts";

/** The default reconcile period of the agent, milliseconds. */
const PERIOD_MS = 10_000;
const STEADY_ADDS = 50;
const NOOP_PASSES = 20;

/** One line of the result table. */
export interface Row {
  readonly what: "cold start" | "steady add (p50)" | "no-op pass (p50)";
  readonly n: number;
  /** weft through the Reconciler, milliseconds. */
  readonly weftMs: number;
  /** The floor, milliseconds. */
  readonly floorMs: number;
  readonly floor: string;
  /** Extra figure for the row (CPU share of a no-op pass). */
  readonly note: string;
  readonly target: string;
  readonly met: boolean | undefined;
}

const hex = (b: number) => b.toString(16).padStart(2, "0");

/** Peer i (i >= 2): subnet 10.<hi>.<lo>.0/24, VTEP 198.18.<hi>.<lo>. */
function lease(i: number): Lease {
  const hi = (i >> 8) & 255, lo = i & 255;
  return {
    key: `node-${i}`,
    subnet: `10.${hi}.${lo}.0/24`,
    attrs: {
      publicIP: `198.18.${hi}.${lo}`,
      backendType: "vxlan",
      backendData: { VNI: 1, VtepMAC: `0a:42:00:00:${hex(hi)}:${hex(lo)}` },
    },
  };
}

function added(leases: Lease[]): LeaseEvent[] {
  const now = performance.now();
  return leases.map((l) => ({ type: "added", lease: l, receivedAt: now }));
}

/** Node 1 of a 10.0.0.0/8 network, running vxlan over `ns`. */
function startNode(ns: Netns) {
  const nl = openNetlink({ netns: ns.path });
  const eth0 = nl.linkByName("eth0")!;
  const config = unwrap(
    parseNetConfig(
      '{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}',
    ),
  );
  const backend = unwrap(createBackend(nl, config, {
    index: eth0.index,
    name: "eth0",
    mtu: eth0.mtu,
    ifaceAddr: "198.18.0.1",
    publicIP: "198.18.0.1",
  }));
  const attrs = backend.prepare();
  const own: Lease = { key: "node-1", subnet: "10.0.1.0/24", attrs };
  const network = backend.start(own);
  const rec = new Reconciler(nl, network.families, {
    ownKey: own.key,
    backendType: backend.type,
  });
  return { nl, rec };
}

interface WeftFigures {
  coldMs: number;
  addMs: number;
  addFloorMs: number;
  passMs: number;
  passCpuMs: number;
  dumpMs: number;
}

async function measureWeft(n: number): Promise<WeftFigures> {
  await using ns = await underlayNs("bench-rec");
  const { nl, rec } = startNode(ns);
  using _nl = nl;
  const peers = Array.from({ length: n }, (_, i) => lease(i + 2));

  // Cold start: leases known → first pass done.
  const t0 = performance.now();
  rec.handle(added(peers));
  const first = rec.pass();
  const coldMs = performance.now() - t0;
  if (first.errors > 0 || first.ops !== 3 * n) {
    throw new Error(
      `Cold pass made ${first.ops} ops with ${first.errors} errors, want ${
        3 * n
      } and 0`,
    );
  }
  const got = await countObjects(ns);
  if (got !== 3 * n) {
    throw new Error(`Kernel has ${got} objects, want ${3 * n}`);
  }

  // Steady state: one new peer through the event path, beside the same
  // three calls made straight through ffi/.
  const index = nl.linkByName("flannel.1")!.index;
  const adds: number[] = [];
  const raw: number[] = [];
  for (let k = 0; k < STEADY_ADDS; k++) {
    const p = lease(n + 2 + 2 * k);
    const t = performance.now();
    rec.handle(added([p]));
    adds.push(performance.now() - t);
    const q = lease(n + 3 + 2 * k);
    const { subnet } = q;
    const gw = subnet!.replace("/24", "");
    const mac = (q.attrs.backendData as { VtepMAC: string }).VtepMAC;
    const t2 = performance.now();
    nl.neighSet({ index, dst: gw, lladdr: mac, state: NUD_PERMANENT });
    nl.fdbSet({
      index,
      lladdr: mac,
      dst: q.attrs.publicIP!,
      state: NUD_PERMANENT,
      flags: NTF_SELF,
    });
    nl.routeReplace({ dst: subnet!, gw, index, onlink: true });
    raw.push(performance.now() - t2);
  }
  // Take the raw-added peers into the desired state too, so the no-op
  // pass below has really nothing to do.
  rec.handle(
    added(Array.from({ length: STEADY_ADDS }, (_, k) => lease(n + 3 + 2 * k))),
  );
  const total = n + 2 * STEADY_ADDS;
  // One pass takes in what was written behind the reconciler's back
  // (entries it did not write are checked before they are adopted);
  // the next must have nothing to do.
  rec.pass();
  const again = rec.pass().ops;
  if (again !== 0) {
    throw new Error(
      `The second pass after the adds was not a no-op (${again} ops)`,
    );
  }

  // No-op passes, and the dumps alone.
  const passes: number[] = [];
  const dumps: number[] = [];
  const c0 = cpuMs();
  for (let k = 0; k < NOOP_PASSES; k++) {
    const t = performance.now();
    const r = rec.pass();
    passes.push(performance.now() - t);
    if (r.ops !== 0) throw new Error(`No-op pass made ${r.ops} ops`);
  }
  const passCpuMs = (cpuMs() - c0) / NOOP_PASSES;
  for (let k = 0; k < NOOP_PASSES; k++) {
    const t = performance.now();
    nl.neighList(index, 4);
    nl.fdbList(index);
    nl.routeList({ family: 4 });
    dumps.push(performance.now() - t);
  }
  const left = await countObjects(ns);
  if (left !== 3 * total) {
    throw new Error(`Kernel has ${left} objects, want ${3 * total}`);
  }
  return {
    coldMs,
    addMs: median(adds),
    addFloorMs: median(raw),
    passMs: median(passes),
    passCpuMs,
    dumpMs: median(dumps),
  };
}

/** The floor for the first n peers. */
function floor(n: number): Promise<number> {
  return ipBatchFloor(Array.from({ length: n }, (_, i) => {
    const l = lease(i + 2);
    return {
      subnet: l.subnet!,
      mac: (l.attrs.backendData as { VtepMAC: string }).VtepMAC,
      vtep: l.attrs.publicIP!,
    };
  }));
}

/** Options of {@linkcode benchReconcile}. */
export interface ReconcileBenchOptions {
  /**
   * Runs per N, alternating floor and weft, each in fresh namespaces; the
   * table shows medians. Default 3.
   */
  readonly repeats?: number;
  /** Called with a line of progress. Default: nothing. */
  readonly progress?: (line: string) => void;
}

/** Runs the benchmark for each N and returns its rows. */
export async function benchReconcile(
  ns: number[],
  opts: ReconcileBenchOptions = {},
): Promise<Row[]> {
  const repeats = opts.repeats ?? 3;
  // The reconciler logs each pass's changes at info level; keep the table
  // readable.
  const restore = quietLogs();
  const rows: Row[] = [];
  try {
    for (const n of ns) {
      const floors: number[] = [];
      const runs: WeftFigures[] = [];
      for (let r = 0; r < repeats; r++) {
        // Alternate the order so neither side always runs first.
        if (r % 2 === 0) floors.push(await floor(n));
        runs.push(await measureWeft(n));
        if (r % 2 === 1) floors.push(await floor(n));
        opts.progress?.(
          `reconcile N=${n} run ${r + 1}/${repeats}: cold ${
            fmt(runs.at(-1)!.coldMs)
          } ms, floor ${fmt(floors.at(-1)!)} ms`,
        );
      }
      const m = (f: (w: WeftFigures) => number) => median(runs.map(f));
      const coldMs = m((w) => w.coldMs);
      const floorMs = median(floors);
      rows.push({
        what: "cold start",
        n,
        weftMs: coldMs,
        floorMs,
        floor: "ip -batch + bridge -batch, 3N objects",
        note: "",
        target: "≤ 1.5x floor",
        met: coldMs <= 1.5 * floorMs,
      });
      rows.push({
        what: "steady add (p50)",
        n,
        weftMs: m((w) => w.addMs),
        floorMs: m((w) => w.addFloorMs),
        floor: "3 calls through ffi/",
        note: "",
        target: "",
        met: undefined,
      });
      const passCpuMs = m((w) => w.passCpuMs);
      const cpuShare = passCpuMs / PERIOD_MS;
      rows.push({
        what: "no-op pass (p50)",
        n: n + 2 * STEADY_ADDS,
        weftMs: m((w) => w.passMs),
        floorMs: m((w) => w.dumpMs),
        floor: "neigh + fdb + route dumps through ffi/",
        note: `${(100 * cpuShare).toFixed(2)}% of a core at 10 s (CPU ${
          passCpuMs.toFixed(1)
        } ms/pass)`,
        target: n >= 5000 ? "< 5% of a core" : "",
        met: n >= 5000 ? cpuShare < 0.05 : undefined,
      });
    }
  } finally {
    restore();
  }
  return rows;
}

/** The rows as a markdown table. */
export function formatRows(rows: Row[]): string {
  const lines = [
    "| measurement | N peers | weft (ms) | floor (ms) | ratio | floor | note | target |",
    "|---|---:|---:|---:|---:|---|---|---|",
  ];
  for (const r of rows) {
    const target = r.target === ""
      ? ""
      : `${r.target}: ${r.met ? "met" : "**missed**"}`;
    lines.push(
      `| ${r.what} | ${r.n} | ${fmt(r.weftMs)} | ${fmt(r.floorMs)} | ${
        (r.weftMs / r.floorMs).toFixed(2)
      } | ${r.floor} | ${r.note} | ${target} |`,
    );
  }
  return lines.join("\n");
}

function fmt(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 1 ? ms.toFixed(1) : ms.toFixed(3);
}

if (import.meta.main) {
  const ns = Deno.args.length > 0 ? Deno.args.map(Number) : [1000, 5000];
  const rows = await benchReconcile(ns, {
    progress: (line) => console.error(line),
  });
  console.log(`Machine: ${await machine()}\n\n${formatRows(rows)}`);
}
