/**
 * Traffic between every ordered pair of nodes while something happens to
 * the cluster: from one pod per node to one pod on each other node, ICMP
 * every 50 ms (busybox ping) and one long-lived TCP connection carrying a
 * numbered line every 100 ms (busybox nc). A window is zero-loss when each
 * probe pod's kernel received a reply for every echo it sent, each ping
 * saw every reply but those its socket dropped ({@linkcode assertNoLoss}),
 * the TCP connection is still up at the end (no reset), every line arrived
 * in order, and no line took longer than {@linkcode TCP_STALL_MAX_MS} from
 * sender to receiver.
 *
 * Time stamps come from /proc/uptime (10 ms resolution), which every pod
 * of a test cluster reads from the same kernel: a line's delay is exact to
 * that resolution without synchronised clocks, and a sender delayed by a
 * busy CPU is not counted as a stall of the network.
 *
 * The per-pair counts go to a section of bench/results/k8s.md
 * ({@linkcode writeSection}), which names the commit.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import { describeCommit } from "../_commit.ts";
import { dropsBetween, grewBy, podCounter, readCounters } from "./_drops.ts";
import { sh } from "../_netns.ts";
import {
  countPings,
  execPod,
  type K8sCluster,
  type PingSequence,
  type PodInfo,
  PROBE_CPU,
  until,
  withFileLock,
} from "./_k8s.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
/** The cluster tier's results file. */
export const RESULTS = `${ROOT}bench/results/k8s.md`;

/** ICMP echo interval, ms. */
const PING_MS = 50;
/** TCP line interval, ms. */
const LINE_MS = 100;
/** Echoes sent in the last second before the stop may still be in flight. */
export const IN_FLIGHT_MAX = 1000 / PING_MS;
/** A TCP line delayed longer than this is a stall. */
export const TCP_STALL_MAX_MS = 1000;
/** Bytes of padding in each TCP line (data, not just a counter). */
const PAD = 400;
/** The receivers' first port; the sender's index in the pod list is added. */
const PORT = 9100;

/** One pair's TCP connection over a window. */
export interface TcpCount {
  /** Lines the sender wrote (its last line number + 1). */
  readonly sent: number;
  /** Lines the receiver read, in order from 0. */
  readonly received: number;
  readonly bytes: number;
  /** The sender's connection had ended before the stop. */
  readonly reset: boolean;
  /** The longest time one line took from sender to receiver, ms. */
  readonly longestDelayMs: number;
  /** The longest time between two lines at the receiver, ms. */
  readonly longestGapMs: number;
  /** A line missing or out of order, if one was (empty when none). */
  readonly order: string;
}

/** One ordered pair of nodes over a window. */
export interface PairTraffic {
  /** `<from node> → <to node>`. */
  readonly pair: string;
  /** The sender's node. */
  readonly from: string;
  readonly icmp: PingSequence;
  /** When each lost echo was sent (UTC time of day, to 10 ms). */
  readonly lostAt: string[];
  readonly tcp: TcpCount;
}

/** One probe pod's echoes over a window, as its kernel counted them. */
export interface PodEchoes {
  readonly node: string;
  /** Echo requests the pod's namespace sent (Icmp OutEchos): its pings'. */
  readonly sent: number;
  /** Echo replies the pod's namespace received (Icmp InEchoReps). */
  readonly answered: number;
  /**
   * Packets the pod's ICMP sockets dropped, their receive buffer full
   * (read before any probe stopped).
   */
  readonly socketDrops: number;
}

/** What one window measured. */
export interface TrafficWindow {
  /** What happened in it (a table's first column). */
  readonly what: string;
  /** From the first action to the last one done, ms (3 s more measured). */
  readonly ms: number;
  readonly pairs: PairTraffic[];
  /** Each probe pod's echoes as its kernel counted them. */
  readonly echoes: PodEchoes[];
  /** Drop counters of the pods', nodes' and kernel's that grew in it. */
  readonly drops: string[];
}

/**
 * The receiver: each line "N SENT PAD" read becomes "N SENT RECEIVED
 * PADLEN" (uptime seconds). awk reads the pipe in blocks; a shell loop
 * reads it a byte at a time and falls behind on a busy machine, which
 * would read as delay on the network.
 */
const RX_SCRIPT =
  `awk '{ getline up < "/proc/uptime"; close("/proc/uptime"); ` +
  `split(up, u, " "); print $1, $2, u[1], length($3) }'`;
/**
 * The sender (argument: the files' stem): a numbered line with its uptime
 * and padding every LINE_MS, the last number written to STEM.sent.
 */
const TX_SCRIPT = `pad=$(head -c ${PAD} /dev/zero | tr "\\0" x); i=0
while :; do
  read up _ </proc/uptime
  echo "$i $up $pad" || break
  echo $i >$1.sent
  i=$((i+1))
  usleep ${LINE_MS * 1000}
done`;

/** A shell command writing `text` to `file` (base64: no quoting). */
function writeFile(file: string, text: string): string {
  const b64 = btoa(text + "\n");
  return `echo ${b64} | base64 -d >${file}`;
}

interface Probe {
  readonly from: PodInfo;
  readonly to: PodInfo;
  /** Files' stem, the same in both pods. */
  readonly file: string;
  readonly port: number;
}

/**
 * Runs `script` in `pod` at nice -10 (the probes' pods have CAP_SYS_NICE),
 * its processes too: on a busy 2-core machine a probe waiting for a CPU
 * would read as a network that stalled.
 */
async function inPod(c: K8sCluster, pod: string, script: string) {
  const r = await execPod(c, pod, [
    "sh",
    "-c",
    `renice -n -10 -p $$ >/dev/null || exit 1\n${script}\necho started`,
  ]);
  assertEquals(r.stdout.trim(), "started", `${pod}: ${r.stderr}`);
}

/** Starts the ping and the TCP connection of every ordered pair. */
async function start(
  c: K8sCluster,
  list: PodInfo[],
  tag: string,
): Promise<Probe[]> {
  const probes: Probe[] = [];
  for (const [i, from] of list.entries()) {
    for (const to of list.filter((p) => p.node !== from.node)) {
      probes.push({
        from,
        to,
        file: `/tmp/traffic-${tag}-${from.ip}-${to.ip}`,
        port: PORT + i,
      });
    }
  }
  // The loops run as scripts of their own (sh FILE, exec'd): a loop run
  // inline by the exec'd shell keeps a copy of the exec's output stream
  // open, and `kubectl exec` would wait for it.
  for (const pod of new Set(list.map((p) => p.name))) {
    await inPod(
      c,
      pod,
      `${writeFile("/tmp/traffic-rx.sh", RX_SCRIPT)}; ` +
        writeFile("/tmp/traffic-tx.sh", TX_SCRIPT),
    );
  }
  // Receivers first. nc's stdin is a FIFO opened read-write: it never
  // ends, so nc never closes the connection from its side.
  for (const p of probes) {
    await inPod(
      c,
      p.to.name,
      `rm -f ${p.file}.in; mkfifo ${p.file}.in; ` +
        `nc -l -p ${p.port} <>${p.file}.in 2>/dev/null | ` +
        `sh /tmp/traffic-rx.sh >${p.file}.rx 2>&1 &`,
    );
  }
  for (const p of probes) {
    // -w 900 bounds a ping a failed step never stops.
    await inPod(
      c,
      p.from.name,
      `read up _ </proc/uptime; echo $up >${p.file}.t0; ping -i ${
        PING_MS / 1000
      } -w 900 ${p.to.ip} >${p.file}.ping 2>&1 </dev/null & echo $! >${p.file}.pingpid`,
    );
    const connect = async () => {
      await inPod(
        c,
        p.from.name,
        `sh /tmp/traffic-tx.sh ${p.file} </dev/null 2>/dev/null | ` +
          `nc ${p.to.ip} ${p.port} >/dev/null 2>${p.file}.txerr & ` +
          `echo $! >${p.file}.txpid`,
      );
      const r = await execPod(c, p.from.name, [
        "sh",
        "-c",
        `sleep 1; kill -0 $(cat ${p.file}.txpid) 2>/dev/null && echo up`,
      ]);
      return r.stdout.includes("up") ? true : undefined;
    };
    await until(
      `a TCP connection ${p.from.name} → ${p.to.ip}:${p.port}`,
      30_000,
      connect,
      500,
    );
  }
  return probes;
}

/** Parses a receiver's lines "N SENT RECEIVED PADLEN" (uptime seconds). */
export function countTcp(
  rx: string,
  sent: number,
  reset: boolean,
): TcpCount {
  let received = 0, bytes = 0, delay = 0, gap = 0, order = "";
  let prev: number | undefined;
  for (const line of rx.split("\n")) {
    const f = line.trim().split(" ");
    if (f.length !== 4) continue;
    const [n, s, r, pad] = f.map(Number) as [number, number, number, number];
    if (n !== received && order === "") {
      order = `line ${n} where ${received} was due`;
    }
    received++;
    bytes += `${f[0]} ${f[1]} `.length + pad + 1;
    delay = Math.max(delay, Math.round((r - s) * 1000));
    if (prev !== undefined) gap = Math.max(gap, Math.round((r - prev) * 1000));
    prev = r;
  }
  return {
    sent,
    received,
    bytes,
    reset,
    longestDelayMs: delay,
    longestGapMs: gap,
    order,
  };
}

/** The sum of the drops column of `/proc/net/raw` and `/proc/net/icmp`. */
export function socketDrops(text: string): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length > 12 && /^\d+:$/.test(f[0]!)) sum += Number(f.at(-1));
  }
  return sum;
}

/** Milliseconds since the epoch at which this kernel's uptime was 0. */
async function bootedAt(): Promise<number> {
  // Through cat: Deno lets only --allow-all read /proc.
  const up = Number((await sh(["cat", "/proc/uptime"])).split(" ")[0]);
  return Date.now() - up * 1000;
}

/**
 * What every probe pod's ICMP sockets dropped so far, by pod name: read
 * while all its pings still run (a closed socket's count is gone).
 */
async function socketDropsOf(
  c: K8sCluster,
  list: readonly PodInfo[],
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const p of list) {
    const r = await execPod(c, p.name, [
      "cat",
      "/proc/net/raw",
      "/proc/net/icmp",
    ]);
    assertEquals(r.code, 0, `${p.name}: /proc/net/raw: ${r.stderr}`);
    out.set(p.name, socketDrops(r.stdout));
  }
  return out;
}

/** Stops every probe (the ping by SIGINT: its summary) and counts. */
async function stop(c: K8sCluster, probes: Probe[]): Promise<PairTraffic[]> {
  const out: PairTraffic[] = [];
  const boot = await bootedAt();
  for (const p of probes) {
    const r = await execPod(c, p.from.name, [
      "sh",
      "-c",
      `kill -0 $(cat ${p.file}.txpid) 2>/dev/null && echo up; ` +
      `kill $(cat ${p.file}.txpid) 2>/dev/null; kill -INT $(cat ${p.file}.pingpid); ` +
      `echo "sent $(cat ${p.file}.sent)"; echo "t0 $(cat ${p.file}.t0)"`,
    ]);
    const reset = !/^up$/m.test(r.stdout);
    const sent = Number(r.stdout.match(/^sent (\d+)$/m)?.[1] ?? -1) + 1;
    const t0 = Number(r.stdout.match(/^t0 ([\d.]+)$/m)?.[1] ?? NaN);
    const ping = await until(
      `the ping summary in ${p.from.name}:${p.file}.ping`,
      30_000,
      async () => {
        const x = await execPod(c, p.from.name, ["cat", `${p.file}.ping`]);
        return /packets transmitted/.test(x.stdout) ? x.stdout : undefined;
      },
      500,
    );
    // The receiver's loop ends when the sender's nc closes the connection.
    const rx = await until(
      `the TCP receiver in ${p.to.name} to finish`,
      30_000,
      async () => {
        const x = await execPod(c, p.to.name, [
          "sh",
          "-c",
          `cat ${p.file}.rx; ps | grep -q "[n]c -l -p ${p.port}" && echo running`,
        ]);
        return /^running$/m.test(x.stdout) ? undefined : x.stdout;
      },
      500,
    );
    const icmp = countPings(ping, PING_MS);
    out.push({
      pair: `${p.from.node} → ${p.to.node}`,
      from: p.from.node,
      icmp,
      lostAt: icmp.lostSeqs.map((q) =>
        Number.isFinite(t0)
          ? new Date(boot + t0 * 1000 + q * PING_MS).toISOString().slice(11, 22)
          : "unknown (no start time)"
      ),
      tcp: countTcp(rx, sent, reset),
    });
  }
  return out;
}

/**
 * Runs `during` under traffic between every ordered pair of `list` (one
 * pod per node), then 3 s more over the new agents' first seconds.
 *
 * `lock` is how the window holds the lanes' lock ({@linkcode laneLock}):
 * "shared" when `during` only changes the agents, "exclusive" when it
 * also loads the machine on purpose (nodes joining with their images,
 * pods created and deleted). Two such windows at once, one per lane, kept
 * a probe pod off the CPU for two seconds on this 2-core machine: its TCP
 * lines arrived 1.96 s late while every ICMP echo, answered by the
 * kernel, came back.
 */
export async function trafficDuring(
  c: K8sCluster,
  list: PodInfo[],
  what: string,
  during: () => Promise<void>,
  lock: "shared" | "exclusive" = "shared",
): Promise<TrafficWindow> {
  assertEquals(
    new Set(list.map((p) => p.node)).size,
    list.length,
    "one pod per node",
  );
  const tag = what.replace(/[^a-z0-9]+/gi, "-").toLowerCase();
  const { before, after, dropped, pairs, ms } = await laneLock(
    lock,
    async () => {
      const before = await readCounters(c, list);
      const probes = await start(c, list, tag);
      const t0 = Date.now();
      await during();
      const ms = Date.now() - t0;
      await new Promise((r) => setTimeout(r, 3000));
      const dropped = await socketDropsOf(c, list);
      const pairs = await stop(c, probes);
      const after = await readCounters(c, list);
      return { before, after, dropped, pairs, ms };
    },
  );
  const echoes = list.map((p) => ({
    node: p.node,
    sent: grewBy(before, after, podCounter(p, "Icmp.OutEchos")),
    answered: grewBy(before, after, podCounter(p, "Icmp.InEchoReps")),
    socketDrops: dropped.get(p.name)!,
  }));
  return { what, ms, pairs, echoes, drops: dropsBetween(before, after) };
}

/**
 * Keeps the tier's two lanes (tests/k8s/run.sh) from measuring each
 * other's deliberate load: a traffic window holds the lock shared (windows
 * of both lanes may overlap), a step that loads the machine on purpose
 * (dozens of pods created at once, each a CNI plugin start; a window in
 * which nodes join and leave and pods come and go) holds it exclusive and
 * waits for the other lane's window to end.
 */
export async function laneLock<T>(
  mode: "shared" | "exclusive",
  fn: () => Promise<T>,
): Promise<T> {
  return await withFileLock(
    "/tmp/weft-k8s-lanes.lock",
    mode === "exclusive",
    fn,
  );
}

/** One line per pair: what a log shows of a window. */
export function summary(w: TrafficWindow): string {
  return `${w.what} (${(w.ms / 1000).toFixed(1)} s): ${
    w.pairs.map((p) =>
      `${p.pair} ICMP ${p.icmp.received}/${p.icmp.sent} (${p.icmp.lost} lost${
        p.icmp.lost > 0
          ? `: seq ${p.icmp.lostSeqs.join(",")} sent at ${p.lostAt.join(",")}`
          : ""
      }), TCP ${p.tcp.received}/${p.tcp.sent} lines${
        p.tcp.reset ? " RESET" : ""
      } delay ${p.tcp.longestDelayMs} ms gap ${p.tcp.longestGapMs} ms`
    ).join("; ")
  }; ${echoLine(w)}${
    w.drops.length > 0 ? `; kernel drops: ${w.drops.join(", ")}` : ""
  }`;
}

/** Each probe pod's kernel counts of a window, on one line. */
function echoLine(w: TrafficWindow): string {
  return `echoes answered as the pods' kernels counted them: ${
    w.echoes.map((e) =>
      `${e.node} ${e.answered}/${e.sent} (sockets dropped ${e.socketDrops})`
    ).join(", ")
  }`;
}

/**
 * Asserts the window lost nothing, in either protocol, on any pair.
 *
 * ICMP is counted twice. Each pod's kernel must have received a reply for
 * every echo it sent: the network lost none. And each ping must have seen
 * every reply but those its pod's sockets dropped: busybox ping asks for a
 * 7280-byte receive buffer (the kernel doubles it), which every ICMP
 * packet of its pod fills, so a ping kept off the CPU for a moment
 * misses replies its kernel received.
 */
export function assertNoLoss(w: TrafficWindow): void {
  for (const e of w.echoes) {
    assertEquals(
      e.answered,
      e.sent,
      `${w.what}: the pod on ${e.node} sent ${e.sent} echoes and received ${e.answered} replies (its kernel's Icmp OutEchos and InEchoReps): the network lost ${
        e.sent - e.answered
      }; kernel drops: ${w.drops.join(", ") || "none"}`,
    );
  }
  for (const p of w.pairs) {
    const at = `${w.what}, ${p.pair}`;
    const e = w.echoes.find((x) => x.node === p.from);
    assert(e, `${at}: no kernel counts for ${p.from}`);
    // The kernel's count covers this pod's pings, or it counted elsewhere.
    const pinged = w.pairs.filter((x) => x.from === p.from)
      .reduce((sum, x) => sum + x.icmp.sent, 0);
    assert(
      e.sent >= pinged,
      `${at}: the pod's kernel counted ${e.sent} echoes sent, its pings ${pinged}`,
    );
    assert(
      p.icmp.sent > w.ms / PING_MS / 2,
      `${at}: too few pings sent (${p.icmp.sent} in ${w.ms} ms)`,
    );
    assert(
      p.icmp.lost <= e.socketDrops,
      `${at}: ${p.icmp.lost} echoes with no reply in ping's output (seq ${
        p.icmp.lostSeqs.join(",")
      } sent at ${
        p.lostAt.join(",")
      } UTC), more than the ${e.socketDrops} packets the sender pod's sockets dropped`,
    );
    assert(
      p.icmp.inFlight <= IN_FLIGHT_MAX,
      `${at}: the last ${p.icmp.inFlight} echoes unanswered`,
    );
    assert(!p.tcp.reset, `${at}: the TCP connection ended`);
    assertEquals(p.tcp.order, "", `${at}: TCP lines out of order`);
    assert(
      p.tcp.received > w.ms / LINE_MS / 2,
      `${at}: too few TCP lines (${p.tcp.received} in ${w.ms} ms)`,
    );
    assert(
      p.tcp.sent - p.tcp.received <= 2,
      `${at}: ${p.tcp.sent} TCP lines sent, ${p.tcp.received} received`,
    );
    assert(
      p.tcp.longestDelayMs <= TCP_STALL_MAX_MS,
      `${at}: a TCP line took ${p.tcp.longestDelayMs} ms`,
    );
  }
}

/** The table of windows, one row per pair (markdown). */
function table(windows: readonly TrafficWindow[]): string[] {
  return [
    "| window | pair (from → to) | length | ICMP sent | answered | not answered | in flight at stop | longest gap | TCP lines sent | received | bytes | resets | longest line delay | longest gap between lines |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...windows.flatMap((w) =>
      w.pairs.map((p) =>
        `| ${w.what} | ${p.pair} | ${
          (w.ms / 1000 + 3).toFixed(1)
        } s | ${p.icmp.sent} | ${p.icmp.received} | ${p.icmp.lost} | ${p.icmp.inFlight} | ${p.icmp.longestGapMs} ms | ${p.tcp.sent} | ${p.tcp.received} | ${p.tcp.bytes} | ${
          p.tcp.reset ? 1 : 0
        } | ${p.tcp.longestDelayMs} ms | ${p.tcp.longestGapMs} ms |`
      )
    ),
    "",
    ...windows.flatMap((w) => [
      `"${w.what}": ${echoLine(w)}. Drop and error counters that grew: ${
        w.drops.length > 0 ? w.drops.join(", ") : "none"
      }.`,
      "",
    ]),
  ];
}

/** How the table's columns are counted (every section says it). */
const LEGEND = [
  `ICMP: an echo every ${PING_MS} ms (busybox ping). Not answered: echoes sent before the`,
  "last answered one with no reply in ping's output; in flight: those sent after",
  `it, within the last round trip before ping was stopped (at most ${IN_FLIGHT_MAX}, one`,
  "second, allowed). Longest gap: the longest run of unanswered echoes between",
  "two answered ones. Under the table, each probe pod's kernel counts: echoes",
  "its namespace sent (Icmp OutEchos) and replies it received (InEchoReps),",
  "read before the probes started and after they stopped. Equal counts mean the",
  "network answered every echo. A reply the kernel received that ping did not",
  "read was dropped at ping's socket: busybox ping asks for a 7280-byte receive",
  "buffer, which every ICMP packet of its pod fills, and the pod's sockets' drop",
  "counter (read before any probe stopped) is listed; a pair passes when ping",
  "missed no more replies than that.",
  `TCP: one connection per pair carrying a numbered ${PAD}-byte line every ${LINE_MS} ms`,
  "(busybox nc). Resets: the connection ended before the stop. Line delay:",
  "from the sender's clock reading to the receiver's (/proc/uptime of the one",
  `kernel, 10 ms resolution); over ${TCP_STALL_MAX_MS} ms is a stall. Probes run at nice -10`,
  `in pods requesting ${PROBE_CPU} CPU and write to memory; a delay still includes the`,
  "time a probe waited for a CPU. Gap between lines: at the receiver, sender",
  "pauses included. Length: from the first action to the last one done, plus",
  "3 s measured after. Drop and error counters: /proc/net/snmp, /proc/net/netstat",
  "and /proc/net/dev of the probe pods' and their nodes' namespaces, and the",
  "kernel's input backlog and neighbour table, read before the probes started and",
  "after they stopped; those that count a packet dropped, refused or sent again",
  "and grew are named under the table.",
];

/**
 * Replaces (or appends) section `heading` of bench/results/k8s.md with
 * `intro` (the file, date and commit go first) and the windows' table.
 */
export async function writeSection(
  heading: string,
  source: string,
  intro: readonly string[],
  windows: readonly TrafficWindow[],
  notes: readonly string[] = [],
): Promise<void> {
  const commit = await describeCommit();
  const section = [
    heading,
    "",
    `${source} (part of \`deno task test:k8s\`), ${
      new Date().toISOString().slice(0, 10)
    }, commit ${commit}.`,
    ...intro,
    "",
    ...LEGEND,
    "",
    ...table(windows),
    ...notes.flatMap((n) => ["", n]),
    "",
  ].join("\n");
  // The tier's two lanes (tests/k8s/run.sh) write sections of one file:
  // each read-modify-write holds an exclusive lock on it.
  await withFileLock(RESULTS, true, async () => {
    const text = await Deno.readTextFile(RESULTS);
    const at = text.indexOf(`${heading}\n`);
    const next = at < 0 ? -1 : text.indexOf("\n## ", at + heading.length);
    const updated = at < 0
      ? `${text.trimEnd()}\n\n${section}`
      : `${text.slice(0, at)}${section}${next < 0 ? "" : text.slice(next + 1)}`;
    await Deno.writeTextFile(RESULTS, updated);
  });
}
