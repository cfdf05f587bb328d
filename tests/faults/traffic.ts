/**
 * Continuous pod-to-pod traffic for the fault suite: `ping -i 0.05` from
 * one pod to another in the background while a fault is injected, then
 * stopped with SIGINT and its output parsed for loss. Replies are tracked
 * per sequence number (`-O` prints the ones that are late), so the last
 * echo, still in flight when ping is stopped, is not counted as lost.
 *
 * @module
 */

/** What a background ping saw. */
export interface Loss {
  readonly transmitted: number;
  readonly received: number;
  /** Echoes that got no reply, the one in flight at the end excepted. */
  readonly lost: number;
  /** Sequence numbers of the lost echoes. */
  readonly lostSeqs: readonly number[];
  /** ping's summary lines, for messages. */
  readonly summary: string;
}

/** Parses iputils ping output (without `-q`, with `-O`). */
export function parsePingLoss(out: string): Loss {
  const replied = new Set<number>();
  let maxSeq = 0;
  for (const line of out.split("\n")) {
    const seq = line.match(/icmp_seq=(\d+)/);
    if (!seq) continue;
    const n = Number(seq[1]);
    maxSeq = Math.max(maxSeq, n);
    if (/ bytes from /.test(line) && !line.includes("DUP!")) replied.add(n);
  }
  const counts = out.match(/(\d+) packets transmitted, (\d+) received/);
  const transmitted = counts ? Number(counts[1]) : maxSeq;
  const lostSeqs: number[] = [];
  // The last echo may still be on the wire when ping is interrupted.
  for (let s = 1; s < transmitted; s++) if (!replied.has(s)) lostSeqs.push(s);
  const summary = out.split("\n").filter((l) =>
    /packets transmitted|rtt |errors/.test(l)
  ).join("; ");
  return {
    transmitted,
    received: counts ? Number(counts[2]) : replied.size,
    lost: lostSeqs.length,
    lostSeqs,
    summary,
  };
}

/** A background `ping` from inside a namespace. */
export class BackgroundPing {
  readonly from: string;
  readonly to: string;
  readonly #child: Deno.ChildProcess;
  readonly #out: Promise<string>;
  #stopped: Promise<Loss> | undefined;

  private constructor(from: string, to: string, child: Deno.ChildProcess) {
    this.from = from;
    this.to = to;
    this.#child = child;
    this.#out = new Response(child.stdout).text();
  }

  /**
   * Starts `ping -n -O -i interval dst` inside namespace `netns`.
   * Intervals below 0.2 s need root.
   */
  static start(netns: string, dst: string, intervalS = 0.05): BackgroundPing {
    const child = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        netns,
        "ping",
        "-n",
        "-O",
        "-i",
        String(intervalS),
        dst,
      ],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    return new BackgroundPing(netns, dst, child);
  }

  /** Stops ping (SIGINT: it prints its summary) and returns the loss. */
  stop(): Promise<Loss> {
    this.#stopped ??= (async () => {
      // `ip netns exec` execs ping, so the signal reaches ping itself.
      try {
        this.#child.kill("SIGINT");
      } catch { /* already exited */ }
      const timer = setTimeout(() => {
        try {
          this.#child.kill("SIGKILL");
        } catch { /* exited */ }
      }, 3000);
      await this.#child.status;
      clearTimeout(timer);
      return parsePingLoss(await this.#out);
    })();
    return this.#stopped;
  }
}
