import assert from "node:assert/strict";
import { LeaseTable } from "./lease_table.ts";
import { parseNetConfig } from "./config.ts";
import type { Lease } from "./lease.ts";
import { fail, ok, unwrap } from "../lib/result.ts";
import { setLogSink } from "../lib/log.ts";

const config = unwrap(parseNetConfig('{"Network":"10.244.0.0/16"}'));

function lease(key: string, subnet: string, ip = "198.18.0.9"): Lease {
  return {
    key,
    subnet,
    attrs: {
      publicIP: ip,
      backendType: "vxlan",
      backendData: { VNI: 1, VtepMAC: "0a:00:00:00:00:09" },
    },
  };
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
    assert.ok(log.lines.some((l) => /Skipping node "c": .*node "a"/.test(l)));
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
      log.lines.some((l) => /Skipping etcd key "a-stray": .*"b-real"/.test(l)),
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

Deno.test("LeaseTable: after a restart the older of two equal claims wins, whatever the key order", () => {
  const log = captureLogs();
  try {
    const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
    const real = {
      ...lease("z-real", "10.244.3.0/24", "198.18.0.3"),
      createdAt: 1000,
    };
    const copy = {
      ...lease("a-copy", "10.244.3.0/24", "198.18.0.122"),
      createdAt: 5000,
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

Deno.test("LeaseTable.listed() accepts peers early; the complete listing decides overlaps as if alone", () => {
  const t = new LeaseTable(config, { ownKey: "me", noun: "node" });
  const old = { ...lease("old", "10.244.1.0/24"), createdAt: 1 };
  const young = { ...lease("young", "10.244.1.0/24"), createdAt: 2 };
  const superNet = lease("super", "10.244.0.0/20");
  // Arrival order: the younger claim first, then a stray supernet.
  const early = [
    ...t.listed("young", ok(young), 0),
    ...t.listed("b", ok(lease("b", "10.244.2.0/24")), 0),
    ...t.listed("super", ok(superNet), 0),
    ...t.listed("old", ok(old), 0),
  ];
  assert.deepEqual(early.map((e) => `${e.type} ${e.lease.key}`), [
    "added young",
    "added b",
  ]);
  const listing = new Map([
    ["young", ok(young)],
    ["b", ok(lease("b", "10.244.2.0/24"))],
    ["super", ok(superNet)],
    ["old", ok(old)],
  ]);
  const final = t.replaceAll(listing, 0);
  // As a complete listing alone decides: the older claim wins.
  assert.deepEqual(final.map((e) => `${e.type} ${e.lease.key}`), [
    "removed young",
    "added old",
  ]);
  assert.deepEqual(t.leases.map((l) => l.key).sort(), ["b", "old"]);
  // After a complete listing, listed() takes nothing early.
  assert.deepEqual(t.listed("c", ok(lease("c", "10.244.3.0/24")), 0), []);
});
