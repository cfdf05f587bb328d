import assert from "node:assert/strict";
import { MemoryKernel } from "../memory_kernel.ts";
import { Reconciler } from "../reconciler.ts";
import { added, removed } from "../_testing.ts";
import { parseNetConfig } from "../../subnet/config.ts";
import type { Lease } from "../../subnet/lease.ts";
import { parseWireguardData, validateLease } from "../../subnet/validate.ts";
import { unwrap } from "../../lib/result.ts";
import { setLogSink } from "../../lib/log.ts";
import { metrics } from "../../lib/metrics.ts";
import { parseWireguardConfig } from "./config.ts";
import { parseExtensionConfig } from "../extension/extension.ts";
import { generatePrivateKey } from "./keys.ts";
import { parseDump, peerArgs } from "./wg.ts";
import {
  autoFamily,
  createWireguardBackend,
  desiredPeer,
  type PeerContext,
} from "./wireguard.ts";
import { fakePublicKey, MemoryWg } from "./_memory_wg.ts";

setLogSink(() => {});

const KEY_A = "CWtSC6+M0bdgPDbVj6okSvv4MUhNzjpYOYCsuEpH30g=";
const KEY_B = "vh2Avb4nWn8dwMdfb2HBcO+CweEVlzRvIQE45ifvLzM=";

/** A wireguard peer lease for node n (IPv4). */
function wgPeer(n: number, key: string, port?: number): Lease {
  return {
    key: `node-${n}`,
    subnet: `10.244.${n}.0/24`,
    attrs: {
      publicIP: `198.18.0.${n}`,
      backendType: "wireguard",
      backendData: {
        PublicKey: key,
        ...(port !== undefined && { Port: port }),
      },
    },
  };
}

/** A wireguard backend for node 1 (198.18.0.1, 2001:db8::1 with IPv6). */
function wireguardOn(
  kernel: MemoryKernel,
  wg: MemoryWg,
  startUserspace: (name: string) => void,
  netConf: string,
  loadKey: (path: string) => string,
) {
  const config = unwrap(parseNetConfig(netConf));
  const v6 = config.enableIPv6 && {
    ifaceV6Addr: "2001:db8::1",
    publicIPv6: "2001:db8::1",
  };
  return unwrap(createWireguardBackend(kernel, config, {
    index: kernel.linkByName("eth0")!.index,
    name: "eth0",
    mtu: 1500,
    ifaceAddr: "198.18.0.1",
    publicIP: "198.18.0.1",
    ...v6,
  }, {
    wg,
    startUserspace,
    keyFile: "/run/flannel/wgkey",
    loadKey,
    writeSecret: (path, text) => wg.files.set(path, text),
  }));
}

/**
 * Node 1's wireguard backend on the memory kernel, with or without the
 * kernel module; its key is `key`, else one made at the first load.
 */
function wgBackend(netConf: string, module: boolean, key?: string) {
  const kernel = new MemoryKernel();
  if (!module) kernel.kinds = new Set(["dummy"]);
  kernel.addDevice("eth0", 1500);
  const wg = new MemoryWg(kernel);
  const starter = wg.starter();
  const be = wireguardOn(kernel, wg, starter, netConf, (path) => {
    const k = key ?? wg.files.get(path) ?? generatePrivateKey();
    wg.files.set(path, k);
    return k;
  });
  return { kernel, wg, starter, be };
}

/** Node 1 with a wireguard backend on the memory kernel, without the module. */
function wgNode(backend = '{"Type":"wireguard"}') {
  const { kernel, wg, starter, be } = wgBackend(
    `{"Network":"10.244.0.0/16","Backend":${backend}}`,
    false,
  );
  const attrs = be.prepare();
  const own: Lease = { key: "node-1", subnet: "10.244.1.0/24", attrs };
  const network = be.start(own);
  const rec = new Reconciler(kernel, network.families, {
    ownKey: own.key,
    backendType: "wireguard",
  });
  const peers = () => wg.devices.get("flannel-wg")!.peers;
  return { kernel, wg, starter, attrs, network, rec, peers };
}

Deno.test("parseWireguardConfig has flanneld's defaults", () => {
  assert.deepEqual(unwrap(parseWireguardConfig({ Type: "wireguard" })), {
    listenPort: 51820,
    listenPortV6: 51821,
    keepalive: 0,
    mode: "separate",
    mtu: 0,
  });
  assert.deepEqual(
    unwrap(parseWireguardConfig({
      listenport: 6000,
      PSK: KEY_A,
      PersistentKeepaliveInterval: 25,
      Mode: "auto",
      MTU: 9000,
    })),
    {
      listenPort: 6000,
      listenPortV6: 51821,
      psk: KEY_A,
      keepalive: 25,
      mode: "auto",
      mtu: 9000,
    },
  );
});

Deno.test("Backend keys match case-insensitively and the last spelling wins, as Go's json.Unmarshal fills a field", () => {
  assert.equal(
    unwrap(parseWireguardConfig(JSON.parse(
      '{"Type":"wireguard","ListenPort":51000,"listenport":52000}',
    ))).listenPort,
    52000,
  );
  assert.equal(
    unwrap(parseExtensionConfig(JSON.parse(
      '{"Type":"extension","SubnetAddCommand":"/a","subnetaddcommand":"/b"}',
    ))).SubnetAddCommand,
    "/b",
  );
});

Deno.test("parseWireguardConfig refuses bad values, naming the key", () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ ListenPort: 0 }, /Invalid Backend.ListenPort 0/],
    [{ ListenPortV6: 70000 }, /Invalid Backend.ListenPortV6 70000/],
    [{ Mode: "both" }, /Invalid Backend.Mode "both"/],
    [{ PSK: "c2hvcnQ=" }, /Invalid Backend.PSK/],
    [{ PSK: 5 }, /Invalid Backend.PSK 5: must be a string/],
    [{ MTU: 100 }, /Invalid Backend.MTU 100/],
    [{ PersistentKeepaliveInterval: -1 }, /PersistentKeepaliveInterval -1/],
  ];
  for (const [raw, want] of bad) {
    const r = parseWireguardConfig(raw);
    assert.equal(r.ok, false, JSON.stringify(raw));
    if (!r.ok) assert.match(r.reason, want);
  }
});

Deno.test("parseWireguardData reads flanneld's data; a missing or zero Port is 0", () => {
  assert.deepEqual(unwrap(parseWireguardData({ PublicKey: KEY_A })), {
    PublicKey: KEY_A,
    Port: 0,
  });
  assert.deepEqual(
    unwrap(parseWireguardData({ PublicKey: KEY_A, Port: 0 })).Port,
    0,
  );
  assert.deepEqual(
    unwrap(parseWireguardData({ PublicKey: KEY_A, Port: 51830 })).Port,
    51830,
  );
  const bad: [unknown, RegExp][] = [
    [{ PublicKey: "not*base64" }, /PublicKey: "not\*base64" is not base64/],
    [{ PublicKey: "c2hvcnQ=" }, /decodes to 5 bytes, want 32/],
    [{}, /PublicKey: undefined is not a string/],
    [{ PublicKey: KEY_A, Port: 65536 }, /Port 65536: must be 0..65535/],
    [{ PublicKey: KEY_A, Port: "51820" }, /Port "51820"/],
    ["x", /not a JSON object/],
  ];
  for (const [data, want] of bad) {
    const r = parseWireguardData(data, "backend-v6-data");
    assert.equal(r.ok, false, JSON.stringify(data));
    if (!r.ok) assert.match(r.reason, /backend-v6-data/);
    if (!r.ok) assert.match(r.reason, want);
  }
});

Deno.test("validateLease refuses a wireguard lease with a bad key", () => {
  const config = unwrap(parseNetConfig('{"Network":"10.244.0.0/16"}'));
  const r = validateLease(wgPeer(2, "c2hvcnQ="), config);
  assert.equal(r.ok, false);
  if (!r.ok) {
    assert.match(r.reason, /Invalid backend-data PublicKey: .* want 32/);
  }
  assert.equal(validateLease(wgPeer(2, KEY_A), config).ok, true);
});

Deno.test("wg dump parsing and peer arguments keep keys off argv", () => {
  const dump = parseDump(
    `${KEY_B}\t${KEY_A}\t51820\toff\n` +
      `${KEY_A}\t(none)\t198.18.0.2:51820\t10.244.2.0/24\t0\t0\t0\toff\n` +
      `${KEY_B}\t${KEY_A}\t(none)\t10.244.3.0/24,10.244.30.0/24\t0\t0\t0\t25\n`,
  );
  assert.deepEqual(dump, {
    privateKey: KEY_B,
    publicKey: KEY_A,
    listenPort: 51820,
    peers: [
      {
        publicKey: KEY_A,
        endpoint: "198.18.0.2:51820",
        allowedIps: ["10.244.2.0/24"],
        keepalive: 0,
      },
      {
        publicKey: KEY_B,
        allowedIps: ["10.244.3.0/24", "10.244.30.0/24"],
        psk: KEY_A,
        keepalive: 25,
      },
    ],
  });
  const args = peerArgs("flannel-wg", dump.peers[1]!, "/run/flannel/wgkey.psk");
  assert.equal(args.includes(KEY_A), false, "the PSK goes through a file");
  assert.deepEqual(args, [
    "set",
    "flannel-wg",
    "peer",
    KEY_B,
    "preshared-key",
    "/run/flannel/wgkey.psk",
    "persistent-keepalive",
    "25",
    "allowed-ips",
    "10.244.3.0/24,10.244.30.0/24",
  ]);
});

Deno.test("desiredPeer uses the peer's port, else ours, and its subnet", () => {
  const ctx: PeerContext = {
    device: { name: "flannel-wg", listenPort: 51820, families: [4] },
    mode: "separate",
    keepalive: 25,
    underlay: { ifaceAddr: "198.18.0.1" },
  };
  assert.deepEqual(desiredPeer(ctx, wgPeer(2, KEY_A, 6000)), {
    id: KEY_A,
    publicKey: KEY_A,
    endpoint: "198.18.0.2:6000",
    allowedIps: ["10.244.2.0/24"],
    keepalive: 25,
  });
  assert.equal(
    desiredPeer(ctx, wgPeer(2, KEY_A))!.endpoint,
    "198.18.0.2:51820",
  );
  assert.equal(
    desiredPeer(ctx, wgPeer(2, KEY_A, 0))!.endpoint,
    "198.18.0.2:51820",
  );
});

Deno.test("desiredPeer in one-device modes carries both subnets; auto picks the endpoint as flanneld", () => {
  const dual: Lease = {
    key: "node-2",
    subnet: "10.244.2.0/24",
    ipv6Subnet: "fd00:10:244:2::/64",
    attrs: {
      publicIP: "198.18.0.2",
      publicIPv6: "2001:db8::2",
      backendType: "wireguard",
      backendData: { PublicKey: KEY_A, Port: 51820 },
      backendV6Data: { PublicKey: KEY_A, Port: 51820 },
    },
  };
  const ctx = (mode: PeerContext["mode"]): PeerContext => ({
    device: { name: "flannel-wg", listenPort: 51820, families: [4, 6] },
    mode,
    keepalive: 0,
    underlay: { ifaceAddr: "198.18.0.1", ifaceV6Addr: "2001:db8::1" },
  });
  assert.deepEqual(desiredPeer(ctx("ipv6"), dual)!.allowedIps, [
    "10.244.2.0/24",
    "fd00:10:244:2::/64",
  ]);
  assert.equal(desiredPeer(ctx("ipv6"), dual)!.endpoint, "[2001:db8::2]:51820");
  assert.equal(desiredPeer(ctx("ipv4"), dual)!.endpoint, "198.18.0.2:51820");
  assert.equal(desiredPeer(ctx("auto"), dual)!.endpoint, "198.18.0.2:51820");
  // A private peer IPv4 and public IPv6 on both sides: IPv6.
  assert.equal(
    autoFamily({ publicIP: "10.0.0.2", publicIPv6: "2001:db8::2" }, {
      ifaceAddr: "10.0.0.1",
      ifaceV6Addr: "2001:db8::1",
    }),
    6,
  );
  assert.equal(
    autoFamily({ publicIP: "10.0.0.2", publicIPv6: "fd00::2" }, {
      ifaceAddr: "10.0.0.1",
      ifaceV6Addr: "fd00::1",
    }),
    4,
  );
  assert.equal(autoFamily({ publicIPv6: "fd00::2" }, {}), 6);
});

Deno.test("WireGuard backend without the kernel module starts userspace and publishes flanneld's data", () => {
  const { kernel, wg, starter, attrs, network, rec, peers } = wgNode();
  assert.deepEqual(starter.started, ["flannel-wg"]);
  const pub = fakePublicKey(wg.files.get("/run/flannel/wgkey")!);
  assert.deepEqual(attrs, {
    backendType: "wireguard",
    publicIP: "198.18.0.1",
    backendData: { PublicKey: pub, Port: 51820 },
  });
  assert.equal(network.mtu, 1420);
  rec.handle(added(wgPeer(2, KEY_A), wgPeer(3, KEY_B, 6000)));
  assert.equal(rec.pass().errors, 0);
  const dev = kernel.linkByName("flannel-wg")!;
  assert.equal(dev.mtu, 1420);
  assert.equal(dev.up, true);
  assert.deepEqual(kernel.addrList(dev.index).map((a) => a.local), [
    "10.244.1.0/32",
  ]);
  assert.ok(
    kernel.routes.some((r) =>
      r.dst === "10.244.0.0/16" && r.index === dev.index && r.scope === 253
    ),
  );
  assert.equal(wg.devices.get("flannel-wg")!.listenPort, 51820);
  assert.deepEqual(
    [...peers().values()].map((p) => `${p.endpoint} ${p.allowedIps}`).sort(),
    ["198.18.0.2:51820 10.244.2.0/24", "198.18.0.3:6000 10.244.3.0/24"],
  );
  assert.equal(rec.ready, true);
  // A second pass changes nothing, and reads the device once (`wg show`
  // spawns a process: the device check and the peer listing share it).
  const calls = wg.calls;
  const shows = wg.shows;
  assert.equal(rec.pass().ops, 0);
  assert.equal(wg.calls, calls);
  assert.equal(wg.shows - shows, 1);
});

Deno.test("WireGuard peers: removed by hand come back; a gone lease's peer goes; a rotated key replaces the old peer", () => {
  // A PSK as an operator may paste it, with a line break after it.
  const { wg, rec, peers } = wgNode(
    '{"Type":"wireguard","PSK":"' + KEY_B +
      '\\n","PersistentKeepaliveInterval":5}',
  );
  rec.handle(added(wgPeer(2, KEY_A), wgPeer(3, KEY_B)));
  rec.pass();
  assert.equal(peers().get(KEY_A)!.psk, KEY_B);
  assert.equal(peers().get(KEY_A)!.keepalive, 5);
  // The PSK read back equals the one wanted: a pass sets nothing again.
  assert.equal(rec.pass().ops, 0);
  wg.removePeer("flannel-wg", KEY_A);
  assert.equal(rec.pass().ops, 1);
  assert.ok(peers().has(KEY_A));
  // Rotation: the lease event alone replaces the peer, no pass needed.
  const rotated = generatePrivateKey();
  rec.handle(added(wgPeer(2, rotated)));
  assert.deepEqual([...peers().keys()].sort(), [KEY_B, rotated].sort());
  rec.handle(removed(wgPeer(3, KEY_B)));
  assert.deepEqual([...peers().keys()], [rotated]);
  // A stray peer nobody's lease wants is pruned by the next pass.
  wg.setPeer("flannel-wg", { publicKey: KEY_B, allowedIps: [], keepalive: 0 });
  rec.pass();
  assert.deepEqual([...peers().keys()], [rotated]);
});

Deno.test("WireGuard: a peer the device refuses fails alone and is retried", () => {
  const { wg, rec, peers } = wgNode();
  wg.failKey = KEY_A;
  rec.handle(added(wgPeer(2, KEY_A), wgPeer(3, KEY_B)));
  const r = rec.pass();
  assert.equal(r.errors, 1);
  assert.deepEqual([...peers().keys()], [KEY_B]);
  assert.deepEqual(rec.failing().map((f) => f.key), ["node-2"]);
  assert.equal(rec.ready, false);
  wg.failKey = undefined;
  rec.pass();
  assert.deepEqual([...peers().keys()].sort(), [KEY_A, KEY_B].sort());
  assert.equal(rec.ready, true);
});

Deno.test("WireGuard device is reused across a restart: same key, no new daemon, peers kept", () => {
  const a = wgNode();
  a.rec.handle(added(wgPeer(2, KEY_A)));
  a.rec.pass();
  const calls = a.wg.calls;
  // A second backend on the same kernel and files, as after a restart.
  const starter = a.wg.starter();
  const be = wireguardOn(
    a.kernel,
    a.wg,
    starter,
    '{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}',
    (p) => a.wg.files.get(p)!,
  );
  assert.deepEqual(be.prepare(), a.attrs);
  assert.deepEqual(starter.started, []);
  assert.equal(a.wg.calls, calls, "device key and port untouched");
  assert.ok(a.peers().has(KEY_A));
});

Deno.test("WireGuard device is made through netlink when the kernel has the module", () => {
  const { kernel, wg, starter, be } = wgBackend(
    '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"wireguard"}}',
    true,
    KEY_B,
  );
  const attrs = be.prepare();
  assert.deepEqual(starter.started, []);
  assert.equal(kernel.linkByName("flannel-wg")!.kind, "wireguard");
  assert.equal(kernel.linkByName("flannel-wg-v6")!.kind, "wireguard");
  assert.equal(wg.devices.get("flannel-wg-v6")!.listenPort, 51821);
  assert.deepEqual(attrs.backendV6Data, {
    PublicKey: fakePublicKey(KEY_B),
    Port: 51821,
  });
});

Deno.test("Reconciler.run() skips no period while a family has per-peer objects (rtnetlink does not report them)", async () => {
  const { wg, network, peers } = wgNode();
  const rec = new Reconciler(new MemoryKernel(), network.families, {
    ownKey: "node-1",
    backendType: "wireguard",
    periodMs: 2,
  });
  rec.handle(added(wgPeer(2, KEY_A)));
  let closed: (e: Error) => void = () => {};
  const changes = {
    next: () => new Promise<never>((_, reject) => closed = reject),
    close: () => closed(new Error("closed")),
    quiet: () => true,
  };
  const skips = metrics.reconcileQuietSkips.get();
  const ac = new AbortController();
  const done = rec.run(ac.signal, changes);
  // Bounded: a stuck loop must fail here, not hang.
  const deadline = Date.now() + 2000;
  while (rec.passes < 8 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 2));
  }
  assert.ok(rec.passes >= 8, `only ${rec.passes} passes in 2 s`);
  assert.equal(metrics.reconcileQuietSkips.get(), skips, "no period skipped");
  // A peer removed by hand is back by the next period.
  wg.removePeer("flannel-wg", KEY_A);
  const p0 = rec.passes;
  while (rec.passes < p0 + 2 && Date.now() < deadline + 2000) {
    await new Promise((r) => setTimeout(r, 2));
  }
  ac.abort();
  await done;
  assert.ok(peers().has(KEY_A));
});
