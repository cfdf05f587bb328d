import assert from "node:assert/strict";
import {
  added,
  node,
  peer,
  PEER_ADDED_AND_REMOVED,
  removed,
} from "./_testing.ts";
import { MemoryKernel } from "./memory_kernel.ts";
import { createBackend } from "./registry.ts";
import {
  type ChangeSource,
  MAX_QUIET_SKIPS,
  Reconciler,
  type ReconcilerOptions,
} from "./reconciler.ts";
import { parseNetConfig } from "../subnet/config.ts";
import { unwrap } from "../lib/result.ts";
import { RTPROT_BOOT } from "../ffi/types.ts";

/** libnl's "invalid input data or parameter": a write the kernel refuses. */
const NLE_INVAL = 7;
import { setLogSink } from "../lib/log.ts";
import { metrics } from "../lib/metrics.ts";

setLogSink(() => {});

function routesVia(kernel: MemoryKernel, index: number): string[] {
  return kernel.routes.filter((r) => r.index === index).map((r) =>
    `${r.dst} via ${r.gw}`
  ).sort();
}

Deno.test("Reconciler creates flannel.1 as flanneld does and programs every peer", () => {
  const { kernel, rec, attrs, eth0 } = node();
  rec.handle(added(peer(2), peer(3)));
  const r = rec.pass();
  assert.deepEqual(r, { ops: 6, errors: 0 });
  const dev = kernel.linkByName("flannel.1")!;
  assert.equal(dev.mtu, 1450);
  assert.equal(dev.up, true);
  assert.deepEqual(dev.vxlan, {
    vni: 1,
    local: "198.18.0.1",
    linkIndex: eth0.index,
    port: 8472,
    learning: false,
    gbp: false,
  });
  assert.deepEqual(kernel.addrList(dev.index), [{
    index: dev.index,
    local: "10.244.1.0/32",
  }]);
  assert.deepEqual(attrs, {
    backendType: "vxlan",
    publicIP: "198.18.0.1",
    backendData: { VNI: 1, VtepMAC: dev.mac },
  });
  assert.match(dev.mac!, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
  assert.equal(
    parseInt(dev.mac!.slice(0, 2), 16) & 3,
    2,
    "locally administered unicast",
  );
  assert.deepEqual(routesVia(kernel, dev.index), [
    "10.244.2.0/24 via 10.244.2.0",
    "10.244.3.0/24 via 10.244.3.0",
  ]);
  assert.equal(kernel.fdbs.length, 2);
  assert.equal(kernel.neighs.length, 2);
  assert.equal(rec.ready, true);
});

Deno.test("Reconciler prunes nothing before the first listing arrives", () => {
  const { kernel, rec } = node();
  rec.handle(added(peer(2)));
  rec.pass();
  // A restart: a new reconciler over the same kernel, no listing yet.
  const again = node(undefined, kernel);
  assert.deepEqual(again.rec.pass(), { ops: 0, errors: 0 });
  assert.equal(
    kernel.routes.filter((r) => r.dst === "10.244.2.0/24").length,
    1,
  );
  assert.equal(again.rec.ready, false);
  // An empty listing is still a listing: then stale entries go.
  again.rec.handle([]);
  again.rec.pass();
  assert.equal(
    kernel.routes.filter((r) => r.dst === "10.244.2.0/24").length,
    0,
  );
  assert.equal(kernel.fdbs.length, 0);
  assert.equal(kernel.neighs.length, 0);
});

Deno.test("Reconciler programs a listing still arriving, and prunes only once it is complete", () => {
  const { kernel, rec } = node();
  rec.handle(added(peer(2), peer(9)));
  rec.pass();
  // A restart: peer 9 was deleted while we were down; the listing streams.
  const again = node(undefined, kernel);
  again.rec.handle(added(peer(3)), true);
  const dev = kernel.linkByName("flannel.1")!;
  assert.deepEqual(routesVia(kernel, dev.index), [
    "10.244.2.0/24 via 10.244.2.0",
    "10.244.3.0/24 via 10.244.3.0",
    "10.244.9.0/24 via 10.244.9.0",
  ]);
  assert.equal(again.rec.ready, false);
  assert.deepEqual(again.rec.pass(), { ops: 0, errors: 0 }, "no pass yet");
  again.rec.handle(added(peer(2)), true);
  // The complete listing: now the stale peer goes, the others stay.
  again.rec.handle([]);
  again.rec.pass();
  assert.deepEqual(routesVia(kernel, dev.index), [
    "10.244.2.0/24 via 10.244.2.0",
    "10.244.3.0/24 via 10.244.3.0",
  ]);
  assert.deepEqual(kernel.fdbs.map((f) => f.dst).sort(), [
    "198.18.0.2",
    "198.18.0.3",
  ]);
  assert.equal(again.rec.ready, true);
});

Deno.test("Reconciler keeps the device and its MAC across a restart with no change", () => {
  const { kernel, rec, attrs } = node();
  rec.handle(added(peer(2)));
  rec.pass();
  const calls = new Map(kernel.calls);
  const again = node(undefined, kernel);
  assert.deepEqual(again.attrs, attrs);
  again.rec.handle(added(peer(2)));
  assert.deepEqual(again.rec.pass(), { ops: 0, errors: 0 });
  assert.deepEqual(
    kernel.calls,
    calls,
    "no mutating call on a hitless restart",
  );
});

Deno.test("Reconciler removes entries of peers deleted while it was down", () => {
  const { kernel, rec } = node();
  rec.handle(added(peer(2), peer(9)));
  rec.pass();
  const again = node(undefined, kernel);
  again.rec.handle(added(peer(2)));
  again.rec.pass();
  const dev = kernel.linkByName("flannel.1")!;
  assert.deepEqual(routesVia(kernel, dev.index), [
    "10.244.2.0/24 via 10.244.2.0",
  ]);
  assert.deepEqual(kernel.fdbs.map((f) => f.dst), ["198.18.0.2"]);
  assert.deepEqual(kernel.neighs.map((n) => n.dst), ["10.244.2.0"]);
});

Deno.test("Reconciler ignores its own lease and leases of another backend type", () => {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  const { kernel, rec, own } = node();
  rec.handle(added(own, peer(4, { type: "host-gw" }), peer(5)));
  rec.pass();
  assert.deepEqual(
    kernel.routes.filter((r) => r.dst.startsWith("10.244.")).map((r) => r.dst),
    [
      "10.244.5.0/24",
    ],
  );
  assert.equal(rec.peerCount, 1);
  // The same lease again: no second warning.
  rec.handle(added(peer(4, { type: "host-gw" })));
  setLogSink(() => {});
  const warned = lines.filter((l) =>
    l.startsWith("W") && l.includes('"node-4"')
  );
  assert.equal(warned.length, 1);
  assert.match(warned[0]!, /backend type "host-gw", this node runs "vxlan"/);
});

Deno.test("Reconciler recreates an incompatible device and replays every peer", () => {
  const kernel = new MemoryKernel();
  const eth0 = kernel.addDevice("eth0");
  kernel.addrs.push({ index: eth0.index, local: "198.18.0.1/24" });
  const old = kernel.linkAddVxlan({
    name: "flannel.1",
    vni: 7,
    port: 0,
    local: "198.18.0.1",
    linkIndex: eth0.index,
    learning: false,
    gbp: false,
    mtu: 1450,
    mac: "0a:11:11:11:11:11",
  });
  const { rec } = node(undefined, kernel);
  rec.handle(added(peer(2), peer(3)));
  rec.pass();
  const dev = kernel.linkByName("flannel.1")!;
  assert.notEqual(dev.index, old.index);
  assert.equal(dev.vxlan?.vni, 1);
  assert.equal(kernel.routes.filter((r) => r.index === dev.index).length, 2);
  assert.equal(kernel.fdbs.filter((f) => f.index === dev.index).length, 2);
});

Deno.test("Reconciler repairs a deleted device with the same MAC and replays peers", () => {
  const { kernel, rec } = node();
  rec.handle(added(peer(2), peer(3)));
  rec.pass();
  const before = kernel.linkByName("flannel.1")!;
  kernel.linkDel(before.index);
  assert.equal(
    kernel.routes.filter((r) => r.dst.startsWith("10.244.")).length,
    0,
  );
  const r = rec.pass();
  const after = kernel.linkByName("flannel.1")!;
  assert.equal(after.mac, before.mac);
  assert.equal(r.errors, 0);
  assert.equal(kernel.routes.filter((r) => r.index === after.index).length, 2);
  assert.equal(kernel.neighs.length, 2);
  assert.equal(kernel.fdbs.length, 2);
  assert.deepEqual(kernel.addrList(after.index), [{
    index: after.index,
    local: "10.244.1.0/32",
  }]);
});

Deno.test("Reconciler repairs drift: deleted route, altered neighbour, lost FDB entry", () => {
  const { kernel, rec } = node();
  rec.handle(added(peer(2), peer(3)));
  rec.pass();
  kernel.routes = kernel.routes.filter((r) => r.dst !== "10.244.2.0/24");
  kernel.neighs = kernel.neighs.map((n) =>
    n.dst === "10.244.3.0" ? { ...n, lladdr: "0a:ff:ff:ff:ff:ff" } : n
  );
  kernel.fdbs = kernel.fdbs.filter((f) => f.dst !== "198.18.0.3");
  assert.deepEqual(rec.pass(), { ops: 3, errors: 0 });
  assert.equal(
    kernel.neighs.find((n) => n.dst === "10.244.3.0")?.lladdr,
    "0a:00:00:00:00:03",
  );
  assert.equal(
    kernel.routes.filter((r) => r.dst === "10.244.2.0/24").length,
    1,
  );
  assert.equal(kernel.fdbs.filter((f) => f.dst === "198.18.0.3").length, 1);
});

Deno.test("Reconciler: one failing peer does not block the others and is retried", () => {
  const { kernel, rec } = node();
  kernel.fault = (op, obj) =>
    op === "routeAdd" && (obj as { dst: string }).dst === "10.244.3.0/24"
      ? NLE_INVAL
      : undefined;
  rec.handle(added(peer(2), peer(3), peer(4)));
  const r = rec.pass();
  assert.equal(r.errors, 1);
  assert.deepEqual(
    kernel.routes.filter((r) => r.dst.startsWith("10.244.")).map((r) => r.dst)
      .sort(),
    ["10.244.2.0/24", "10.244.4.0/24"],
  );
  assert.equal(rec.ready, false);
  kernel.fault = undefined;
  assert.equal(rec.pass().errors, 0);
  assert.equal(
    kernel.routes.filter((r) => r.dst === "10.244.3.0/24").length,
    1,
  );
  assert.equal(rec.ready, true);
});

Deno.test("Reconciler applies events at once, without a pass", () => {
  const { kernel, rec } = node();
  rec.handle(added(peer(2)));
  rec.pass();
  const passes = rec.passes;
  rec.handle(added(peer(5)));
  assert.equal(
    kernel.routes.filter((r) => r.dst === "10.244.5.0/24").length,
    1,
  );
  rec.handle(added(peer(2, { mac: "0a:00:00:00:00:77" })));
  assert.deepEqual(
    kernel.fdbs.filter((f) => f.dst === "198.18.0.2").map((f) => f.lladdr),
    [
      "0a:00:00:00:00:77",
    ],
  );
  assert.equal(
    kernel.neighs.find((n) => n.dst === "10.244.2.0")?.lladdr,
    "0a:00:00:00:00:77",
  );
  rec.handle(removed(peer(5)));
  assert.equal(
    kernel.routes.filter((r) => r.dst === "10.244.5.0/24").length,
    0,
  );
  assert.equal(kernel.fdbs.filter((f) => f.dst === "198.18.0.5").length, 0);
  assert.equal(rec.passes, passes);
});

Deno.test("Reconciler counts its kernel writes by the notification each causes, failed ones not", () => {
  const { kernel, rec } = node();
  rec.handle(added(peer(2)));
  rec.pass();
  const before = rec.writes;
  rec.handle(added(peer(5)));
  rec.handle(removed(peer(5)));
  const after = rec.writes;
  const diff = Object.fromEntries(
    Object.entries(after).map((
      [k, n],
    ) => [k, n - before[k as keyof typeof before]]),
  );
  assert.deepEqual(diff, PEER_ADDED_AND_REMOVED);
  // A write the kernel refuses is no echo to expect.
  kernel.fault = (op) => op === "routeAdd" ? NLE_INVAL : undefined;
  const failing = rec.writes;
  rec.handle(added(peer(6)));
  assert.equal(kernel.routes.some((r) => r.dst === "10.244.6.0/24"), false);
  assert.equal(rec.writes.newRoute, failing.newRoute);
});

Deno.test("Reconciler with DirectRouting routes on-link peers directly, others through VXLAN", () => {
  const { kernel, rec, eth0 } = node(
    '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}',
  );
  rec.handle(added(peer(2), peer(3, { ip: "203.0.113.3" })));
  rec.pass();
  const dev = kernel.linkByName("flannel.1")!;
  assert.deepEqual(
    routesVia(kernel, eth0.index).filter((r) => r.startsWith("10.244.")),
    [
      "10.244.2.0/24 via 198.18.0.2",
    ],
  );
  assert.deepEqual(routesVia(kernel, dev.index), [
    "10.244.3.0/24 via 10.244.3.0",
  ]);
  assert.deepEqual(kernel.fdbs.map((f) => f.dst), ["203.0.113.3"]);
  // The peer leaves: its direct route goes too.
  rec.handle(removed(peer(2)));
  assert.deepEqual(
    routesVia(kernel, eth0.index).filter((r) => r.startsWith("10.244.")),
    [],
  );
});

Deno.test("IPv6 device MTU is capped by the 70-byte IPv6 outer header", () => {
  const kernel = new MemoryKernel();
  const eth0 = kernel.addDevice("eth0", 1500);
  const config = unwrap(parseNetConfig(
    '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}',
  ));
  const backend = unwrap(createBackend(kernel, config, {
    index: eth0.index,
    name: "eth0",
    mtu: 1500,
    ifaceV6Addr: "2001:db8::1",
    publicIPv6: "2001:db8::1",
  }));
  const attrs = backend.prepare();
  const net = backend.start({
    key: "me",
    ipv6Subnet: "fc00:0:0:1::/64",
    attrs,
  });
  assert.equal(net.mtu, 1430);
  const rec = new Reconciler(kernel, net.families, {
    ownKey: "me",
    backendType: "vxlan",
  });
  rec.handle(added({
    key: "p",
    ipv6Subnet: "fc00:0:0:2::/64",
    attrs: {
      backendType: "vxlan",
      publicIPv6: "2001:db8::2",
      backendV6Data: { VNI: 1, VtepMAC: "0a:00:00:00:00:02" },
    },
  }));
  rec.pass();
  const dev = kernel.linkByName("flannel-v6.1")!;
  assert.equal(dev.mtu, 1430);
  assert.deepEqual(kernel.addrList(dev.index), [{
    index: dev.index,
    local: "fc00:0:0:1::/128",
  }]);
  assert.deepEqual(
    kernel.routes.filter((r) => r.index === dev.index).map((r) =>
      `${r.dst} via ${r.gw}`
    ),
    [
      "fc00:0:0:2::/64 via fc00:0:0:2::",
    ],
  );
});

Deno.test("host-gw routes peers via their public IP and refuses NAT", () => {
  const kernel = new MemoryKernel();
  const eth0 = kernel.addDevice("eth0", 1500);
  const config = unwrap(
    parseNetConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}'),
  );
  const nat = createBackend(kernel, config, {
    index: eth0.index,
    name: "eth0",
    mtu: 1500,
    ifaceAddr: "198.18.0.1",
    publicIP: "203.0.113.1",
  });
  assert.ok(!nat.ok && /cannot run behind NAT.*"203.0.113.1"/.test(nat.reason));
  const backend = unwrap(createBackend(kernel, config, {
    index: eth0.index,
    name: "eth0",
    mtu: 1500,
    ifaceAddr: "198.18.0.1",
    publicIP: "198.18.0.1",
  }));
  const attrs = backend.prepare();
  assert.deepEqual(attrs, { backendType: "host-gw", publicIP: "198.18.0.1" });
  const net = backend.start({ key: "me", subnet: "10.244.1.0/24", attrs });
  assert.equal(net.mtu, 1500);
  const rec = new Reconciler(kernel, net.families, {
    ownKey: "me",
    backendType: "host-gw",
  });
  rec.handle(added(peer(2, { type: "host-gw" }), peer(3)));
  rec.pass();
  assert.deepEqual(routesVia(kernel, eth0.index), [
    "10.244.2.0/24 via 198.18.0.2",
  ]);
});

Deno.test("createBackend() names a bad Backend key and an unknown type", () => {
  const kernel = new MemoryKernel();
  const eth0 = kernel.addDevice("eth0");
  const u = {
    index: eth0.index,
    name: "eth0",
    mtu: 1500,
    ifaceAddr: "198.18.0.1",
    publicIP: "198.18.0.1",
  };
  const bad = createBackend(
    kernel,
    unwrap(
      parseNetConfig(
        '{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}',
      ),
    ),
    u,
  );
  assert.ok(
    !bad.ok && bad.reason === 'Invalid Backend.VNI "1": must be an integer',
  );
  const udp = createBackend(
    kernel,
    unwrap(
      parseNetConfig('{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}'),
    ),
    u,
  );
  assert.ok(!udp.ok && /Unsupported backend type "udp"/.test(udp.reason));
});

Deno.test("Reconciler metrics: peers programmed excludes failing peers; latency is observed once programmed", () => {
  const { kernel, rec } = node();
  kernel.fault = (op, obj) =>
    op === "routeAdd" && (obj as { dst: string }).dst === "10.244.3.0/24"
      ? NLE_INVAL
      : undefined;
  const before = metrics.eventToKernel.count;
  rec.handle(added(peer(2), peer(3), peer(4)));
  rec.pass();
  assert.equal(metrics.peersProgrammed.get(), 2);
  assert.equal(
    metrics.eventToKernel.count - before,
    2,
    "the failing peer is not observed yet",
  );
  kernel.fault = undefined;
  rec.pass();
  assert.equal(metrics.peersProgrammed.get(), 3);
  assert.equal(metrics.eventToKernel.count - before, 3);
  // A removal is observed when its entries are gone.
  rec.handle(removed(peer(4)));
  assert.equal(metrics.peersProgrammed.get(), 2);
  assert.equal(metrics.eventToKernel.count - before, 4);
  rec.pass();
  assert.equal(metrics.eventToKernel.count - before, 4, "observed once");
});

Deno.test("Backend.MTU is the underlay MTU: devices get 50 less, capped as the kernel caps them", () => {
  const cases: [string, number, number, number][] = [
    // [Backend MTU key, underlay MTU, flannel.1, flannel-v6.1]
    ["", 1500, 1450, 1430],
    [',"MTU":1400', 1500, 1350, 1350],
    [',"MTU":9000', 1500, 1450, 1430],
    [',"MTU":1460', 1500, 1410, 1410],
    ["", 9000, 8950, 8930],
  ];
  for (const [key, underlay, v4, v6] of cases) {
    const kernel = new MemoryKernel();
    const eth0 = kernel.addDevice("eth0", underlay);
    const config = unwrap(parseNetConfig(
      `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"${key}}}`,
    ));
    const backend = unwrap(createBackend(kernel, config, {
      index: eth0.index,
      name: "eth0",
      mtu: underlay,
      ifaceAddr: "198.18.0.1",
      publicIP: "198.18.0.1",
      ifaceV6Addr: "2001:db8::1",
      publicIPv6: "2001:db8::1",
    }));
    backend.prepare();
    const net = backend.start({
      key: "me",
      subnet: "10.244.1.0/24",
      ipv6Subnet: "fc00:0:0:1::/64",
      attrs: { backendType: "vxlan" },
    });
    assert.equal(kernel.linkByName("flannel.1")!.mtu, v4, `${key} ${underlay}`);
    assert.equal(
      kernel.linkByName("flannel-v6.1")!.mtu,
      v6,
      `${key} ${underlay}`,
    );
    assert.equal(net.mtu, v4, `subnet.env MTU ${key} ${underlay}`);
  }
  const bad = createBackend(
    new MemoryKernel(),
    unwrap(parseNetConfig(
      '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":100}}',
    )),
    { index: 1, name: "eth0", mtu: 1500, ifaceAddr: "198.18.0.1" },
  );
  assert.ok(!bad.ok && /Backend.MTU 100: must be 118..65535/.test(bad.reason));
});

Deno.test("flannel.1 follows an external interface that is deleted and recreated", () => {
  const { kernel, rec, eth0 } = node();
  rec.handle(added(peer(2)));
  rec.pass();
  // Deleting the interface deletes the VXLAN devices bound to it.
  kernel.linkDel(kernel.linkByName("flannel.1")!.index);
  kernel.linkDel(eth0.index);
  const gone = rec.pass();
  assert.ok(gone.errors > 0, "a pass without the interface reports an error");
  assert.equal(kernel.linkByName("flannel.1"), undefined);
  const eth0b = kernel.addDevice("eth0", 1500);
  assert.notEqual(eth0b.index, eth0.index);
  rec.pass();
  const dev = kernel.linkByName("flannel.1")!;
  assert.equal(dev.vxlan?.linkIndex, eth0b.index);
  assert.deepEqual(routesVia(kernel, dev.index), [
    "10.244.2.0/24 via 10.244.2.0",
  ]);
  assert.equal(kernel.fdbs.filter((f) => f.index === dev.index).length, 1);
});

Deno.test("Reconciler: a peer the kernel keeps refusing leaves it synced (ready for this node) and is reported as failing", () => {
  const { kernel, rec } = node();
  kernel.fault = (op, obj) =>
    op === "routeAdd" && (obj as { dst: string }).dst === "10.244.3.0/24"
      ? NLE_INVAL
      : undefined;
  assert.equal(rec.synced, false);
  rec.handle(added(peer(2), peer(3)));
  for (let i = 0; i < 3; i++) rec.pass();
  assert.equal(rec.synced, true);
  assert.equal(rec.ready, false);
  const failing = rec.failing();
  assert.equal(failing.length, 1);
  assert.equal(failing[0]!.key, "node-3");
  assert.equal(failing[0]!.family, 4);
  assert.match(
    failing[0]!.error,
    /^ip route add 10\.244\.3\.0\/24 via 10\.244\.3\.0 dev flannel\.1 onlink: .*injected fault/,
  );
  assert.equal(metrics.peersFailing.get(), 1);
  kernel.fault = undefined;
  rec.pass();
  assert.deepEqual(rec.failing(), []);
  assert.equal(metrics.peersFailing.get(), 0);
});

/** A node's reconciler with its own `run()` options, for the run loop. */
function runnable(opts: Partial<ReconcilerOptions>) {
  const { kernel, network, own } = node();
  const rec = new Reconciler(kernel, network.families, {
    ownKey: own.key,
    backendType: "vxlan",
    ...opts,
  });
  return { kernel, rec };
}

Deno.test("Reconciler.run() adds no lasting abort listener per kernel notification", async () => {
  const { rec } = runnable({ debounceMs: 0 });
  rec.handle(added(peer(2)));
  const ac = new AbortController();
  // Count the listeners on the run signal as they come and go.
  let live = 0;
  let peak = 0;
  const add = ac.signal.addEventListener.bind(ac.signal);
  const remove = ac.signal.removeEventListener.bind(ac.signal);
  const listeners = new Set<unknown>();
  ac.signal.addEventListener = ((type: string, fn: unknown, o?: unknown) => {
    if (type === "abort" && !listeners.has(fn)) {
      listeners.add(fn);
      live++;
      peak = Math.max(peak, live);
    }
    add(type, fn as EventListener, o as AddEventListenerOptions);
  }) as typeof ac.signal.addEventListener;
  ac.signal.removeEventListener = ((type: string, fn: unknown, o?: unknown) => {
    if (type === "abort" && listeners.delete(fn)) live--;
    remove(type, fn as EventListener, o as EventListenerOptions);
  }) as typeof ac.signal.removeEventListener;
  let notifications = 0;
  const changes = {
    next: () => {
      notifications++;
      return new Promise((r) => setTimeout(r, 0));
    },
    close: () => {},
  };
  const done = rec.run(ac.signal, changes);
  while (notifications < 500) await new Promise((r) => setTimeout(r, 1));
  const during = live;
  ac.abort();
  await done;
  assert.ok(notifications >= 500);
  // The run loop's own listener plus at most one sleep in flight.
  assert.ok(
    during <= 2,
    `${during} abort listeners after ${notifications} notifications`,
  );
  assert.ok(peak <= 3, `peak ${peak}`);
});

Deno.test("Reconciler.run() calls afterPass once after each full pass, none before the first listing", async () => {
  let calls = 0;
  const { kernel, rec } = runnable({ periodMs: 1, afterPass: () => calls++ });
  const ac = new AbortController();
  const done = rec.run(ac.signal);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(calls, 0, "no pass, so no collection, before the listing");
  rec.handle(added(peer(2)));
  while (rec.passes < 3) await new Promise((r) => setTimeout(r, 1));
  ac.abort();
  await done;
  assert.equal(calls, rec.passes);
  assert.equal(
    kernel.routes.filter((r) => r.dst === "10.244.2.0/24").length,
    1,
  );
});

Deno.test("Reconciler changes no entry the kernel holds while the listing is still arriving", () => {
  const { kernel, rec } = node();
  rec.handle(added(peer(2)));
  rec.pass();
  const fdb = () =>
    kernel.fdbs.map((f) => `${f.lladdr} ${f.dst}`).sort().join(", ");
  const neigh = () =>
    kernel.neighs.map((n) => `${n.dst} ${n.lladdr}`).sort().join(", ");
  const routes = () =>
    kernel.routes.filter((r) => r.dst.startsWith("10.244."))
      .map((r) => `${r.dst} via ${r.gw}`).sort().join(", ");
  const before = { fdb: fdb(), neigh: neigh() };
  // A restart; the listing so far holds, sorted before node-2, one node
  // with node-2's MAC and one with node-2's subnet, and a new node-3.
  const again = node(undefined, kernel);
  const copies = [
    peer(50, { key: "a-copies-mac", mac: "0a:00:00:00:00:02" }),
    peer(2, {
      key: "a-copies-subnet",
      mac: "0a:00:00:00:00:99",
      ip: "198.18.0.99",
    }),
  ];
  again.rec.handle(added(...copies, peer(3)), true);
  assert.equal(fdb(), `${before.fdb}, 0a:00:00:00:00:03 198.18.0.3`);
  assert.equal(
    neigh(),
    `${before.neigh}, 10.244.3.0 0a:00:00:00:00:03`,
    "node-2's neighbour not re-pointed, node-3's added",
  );
  assert.match(routes(), /10\.244\.2\.0\/24 via 10\.244\.2\.0/);
  assert.match(routes(), /10\.244\.3\.0\/24 via 10\.244\.3\.0/);
  assert.doesNotMatch(
    routes(),
    /10\.244\.50\./,
    "held back until the listing is complete",
  );
  // The complete listing settles it: the lease table withdraws both
  // copies (node-2 is older) and adds node-2.
  again.rec.handle([...removed(...copies), ...added(peer(2))]);
  again.rec.pass();
  assert.equal(
    fdb(),
    "0a:00:00:00:00:02 198.18.0.2, 0a:00:00:00:00:03 198.18.0.3",
  );
  assert.equal(again.rec.ready, true);
});

Deno.test("Reconciler reads the kernel once per listing, and holds a peer that would change what an earlier batch of it programmed", () => {
  const { kernel, rec } = node();
  rec.handle(added(peer(2)));
  rec.pass();
  const again = node(undefined, kernel);
  let dumps = 0;
  const fdbList = kernel.fdbList.bind(kernel);
  kernel.fdbList = (index) => (dumps++, fdbList(index));
  again.rec.handle(added(peer(3)), true);
  // A later batch of the same listing: a node with node-3's MAC.
  again.rec.handle(
    added(peer(60, { key: "b-copies-mac", mac: "0a:00:00:00:00:03" })),
    true,
  );
  again.rec.handle(added(peer(4)), true);
  assert.equal(dumps, 1, "one FDB dump for three batches");
  assert.deepEqual(kernel.fdbs.map((f) => `${f.lladdr} ${f.dst}`).sort(), [
    "0a:00:00:00:00:02 198.18.0.2",
    "0a:00:00:00:00:03 198.18.0.3",
    "0a:00:00:00:00:04 198.18.0.4",
  ]);
  assert.equal(
    kernel.routes.filter((r) => r.dst === "10.244.60.0/24").length,
    0,
    "held back until the listing is complete",
  );
});

/**
 * A change source under the test's control: `notify()` resolves the
 * pending `next()` (a notification the agent's source would return), and
 * `quiet()` answers as the agent's does: not after `hear()` (a change or
 * an overrun), once per call.
 */
function fakeChanges() {
  let notified: () => void = () => {};
  let closed: (e: Error) => void = () => {};
  let heard = false;
  const source = {
    next: () =>
      new Promise<unknown>((resolve, reject) => {
        notified = () => resolve(undefined);
        closed = reject;
      }),
    close: () => closed(new Error("closed")),
    quiet: () => {
      const quiet = !heard;
      heard = false;
      return quiet;
    },
  };
  return {
    source,
    notify: () => notified(),
    hear: () => heard = true,
  };
}

/** The periods skipped so far; each counts one period of the timer. */
const skips = () => metrics.reconcileQuietSkips.get();

/**
 * Waits, bounded, until `done()`: a loop that never gets there fails the
 * assertion after it instead of hanging the test.
 */
async function until(done: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done() && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Runs `rec` while `body` runs, and stops it even when `body` throws. */
async function running(
  rec: Reconciler,
  changes: ChangeSource | undefined,
  body: () => Promise<void>,
): Promise<void> {
  const ac = new AbortController();
  const done = rec.run(ac.signal, changes);
  try {
    await body();
  } finally {
    ac.abort();
    await done;
  }
}

Deno.test("Reconciler.run() runs no pass while the kernel reports nothing, up to MAX_QUIET_SKIPS periods; a notification wakes one, a period after an overrun runs one", async () => {
  const { rec } = runnable({ periodMs: 2, debounceMs: 0 });
  const { source, notify, hear } = fakeChanges();
  rec.handle(added(peer(2)));
  const s0 = skips();
  await running(rec, source, async () => {
    // The listing's own pass, then no pass over many periods.
    await until(() => skips() - s0 >= 30);
    assert.ok(skips() - s0 >= 30, `only ${skips() - s0} periods skipped`);
    assert.equal(rec.passes, 1, "no period ran a pass");
    // A notification wakes a pass, even while the periods are quiet.
    notify();
    await until(() => rec.passes === 2);
    assert.equal(rec.passes, 2, "the notification woke a pass");
    const s1 = skips();
    await until(() => skips() - s1 >= 10);
    assert.equal(rec.passes, 2, "and quiet again after it");
    // An overrun (or any change heard) makes the next period run a pass:
    // no period is skipped before it.
    const s2 = skips();
    hear();
    await until(() => rec.passes === 3);
    assert.equal(rec.passes, 3, "the period after the overrun ran a pass");
    assert.equal(skips(), s2, "the very next period");
    const s3 = skips();
    await until(() => skips() - s3 >= 10);
    assert.equal(rec.passes, 3, "quiet again: no pass");
    // The backstop: after MAX_QUIET_SKIPS quiet periods, one pass.
    await until(() => rec.passes === 4);
    assert.equal(rec.passes, 4, "a pass after MAX_QUIET_SKIPS quiet periods");
    assert.equal(skips() - s3, MAX_QUIET_SKIPS, "not one period sooner");
  });
});

Deno.test("Reconciler.run() runs a pass every period without a change source (the monitor could not be opened), or with one that has no quiet()", async () => {
  const { next, close } = fakeChanges().source;
  for (const changes of [undefined, { next, close }]) {
    const { rec } = runnable({ periodMs: 2 });
    rec.handle(added(peer(2)));
    const s0 = skips();
    await running(rec, changes, () => until(() => rec.passes >= 6));
    assert.ok(rec.passes >= 6, `only ${rec.passes} passes`);
    assert.equal(skips(), s0, "no period skipped");
  }
});

Deno.test("Reconciler.run() runs a pass every period while a peer fails or waits for a foreign route, quiet source or not", async () => {
  const { kernel, rec } = runnable({ periodMs: 2, debounceMs: 0 });
  const eth0 = kernel.linkByName("eth0")!;
  const { source } = fakeChanges();
  // The foreign route may go without a notification (IPv4 flushes the
  // routes of a device going down silently): only a pass sees it gone.
  const theirs = {
    dst: "10.244.2.0/24",
    gw: "198.18.0.77",
    index: eth0.index,
    protocol: 4,
  };
  kernel.routes.push(theirs);
  rec.handle(added(peer(2), peer(3)));
  const s0 = skips();
  await running(rec, source, async () => {
    await until(() => rec.passes >= 5);
    assert.ok(rec.passes >= 5, `only ${rec.passes} passes while a peer waits`);
    assert.equal(skips(), s0, "no period skipped while a peer waits");
    assert.equal(metrics.peersWaitingForeignRoute.get(), 1);
    // The route goes, unreported: a period's pass programs the lease, and
    // then the periods are quiet.
    kernel.routes = kernel.routes.filter((r) => r !== theirs);
    await until(() => skips() - s0 >= 10);
    assert.equal(
      kernel.routes.find((r) => r.dst === "10.244.2.0/24")?.protocol,
      87,
    );
    assert.equal(metrics.peersWaitingForeignRoute.get(), 0);
    // A peer the kernel refuses: every period retries it (with backoff capped
    // at the period), none is skipped.
    let refuse = true;
    kernel.fault = (op, obj) =>
      refuse && op.startsWith("route") &&
        (obj as { dst?: string }).dst === "10.244.4.0/24"
        ? NLE_INVAL
        : undefined;
    rec.handle(added(peer(4)));
    const [p1, s1] = [rec.passes, skips()];
    await until(() => rec.passes >= p1 + 5);
    assert.ok(rec.passes >= p1 + 5, "the failing peer is retried");
    assert.equal(skips(), s1, "no period skipped while it fails");
    refuse = false;
    await until(() => skips() - s1 >= 5);
    assert.equal(
      kernel.routes.find((r) => r.dst === "10.244.4.0/24")?.protocol,
      87,
    );
    const p2 = rec.passes;
    const s2 = skips();
    await until(() => skips() - s2 >= 10);
    assert.equal(rec.passes, p2, "once it is programmed, quiet periods");
  });
});

Deno.test("Reconciler: a lease whose destination holds a foreign route waits, logged once, counted, and is programmed once the route is gone", () => {
  const { kernel, eth0, rec } = node();
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  try {
    // An operator's route where peer 2's subnet will be, and a route a
    // BGP daemon put on another device where peer 3's is.
    const theirs = {
      dst: "10.244.2.0/24",
      gw: "198.18.0.77",
      index: eth0.index,
      protocol: 4,
    };
    const dummy = kernel.addDevice("dummy0");
    const bgp = { dst: "10.244.3.0/24", index: dummy.index, protocol: 186 };
    kernel.routes.push(theirs, bgp);
    rec.handle(added(peer(2), peer(3), peer(4)));
    assert.deepEqual(rec.pass().errors, 0);
    assert.deepEqual(rec.pass(), { ops: 0, errors: 0 });
    const at = (dst: string) => kernel.routes.filter((r) => r.dst === dst);
    assert.deepEqual(at("10.244.2.0/24"), [{ ...theirs }]);
    assert.deepEqual(at("10.244.3.0/24"), [{ ...bgp }]);
    assert.equal(at("10.244.4.0/24").length, 1);
    assert.equal(metrics.peersWaitingForeignRoute.get(), 2);
    // Not a failure: the node stays ready.
    assert.equal(rec.ready, true);
    const waits = lines.filter((l) => l.includes(" waits: route "));
    assert.equal(waits.length, 2, waits.join("\n"));
    assert.match(
      waits.find((l) => l.includes('"node-2"'))!,
      /route "10\.244\.2\.0\/24 via 198\.18\.0\.77 dev eth0 proto static"/,
    );
    assert.match(
      waits.find((l) => l.includes('"node-3"'))!,
      /route "10\.244\.3\.0\/24 dev dummy0 proto bgp"/,
    );
    // A change of the peer while it waits writes nothing over the route.
    rec.handle(added(peer(2, { ip: "198.18.0.22" })));
    assert.deepEqual(at("10.244.2.0/24"), [{ ...theirs }]);
    rec.pass();
    // The operator's route goes: the next pass programs the lease.
    kernel.routes = kernel.routes.filter((r) => r !== theirs);
    lines.length = 0;
    rec.pass();
    assert.equal(at("10.244.2.0/24")[0]?.protocol, 87);
    assert.equal(at("10.244.2.0/24")[0]?.gw, "10.244.2.0");
    assert.equal(metrics.peersWaitingForeignRoute.get(), 1);
    assert.equal(
      lines.filter((l) => l.includes('"node-2" no longer waits')).length,
      1,
    );
    assert.equal(lines.filter((l) => l.includes(" waits: route ")).length, 0);
  } finally {
    setLogSink(() => {});
  }
});

Deno.test("Reconciler: an event for a new lease never replaces a foreign route that arrived after the last pass", () => {
  const { kernel, eth0, rec } = node();
  rec.handle(added(peer(2)));
  rec.pass();
  const theirs = {
    dst: "10.244.5.0/24",
    gw: "198.18.0.55",
    index: eth0.index,
    protocol: 4,
  };
  kernel.routes.push(theirs);
  const replaced: unknown[] = [];
  kernel.fault = (op, obj) => {
    if (op === "routeReplace") replaced.push(obj);
    return undefined;
  };
  rec.handle(added(peer(5)));
  assert.deepEqual(
    kernel.routes.filter((r) => r.dst === "10.244.5.0/24"),
    [{ ...theirs }],
  );
  assert.deepEqual(replaced, []);
  assert.equal(metrics.peersWaitingForeignRoute.get(), 1);
  // The pass it wakes names the route, and still writes nothing over it.
  rec.pass();
  assert.deepEqual(
    kernel.routes.filter((r) => r.dst === "10.244.5.0/24"),
    [{ ...theirs }],
  );
  kernel.routes = kernel.routes.filter((r) => r !== theirs);
  rec.pass();
  assert.equal(
    kernel.routes.find((r) => r.dst === "10.244.5.0/24")?.protocol,
    87,
  );
  assert.equal(metrics.peersWaitingForeignRoute.get(), 0);
});

Deno.test("Reconciler: during the first listing, a foreign route shaped like weft's is not taken over", () => {
  const { kernel, rec } = node();
  rec.handle(added(peer(2)), true);
  const dev = kernel.linkByName("flannel.1")!;
  // Someone else's copy of weft's route, marked with their protocol.
  const theirs = {
    dst: "10.244.3.0/24",
    gw: "10.244.3.0",
    index: dev.index,
    onlink: true,
    table: 254,
    protocol: 4,
  };
  kernel.routes.push(theirs);
  rec.handle(added(peer(3)), true);
  rec.handle([]);
  rec.pass();
  assert.deepEqual(
    kernel.routes.filter((r) => r.dst === "10.244.3.0/24"),
    [theirs],
  );
  // flanneld's own route (protocol boot, its exact shape) is adopted.
  kernel.routes = kernel.routes.filter((r) => r !== theirs);
  kernel.routes.push({ ...theirs, protocol: RTPROT_BOOT });
  rec.pass();
  assert.equal(
    kernel.routes.find((r) => r.dst === "10.244.3.0/24")?.protocol,
    87,
  );
});

Deno.test("A link named flannel.<VNI> that is not a VXLAN device stops the backend with its name and kind, and stays", () => {
  const kernel = new MemoryKernel();
  kernel.addDevice("eth0");
  const theirs = kernel.addDevice("flannel.1");
  kernel.links.set(theirs.index, { ...theirs, kind: "bridge" });
  assert.throws(
    () => node(undefined, kernel),
    /Link "flannel\.1" exists and is not a VXLAN device \(kind "bridge"\)/,
  );
  assert.equal(kernel.linkByName("flannel.1")?.index, theirs.index);
  assert.equal(kernel.linkByName("flannel.1")?.kind, "bridge");
});
