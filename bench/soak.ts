/**
 * Soak: a 3-node namespace cluster (etcd mode) with simulated peers under
 * steady churn (one peer removed and another added every second), kernel
 * drift injected every minute on node1, and pods pinging across the
 * overlay the whole time. Every agent's RSS, V8 heap, open file
 * descriptors and abort listeners on its run signal are read every 5 s;
 * each minute's figures go to bench/results/soak.md and soak.svg. After
 * warm-up (the first fifth of the run, at least one minute) no figure may
 * grow by more than 10%.
 *
 * What is measured, and why:
 * - The agents run with the V8 flags the image ships with
 *   (`deploy/v8-flags.txt`): memory is that of the agent as deployed.
 *   Under `--single-threaded` V8 keeps the pages a heap peak took, so RSS
 *   hardly comes down: it rises in steps while heap peaks set new highs
 *   during warm-up, then levels off.
 * - A minute's RSS and heap are the lowest of its readings, the floor.
 *   Heap used counts garbage not yet collected, and RSS the pages V8 and
 *   malloc hold for it, so one reading lands anywhere between what the
 *   agent keeps and that plus a GC cycle's garbage. Probed through the
 *   inspector with a forced full GC each minute (agents without the
 *   image's flags, before the agent collected garbage after each pass),
 *   the heap after GC stayed at 10.0-10.1 MiB and RSS at 83-85 MiB from
 *   minute 2 to 12, and heap snapshots at minutes 2 and 12 differed by
 *   0.14 MiB, nearly all of it compiled code; single readings of the same
 *   agents swung by ±25% (heap 10-17 MiB, RSS 92-108 MiB) without a
 *   trend. What leaks survives every collection, so it lifts the floor.
 *   The peaks of RSS and heap are printed beside the floors, not judged.
 * - A minute's fds and listeners are the median of its readings: small
 *   counts that a transient fd (a command's pipe) or a sleep between two
 *   waits moves by one, a third of 3 listeners, for one reading; a leak
 *   moves every reading.
 * - Even a minute's floor can land anywhere in the lower part of the GC
 *   sawtooth (heap floors of 16-19 MiB minute after minute under the
 *   image's flags, before the collection after each pass), so one minute
 *   against another could differ by 15%. The rule compares two windows of a tenth of the run
 *   each (at least a minute): the one right after warm-up and the last
 *   one, each at its lowest. A leak lifts every minute of the last
 *   window, so it still shows, over nine tenths of the span judged.
 *
 * `deno task bench soak [--minutes=60] [--peers=1000]`. Needs root.
 *
 * @module
 */
import { Cluster, type ClusterNode } from "../tests/_cluster.ts";
import { BackgroundPing } from "../tests/faults/traffic.ts";
import { run } from "../tests/_netns.ts";
import { machine, median } from "./_stats.ts";
import { startV8Flags } from "./compare.ts";

const arg = (name: string, def: number) => {
  const a = Deno.args.find((x) => x.startsWith(`--${name}=`));
  const v = a === undefined ? def : Number(a.slice(name.length + 3));
  if (!Number.isFinite(v) || v <= 0) {
    console.error(`Invalid --${name}: "${a}"`);
    Deno.exit(2);
  }
  return v;
};
const MINUTES = arg("minutes", 60);
const PEERS = arg("peers", 1000);
const PREFIX = "weft-soak";
const DIR = "/coreos.com/network/subnets/";
// /26 subnets give the 1000 simulated peers room in the pod network.
const NET_CONF =
  '{"Network":"10.244.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}';
const RESULTS = new URL("./results/", import.meta.url).pathname;
const ROOT = new URL("..", import.meta.url).pathname;
/** Time between readings; a minute's figures come from about 12. */
const READ_EVERY_MS = 5_000;

/** One reading of one agent. */
interface Reading {
  rssMiB: number;
  heapMiB: number;
  fds: number;
  listeners: number;
  peers: number;
}

/** One agent's minute: the floor of its readings, and RSS and heap peaks. */
interface Sample extends Reading {
  minute: number;
  node: string;
  rssPeakMiB: number;
  heapPeakMiB: number;
}

/** The i-th /26 of 10.244.0.0/16, as an etcd key name. */
function subnetOf(i: number): string {
  return `10.244.${i >> 2}.${(i & 3) * 64}`;
}

function fakeValue(i: number): string {
  // Distinct per peer: weft refuses a public IP another lease holds.
  const ip = `198.19.${(i >> 8) & 255}.${i & 255}`;
  const mac = `0a:5a:00:00:${((i >> 8) & 255).toString(16).padStart(2, "0")}:${
    (i & 255).toString(16).padStart(2, "0")
  }`;
  return JSON.stringify({
    PublicIP: ip,
    PublicIPv6: null,
    BackendType: "vxlan",
    BackendData: { VNI: 1, VtepMAC: mac },
  });
}

async function read(c: Cluster, n: ClusterNode): Promise<Reading> {
  const pid = n.agent!.child.pid;
  // Deno wants --allow-all for another process's /proc entries: ask sh.
  const status = await run(["cat", `/proc/${pid}/status`]);
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(status.stdout)?.[1] ?? 0);
  const fdList = await run(["ls", `/proc/${pid}/fd`]);
  const fds = fdList.stdout.split("\n").filter((l) => l !== "").length;
  const m = await c.metrics(n);
  const g = (name: string) =>
    Number(new RegExp(`^${name} (\\S+)$`, "m").exec(m)?.[1] ?? NaN);
  return {
    rssMiB: rssKiB / 1024,
    heapMiB: g("weft_process_heap_used_bytes") / 2 ** 20,
    fds,
    listeners: g("weft_run_signal_abort_listeners"),
    peers: g("weft_peers_programmed"),
  };
}

/**
 * A minute of readings: the floor of RSS and heap (and their peaks), the
 * median of fds and listeners, the last count of peers.
 */
function summarize(minute: number, node: string, rs: Reading[]): Sample {
  const min = (k: keyof Reading) => Math.min(...rs.map((r) => r[k]));
  const max = (k: keyof Reading) => Math.max(...rs.map((r) => r[k]));
  const mid = (k: keyof Reading) => median(rs.map((r) => r[k]));
  return {
    minute,
    node,
    rssMiB: min("rssMiB"),
    rssPeakMiB: max("rssMiB"),
    heapMiB: min("heapMiB"),
    heapPeakMiB: max("heapMiB"),
    fds: mid("fds"),
    listeners: mid("listeners"),
    peers: rs[rs.length - 1]!.peers,
  };
}

function chart(samples: Sample[], nodes: string[]): string {
  // Each panel: the floor, and for RSS and heap the peak (dotted).
  const metrics: [keyof Sample, string, (keyof Sample)?][] = [
    ["rssMiB", "RSS (MiB)", "rssPeakMiB"],
    ["heapMiB", "V8 heap (MiB)", "heapPeakMiB"],
    ["fds", "open fds"],
    ["listeners", "run-signal abort listeners"],
  ];
  const W = 360, H = 180, pad = 36;
  const colors = ["#1f77b4", "#d62728", "#2ca02c"];
  const maxMin = Math.max(...samples.map((s) => s.minute), 1);
  const parts: string[] = [];
  metrics.forEach(([key, title, peak], k) => {
    const ox = (k % 2) * (W + 20), oy = Math.floor(k / 2) * (H + 30);
    const vals = samples.map((s) => Number(s[peak ?? key]));
    const max = Math.max(...vals, 1) * 1.1;
    parts.push(
      `<g transform="translate(${ox},${oy})"><text x="${pad}" y="14" font-size="12">${title}</text>`,
      `<line x1="${pad}" y1="${H - 20}" x2="${W}" y2="${
        H - 20
      }" stroke="#999"/><line x1="${pad}" y1="20" x2="${pad}" y2="${
        H - 20
      }" stroke="#999"/>`,
      `<text x="2" y="24" font-size="10">${max.toFixed(1)}</text><text x="${
        W - 40
      }" y="${H - 6}" font-size="10">${maxMin} min</text>`,
    );
    nodes.forEach((name, j) => {
      const line = (field: keyof Sample, dash: string) => {
        const pts = samples.filter((s) => s.node === name).map((s) => {
          const x = pad + (s.minute / maxMin) * (W - pad);
          const y = H - 20 - (Number(s[field]) / max) * (H - 40);
          return `${x.toFixed(1)},${y.toFixed(1)}`;
        });
        parts.push(
          `<polyline fill="none" stroke="${
            colors[j % 3]
          }" stroke-width="1.5"${dash} points="${pts.join(" ")}"/>`,
        );
      };
      line(key, "");
      if (peak) line(peak, ' stroke-dasharray="2,3"');
      if (k === 0) {
        parts.push(
          `<text x="${W - 60}" y="${30 + 12 * j}" font-size="10" fill="${
            colors[j % 3]
          }">${name}</text>`,
        );
      }
    });
    parts.push("</g>");
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${
    2 * W + 20
  }" height="${2 * (H + 30)}" font-family="sans-serif">${
    parts.join("")
  }</svg>\n`;
}

/** The lowest of each figure over some minutes. */
function low(minutes: Sample[]): Reading {
  const min = (k: keyof Reading) => Math.min(...minutes.map((s) => s[k]));
  return {
    rssMiB: min("rssMiB"),
    heapMiB: min("heapMiB"),
    fds: min("fds"),
    listeners: min("listeners"),
    peers: min("peers"),
  };
}

/**
 * Growth of each figure from the window that starts at the end of
 * warm-up (minutes `warm` to `warm + span - 1`) to the last `span`
 * minutes, each window taken at its lowest.
 */
function growth(samples: Sample[], warm: number, span: number, node: string) {
  const mine = samples.filter((s) => s.node === node);
  const end = mine[mine.length - 1]!.minute;
  const base = low(
    mine.filter((s) => s.minute >= warm && s.minute < warm + span),
  );
  const last = low(mine.filter((s) => s.minute > end - span));
  const pct = (a: number, b: number) =>
    a === 0 ? (b === 0 ? 0 : Infinity) : (b / a - 1) * 100;
  return {
    base,
    last,
    rss: pct(base.rssMiB, last.rssMiB),
    heap: pct(base.heapMiB, last.heapMiB),
    fds: pct(base.fds, last.fds),
    listeners: pct(base.listeners, last.listeners),
  };
}

export async function soak(): Promise<void> {
  const log = (s: string) => console.error(`[soak] ${s}`);
  const v8Flags = await startV8Flags(ROOT);
  const c = await Cluster.create({
    nodes: 3,
    prefix: PREFIX,
    netConf: NET_CONF,
    denoFlags: v8Flags,
  });
  const pings: BackgroundPing[] = [];
  const samples: Sample[] = [];
  let churns = 0, drifts = 0, churnErrors = 0;
  const stop = new AbortController();
  try {
    for (const n of c.nodes) await c.startAgent(n);
    for (const n of c.nodes) await c.waitReady(n);
    for (const n of c.nodes) await c.addPod(n, 1);
    const real = new Set((await c.leases()).map((l) => l.subnet.split("/")[0]));
    const pool: number[] = [];
    for (let i = 4; i < 1024 && pool.length < PEERS + 64; i++) {
      if (!real.has(subnetOf(i))) pool.push(i);
    }
    const live = pool.slice(0, PEERS);
    const spare = pool.slice(PEERS);
    log(`writing ${live.length} simulated peers`);
    for (let k = 0; k < live.length; k += 16) {
      await Promise.all(
        live.slice(k, k + 16).map((i) =>
          c.etcdctl("put", `${DIR}${subnetOf(i)}-26`, fakeValue(i))
        ),
      );
    }
    pings.push(
      BackgroundPing.start(c.pod("node1-pod1").ns.name, c.pod("node2-pod1").ip),
      BackgroundPing.start(c.pod("node2-pod1").ns.name, c.pod("node3-pod1").ip),
    );
    const started = performance.now();
    const elapsedMin = () => (performance.now() - started) / 60_000;
    // Churn: every second one peer goes and another comes.
    const churn = (async () => {
      while (!stop.signal.aborted) {
        const out = live.shift()!;
        const inn = spare.shift()!;
        const [d, p] = await Promise.all([
          c.etcdctl("del", `${DIR}${subnetOf(out)}-26`),
          c.etcdctl("put", `${DIR}${subnetOf(inn)}-26`, fakeValue(inn)),
        ]);
        if (d.code !== 0 || p.code !== 0) churnErrors++;
        live.push(inn);
        spare.push(out);
        churns++;
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    const n1 = c.nodes[0]!;
    const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
    for (let minute = 0; minute <= MINUTES; minute++) {
      // This minute's readings: every READ_EVERY_MS until its end, then
      // one at the end (minute 0: that one only).
      const readings: Reading[][] = c.nodes.map(() => []);
      const readAll = async () => {
        for (const [j, n] of c.nodes.entries()) {
          readings[j]!.push(await read(c, n));
        }
      };
      while (elapsedMin() < minute) {
        await readAll();
        const left = (minute - elapsedMin()) * 60_000;
        await pause(Math.max(0, Math.min(READ_EVERY_MS, left)));
      }
      await readAll();
      const s = c.nodes.map((n, j) => summarize(minute, n.name, readings[j]!));
      samples.push(...s);
      log(
        `minute ${minute}: ${
          s.map((x) =>
            `${x.node} rss ${x.rssMiB.toFixed(1)} (peak ${
              x.rssPeakMiB.toFixed(1)
            }) MiB heap ${x.heapMiB.toFixed(1)} (peak ${
              x.heapPeakMiB.toFixed(1)
            }) MiB fds ${x.fds} listeners ${x.listeners} peers ${x.peers}`
          ).join("; ")
        }`,
      );
      if (minute < MINUTES) {
        // Drift: a peer's route and neighbour removed by hand on node1.
        const i = live[Math.floor(live.length / 2)]!;
        await n1.ns.tryExec(["ip", "route", "del", `${subnetOf(i)}/26`]);
        await n1.ns.tryExec([
          "ip",
          "neigh",
          "del",
          subnetOf(i),
          "dev",
          "flannel.1",
        ]);
        drifts++;
      }
    }
    stop.abort();
    await churn;
    const losses = await Promise.all(pings.map((p) => p.stop()));
    pings.length = 0;
    const warm = Math.max(1, Math.floor(MINUTES / 5));
    const span = Math.max(1, Math.round(MINUTES / 10));
    const window = (from: number) =>
      span === 1 ? `minute ${from}` : `minutes ${from}-${from + span - 1}`;
    const names = c.nodes.map((n) => n.name);
    const verdicts = names.map((n) => ({
      n,
      g: growth(samples, warm, span, n),
    }));
    const fmt = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(1)}%`;
    const ok = verdicts.every(({ g }) =>
      g.rss <= 10 && g.heap <= 10 && g.fds <= 10 && g.listeners <= 10
    );
    const md = [
      "# Soak",
      "",
      `Written by \`deno task bench soak --minutes=${MINUTES} --peers=${PEERS}\` on ${
        new Date().toISOString()
      }. Machine: ${await machine()}.`,
      "",
      `Agents run with the image's V8 flags (\`${
        v8Flags.join(" ") || "none"
      }\`). Each agent is read every ${
        READ_EVERY_MS / 1000
      } s; a minute's RSS and heap are the floor (lowest reading) of that minute, with the peak beside it, and its fds and listeners the median (see the header of \`bench/soak.ts\`).`,
      "",
      `3 nodes (etcd mode, namespaces), ${PEERS} simulated peers (/26 subnets, etcd keys), one peer removed and another added every second (${churns} changes, ${churnErrors} etcdctl errors), a route and neighbour of a simulated peer deleted on node1 every minute (${drifts} times), pods pinging node1→node2 and node2→node3 every 50 ms throughout.`,
      "",
      `Packets lost: ${
        losses.map((l) => `${l.lost} of ${l.transmitted}`).join(", ")
      }.`,
      "",
      `Growth from ${window(warm)} (the end of warm-up) to ${
        window(MINUTES - span + 1)
      }, each the lowest of its minutes' floors; the target is at most +10% each:`,
      "",
      "| node | RSS | V8 heap | open fds | run-signal listeners |",
      "| --- | ---: | ---: | ---: | ---: |",
      ...verdicts.map(({ n, g }) =>
        `| ${n} | ${g.base.rssMiB.toFixed(1)} → ${
          g.last.rssMiB.toFixed(1)
        } MiB (${fmt(g.rss)}) | ${g.base.heapMiB.toFixed(1)} → ${
          g.last.heapMiB.toFixed(1)
        } MiB (${fmt(g.heap)}) | ${g.base.fds} → ${g.last.fds} (${
          fmt(g.fds)
        }) | ${g.base.listeners} → ${g.last.listeners} (${fmt(g.listeners)}) |`
      ),
      "",
      `Verdict: ${ok ? "within 10%" : "GREW by more than 10%"}.`,
      "",
      "Chart: `soak.svg` (floors of RSS, heap, fds, listeners per node, per minute; RSS and heap peaks dotted).",
      "",
      "| minute | node | RSS MiB (floor / peak) | heap MiB (floor / peak) | fds | listeners | peers programmed |",
      "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
      ...samples.map((s) =>
        `| ${s.minute} | ${s.node} | ${s.rssMiB.toFixed(1)} / ${
          s.rssPeakMiB.toFixed(1)
        } | ${s.heapMiB.toFixed(1)} / ${
          s.heapPeakMiB.toFixed(1)
        } | ${s.fds} | ${s.listeners} | ${s.peers} |`
      ),
      "",
    ].join("\n");
    await Deno.writeTextFile(`${RESULTS}soak.md`, md);
    await Deno.writeTextFile(`${RESULTS}soak.svg`, chart(samples, names));
    console.log(md);
  } finally {
    stop.abort();
    for (const p of pings) await p.stop().catch(() => {});
    await c.close();
  }
}

if (import.meta.main) await soak();
