import assert from "node:assert/strict";
import {
  Changes,
  FakeApi,
  json,
  node,
  status,
  WatchStream,
} from "./_fake_api.ts";
import type { Handler, SeenRequest } from "./_fake_api.ts";
import { KubeSubnetManager } from "./manager.ts";
import type { LeaseEvent } from "../lease.ts";
import { setLogSink } from "../../lib/log.ts";
import { metrics } from "../../lib/metrics.ts";

/** Log lines, requests and handler batches all wake `waitFor`. */
const changes = new Changes();
const lines: string[] = [];
setLogSink((l) => {
  lines.push(l);
  changes.notify();
});

const NET_CONF = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}';
const attrs = {
  backendType: "vxlan",
  publicIP: "192.0.2.10",
  backendData: { VNI: 1, VtepMAC: "0a:58:0a:f4:00:01" },
};

function manager(api: FakeApi, extra: Record<string, unknown> = {}) {
  return new KubeSubnetManager({
    client: api.client(),
    nodeName: "me",
    netConfPath: "/etc/kube-flannel/net-conf.json",
    readTextFile: () => Promise.resolve(NET_CONF),
    podCidrIntervalMs: 20,
    podCidrTimeoutMs: 1000,
    ...extra,
  });
}

function bareNode(podCIDR?: string) {
  return {
    kind: "Node",
    metadata: { name: "me", annotations: { "other/x": "y" } },
    spec: podCIDR ? { podCIDR, podCIDRs: [podCIDR] } : {},
    status: {
      conditions: [{ type: "Ready", status: "True", reason: "KubeletReady" }],
    },
  };
}

const signal = new AbortController().signal;

/** A fake API server whose requests wake `waitFor`. */
function fakeApi(handler: Handler): FakeApi {
  return new FakeApi(handler, changes);
}

/** Resolves once `pred` holds (see `changes`); fails after `ms`. */
function waitFor(pred: () => boolean, ms = 3000): Promise<void> {
  return changes.until(pred, ms);
}

Deno.test("acquireLease() waits for the pod CIDR, then patches annotations and condition through /status", async () => {
  let gets = 0;
  const api = fakeApi((r) => {
    if (r.method === "GET") {
      return json(200, bareNode(++gets < 3 ? undefined : "10.244.4.0/24"));
    }
    return json(200, bareNode("10.244.4.0/24"));
  });
  const lease = await manager(api).acquireLease(attrs, signal);
  assert.deepEqual(lease, { key: "me", subnet: "10.244.4.0/24", attrs });
  assert.equal(gets, 3);
  const patch = api.requests.find((r) => r.method === "PATCH")!;
  assert.equal(patch.url.pathname, "/api/v1/nodes/me/status");
  assert.equal(
    patch.headers.get("Content-Type"),
    "application/strategic-merge-patch+json",
  );
  const body = JSON.parse(patch.body!);
  assert.deepEqual(body.metadata, {
    annotations: {
      "flannel.alpha.coreos.com/backend-type": "vxlan",
      "flannel.alpha.coreos.com/backend-data":
        '{"VNI":1,"VtepMAC":"0a:58:0a:f4:00:01"}',
      "flannel.alpha.coreos.com/public-ip": "192.0.2.10",
      "flannel.alpha.coreos.com/kube-subnet-manager": "true",
    },
  });
  const [cond] = body.status.conditions;
  assert.equal(cond.type, "NetworkUnavailable");
  assert.equal(cond.status, "False");
  assert.equal(cond.reason, "FlannelIsUp");
  assert.equal(cond.message, "Flannel is running on this node");
  assert.match(cond.lastTransitionTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
});

Deno.test("acquireLease() writes nothing when the node already carries everything", async () => {
  const n = node("me", "3", "10.244.4.0/24", "192.0.2.10", "0a:58:0a:f4:00:01");
  (n.status as Record<string, unknown>).conditions = [{
    type: "NetworkUnavailable",
    status: "False",
    reason: "FlannelIsUp",
    message: "Flannel is running on this node",
  }];
  const api = fakeApi(() => json(200, n));
  await manager(api).acquireLease(attrs, signal);
  assert.deepEqual(api.requests.map((r) => r.method), ["GET"]);
  // Without --set-node-network-unavailable the condition is left alone.
  (n.status as Record<string, unknown>).conditions = [];
  const api2 = fakeApi(() => json(200, n));
  await manager(api2, { setNodeNetworkUnavailable: false }).acquireLease(
    attrs,
    signal,
  );
  assert.deepEqual(api2.requests.map((r) => r.method), ["GET"]);
});

Deno.test("acquireLease() fails with flanneld's messages", async () => {
  const never = fakeApi(() => json(200, bareNode()));
  await assert.rejects(
    manager(never, { podCidrTimeoutMs: 100 }).acquireLease(attrs, signal),
    { message: 'node "me" pod cidr not assigned' },
  );
  const outside = fakeApi(() => json(200, bareNode("10.10.0.0/24")));
  await assert.rejects(manager(outside).acquireLease(attrs, signal), {
    message:
      'subnet "10.244.0.0/16" specified in the flannel net config doesn\'t contain "10.10.0.0/24" PodCIDR of the "me" node',
  });
  const forbidden = fakeApi(() =>
    status(403, "Forbidden", 'nodes "me" is forbidden')
  );
  await assert.rejects(
    manager(forbidden).acquireLease(attrs, signal),
    /failed to get node "me".*403/,
  );
  const badConf = fakeApi(() => json(200, bareNode("10.244.4.0/24")));
  await assert.rejects(
    manager(badConf, { readTextFile: () => Promise.resolve("{") })
      .acquireLease(attrs, signal),
    /error parsing subnet config "\/etc\/kube-flannel\/net-conf.json": Cannot parse network config JSON/,
  );
});

Deno.test("watchLeases() turns nodes into lease events, skipping unmanaged nodes and ourselves", async () => {
  const streams: WatchStream[] = [];
  const unmanaged = {
    metadata: { name: "fresh", resourceVersion: "4" },
    spec: { podCIDR: "10.244.9.0/24" },
  };
  const api = fakeApi((r: SeenRequest) => {
    if (r.url.pathname === "/api/v1/nodes/me") {
      return json(200, node("me", "3", "10.244.4.0/24", "192.0.2.10"));
    }
    if (r.method === "PATCH") return json(200, {});
    if (r.url.searchParams.get("watch") !== "1") {
      return json(200, {
        metadata: { resourceVersion: "5" },
        items: [
          node("me", "3", "10.244.4.0/24", "192.0.2.10"),
          node("a", "4", "10.244.1.0/24", "192.0.2.1"),
          unmanaged,
        ],
      });
    }
    const s = new WatchStream();
    streams.push(s);
    return new Response(s.body, { status: 200 });
  });
  const m = manager(api);
  await m.acquireLease(attrs, signal);
  const batches: LeaseEvent[][] = [];
  const ctl = new AbortController();
  lines.length = 0;
  const partial: boolean[] = [];
  const done = m.watchLeases((evs, p) => {
    batches.push(evs);
    changes.notify();
    partial.push(p ?? false);
  }, ctl.signal);
  await waitFor(() => streams.length > 0);
  // The listing's peer is handed over as it arrives (partial), then the
  // complete listing, with nothing left to add, marks the set complete.
  assert.deepEqual(
    batches.map((b) =>
      b.map((e) => `${e.type} ${e.lease.key} ${e.lease.subnet}`)
    ),
    [["added a 10.244.1.0/24"], []],
  );
  assert.deepEqual(partial, [true, false]);
  batches.shift();
  assert.ok(
    lines.some((l) =>
      l.includes(
        'Skipping node "fresh": not annotated flannel.alpha.coreos.com/kube-subnet-manager=true',
      )
    ),
    lines.join("\n"),
  );
  streams[0]!.event("MODIFIED", node("a", "6", "10.244.1.0/24", "192.0.2.99"));
  streams[0]!.event("MODIFIED", node("a", "7", "10.244.1.0/24", "192.0.2.99"));
  streams[0]!.event("ADDED", node("b", "8", "10.244.2.0/24", "192.0.2.2"));
  streams[0]!.event("DELETED", node("a", "9", "10.244.1.0/24", "192.0.2.99"));
  // Our own pod CIDR moving is reported, not followed.
  streams[0]!.event(
    "MODIFIED",
    node("me", "10", "10.244.8.0/24", "192.0.2.10"),
  );
  // The last event is our own: once it is logged, all before it are in.
  await waitFor(() =>
    lines.some((l) => l.includes('Pod CIDR of node "me" changed'))
  );
  assert.deepEqual(
    batches.slice(1).map((b) =>
      b.map((e) => `${e.type} ${e.lease.key} ${e.lease.attrs.publicIP}`)
    ),
    [
      ["removed a 192.0.2.1", "added a 192.0.2.99"],
      ["added b 192.0.2.2"],
      ["removed a 192.0.2.99"],
    ],
  );
  assert.ok(
    lines.some((l) =>
      /E.*Pod CIDR of node "me" changed from "10.244.4.0\/24" to "10.244.8.0\/24"/
        .test(l)
    ),
  );
  ctl.abort();
  await done;
  await m.keepLease({ key: "me", attrs }, ctl.signal);
});

Deno.test("watchLeases() delivers the first listing even when it has no peer", async () => {
  const streams: WatchStream[] = [];
  const api = fakeApi((r: SeenRequest) => {
    if (r.url.searchParams.get("watch") !== "1") {
      return json(200, {
        metadata: { resourceVersion: "5" },
        items: [node("me", "3", "10.244.4.0/24", "192.0.2.10")],
      });
    }
    const s = new WatchStream();
    streams.push(s);
    return new Response(s.body, { status: 200 });
  });
  const m = manager(api);
  const batches: LeaseEvent[][] = [];
  const ctl = new AbortController();
  const done = m.watchLeases((evs) => {
    batches.push(evs);
    changes.notify();
  }, ctl.signal);
  await waitFor(() => streams.length > 0);
  assert.deepEqual(batches.map((b) => b.length), [0]);
  // A change that makes no event is not delivered.
  streams[0]!.event("MODIFIED", node("me", "6", "10.244.4.0/24", "192.0.2.10"));
  streams[0]!.event("ADDED", node("b", "8", "10.244.2.0/24", "192.0.2.2"));
  await waitFor(() => batches.length === 2);
  assert.deepEqual(batches[1]!.map((e) => `${e.type} ${e.lease.key}`), [
    "added b",
  ]);
  ctl.abort();
  await done;
});

Deno.test("getNodePublicIPOverride() reads node-public-ip(v6) from our node", async () => {
  const n = bareNode("10.244.4.0/24");
  (n.metadata.annotations as Record<string, string>)[
    "flannel.alpha.coreos.com/node-public-ip"
  ] = "203.0.113.5";
  const api = fakeApi(() => json(200, n));
  assert.deepEqual(await manager(api).getNodePublicIPOverride(), {
    ipv4: "203.0.113.5",
  });
});

Deno.test("the constructor refuses an invalid annotation prefix", () => {
  assert.throws(
    () => manager(fakeApi(() => json(200, {})), { annotationPrefix: "a/b/c" }),
    /at most one slash/,
  );
});

/** `n` with a managedFields entry that wrote its annotations at `time`. */
function claimedAt(n: Record<string, unknown>, time: string, created: string) {
  const meta = n.metadata as Record<string, unknown>;
  const annotations = Object.keys(meta.annotations as object);
  return {
    ...n,
    metadata: {
      ...meta,
      creationTimestamp: created,
      managedFields: [{
        manager: "flanneld",
        operation: "Update",
        subresource: "status",
        time,
        fieldsType: "FieldsV1",
        fieldsV1: {
          "f:metadata": {
            "f:annotations": Object.fromEntries(
              annotations.map((k) => [`f:${k}`, {}]),
            ),
          },
        },
      }],
    },
  };
}

Deno.test("watchLeases(): an older Node re-pointing its MAC to a newer Node's loses, on a running manager and on one started later", async () => {
  const MAC = "0a:58:0a:f4:00:99";
  const victim = claimedAt(
    node("victim", "4", "10.244.2.0/24", "192.0.2.2", MAC),
    "2026-12-06T10:00:05Z",
    "2026-12-06T10:00:04Z",
  );
  // "a-old" is the older Node (and sorts first); its copy comes later.
  const before = claimedAt(
    node("a-old", "3", "10.244.1.0/24", "192.0.2.1"),
    "2026-12-06T09:00:01Z",
    "2026-12-06T09:00:00Z",
  );
  const hostile = claimedAt(
    node("a-old", "6", "10.244.1.0/24", "192.0.2.1", MAC),
    "2026-12-06T10:30:00Z",
    "2026-12-06T09:00:00Z",
  );
  const me = node("me", "2", "10.244.4.0/24", "192.0.2.10");
  let items = [me, before, victim];
  const streams: WatchStream[] = [];
  const api = fakeApi((r: SeenRequest) => {
    if (r.url.searchParams.get("watch") !== "1") {
      return json(200, { metadata: { resourceVersion: "7" }, items });
    }
    const s = new WatchStream();
    streams.push(s);
    return new Response(s.body, { status: 200 });
  });
  const peers = async (m: KubeSubnetManager, change?: () => void) => {
    const seen = new Map<string, string>();
    const ctl = new AbortController();
    const n = streams.length;
    const done = m.watchLeases((evs) => {
      for (const e of evs) {
        if (e.type === "added") seen.set(e.lease.key, e.lease.subnet!);
        else seen.delete(e.lease.key);
      }
      changes.notify();
    }, ctl.signal);
    await waitFor(() => streams.length > n);
    if (change) {
      lines.length = 0;
      change();
      await waitFor(() => lines.some((l) => l.includes('"a-old"')));
    }
    ctl.abort();
    await done;
    return [...seen.keys()].sort();
  };
  // Running: both peers, then the older Node turns hostile.
  const running = await peers(
    manager(api),
    () => streams.at(-1)!.event("MODIFIED", hostile),
  );
  assert.deepEqual(running, ["victim"]);
  assert.ok(
    lines.some((l) =>
      /Skipping node "a-old": VtepMAC "0a:58:0a:f4:00:99" is already used by node "victim"/
        .test(l)
    ),
    lines.join("\n"),
  );
  // Started later, listing both at once: the same verdict.
  items = [me, hostile, victim];
  assert.deepEqual(await peers(manager(api)), ["victim"]);
});

Deno.test("watchLeases() refuses a node whose flannel annotation is oversized, on its own (logged once, counted once per write), and no node string forges or floods a log line", async () => {
  const streams: WatchStream[] = [];
  const withAnnotation = (
    name: string,
    rv: string,
    subnet: string,
    ip: string,
    key: string,
    value: string,
  ) => {
    const n = node(name, rv, subnet, ip);
    const meta = n.metadata as { annotations: Record<string, string> };
    meta.annotations[key] = value;
    return n;
  };
  const huge = `{"VNI":1,"VtepMAC":"0a:00:00:00:00:09","pad":"${
    "p".repeat(200 << 10)
  }"}`;
  const api = fakeApi((r: SeenRequest) => {
    if (r.url.searchParams.get("watch") !== "1") {
      return json(200, {
        metadata: { resourceVersion: "5" },
        items: [
          node("me", "3", "10.244.4.0/24", "192.0.2.10"),
          node("a", "4", "10.244.1.0/24", "192.0.2.1"),
          withAnnotation(
            "big",
            "4",
            "10.244.5.0/24",
            "192.0.2.5",
            "flannel.alpha.coreos.com/backend-data",
            huge,
          ),
          withAnnotation(
            "mac",
            "4",
            "10.244.6.0/24",
            "192.0.2.6",
            "flannel.alpha.coreos.com/backend-data",
            '{"VNI":1,"VtepMAC":"0a:00:00:00:00:06\\nE1206 forged-mac"}',
          ),
        ],
      });
    }
    const s = new WatchStream();
    streams.push(s);
    return new Response(s.body, { status: 200 });
  });
  const m = manager(api);
  const before = metrics.peerObjectsOversized.get();
  const batches: LeaseEvent[][] = [];
  const ctl = new AbortController();
  const from = lines.length;
  const done = m.watchLeases((evs) => {
    batches.push(evs);
    changes.notify();
  }, ctl.signal);
  await waitFor(() => streams.length > 0);
  assert.deepEqual(
    batches.flat().map((e) => `${e.type} ${e.lease.key}`),
    ["added a"],
  );
  assert.equal(metrics.peerObjectsOversized.get() - before, 1);
  // The same node again (an unrelated change): no new count, no new line.
  streams[0]!.event(
    "MODIFIED",
    withAnnotation(
      "big",
      "6",
      "10.244.5.0/24",
      "192.0.2.5",
      "flannel.alpha.coreos.com/backend-data",
      huge,
    ),
  );
  streams[0]!.event("ADDED", node("b", "8", "10.244.2.0/24", "192.0.2.2"));
  await waitFor(() => batches.flat().length === 2);
  assert.equal(metrics.peerObjectsOversized.get() - before, 1);
  ctl.abort();
  await done;
  const mine = lines.slice(from);
  const big = mine.filter((l) => l.includes('"big"'));
  assert.deepEqual(big.length, 1, big.join("\n"));
  assert.match(
    big[0]!,
    /Skipping node "big": annotation flannel\.alpha\.coreos\.com\/backend-data of 204848 bytes refused for its size \(at most 65536\)$/,
  );
  for (const l of mine) {
    assert.ok(!l.includes("\n") && l.length < 1000, l.slice(0, 200));
  }
  assert.ok(
    mine.some((l) =>
      l.includes(
        'Cannot parse MAC address "0a:00:00:00:00:06\\nE1206 forged-mac"',
      )
    ),
    mine.join("\n"),
  );
});
