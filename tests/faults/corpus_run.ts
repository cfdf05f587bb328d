/**
 * A corpus run of the fault suite, wherever its inputs go (etcd keys,
 * Node objects): every case is written at once while pods ping, then
 * node1 is restarted with them present. Each refused case must be named
 * in a warning on every node and leave no kernel entry anywhere, the
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
import { Checks, type FaultRun, lossText, waitUntil } from "./run.ts";

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
  return (id: string) => lines.some((l) => l.includes(`"${id}"`));
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
  for (const n of live) offsets.set(n, await s.logSize(n));
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
      for (const [i, k] of cases.entries()) {
        failures[i]!.push(
          ...judgeEntries(k.expect, k.entries(state), `${round}: ${n.name}`),
        );
        if (k.expect === "refused" && stored[i] && !w(k.id)) {
          failures[i]!.push(
            `${round}: no warning naming the ${o.noun} on ${n.name}`,
          );
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
        ? `warning names the ${o.noun}; no kernel entry on any node`
        : "programmed on every node",
      lost: "—",
      recovery: "—",
      outcome: f.length > 0
        ? { kind: "fail", why: f.join("; ") }
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
