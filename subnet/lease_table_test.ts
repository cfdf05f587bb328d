import assert from "node:assert/strict";
import { LeaseTable } from "./lease_table.ts";
import { parseNetConfig } from "./config.ts";
import type { Lease, LeaseEvent } from "./lease.ts";
import { fail, ok, unwrap } from "../lib/result.ts";
import { setLogSink } from "../lib/log.ts";
import { metrics } from "../lib/metrics.ts";

const MAC_A = "0a:00:00:00:aa:aa";
const MAC_B = "0a:00:00:00:bb:bb";

const config = unwrap(parseNetConfig('{"Network":"10.244.0.0/16"}'));

/** A lease whose public IP and MAC are unique to `key` unless given. */
function lease(
  key: string,
  subnet: string,
  ip = ipFor(key),
  mac = macFor(ip),
  backendType = "vxlan",
): Lease {
  return {
    key,
    subnet,
    attrs: {
      publicIP: ip,
      backendType,
      backendData: { VNI: 1, VtepMAC: mac },
    },
  };
}

function ipFor(key: string): string {
  let h = 0;
  for (const c of key) h = (h * 31 + c.charCodeAt(0)) % 250;
  return `198.18.1.${h + 1}`;
}

function macFor(ip: string): string {
  const last = Number(ip.split(".").at(-1)) || 0;
  return `0a:00:00:00:01:${last.toString(16).padStart(2, "0")}`;
}

function captureLogs(): { lines: string[]; restore: () => void } {
  const lines: string[] = [];
  const prev = setLogSink((l) => lines.push(l));
  return { lines, restore: () => setLogSink(prev) };
}

Deno.test("LeaseTable emits added, changed (removed+added) and removed", () => {
  const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
  const a = t.update("a", ok(lease("a", "10.244.1.0/24")), 0);
  assert.deepEqual(a.map((e) => e.type), ["added"]);
  assert.equal(t.update("a", ok(lease("a", "10.244.1.0/24")), 0).length, 0);
  const changed = t.update(
    "a",
    ok(lease("a", "10.244.1.0/24", "198.18.0.7")),
    0,
  );
  assert.deepEqual(changed.map((e) => e.type), ["removed", "added"]);
  assert.equal(changed[1]!.lease.attrs.publicIP, "198.18.0.7");
  assert.deepEqual(t.remove("a", 0).map((e) => e.type), ["removed"]);
  assert.equal(t.leases.length, 0);
});

Deno.test("LeaseTable: a claim time moved with nothing to conflict emits nothing", () => {
  // A field manager that owns the flannel annotations wrote something
  // else (a label): the claim time moves, the lease does not.
  const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
  const a = { ...lease("a", "10.244.1.0/24"), claimedAt: 100 };
  assert.deepEqual(t.update("a", ok(a), 0).map((e) => e.type), ["added"]);
  assert.deepEqual(t.update("a", ok({ ...a, claimedAt: 200 }), 0), []);
  assert.equal(t.leases[0]!.claimedAt, 200);
});

Deno.test("LeaseTable never reports our own key", () => {
  const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
  assert.equal(t.update("me", ok(lease("me", "10.244.1.0/24")), 0).length, 0);
  assert.equal(t.leases.length, 0);
});

Deno.test("LeaseTable warns once per node per change for a bad peer", () => {
  const log = captureLogs();
  try {
    const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
    const bad = lease("b", "10.244.2.0/24", "not-an-ip");
    t.update("b", ok(bad), 0);
    t.update("b", ok(bad), 0);
    t.update("c", ok(lease("c", "10.244.3.0/24")), 0);
    assert.equal(log.lines.filter((l) => l.includes('"b"')).length, 1);
    t.update("b", fail("backend-data is not JSON"), 0);
    assert.equal(log.lines.filter((l) => l.includes('"b"')).length, 2);
    assert.match(
      log.lines[0]!,
      /^W.* subnet\] Skipping node "b": Invalid public IP "not-an-ip"/,
    );
    assert.equal(t.invalidCount, 1);
    assert.deepEqual(t.leases.map((l) => l.key), ["c"]);
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable keeps the first holder of a subnet and refuses an overlap", () => {
  const log = captureLogs();
  try {
    const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
    t.update("a", ok(lease("a", "10.244.1.0/24")), 0);
    assert.equal(t.update("b", ok(lease("b", "10.244.1.0/24")), 0).length, 0);
    assert.equal(t.update("c", ok(lease("c", "10.244.0.0/23")), 0).length, 0);
    assert.deepEqual(t.leases.map((l) => l.key), ["a"]);
    assert.ok(
      log.lines.some((l) =>
        /Skipping node "b": its subnet overlaps the subnet of node "a"/.test(l)
      ),
    );
    assert.ok(
      log.lines.some((l) =>
        l.includes('Skipping node "c": its subnet "10.244.0.0/23" is not a /24')
      ),
    );
    // When the holder goes, the first waiting claimant takes over.
    const ev = t.remove("a", 0);
    assert.deepEqual(ev.map((e) => `${e.type} ${e.lease.key}`), [
      "removed a",
      "added b",
    ]);
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable refuses a peer claiming our own subnet", () => {
  const log = captureLogs();
  try {
    const own = lease("me", "10.244.5.0/24");
    const t = new LeaseTable(config, {
      ownKey: "me",
      ownLease: own,
      noun: "node",
    });
    assert.equal(t.update("x", ok(lease("x", "10.244.5.0/24")), 0).length, 0);
    assert.ok(
      log.lines.some((l) => l.includes("overlaps this node's own subnet")),
    );
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable.replaceAll() synthesises removals for vanished keys", () => {
  const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
  t.update("a", ok(lease("a", "10.244.1.0/24")), 0);
  t.update("b", ok(lease("b", "10.244.2.0/24")), 0);
  const ev = t.replaceAll(
    new Map([["b", ok(lease("b", "10.244.2.0/24"))], [
      "c",
      ok(lease("c", "10.244.3.0/24")),
    ]]),
    5,
  );
  assert.deepEqual(ev.map((e) => `${e.type} ${e.lease.key}`), [
    "removed a",
    "added c",
  ]);
  assert.equal(ev[0]!.receivedAt, 5);
});

Deno.test("LeaseTable: after a restart a real node's subnet beats a stray supernet key", () => {
  const log = captureLogs();
  try {
    const t = new LeaseTable(config, { ownKey: "me", noun: "etcd key" });
    // A relist in key order: the /23 sorts before the real /24.
    const ev = t.replaceAll(
      new Map([
        ["a-stray", ok(lease("a-stray", "10.244.32.0/23", "198.18.0.157"))],
        ["b-real", ok(lease("b-real", "10.244.32.0/24", "198.18.0.3"))],
      ]),
      0,
    );
    assert.deepEqual(ev.map((e) => `${e.type} ${e.lease.key}`), [
      "added b-real",
    ]);
    assert.ok(
      log.lines.some((l) =>
        /Skipping etcd key "a-stray": its subnet "10.244.32.0\/23" is not a \/24/
          .test(l)
      ),
    );
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable: a holder moving to another subnet frees the waiting claimant", () => {
  const log = captureLogs();
  try {
    const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
    t.update("a", ok(lease("a", "10.244.1.0/24")), 0);
    assert.equal(t.update("b", ok(lease("b", "10.244.1.0/24")), 0).length, 0);
    const ev = t.update("a", ok(lease("a", "10.244.9.0/24")), 0);
    assert.deepEqual(
      ev.map((e) => `${e.type} ${e.lease.key} ${e.lease.subnet}`),
      [
        "removed a 10.244.1.0/24",
        "added a 10.244.9.0/24",
        "added b 10.244.1.0/24",
      ],
    );
    assert.equal(t.invalidCount, 0);
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable: after a restart the earlier of two equal claims wins, whatever the key order", () => {
  const log = captureLogs();
  try {
    const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
    const real = {
      ...lease("z-real", "10.244.3.0/24", "198.18.0.3"),
      claimedAt: 1000,
    };
    const copy = {
      ...lease("a-copy", "10.244.3.0/24", "198.18.0.122"),
      claimedAt: 5000,
    };
    const ev = t.replaceAll(
      new Map([["a-copy", ok(copy)], ["z-real", ok(real)]]),
      0,
    );
    assert.deepEqual(ev.map((e) => `${e.type} ${e.lease.key}`), [
      "added z-real",
    ]);
    assert.ok(
      log.lines.some((l) => /Skipping node "a-copy": .*"z-real"/.test(l)),
    );
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable refuses a second lease with an accepted VtepMAC, earlier claim wins", () => {
  const log = captureLogs();
  const before = metrics.peersRefused.get({ reason: "duplicate_mac" });
  try {
    const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
    const victim = {
      ...lease("victim", "10.244.1.0/24", "198.18.0.2", MAC_A),
      claimedAt: 100,
    };
    const copier = {
      ...lease("copier", "10.244.2.0/24", "198.18.0.3", MAC_A),
      claimedAt: 900,
    };
    t.update("victim", ok(victim), 0);
    assert.deepEqual(t.update("copier", ok(copier), 0), []);
    assert.deepEqual(t.leases.map((l) => l.key), ["victim"]);
    const warned = log.lines.filter((l) => l.includes('"copier"'));
    assert.equal(warned.length, 1);
    assert.match(
      warned[0]!,
      /Skipping node "copier": VtepMAC "0a:00:00:00:aa:aa" is already used by node "victim"/,
    );
    assert.equal(
      metrics.peersRefused.get({ reason: "duplicate_mac" }),
      before + 1,
    );
    // On a relist the earlier claim wins whatever the key order, even
    // when the copier's key was created first.
    const t2 = new LeaseTable(config, { ownKey: "me", noun: "node" });
    const ev = t2.replaceAll(
      new Map([
        ["a-copier", ok({ ...copier, key: "a-copier", createdAt: 1 })],
        ["z-victim", ok({ ...victim, key: "z-victim", createdAt: 50 })],
      ]),
      0,
    );
    assert.deepEqual(ev.map((e) => `${e.type} ${e.lease.key}`), [
      "added z-victim",
    ]);
    // When the victim goes away the copier's claim is no longer a conflict.
    assert.deepEqual(
      t.remove("victim", 0).map((e) => `${e.type} ${e.lease.key}`),
      ["removed victim", "added copier"],
    );
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable refuses a peer that changes its MAC to one in use", () => {
  const log = captureLogs();
  try {
    const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
    t.update("a", ok(lease("a", "10.244.1.0/24", "198.18.0.2", MAC_A)), 0);
    t.update("b", ok(lease("b", "10.244.2.0/24", "198.18.0.3", MAC_B)), 0);
    const ev = t.update(
      "b",
      ok(lease("b", "10.244.2.0/24", "198.18.0.3", MAC_A)),
      0,
    );
    assert.deepEqual(ev.map((e) => `${e.type} ${e.lease.key}`), ["removed b"]);
    assert.deepEqual(t.leases.map((l) => l.key), ["a"]);
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable refuses a duplicate public IP per backend type only", () => {
  const log = captureLogs();
  const before = metrics.peersRefused.get({ reason: "duplicate_public_ip" });
  try {
    const t = new LeaseTable(config, { ownKey: "me", noun: "etcd key" });
    t.update("a", ok(lease("a", "10.244.1.0/24", "198.18.0.2")), 0);
    const same = lease("b", "10.244.2.0/24", "198.18.0.2", MAC_B);
    assert.deepEqual(t.update("b", ok(same), 0), []);
    assert.ok(
      log.lines.some((l) =>
        l.includes(
          'Skipping etcd key "b": public IP "198.18.0.2" (backend type "vxlan") is already used by etcd key "a"',
        )
      ),
    );
    assert.equal(
      metrics.peersRefused.get({ reason: "duplicate_public_ip" }),
      before + 1,
    );
    const hostgw = lease("c", "10.244.3.0/24", "198.18.0.2", MAC_B, "host-gw");
    assert.deepEqual(
      t.update("c", ok(hostgw), 0).map((e) => e.lease.key),
      ["c"],
    );
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable refuses a peer using this node's public IP or VtepMAC", () => {
  const log = captureLogs();
  try {
    const own = lease("me", "10.244.5.0/24", "198.18.0.5", MAC_A);
    const t = new LeaseTable(config, {
      ownKey: "me",
      ownLease: own,
      noun: "node",
    });
    t.update("x", ok(lease("x", "10.244.6.0/24", "198.18.0.6", MAC_A)), 0);
    t.update("y", ok(lease("y", "10.244.7.0/24", "198.18.0.5", MAC_B)), 0);
    assert.equal(t.leases.length, 0);
    assert.ok(log.lines.some((l) =>
      l.includes(
        'Skipping node "x": VtepMAC "0a:00:00:00:aa:aa" is this node\'s own',
      )
    ));
    assert.ok(log.lines.some((l) =>
      l.includes(
        'Skipping node "y": public IP "198.18.0.5" (backend type "vxlan") is this node\'s own',
      )
    ));
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable refuses peer subnets of another length than the cluster's", () => {
  const log = captureLogs();
  const before = metrics.peersRefused.get({ reason: "subnet_length" });
  try {
    const t = new LeaseTable(config, { ownKey: "me", noun: "etcd key" });
    // A /17 arriving first must not shadow the /24s inside it, nor a /32
    // punch a hole into one.
    assert.deepEqual(t.update("big", ok(lease("big", "10.244.0.0/17")), 0), []);
    assert.deepEqual(
      t.update("host", ok(lease("host", "10.244.1.7/32")), 0),
      [],
    );
    const real = t.update("real", ok(lease("real", "10.244.1.0/24")), 0);
    assert.deepEqual(real.map((e) => e.lease.key), ["real"]);
    assert.equal(
      metrics.peersRefused.get({ reason: "subnet_length" }),
      before + 2,
    );
    assert.ok(
      log.lines.some((l) =>
        l.includes(
          'Skipping etcd key "big": its subnet "10.244.0.0/17" is not a /24',
        )
      ),
    );
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable in kube mode programs podCIDRs of mixed lengths that overlap no earlier claim", () => {
  const log = captureLogs();
  try {
    // The controller-manager's mask size changed: this node has a /26,
    // older nodes /24s.
    const t = new LeaseTable(config, {
      ownKey: "me",
      noun: "node",
      lengths: "own",
      ownLease: lease("me", "10.244.4.0/26"),
    });
    // Each claim one second after the one before.
    let at = 0;
    const added = (key: string, subnet: string) =>
      t.update(key, ok({ ...lease(key, subnet), claimedAt: ++at * 1000 }), 0)
        .map((e) => e.lease.key);
    assert.deepEqual(added("a", "10.244.1.0/26"), ["a"]);
    assert.deepEqual(added("b", "10.244.2.0/24"), ["b"]);
    // Overlapping an earlier claim of either length is still refused.
    assert.deepEqual(added("c", "10.244.2.64/26"), []);
    assert.deepEqual(added("d", "10.244.0.0/23"), []);
    // So is one overlapping this node's own /26 from a wider prefix.
    assert.deepEqual(added("e", "10.244.4.0/24"), []);
    assert.ok(
      log.lines.some((l) =>
        l.includes(
          'Skipping node "c": its subnet overlaps the subnet of node "b"',
        )
      ),
    );
    assert.ok(
      log.lines.some((l) =>
        l.includes('Skipping node "e": its subnet overlaps this node\'s own')
      ),
    );
    // Between claims of the same time, the standard length goes first.
    const u = new LeaseTable(config, {
      ownKey: "me",
      noun: "node",
      lengths: "own",
      ownLease: lease("me", "10.244.4.0/26"),
    });
    const ev = u.replaceAll(
      new Map([
        ["a-wide", ok(lease("a-wide", "10.244.8.0/24"))],
        ["b-std", ok(lease("b-std", "10.244.8.64/26"))],
      ]),
      0,
    );
    assert.deepEqual(ev.map((e) => e.lease.key), ["b-std"]);
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable, dual stack: IPv6 subnet length, IPv6 public IP and v6 VtepMAC duplicates are refused", () => {
  const log = captureLogs();
  try {
    const dual = unwrap(parseNetConfig(
      '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}',
    ));
    const ds = (
      key: string,
      n: number,
      v6: { subnet?: string; ip?: string; mac?: string } = {},
    ): Lease => ({
      key,
      subnet: `10.244.${n}.0/24`,
      ipv6Subnet: v6.subnet ?? `fc00:0:0:${n}::/64`,
      attrs: {
        backendType: "vxlan",
        publicIP: `198.18.0.${n}`,
        publicIPv6: v6.ip ?? `fd18::${n}`,
        backendData: { VNI: 1, VtepMAC: `0a:00:00:00:04:${n}0` },
        backendV6Data: { VNI: 1, VtepMAC: v6.mac ?? `0a:00:00:00:06:${n}0` },
      },
    });
    const t = new LeaseTable(dual, { ownKey: "me", noun: "etcd key" });
    assert.deepEqual(t.update("a", ok(ds("a", 1)), 0).map((e) => e.type), [
      "added",
    ]);
    assert.deepEqual(
      t.update("b", ok(ds("b", 2, { subnet: "fc00:0:0:2::/80" })), 0),
      [],
    );
    assert.deepEqual(t.update("c", ok(ds("c", 3, { ip: "fd18::1" })), 0), []);
    assert.deepEqual(
      t.update("d", ok(ds("d", 4, { mac: "0a:00:00:00:06:10" })), 0),
      [],
    );
    assert.deepEqual(t.update("e", ok(ds("e", 5, { ip: "fc00::5" })), 0), []);
    const warned = (k: string) =>
      log.lines.find((l) => l.includes(`Skipping etcd key "${k}"`)) ?? "";
    assert.match(warned("b"), /"fc00:0:0:2::\/80" is not a \/64/);
    assert.match(
      warned("c"),
      /public IP "fd18::1" \(backend type "vxlan"\) is already used by etcd key "a"/,
    );
    assert.match(
      warned("d"),
      /VtepMAC "0a:00:00:00:06:10" is already used by etcd key "a"/,
    );
    assert.match(warned("e"), /inside the cluster network "fc00::\/48"/);
    assert.deepEqual(t.leases.map((l) => l.key), ["a"]);
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable.listed() accepts peers early; the complete listing decides overlaps as if alone", () => {
  const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
  const old = { ...lease("old", "10.244.1.0/24"), claimedAt: 1 };
  const young = { ...lease("young", "10.244.1.0/24"), claimedAt: 2 };
  const superNet = lease("super", "10.244.0.0/20");
  // Arrival order: the younger claim first, then a stray supernet, then
  // the earlier claim, which takes the subnet over at once.
  const early = [
    ...t.listed("young", ok(young), 0),
    ...t.listed("b", ok(lease("b", "10.244.2.0/24")), 0),
    ...t.listed("super", ok(superNet), 0),
    ...t.listed("old", ok(old), 0),
  ];
  assert.deepEqual(early.map((e) => `${e.type} ${e.lease.key}`), [
    "added young",
    "added b",
    "removed young",
    "added old",
  ]);
  const listing = new Map([
    ["young", ok(young)],
    ["b", ok(lease("b", "10.244.2.0/24"))],
    ["super", ok(superNet)],
    ["old", ok(old)],
  ]);
  // The complete listing alone decides the same: nothing changes.
  assert.deepEqual(t.replaceAll(listing, 0), []);
  assert.deepEqual(t.leases.map((l) => l.key).sort(), ["b", "old"]);
  // After a complete listing, listed() takes nothing early.
  assert.deepEqual(t.listed("c", ok(lease("c", "10.244.3.0/24")), 0), []);
});

Deno.test("LeaseTable refuses a second wireguard lease with an accepted PublicKey", () => {
  const log = captureLogs();
  const before = metrics.peersRefused.get({ reason: "duplicate_public_key" });
  try {
    const key = "CWtSC6+M0bdgPDbVj6okSvv4MUhNzjpYOYCsuEpH30g=";
    const wg = (
      k: string,
      subnet: string,
      ip: string,
      claimedAt: number,
    ): Lease => ({
      key: k,
      subnet,
      claimedAt,
      attrs: {
        publicIP: ip,
        backendType: "wireguard",
        backendData: { PublicKey: key, Port: 51820 },
      },
    });
    const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
    t.update("victim", ok(wg("victim", "10.244.1.0/24", "198.18.0.2", 100)), 0);
    const copier = wg("copier", "10.244.2.0/24", "198.18.0.3", 200);
    assert.deepEqual(t.update("copier", ok(copier), 0), []);
    assert.deepEqual(t.leases.map((l) => l.key), ["victim"]);
    assert.ok(
      log.lines.some((l) =>
        l.includes(
          `Skipping node "copier": WireGuard PublicKey "${key}" is already used by node "victim"`,
        )
      ),
      log.lines.join("\n"),
    );
    assert.equal(
      metrics.peersRefused.get({ reason: "duplicate_public_key" }),
      before + 1,
    );
  } finally {
    log.restore();
  }
});

/** Every order of `items`. */
function permutations<T>(items: T[]): T[][] {
  if (items.length <= 1) return [items];
  return items.flatMap((x, i) =>
    permutations([...items.slice(0, i), ...items.slice(i + 1)]).map((
      rest,
    ) => [x, ...rest])
  );
}

/** Applies `events` to `t` and replays them on the backend's view. */
function replay(view: Map<string, Lease>, events: LeaseEvent[]): void {
  for (const e of events) {
    if (e.type === "removed") view.delete(e.lease.key);
    else view.set(e.lease.key, e.lease);
  }
}

Deno.test("LeaseTable: the earlier claim keeps a VtepMAC, public IP or subnet against older and newer nodes, running or restarted", () => {
  const log = captureLogs();
  try {
    // The victim claimed MAC_A at 200. An older node (created first)
    // re-points its MAC to MAC_A at 300, then one switches to host-gw with
    // the victim's public IP, and a newer node copies the victim's subnet.
    const victim = {
      ...lease("victim", "10.244.1.0/24", "198.18.0.2", MAC_A),
      claimedAt: 200,
      createdAt: 20,
    };
    const older = {
      ...lease("a-older", "10.244.2.0/24", "198.18.0.3", MAC_B),
      claimedAt: 100,
      createdAt: 10,
    };
    const olderHostile = {
      ...lease("a-older", "10.244.2.0/24", "198.18.0.3", MAC_A),
      claimedAt: 300,
      createdAt: 10,
    };
    const newer = {
      ...lease("z-newer", "10.244.1.0/24", "198.18.0.4"),
      claimedAt: 400,
      createdAt: 40,
    };
    const ipCopy = {
      ...lease("b-ipcopy", "10.244.5.0/24", "198.18.0.2", MAC_B, "vxlan"),
      claimedAt: 500,
      createdAt: 5,
    };
    const final = [victim, olderHostile, newer, ipCopy];
    const verdict = ["victim"];
    // One started after everything happened.
    const fresh = new LeaseTable(config, { ownKey: "me", noun: "node" });
    const view = new Map<string, Lease>();
    replay(
      view,
      fresh.replaceAll(new Map(final.map((l) => [l.key, ok(l)])), 0),
    );
    assert.deepEqual([...view.keys()], verdict);
    // One running all along, seeing the events in every order (a watch
    // may deliver the victim late, after a relist); the older node's
    // first, harmless lease always comes before its hostile change.
    for (const order of permutations([victim, older, newer, ipCopy])) {
      const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
      const seen = new Map<string, Lease>();
      for (const l of order) replay(seen, t.update(l.key, ok(l), 0));
      replay(seen, t.update(olderHostile.key, ok(olderHostile), 0));
      assert.deepEqual(
        [...seen.keys()].sort(),
        verdict,
        order.map((l) => l.key).join(","),
      );
      assert.deepEqual(t.leases.map((l) => l.key), verdict);
    }
    for (
      const [key, reason] of [
        [
          "a-older",
          /VtepMAC "0a:00:00:00:aa:aa" is already used by node "victim"/,
        ],
        ["z-newer", /overlaps the subnet of node "victim"/],
        ["b-ipcopy", /public IP "198.18.0.2" .* node "victim"/],
      ] as const
    ) {
      assert.ok(
        log.lines.some((l) => l.includes(`"${key}"`) && reason.test(l)),
        key,
      );
    }
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable: a claim older than its holder's displaces it; the holder waits", () => {
  const log = captureLogs();
  const before = metrics.peersRefused.get({ reason: "duplicate_mac" });
  try {
    const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
    const copier = {
      ...lease("copier", "10.244.2.0/24", "198.18.0.3", MAC_A),
      claimedAt: 900,
    };
    const victim = {
      ...lease("victim", "10.244.1.0/24", "198.18.0.2", MAC_A),
      claimedAt: 100,
    };
    t.update("copier", ok(copier), 0);
    const ev = t.update("victim", ok(victim), 0);
    assert.deepEqual(ev.map((e) => `${e.type} ${e.lease.key}`), [
      "removed copier",
      "added victim",
    ]);
    assert.equal(
      metrics.peersRefused.get({ reason: "duplicate_mac" }),
      before + 1,
    );
    // A renewal that keeps the claims and their time changes nothing.
    assert.deepEqual(t.update("victim", ok({ ...victim }), 0), []);
    // A claim time moved later (the victim re-wrote its MAC) hands the MAC
    // to the claim now earlier, as a restarted table would.
    const moved = t.update("victim", ok({ ...victim, claimedAt: 1000 }), 0);
    assert.deepEqual(moved.map((e) => `${e.type} ${e.lease.key}`), [
      "removed victim",
      "added copier",
    ]);
    // Unknown claim times come last; between two unknown, the key name.
    const u = new LeaseTable(config, { ownKey: "me", noun: "node" });
    const { claimedAt: _, ...unknown } = victim;
    u.update("victim", ok(unknown), 0);
    assert.deepEqual(
      u.update("copier", ok(copier), 0).map((e) => `${e.type} ${e.lease.key}`),
      ["removed victim", "added copier"],
    );
  } finally {
    log.restore();
  }
});

Deno.test("LeaseTable: after any sequence of updates and removals, a running table holds what a fresh one decides from the same leases", () => {
  const log = captureLogs();
  try {
    // A small world where claims collide often: 8 keys, 4 subnets, 3
    // MACs, 3 public IPs, claim times from a few values (ties included).
    let seed = 42;
    const rand = (n: number) => {
      // The high bits: an LCG's low bits repeat with a short period.
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return (seed >>> 16) % n;
    };
    const keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
    for (let round = 0; round < 300; round++) {
      const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
      const now = new Map<string, Lease>();
      const view = new Map<string, Lease>();
      for (let step = 0; step < 30; step++) {
        const key = keys[rand(keys.length)]!;
        if (rand(5) === 0) {
          now.delete(key);
          replay(view, t.remove(key, 0));
        } else {
          const l: Lease = {
            ...lease(
              key,
              `10.244.${rand(4) + 1}.0/24`,
              `198.18.0.${rand(3) + 1}`,
              `0a:00:00:00:00:0${rand(3) + 1}`,
            ),
            ...(rand(6) > 0 && { claimedAt: rand(5) }),
            ...(rand(2) > 0 && { createdAt: rand(3) }),
          };
          now.set(key, l);
          replay(view, t.update(key, ok(l), 0));
        }
        const fresh = new LeaseTable(config, { ownKey: "me", noun: "node" });
        fresh.replaceAll(new Map([...now].map(([k, l]) => [k, ok(l)])), 0);
        const want = fresh.leases.map((l) => l.key).sort();
        const where = `round ${round} step ${step}`;
        assert.deepEqual(t.leases.map((l) => l.key).sort(), want, where);
        // The events told the backend exactly that.
        assert.deepEqual([...view.keys()].sort(), want, where);
      }
    }
  } finally {
    log.restore();
  }
});
