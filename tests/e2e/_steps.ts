/**
 * The end-to-end scenario as test steps, run against one cluster so the
 * tier stays fast: the same steps for an etcd-backed and a
 * Kubernetes-backed cluster. Steps run in order and later ones rely on the
 * cluster earlier ones left (every agent running again after a restart);
 * node removal is last because it shrinks the cluster.
 *
 * Timings (ready, repair, restart, removal) are printed, not just
 * asserted, so a slow-down is visible before it fails.
 *
 * @module
 */
import assert from "node:assert/strict";
import type { ClusterNode, PingSummary } from "../_cluster.ts";
import type { PublishedNode, Scenario } from "./_scenario.ts";
import {
  kernelView,
  peerLeftovers,
  peerProblems,
  subnetAddr,
  VXLAN_DEV,
  waitFor,
} from "./_checks.ts";

/** Route repair must beat this (the agent listens to rtnetlink). */
export const REPAIR_LIMIT_MS = 2_000;
/** A removed node must be gone from its peers within this. */
export const REMOVAL_LIMIT_MS = 5_000;

function ms(n: number): string {
  return `${n.toFixed(0)} ms`;
}

/** Prints a step's figure under its name. */
export function note(msg: string): void {
  console.log(`    -> ${msg}`);
}

/**
 * Kills `node`'s agent (SIGKILL) while pods ping every 50 ms into it (from
 * `from`'s pod1) and out of it (from its `outPod` to `to`'s pod1), starts
 * it again, and asserts every echo answered. Returns the restarted agent's
 * time to ready and both results.
 */
export async function restartUnderPings(
  s: Scenario,
  from: ClusterNode,
  node: ClusterNode,
  to: ClusterNode,
  count: number,
  outPod = "pod1",
): Promise<{ readyMs: number; results: PingSummary[] }> {
  const c = s.cluster;
  const opts = { count, interval: 0.05, deadline: 20 };
  const pings = [
    c.pingRun(`${from.name}-pod1`, c.pod(`${node.name}-pod1`).ip, opts),
    c.pingRun(`${node.name}-${outPod}`, c.pod(`${to.name}-pod1`).ip, opts),
  ];
  // The pings are under way before the kill.
  await new Promise((r) => setTimeout(r, 1000));
  const killed = await c.stopAgent(node, "SIGKILL");
  assert.equal(killed?.signal, "SIGKILL");
  await s.startAgent(node);
  const readyMs = await s.waitReady(node);
  const results = await Promise.all(pings);
  for (const r of results) {
    assert.equal(r.transmitted, count, r.text);
    assert.equal(r.received, count, r.text);
  }
  return { readyMs, results };
}

function lease(pub: PublishedNode[], node: ClusterNode): PublishedNode {
  const p = pub.find((p) => p.name === node.name);
  assert.ok(p, `${node.name} has no published lease: ${JSON.stringify(pub)}`);
  return p;
}

async function assertMesh(s: Scenario, pub: PublishedNode[]): Promise<void> {
  for (const node of s.cluster.nodes) {
    const v = await kernelView(node);
    for (const p of pub) {
      if (p.name === node.name) continue;
      assert.deepEqual(peerProblems(v, p), [], `on ${node.name}: ${p.name}`);
    }
  }
}

/** Runs every step against a started scenario. */
export async function scenarioSteps(
  t: Deno.TestContext,
  s: Scenario,
): Promise<void> {
  const c = s.cluster;
  const nodes = c.nodes;
  const [n1, n2, n3] = nodes;
  assert.ok(n1 && n2 && n3, "the scenario needs three nodes");
  let pub: PublishedNode[] = [];

  await t.step(
    "every agent becomes ready and publishes its lease",
    async () => {
      for (const n of nodes) {
        assert.ok(s.readyMs.has(n.name), `${n.name} never became ready`);
      }
      note(
        `ready after spawn: ${
          nodes.map((n) => `${n.name} ${ms(s.readyMs.get(n.name)!)}`).join(", ")
        }`,
      );
      pub = await s.published();
      assert.deepEqual(pub.map((p) => p.name), nodes.map((n) => n.name));
      for (const n of nodes) {
        const p = lease(pub, n);
        assert.equal(p.publicIP, n.ip);
        assert.match(p.subnet, /^10\.244\.\d+\.0\/24$/);
        assert.match(p.vtepMAC, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
        if (s.mode === "kube") assert.equal(p.subnet, `10.244.${n.n}.0/24`);
      }
      assert.equal(new Set(pub.map((p) => p.subnet)).size, nodes.length);
    },
  );

  await t.step(
    "subnet.env is flanneld's, for the node's own lease",
    async () => {
      for (const n of nodes) {
        const p = lease(pub, n);
        const [a, b, cc] = subnetAddr(p.subnet).split(".");
        assert.equal(
          await Deno.readTextFile(n.subnetFile),
          [
            "FLANNEL_NETWORK=10.244.0.0/16",
            `FLANNEL_SUBNET=${a}.${b}.${cc}.1/24`,
            "FLANNEL_MTU=1450",
            "FLANNEL_IPMASQ=true",
            "",
          ].join("\n"),
        );
      }
    },
  );

  await t.step(
    "flannel.1 is a VXLAN device with the published MAC, VNI 1, port 8472, no learning, MTU 1450",
    async () => {
      for (const n of nodes) {
        const v = await kernelView(n);
        const p = lease(pub, n);
        assert.ok(v.link, `${n.name} has no ${VXLAN_DEV}`);
        assert.equal(v.link.address, p.vtepMAC);
        assert.equal(v.link.mtu, 1450);
        assert.ok(v.link.flags.includes("UP"));
        assert.equal(v.link.linkinfo?.info_kind, "vxlan");
        const d = v.link.linkinfo?.info_data;
        assert.equal(d?.id, 1);
        assert.equal(d?.local, n.ip);
        assert.equal(d?.link, "eth0");
        assert.equal(d?.port, 8472);
        assert.equal(d?.learning, false);
        assert.deepEqual(v.addrs, [`${subnetAddr(p.subnet)}/32`]);
      }
    },
  );

  await t.step(
    "every node has a neighbour, FDB entry and onlink route for each peer",
    async () => {
      await assertMesh(s, pub);
      for (const n of nodes) {
        const v = await kernelView(n);
        // Exactly the peers: nothing stale, nothing for ourselves.
        assert.equal(v.fdb.filter((f) => f.state === "permanent").length, 2);
        assert.equal(v.neighs.length, 2, JSON.stringify(v.neighs));
      }
    },
  );

  await t.step("every pod reaches every pod on the other nodes", async () => {
    const m = await c.pingMatrix();
    const pairs = c.pods.flatMap((a) =>
      c.pods.filter((b) => b.node !== a.node).map((b) => [a.id, b.id])
    );
    assert.ok(pairs.length > 0);
    assert.deepEqual(m.map((r) => [r.from, r.to]), pairs);
    assert.deepEqual(m.filter((r) => !r.ok), []);
    const rtts = m.flatMap((r) => r.rttMs ?? []);
    note(
      `${m.length}/${m.length} pings, rtt ${Math.min(...rtts)}-${
        Math.max(...rtts)
      } ms`,
    );
  });

  await t.step(
    "TCP flows between pods on different nodes (iperf3)",
    async () => {
      const r = await c.iperf(`${n1.name}-pod1`, `${n2.name}-pod1`, 2);
      note(
        `${
          (r.bitsPerSecond / 1e9).toFixed(2)
        } Gbit/s, ${r.retransmits} retransmits`,
      );
      assert.ok(r.bitsPerSecond > 50e6, `only ${r.bitsPerSecond} bit/s`);
    },
  );

  await t.step(
    "1450-byte packets cross nodes unfragmented; 1451 are refused at the pod",
    async () => {
      const to = c.pod(`${n2.name}-pod2`).ip;
      const from = `${n1.name}-pod2`;
      const fits = await c.pingRun(from, to, {
        count: 2,
        size: 1450 - 28,
        dontFragment: true,
        deadline: 3,
      });
      assert.equal(fits.received, 2, fits.text);
      const tooBig = await c.pingRun(from, to, {
        count: 1,
        size: 1451 - 28,
        dontFragment: true,
        deadline: 1,
      });
      assert.equal(tooBig.received, 0, tooBig.text);
    },
  );

  await t.step(
    `a route, neighbour and FDB entry deleted by hand come back within ${
      ms(REPAIR_LIMIT_MS)
    }`,
    async () => {
      const peer = lease(pub, n2);
      const gw = subnetAddr(peer.subnet);
      const cases: [string, string[], () => Promise<boolean>][] = [
        [
          "route",
          ["route", "del", peer.subnet],
          async () =>
            (await n1.ns.json("-4", "route", "show", peer.subnet)).length > 0,
        ],
        [
          "neighbour",
          ["neigh", "del", gw, "dev", VXLAN_DEV],
          async () =>
            (await n1.ns.json("neigh", "show", gw, "dev", VXLAN_DEV))
              .length > 0,
        ],
        [
          "fdb",
          [
            "bridge",
            "fdb",
            "del",
            peer.vtepMAC,
            "dev",
            VXLAN_DEV,
            "dst",
            peer.publicIP,
            "self",
          ],
          async () =>
            (await n1.ns.json<{ mac: string }[]>(
              "bridge",
              "fdb",
              "show",
              "dev",
              VXLAN_DEV,
            )).some((f) => f.mac === peer.vtepMAC),
        ],
      ];
      const times: string[] = [];
      for (const [what, cmd, back] of cases) {
        if (cmd[0] === "bridge") await n1.ns.exec(cmd);
        else await n1.ns.ip(...cmd);
        assert.equal(await back(), false, `${what} was not deleted`);
        const took = await waitFor(back, REPAIR_LIMIT_MS, 5);
        assert.ok(
          took !== undefined,
          `${what} not back after ${ms(REPAIR_LIMIT_MS)}; ${n1.dir}/weft.log`,
        );
        times.push(`${what} ${ms(took)}`);
      }
      await assertMesh(s, pub);
      note(`repaired: ${times.join(", ")}`);
    },
  );

  await t.step(
    "kill -9 of an agent during pod-to-pod pings loses no packet; it restarts with the same subnet and MAC",
    async () => {
      const before = {
        env: await Deno.readTextFile(n2.subnetFile),
        mac: (await kernelView(n2)).link?.address,
        lease: lease(await s.published(), n2),
      };
      // Into the node (its flannel.1 decapsulates) and out of it (its
      // routes, neighbours and FDB encapsulate).
      const { readyMs, results } = await restartUnderPings(
        s,
        n1,
        n2,
        n3,
        120,
        "pod2",
      );
      note(
        `restarted agent ready in ${ms(readyMs)}; ${
          results.map((r) => `${r.received}/${r.transmitted}`).join(" and ")
        } echoes answered`,
      );
      const after = {
        env: await Deno.readTextFile(n2.subnetFile),
        mac: (await kernelView(n2)).link?.address,
        lease: lease(await s.published(), n2),
      };
      assert.equal(after.env, before.env);
      assert.equal(after.mac, before.mac);
      assert.equal(after.lease.source, before.lease.source);
      assert.equal(after.lease.subnet, before.lease.subnet);
      assert.equal(after.lease.vtepMAC, before.lease.vtepMAC);
      assert.equal(after.lease.publicIP, before.lease.publicIP);
      await assertMesh(s, pub);
    },
  );

  await t.step(
    "SIGTERM exits 0 and leaves flannel.1, routes, neighbours and FDB in place",
    async () => {
      const before = await kernelView(n3);
      const status = await c.stopAgent(n3, "SIGTERM");
      assert.equal(status?.code, 0, `exit ${JSON.stringify(status)}`);
      const after = await kernelView(n3);
      assert.deepEqual(after, before);
      for (const p of pub) {
        if (p.name !== n3.name) assert.deepEqual(peerProblems(after, p), []);
      }
      // Pods keep talking while the agent is down.
      const r = await c.pingRun(
        `${n3.name}-pod1`,
        c.pod(`${n1.name}-pod1`).ip,
        { count: 3, interval: 0.1, deadline: 3 },
      );
      assert.equal(r.received, 3, r.text);
      await s.startAgent(n3);
      note(`restarted after SIGTERM, ready in ${ms(await s.waitReady(n3))}`);
      assert.deepEqual(await kernelView(n3), before);
    },
  );

  await t.step(
    `a removed node disappears from the other nodes within ${
      ms(REMOVAL_LIMIT_MS)
    }`,
    async () => {
      const gone = lease(pub, n3);
      const status = await c.stopAgent(n3, "SIGTERM");
      assert.equal(status?.code, 0);
      await s.removeLease(n3);
      const others = [n1, n2];
      const times: string[] = [];
      for (const n of others) {
        const took = await waitFor(
          async () => peerLeftovers(await kernelView(n), gone).length === 0,
          REMOVAL_LIMIT_MS,
        );
        assert.ok(
          took !== undefined,
          `${n.name} still has ${
            peerLeftovers(await kernelView(n), gone).join("; ")
          }`,
        );
        times.push(`${n.name} ${ms(took)}`);
      }
      note(`${gone.name} removed from ${times.join(", ")}`);
      // The survivors still reach each other.
      const rest = pub.filter((p) => p.name !== n3.name);
      for (const n of others) {
        const v = await kernelView(n);
        for (const p of rest) {
          if (p.name !== n.name) assert.deepEqual(peerProblems(v, p), []);
        }
      }
      const r = await c.pingRun(
        `${n1.name}-pod1`,
        c.pod(`${n2.name}-pod1`).ip,
        { count: 2, interval: 0.1, deadline: 3 },
      );
      assert.equal(r.received, 2, r.text);
    },
  );
}
