/**
 * What the fault suite's etcd-mode clusters share (the IPv4 one in
 * tests/e2e/faults_test.ts, the dual-stack and host-gw ones under
 * tests/faults/): etcd writes through its JSON gateway, fake peers at free
 * subnets, booting a cluster with traffic flowing, and corpus cases that
 * are etcd keys (for tests/faults/corpus_run.ts).
 *
 * @module
 */
import { Cluster, type ClusterOptions, type EtcdLease } from "../_cluster.ts";
import { run } from "../_netns.ts";
import { keyName, type PeerInput } from "./corpus.ts";
import type { CorpusCase, NodeState } from "./corpus_run.ts";
import { b64, FaultRun } from "./run.ts";

/** Where flanneld keeps the leases (the default `--etcd-prefix`). */
export const DIR = "/coreos.com/network/subnets/";

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

  /** A valid fake peer lease (a probe) at `subnet`, default a free one. */
  async probe(
    ipLast = 240,
    at?: string,
  ): Promise<{ key: string; subnet: string }> {
    const subnet = at ?? `10.244.${await this.freeOctet()}.0/24`;
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

  /**
   * A corpus case that writes `input` to etcd; `entries` finds its kernel
   * entries on a node.
   */
  etcdCase(
    name: string,
    expect: "refused" | "programmed",
    input: PeerInput,
    entries: (s: NodeState) => string[],
    check: Pick<CorpusCase, "reason" | "counter"> = {},
  ): CorpusCase {
    return {
      name,
      expect,
      id: input.key,
      write: () => this.put(input.key, input.value),
      remove: () => this.del(input.key),
      entries,
      ...(check.reason && { reason: check.reason }),
      ...(check.counter && { counter: check.counter }),
    };
  }
}
