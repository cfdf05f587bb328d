/**
 * Benchmark (not a test) of the Kubernetes node watcher's footprint: with
 * N realistic Nodes (status with conditions, addresses, capacity, node
 * info and ~30 container images with long names; flannel annotations) in a
 * real kube-apiserver, it measures for weft's slim watcher
 * (`KubeSubnetManager.watchLeases`, which keeps a few hundred bytes per
 * node) and for a variant that keeps the whole Node objects (what an
 * informer cache, and so flanneld, holds):
 *
 * - time to first full sync: from the start of the watch to the first
 *   batch of lease events (LIST pages included);
 * - RSS after the sync and a full GC (`Deno.memoryUsage().rss`), and the
 *   RSS of the same process before it started watching;
 * - body bytes received (after gzip decoding).
 *
 * Each variant runs in its own child process so the numbers do not mix.
 *
 * Run: `deno run -A bench/kube.ts [N...]` (default 1000 5000). Needs the
 * servers built by `.ci/build_servers.sh`.
 *
 * @module
 */
import { KubeServers } from "../tests/servers/kube.ts";
import { KubeSubnetManager } from "../subnet/kube/manager.ts";
import { connect } from "../subnet/kube/client.ts";
import {
  annotationKeys,
  nodeToLease,
  podCidrsOf,
  type SlimNode,
} from "../subnet/kube/node.ts";
import { NodeWatcher } from "../subnet/kube/watch.ts";
import { LeaseTable } from "../subnet/lease_table.ts";
import { parseNetConfig } from "../subnet/config.ts";
import { ok, unwrap } from "../lib/result.ts";
import { setLogSink } from "../lib/log.ts";
import { machine } from "./_stats.ts";

const NET_CONF = '{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}';
const P = "flannel.alpha.coreos.com";

/** The two ways of watching nodes. */
export type Variant = "slim" | "whole";

/** What one child process measured. */
export interface Measurement {
  readonly variant: Variant;
  readonly n: number;
  /** Start of the watch to the first batch of lease events, ms. */
  readonly syncMs: number;
  /** RSS after the sync and a full GC, bytes. */
  readonly rss: number;
  /** RSS of the same process before watching, bytes. */
  readonly rssBefore: number;
  /** V8 heap in use after the sync and GC, bytes. */
  readonly heapUsed: number;
  /** V8 heap reserved, and memory outside it (buffers), bytes. */
  readonly heapTotal: number;
  readonly external: number;
  /** Response body bytes (decoded). */
  readonly bytes: number;
  /** Peer leases known at sync. */
  readonly leases: number;
}

/** One line of the result table. */
export interface Row {
  readonly n: number;
  readonly slim: Measurement;
  readonly whole: Measurement;
}

const hex = (i: number, len: number) =>
  Array.from(
    { length: len },
    (_, k) => ((i * 2654435761 + k * 40503) >>> 0) % 16,
  )
    .map((d) => d.toString(16)).join("");

/** A Node as a kubelet of a busy cluster registers and updates it. */
export function realisticNode(i: number): Record<string, unknown> {
  const name = `ip-10-${(i >> 8) & 255}-${i & 255}-${
    (i * 7) % 250
  }.eu-west-1.compute.internal`;
  const subnet = `10.${1 + (i >> 8)}.${i & 255}.0/24`;
  const now = "2026-11-22T02:00:00Z";
  const images = Array.from({ length: 30 }, (_, j) => ({
    names: [
      `123456789012.dkr.ecr.eu-west-1.amazonaws.com/platform/team-${j}/service-component-${j}@sha256:${
        hex(i * 31 + j, 64)
      }`,
      `123456789012.dkr.ecr.eu-west-1.amazonaws.com/platform/team-${j}/service-component-${j}:v1.${j}.${
        i % 10
      }-build.${1000 + j}`,
    ],
    sizeBytes: 50_000_000 + j * 1_234_567,
  }));
  const cond = (
    type: string,
    status: string,
    reason: string,
    message: string,
  ) => ({
    type,
    status,
    lastHeartbeatTime: now,
    lastTransitionTime: now,
    reason,
    message,
  });
  return {
    metadata: {
      name,
      labels: {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/instance-type": "m6i.2xlarge",
        "beta.kubernetes.io/os": "linux",
        "failure-domain.beta.kubernetes.io/region": "eu-west-1",
        "failure-domain.beta.kubernetes.io/zone": `eu-west-1${"abc"[i % 3]}`,
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "m6i.2xlarge",
        "topology.kubernetes.io/region": "eu-west-1",
        "topology.kubernetes.io/zone": `eu-west-1${"abc"[i % 3]}`,
        "node-pool": `pool-${i % 7}`,
      },
      annotations: {
        [`${P}/backend-data`]: `{"VNI":1,"VtepMAC":"0a:${
          hex(i, 10).match(/../g)!.join(":")
        }"}`,
        [`${P}/backend-type`]: "vxlan",
        [`${P}/kube-subnet-manager`]: "true",
        [`${P}/public-ip`]: `172.${16 + (i >> 16)}.${(i >> 8) & 255}.${
          i & 255
        }`,
        "kubeadm.alpha.kubernetes.io/cri-socket":
          "unix:///run/containerd/containerd.sock",
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
      },
    },
    spec: {
      podCIDR: subnet,
      podCIDRs: [subnet],
      providerID: `aws:///eu-west-1a/i-0${hex(i, 16)}`,
    },
    status: {
      capacity: {
        cpu: "8",
        "ephemeral-storage": "104845292Ki",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        memory: "32386292Ki",
        pods: "110",
      },
      allocatable: {
        cpu: "7910m",
        "ephemeral-storage": "95551679124",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        memory: "31369460Ki",
        pods: "110",
      },
      conditions: [
        cond(
          "MemoryPressure",
          "False",
          "KubeletHasSufficientMemory",
          "kubelet has sufficient memory available",
        ),
        cond(
          "DiskPressure",
          "False",
          "KubeletHasNoDiskPressure",
          "kubelet has no disk pressure",
        ),
        cond(
          "PIDPressure",
          "False",
          "KubeletHasSufficientPID",
          "kubelet has sufficient PID available",
        ),
        cond(
          "Ready",
          "True",
          "KubeletReady",
          "kubelet is posting ready status",
        ),
        cond(
          "NetworkUnavailable",
          "False",
          "FlannelIsUp",
          "Flannel is running on this node",
        ),
      ],
      addresses: [
        { type: "InternalIP", address: `172.16.${(i >> 8) & 255}.${i & 255}` },
        { type: "ExternalIP", address: `203.0.${(i >> 8) & 255}.${i & 255}` },
        { type: "Hostname", address: name },
        { type: "InternalDNS", address: name },
      ],
      daemonEndpoints: { kubeletEndpoint: { Port: 10250 } },
      nodeInfo: {
        machineID: hex(i, 32),
        systemUUID: `ec2${hex(i, 5)}-${hex(i + 1, 4)}-${hex(i + 2, 4)}-${
          hex(i + 3, 4)
        }-${hex(i + 4, 12)}`,
        bootID: `${hex(i + 5, 8)}-${hex(i + 6, 4)}-${hex(i + 7, 4)}-${
          hex(i + 8, 4)
        }-${hex(i + 9, 12)}`,
        kernelVersion: "6.1.0-28-cloud-amd64",
        osImage: "Debian GNU/Linux 12 (bookworm)",
        containerRuntimeVersion: "containerd://1.7.24",
        kubeletVersion: "v1.36.3",
        kubeProxyVersion: "v1.36.3",
        operatingSystem: "linux",
        architecture: "amd64",
      },
      images,
    },
  };
}

/** Makes sure the cluster holds nodes 0..n-1 (creates the missing ones). */
async function populate(
  k: KubeServers,
  from: number,
  n: number,
  concurrency = 24,
): Promise<void> {
  let next = from;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      await k.createNode(realisticNode(i));
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  g?.();
}

async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Runs one variant in this process (the child side). */
export async function measure(
  variant: Variant,
  n: number,
  kubeconfigFile: string,
  netConfigPath: string,
): Promise<Measurement> {
  setLogSink(() => {});
  await settle();
  const rssBefore = Deno.memoryUsage().rss;
  const signal = new AbortController();
  let syncAt = 0;
  let leases = 0;
  let bytes = 0;
  const t0 = performance.now();
  // Held until the measurement is taken.
  const keep: unknown[] = [];
  if (variant === "slim") {
    const sm = await KubeSubnetManager.create(
      {
        kubeApiUrl: "",
        kubeconfigFile,
        kubeAnnotationPrefix: P,
        netConfigPath,
        setNodeNetworkUnavailable: false,
      },
      signal.signal,
      { env: (v) => v === "NODE_NAME" ? "bench-self" : undefined },
    );
    keep.push(sm);
    // The first listing comes in batches (`partial`) before the complete
    // set; the sync is the complete set.
    const seen = new Set<string>();
    await new Promise<void>((resolve) => {
      sm.watchLeases((events, partial) => {
        if (syncAt !== 0) return;
        for (const e of events) {
          if (e.type === "added") seen.add(e.lease.key);
          else seen.delete(e.lease.key);
        }
        if (partial) return;
        syncAt = performance.now();
        leases = seen.size;
        bytes = sm.client.bytesReceived;
        resolve();
      }, signal.signal).catch(() => {});
    });
  } else {
    // The informer way: the same LIST and WATCH, but the cache keeps each
    // Node object whole and leases are derived from it.
    const client = await connect({ kubeconfigFile });
    const keys = unwrap(annotationKeys(P));
    const config = unwrap(
      parseNetConfig(await Deno.readTextFile(netConfigPath)),
    );
    const cache = new Map<string, unknown>();
    const table = new LeaseTable(config, {
      ownKey: "bench-self",
      noun: "node",
    });
    const toLease = (obj: unknown) => {
      const o = obj as {
        metadata: { name: string; annotations?: Record<string, string> };
        spec?: unknown;
      };
      const slim: SlimNode = {
        name: o.metadata.name,
        podCIDRs: podCidrsOf(o.spec),
        annotations: o.metadata.annotations ?? {},
      };
      return nodeToLease(slim, keys, config);
    };
    // "Slimming" that keeps a reference to the whole object.
    const whole = (obj: unknown) => {
      const o = obj as { metadata: { name: string } };
      return ok(
        {
          name: o.metadata.name,
          podCIDRs: [],
          annotations: {},
          obj,
        } as SlimNode,
      );
    };
    const watcher = new NodeWatcher(client, whole);
    keep.push(cache, table, client);
    await new Promise<void>((resolve) => {
      watcher.run({
        sync: (nodes, at) => {
          cache.clear();
          const listing = new Map();
          for (const [name, s] of nodes) {
            const obj = (s as unknown as { obj: unknown }).obj;
            cache.set(name, obj);
            listing.set(name, toLease(obj));
          }
          const events = table.replaceAll(listing, at);
          if (syncAt === 0) {
            syncAt = performance.now();
            leases = events.length;
            bytes = client.bytesReceived;
            resolve();
          }
        },
        upsert: (s, at) => {
          const obj = (s as unknown as { obj: unknown }).obj;
          cache.set(s.name, obj);
          table.update(s.name, toLease(obj), at);
        },
        remove: (name, at) => {
          cache.delete(name);
          table.remove(name, at);
        },
      }, signal.signal).catch(() => {});
    });
  }
  await settle();
  const mem = Deno.memoryUsage();
  const out: Measurement = {
    variant,
    n,
    syncMs: syncAt - t0,
    rss: mem.rss,
    rssBefore,
    heapUsed: mem.heapUsed,
    heapTotal: mem.heapTotal,
    external: mem.external,
    bytes,
    leases,
  };
  signal.abort();
  keep.length = 0;
  return out;
}

async function child(
  variant: Variant,
  n: number,
  kubeconfig: string,
  netConf: string,
): Promise<Measurement> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--v8-flags=--expose-gc",
      new URL(import.meta.url).pathname,
      "--child",
      variant,
      String(n),
      kubeconfig,
      netConf,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (out.code !== 0) {
    throw new Error(
      `bench child ${variant} exited ${out.code}: ${
        new TextDecoder().decode(out.stderr)
      }`,
    );
  }
  return JSON.parse(text.split("\n").at(-1)!) as Measurement;
}

/** Options of {@linkcode benchKube}. */
export interface KubeBenchOptions {
  /** Progress lines (stderr in the CLI). */
  readonly progress?: (line: string) => void;
}

/**
 * Measures both variants at each size in `ns` (ascending; the cluster
 * grows between sizes) against one fresh control plane.
 */
export async function benchKube(
  ns: number[] = [1000, 5000],
  opts: KubeBenchOptions = {},
): Promise<Row[]> {
  const progress = opts.progress ?? (() => {});
  await using k = await KubeServers.start();
  const dir = await Deno.makeTempDir({ prefix: "weft-bench-kube-" });
  try {
    const kubeconfig = await k.writeKubeconfig(`${dir}/kubeconfig`, {
      token: k.adminToken,
    });
    const netConf = `${dir}/net-conf.json`;
    await Deno.writeTextFile(netConf, NET_CONF);
    const rows: Row[] = [];
    let have = 0;
    for (const n of [...ns].sort((a, b) => a - b)) {
      const t0 = performance.now();
      await populate(k, have, n);
      have = n;
      progress(
        `${n} nodes in the API server (${
          JSON.stringify(realisticNode(0)).length
        } bytes each as posted), created in ${
          ((performance.now() - t0) / 1000).toFixed(1)
        }s`,
      );
      // Warm the apiserver's watch cache and page path once.
      await child("slim", n, kubeconfig, netConf);
      const slim = await child("slim", n, kubeconfig, netConf);
      progress(`  slim:  ${JSON.stringify(slim)}`);
      const whole = await child("whole", n, kubeconfig, netConf);
      progress(`  whole: ${JSON.stringify(whole)}`);
      for (const m of [slim, whole]) {
        if (m.leases !== n) {
          throw new Error(`${m.variant} saw ${m.leases} leases, expected ${n}`);
        }
      }
      rows.push({ n, slim, whole });
    }
    return rows;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

const mib = (b: number) => (b / (1 << 20)).toFixed(1);

/** The rows as a markdown table. */
export function formatRows(rows: Row[]): string {
  const lines = [
    "| nodes | variant | first sync (ms) | RSS after sync (MiB) | RSS growth (MiB) | heap used (MiB) | bytes received (MiB) |",
    "|---:|---|---:|---:|---:|---:|---:|",
  ];
  for (const r of rows) {
    for (const m of [r.slim, r.whole]) {
      lines.push(
        `| ${r.n} | ${
          m.variant === "slim" ? "weft (slim)" : "whole Node objects"
        } | ${m.syncMs.toFixed(0)} | ${mib(m.rss)} | ${
          mib(m.rss - m.rssBefore)
        } | ${mib(m.heapUsed)} | ${mib(m.bytes)} |`,
      );
    }
    lines.push(
      `| ${r.n} | **ratio slim/whole** | ${
        (r.slim.syncMs / r.whole.syncMs).toFixed(2)
      } | **${(r.slim.rss / r.whole.rss).toFixed(2)}** | ${
        ((r.slim.rss - r.slim.rssBefore) / (r.whole.rss - r.whole.rssBefore))
          .toFixed(2)
      } | ${(r.slim.heapUsed / r.whole.heapUsed).toFixed(2)} | ${
        (r.slim.bytes / r.whole.bytes).toFixed(2)
      } |`,
    );
  }
  return lines.join("\n");
}

if (import.meta.main) {
  if (Deno.args[0] === "--child") {
    const [, variant, n, kubeconfig, netConf] = Deno.args;
    const m = await measure(
      variant as Variant,
      Number(n),
      kubeconfig!,
      netConf!,
    );
    console.log(JSON.stringify(m));
    Deno.exit(0);
  }
  const ns = Deno.args.length > 0 ? Deno.args.map(Number) : [1000, 5000];
  const rows = await benchKube(ns, { progress: (l) => console.error(l) });
  console.log(`${await machine()}\n`);
  console.log(formatRows(rows));
}
