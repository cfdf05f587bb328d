/**
 * A corpus run of the fault suite, wherever its inputs go (etcd keys,
 * Node objects): every case is written at once while pods ping, then
 * node1 is restarted with them present. Each refused case must be named
 * in a warning on every node, with a reason (the one the case expects,
 * when it names one), and leave no kernel entry anywhere; every node's
 * `weft_peers_refused_total` must move by at least the refusals its lease
 * table warned about (`Skipping ...` lines), by label where a case names
 * the label it expects; the
 * controls and the real peers must be programmed exactly, nothing may be
 * lost. One row for the whole run, then one per case; the cases are
 * removed at the end.
 *
 * @module
 */
import type { ClusterNode, EtcdLease } from "../_cluster.ts";
import {
  judgeEntries,
  type OverlayState,
  readOverlay,
  V4,
  V6,
} from "./kernel.ts";
import { fmtMs } from "./report.ts";
import { quote } from "../../lib/log.ts";
import { Checks, type FaultRun, lossText, waitUntil } from "./run.ts";
import { samples } from "../_metrics.ts";

/** A node's overlays, as a corpus case inspects them. */
export interface NodeState {
  readonly v4: OverlayState;
  /** Only on a dual-stack cluster. */
  readonly v6?: OverlayState;
}

/** One input of a corpus run. */
export interface CorpusCase {
  readonly name: string;
  /** `refused`: warned about, never programmed; `programmed`: a control. */
  readonly expect: "refused" | "programmed";
  /** What a warning about it quotes: the etcd key or the node name. */
  readonly id: string;
  /** Writes it; throws when the store refuses it. */
  readonly write: () => Promise<unknown>;
  readonly remove: () => Promise<unknown>;
  /** The kernel entries on a node that can only come from this case. */
  readonly entries: (s: NodeState) => string[];
  /** What the warning must say after the quoted id, when it matters. */
  readonly reason?: RegExp;
  /** The `weft_peers_refused_total` label the refusal must count under. */
  readonly counter?: string;
}

/** Options of {@linkcode corpusRun}. */
export interface CorpusOptions {
  readonly section: string;
  readonly cases: readonly CorpusCase[];
  /** What every node must program meanwhile: the real leases and controls. */
  readonly expected: readonly EtcdLease[];
  /**
   * Pods pinging each other meanwhile: [from, to, family] (default
   * node1→node2 over IPv4).
   */
  readonly pings?: readonly (readonly [string, string, (4 | 6)?])[];
  /** The nodes running agents (the first is the one restarted). */
  readonly live: readonly ClusterNode[];
  /** Restarts a node's agent as the run started it. */
  readonly restart: (n: ClusterNode) => Promise<unknown>;
  /** What a case is, in the expectation: `key` or `node`. */
  readonly noun: string;
}

/** A node's warnings since `offset`: a test for a quoted id. */
export async function warnedIn(
  s: FaultRun,
  n: ClusterNode,
  offset: number,
): Promise<(id: string) => boolean> {
  const lines = (await s.logSince(n, offset)).split("\n").filter((l) =>
    l.startsWith("W")
  );
  return (id: string) => lines.some((l) => l.includes(quote(id)));
}

/**
 * The warning about `id` in a node's warnings since `offset`: the text
 * after `"<id>": ` and whether the lease table wrote it (`Skipping`).
 */
export async function warningsIn(
  s: FaultRun,
  n: ClusterNode,
  offset: number,
): Promise<(id: string) => { reason: string; table: boolean } | undefined> {
  const lines = (await s.logSince(n, offset)).split("\n").filter((l) =>
    l.startsWith("W")
  );
  return (id: string) => {
    const tag = `${quote(id)}: `;
    const line = lines.find((l) => l.includes(tag));
    if (line === undefined) return undefined;
    return {
      reason: line.slice(line.indexOf(tag) + tag.length),
      table: line.includes("] Skipping "),
    };
  };
}

/** A node's `weft_peers_refused_total` by label (empty when unreadable). */
export async function refusedCounts(
  n: ClusterNode,
): Promise<Map<string, number>> {
  const r = await n.ns.tryExec([
    "curl",
    "-s",
    "-m",
    "2",
    `http://127.0.0.1:${n.healthPort}/metrics`,
  ]);
  return samples(r.stdout, "weft_peers_refused_total", "reason");
}

/** Runs a corpus (see the module doc) on `s`. */
export async function corpusRun(s: FaultRun, o: CorpusOptions): Promise<void> {
  const { section, cases, expected, live } = o;
  const all = [...live];
  const n1 = all[0]!;
  const pings = (o.pings ?? [["node1-pod1", "node2-pod1"]]).map((
    [a, b, f],
  ) => s.ping(a, b, f));
  const offsets = new Map<ClusterNode, number>();
  const countsBefore = new Map<ClusterNode, Map<string, number>>();
  for (const n of live) {
    offsets.set(n, await s.logSize(n));
    countsBefore.set(n, await refusedCounts(n));
  }
  const reasons = cases.map(() => new Set<string>());
  const failures = cases.map(() => [] as string[]);
  const stored = cases.map(() => true);
  for (const [i, k] of cases.entries()) {
    try {
      await k.write();
    } catch (e) {
      stored[i] = false;
      failures[i]!.push(`not stored: ${(e as Error).message.slice(0, 200)}`);
    }
  }

  const refused = cases.filter((k, i) => k.expect === "refused" && stored[i]);
  const allWarned = async (nodes: readonly ClusterNode[]) => {
    for (const n of nodes) {
      const w = await warnedIn(s, n, offsets.get(n)!);
      if (!refused.every((k) => w(k.id))) return false;
    }
    return true;
  };
  const warnMs = await waitUntil(() => allWarned(live), 15_000, 200);
  const convMs = await s.converged(all, 10_000, expected);

  const dual = s.c.opts.ipv6 ?? false;
  const inspect = async (round: string, nodes: readonly ClusterNode[]) => {
    for (const n of nodes) {
      const state: NodeState = {
        v4: await readOverlay(n.ns, V4),
        ...(dual && { v6: await readOverlay(n.ns, V6) }),
      };
      const w = await warnedIn(s, n, offsets.get(n)!);
      const why = await warningsIn(s, n, offsets.get(n)!);
      // What the lease table refused, by the label each case names ("" for
      // any): the counter must have moved at least that much.
      const want = new Map<string, number>();
      for (const [i, k] of cases.entries()) {
        failures[i]!.push(
          ...judgeEntries(k.expect, k.entries(state), `${round}: ${n.name}`),
        );
        if (k.expect !== "refused" || !stored[i]) continue;
        if (!w(k.id)) {
          failures[i]!.push(
            `${round}: no warning naming the ${o.noun} on ${n.name}`,
          );
          continue;
        }
        const seen = why(k.id);
        if (seen === undefined || seen.reason.trim() === "") {
          failures[i]!.push(
            `${round}: no reason after the ${o.noun} on ${n.name}`,
          );
          continue;
        }
        reasons[i]!.add(seen.reason.slice(0, 120));
        if (k.reason && !k.reason.test(seen.reason)) {
          failures[i]!.push(
            `${round}: on ${n.name} the reason is ${
              JSON.stringify(seen.reason.slice(0, 160))
            }, not ${k.reason}`,
          );
        }
        if (seen.table) {
          want.set("", (want.get("") ?? 0) + 1);
          if (k.counter) want.set(k.counter, (want.get(k.counter) ?? 0) + 1);
        }
      }
      const before = round === "live" ? countsBefore.get(n)! : new Map();
      const after = await refusedCounts(n);
      const delta = (label: string) =>
        label === ""
          ? [...after].reduce((a, [l, v]) => a + v - (before.get(l) ?? 0), 0)
          : (after.get(label) ?? 0) - (before.get(label) ?? 0);
      for (const [label, count] of want) {
        if (delta(label) >= count) continue;
        const text = `${round}: ${n.name}'s weft_peers_refused_total${
          label ? `{reason="${label}"}` : ""
        } moved by ${
          delta(label)
        }, not by the ${count} refusals it warned about`;
        for (const [i, k] of cases.entries()) {
          if (k.expect === "refused" && (label === "" || k.counter === label)) {
            failures[i]!.push(text);
          }
        }
      }
    }
  };
  await inspect("live", live);

  // The relist must refuse the same inputs and keep the real peers.
  offsets.set(n1, await s.logSize(n1));
  await s.stop(n1);
  await o.restart(n1);
  const ready = await s.c.waitReady(n1, 30_000).catch(() => undefined);
  const conv2 = await s.converged(all, 10_000, expected);
  await waitUntil(() => allWarned([n1]), 10_000, 200);
  await inspect(`after ${n1.name} restart`, [n1]);

  const chk = new Checks();
  const down: string[] = [];
  for (const n of live) {
    if (!(await s.alive(n))) down.push(`${n.name} exited`);
    for (const path of ["/healthz", "/readyz"]) {
      const code = await s.httpCode(n, path);
      if (code !== "200") down.push(`${n.name} ${path} ${code}`);
    }
  }
  const losses = await Promise.all(pings.map((p) => p.stop()));
  const lost = losses.reduce((a, l) => a + l.lost, 0);
  chk.that(down.length === 0, down.join(", "));
  chk.that(lost === 0, `${lost} lost`);
  chk.that(
    warnMs !== undefined,
    "not every input was warned about within 15 s",
  );
  chk.that(
    convMs !== undefined,
    `valid peers affected: ${(await s.problems(all, expected)).join(", ")}`,
  );
  chk.that(ready !== undefined, `${n1.name} not ready after its restart`);
  chk.that(
    conv2 !== undefined,
    `after ${n1.name}'s restart: ${
      (await s.problems(all, expected)).join(", ")
    }`,
  );
  s.row({
    section,
    fault:
      `all ${cases.length} cases written at once, then ${n1.name} restarted with them present`,
    expected:
      "no crash, healthz/readyz 200, zero loss, valid peers programmed exactly",
    lost: losses.map(lossText).join(" + "),
    recovery: `warned ${fmtMs(warnMs)}; ${n1.name} ready ${fmtMs(ready)}`,
    outcome: chk.outcome(),
  });
  for (const [i, k] of cases.entries()) {
    const f = failures[i]!;
    s.row({
      section,
      fault: k.name,
      expected: k.expect === "refused"
        ? `warning names the ${o.noun} with ${
          k.reason ? `the reason ${k.reason.source}` : "a reason"
        }; refusal counted${
          k.counter ? ` as ${k.counter}` : ""
        }; no kernel entry on any node`
        : "programmed on every node",
      lost: "—",
      recovery: "—",
      outcome: f.length > 0
        ? { kind: "fail", why: f.join("; ") }
        : reasons[i]!.size > 0
        ? { kind: "pass", note: `reason: ${[...reasons[i]!].join(" / ")}` }
        : { kind: "pass" },
    });
  }

  for (const [i, k] of cases.entries()) if (stored[i]) await k.remove();
  const clean = await s.converged(all, 10_000);
  if (clean === undefined) {
    throw new Error(
      `Cluster did not recover from the corpus: ${
        (await s.problems(all)).join(", ")
      }`,
    );
  }
}
