/**
 * Kernel tier for the backends: three node namespaces on one bridge
 * (underlay 198.18.0.0/24), each driven by a vxlan backend and reconciler
 * over the real libnl layer, with leases fed directly (no API). Traffic
 * between the nodes' flannel.1 addresses must cross the tunnel, and every
 * kind of drift must be repaired.
 */
import assert from "node:assert/strict";
import { joinOnBridge, kernelTest, Netns } from "../_netns.ts";
import { openNetlink } from "../../ffi/netlink.ts";
import { openMonitor } from "../../ffi/monitor.ts";
import { noChanges } from "../../ffi/nlmsg.ts";
import type { LibnlNetlink } from "../../ffi/netlink.ts";
import { createBackend, Reconciler } from "../../backend/mod.ts";
import { PEER_ADDED_AND_REMOVED } from "../../backend/_testing.ts";
import type { Lease, LeaseEvent } from "../../subnet/lease.ts";
import { parseNetConfig } from "../../subnet/config.ts";
import { unwrap } from "../../lib/result.ts";
import { setLogSink } from "../../lib/log.ts";

setLogSink(() => {});

const config = unwrap(parseNetConfig('{"Network":"10.244.0.0/16"}'));

interface Node {
  ns: Netns;
  nl: LibnlNetlink;
  lease: Lease;
  rec: Reconciler;
}

/** Starts (or restarts) the backend of node n inside its namespace. */
function startBackend(ns: Netns, n: number, nl: LibnlNetlink): Node {
  const eth0 = nl.linkByName("eth0")!;
  const backend = unwrap(createBackend(nl, config, {
    index: eth0.index,
    name: "eth0",
    mtu: eth0.mtu,
    ifaceAddr: `198.18.0.${n}`,
    publicIP: `198.18.0.${n}`,
  }));
  const attrs = backend.prepare();
  const lease: Lease = { key: `node${n}`, subnet: `10.244.${n}.0/24`, attrs };
  const net = backend.start(lease);
  const rec = new Reconciler(nl, net.families, {
    ownKey: lease.key,
    backendType: "vxlan",
  });
  return { ns, nl, lease, rec };
}

function feed(nodes: Node[]): void {
  const events: LeaseEvent[] = nodes.map((x) => ({
    type: "added",
    lease: x.lease,
    receivedAt: performance.now(),
  }));
  for (const x of nodes) {
    x.rec.handle(events);
    assert.deepEqual(x.rec.pass().errors, 0);
  }
}

async function pingAll(nodes: Node[]): Promise<string[]> {
  const failed: string[] = [];
  for (const a of nodes) {
    for (const b of nodes) {
      if (a === b) continue;
      const dst = b.lease.subnet!.replace("/24", "");
      if (!(await a.ns.ping(dst, 2, 2))) failed.push(`${a.lease.key}→${dst}`);
    }
  }
  return failed;
}

async function cluster(fn: (nodes: Node[]) => Promise<void>) {
  await using hub = await Netns.create("hub");
  const nss: Netns[] = [];
  const nodes: Node[] = [];
  try {
    for (let i = 1; i <= 3; i++) nss.push(await Netns.create(`n${i}`));
    await joinOnBridge(hub, nss, nss.map((_, i) => `198.18.0.${i + 1}/24`));
    for (const [i, ns] of nss.entries()) {
      nodes.push(startBackend(ns, i + 1, openNetlink({ netns: ns.path })));
    }
    feed(nodes);
    await fn(nodes);
  } finally {
    for (const x of nodes) x.nl.close();
    for (const ns of nss) await ns.close();
  }
}

kernelTest(
  "vxlan backend: every node reaches every other node's flannel.1 through the tunnel",
  async () => {
    await cluster(async (nodes) => {
      assert.deepEqual(await pingAll(nodes), []);
      const n1 = nodes[0]!;
      const [link] = await n1.ns.json<
        { mtu: number; linkinfo: { info_data: Record<string, unknown> } }[]
      >("-d", "link", "show", "flannel.1");
      assert.equal(link!.mtu, 1450);
      assert.equal(link!.linkinfo.info_data.id, 1);
      assert.equal(link!.linkinfo.info_data.local, "198.18.0.1");
      assert.equal(link!.linkinfo.info_data.port, 8472);
      assert.equal(link!.linkinfo.info_data.learning, false);
      const routes = await n1.ns.json<
        { dst: string; gateway: string; flags: string[] }[]
      >(
        "route",
        "show",
        "dev",
        "flannel.1",
      );
      assert.deepEqual(
        routes.map((r) => `${r.dst} via ${r.gateway} ${r.flags.join(",")}`)
          .sort(),
        [
          "10.244.2.0/24 via 10.244.2.0 onlink",
          "10.244.3.0/24 via 10.244.3.0 onlink",
        ],
      );
    });
  },
);

kernelTest(
  "vxlan backend: a pass repairs a deleted route, neighbour, FDB entry and device",
  async () => {
    await cluster(async (nodes) => {
      const n1 = nodes[0]!;
      const mac2 =
        (nodes[1]!.lease.attrs.backendData as { VtepMAC: string }).VtepMAC;
      await n1.ns.ip("route", "del", "10.244.2.0/24");
      assert.equal(await n1.ns.ping("10.244.2.0", 1, 1), false);
      assert.equal(n1.rec.pass().ops, 1);
      assert.ok(await n1.ns.ping("10.244.2.0", 2, 2));

      await n1.ns.ip("neigh", "del", "10.244.3.0", "dev", "flannel.1");
      assert.equal(n1.rec.pass().ops, 1);
      const neigh = await n1.ns.json<
        { dst: string; lladdr: string; state: string[] }[]
      >(
        "neigh",
        "show",
        "dev",
        "flannel.1",
      );
      assert.ok(
        neigh.some((n) =>
          n.dst === "10.244.3.0" && n.state.includes("PERMANENT")
        ),
      );

      await n1.ns.exec([
        "bridge",
        "fdb",
        "del",
        mac2,
        "dev",
        "flannel.1",
        "dst",
        "198.18.0.2",
      ]);
      assert.equal(n1.rec.pass().ops, 1);
      const fdb = await n1.ns.json<{ mac: string; dst: string }[]>(
        "bridge",
        "fdb",
        "show",
        "dev",
        "flannel.1",
      );
      assert.ok(fdb.some((f) => f.mac === mac2 && f.dst === "198.18.0.2"));

      const macBefore = n1.nl.linkByName("flannel.1")!.mac;
      await n1.ns.ip("link", "del", "flannel.1");
      const r = n1.rec.pass();
      assert.equal(r.errors, 0);
      assert.equal(n1.nl.linkByName("flannel.1")!.mac, macBefore);
      assert.deepEqual(await pingAll(nodes), []);
    });
  },
);

kernelTest(
  "vxlan backend: a restarted backend keeps its MAC and traffic keeps flowing",
  async () => {
    await cluster(async (nodes) => {
      const n2 = nodes[1]!;
      const mac = n2.nl.linkByName("flannel.1")!.mac;
      n2.nl.close();
      const again = startBackend(n2.ns, 2, openNetlink({ netns: n2.ns.path }));
      nodes[1] = again;
      assert.equal(
        (again.lease.attrs.backendData as { VtepMAC: string }).VtepMAC,
        mac,
      );
      again.rec.handle(
        nodes.map((x) => ({ type: "added", lease: x.lease, receivedAt: 0 })),
      );
      assert.deepEqual(again.rec.pass(), { ops: 0, errors: 0 });
      assert.deepEqual(await pingAll(nodes), []);
    });
  },
);

kernelTest(
  "vxlan backend: a removed peer's entries go and a foreign route stays",
  async () => {
    await cluster(async (nodes) => {
      const n1 = nodes[0]!;
      await n1.ns.ip("link", "add", "dummy0", "type", "bridge");
      await n1.ns.ip("link", "set", "dummy0", "up");
      await n1.ns.ip("route", "add", "10.244.77.0/24", "dev", "dummy0");
      n1.rec.handle([{
        type: "removed",
        lease: nodes[2]!.lease,
        receivedAt: 0,
      }]);
      const routes = await n1.ns.json<{ dst: string }[]>("route", "show");
      const dsts = routes.map((r) => r.dst);
      assert.ok(!dsts.includes("10.244.3.0/24"));
      assert.ok(dsts.includes("10.244.77.0/24"));
      assert.deepEqual(n1.rec.pass(), { ops: 0, errors: 0 });
      const fdb = await n1.ns.json<{ dst?: string }[]>(
        "bridge",
        "fdb",
        "show",
        "dev",
        "flannel.1",
      );
      assert.ok(!fdb.some((f) => f.dst === "198.18.0.3"));
      assert.ok(
        (await n1.ns.json<{ dst: string }[]>("route", "show")).some((r) =>
          r.dst === "10.244.77.0/24"
        ),
      );
    });
  },
);

kernelTest(
  "vxlan backend: flanneld's routes are adopted in place on a migrating node, its stale ones pruned, foreign ones kept",
  async () => {
    await cluster(async (nodes) => {
      const n1 = nodes[0]!;
      // What flanneld leaves: the same entries, routes of protocol boot,
      // plus the route of a node deleted during the migration.
      for (const n of [2, 3]) {
        await n1.ns.ip(
          "route",
          "replace",
          `10.244.${n}.0/24`,
          "via",
          `10.244.${n}.0`,
          "dev",
          "flannel.1",
          "onlink",
          "proto",
          "boot",
        );
      }
      await n1.ns.ip(
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "10.244.9.0",
        "dev",
        "flannel.1",
        "onlink",
      );
      // Someone else's route on the overlay device.
      await n1.ns.ip(
        "route",
        "add",
        "10.244.60.0/24",
        "dev",
        "flannel.1",
        "proto",
        "static",
      );
      const monitor = new Deno.Command("ip", {
        args: ["-n", n1.ns.name, "monitor", "route"],
        stdout: "piped",
        stderr: "null",
      }).spawn();
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(n1.rec.pass().errors, 0);
      await new Promise((r) => setTimeout(r, 200));
      monitor.kill("SIGTERM");
      const seen = new TextDecoder().decode((await monitor.output()).stdout);
      assert.ok(!/^Deleted 10\.244\.[23]\.0\/24/m.test(seen), seen);
      assert.ok(/^Deleted 10\.244\.9\.0\/24/m.test(seen), seen);
      const text = await n1.ns.ip("route", "show", "dev", "flannel.1");
      const lines = text.split("\n").map((l) => l.trim()).filter(Boolean);
      assert.deepEqual(lines.sort(), [
        "10.244.2.0/24 via 10.244.2.0 proto 87 onlink",
        "10.244.3.0/24 via 10.244.3.0 proto 87 onlink",
        "10.244.60.0/24 proto static scope link",
      ]);
      assert.deepEqual(n1.rec.pass(), { ops: 0, errors: 0 });
      assert.deepEqual(await pingAll(nodes), []);
    });
  },
);

kernelTest(
  "vxlan backend: the kernel reports a peer added and removed exactly as the reconciler counts its writes",
  async () => {
    await cluster(async (nodes) => {
      const n1 = nodes[0]!;
      const dev = n1.nl.linkByName("flannel.1")!.index;
      using mon = openMonitor({ netns: n1.ns.path });
      const before = n1.rec.writes;
      const peer: Lease = {
        key: "node9",
        subnet: "10.244.9.0/24",
        attrs: {
          ...nodes[1]!.lease.attrs,
          publicIP: "198.18.0.9",
          backendData: { VNI: 1, VtepMAC: "0a:00:00:00:00:09" },
        },
      };
      const at = performance.now();
      n1.rec.handle([{ type: "added", lease: peer, receivedAt: at }]);
      n1.rec.handle([{ type: "removed", lease: peer, receivedAt: at }]);
      const after = n1.rec.writes;
      // A marker after them: notifications arrive in order, so once it is
      // seen, every notification of the writes has been read.
      await n1.ns.ip("addr", "add", "198.18.0.201/32", "dev", "eth0");
      const seen = noChanges();
      for (let marked = false; !marked;) {
        const s = await mon.next();
        assert.equal(s.overrun, false);
        const c = s.byIndex.get(dev);
        if (c) { for (const k of keysOf(seen)) seen[k] += c[k]; }
        marked = s.newAddr > (s.byIndex.get(dev)?.newAddr ?? 0);
      }
      const wrote = noChanges();
      for (const k of keysOf(wrote)) wrote[k] = after[k] - before[k];
      assert.deepEqual(wrote, PEER_ADDED_AND_REMOVED);
      assert.deepEqual(seen, wrote);
    });
  },
);

function keysOf<T extends object>(o: T): (keyof T)[] {
  return Object.keys(o) as (keyof T)[];
}
