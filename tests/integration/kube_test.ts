/**
 * The Kubernetes subnet manager against a real kube-apiserver and etcd
 * (built by .ci/build_servers.sh, started per test on loopback by
 * tests/servers/kube.ts). Ignored with a reason when the binaries are
 * missing, except under CI=true, where that is a failure.
 *
 * @module
 */
import assert from "node:assert/strict";
import { gatedTest } from "../_gate.ts";
import { parseAllDocuments } from "yaml";
import { KubeSubnetManager } from "../../subnet/kube/manager.ts";
import type { KubeFlags } from "../../subnet/kube/manager.ts";
import type { NodeWatcherOptions } from "../../subnet/kube/watch.ts";
import type { LeaseAttrs, LeaseEvent } from "../../subnet/lease.ts";
import { setLogSink } from "../../lib/log.ts";
import { metrics } from "../../lib/metrics.ts";
import {
  KUBE_SERVERS,
  KubeServers,
  type KubeServersOptions,
  TcpProxy,
} from "../servers/kube.ts";

const NET_CONF = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}';
const P = "flannel.alpha.coreos.com";

/** Log lines of the running test, printed when it fails. */
let logLines: string[] = [];
setLogSink((l) => logLines.push(l));

/** A test with its own control plane and temp dir. */
function kubeTest(
  name: string,
  fn: (k: KubeServers, dir: string) => Promise<void>,
  opts: KubeServersOptions = {},
): Promise<void> {
  return gatedTest({
    name,
    needs: [KUBE_SERVERS],
    fn: async () => {
      logLines = [];
      const dir = await Deno.makeTempDir({ prefix: "weft-kube-test-" });
      await using k = await KubeServers.start(opts);
      try {
        await Deno.writeTextFile(`${dir}/net-conf.json`, NET_CONF);
        await fn(k, dir);
      } catch (e) {
        console.error(`--- weft log ---\n${logLines.join("\n")}`);
        console.error(
          `--- apiserver log (tail) ---\n${
            (await k.apiserverLog()).split("\n").slice(-30).join("\n")
          }`,
        );
        throw e;
      } finally {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    },
  }) as Promise<void>;
}

/** A Node as a kubelet registers it, with the pod CIDR already assigned. */
function nodeSpec(
  name: string,
  podCIDR: string | undefined,
  annotations: Record<string, string> = {},
): Record<string, unknown> {
  const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  return {
    metadata: {
      name,
      labels: { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux" },
      annotations: {
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        ...annotations,
      },
    },
    spec: podCIDR ? { podCIDR, podCIDRs: [podCIDR] } : {},
    status: {
      conditions: [{
        type: "Ready",
        status: "True",
        reason: "KubeletReady",
        message: "kubelet is posting ready status",
        lastHeartbeatTime: now,
        lastTransitionTime: now,
      }],
      addresses: [{ type: "InternalIP", address: "198.18.0.1" }, {
        type: "Hostname",
        address: name,
      }],
    },
  };
}

/** A peer already annotated by a flannel agent (flanneld or weft). */
function peer(name: string, podCIDR: string, ip: string, mac: string) {
  return nodeSpec(name, podCIDR, {
    [`${P}/backend-data`]: `{"VNI":1,"VtepMAC":"${mac}"}`,
    [`${P}/backend-type`]: "vxlan",
    [`${P}/kube-subnet-manager`]: "true",
    [`${P}/public-ip`]: ip,
  });
}

function attrs(ip: string, mac: string): LeaseAttrs {
  return {
    backendType: "vxlan",
    publicIP: ip,
    backendData: { VNI: 1, VtepMAC: mac },
  };
}

function flags(dir: string, over: Partial<KubeFlags> = {}): KubeFlags {
  return {
    kubeApiUrl: "",
    kubeconfigFile: "",
    kubeAnnotationPrefix: P,
    netConfigPath: `${dir}/net-conf.json`,
    setNodeNetworkUnavailable: true,
    ...over,
  };
}

const envOf = (vars: Record<string, string>) => (n: string) => vars[n];

/** Collects lease events and replays them into the set of live peers. */
class Events {
  readonly all: string[] = [];
  readonly peers = new Map<string, string>();
  readonly problems: string[] = [];
  batches = 0;

  readonly handler = (evs: LeaseEvent[]) => {
    this.batches++;
    for (const e of evs) {
      const desc = `${e.lease.subnet} ${e.lease.attrs.publicIP}`;
      this.all.push(`${e.type} ${e.lease.key} ${desc}`);
      if (e.type === "added") {
        if (this.peers.has(e.lease.key)) {
          this.problems.push(`duplicate add of ${e.lease.key}`);
        }
        this.peers.set(e.lease.key, desc);
      } else {
        if (this.peers.get(e.lease.key) !== desc) {
          this.problems.push(`remove of unknown ${e.lease.key} ${desc}`);
        }
        this.peers.delete(e.lease.key);
      }
    }
  };

  /** Waits until the live peers are exactly `want`. */
  async until(want: Record<string, string>, ms = 20_000): Promise<void> {
    const end = performance.now() + ms;
    const same = () =>
      JSON.stringify(Object.fromEntries([...this.peers].sort())) ===
        JSON.stringify(Object.fromEntries(Object.entries(want).sort()));
    while (!same()) {
      if (performance.now() > end) {
        assert.deepEqual(
          Object.fromEntries(this.peers),
          want,
          this.all.join("\n"),
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual(this.problems, [], this.all.join("\n"));
  }
}

/** The ClusterRole shipped in deploy/weft.yaml. */
async function deployClusterRole(): Promise<
  { name: string; rules: unknown[] }
> {
  const text = await Deno.readTextFile(
    new URL("../../deploy/weft.yaml", import.meta.url),
  );
  for (const doc of parseAllDocuments(text)) {
    const obj = doc.toJS() as
      | { kind?: string; metadata?: { name?: string }; rules?: unknown[] }
      | null;
    if (obj?.kind === "ClusterRole" && obj.rules) {
      return { name: obj.metadata?.name ?? "weft", rules: obj.rules };
    }
  }
  throw new Error("deploy/weft.yaml has no ClusterRole");
}

/** An in-cluster service-account directory for `token`. */
async function serviceAccountDir(
  k: KubeServers,
  dir: string,
  token: string,
): Promise<string> {
  const sa = `${dir}/serviceaccount`;
  await Deno.mkdir(sa, { recursive: true });
  await Deno.writeTextFile(`${sa}/token`, token);
  await Deno.writeTextFile(`${sa}/ca.crt`, k.caPem);
  await Deno.writeTextFile(`${sa}/namespace`, "kube-flannel");
  return sa;
}

/** In-cluster environment pointing at the test apiserver. */
function inClusterEnv(k: KubeServers, extra: Record<string, string>) {
  return envOf({
    KUBERNETES_SERVICE_HOST: "127.0.0.1",
    KUBERNETES_SERVICE_PORT: String(k.port),
    ...extra,
  });
}

const fastWatch: NodeWatcherOptions = {
  backoff: { initialMs: 100, maxMs: 1000 },
};

async function adminManager(
  k: KubeServers,
  dir: string,
  nodeName: string,
  watch: NodeWatcherOptions = fastWatch,
  over: Partial<KubeFlags> = {},
): Promise<KubeSubnetManager> {
  const kc = await k.writeKubeconfig(`${dir}/admin.kubeconfig`, {
    token: k.adminToken,
  });
  return await KubeSubnetManager.create(
    flags(dir, { kubeconfigFile: kc, ...over }),
    new AbortController().signal,
    { env: envOf({ NODE_NAME: nodeName }), watch },
  );
}

await kubeTest(
  "acquireLease() publishes flanneld's annotations and NetworkUnavailable=False",
  async (k, dir) => {
    await k.createNode(nodeSpec("w1", "10.244.3.0/24"));
    const sm = await adminManager(k, dir, "w1");
    try {
      const signal = new AbortController().signal;
      const lease = await sm.acquireLease(
        attrs("198.18.0.3", "3a:bb:55:60:be:4e"),
        signal,
      );
      assert.equal(lease.subnet, "10.244.3.0/24");

      const n = await k.getNode("w1");
      assert.deepEqual(n.metadata.annotations, {
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        // Exactly what flanneld v0.28 writes:
        "flannel.alpha.coreos.com/backend-data":
          '{"VNI":1,"VtepMAC":"3a:bb:55:60:be:4e"}',
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": "198.18.0.3",
      });
      const cond = n.status.conditions?.find((c) =>
        c.type === "NetworkUnavailable"
      );
      assert.equal(cond?.status, "False");
      assert.equal(cond?.reason, "FlannelIsUp");
      assert.equal(cond?.message, "Flannel is running on this node");
      assert.ok(
        n.status.conditions?.some((c) => c.type === "Ready"),
        "other conditions kept",
      );

      // A restart with the same attributes writes nothing.
      const rv = n.metadata.resourceVersion;
      await sm.acquireLease(attrs("198.18.0.3", "3a:bb:55:60:be:4e"), signal);
      assert.equal((await k.getNode("w1")).metadata.resourceVersion, rv);

      // public-ip-overwrite is published instead of our address.
      await k.patchNode("w1", {
        metadata: {
          annotations: { [`${P}/public-ip-overwrite`]: "203.0.113.9" },
        },
      });
      await sm.acquireLease(attrs("198.18.0.3", "3a:bb:55:60:be:4e"), signal);
      assert.equal(
        (await k.getNode("w1")).metadata.annotations?.[`${P}/public-ip`],
        "203.0.113.9",
      );

      // node-public-ip is what the agent should use as --public-ip.
      assert.deepEqual(await sm.getNodePublicIPOverride(), {});
      await k.patchNode("w1", {
        metadata: { annotations: { [`${P}/node-public-ip`]: "198.51.100.7" } },
      });
      assert.deepEqual(await sm.getNodePublicIPOverride(), {
        ipv4: "198.51.100.7",
      });
    } finally {
      sm.close();
    }
  },
);

await kubeTest(
  "acquireLease() waits for a late pod CIDR and fails clearly without one",
  async (k, dir) => {
    await k.createNode(nodeSpec("late", undefined));
    await k.createNode(nodeSpec("never", undefined));
    await k.createNode(nodeSpec("outside", "10.10.0.0/24"));
    const signal = new AbortController().signal;
    const late = await adminManager(k, dir, "late");
    const never = await KubeSubnetManager.create(
      flags(dir, { kubeconfigFile: `${dir}/admin.kubeconfig` }),
      signal,
      { env: envOf({ NODE_NAME: "never" }), podCidrTimeoutMs: 2000 },
    );
    const outside = await KubeSubnetManager.create(
      flags(dir, { kubeconfigFile: `${dir}/admin.kubeconfig` }),
      signal,
      { env: envOf({ NODE_NAME: "outside" }) },
    );
    try {
      const pending = late.acquireLease(
        attrs("198.18.0.4", "3a:bb:55:60:be:44"),
        signal,
      );
      await new Promise((r) => setTimeout(r, 1500));
      // What the controller manager does.
      await k.patchNode("late", {
        spec: { podCIDR: "10.244.4.0/24", podCIDRs: ["10.244.4.0/24"] },
      });
      assert.equal((await pending).subnet, "10.244.4.0/24");
      await assert.rejects(
        never.acquireLease(attrs("198.18.0.5", "3a:bb:55:60:be:45"), signal),
        { message: 'node "never" pod cidr not assigned' },
      );
      await assert.rejects(
        outside.acquireLease(attrs("198.18.0.6", "3a:bb:55:60:be:46"), signal),
        {
          message:
            'subnet "10.244.0.0/16" specified in the flannel net config doesn\'t contain "10.10.0.0/24" PodCIDR of the "outside" node',
        },
      );
    } finally {
      late.close();
      never.close();
      outside.close();
    }
  },
);

await kubeTest(
  "a ServiceAccount bound only to deploy/weft.yaml's ClusterRole runs acquire and watch",
  async (k, dir) => {
    const role = await deployClusterRole();
    await k.must("POST", "/api/v1/namespaces", {
      apiVersion: "v1",
      kind: "Namespace",
      metadata: { name: "kube-flannel" },
    });
    await k.createServiceAccount("kube-flannel", "weft", role);
    await k.createNode(nodeSpec("w1", "10.244.1.0/24"));
    await k.createNode(
      peer("p2", "10.244.2.0/24", "198.18.0.2", "0a:00:00:00:00:02"),
    );
    // The DaemonSet pod: weft finds its node through it (POD_NAME).
    await k.must("POST", "/api/v1/namespaces/kube-flannel/pods", {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "weft-abcde" },
      spec: {
        nodeName: "w1",
        serviceAccountName: "weft",
        automountServiceAccountToken: false,
        containers: [{ name: "weft", image: "weft:v0.1.0" }],
      },
    });
    const token = await k.serviceAccountToken("kube-flannel", "weft");
    // The role really is narrow: no node deletion.
    const del = await k.request("DELETE", "/api/v1/nodes/p2", undefined, {
      token,
    });
    assert.equal(del.status, 403);

    const sa = await serviceAccountDir(k, dir, token);
    const ctl = new AbortController();
    const sm = await KubeSubnetManager.create(flags(dir), ctl.signal, {
      serviceAccountDir: sa,
      env: inClusterEnv(k, {
        POD_NAME: "weft-abcde",
        POD_NAMESPACE: "kube-flannel",
      }),
      watch: fastWatch,
    });
    try {
      assert.equal(sm.nodeName, "w1");
      assert.equal(sm.client.server, `https://127.0.0.1:${k.port}`);
      const lease = await sm.acquireLease(
        attrs("198.18.0.1", "0a:00:00:00:00:01"),
        ctl.signal,
      );
      assert.equal(lease.subnet, "10.244.1.0/24");
      const n = await k.getNode("w1");
      assert.equal(n.metadata.annotations?.[`${P}/public-ip`], "198.18.0.1");
      assert.equal(
        n.status.conditions?.find((c) => c.type === "NetworkUnavailable")
          ?.reason,
        "FlannelIsUp",
      );

      const ev = new Events();
      const watching = sm.watchLeases(ev.handler, ctl.signal);
      await ev.until({ p2: "10.244.2.0/24 198.18.0.2" });
      await k.createNode(
        peer("p3", "10.244.3.0/24", "198.18.0.3", "0a:00:00:00:00:03"),
      );
      await ev.until({
        p2: "10.244.2.0/24 198.18.0.2",
        p3: "10.244.3.0/24 198.18.0.3",
      });
      ctl.abort();
      await watching;
    } finally {
      sm.close();
    }
  },
);

await kubeTest(
  "watchLeases() reports added, changed and deleted nodes, and skips unmanaged ones",
  async (k, dir) => {
    await k.createNode(nodeSpec("me", "10.244.1.0/24"));
    await k.createNode(
      peer("a", "10.244.2.0/24", "198.18.0.2", "0a:00:00:00:00:02"),
    );
    await k.createNode(nodeSpec("fresh", "10.244.9.0/24"));
    const sm = await adminManager(k, dir, "me");
    const ctl = new AbortController();
    try {
      await sm.acquireLease(
        attrs("198.18.0.1", "0a:00:00:00:00:01"),
        ctl.signal,
      );
      const ev = new Events();
      const watching = sm.watchLeases(ev.handler, ctl.signal);
      await ev.until({ a: "10.244.2.0/24 198.18.0.2" });
      assert.ok(
        logLines.some((l) =>
          l.includes(
            `Skipping node "fresh": not annotated ${P}/kube-subnet-manager=true`,
          )
        ),
      );
      // "fresh" starts its flannel agent.
      await k.patchNode(
        "fresh",
        peer("fresh", "10.244.9.0/24", "198.18.0.9", "0a:00:00:00:00:09"),
      );
      await ev.until({
        a: "10.244.2.0/24 198.18.0.2",
        fresh: "10.244.9.0/24 198.18.0.9",
      });
      // A change that does not touch the lease (heartbeat) emits nothing.
      const before = ev.all.length;
      await k.patchNode("a", { metadata: { labels: { touched: "yes" } } });
      await k.patchNode("a", {
        metadata: { annotations: { [`${P}/public-ip`]: "198.18.0.22" } },
      });
      await ev.until({
        a: "10.244.2.0/24 198.18.0.22",
        fresh: "10.244.9.0/24 198.18.0.9",
      });
      assert.deepEqual(ev.all.slice(before), [
        "removed a 10.244.2.0/24 198.18.0.2",
        "added a 10.244.2.0/24 198.18.0.22",
      ]);
      await k.deleteNode("fresh");
      await ev.until({ a: "10.244.2.0/24 198.18.0.22" });
      // A bad peer is refused, not fatal.
      await k.createNode(
        peer("bad", "10.244.5.0/24", "not-an-ip", "0a:00:00:00:00:05"),
      );
      await k.createNode(
        peer("b", "10.244.6.0/24", "198.18.0.6", "0a:00:00:00:00:06"),
      );
      await ev.until({
        a: "10.244.2.0/24 198.18.0.22",
        b: "10.244.6.0/24 198.18.0.6",
      });
      assert.ok(
        logLines.some((l) => /Skipping node "bad": Invalid public IP/.test(l)),
      );
      ctl.abort();
      await watching;
    } finally {
      sm.close();
    }
  },
);

await kubeTest(
  "the first listing follows continue tokens page by page",
  async (k, dir) => {
    await k.createNode(nodeSpec("me", "10.244.1.0/24"));
    const want: Record<string, string> = {};
    for (let i = 2; i <= 8; i++) {
      await k.createNode(
        peer(
          `p${i}`,
          `10.244.${i}.0/24`,
          `198.18.0.${i}`,
          `0a:00:00:00:00:0${i}`,
        ),
      );
      want[`p${i}`] = `10.244.${i}.0/24 198.18.0.${i}`;
    }
    const sm = await adminManager(k, dir, "me", { ...fastWatch, pageSize: 3 });
    const ctl = new AbortController();
    try {
      const ev = new Events();
      const watching = sm.watchLeases(ev.handler, ctl.signal);
      await ev.until(want);
      // One batch: the complete listing, although it took three pages.
      assert.equal(ev.all.length, 7);
      assert.ok(sm.client.bytesReceived > 0);
      ctl.abort();
      await watching;
    } finally {
      sm.close();
    }
  },
);

await kubeTest(
  "a kube-apiserver restart mid-watch loses and duplicates no event",
  async (k, dir) => {
    await k.createNode(nodeSpec("me", "10.244.1.0/24"));
    for (let i = 2; i <= 4; i++) {
      await k.createNode(
        peer(
          `p${i}`,
          `10.244.${i}.0/24`,
          `198.18.0.${i}`,
          `0a:00:00:00:00:0${i}`,
        ),
      );
    }
    const sm = await adminManager(k, dir, "me");
    const ctl = new AbortController();
    try {
      await sm.acquireLease(
        attrs("198.18.0.1", "0a:00:00:00:00:01"),
        ctl.signal,
      );
      const ev = new Events();
      const watching = sm.watchLeases(ev.handler, ctl.signal);
      const base = {
        p2: "10.244.2.0/24 198.18.0.2",
        p3: "10.244.3.0/24 198.18.0.3",
        p4: "10.244.4.0/24 198.18.0.4",
      };
      await ev.until(base);
      const before = ev.all.length;
      const restarts = metrics.watchRestarts.get();
      await k.restartApiserver();
      // Changes right after the restart, while weft may still be backing off.
      await k.createNode(
        peer("p5", "10.244.5.0/24", "198.18.0.5", "0a:00:00:00:00:05"),
      );
      await k.deleteNode("p2");
      await k.patchNode("p3", {
        metadata: { annotations: { [`${P}/public-ip`]: "198.18.0.33" } },
      });
      await ev.until({
        p3: "10.244.3.0/24 198.18.0.33",
        p4: "10.244.4.0/24 198.18.0.4",
        p5: "10.244.5.0/24 198.18.0.5",
      });
      await new Promise((r) => setTimeout(r, 1000));
      assert.deepEqual(ev.all.slice(before).sort(), [
        "added p3 10.244.3.0/24 198.18.0.33",
        "added p5 10.244.5.0/24 198.18.0.5",
        "removed p2 10.244.2.0/24 198.18.0.2",
        "removed p3 10.244.3.0/24 198.18.0.3",
      ]);
      assert.ok(metrics.watchRestarts.get() > restarts);
      ctl.abort();
      await watching;
    } finally {
      sm.close();
    }
  },
);

for (const watchCache of [false, true]) {
  kubeTest(
    `a 410 Gone after etcd compaction relists and synthesises deletes (watch cache ${
      watchCache ? "on" : "off"
    })`,
    async (k, dir) => {
      await k.createNode(nodeSpec("me", "10.244.1.0/24"));
      await k.createNode(
        peer("p2", "10.244.2.0/24", "198.18.0.2", "0a:00:00:00:00:02"),
      );
      await k.createNode(
        peer("p3", "10.244.3.0/24", "198.18.0.3", "0a:00:00:00:00:03"),
      );
      await using proxy = new TcpProxy(k.port);
      // weft reaches the API server through the proxy (--kube-api-url).
      // Never fall back to periodic listing here: the 410 path is the point.
      const sm = await adminManager(k, dir, "me", {
        ...fastWatch,
        fallbackAfter: 1000,
      }, { kubeApiUrl: proxy.url });
      const ctl = new AbortController();
      try {
        await sm.acquireLease(
          attrs("198.18.0.1", "0a:00:00:00:00:01"),
          ctl.signal,
        );
        const ev = new Events();
        const watching = sm.watchLeases(ev.handler, ctl.signal);
        await ev.until({
          p2: "10.244.2.0/24 198.18.0.2",
          p3: "10.244.3.0/24 198.18.0.3",
        });
        const relists = metrics.relists.get();
        // weft loses the API server; meanwhile p2 goes, p4 comes, and etcd
        // forgets the history weft would need to catch up.
        proxy.pause();
        await k.deleteNode("p2");
        await k.createNode(
          peer("p4", "10.244.4.0/24", "198.18.0.4", "0a:00:00:00:00:04"),
        );
        // Churn so the old revision is well behind, then compact.
        for (let i = 0; i < 5; i++) {
          await k.patchNode("p3", {
            metadata: { labels: { churn: String(i) } },
          });
        }
        await k.etcd.compact();
        // The watch cache keeps its own history: a restart empties it.
        if (watchCache) await k.restartApiserver();
        proxy.resume();
        await ev.until({
          p3: "10.244.3.0/24 198.18.0.3",
          p4: "10.244.4.0/24 198.18.0.4",
        });
        assert.ok(metrics.relists.get() > relists, "a relist happened");
        assert.ok(
          logLines.some((l) => /too old \(410 Gone\); listing again/.test(l)),
          "the 410 was seen",
        );
        ctl.abort();
        await watching;
      } finally {
        sm.close();
      }
    },
    { watchCache },
  );
}

await kubeTest(
  "a rotated service-account token is picked up without a restart",
  async (k, dir) => {
    const role = await deployClusterRole();
    await k.must("POST", "/api/v1/namespaces", {
      apiVersion: "v1",
      kind: "Namespace",
      metadata: { name: "kube-flannel" },
    });
    await k.createServiceAccount("kube-flannel", "weft", role);
    await k.createNode(nodeSpec("me", "10.244.1.0/24"));
    await k.createNode(
      peer("p2", "10.244.2.0/24", "198.18.0.2", "0a:00:00:00:00:02"),
    );
    const uid1 = await k.createSecret("kube-flannel", "bind-1");
    const token1 = await k.serviceAccountToken("kube-flannel", "weft", {
      boundSecret: { name: "bind-1", uid: uid1 },
    });
    const sa = await serviceAccountDir(k, dir, token1);
    const ctl = new AbortController();
    const sm = await KubeSubnetManager.create(flags(dir), ctl.signal, {
      serviceAccountDir: sa,
      env: inClusterEnv(k, { NODE_NAME: "me" }),
      // Short watches: new requests, with whatever token is current.
      watch: { ...fastWatch, timeoutSeconds: () => 2 },
    });
    try {
      await sm.acquireLease(
        attrs("198.18.0.1", "0a:00:00:00:00:01"),
        ctl.signal,
      );
      const ev = new Events();
      const watching = sm.watchLeases(ev.handler, ctl.signal);
      await ev.until({ p2: "10.244.2.0/24 198.18.0.2" });

      // kubelet rotates the projected token; the old one dies.
      const uid2 = await k.createSecret("kube-flannel", "bind-2");
      const token2 = await k.serviceAccountToken("kube-flannel", "weft", {
        boundSecret: { name: "bind-2", uid: uid2 },
      });
      await Deno.writeTextFile(`${sa}/token.tmp`, token2);
      await Deno.rename(`${sa}/token.tmp`, `${sa}/token`);
      await k.deleteSecret("kube-flannel", "bind-1");
      let old = 0;
      // The apiserver caches good tokens for 10 s.
      for (let i = 0; i < 300 && old !== 401; i++) {
        old = (await k.request("GET", "/api/v1/nodes/me", undefined, {
          token: token1,
        })).status;
        if (old !== 401) await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(old, 401, "the old token is rejected");

      await k.createNode(
        peer("p3", "10.244.3.0/24", "198.18.0.3", "0a:00:00:00:00:03"),
      );
      await ev.until({
        p2: "10.244.2.0/24 198.18.0.2",
        p3: "10.244.3.0/24 198.18.0.3",
      });
      assert.deepEqual(await sm.getNodePublicIPOverride(), {});
      ctl.abort();
      await watching;
    } finally {
      sm.close();
    }
  },
);

await kubeTest(
  "a kubeconfig with client certificates works",
  async (k, dir) => {
    await k.createNode(nodeSpec("me", "10.244.1.0/24"));
    const cert = await k.clientCert("weft-node", ["system:masters"]);
    const kc = await k.writeKubeconfig(`${dir}/cert.kubeconfig`, {
      clientCert: cert,
      caAsFile: true,
    });
    const sm = await KubeSubnetManager.create(
      flags(dir, { kubeconfigFile: kc }),
      new AbortController().signal,
      { env: envOf({ NODE_NAME: "me" }) },
    );
    try {
      const lease = await sm.acquireLease(
        attrs("198.18.0.1", "0a:00:00:00:00:01"),
        new AbortController().signal,
      );
      assert.equal(lease.subnet, "10.244.1.0/24");
      assert.equal(
        (await k.getNode("me")).metadata.annotations
          ?.[`${P}/kube-subnet-manager`],
        "true",
      );
    } finally {
      sm.close();
    }
  },
);

await kubeTest(
  "a kubeconfig with the wrong CA fails with a TLS error naming the server",
  async (k, dir) => {
    await k.createNode(nodeSpec("me", "10.244.1.0/24"));
    const kc = await k.writeKubeconfig(`${dir}/wrong.kubeconfig`, {
      token: k.adminToken,
      caPem: await k.otherCa(),
    });
    const sm = await KubeSubnetManager.create(
      flags(dir, { kubeconfigFile: kc }),
      new AbortController().signal,
      { env: envOf({ NODE_NAME: "me" }) },
    );
    try {
      const t0 = performance.now();
      const err = await sm.acquireLease(
        attrs("198.18.0.1", "0a:00:00:00:00:01"),
        new AbortController().signal,
      ).catch((e) => e as Error);
      assert.ok(err instanceof Error);
      assert.ok(err.message.includes(`"${k.url}"`), err.message);
      assert.match(err.message, /TLS error: .*(UnknownIssuer|certificate)/i);
      assert.match(err.message, /certificate-authority of kubeconfig/);
      assert.ok(performance.now() - t0 < 5000, "a bad CA is not retried");
    } finally {
      sm.close();
    }
  },
);

await kubeTest(
  "insecure-skip-tls-verify warns and explains what weft needs",
  async (k, dir) => {
    await k.createNode(nodeSpec("me", "10.244.1.0/24"));
    const kc = await k.writeKubeconfig(`${dir}/insecure.kubeconfig`, {
      token: k.adminToken,
      caPem: null,
      insecure: true,
    });
    const sm = await KubeSubnetManager.create(
      flags(dir, { kubeconfigFile: kc }),
      new AbortController().signal,
      { env: envOf({ NODE_NAME: "me" }) },
    );
    try {
      assert.ok(
        logLines.some((l) =>
          /^W.*sets insecure-skip-tls-verify; weft cannot skip verification per connection/
            .test(l)
        ),
      );
      // This test process does not run with --unsafely-ignore-certificate-errors.
      const err = await sm.acquireLease(
        attrs("198.18.0.1", "0a:00:00:00:00:01"),
        new AbortController().signal,
      ).catch((e) => e as Error);
      assert.ok(err instanceof Error);
      assert.ok(err.message.includes(`"${k.url}"`), err.message);
      assert.match(
        err.message,
        /TLS error: .*--unsafely-ignore-certificate-errors/,
      );
    } finally {
      sm.close();
    }
  },
);

await kubeTest(
  "connection errors name the kubeconfig and the field",
  async (_k, dir) => {
    const kc = `${dir}/broken.kubeconfig`;
    await Deno.writeTextFile(
      kc,
      "apiVersion: v1\nkind: Config\nclusters: []\n",
    );
    await assert.rejects(
      KubeSubnetManager.create(
        flags(dir, { kubeconfigFile: kc }),
        new AbortController().signal,
        { env: envOf({ NODE_NAME: "me" }) },
      ),
      { message: `Cannot use kubeconfig "${kc}": current-context is not set` },
    );
    await assert.rejects(
      KubeSubnetManager.create(flags(dir), new AbortController().signal, {
        env: envOf({}),
        serviceAccountDir: `${dir}/none`,
      }),
      /KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set/,
    );
  },
);
