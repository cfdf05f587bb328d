/**
 * Kernel tests of route ownership: weft marks its routes with its own
 * rtnetlink protocol and deletes only those, naming the protocol so the
 * kernel matches nothing else; a route a flanneld left is adopted by an
 * in-place replace (no RTM_DELROUTE, so no packet is lost); routes someone
 * else installed into the cluster network on the external interface stay,
 * and one at a destination a lease claims holds that lease's route back
 * until it is gone. A link of the device's name that is not VXLAN stays.
 *
 * @module
 */
import assert from "node:assert/strict";
import { kernelTest, Netns } from "../_netns.ts";
import { openNetlink } from "../../ffi/netlink.ts";
import { KernelError, type Netlink, RTPROT_WEFT } from "../../ffi/types.ts";
import { createBackend, Reconciler } from "../../backend/mod.ts";
import type { Lease } from "../../subnet/lease.ts";
import { type NetworkConfig, parseNetConfig } from "../../subnet/config.ts";
import { unwrap } from "../../lib/result.ts";
import { setLogSink } from "../../lib/log.ts";
import { metrics } from "../../lib/metrics.ts";

setLogSink(() => {});

const config = unwrap(parseNetConfig(
  '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}',
));
const vxlanConfig = unwrap(parseNetConfig('{"Network":"10.244.0.0/16"}'));

/** The backend of node 1 (eth0 at 198.18.0.1, fd18::1) on `node()`. */
function backendOn(nl: Netlink, conf: NetworkConfig) {
  const eth0 = nl.linkByName("eth0")!;
  return unwrap(createBackend(nl, conf, {
    index: eth0.index,
    name: "eth0",
    mtu: eth0.mtu,
    ifaceAddr: "198.18.0.1",
    publicIP: "198.18.0.1",
    ...(conf.enableIPv6 && { ifaceV6Addr: "fd18::1", publicIPv6: "fd18::1" }),
  }));
}

/** Node 1's reconciler, its backend prepared and started on `node()`. */
function reconcilerOn(nl: Netlink, conf: NetworkConfig): Reconciler {
  const backend = backendOn(nl, conf);
  const own: Lease = {
    key: "node1",
    subnet: "10.244.1.0/24",
    ...(conf.enableIPv6 && { ipv6Subnet: "fc00:0:0:1::/64" }),
    attrs: backend.prepare(),
  };
  return new Reconciler(nl, backend.start(own).families, {
    ownKey: "node1",
    backendType: backend.type,
  });
}

function peer(n: number): Lease {
  return {
    key: `node${n}`,
    subnet: `10.244.${n}.0/24`,
    ipv6Subnet: `fc00:0:0:${n}::/64`,
    attrs: {
      backendType: "host-gw",
      publicIP: `198.18.0.${n}`,
      publicIPv6: `fd18::${n}`,
    },
  };
}

/** A node with eth0 (a veth whose peer stays inside) at 198.18.0.1/24. */
async function node(): Promise<Netns> {
  const ns = await Netns.create("owner");
  await ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p");
  await ns.ip("link", "set", "eth0p", "up");
  await ns.ip("link", "set", "eth0", "up");
  await ns.ip("addr", "add", "198.18.0.1/24", "dev", "eth0");
  await ns.ip("addr", "add", "fd18::1/64", "dev", "eth0", "nodad");
  return ns;
}

/**
 * `ip monitor route` in `ns`. A marker route (192.0.2.x/32, outside the
 * cluster network) added and deleted brackets what is recorded: the
 * monitor is listening once it reports the first marker, and `stop()`
 * returns what it printed up to a second marker written after everything
 * else, so a late notification is waited for, never missed.
 */
async function routeMonitor(ns: Netns): Promise<{ stop(): Promise<string> }> {
  const child = new Deno.Command("ip", {
    args: ["-n", ns.name, "monitor", "route"],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let pending: Promise<ReadableStreamReadResult<string>> | undefined;
  /** Reads until `re` matches or `ms` pass; whether it matched. */
  const seen = async (re: RegExp, ms: number) => {
    const end = Date.now() + ms;
    while (!re.test(text)) {
      const left = end - Date.now();
      if (left <= 0) return false;
      pending ??= reader.read();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const r = await Promise.race([
        pending,
        new Promise<undefined>((res) => {
          timer = setTimeout(() => res(undefined), left);
        }),
      ]);
      clearTimeout(timer);
      if (r === undefined) continue;
      pending = undefined;
      if (r.done) throw new Error(`ip monitor route ended: ${text}`);
      text += r.value;
    }
    return true;
  };
  const marker = async (n: number, ms: number) => {
    await ns.ip("route", "add", `192.0.2.${n}/32`, "dev", "eth0");
    await ns.ip("route", "del", `192.0.2.${n}/32`, "dev", "eth0");
    return await seen(new RegExp(`^Deleted 192\\.0\\.2\\.${n} `, "m"), ms);
  };
  let n = 1;
  while (!(await marker(n, 500))) {
    if (++n > 20) throw new Error("ip monitor route never reported a marker");
  }
  text = "";
  return {
    async stop() {
      const ok = await marker(250, 10_000);
      child.kill("SIGTERM");
      await reader.cancel();
      await child.status;
      if (!ok) throw new Error(`ip monitor route lost the end marker: ${text}`);
      return text.split("\n").filter((l) => !l.includes("192.0.2.")).join("\n");
    },
  };
}

/** `ip route show` lines of a family, as text. */
async function routes(ns: Netns, family: "-4" | "-6"): Promise<string[]> {
  const out = await ns.ip(family, "route", "show", "proto", "all");
  return out.split("\n").map((l) => l.trim()).filter((l) => l !== "");
}

kernelTest(
  "host-gw: adopts flanneld's routes without a delete, deletes only its own, leaves foreign routes alone",
  async () => {
    await using ns = await node();
    using nl = openNetlink({ netns: ns.path });
    // Left by flanneld (protocol boot, what `ip route` writes too).
    await ns.ip("route", "add", "10.244.2.0/24", "via", "198.18.0.2");
    await ns.ip("-6", "route", "add", "fc00:0:0:2::/64", "via", "fd18::2");
    // An administrator's routes into the cluster network that no lease wants.
    await ns.ip("route", "add", "10.244.50.0/24", "via", "198.18.0.50");
    await ns.ip(
      "route",
      "add",
      "10.244.51.0/24",
      "via",
      "198.18.0.51",
      "proto",
      "static",
    );
    const rec = reconcilerOn(nl, config);
    const monitor = await routeMonitor(ns);
    rec.handle([2, 3].map((n) => ({
      type: "added" as const,
      lease: peer(n),
      receivedAt: 0,
    })));
    assert.deepEqual(rec.pass().errors, 0);
    const seen = await monitor.stop();
    assert.ok(!/^Deleted .*10\.244\.2\.0\/24/m.test(seen), seen);
    assert.ok(!/^Deleted .*fc00:0:0:2::\/64/m.test(seen), seen);
    assert.ok(
      /10\.244\.2\.0\/24 via 198\.18\.0\.2 .*proto 87/.test(seen),
      seen,
    );

    const v4 = await routes(ns, "-4");
    assert.ok(
      v4.includes("10.244.2.0/24 via 198.18.0.2 dev eth0 proto 87"),
      v4.join("\n"),
    );
    assert.ok(v4.includes("10.244.3.0/24 via 198.18.0.3 dev eth0 proto 87"));
    const v6 = await routes(ns, "-6");
    assert.ok(
      v6.some((l) =>
        l.startsWith("fc00:0:0:2::/64 via fd18::2 dev eth0 proto 87")
      ),
      v6.join("\n"),
    );
    // Nothing to do on the next pass: adoption is done.
    assert.deepEqual(rec.pass(), { ops: 0, errors: 0 });

    // Peer 2 goes: its route goes; the administrator's stay.
    rec.handle([{ type: "removed", lease: peer(2), receivedAt: 0 }]);
    assert.deepEqual(rec.pass().errors, 0);
    const after = await routes(ns, "-4");
    assert.ok(!after.some((l) => l.startsWith("10.244.2.0/24")));
    assert.ok(after.includes("10.244.50.0/24 via 198.18.0.50 dev eth0"));
    assert.ok(
      after.includes("10.244.51.0/24 via 198.18.0.51 dev eth0 proto static"),
    );
    assert.ok(
      !(await routes(ns, "-6")).some((l) => l.startsWith("fc00:0:0:2::/64")),
    );

    // Someone replaces peer 3's route with their own between our passes:
    // our delete names our protocol, so the kernel keeps theirs.
    await ns.ip(
      "route",
      "replace",
      "10.244.3.0/24",
      "via",
      "198.18.0.33",
      "proto",
      "static",
    );
    rec.handle([{ type: "removed", lease: peer(3), receivedAt: 0 }]);
    assert.ok(
      (await routes(ns, "-4")).includes(
        "10.244.3.0/24 via 198.18.0.33 dev eth0 proto static",
      ),
    );
  },
);

kernelTest(
  "routeDel() naming weft's protocol never removes another protocol's route, IPv4 or IPv6",
  async () => {
    await using ns = await node();
    using nl = openNetlink({ netns: ns.path });
    const index = nl.linkByName("eth0")!.index;
    await ns.ip("route", "add", "10.244.9.0/24", "via", "198.18.0.9");
    await ns.ip("-6", "route", "add", "fc00:0:0:9::/64", "via", "fd18::9");
    for (
      const [dst, gw] of [
        ["10.244.9.0/24", "198.18.0.9"],
        ["fc00:0:0:9::/64", "fd18::9"],
      ] as const
    ) {
      assert.throws(
        () => nl.routeDel({ dst, gw, index, protocol: RTPROT_WEFT }),
        (e) => e instanceof KernelError && e.notFound,
      );
      assert.equal(
        nl.routeList({ family: dst.includes(":") ? 6 : 4 }).filter((r) =>
          r.dst === dst
        ).length,
        1,
      );
      nl.routeReplace({ dst, gw, index, protocol: RTPROT_WEFT });
      const mine = nl.routeList({ family: dst.includes(":") ? 6 : 4 }).find(
        (r) => r.dst === dst,
      );
      assert.equal(mine?.protocol, RTPROT_WEFT);
      nl.routeDel({ dst, gw, index, protocol: RTPROT_WEFT });
      assert.ok(
        !nl.routeList({ family: dst.includes(":") ? 6 : 4 }).some((r) =>
          r.dst === dst
        ),
      );
    }
  },
);

function vxlanPeer(n: number): Lease {
  return {
    key: `node${n}`,
    subnet: `10.244.${n}.0/24`,
    attrs: {
      backendType: "vxlan",
      publicIP: `198.18.0.${n}`,
      backendData: { VNI: 1, VtepMAC: `0a:00:00:00:00:0${n}` },
    },
  };
}

kernelTest(
  "vxlan: a foreign route at a lease's destination is neither replaced nor deleted; the lease is programmed once it is gone",
  async () => {
    await using ns = await node();
    using nl = openNetlink({ netns: ns.path });
    await ns.ip("link", "add", "other0", "type", "veth", "peer", "other0p");
    await ns.ip("link", "set", "other0", "up");
    await ns.ip("link", "set", "other0p", "up");
    // An operator's static route where peer 2's subnet is, and a route on
    // another device where peer 3's is (protocol boot, as `ip` writes).
    await ns.ip(
      "route",
      "add",
      "10.244.2.0/24",
      "via",
      "198.18.0.77",
      "proto",
      "static",
    );
    await ns.ip("route", "add", "10.244.3.0/24", "dev", "other0");
    const rec = reconcilerOn(nl, vxlanConfig);
    const monitor = await routeMonitor(ns);
    rec.handle([2, 3, 4].map((n) => ({
      type: "added" as const,
      lease: vxlanPeer(n),
      receivedAt: 0,
    })));
    assert.equal(rec.pass().errors, 0);
    // A peer added after the pass, onto a route that appeared meanwhile.
    await ns.ip(
      "route",
      "add",
      "10.244.5.0/24",
      "via",
      "198.18.0.55",
      "proto",
      "static",
    );
    rec.handle([{ type: "added", lease: vxlanPeer(5), receivedAt: 0 }]);
    assert.equal(rec.pass().errors, 0);
    const v4 = await routes(ns, "-4");
    for (
      const want of [
        "10.244.2.0/24 via 198.18.0.77 dev eth0 proto static",
        "10.244.3.0/24 dev other0 scope link",
        "10.244.4.0/24 via 10.244.4.0 dev flannel.1 proto 87 onlink",
        "10.244.5.0/24 via 198.18.0.55 dev eth0 proto static",
      ]
    ) assert.ok(v4.includes(want), `${want}\n${v4.join("\n")}`);
    assert.equal(metrics.peersWaitingForeignRoute.get(), 3);

    // The operator removes the route at peer 2's destination: programmed.
    await ns.ip("route", "del", "10.244.2.0/24", "proto", "static");
    assert.equal(rec.pass().errors, 0);
    const seen = await monitor.stop();
    // No delete weft did not ask for: only the operator's own one.
    const deleted = seen.split("\n").filter((l) => l.startsWith("Deleted"));
    assert.deepEqual(
      deleted,
      ["Deleted 10.244.2.0/24 via 198.18.0.77 dev eth0 proto static "],
    );
    assert.ok(
      (await routes(ns, "-4")).includes(
        "10.244.2.0/24 via 10.244.2.0 dev flannel.1 proto 87 onlink",
      ),
    );
    assert.equal(metrics.peersWaitingForeignRoute.get(), 2);
  },
);

kernelTest(
  "vxlan: a link named flannel.1 that is not a VXLAN device stops the backend, naming it and its kind, and is kept",
  async () => {
    await using ns = await node();
    using nl = openNetlink({ netns: ns.path });
    await ns.ip("link", "add", "flannel.1", "type", "bridge");
    const before = nl.linkByName("flannel.1")!;
    const backend = backendOn(nl, vxlanConfig);
    assert.throws(
      () => backend.prepare(),
      /Link "flannel\.1" exists and is not a VXLAN device \(kind "bridge"\)/,
    );
    const after = nl.linkByName("flannel.1");
    assert.equal(after?.index, before.index);
    assert.equal(after?.kind, "bridge");
  },
);

kernelTest(
  "host-gw: a boot route at a lease's destination through another gateway than its public IP is not flanneld's: left alone until removed",
  async () => {
    await using ns = await node();
    using nl = openNetlink({ netns: ns.path });
    // flanneld's route to peer 2 would be via 198.18.0.2; this one is not.
    await ns.ip("route", "add", "10.244.2.0/24", "via", "198.18.0.99");
    const rec = reconcilerOn(nl, config);
    rec.handle([{ type: "added", lease: peer(2), receivedAt: 0 }]);
    assert.equal(rec.pass().errors, 0);
    assert.equal(rec.pass().errors, 0);
    const v4 = await routes(ns, "-4");
    assert.ok(
      v4.includes("10.244.2.0/24 via 198.18.0.99 dev eth0"),
      v4.join("\n"),
    );
    // IPv6 has no such route: programmed.
    assert.ok(
      (await routes(ns, "-6")).some((l) =>
        l.startsWith("fc00:0:0:2::/64 via fd18::2 dev eth0 proto 87")
      ),
    );
    await ns.ip("route", "del", "10.244.2.0/24", "via", "198.18.0.99");
    assert.equal(rec.pass().errors, 0);
    assert.ok(
      (await routes(ns, "-4")).includes(
        "10.244.2.0/24 via 198.18.0.2 dev eth0 proto 87",
      ),
    );
  },
);

kernelTest(
  "a peer claiming the subnet a moved own lease left blackholed gets its route in place of the blackhole; an unclaimed one stays",
  async () => {
    await using ns = await node();
    using nl = openNetlink({ netns: ns.path });
    // What --ip-blackhole-route left for subnets this node held before.
    await ns.ip("route", "add", "blackhole", "10.244.2.0/24");
    await ns.ip("route", "add", "blackhole", "10.244.7.0/24");
    const rec = reconcilerOn(nl, vxlanConfig);
    rec.handle([{ type: "added", lease: vxlanPeer(2), receivedAt: 0 }]);
    assert.deepEqual(rec.pass().errors, 0);
    const v4 = await routes(ns, "-4");
    assert.ok(
      v4.includes(
        "10.244.2.0/24 via 10.244.2.0 dev flannel.1 proto 87 onlink",
      ),
      v4.join("\n"),
    );
    assert.ok(!v4.includes("blackhole 10.244.2.0/24"), v4.join("\n"));
    assert.ok(v4.includes("blackhole 10.244.7.0/24"), v4.join("\n"));
  },
);
