/**
 * Benchmark (not a test): programming N VXLAN peers (neighbour + FDB entry
 * + route each, in flanneld's order) through `ffi/` against the same 3N
 * objects through `ip -batch` / `bridge -batch`, the floor. Each side runs
 * in a fresh namespace with its own flannel.1. Needs root.
 *
 * Run: `deno run -A bench/netlink.ts [N...]` (default 1000 10000).
 *
 * @module
 */
import { sh } from "../tests/_netns.ts";
import { openNetlink } from "../ffi/netlink.ts";
import { NTF_SELF, NUD_PERMANENT } from "../ffi/types.ts";
import { countObjects, vxlanNs } from "./_floor.ts";

/** One line of the result table. */
export interface Row {
  /** Peers programmed (3 objects each). */
  readonly n: number;
  readonly ffiMs: number;
  readonly ipBatchMs: number;
  /** ffiMs / ipBatchMs: 1.0 is the floor. */
  readonly ratio: number;
  /** Objects per second through ffi/. */
  readonly objectsPerSec: number;
}

interface Peer {
  subnet: string;
  gw: string;
  mac: string;
  vtep: string;
}

function peers(n: number): Peer[] {
  const out: Peer[] = [];
  for (let i = 0; i < n; i++) {
    const hi = (i >> 8) & 255, lo = i & 255;
    const hex = (b: number) => b.toString(16).padStart(2, "0");
    out.push({
      subnet: `10.${hi}.${lo}.0/24`,
      gw: `10.${hi}.${lo}.0`,
      mac: `02:42:00:00:${hex(hi)}:${hex(lo)}`,
      vtep: `172.16.${hi}.${lo}`,
    });
  }
  return out;
}

async function timeFfi(list: Peer[]): Promise<number> {
  await using ns = await vxlanNs("bench-ffi", "10.255.255.0/32");
  using nl = openNetlink({ netns: ns.path });
  const index = nl.linkByName("flannel.1")!.index;
  const t0 = performance.now();
  for (const p of list) {
    nl.neighSet({ index, dst: p.gw, lladdr: p.mac, state: NUD_PERMANENT });
    nl.fdbSet({
      index,
      lladdr: p.mac,
      dst: p.vtep,
      state: NUD_PERMANENT,
      flags: NTF_SELF,
    });
    nl.routeReplace({ dst: p.subnet, gw: p.gw, index, onlink: true });
  }
  const ms = performance.now() - t0;
  const got = await countObjects(ns);
  if (got !== 3 * list.length) {
    throw new Error(`ffi/ made ${got} objects, want ${3 * list.length}`);
  }
  return ms;
}

async function timeBatch(list: Peer[]): Promise<number> {
  await using ns = await vxlanNs("bench-ip", "10.255.255.0/32");
  const ipLines: string[] = [];
  const fdbLines: string[] = [];
  for (const p of list) {
    ipLines.push(
      `neigh replace ${p.gw} lladdr ${p.mac} dev flannel.1 nud permanent`,
    );
    fdbLines.push(
      `fdb replace ${p.mac} dev flannel.1 dst ${p.vtep} self permanent`,
    );
    ipLines.push(`route replace ${p.subnet} via ${p.gw} dev flannel.1 onlink`);
  }
  const dir = await Deno.makeTempDir({ prefix: "weft-bench-" });
  try {
    await Deno.writeTextFile(`${dir}/ip`, ipLines.join("\n") + "\n");
    await Deno.writeTextFile(`${dir}/fdb`, fdbLines.join("\n") + "\n");
    const t0 = performance.now();
    await sh(["ip", "-n", ns.name, "-batch", `${dir}/ip`]);
    await sh(["bridge", "-n", ns.name, "-batch", `${dir}/fdb`]);
    const ms = performance.now() - t0;
    const got = await countObjects(ns);
    if (got !== 3 * list.length) {
      throw new Error(`ip -batch made ${got} objects, want ${3 * list.length}`);
    }
    return ms;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Runs the benchmark for each N and returns one row per N. */
export async function benchNetlink(ns: number[]): Promise<Row[]> {
  const rows: Row[] = [];
  for (const n of ns) {
    const list = peers(n);
    const ffiMs = await timeFfi(list);
    const ipBatchMs = await timeBatch(list);
    rows.push({
      n,
      ffiMs,
      ipBatchMs,
      ratio: ffiMs / ipBatchMs,
      objectsPerSec: (3 * n) / (ffiMs / 1000),
    });
  }
  return rows;
}

/** The rows as a markdown table. */
export function formatRows(rows: Row[]): string {
  const lines = [
    "| N peers | ffi/ (ms) | ip -batch (ms) | ratio | ffi/ objects/s |",
    "|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.n} | ${r.ffiMs.toFixed(0)} | ${r.ipBatchMs.toFixed(0)} | ${
        r.ratio.toFixed(2)
      } | ${Math.round(r.objectsPerSec)} |`,
    );
  }
  return lines.join("\n");
}

if (import.meta.main) {
  const ns = Deno.args.length > 0 ? Deno.args.map(Number) : [1000, 10000];
  console.log(formatRows(await benchNetlink(ns)));
}
