/**
 * The wireguard backend end to end, on userspace WireGuard (wireguard-go,
 * built by .ci/build_servers.sh --with-wireguard; this kernel has no
 * module): the steps the etcd-mode and the kube-mode test share.
 *
 * wireguard-go's configuration socket is a file,
 * /var/run/wireguard/<dev>.sock, visible from every network namespace, so
 * every node runs in its own mount namespace with its own directory bound
 * there (`nodeWireguard`), and every `wg` call for a node, the agent's and
 * the test's, goes through that.
 *
 * @module
 */
import assert from "node:assert/strict";
import type { AgentExtra, ClusterNode } from "../_cluster.ts";
import { DEFAULT_WEFT_CACHE } from "../servers/paths.ts";
import { parseDump, type WgDump } from "../../backend/wireguard/wg.ts";
import type { PublishedNode, Scenario } from "./_scenario.ts";
import { waitFor } from "./_checks.ts";
import { note, restartUnderPings } from "./_steps.ts";

/** The userspace implementation the agents run. */
export const WIREGUARD_GO = `${
  Deno.env.get("WEFT_CACHE") ?? DEFAULT_WEFT_CACHE
}/bin/wireguard-go`;

/** net-conf.json of the scenario. */
export const WG_NET_CONF =
  '{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}';

/**
 * Runs the rest of argv in a mount namespace of its own with `dir` as
 * /var/run/wireguard, where wireguard-go's configuration sockets live (the
 * file system is shared by every network namespace: each node needs its
 * own).
 */
export function wireguardMount(dir: string): string[] {
  return [
    "unshare",
    "-m",
    "sh",
    "-c",
    // The mount point may not exist yet on a fresh machine (it is
    // wireguard-go's, made on its first run outside such a namespace).
    'mkdir -p /var/run/wireguard && mount --bind "$0" /var/run/wireguard && exec "$@"',
    dir,
  ];
}

/** {@linkcode wireguardMount} with the node's own directory. */
function mountWrap(node: ClusterNode): string[] {
  return wireguardMount(`${node.dir}/wireguard`);
}

/** What each agent needs for the wireguard backend on this machine. */
export function nodeWireguard(node: ClusterNode): AgentExtra {
  Deno.mkdirSync(`${node.dir}/wireguard`, { recursive: true });
  return {
    launcher: mountWrap(node),
    env: {
      WG_USERSPACE_IMPLEMENTATION: WIREGUARD_GO,
      WIREGUARD_KEY_FILE: `${node.dir}/wgkey`,
    },
    run: ["wg", WIREGUARD_GO],
  };
}

/** `wg show flannel-wg dump` in the node's namespaces. */
export async function wgShow(node: ClusterNode): Promise<WgDump> {
  return parseDump(
    await node.ns.exec([
      ...mountWrap(node),
      "wg",
      "show",
      "flannel-wg",
      "dump",
    ]),
  );
}

/** `wg show flannel-wg` (for people) in the node's namespaces. */
export async function wgText(node: ClusterNode): Promise<string> {
  const r = await node.ns.tryExec([
    ...mountWrap(node),
    "wg",
    "show",
    "flannel-wg",
  ]);
  return r.code === 0 ? r.stdout : `(wg show: ${r.stderr.trim()})`;
}

/** `wg set flannel-wg ...` in the node's namespaces. */
async function wgSet(node: ClusterNode, ...args: string[]): Promise<void> {
  await node.ns.exec([...mountWrap(node), "wg", "set", "flannel-wg", ...args]);
}

/** The PublicKey a node published (etcd value or Node annotation). */
export function publishedKey(p: PublishedNode): string {
  const raw = JSON.parse(p.raw) as Record<string, unknown>;
  const data = "BackendData" in raw ? raw.BackendData : JSON.parse(
    String(raw["flannel.alpha.coreos.com/backend-data"] ?? "{}"),
  );
  return (data as { PublicKey?: string }).PublicKey ?? "";
}

/** Peer keys of a node's device, sorted. */
async function peerKeys(node: ClusterNode): Promise<string[]> {
  return (await wgShow(node)).peers.map((p) => p.publicKey).sort();
}

/** Runs every wireguard step against a started scenario. */
export async function wireguardSteps(
  t: Deno.TestContext,
  s: Scenario,
): Promise<void> {
  const c = s.cluster;
  const [n1, n2, n3] = c.nodes;
  assert.ok(n1 && n2 && n3, "the scenario needs three nodes");
  const keyOf = async (n: ClusterNode) =>
    publishedKey((await s.published()).find((p) => p.name === n.name)!);

  await t.step(
    "each node publishes flanneld's data and has every other node as a peer",
    async () => {
      const pub = await s.published();
      for (const n of c.nodes) {
        const dump = await wgShow(n);
        const mine = pub.find((p) => p.name === n.name)!;
        assert.equal(publishedKey(mine), dump.publicKey, n.name);
        assert.match(mine.raw, /"Port\\?":51820/, mine.raw);
        assert.equal(dump.listenPort, 51820);
        const others = pub.filter((p) => p.name !== n.name);
        assert.deepEqual(
          dump.peers.map((p) => `${p.publicKey} ${p.endpoint} ${p.allowedIps}`)
            .sort(),
          others.map((p) =>
            `${publishedKey(p)} ${p.publicIP}:51820 ${p.subnet}`
          ).sort(),
        );
        const env = await n.subnetEnv();
        assert.equal(env.FLANNEL_MTU, "1420");
      }
    },
  );

  await t.step("every pod reaches every pod on the other nodes", async () => {
    const m = await c.pingMatrix();
    assert.deepEqual(m.filter((r) => !r.ok), []);
    note(`${m.length}/${m.length} pings`);
  });

  await t.step(
    "the underlay carries only WireGuard UDP: no pod packet in a capture",
    async () => {
      const capture = c.hub.tryExec([
        "timeout",
        "4",
        "tcpdump",
        "-i",
        "br0",
        "-nn",
        "-l",
        "icmp or udp",
      ]);
      await new Promise((r) => setTimeout(r, 1000));
      const r = await c.pingRun(
        `${n1.name}-pod1`,
        c.pod(`${n2.name}-pod1`).ip,
        {
          count: 10,
          interval: 0.1,
        },
      );
      assert.equal(r.received, 10, r.text);
      const out = (await capture).stdout;
      const lines = out.split("\n").filter((l) => l.includes(" IP "));
      assert.deepEqual(lines.filter((l) => l.includes("10.244.")), []);
      const wg = lines.filter((l) =>
        /198\.18\.0\.\d+\.51820 > 198\.18\.0\.\d+\.51820: UDP/.test(l)
      );
      assert.ok(wg.length >= 20, `WireGuard packets seen: ${out}`);
      note(`${wg.length} WireGuard datagrams, 0 pod packets on the underlay`);
    },
  );

  await t.step(
    "a peer removed by hand comes back within the reconcile period",
    async () => {
      const k2 = await keyOf(n2);
      await wgSet(n1, "peer", k2, "remove");
      assert.equal((await peerKeys(n1)).includes(k2), false);
      const took = await waitFor(
        async () => (await peerKeys(n1)).includes(k2),
        10_000,
        100,
      );
      assert.ok(took !== undefined, "the peer did not come back in 10 s");
      note(`peer back after ${took.toFixed(0)} ms`);
    },
  );

  await t.step(
    "a restarted agent loses no ping at 50 ms and keeps its key",
    async () => {
      const key = await Deno.readTextFile(`${n2.dir}/wgkey`);
      const pubBefore = await keyOf(n2);
      const count = 100;
      await restartUnderPings(s, n1, n2, n3, count);
      assert.equal(await Deno.readTextFile(`${n2.dir}/wgkey`), key);
      assert.equal(await keyOf(n2), pubBefore);
      note(`${count}/${count} and ${count}/${count} echoes across the restart`);
    },
  );

  await t.step(
    "a rotated key reaches the other nodes and traffic flows",
    async () => {
      const old = await keyOf(n3);
      await c.stopAgent(n3, "SIGTERM");
      await Deno.remove(`${n3.dir}/wgkey`);
      await s.startAgent(n3);
      await s.waitReady(n3);
      const fresh = (await wgShow(n3)).publicKey!;
      assert.notEqual(fresh, old);
      const took = await waitFor(
        async () => {
          for (const n of [n1, n2]) {
            const keys = await peerKeys(n);
            if (!keys.includes(fresh) || keys.includes(old)) return false;
          }
          return true;
        },
        10_000,
        100,
      );
      assert.ok(took !== undefined, "peers did not take the new key");
      const r = await c.pingRun(
        `${n1.name}-pod1`,
        c.pod(`${n3.name}-pod1`).ip,
        { count: 3, interval: 0.2, deadline: 5 },
      );
      assert.equal(r.received, 3, r.text);
      note(`new key on both peers after ${took.toFixed(0)} ms`);
    },
  );

  await t.step("a removed node's peer goes from the others", async () => {
    const k3 = await keyOf(n3);
    await c.stopAgent(n3, "SIGTERM");
    await s.removeLease(n3);
    const took = await waitFor(
      async () => {
        for (const n of [n1, n2]) {
          if ((await peerKeys(n)).includes(k3)) return false;
        }
        return true;
      },
      10_000,
      100,
    );
    assert.ok(took !== undefined, "n3's peer is still there");
    note(`peer gone after ${took.toFixed(0)} ms`);
  });
}
