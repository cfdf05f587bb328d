/**
 * The etcd subnet manager against a real etcd (Debian's 3.4, started per
 * test on loopback by tests/servers/etcd.ts). Ignored with a reason when
 * /usr/bin/etcd is missing, except under CI=true, where that is a failure.
 *
 * @module
 */
import { gatedTest } from "../_gate.ts";
import assert from "node:assert/strict";
import { EtcdClient } from "../../subnet/etcd/client.ts";
import {
  EtcdSubnetManager,
  type EtcdSubnetManagerOptions,
  LeaseRevokedError,
} from "../../subnet/etcd/manager.ts";
import type { LeaseAttrs, LeaseEvent } from "../../subnet/lease.ts";
import { setLogSink } from "../../lib/log.ts";
import { metrics } from "../../lib/metrics.ts";
import {
  DEBIAN_ETCD_SERVER,
  EtcdServer,
  type EtcdServerOptions,
} from "../servers/etcd.ts";
import { sh } from "../_netns.ts";

const PREFIX = "/coreos.com/network";
const DIR = `${PREFIX}/subnets/`;
const CONFIG_KEY = `${PREFIX}/config`;
const NET_CONF = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}';

/** A test with its own fresh etcd. */
function etcdTest(
  name: string,
  fn: (etcd: EtcdServer) => Promise<void>,
  opts: EtcdServerOptions | (() => Promise<EtcdServerOptions>) = {},
): Promise<void> {
  return gatedTest({
    name,
    needs: [DEBIAN_ETCD_SERVER],
    fn: async () => {
      const o = typeof opts === "function" ? await opts() : opts;
      await using etcd = await EtcdServer.start(o);
      try {
        await fn(etcd);
      } catch (e) {
        console.error(`etcd log tail:\n${(await etcd.log()).slice(-3000)}`);
        throw e;
      }
    },
  }) as Promise<void>;
}

function manager(
  etcd: EtcdServer,
  extra: Partial<EtcdSubnetManagerOptions> = {},
): EtcdSubnetManager {
  return new EtcdSubnetManager({
    endpoints: [etcd.endpoint],
    subnetFile: "/nonexistent/weft-test/subnet.env",
    requestTimeoutMs: 3000,
    configRetryMs: 100,
    maxBackoffMs: 300,
    ...extra,
  });
}

function attrs(ip: string, mac = "0a:00:00:00:00:01"): LeaseAttrs {
  return {
    publicIP: ip,
    backendType: "vxlan",
    backendData: { VNI: 1, VtepMAC: mac },
  };
}

/** flanneld's exact value for a peer. */
function flanneldValue(ip: string, mac: string): string {
  return `{"PublicIP":"${ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"${mac}"}}`;
}

async function until<T>(
  what: string,
  probe: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Runs watchLeases in the background and collects its events. */
class Watcher implements AsyncDisposable {
  readonly events: LeaseEvent[] = [];
  /** Handler calls, empty batches included. */
  batches = 0;
  readonly #ac = new AbortController();
  /** The error watchLeases ended with, or undefined. */
  readonly done: Promise<unknown>;

  constructor(m: EtcdSubnetManager) {
    this.done = settle(m.watchLeases((evs) => {
      this.batches++;
      this.events.push(...evs);
    }, this.#ac.signal));
  }

  /** `type subnet` of every event so far. */
  get summary(): string[] {
    return this.events.map((e) => `${e.type} ${e.lease.subnet}`);
  }

  waitFor(line: string): Promise<true> {
    return until(
      `event "${line}" (have ${JSON.stringify(this.summary)})`,
      () => this.summary.includes(line) || undefined,
    );
  }

  /** Stops watching; watchLeases must resolve, not reject. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.#ac.abort();
    const err = await this.done;
    if (err !== undefined) throw err;
  }
}

/**
 * Attaches a handler at once (a rejection seen before the test awaits it
 * would otherwise be reported as uncaught) and settles to the error, or
 * undefined on success.
 */
function settle(p: Promise<unknown>): Promise<unknown> {
  return p.then(() => undefined, (e) => e);
}

function captureLogs(): { lines: string[]; [Symbol.dispose](): void } {
  const lines: string[] = [];
  const prev = setLogSink((l) => lines.push(l));
  return { lines, [Symbol.dispose]: () => setLogSink(prev) };
}

/** A TCP relay to etcd that can drop every connection and refuse new ones. */
class TcpProxy {
  readonly port: number;
  readonly #target: number;
  #listener: Deno.Listener | undefined;
  readonly #conns = new Set<Deno.Conn>();

  constructor(target: number) {
    this.#target = target;
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#serve(this.#listener);
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async #serve(listener: Deno.Listener): Promise<void> {
    try {
      for await (const down of listener) {
        let up: Deno.Conn;
        try {
          up = await Deno.connect({
            hostname: "127.0.0.1",
            port: this.#target,
          });
        } catch {
          down.close();
          continue;
        }
        this.#conns.add(down).add(up);
        down.readable.pipeTo(up.writable).catch(() => {});
        up.readable.pipeTo(down.writable).catch(() => {});
      }
    } catch {
      // Listener closed.
    }
  }

  /** Drops every connection and stops listening. */
  pause(): void {
    this.#listener?.close();
    this.#listener = undefined;
    for (const c of this.#conns) {
      try {
        c.close();
      } catch {
        // Already closed by a pipe.
      }
    }
    this.#conns.clear();
  }

  /** Listens again on the same port. */
  resume(): void {
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: this.port });
    this.#serve(this.#listener);
  }

  close(): void {
    this.pause();
  }
}

function portOf(url: string): number {
  return Number(new URL(url).port);
}

// --- acquisition -----------------------------------------------------------

await etcdTest(
  "five managers racing for subnets get five distinct subnets",
  async (etcd) => {
    // Five subnets for five nodes: random picks almost always collide
    // (all distinct has odds 5!/5^5, 4%), so the version==0 transaction
    // refuses and the losers retry; every subnet must end up used once.
    await etcd.put(
      CONFIG_KEY,
      '{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.5.0"}',
    );
    const managers = [1, 2, 3, 4, 5].map(() => manager(etcd));
    const ac = new AbortController();
    const leases = await Promise.all(
      managers.map((m, i) =>
        m.acquireLease(
          attrs(`10.0.0.${i + 1}`, `0a:00:00:00:00:0${i + 1}`),
          ac.signal,
        )
      ),
    );
    const subnets = leases.map((l) => l.subnet!).sort();
    assert.deepEqual(subnets, [1, 2, 3, 4, 5].map((i) => `10.5.${i}.0/24`));
    const stored = await etcd.list(DIR);
    assert.equal(stored.size, 5);
    for (const [i, l] of leases.entries()) {
      const raw = stored.get(l.key);
      assert.ok(raw, `key ${l.key} in etcd`);
      assert.equal(
        raw.value,
        flanneldValue(`10.0.0.${i + 1}`, `0a:00:00:00:00:0${i + 1}`),
      );
      assert.notEqual(raw.lease, "0");
      assert.ok(await etcd.leaseTtl(raw.lease) > 86_000);
    }
    managers.forEach((m) => m.close());
  },
);

await etcdTest(
  "a restarted node with the same public IP gets its subnet back",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    const ac = new AbortController();
    const m1 = manager(etcd);
    const first = await m1.acquireLease(
      attrs("10.0.0.7", "0a:00:00:00:00:07"),
      ac.signal,
    );
    m1.close();
    const before = (await etcd.get(first.key))!;

    const m2 = manager(etcd);
    const second = await m2.acquireLease(
      attrs("10.0.0.7", "0a:00:00:00:00:77"),
      ac.signal,
    );
    m2.close();
    assert.equal(second.subnet, first.subnet);
    assert.equal(second.key, first.key);
    const after = (await etcd.get(first.key))!;
    assert.equal(after.value, flanneldValue("10.0.0.7", "0a:00:00:00:00:77"));
    assert.notEqual(after.lease, before.lease);
    assert.equal(
      await etcd.leaseTtl(before.lease),
      -1,
      "old etcd lease revoked",
    );
    assert.equal((await etcd.list(DIR)).size, 1);
  },
);

await etcdTest(
  "the previous subnet from subnet.env is reused when free",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    const dir = await Deno.makeTempDir({ prefix: "weft-etcd-env-" });
    try {
      const file = `${dir}/subnet.env`;
      await Deno.writeTextFile(
        file,
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.77.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
      );
      const m = manager(etcd, { subnetFile: file });
      const lease = await m.acquireLease(
        attrs("10.0.0.3"),
        new AbortController().signal,
      );
      m.close();
      assert.equal(lease.subnet, "10.5.77.0/24");
      assert.ok(await etcd.get(`${DIR}10.5.77.0-24`));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

await etcdTest(
  "the previous subnet is not reused when another node holds it",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    await etcd.put(
      `${DIR}10.5.77.0-24`,
      flanneldValue("10.0.0.99", "0a:00:00:00:00:99"),
    );
    const dir = await Deno.makeTempDir({ prefix: "weft-etcd-env-" });
    try {
      const file = `${dir}/subnet.env`;
      await Deno.writeTextFile(
        file,
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.77.1/24\n",
      );
      const m = manager(etcd, { subnetFile: file });
      const lease = await m.acquireLease(
        attrs("10.0.0.3"),
        new AbortController().signal,
      );
      m.close();
      assert.notEqual(lease.subnet, "10.5.77.0/24");
      assert.equal(
        (await etcd.get(`${DIR}10.5.77.0-24`))!.value,
        flanneldValue("10.0.0.99", "0a:00:00:00:00:99"),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

await etcdTest(
  "a reservation (key without lease) is honoured and never expires",
  async (etcd) => {
    await etcd.put(
      CONFIG_KEY,
      '{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0"}',
    );
    await etcd.put(
      `${DIR}10.5.1.0-24`,
      flanneldValue("10.0.0.9", "0a:00:00:00:00:09"),
    );
    const ac = new AbortController();
    const other = manager(etcd);
    const otherLease = await other.acquireLease(attrs("10.0.0.8"), ac.signal);
    other.close();
    assert.equal(
      otherLease.subnet,
      "10.5.2.0/24",
      "the reserved subnet is skipped",
    );

    const owner = manager(etcd, { leaseTtlSeconds: 2 });
    const lease = await owner.acquireLease(
      attrs("10.0.0.9", "0a:00:00:00:00:19"),
      ac.signal,
    );
    assert.equal(lease.subnet, "10.5.1.0/24");
    assert.equal(lease.expiration, undefined);
    const keeping = settle(owner.keepLease(lease, ac.signal));
    await new Promise((r) => setTimeout(r, 3000)); // longer than the lease TTL
    const raw = await etcd.get(`${DIR}10.5.1.0-24`);
    assert.ok(raw, "reservation still there");
    assert.equal(raw.lease, "0");
    assert.equal(raw.value, flanneldValue("10.0.0.9", "0a:00:00:00:00:19"));
    ac.abort();
    assert.equal(await keeping, undefined);
    owner.close();
  },
);

await etcdTest(
  "a full network gives a clear out-of-subnets error",
  async (etcd) => {
    await etcd.put(
      CONFIG_KEY,
      '{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.1.0"}',
    );
    await etcd.put(
      `${DIR}10.5.1.0-24`,
      flanneldValue("10.0.0.99", "0a:00:00:00:00:99"),
    );
    const m = manager(etcd);
    await assert.rejects(
      m.acquireLease(attrs("10.0.0.1"), new AbortController().signal),
      {
        message:
          `Cannot acquire a subnet lease under "${DIR}": Out of subnets: every subnet from 10.5.1.0/24 to 10.5.1.0/24 is taken`,
      },
    );
    m.close();
  },
);

await etcdTest(
  "the stored value is byte-identical to flanneld's",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    const m = manager(etcd);
    const lease = await m.acquireLease(
      attrs("192.168.64.3", "3a:bb:55:60:be:4e"),
      new AbortController().signal,
    );
    m.close();
    assert.match(
      lease.key,
      /^\/coreos\.com\/network\/subnets\/10\.5\.\d+\.0-24$/,
    );
    assert.equal(
      (await etcd.get(lease.key))!.value,
      '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:bb:55:60:be:4e"}}',
    );
  },
);

await etcdTest(
  "a dual-stack lease is stored under flanneld's dual key with both addresses",
  async (etcd) => {
    await etcd.put(
      CONFIG_KEY,
      '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}',
    );
    const m = manager(etcd);
    const lease = await m.acquireLease({
      publicIP: "192.168.64.3",
      publicIPv6: "fd00::3",
      backendType: "vxlan",
      backendData: { VNI: 1, VtepMAC: "3a:bb:55:60:be:4e" },
      backendV6Data: { VNI: 1, VtepMAC: "3a:bb:55:60:be:4f" },
    }, new AbortController().signal);
    m.close();
    const m1 = /subnets\/10\.5\.(\d+)\.0-24&fc00:0:0:([0-9a-f]+)::-64$/.exec(
      lease.key,
    );
    assert.ok(m1, lease.key);
    assert.equal(lease.ipv6Subnet, `fc00:0:0:${m1[2]}::/64`);
    assert.equal(
      (await etcd.get(lease.key))!.value,
      '{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:bb:55:60:be:4e"},"BackendV6Data":{"VNI":1,"VtepMAC":"3a:bb:55:60:be:4f"}}',
    );
  },
);

// --- config ------------------------------------------------------------------

await etcdTest(
  "getNetworkConfig waits for a missing config and names the key",
  async (etcd) => {
    using logs = captureLogs();
    const m = manager(etcd);
    const pending = m.getNetworkConfig(new AbortController().signal);
    await until(
      "a warning",
      () => logs.lines.some((l) => l.includes("not found")) || undefined,
    );
    await etcd.put(CONFIG_KEY, '{"Network":"10.5.0.0/33"}');
    await until(
      "the invalid config warning",
      () =>
        logs.lines.some((l) =>
          l.includes('Cannot parse Network "10.5.0.0/33"')
        ) || undefined,
    );
    await etcd.put(CONFIG_KEY, NET_CONF);
    const config = await pending;
    m.close();
    assert.equal(config.subnetLen, 24);
    assert.ok(
      logs.lines.some((l) =>
        l.includes(
          `Cannot use the network config in etcd key "${CONFIG_KEY}": not found`,
        )
      ),
      logs.lines.join("\n"),
    );
  },
);

await etcdTest("getNetworkConfig stops retrying when aborted", async (etcd) => {
  using _logs = captureLogs();
  const m = manager(etcd);
  const ac = new AbortController();
  const pending = m.getNetworkConfig(ac.signal);
  setTimeout(() => ac.abort(new Error("stop")), 300);
  await assert.rejects(pending, { message: "stop" });
  m.close();
});

// --- watching ------------------------------------------------------------------

await etcdTest(
  "a lease written in flanneld's exact JSON is read, IPv4 and dual stack",
  async (etcd) => {
    await etcd.put(
      CONFIG_KEY,
      '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}',
    );
    await etcd.put(
      `${DIR}10.5.52.0-24`,
      flanneldValue("192.168.64.3", "3a:bb:55:60:be:4e"),
    );
    const m = manager(etcd);
    await using w = new Watcher(m);
    await w.waitFor("added 10.5.52.0/24");
    await etcd.put(
      `${DIR}10.5.53.0-24&fc00:0:0:35::-64`,
      '{"PublicIP":"192.168.64.4","PublicIPv6":"fd00::4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:bb:55:60:be:50"},"BackendV6Data":{"VNI":1,"VtepMAC":"3a:bb:55:60:be:51"}}',
    );
    await w.waitFor("added 10.5.53.0/24");
    const [v4, dual] = w.events.map((e) => e.lease);
    // Claim and create revisions order overlapping claims; neither key
    // was rewritten, so both are its create revision.
    assert.ok(
      typeof v4?.createdAt === "number" &&
        typeof dual?.createdAt === "number" &&
        v4.createdAt < dual.createdAt && v4.claimedAt === v4.createdAt &&
        dual.claimedAt === dual.createdAt,
    );
    assert.deepEqual({ ...v4, createdAt: undefined, claimedAt: undefined }, {
      createdAt: undefined,
      claimedAt: undefined,
      key: `${DIR}10.5.52.0-24`,
      subnet: "10.5.52.0/24",
      attrs: {
        backendType: "vxlan",
        publicIP: "192.168.64.3",
        backendData: { VNI: 1, VtepMAC: "3a:bb:55:60:be:4e" },
      },
    });
    assert.deepEqual({ ...dual, createdAt: undefined, claimedAt: undefined }, {
      createdAt: undefined,
      claimedAt: undefined,
      key: `${DIR}10.5.53.0-24&fc00:0:0:35::-64`,
      subnet: "10.5.53.0/24",
      ipv6Subnet: "fc00:0:0:35::/64",
      attrs: {
        backendType: "vxlan",
        publicIP: "192.168.64.4",
        publicIPv6: "fd00::4",
        backendData: { VNI: 1, VtepMAC: "3a:bb:55:60:be:50" },
        backendV6Data: { VNI: 1, VtepMAC: "3a:bb:55:60:be:51" },
      },
    });
    m.close();
  },
);

await etcdTest(
  "the first listing is delivered even when there is no peer",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    const m = manager(etcd);
    await using w = new Watcher(m);
    await until("the first batch", () => w.batches === 1 || undefined);
    assert.deepEqual(w.events, []);
    await etcd.put(
      `${DIR}10.5.60.0-24`,
      flanneldValue("10.0.0.60", "0a:00:00:00:00:60"),
    );
    await w.waitFor("added 10.5.60.0/24");
    assert.equal(w.batches, 2);
    m.close();
  },
);

await etcdTest(
  "malformed keys and values are skipped with a warning, never emitted",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    using logs = captureLogs();
    // Present at listing time.
    await etcd.put(`${DIR}10.5.3.0-24`, "{not json");
    await etcd.put(
      `${DIR}10.5.4.0-24`,
      flanneldValue("not-an-ip", "0a:00:00:00:00:04"),
    );
    await etcd.put(
      `${DIR}10.5.6.0-24`,
      flanneldValue("10.0.0.6", "0a:00:00:00:00:06"),
    );
    const m = manager(etcd);
    await using w = new Watcher(m);
    await w.waitFor("added 10.5.6.0/24");
    // Arriving through the watch.
    await etcd.put(
      `${DIR}10.5.5.0-24`,
      flanneldValue("10.0.0.5", "01:00:5e:00:00:05"),
    );
    await etcd.put(
      `${DIR}garbage`,
      flanneldValue("10.0.0.8", "0a:00:00:00:00:08"),
    );
    await etcd.put(
      `${DIR}10.5.7.0-24`,
      flanneldValue("10.0.0.7", "0a:00:00:00:00:07"),
    );
    await w.waitFor("added 10.5.7.0/24");
    assert.deepEqual(w.summary, ["added 10.5.6.0/24", "added 10.5.7.0/24"]);
    const warned = (key: string, why: string) =>
      assert.ok(
        logs.lines.some((l) =>
          l.startsWith("W") && l.includes(`"${DIR}${key}"`) && l.includes(why)
        ),
        `warning for ${key} (${why}) in:\n${logs.lines.join("\n")}`,
      );
    warned("10.5.3.0-24", "Cannot parse lease value");
    warned("10.5.4.0-24", "public IP");
    warned("10.5.5.0-24", "multicast");
    warned("garbage", "is not a subnet");
    m.close();
  },
);

await etcdTest(
  "deleting a peer key (or its lease expiring) emits removed",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    const grant = await etcd.request("/v3/lease/grant", { TTL: "2" });
    await etcd.put(
      `${DIR}10.5.8.0-24`,
      flanneldValue("10.0.0.8", "0a:00:00:00:00:08"),
      String(grant.ID),
    );
    await etcd.put(
      `${DIR}10.5.9.0-24`,
      flanneldValue("10.0.0.9", "0a:00:00:00:00:09"),
    );
    const m = manager(etcd);
    await using w = new Watcher(m);
    await w.waitFor("added 10.5.9.0/24");
    await w.waitFor("added 10.5.8.0/24");
    await etcd.delete(`${DIR}10.5.9.0-24`);
    await w.waitFor("removed 10.5.9.0/24");
    await w.waitFor("removed 10.5.8.0/24"); // etcd expired the lease
    m.close();
  },
);

await etcdTest(
  "the watch resumes after etcd restarts and later events arrive",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    using _logs = captureLogs();
    const restarts = metrics.watchRestarts.get();
    const m = manager(etcd);
    await using w = new Watcher(m);
    await etcd.put(
      `${DIR}10.5.10.0-24`,
      flanneldValue("10.0.0.10", "0a:00:00:00:00:10"),
    );
    await w.waitFor("added 10.5.10.0/24");
    await etcd.restart();
    await etcd.put(
      `${DIR}10.5.11.0-24`,
      flanneldValue("10.0.0.11", "0a:00:00:00:00:11"),
    );
    await w.waitFor("added 10.5.11.0/24");
    assert.deepEqual(w.summary, ["added 10.5.10.0/24", "added 10.5.11.0/24"]);
    assert.ok(metrics.watchRestarts.get() > restarts);
    m.close();
  },
);

await etcdTest(
  "after compaction the watch relists and synthesises the delete it missed",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    using logs = captureLogs();
    const proxy = new TcpProxy(portOf(etcd.endpoint));
    const relists = metrics.relists.get();
    const m = manager(etcd, { endpoints: [proxy.endpoint] });
    try {
      await using w = new Watcher(m);
      await etcd.put(
        `${DIR}10.5.12.0-24`,
        flanneldValue("10.0.0.12", "0a:00:00:00:00:12"),
      );
      await etcd.put(
        `${DIR}10.5.13.0-24`,
        flanneldValue("10.0.0.13", "0a:00:00:00:00:13"),
      );
      await w.waitFor("added 10.5.13.0/24");
      // The watcher is cut off while a key goes, another comes, and the
      // history of both is compacted away.
      proxy.pause();
      await etcd.delete(`${DIR}10.5.12.0-24`);
      await etcd.put(
        `${DIR}10.5.14.0-24`,
        flanneldValue("10.0.0.14", "0a:00:00:00:00:14"),
      );
      await etcd.compact();
      proxy.resume();
      await w.waitFor("removed 10.5.12.0/24");
      await w.waitFor("added 10.5.14.0/24");
      assert.deepEqual(w.summary, [
        "added 10.5.12.0/24",
        "added 10.5.13.0/24",
        "removed 10.5.12.0/24",
        "added 10.5.14.0/24",
      ]);
      assert.equal(metrics.relists.get(), relists + 1);
      assert.ok(
        logs.lines.some((l) => l.includes("fell behind etcd compaction")),
      );
    } finally {
      proxy.close();
      m.close();
    }
  },
);

await etcdTest("our own key is never reported as a peer", async (etcd) => {
  await etcd.put(CONFIG_KEY, NET_CONF);
  await etcd.put(
    `${DIR}10.5.20.0-24`,
    flanneldValue("10.0.0.20", "0a:00:00:00:00:20"),
  );
  const m = manager(etcd);
  const own = await m.acquireLease(
    attrs("10.0.0.1"),
    new AbortController().signal,
  );
  await using w = new Watcher(m);
  await w.waitFor("added 10.5.20.0/24");
  await etcd.put(
    `${DIR}10.5.21.0-24`,
    flanneldValue("10.0.0.21", "0a:00:00:00:00:21"),
  );
  await w.waitFor("added 10.5.21.0/24");
  assert.ok(!w.events.some((e) => e.lease.key === own.key));
  m.close();
});

await etcdTest(
  "a silent watch is reconnected by the idle watchdog and still delivers",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    using logs = captureLogs();
    const restarts = metrics.watchRestarts.get();
    // etcd's progress notifications come every 10 min by default: far
    // longer than this watchdog.
    const m = manager(etcd, { watchIdleTimeoutMs: 700 });
    await using w = new Watcher(m);
    await until(
      "a watchdog reconnect",
      () =>
        logs.lines.some((l) => l.includes("received nothing for 700 ms")) ||
        undefined,
    );
    assert.ok(metrics.watchRestarts.get() > restarts);
    await etcd.put(
      `${DIR}10.5.40.0-24`,
      flanneldValue("10.0.0.40", "0a:00:00:00:00:40"),
    );
    await w.waitFor("added 10.5.40.0/24");
    m.close();
  },
);

await etcdTest(
  "progress notifications keep an idle watch open",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    using logs = captureLogs();
    const m = manager(etcd, { watchIdleTimeoutMs: 1500 });
    await using w = new Watcher(m);
    await new Promise((r) => setTimeout(r, 4000));
    assert.ok(
      !logs.lines.some((l) => l.includes("received nothing")),
      logs.lines.join("\n"),
    );
    await etcd.put(
      `${DIR}10.5.41.0-24`,
      flanneldValue("10.0.0.41", "0a:00:00:00:00:41"),
    );
    await w.waitFor("added 10.5.41.0/24");
    m.close();
  },
  { args: ["--experimental-watch-progress-notify-interval=500ms"] },
);

await etcdTest(
  "thirty 1 MB values under subnets/ are refused one by one; the listing completes and the real peers are delivered",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    await etcd.put(
      `${DIR}10.5.2.0-24`,
      flanneldValue("10.0.0.2", "0a:00:00:00:00:02"),
    );
    const pad = "x".repeat(1 << 20);
    for (let i = 100; i < 130; i++) {
      await etcd.put(
        `${DIR}10.5.${i}.0-24`,
        `{"PublicIP":"10.0.0.9","P":"${pad}"}`,
      );
    }
    await etcd.put(
      `${DIR}10.5.200.0-24`,
      flanneldValue("10.0.0.3", "0a:00:00:00:00:03"),
    );
    const before = metrics.peerObjectsOversized.get();
    const m = manager(etcd);
    await using w = new Watcher(m);
    await w.waitFor("added 10.5.200.0/24");
    assert.deepEqual(w.summary.sort(), [
      "added 10.5.2.0/24",
      "added 10.5.200.0/24",
    ]);
    assert.equal(metrics.peerObjectsOversized.get() - before, 30);
    // Through the watch: one more large write is refused on its own too.
    await etcd.put(`${DIR}10.5.130.0-24`, `{"P":"${pad}"}`);
    await etcd.put(
      `${DIR}10.5.3.0-24`,
      flanneldValue("10.0.0.4", "0a:00:00:00:00:04"),
    );
    await w.waitFor("added 10.5.3.0/24");
    assert.equal(metrics.peerObjectsOversized.get() - before, 31);
    m.close();
  },
);

// --- keeping the lease ---------------------------------------------------------

await etcdTest(
  "renewal before expiry keeps the key past its first TTL",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    using logs = captureLogs();
    // TTL 3 s, margin 2 s: renewed about every second.
    const m = manager(etcd, { leaseTtlSeconds: 3, renewMarginMinutes: 2 / 60 });
    const ac = new AbortController();
    const lease = await m.acquireLease(attrs("10.0.0.1"), ac.signal);
    const first = (await etcd.get(lease.key))!;
    assert.ok(await etcd.leaseTtl(first.lease) <= 3);
    const keeping = settle(m.keepLease(lease, ac.signal));
    await new Promise((r) => setTimeout(r, 4500));
    const now = await etcd.get(lease.key);
    assert.ok(now, "key still present after its original TTL");
    assert.notEqual(now.lease, first.lease);
    assert.equal(await etcd.leaseTtl(first.lease), -1);
    assert.ok(await etcd.leaseTtl(now.lease) > 0);
    assert.equal(now.value, first.value);
    assert.ok(
      logs.lines.some((l) => l.includes("Lease renewed, new expiration")),
    );
    ac.abort();
    assert.equal(await keeping, undefined); // resolves on abort
    m.close();
  },
);

await etcdTest(
  "a failed renewal is logged and retried until etcd is back",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    using logs = captureLogs();
    const m = manager(etcd, {
      leaseTtlSeconds: 30,
      renewMarginMinutes: 29 / 60, // renew about a second after acquiring
      renewRetryMs: 300,
      requestTimeoutMs: 500,
    });
    const ac = new AbortController();
    const lease = await m.acquireLease(attrs("10.0.0.1"), ac.signal);
    const first = (await etcd.get(lease.key))!;
    const keeping = settle(m.keepLease(lease, ac.signal));
    await etcd.stop();
    await until(
      "a renewal error",
      () =>
        logs.lines.some((l) =>
          l.startsWith("E") &&
          l.includes("Error renewing lease (trying again in 300ms)")
        ) || undefined,
    );
    await etcd.start();
    await until(
      "a renewal",
      () => logs.lines.some((l) => l.includes("Lease renewed")) || undefined,
    );
    const now = (await etcd.get(lease.key))!;
    assert.notEqual(now.lease, first.lease);
    assert.ok(await etcd.leaseTtl(now.lease) > 25);
    ac.abort();
    assert.equal(await keeping, undefined);
    m.close();
  },
);

await etcdTest(
  "keepLease rejects with 'Lease has been revoked' when our key is deleted",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    const m = manager(etcd);
    const ac = new AbortController();
    const lease = await m.acquireLease(attrs("10.0.0.1"), ac.signal);
    const keeping = settle(m.keepLease(lease, ac.signal));
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(await etcd.delete(lease.key), 1);
    const err = await keeping;
    assert.ok(err instanceof LeaseRevokedError, String(err));
    assert.equal(
      err.message,
      `Lease has been revoked: etcd key "${lease.key}" was deleted`,
    );
    m.close();
  },
);

await etcdTest(
  "keepLease notices our key's deletion even when compaction hid the event",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    using _logs = captureLogs();
    const proxy = new TcpProxy(portOf(etcd.endpoint));
    const m = manager(etcd, { endpoints: [proxy.endpoint] });
    try {
      const ac = new AbortController();
      const lease = await m.acquireLease(attrs("10.0.0.1"), ac.signal);
      const keeping = settle(m.keepLease(lease, ac.signal));
      await new Promise((r) => setTimeout(r, 300));
      proxy.pause();
      await etcd.delete(lease.key);
      await etcd.put(
        `${DIR}10.5.50.0-24`,
        flanneldValue("10.0.0.50", "0a:00:00:00:00:50"),
      );
      await etcd.compact();
      proxy.resume();
      const err = await keeping;
      assert.ok(err instanceof LeaseRevokedError, String(err));
      assert.match(err.message, /^Lease has been revoked/);
    } finally {
      proxy.close();
      m.close();
    }
  },
);

// --- endpoints, auth, TLS ------------------------------------------------------

await etcdTest(
  "with the first endpoint dead, the second one is used",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    const dead = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const deadUrl = `http://127.0.0.1:${(dead.addr as Deno.NetAddr).port}`;
    dead.close();
    const m = manager(etcd, { endpoints: [deadUrl, etcd.endpoint] });
    const config = await m.getNetworkConfig(new AbortController().signal);
    assert.equal(config.subnetLen, 24);
    const lease = await m.acquireLease(
      attrs("10.0.0.1"),
      new AbortController().signal,
    );
    assert.ok(await etcd.get(lease.key));
    m.close();

    // Every endpoint dead: the error names each with its cause.
    const dead2 = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const deadUrl2 = `http://127.0.0.1:${(dead2.addr as Deno.NetAddr).port}`;
    dead2.close();
    const c = new EtcdClient({
      endpoints: [deadUrl, deadUrl2],
      requestTimeoutMs: 1000,
    });
    const err = await c.get(CONFIG_KEY).then(
      () => undefined,
      (e) => e as Error,
    );
    assert.ok(err);
    assert.match(err.message, new RegExp(`"${deadUrl}": .*refused`, "i"));
    assert.ok(err.message.includes(`"${deadUrl2}"`), err.message);
    c.close();
  },
);

await etcdTest(
  "username/password: logs in, and again after token expiry or an etcd restart",
  async (etcd) => {
    await etcd.put(CONFIG_KEY, NET_CONF);
    await etcd.request("/v3/auth/user/add", {
      name: "root",
      password: "s3cret",
    });
    await etcd.request("/v3/auth/user/grant", { user: "root", role: "root" });
    await etcd.request("/v3/auth/enable", {});
    using _logs = captureLogs();

    const anonymous = new EtcdClient({ endpoints: [etcd.endpoint] });
    await assert.rejects(
      anonymous.get(CONFIG_KEY),
      /user name is empty|permission denied/,
    );
    anonymous.close();

    // Over plain http only because a flag says so.
    const m = manager(etcd, {
      username: "root",
      password: "s3cret",
      allowCredentialsOverHttp: true,
    });
    const ac = new AbortController();
    await m.getNetworkConfig(ac.signal);
    await new Promise((r) => setTimeout(r, 2500)); // token TTL is 1 s
    const lease = await m.acquireLease(attrs("10.0.0.1"), ac.signal);
    await new Promise((r) => setTimeout(r, 2500));
    const w = new Watcher(m); // the watch stream authenticates too
    const peer = `${DIR}10.5.30.0-24`;
    await m.client.put(peer, flanneldValue("10.0.0.30", "0a:00:00:00:00:30"));
    await w.waitFor("added 10.5.30.0/24");
    // A restart forgets every token: the watch reconnects with a stale one,
    // which etcd answers by cancelling it, and must log in again.
    await etcd.restart();
    // Written through another client, so that only the watch can refresh
    // the manager's token.
    const other = new EtcdClient({
      endpoints: [etcd.endpoint],
      username: "root",
      password: "s3cret",
      allowCredentialsOverHttp: true,
    });
    await other.put(
      `${DIR}10.5.31.0-24`,
      flanneldValue("10.0.0.31", "0a:00:00:00:00:31"),
    );
    other.close();
    await w.waitFor("added 10.5.31.0/24");
    await w[Symbol.asyncDispose]();
    assert.ok((await m.client.get(lease.key)).kv);
    m.close();
  },
  { args: ["--auth-token-ttl=1"] },
);

let tlsDir = "";
await etcdTest("TLS with a client certificate", async (etcd) => {
  try {
    await etcd.put(CONFIG_KEY, NET_CONF);
    const m = manager(etcd, {
      tls: {
        caFile: `${tlsDir}/ca.pem`,
        certFile: `${tlsDir}/client.pem`,
        keyFile: `${tlsDir}/client-key.pem`,
      },
    });
    const config = await m.getNetworkConfig(new AbortController().signal);
    assert.equal(config.subnetLen, 24);
    const lease = await m.acquireLease(
      attrs("10.0.0.1"),
      new AbortController().signal,
    );
    assert.ok(await etcd.get(lease.key));
    m.close();

    // Trusting the CA but presenting no certificate is refused.
    const noCert = new EtcdClient({
      endpoints: [etcd.endpoint],
      tls: { caFile: `${tlsDir}/ca.pem` },
      requestTimeoutMs: 3000,
    });
    const err = await noCert.get(CONFIG_KEY).then(
      () => undefined,
      (e) => e as Error,
    );
    assert.ok(err, "refused without a client certificate");
    assert.ok(err.message.includes(etcd.endpoint), err.message);
    noCert.close();
  } finally {
    await Deno.remove(tlsDir, { recursive: true });
  }
}, async () => {
  tlsDir = await Deno.makeTempDir({ prefix: "weft-etcd-tls-" });
  await makeCerts(tlsDir);
  return {
    tls: {
      caFile: `${tlsDir}/ca.pem`,
      certFile: `${tlsDir}/server.pem`,
      keyFile: `${tlsDir}/server-key.pem`,
    },
  };
});

/** A CA, a server certificate for 127.0.0.1 and a client certificate. */
async function makeCerts(dir: string): Promise<void> {
  const o = (...args: string[]) => sh(["openssl", ...args]);
  await o(
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-days",
    "1",
    "-subj",
    "/CN=weft-test-ca",
    "-keyout",
    `${dir}/ca-key.pem`,
    "-out",
    `${dir}/ca.pem`,
  );
  for (
    const [name, ext] of [
      [
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth",
      ],
      ["client", "extendedKeyUsage=clientAuth"],
    ] as const
  ) {
    await Deno.writeTextFile(`${dir}/${name}.ext`, `${ext}\n`);
    await o(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      `/CN=weft-${name}`,
      "-keyout",
      `${dir}/${name}-key.pem`,
      "-out",
      `${dir}/${name}.csr`,
    );
    await o(
      "x509",
      "-req",
      "-in",
      `${dir}/${name}.csr`,
      "-CA",
      `${dir}/ca.pem`,
      "-CAkey",
      `${dir}/ca-key.pem`,
      "-CAcreateserial",
      "-days",
      "1",
      "-extfile",
      `${dir}/${name}.ext`,
      "-out",
      `${dir}/${name}.pem`,
    );
  }
}
