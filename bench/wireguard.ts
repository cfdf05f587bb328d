/**
 * `deno task bench wireguard [--runs=3]`: pod-to-pod throughput and
 * latency over weft's wireguard backend beside vxlan, on the same two-node
 * namespace cluster shape (tests/e2e/_scenario.ts, a veth underlay). Here
 * WireGuard is userspace (wireguard-go on a TUN device: this kernel has no
 * module), so its figures are those of wireguard-go, not of the kernel's.
 * Writes bench/results/wireguard.md, naming the commit.
 *
 * Each backend gets a fresh cluster; per run: iperf3 TCP for 5 s (one
 * stream) and 200 pings at 10 ms; each column is the median over the runs.
 *
 * @module
 */
import { startScenario } from "../tests/e2e/_scenario.ts";
import { nodeWireguard } from "../tests/e2e/_wireguard.ts";
import { machine, median } from "./_stats.ts";
import { describeCommit } from "../tests/_commit.ts";

const ROOT = new URL("..", import.meta.url).pathname;

interface Figures {
  readonly backend: string;
  readonly gbps: number[];
  readonly retransmits: number[];
  readonly rttMs: number[];
  readonly lost: number;
}

async function measure(backend: string, runs: number): Promise<Figures> {
  await using s = await startScenario({
    prefix: "weft-bwg",
    nodes: 2,
    podsPerNode: 1,
    netConf: `{"Network":"10.244.0.0/16","Backend":{"Type":"${backend}"}}`,
    ...(backend === "wireguard" && { agentExtra: nodeWireguard }),
  });
  const c = s.cluster;
  const from = "node1-pod1", to = "node2-pod1";
  const gbps: number[] = [], retransmits: number[] = [], rttMs: number[] = [];
  let lost = 0;
  for (let i = 0; i < runs; i++) {
    const r = await c.iperf(from, to, 5);
    gbps.push(r.bitsPerSecond / 1e9);
    retransmits.push(r.retransmits);
    const p = await c.pingRun(from, c.pod(to).ip, {
      count: 200,
      interval: 0.01,
      deadline: 20,
    });
    if (p.rttAvgMs === undefined) throw new Error(`ping failed: ${p.text}`);
    rttMs.push(p.rttAvgMs);
    lost += p.transmitted - p.received;
  }
  return { backend, gbps, retransmits, rttMs, lost };
}

/** Runs the comparison and writes bench/results/wireguard.md. */
export async function wireguardBench(args: string[]): Promise<void> {
  const runs = Number(
    args.find((a) => a.startsWith("--runs="))?.slice(7) ?? 3,
  );
  const rows: Figures[] = [];
  for (const backend of ["vxlan", "wireguard"]) {
    console.log(`${backend}: ${runs} run(s)`);
    rows.push(await measure(backend, runs));
  }
  const lines = [
    "# Pod-to-pod traffic: wireguard beside vxlan",
    "",
    `\`deno task bench wireguard --runs=${runs}\` at ${await describeCommit()} on ${
      new Date().toISOString().slice(0, 10)
    }; ${await machine()}.`,
    "Two node namespaces on a veth underlay, one pod each; per run iperf3",
    "TCP 5 s (one stream) and 200 pings at 10 ms; medians of the runs.",
    "WireGuard here is userspace (wireguard-go on a TUN device): this kernel",
    "has no WireGuard module, so these are not the kernel module's figures.",
    "",
    "| backend | throughput (Gbit/s) | retransmits | ping rtt avg (ms) | pings lost |",
    "| --- | --- | --- | --- | --- |",
    ...rows.map((r) =>
      `| ${r.backend} | ${median(r.gbps).toFixed(2)} | ${
        median(r.retransmits)
      } | ${median(r.rttMs).toFixed(3)} | ${r.lost} |`
    ),
    "",
    "All runs (Gbit/s): " +
    rows.map((r) =>
      `${r.backend} ${r.gbps.map((g) => g.toFixed(2)).join(", ")}`
    )
      .join("; ") +
    ".",
    "",
  ];
  await Deno.writeTextFile(
    `${ROOT}bench/results/wireguard.md`,
    lines.join("\n"),
  );
  console.log(lines.join("\n"));
}
