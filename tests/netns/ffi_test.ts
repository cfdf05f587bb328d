/**
 * Kernel tier for `ffi/netlink.ts`: every {@linkcode Netlink} method run
 * against a throwaway namespace and compared, field by field, with what
 * iproute2 reads back; then two namespaces whose VXLAN tunnel is programmed
 * only through `ffi/` must pass a ping.
 */
import assert, { deepStrictEqual as assertEquals } from "node:assert/strict";
import { kernelTest, Netns } from "../_netns.ts";
import { openNetlink } from "../../ffi/netlink.ts";
import {
  KernelError,
  type LinkInfo,
  NTF_SELF,
  NUD_PERMANENT,
  RT_SCOPE_LINK,
  RT_SCOPE_UNIVERSE,
} from "../../ffi/types.ts";

type Json = Record<string, unknown>;

/** A namespace with a veth pair eth0 (198.18.0.1/24, fd00::1/64) <-> eth1. */
async function nodeNs(tag: string): Promise<Netns> {
  const ns = await Netns.create(tag);
  await ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1");
  await ns.ip("addr", "add", "198.18.0.1/24", "dev", "eth0");
  await ns.ip("addr", "add", "fd00::1/64", "dev", "eth0", "nodad");
  await ns.ip("link", "set", "eth0", "up");
  await ns.ip("link", "set", "eth1", "up");
  return ns;
}

function vxlanSpec(eth0: LinkInfo, local = "198.18.0.1") {
  return {
    name: "flannel.1",
    vni: 1,
    port: 0,
    local,
    linkIndex: eth0.index,
    learning: false,
    gbp: false,
    mtu: 1450,
    mac: "3a:bb:55:60:be:4e",
  };
}

function kernelErr(fn: () => unknown): KernelError {
  try {
    fn();
  } catch (e) {
    assert(e instanceof KernelError, `not a KernelError: ${e}`);
    return e;
  }
  throw new assert.AssertionError({ message: "Expected a KernelError" });
}

kernelTest(
  "openNetlink in a namespace acts there and leaves this thread where it was",
  async () => {
    await using ns = await nodeNs("ffi-ns");
    const name = `wt${crypto.randomUUID().slice(0, 8)}`;
    await ns.ip(
      "link",
      "add",
      name,
      "type",
      "veth",
      "peer",
      "name",
      `${name}p`,
    );
    using inside = openNetlink({ netns: ns.path });
    assert(inside.linkByName(name) !== undefined);
    // A socket opened afterwards without netns is in this thread's own
    // namespace, which does not have the device.
    using here = openNetlink();
    assertEquals(here.linkByName(name), undefined);
    inside.close();
    inside.close(); // idempotent
    assert.throws(() => inside.linkList(), /closed/);
  },
);

kernelTest("openNetlink on a missing namespace names the path", () => {
  const e = kernelErr(() => openNetlink({ netns: "/run/netns/weft-t-absent" }));
  assert(e.message.includes("/run/netns/weft-t-absent"), e.message);
});

kernelTest("link methods agree with ip -d link", async () => {
  await using ns = await nodeNs("ffi-link");
  using nl = openNetlink({ netns: ns.path });
  const eth0 = nl.linkByName("eth0")!;
  assertEquals(eth0.kind, "veth");
  assertEquals(nl.linkByName("nope0"), undefined);
  assertEquals(nl.linkByIndex(9999), undefined);

  const made = nl.linkAddVxlan(vxlanSpec(eth0));
  const [ip] = await ns.json<Json[]>("-d", "link", "show", "dev", "flannel.1");
  const info = (ip!.linkinfo as Json).info_data as Json;
  assertEquals(made.index, ip!.ifindex);
  assertEquals(made.name, ip!.ifname);
  assertEquals(made.mtu, ip!.mtu);
  assertEquals(made.mac, ip!.address);
  assertEquals(made.kind, (ip!.linkinfo as Json).info_kind);
  assertEquals(made.up, false);
  assertEquals(made.vxlan, {
    vni: info.id as number,
    local: info.local as string,
    linkIndex: eth0.index,
    port: info.port as number,
    learning: info.learning as boolean,
    gbp: info.gbp === true,
  });
  assertEquals(info.link, "eth0");
  assertEquals(made.vxlan?.port, 8472); // 0 asked, kernel default reported
  assertEquals(made.vxlan?.learning, false);
  assertEquals(nl.linkByIndex(made.index), made);
  assertEquals(nl.linkList().find((l) => l.name === "flannel.1"), made);
  assertEquals(
    nl.linkList().map((l) => l.name).sort(),
    (await ns.json<Json[]>("link", "show")).map((l) => l.ifname).sort(),
  );

  const exists = kernelErr(() => nl.linkAddVxlan(vxlanSpec(eth0)));
  assert(exists.exists, exists.message);
  assert(
    exists.message.startsWith("link add flannel.1 type vxlan id 1"),
    exists.message,
  );

  nl.linkSetUp(made.index);
  nl.linkSetMtu(made.index, 1400);
  const [after] = await ns.json<Json[]>("link", "show", "dev", "flannel.1");
  assert((after!.flags as string[]).includes("UP"));
  assertEquals(after!.mtu, 1400);
  assertEquals(nl.linkByIndex(made.index)?.up, true);
  assertEquals(nl.linkByIndex(made.index)?.mtu, 1400);

  nl.linkDel(made.index);
  assertEquals(await ns.json("link", "show", "type", "vxlan"), []);
  const gone = kernelErr(() => nl.linkDel(made.index));
  assert(gone.notFound, gone.message);
});

kernelTest(
  "linkAddVxlan sets port, learning, GBP and an IPv6 local as asked",
  async () => {
    await using ns = await nodeNs("ffi-vx6");
    using nl = openNetlink({ netns: ns.path });
    const eth0 = nl.linkByName("eth0")!;
    const made = nl.linkAddVxlan({
      ...vxlanSpec(eth0, "fd00::1"),
      name: "flannel-v6.7",
      vni: 7,
      port: 4789,
      learning: true,
      gbp: true,
      mtu: 1430,
    });
    const [ip] = await ns.json<Json[]>(
      "-d",
      "link",
      "show",
      "dev",
      "flannel-v6.7",
    );
    const info = (ip!.linkinfo as Json).info_data as Json;
    assertEquals(info.id, 7);
    assertEquals(info.local6, "fd00::1");
    assertEquals(info.port, 4789);
    assertEquals(info.learning, true);
    assertEquals(info.gbp, true);
    assertEquals(made.vxlan, {
      vni: 7,
      local: "fd00::1",
      linkIndex: eth0.index,
      port: 4789,
      learning: true,
      gbp: true,
    });
    assertEquals(made.mtu, 1430);
  },
);

kernelTest("address methods agree with ip addr, IPv4 and IPv6", async () => {
  await using ns = await nodeNs("ffi-addr");
  using nl = openNetlink({ netns: ns.path });
  const eth1 = nl.linkByName("eth1")!;
  nl.addrAdd({ index: eth1.index, local: "10.244.3.0/32" });
  nl.addrAdd({ index: eth1.index, local: "fd01::5/128" });
  const ip = (await ns.json<Json[]>("addr", "show", "dev", "eth1"))[0]!;
  const fromIp = (ip.addr_info as Json[]).map((a) =>
    `${a.local}/${a.prefixlen}`
  )
    .sort();
  assertEquals(
    nl.addrList(eth1.index).map((a) => a.local).sort(),
    fromIp,
  );
  assert(fromIp.includes("10.244.3.0/32") && fromIp.includes("fd01::5/128"));
  // IFA_F_PERMANENT (0x80): added by hand, never expires, as `ip addr` says.
  assertEquals(nl.addrList(eth1.index, 4), [
    { index: eth1.index, local: "10.244.3.0/32", flags: 0x80 },
  ]);
  assert(
    (ip.addr_info as Json[]).every((a) => a.valid_life_time === 4294967295),
  );
  assert(nl.addrList(undefined, 6).every((a) => a.local.includes(":")));

  const dup = kernelErr(() =>
    nl.addrAdd({ index: eth1.index, local: "10.244.3.0/32" })
  );
  assert(dup.exists);
  assertEquals(dup.message, "addr add 10.244.3.0/32 dev eth1: Object exists");

  nl.addrDel({ index: eth1.index, local: "10.244.3.0/32" });
  nl.addrDel({ index: eth1.index, local: "fd01::5/128" });
  const left = (await ns.json<Json[]>("addr", "show", "dev", "eth1"))[0]!;
  assert(
    (left.addr_info as Json[]).every((a) =>
      a.local !== "10.244.3.0" && a.local !== "fd01::5"
    ),
  );
  const missing = kernelErr(() =>
    nl.addrDel({ index: eth1.index, local: "10.244.3.0/32" })
  );
  assert(missing.notFound, missing.message);
  assert(
    missing.message.startsWith("addr del 10.244.3.0/32 dev eth1: "),
    missing.message,
  );
});

/** iproute2's JSON route in RouteInfo's shape (main table). */
function fromIpRoute(r: Json, index: (name: string) => number) {
  const dst = r.dst === "default" ? "0.0.0.0/0" : String(r.dst);
  return {
    dst: dst.includes("/") ? dst : `${dst}/${dst.includes(":") ? 128 : 32}`,
    ...(r.gateway ? { gw: r.gateway as string } : {}),
    ...(r.dev ? { index: index(r.dev as string) } : {}),
    onlink: ((r.flags as string[] | undefined) ?? []).includes("onlink"),
    scope: r.scope === "link"
      ? RT_SCOPE_LINK
      : r.scope === "host"
      ? 254
      : RT_SCOPE_UNIVERSE,
    table: 254,
    ...(r.prefsrc ? { src: r.prefsrc as string } : {}),
    // iproute2 leaves out protocol boot, and names the ones it knows.
    protocol: r.protocol === undefined
      ? 3
      : ({ kernel: 2, boot: 3, static: 4, ra: 9 } as Record<string, number>)[
        String(r.protocol)
      ] ?? Number(r.protocol),
  };
}

kernelTest("route methods agree with ip route, IPv4 and IPv6", async () => {
  await using ns = await nodeNs("ffi-route");
  using nl = openNetlink({ netns: ns.path });
  const eth0 = nl.linkByName("eth0")!;
  const vx = nl.linkAddVxlan(vxlanSpec(eth0));
  nl.linkSetUp(vx.index);
  const byName = (n: string) => nl.linkByName(n)!.index;

  const onlink = {
    dst: "10.244.2.0/24",
    gw: "10.244.2.0",
    index: vx.index,
    onlink: true,
  };
  nl.routeReplace(onlink);
  nl.routeReplace(onlink); // replace is idempotent
  nl.routeReplace({ dst: "10.250.0.0/16", index: eth0.index }); // link scope
  nl.routeReplace({ dst: "0.0.0.0/0", gw: "198.18.0.254", index: eth0.index });
  nl.routeReplace({ dst: "fd02::/64", gw: "fd00::2", index: eth0.index });
  nl.routeReplace({ dst: "fd03::/64", index: eth0.index, src: "fd00::1" });

  for (const family of [4, 6] as const) {
    const ip = (await ns.json<Json[]>(`-${family}`, "route", "show"))
      .filter((r) => r.type === undefined || r.type === "unicast")
      .map((r) => fromIpRoute(r, byName));
    const ours = nl.routeList({ family });
    const key = (r: { dst: string; index?: number }) => `${r.dst} ${r.index}`;
    assertEquals(
      ours.map((r) => ({ ...r, scope: r.scope })).sort((a, b) =>
        key(a).localeCompare(key(b))
      ),
      ip.sort((a, b) => key(a).localeCompare(key(b))),
      `IPv${family} routes differ from ip route`,
    );
  }
  const viaVx = nl.routeList({ index: vx.index, family: 4 });
  assertEquals(viaVx, [{
    ...onlink,
    scope: RT_SCOPE_UNIVERSE,
    table: 254,
    protocol: 3,
  }]);
  assertEquals(
    nl.routeList({ family: 4 }).find((r) => r.dst === "10.250.0.0/16")?.scope,
    RT_SCOPE_LINK,
  );

  // routeGet is the kernel's lookup, as ip route get.
  const [got] = nl.routeGet("10.244.2.7");
  const [ipGot] = await ns.json<Json[]>("route", "get", "10.244.2.7");
  assertEquals(got?.dst, "10.244.2.7/32");
  assertEquals(got?.gw, ipGot!.gateway);
  assertEquals(got?.index, byName(ipGot!.dev as string));
  assertEquals(got?.src, ipGot!.prefsrc);
  const [direct] = nl.routeGet("198.18.0.2");
  assertEquals(direct?.gw, undefined);
  assertEquals(direct?.index, eth0.index);
  const [v6] = nl.routeGet("fd02::9");
  assertEquals(v6?.gw, "fd00::2");
  nl.routeDel({ dst: "0.0.0.0/0", gw: "198.18.0.254", index: eth0.index });
  assertEquals(nl.routeGet("8.8.8.8"), []);

  nl.routeDel(onlink);
  nl.routeDel({ dst: "fd02::/64", gw: "fd00::2", index: eth0.index });
  nl.routeDel({ dst: "10.250.0.0/16", index: eth0.index });
  assertEquals(await ns.json("route", "show", "dev", "flannel.1"), []);
  assertEquals(await ns.json("-6", "route", "show", "fd02::/64"), []);

  const missing = kernelErr(() => nl.routeDel(onlink));
  assert(missing.notFound, missing.message);
  assertEquals(
    missing.message,
    "route del 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink: Object not found",
  );
  const missing6 = kernelErr(() =>
    nl.routeDel({ dst: "fd02::/64", index: eth0.index })
  );
  assert(missing6.notFound, missing6.message);
});

kernelTest("neighbour methods agree with ip neigh, IPv4 and IPv6", async () => {
  await using ns = await nodeNs("ffi-neigh");
  using nl = openNetlink({ netns: ns.path });
  const eth0 = nl.linkByName("eth0")!;
  const vx = nl.linkAddVxlan(vxlanSpec(eth0));
  const n4 = {
    index: vx.index,
    dst: "10.244.2.0",
    lladdr: "e6:7d:c5:e2:80:1a",
    state: NUD_PERMANENT,
  };
  const n6 = {
    index: vx.index,
    dst: "fd44::2",
    lladdr: "e6:7d:c5:e2:80:1b",
    state: NUD_PERMANENT,
  };
  nl.neighSet(n4);
  nl.neighSet({ ...n4, lladdr: "e6:7d:c5:e2:80:1c" }); // replace
  nl.neighSet(n4);
  nl.neighSet(n6);
  const ip = await ns.json<Json[]>("neigh", "show", "dev", "flannel.1");
  assertEquals(
    ip.map((n) => ({
      index: vx.index,
      dst: n.dst,
      lladdr: n.lladdr,
      state: (n.state as string[]).includes("PERMANENT") ? NUD_PERMANENT : -1,
    })).sort((a, b) => String(a.dst).localeCompare(String(b.dst))),
    [n4, n6],
  );
  assertEquals(
    nl.neighList(vx.index).sort((a, b) => a.dst.localeCompare(b.dst)),
    [n4, n6],
  );
  assertEquals(nl.neighList(vx.index, 6), [n6]);
  assertEquals(nl.neighList(undefined, 4).filter((n) => n.index === vx.index), [
    n4,
  ]);

  nl.neighDel(n4);
  nl.neighDel(n6);
  assertEquals(await ns.json("neigh", "show", "dev", "flannel.1"), []);
  const missing = kernelErr(() => nl.neighDel(n4));
  assert(missing.notFound, missing.message);
  assert(
    missing.message.startsWith("neigh del 10.244.2.0 dev flannel.1"),
    missing.message,
  );
});

kernelTest(
  "FDB methods agree with bridge fdb, and neighList leaves them out",
  async () => {
    await using ns = await nodeNs("ffi-fdb");
    using nl = openNetlink({ netns: ns.path });
    const eth0 = nl.linkByName("eth0")!;
    const vx = nl.linkAddVxlan(vxlanSpec(eth0));
    const f4 = {
      index: vx.index,
      lladdr: "e6:7d:c5:e2:80:1a",
      dst: "198.18.0.2",
      state: NUD_PERMANENT,
      flags: NTF_SELF,
    };
    // A VXLAN device only takes remotes of its local address's family.
    const vx6 = nl.linkAddVxlan({
      ...vxlanSpec(eth0, "fd00::1"),
      name: "flannel-v6.1",
    });
    const f6 = {
      ...f4,
      index: vx6.index,
      lladdr: "e6:7d:c5:e2:80:1b",
      dst: "fd00::2",
    };
    nl.fdbSet({ ...f4, dst: "198.18.0.9" });
    nl.fdbSet(f4); // replace moves it to the new VTEP
    nl.fdbSet(f6);
    const ip: Json[] = [];
    for (const dev of [vx, vx6]) {
      const entries = await ns.json<Json[]>(
        "bridge",
        "fdb",
        "show",
        "dev",
        dev.name,
      );
      ip.push(...entries.map((f) => ({ ...f, index: dev.index })));
    }
    assertEquals(
      ip.map((f) => ({
        index: f.index,
        lladdr: f.mac,
        dst: f.dst,
        state: f.state === "permanent" ? NUD_PERMANENT : -1,
        flags: (f.flags as string[]).includes("self") ? NTF_SELF : -1,
      })),
      [f4, f6],
    );
    const ours = [...nl.fdbList(vx.index), ...nl.fdbList(vx6.index)];
    assertEquals(ours.map((f) => ({ ...f, flags: f.flags & NTF_SELF })), [
      f4,
      f6,
    ]);
    assert(nl.fdbList().some((f) => f.index === eth0.index)); // eth0's own entries
    assertEquals(nl.neighList(vx.index), []);

    nl.fdbDel(f4);
    nl.fdbDel(f6);
    assertEquals(
      await ns.json("bridge", "fdb", "show", "dev", "flannel.1"),
      [],
    );
    assertEquals(
      await ns.json("bridge", "fdb", "show", "dev", "flannel-v6.1"),
      [],
    );
    const missing = kernelErr(() => nl.fdbDel(f4));
    assert(missing.notFound, missing.message);
    assertEquals(
      missing.message,
      "fdb del e6:7d:c5:e2:80:1a dev flannel.1 dst 198.18.0.2 self permanent: Object not found",
    );
  },
);

kernelTest(
  "two nodes ping through a VXLAN tunnel programmed only through ffi/",
  async () => {
    await using a = await Netns.create("ffi-a");
    await using b = await Netns.create("ffi-b");
    await a.ip(
      "link",
      "add",
      "eth0",
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      b.name,
    );
    const nodes = [
      { ns: a, under: "198.18.0.1", sub: 1, mac: "3a:bb:55:60:be:01" },
      { ns: b, under: "198.18.0.2", sub: 2, mac: "3a:bb:55:60:be:02" },
    ];
    for (const n of nodes) {
      await n.ns.ip("addr", "add", `${n.under}/24`, "dev", "eth0");
      await n.ns.ip("link", "set", "eth0", "up");
    }
    for (const [i, me] of nodes.entries()) {
      const peer = nodes[1 - i]!;
      using nl = openNetlink({ netns: me.ns.path });
      const eth0 = nl.linkByName("eth0")!;
      const vx = nl.linkAddVxlan({
        ...vxlanSpec(eth0, me.under),
        port: 8472,
        mac: me.mac,
      });
      nl.addrAdd({ index: vx.index, local: `10.244.${me.sub}.0/32` });
      nl.linkSetUp(vx.index);
      const peerGw = `10.244.${peer.sub}.0`;
      nl.neighSet({
        index: vx.index,
        dst: peerGw,
        lladdr: peer.mac,
        state: NUD_PERMANENT,
      });
      nl.fdbSet({
        index: vx.index,
        lladdr: peer.mac,
        dst: peer.under,
        state: NUD_PERMANENT,
        flags: NTF_SELF,
      });
      nl.routeReplace({
        dst: `10.244.${peer.sub}.0/24`,
        gw: peerGw,
        index: vx.index,
        onlink: true,
      });
    }
    // A flanneld worker's state (docs/flanneld-compat.md), as iproute2 prints it.
    const route = await a.ip("route", "show", "dev", "flannel.1");
    assertEquals(route.trim(), "10.244.2.0/24 via 10.244.2.0 onlink");
    const fdb = await a.exec(["bridge", "fdb", "show", "dev", "flannel.1"]);
    assertEquals(fdb.trim(), "3a:bb:55:60:be:02 dst 198.18.0.2 self permanent");
    const link = await a.ip("-d", "link", "show", "dev", "flannel.1");
    assert(
      /vxlan id 1 local 198\.18\.0\.1 dev eth0 .*dstport 8472 nolearning/.test(
        link,
      ),
      link,
    );

    const out = await a.tryExec([
      "ping",
      "-c",
      "2",
      "-W",
      "2",
      "-i",
      "0.2",
      "-I",
      "10.244.1.0",
      "10.244.2.0",
    ]);
    assertEquals(out.code, 0, out.stdout + out.stderr);
    // The reply came through the tunnel: b's flannel.1 counted the packets.
    const [stats] = await b.json<Json[]>(
      "-s",
      "link",
      "show",
      "dev",
      "flannel.1",
    );
    assert(((stats!.stats64 as Json).rx as Json).packets as number >= 2);
  },
);

kernelTest(
  "linkAdd creates a device of a kind as ip reads it; a kind the kernel lacks is refused as not supported",
  async () => {
    await using ns = await nodeNs("ffi-kind");
    using nl = openNetlink({ netns: ns.path });
    const made = nl.linkAdd({ name: "br7", kind: "bridge", mtu: 1380 });
    const [ip] = await ns.json<Json[]>("-d", "link", "show", "dev", "br7");
    assertEquals((ip!.linkinfo as Json).info_kind, "bridge");
    assertEquals(ip!.mtu, 1380);
    assertEquals(made.kind, "bridge");
    assertEquals(made.index, ip!.ifindex);
    const exists = kernelErr(() =>
      nl.linkAdd({ name: "br7", kind: "bridge", mtu: 1380 })
    );
    assert(exists.exists, exists.message);
    const missing = kernelErr(() =>
      nl.linkAdd({ name: "weird0", kind: "weftnosuchkind", mtu: 1400 })
    );
    assert(
      missing.message.startsWith(
        "link add weird0 mtu 1400 type weftnosuchkind:",
      ),
      missing.message,
    );
    assertEquals(missing.exists, false);
  },
);
