/**
 * What the fault suite's etcd-mode clusters share (the IPv4 one in
 * tests/e2e/faults_test.ts, the dual-stack and host-gw ones under
 * tests/faults/): etcd writes through its JSON gateway, fake peers at free
 * subnets, booting a cluster with traffic flowing, and the peer corpus
 * run, which writes every case at once, restarts node1 with them present
 * and gives each case its row.
 *
 * @module
 */
import {
  Cluster,
  type ClusterNode,
  type ClusterOptions,
  type EtcdLease,
} from "../_cluster.ts";
import { run } from "../_netns.ts";
import type { PeerInput } from "./corpus.ts";
import { keyName } from "./corpus.ts";
import {
  judgeEntries,
  type OverlayState,
  readOverlay,
  V4,
  V6,
} from "./kernel.ts";
import { type FaultRow, fmtMs } from "./report.ts";
import { b64, Checks, FaultRun, lossText, waitUntil } from "./run.ts";

/** Where flanneld keeps the leases (the default `--etcd-prefix`). */
export const DIR = "/coreos.com/network/subnets/";

/** A node's overlays, as a corpus case inspects them. */
export interface NodeState {
  readonly v4: OverlayState;
  /** Only on a dual-stack cluster. */
  readonly v6?: OverlayState;
}

/** One input of a corpus run, ready to write. */
export interface CorpusCase {
  readonly name: string;
  /** `refused`: warned about, never programmed; `programmed`: a control. */
  readonly expect: "refused" | "programmed";
  readonly input: PeerInput;
  /** The kernel entries on a node that can only come from this case. */
  readonly entries: (s: NodeState) => string[];
}

/** Options of {@linkcode EtcdRun.corpus}. */
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
  /** The nodes running agents (node1 is the one restarted). */
  readonly live: readonly ClusterNode[];
}

/** A fault run whose leases live in etcd. */
export abstract class EtcdRun extends FaultRun {
  /** Third octets the suite may use for fake subnets, never a node's. */
  #freeOctets: number[] = [];

  /**
   * Creates a cluster, with one retry: a busy machine (pid reuse, a
   * neighbour's cleanup) can break the build of the namespaces.
   */
  static async cluster(opts: ClusterOptions): Promise<Cluster> {
    return await Cluster.create(opts).catch((e) => {
      console.warn(`Cluster.create failed, retrying once: ${e}`);
      return Cluster.create(opts);
    });
  }

  /**
   * Starts the nodes' agents and pods, waits for convergence and checks
   * that node1's pod reaches node2's over each of `families`; closes the
   * cluster if any of it fails.
   */
  async boot(nodes: ClusterNode[], families: (4 | 6)[] = [4]): Promise<void> {
    try {
      for (const n of nodes) await this.start(n);
      for (const n of nodes) await this.c.waitReady(n);
      for (const n of nodes) await this.c.addPod(n, 1);
      if ((await this.converged(nodes, 20_000)) === undefined) {
        throw new Error(
          `Cluster did not converge: ${
            (await this.problems(nodes)).join("; ")
          }`,
        );
      }
      const to = this.c.pod("node2-pod1");
      for (const f of families) {
        const dst = f === 4 ? to.ip : to.ip6;
        if (dst === undefined) throw new Error(`Pod has no IPv${f} address`);
        // The first IPv6 echoes can wait for neighbour discovery.
        const warm = await this.c.pingRun("node1-pod1", dst, {
          count: 3,
          interval: 0.2,
          deadline: 8,
        });
        if (warm.received === 0) {
          throw new Error(`No traffic between pods (${dst}): ${warm.text}`);
        }
      }
    } catch (e) {
      await this.c.close();
      throw e;
    }
  }

  leases(): Promise<EtcdLease[]> {
    return this.c.leases();
  }

  /** Raw etcd JSON gateway call from inside the switch namespace. */
  async etcd(path: string, body: unknown): Promise<Record<string, unknown>> {
    const r = await run([
      "ip",
      "netns",
      "exec",
      this.c.hub.name,
      "curl",
      "-s",
      "-m",
      "10",
      "-X",
      "POST",
      "--data-binary",
      "@-",
      `http://127.0.0.1:2379${path}`,
    ], JSON.stringify(body));
    if (r.code !== 0) throw new Error(`curl ${path}: ${r.stderr}`);
    const j = JSON.parse(r.stdout) as Record<string, unknown>;
    if (j.error !== undefined) throw new Error(`etcd ${path}: ${r.stdout}`);
    return j;
  }

  async put(key: string, value: string | Uint8Array): Promise<void> {
    await this.etcd("/v3/kv/put", { key: b64(key), value: b64(value) });
  }

  async del(key: string): Promise<void> {
    await this.etcd("/v3/kv/deleterange", { key: b64(key) });
  }

  /** A fake subnet's third octet nobody uses; each call a new one. */
  async freeOctet(): Promise<number> {
    if (this.#freeOctets.length === 0) {
      const used = new Set(
        (await this.c.leases()).map((l) => Number(l.subnet.split(".")[2])),
      );
      for (let o = 253; o >= 110; o--) {
        if (!used.has(o)) this.#freeOctets.push(o);
      }
    }
    const o = this.#freeOctets.shift();
    if (o === undefined) throw new Error("No free subnet left for fakes");
    return o;
  }

  /** A valid fake peer lease (a probe) at a free subnet. */
  async probe(ipLast = 240): Promise<{ key: string; subnet: string }> {
    const subnet = `10.244.${await this.freeOctet()}.0/24`;
    const key = DIR + keyName(subnet);
    await this.put(
      key,
      JSON.stringify({
        PublicIP: `198.18.0.${ipLast}`,
        PublicIPv6: null,
        BackendType: "vxlan",
        BackendData: {
          VNI: 1,
          VtepMAC: `0a:fb:00:00:00:${ipLast.toString(16).padStart(2, "0")}`,
        },
      }),
    );
    return { key, subnet };
  }

  /** Lines starting with `W` since `offset`: a test for a quoted key. */
  async warnedIn(
    n: ClusterNode,
    offset: number,
  ): Promise<(key: string) => boolean> {
    const lines = (await this.logSince(n, offset)).split("\n").filter((l) =>
      l.startsWith("W")
    );
    return (key: string) => lines.some((l) => l.includes(`"${key}"`));
  }

  /**
   * Writes every case at once while pods ping, then restarts node1 with
   * them in etcd: each refused case must be named in a warning on every
   * node and leave no kernel entry anywhere, the controls and the real
   * peers must be programmed exactly, nothing may be lost. One row for the
   * whole run, then one per case; the cases are deleted at the end.
   */
  async corpus(o: CorpusOptions): Promise<void> {
    const { section, cases, expected, live } = o;
    const n1 = live[0]!;
    const pings = (o.pings ?? [["node1-pod1", "node2-pod1"]]).map((
      [a, b, f],
    ) => this.ping(a, b, f));
    const offsets = new Map<ClusterNode, number>();
    for (const n of live) offsets.set(n, await this.logSize(n));
    for (const k of cases) await this.put(k.input.key, k.input.value);

    const refused = cases.filter((k) => k.expect === "refused");
    const allWarned = async (nodes: readonly ClusterNode[]) => {
      for (const n of nodes) {
        const w = await this.warnedIn(n, offsets.get(n)!);
        if (!refused.every((k) => w(k.input.key))) return false;
      }
      return true;
    };
    const warnMs = await waitUntil(() => allWarned(live), 15_000, 200);
    const convMs = await this.converged([...live], 10_000, expected);

    const failures = cases.map(() => [] as string[]);
    const dual = this.c.opts.ipv6 ?? false;
    const inspect = async (round: string, nodes: readonly ClusterNode[]) => {
      for (const n of nodes) {
        const s: NodeState = {
          v4: await readOverlay(n.ns, V4),
          ...(dual && { v6: await readOverlay(n.ns, V6) }),
        };
        const w = await this.warnedIn(n, offsets.get(n)!);
        for (const [i, k] of cases.entries()) {
          failures[i]!.push(
            ...judgeEntries(k.expect, k.entries(s), `${round}: ${n.name}`),
          );
          if (k.expect === "refused" && !w(k.input.key)) {
            failures[i]!.push(
              `${round}: no warning naming the key on ${n.name}`,
            );
          }
        }
      }
    };
    await inspect("live", live);

    // The relist must refuse the same keys and keep the real peers.
    offsets.set(n1, await this.logSize(n1));
    await this.stop(n1);
    await this.start(n1);
    const ready = await this.c.waitReady(n1, 20_000).catch(() => undefined);
    const conv2 = await this.converged([...live], 10_000, expected);
    await waitUntil(() => allWarned([n1]), 10_000, 200);
    await inspect("after node1 restart", [n1]);

    const chk = new Checks();
    const down: string[] = [];
    for (const n of live) {
      if (!(await this.alive(n))) down.push(`${n.name} exited`);
      for (const path of ["/healthz", "/readyz"]) {
        const code = await this.httpCode(n, path);
        if (code !== "200") down.push(`${n.name} ${path} ${code}`);
      }
    }
    const losses = await Promise.all(pings.map((p) => p.stop()));
    const lost = losses.reduce((a, l) => a + l.lost, 0);
    chk.that(down.length === 0, down.join(", "));
    chk.that(lost === 0, `${lost} lost`);
    chk.that(
      warnMs !== undefined,
      "not every key was warned about within 15 s",
    );
    chk.that(
      convMs !== undefined,
      `valid peers affected: ${
        (await this.problems([...live], expected)).join(", ")
      }`,
    );
    chk.that(ready !== undefined, "node1 not ready after its restart");
    chk.that(
      conv2 !== undefined,
      `after node1's restart: ${
        (await this.problems([...live], expected)).join(", ")
      }`,
    );
    this.row({
      section,
      fault:
        `all ${cases.length} cases written at once, then node1 restarted with them in etcd`,
      expected:
        "no crash, healthz/readyz 200, zero loss, valid peers programmed exactly",
      lost: losses.map(lossText).join(" + "),
      recovery: `warned ${fmtMs(warnMs)}; node1 ready ${fmtMs(ready)}`,
      outcome: chk.outcome(),
    });
    for (const [i, k] of cases.entries()) {
      const f = failures[i]!;
      this.row(caseRow(section, k, f));
    }

    for (const k of cases) await this.del(k.input.key);
    const clean = await this.converged([...live], 10_000);
    if (clean === undefined) {
      throw new Error(
        `Cluster did not recover from the corpus: ${
          (await this.problems([...live])).join(", ")
        }`,
      );
    }
  }
}

function caseRow(section: string, k: CorpusCase, failures: string[]): FaultRow {
  return {
    section,
    fault: k.name,
    expected: k.expect === "refused"
      ? "warning names the key; no kernel entry on any node"
      : "programmed on every node",
    lost: "—",
    recovery: "—",
    outcome: failures.length > 0
      ? { kind: "fail", why: failures.join("; ") }
      : { kind: "pass" },
  };
}
