import assert from "node:assert/strict";
import { EtcdSubnetManager, LeaseRevokedError } from "./manager.ts";
import { FakeEtcd } from "./_fake_etcd.ts";
import type { LeaseAttrs, LeaseEvent } from "../lease.ts";
import { setLogSink } from "../../lib/log.ts";
import { formatNet } from "../../lib/ip.ts";
import { metrics } from "../../lib/metrics.ts";

const logs: string[] = [];
setLogSink((line) => logs.push(line));

const PREFIX = "/coreos.com/network";
const CONFIG = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}';
const attrs = (ip: string, mac = "0a:00:00:00:00:01"): LeaseAttrs => ({
  publicIP: ip,
  backendType: "vxlan",
  backendData: { VNI: 1, VtepMAC: mac },
});
const value = (ip: string, mac: string) =>
  `{"PublicIP":"${ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"${mac}"}}`;

/** The network config and node2's lease (10.5.2.0/24), already in etcd. */
async function withNode2(etcd: FakeEtcd): Promise<void> {
  await etcd.put(`${PREFIX}/config`, CONFIG);
  await etcd.put(
    `${PREFIX}/subnets/10.5.2.0-24`,
    value("198.18.0.2", "0a:00:00:00:00:02"),
  );
}

function setup(): { etcd: FakeEtcd; m: EtcdSubnetManager } {
  const etcd = new FakeEtcd();
  const m = new EtcdSubnetManager({
    endpoints: ["http://fake:2379"],
    client: etcd,
    configRetryMs: 1,
    maxBackoffMs: 1,
    // No subnet.env in unit tests: a path that does not exist.
    subnetFile: "/nonexistent/weft-unit/subnet.env",
  });
  return { etcd, m };
}

/** Collects handler batches; `until` resolves once `pred` holds. */
function collector() {
  const batches: LeaseEvent[][] = [];
  const waiters: [() => boolean, () => void][] = [];
  return {
    batches,
    handler: (events: LeaseEvent[]) => {
      batches.push(events);
      for (const [pred, done] of [...waiters]) if (pred()) done();
    },
    until(pred: () => boolean): Promise<void> {
      if (pred()) return Promise.resolve();
      return new Promise((resolve) => waiters.push([pred, resolve]));
    },
    summary: () => batches.flat().map((e) => `${e.type} ${e.lease.subnet}`),
  };
}

Deno.test("EtcdSubnetManager waits for a missing config, then acquires a subnet with a day-long etcd lease", async () => {
  const { etcd, m } = setup();
  const ac = new AbortController();
  const config = m.getNetworkConfig(ac.signal);
  // The first read finds nothing; the config appears later.
  await etcd.put(`${PREFIX}/config`, CONFIG);
  assert.equal(formatNet((await config).network!), "10.5.0.0/16");
  assert.ok(logs.some((l) => l.includes(`"${PREFIX}/config": not found`)));
  const lease = await m.acquireLease(attrs("198.18.0.1"), ac.signal);
  assert.match(lease.subnet!, /^10\.5\.\d+\.0\/24$/);
  const key = `${PREFIX}/subnets/${lease.subnet!.replace("/", "-")}`;
  assert.equal(lease.key, key);
  assert.equal(
    etcd.values().get(key),
    value("198.18.0.1", "0a:00:00:00:00:01"),
  );
  assert.equal(etcd.ttlOf(etcd.leaseOf(key)!), 86400);
});

Deno.test("EtcdSubnetManager reuses the lease that holds this node's public IP", async () => {
  const { etcd, m } = setup();
  await etcd.put(`${PREFIX}/config`, CONFIG);
  const grant = await etcd.leaseGrant(86400);
  await etcd.put(
    `${PREFIX}/subnets/10.5.77.0-24`,
    value("198.18.0.9", "0a:00:00:00:00:09"),
    { lease: grant.id },
  );
  const ac = new AbortController();
  const lease = await m.acquireLease(attrs("198.18.0.9"), ac.signal);
  assert.equal(lease.subnet, "10.5.77.0/24");
  assert.equal(etcd.values().size, 2);
});

Deno.test("EtcdSubnetManager retries with another subnet when a racer creates its chosen key first", async () => {
  const { etcd, m } = setup();
  await etcd.put(`${PREFIX}/config`, CONFIG);
  const raced: string[] = [];
  etcd.onTxn = async (compare) => {
    // The first two creates lose: another node writes the key in between.
    const c = compare[0];
    if (raced.length < 2 && c?.target === "VERSION" && c.value === 0n) {
      raced.push(c.key);
      await etcd.put(c.key, value("198.18.0.99", "0a:00:00:00:00:99"));
    }
  };
  const ac = new AbortController();
  const lease = await m.acquireLease(attrs("198.18.0.1"), ac.signal);
  assert.equal(raced.length, 2);
  assert.ok(!raced.includes(lease.key), `${lease.key} was taken`);
  for (const key of raced) {
    assert.equal(
      etcd.values().get(key),
      value("198.18.0.99", "0a:00:00:00:00:99"),
    );
  }
  assert.equal(
    etcd.values().get(lease.key),
    value("198.18.0.1", "0a:00:00:00:00:01"),
  );
  // Each attempt reads the subnets afresh: a lost race means the listing
  // it chose from is stale.
  assert.equal(etcd.calls.filter((x) => x === "rangePrefix").length, 3);
});

Deno.test("A start lists the subnets once: previousAttrs, acquireLease and watchLeases share it, and the watch replays what changed since", async () => {
  const { etcd, m } = setup();
  await withNode2(etcd);
  const ac = new AbortController();
  assert.equal(await m.previousAttrs("198.18.0.1", ac.signal), undefined);
  const lease = await m.acquireLease(attrs("198.18.0.1"), ac.signal);
  assert.notEqual(lease.subnet, "10.5.2.0/24");
  // Written after the listing: the watch must still deliver it.
  await etcd.put(
    `${PREFIX}/subnets/10.5.3.0-24`,
    value("198.18.0.3", "0a:00:00:00:00:03"),
  );
  const c = collector();
  const done = m.watchLeases(c.handler, ac.signal);
  await c.until(() => c.summary().length === 2);
  assert.deepEqual(c.summary(), ["added 10.5.2.0/24", "added 10.5.3.0/24"]);
  assert.equal(etcd.calls.filter((x) => x === "rangePrefix").length, 1);
  ac.abort();
  await done;
});

Deno.test("watchLeases() delivers the first listing even empty, then adds and removals; bad values are skipped with a warning", async () => {
  const { etcd, m } = setup();
  await etcd.put(`${PREFIX}/config`, CONFIG);
  const ac = new AbortController();
  const c = collector();
  const done = m.watchLeases(c.handler, ac.signal);
  await c.until(() => c.batches.length === 1);
  assert.deepEqual(c.batches[0], []);
  await etcd.put(
    `${PREFIX}/subnets/10.5.2.0-24`,
    value("198.18.0.2", "0a:00:00:00:00:02"),
  );
  await etcd.put(`${PREFIX}/subnets/10.5.3.0-24`, '{"PublicIP":"not an ip"}');
  await etcd.delete(`${PREFIX}/subnets/10.5.2.0-24`);
  await c.until(() => c.summary().length === 2);
  assert.deepEqual(c.summary(), ["added 10.5.2.0/24", "removed 10.5.2.0/24"]);
  assert.ok(
    logs.some((l) =>
      l.startsWith("W") && l.includes(`${PREFIX}/subnets/10.5.3.0-24`)
    ),
    "a warning names the bad key",
  );
  ac.abort();
  await done;
});

Deno.test("watchLeases() lists again after compaction and reports the deletes it missed", async () => {
  const { etcd, m } = setup();
  await withNode2(etcd);
  const ac = new AbortController();
  const c = collector();
  const done = m.watchLeases(c.handler, ac.signal);
  await c.until(() => c.summary().length === 1);
  // Behind the watch's back: an outage breaks it, the key goes, history
  // is compacted; the reconnect must list again.
  await etcd.watching();
  etcd.breakWatches();
  const deleted = etcd.delete(`${PREFIX}/subnets/10.5.2.0-24`);
  etcd.compact();
  await deleted;
  await c.until(() => c.summary().includes("removed 10.5.2.0/24"));
  assert.ok(etcd.calls.filter((x) => x === "rangePrefix").length >= 2);
  ac.abort();
  await done;
});

Deno.test("keepLease() rejects with LeaseRevokedError when the lease key is deleted", async () => {
  const { etcd, m } = setup();
  await etcd.put(`${PREFIX}/config`, CONFIG);
  const ac = new AbortController();
  const lease = await m.acquireLease(attrs("198.18.0.1"), ac.signal);
  const kept = m.keepLease(lease, ac.signal);
  await etcd.delete(lease.key);
  await assert.rejects(
    kept,
    (e: unknown) =>
      e instanceof LeaseRevokedError &&
      e.message ===
        `Lease has been revoked: etcd key "${lease.key}" was deleted`,
  );
  ac.abort();
});

Deno.test("keepLease() resolves on abort and leaves the lease in etcd", async () => {
  const { etcd, m } = setup();
  await etcd.put(`${PREFIX}/config`, CONFIG);
  const ac = new AbortController();
  const lease = await m.acquireLease(attrs("198.18.0.1"), ac.signal);
  const kept = m.keepLease(lease, ac.signal);
  ac.abort();
  await kept;
  assert.ok(etcd.values().has(lease.key));
});

Deno.test("keepLease() renews before expiry by moving the key to a fresh etcd lease", async () => {
  const etcd = new FakeEtcd();
  const m = new EtcdSubnetManager({
    endpoints: ["http://fake:2379"],
    client: etcd,
    leaseTtlSeconds: 2,
    // Renew 1.99 s before a 2 s expiry: at once.
    renewMarginMinutes: 1.99 / 60,
    subnetFile: "/nonexistent/weft-unit/subnet.env",
  });
  await etcd.put(`${PREFIX}/config`, CONFIG);
  const ac = new AbortController();
  const lease = await m.acquireLease(attrs("198.18.0.1"), ac.signal);
  const first = etcd.leaseOf(lease.key)!;
  const kept = m.keepLease(lease, ac.signal);
  while (etcd.leaseOf(lease.key) === first || etcd.ttlOf(first) !== undefined) {
    await etcd.changed();
  }
  const renewed = etcd.leaseOf(lease.key)!;
  assert.notEqual(renewed, "0");
  assert.equal(etcd.ttlOf(renewed), 2);
  assert.equal(etcd.ttlOf(first), undefined, "the old etcd lease is revoked");
  assert.equal(
    etcd.values().get(lease.key),
    value("198.18.0.1", "0a:00:00:00:00:01"),
  );
  ac.abort();
  await kept;
});

/** The peers an observer started now accepts, by subnet. */
async function observe(etcd: FakeEtcd): Promise<string[]> {
  const m = new EtcdSubnetManager({
    endpoints: ["http://fake:2379"],
    client: etcd,
    maxBackoffMs: 1,
    subnetFile: "/nonexistent/weft-unit/subnet.env",
  });
  const ac = new AbortController();
  const c = collector();
  const done = m.watchLeases(c.handler, ac.signal);
  await c.until(() => c.batches.length >= 1);
  ac.abort();
  await done;
  return c.batches[0]!.map((e) => `${e.lease.subnet} ${e.lease.claimedAt}`)
    .sort();
}

Deno.test("watchLeases(): the earlier claim keeps a VtepMAC against an older and a newer key, for a running and a restarted observer", async () => {
  const { etcd, m } = setup();
  const MAC_V = "0a:00:00:00:00:09";
  const older = `${PREFIX}/subnets/10.5.3.0-24`;
  const victim = `${PREFIX}/subnets/10.5.2.0-24`;
  const newer = `${PREFIX}/subnets/10.5.4.0-24`;
  await etcd.put(`${PREFIX}/config`, CONFIG);
  await etcd.put(older, value("198.18.0.3", "0a:00:00:00:00:03"));
  const claimed = await etcd.put(victim, value("198.18.0.2", MAC_V));
  // Renewals rewrite the victim's value: its mod revision moves.
  for (let i = 0; i < 3; i++) {
    await etcd.put(victim, value("198.18.0.2", MAC_V));
  }
  const ac = new AbortController();
  const c = collector();
  const done = m.watchLeases(c.handler, ac.signal);
  await c.until(() => c.summary().length === 2);
  // The older key re-points its MAC to the victim's and renews; a newer
  // key copies it too.
  const repointed = await etcd.put(older, value("198.18.0.3", MAC_V));
  await etcd.put(older, value("198.18.0.3", MAC_V));
  await etcd.put(newer, value("198.18.0.4", MAC_V));
  // The victim renews after the attack: its mod revision is now the latest.
  await etcd.put(victim, value("198.18.0.2", MAC_V));
  await c.until(() => c.summary().includes("removed 10.5.3.0/24"));
  const running = new Map<string, LeaseEvent["lease"]>();
  for (const e of c.batches.flat()) {
    if (e.type === "added") running.set(e.lease.key, e.lease);
    else running.delete(e.lease.key);
  }
  assert.deepEqual([...running.keys()], [victim]);
  // Uncontested when listed, the victim's claim was not walked back: its
  // mod revision stands in, still before the re-pointing.
  assert.ok(running.get(victim)!.claimedAt! < Number(repointed));
  // An observer started now walks the contested keys back through the
  // history: the same verdict, with the same claim revision.
  assert.deepEqual(await observe(etcd), [`10.5.2.0/24 ${claimed}`]);
  assert.ok(
    logs.some((l) =>
      l.includes(`"${older}"`) && /VtepMAC .* already used by etcd key/.test(l)
    ),
  );
  // Once etcd compacts away both claims' beginnings, they tie and the key
  // created first wins (docs/hostile-inputs.md); a claim made after the
  // compaction still loses to both.
  etcd.compact();
  await etcd.put(`${PREFIX}/subnets/10.5.5.0-24`, value("198.18.0.5", MAC_V));
  assert.deepEqual(await observe(etcd), ["10.5.3.0/24 0"]);
  ac.abort();
  await done;
});

Deno.test("watchLeases(): a copy of the victim's VtepMAC in another spelling is the same claim, walked back for a restarted observer; older versions are not counted as oversized", async () => {
  const { etcd } = setup();
  const victim = `${PREFIX}/subnets/10.5.2.0-24`;
  const older = `${PREFIX}/subnets/10.5.3.0-24`;
  await etcd.put(`${PREFIX}/config`, CONFIG);
  await etcd.put(older, value("198.18.0.3", "0a:00:00:00:00:03"));
  // An old version of the victim's key too large to read, then its claim.
  await etcd.put(victim, `{"Pad":"${"x".repeat(1 << 20)}"}`);
  const claimed = await etcd.put(
    victim,
    value("198.18.0.2", "0a:00:00:00:00:09"),
  );
  await etcd.put(victim, value("198.18.0.2", "0a:00:00:00:00:09"));
  // The older key copies the MAC in capitals with dashes; both renew.
  await etcd.put(older, value("198.18.0.3", "0A-00-00-00-00-09"));
  await etcd.put(older, value("198.18.0.3", "0A-00-00-00-00-09"));
  await etcd.put(victim, value("198.18.0.2", "0a:00:00:00:00:09"));
  const before = metrics.peerObjectsOversized.get();
  assert.deepEqual(await observe(etcd), [`10.5.2.0/24 ${claimed}`]);
  assert.equal(metrics.peerObjectsOversized.get(), before);
});

Deno.test("IPv6 only: keys and values as flanneld writes them, a flanneld node's lease is a peer and never taken over", async () => {
  const { etcd, m } = setup();
  await etcd.put(
    `${PREFIX}/config`,
    '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}',
  );
  // flanneld's IPv6-only lease: `0.0.0.0-0&…` and "PublicIP":"0.0.0.0".
  const theirs = `${PREFIX}/subnets/0.0.0.0-0&fc00:0:0:1::-64`;
  await etcd.put(
    theirs,
    '{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:18::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0a:00:00:00:01:06"}}',
  );
  const ac = new AbortController();
  const ours: LeaseAttrs = {
    publicIPv6: "fd00:18::2",
    backendType: "vxlan",
    backendV6Data: { VNI: 1, VtepMAC: "0a:00:00:00:02:06" },
  };
  const lease = await m.acquireLease(ours, ac.signal);
  // Not flanneld's key (its "0.0.0.0" is not our identity), a free /64.
  assert.equal(lease.subnet, undefined);
  assert.match(lease.ipv6Subnet!, /^fc00:0:0:[\da-f]+::\/64$/);
  assert.notEqual(lease.ipv6Subnet, "fc00:0:0:1::/64");
  assert.equal(
    lease.key,
    `${PREFIX}/subnets/0.0.0.0-0&${lease.ipv6Subnet!.replace("/", "-")}`,
  );
  assert.equal(
    etcd.values().get(lease.key),
    '{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:18::2","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0a:00:00:00:02:06"}}',
  );
  assert.equal(
    etcd.values().get(theirs)?.includes("fd00:18::1"),
    true,
    "flanneld's lease untouched",
  );
  // Its IPv6 half is a peer; the empty IPv4 part is not a subnet.
  const c = collector();
  const done = m.watchLeases(c.handler, ac.signal);
  await c.until(() => c.batches.length === 1);
  assert.deepEqual(
    c.batches[0]!.map((e) => [e.type, e.lease.subnet, e.lease.ipv6Subnet]),
    [["added", undefined, "fc00:0:0:1::/64"]],
  );
  ac.abort();
  await done;
  // A restart finds our own lease again by its IPv6 address.
  const again = setup();
  for (const [k, v] of etcd.values()) await again.etcd.put(k, v);
  const ac2 = new AbortController();
  const reused = await again.m.acquireLease(ours, ac2.signal);
  assert.equal(reused.key, lease.key);
  ac2.abort();
});

Deno.test("watchLeases() refuses oversized values one by one (logged once, counted once per write), programs the rest, and no peer string forges or floods a log line", async () => {
  const { etcd, m } = setup();
  await withNode2(etcd);
  const big = (n: number) =>
    `{"PublicIP":"198.18.0.9","Pad":"${"x".repeat(n)}"}`;
  const oversized = [3, 4, 5].map((i) => `${PREFIX}/subnets/10.5.${i}.0-24`);
  for (const k of oversized) await etcd.put(k, big(1 << 20));
  // Under the value bound but long, with a forged line in it.
  await etcd.put(
    `${PREFIX}/subnets/10.5.6.0-24`,
    `{"PublicIP":"198.18.0.6\nE1206 00:00:00.000000 1 etcd] forged","x":"${
      "y".repeat(50 << 10)
    }"}`,
  );
  await etcd.put(
    `${PREFIX}/subnets/10.5.7.0-24`,
    value("198.18.0.7", "0a:00:00:00:00:07\\nE1206 forged-mac"),
  );
  await etcd.put(`${PREFIX}/subnets/10.5.8.0-24\nW1206 forged-key`, "{}");
  const before = metrics.peerObjectsOversized.get();
  const from = logs.length;
  const ac = new AbortController();
  const c = collector();
  const done = m.watchLeases(c.handler, ac.signal);
  await c.until(() => c.summary().length === 1);
  assert.deepEqual(c.summary(), ["added 10.5.2.0/24"]);
  assert.equal(metrics.peerObjectsOversized.get() - before, 3);
  const warned = (k: string) =>
    logs.slice(from).filter((l) => l.startsWith("W") && l.includes(`"${k}"`));
  for (const k of oversized) {
    const lines = warned(k);
    assert.equal(lines.length, 1, k);
    assert.match(
      lines[0]!,
      /: value of 1048610 bytes refused for its size \(at most 65536\)$/,
    );
  }
  // A valid peer at 10.5.<i>.0/24, whose arrival marks a point in time.
  const marker = async (i: number, events: number) => {
    await etcd.put(
      `${PREFIX}/subnets/10.5.${i}.0-24`,
      value(`198.18.0.${i + 10}`, `0a:00:00:00:00:${i + 10}`),
    );
    await c.until(() => c.summary().length === events);
  };
  // A new write of one counts again; a relist of the same does not.
  await etcd.put(oversized[0]!, big(2 << 20));
  await marker(9, 2);
  assert.equal(metrics.peerObjectsOversized.get() - before, 4);
  etcd.compact();
  etcd.breakWatches();
  await marker(10, 3);
  assert.equal(metrics.peerObjectsOversized.get() - before, 4);
  ac.abort();
  await done;
  const mine = logs.slice(from);
  for (const l of mine) {
    assert.ok(/^[IWE]\d{4} /.test(l), `not a log line: ${l.slice(0, 80)}`);
    assert.ok(!l.includes("\n"), `a newline inside: ${l.slice(0, 200)}`);
    assert.ok(l.length < 1000, `a line of ${l.length} chars`);
  }
  const forged = mine.filter((l) => l.includes("forged"));
  assert.equal(forged.length, 3);
  for (const l of forged) {
    assert.match(l, /^W\d{4} [\d:.]+ +\d+ subnet\] Skipping etcd key "/);
  }
  const cut = mine.find((l) => l.includes("10.5.6.0-24"));
  assert.match(
    cut ?? "",
    /\\nE1206 00:00:00\.000000 1 etcd\] forged.*…" \(51\d{3} bytes\)/,
  );
  assert.match(
    mine.find((l) => l.includes("10.5.7.0-24")) ?? "",
    /VtepMAC: Cannot parse MAC address "0a:00:00:00:00:07\\nE1206 forged-mac"/,
  );
  assert.ok(
    mine.some((l) =>
      l.includes(`"${PREFIX}/subnets/10.5.8.0-24\\nW1206 forged-key"`)
    ),
  );
});
