import assert from "node:assert/strict";
import {
  Changes,
  FakeApi,
  json,
  node,
  status,
  WatchStream,
} from "./_fake_api.ts";
import type { SeenRequest } from "./_fake_api.ts";
import { annotationKeys, slimmer, type SlimNode } from "./node.ts";
import {
  type NodeSink,
  NodeWatcher,
  type NodeWatcherOptions,
} from "./watch.ts";
import { unwrap } from "../../lib/result.ts";
import { setLogSink } from "../../lib/log.ts";
import { metrics } from "../../lib/metrics.ts";

setLogSink(() => {});
const slim = slimmer(unwrap(annotationKeys()));

/**
 * Records what the watcher tells its sink. `until` waits on the sink's
 * calls and on the fake server's requests (`changes`), not on a timer.
 */
class Recorder implements NodeSink {
  readonly log: string[] = [];
  listed?: (nodes: SlimNode[]) => void;
  readonly state = new Map<string, SlimNode>();
  changes = new Changes();

  /** Waits on `api`'s requests as well as on this sink. */
  watching(api: FakeApi): this {
    this.changes = api.changes;
    return this;
  }

  sync(nodes: Map<string, SlimNode>): void {
    this.log.push(`sync ${[...nodes.keys()].sort().join(",")}`);
    this.state.clear();
    for (const [k, v] of nodes) this.state.set(k, v);
    this.changes.notify();
  }
  upsert(n: SlimNode): void {
    this.log.push(`upsert ${n.name}`);
    this.state.set(n.name, n);
    this.changes.notify();
  }
  remove(name: string): void {
    this.log.push(`remove ${name}`);
    this.state.delete(name);
    this.changes.notify();
  }
  /** Resolves once `pred` holds; fails the test after `ms`. */
  until(pred: () => boolean, ms = 3000): Promise<void> {
    return this.changes.until(pred, ms, () => `log: ${this.log.join(" | ")}`);
  }
}

function isWatch(r: SeenRequest): boolean {
  return r.url.searchParams.get("watch") === "1";
}

function list(items: unknown[], rv: string, cont?: string): Response {
  return json(200, {
    kind: "NodeList",
    metadata: { resourceVersion: rv, ...(cont && { continue: cont }) },
    items,
  });
}

const fast = { backoff: { initialMs: 5, maxMs: 20 } };

Deno.test("list() follows continue tokens with limit=500 and keeps slim nodes", async () => {
  const api = new FakeApi((r) =>
    r.url.searchParams.get("continue") === "p2"
      ? list([node("c", "9", "10.244.3.0/24", "192.0.2.3")], "10")
      : list(
        [
          node("a", "5", "10.244.1.0/24", "192.0.2.1"),
          node("b", "6", "10.244.2.0/24", "192.0.2.2"),
        ],
        "10",
        "p2",
      )
  );
  const w = new NodeWatcher(api.client(), slim);
  const { nodes, resourceVersion } = await w.list(new AbortController().signal);
  assert.deepEqual([...nodes.keys()], ["a", "b", "c"]);
  assert.equal(resourceVersion, "10");
  assert.deepEqual(nodes.get("c")!.podCIDRs, ["10.244.3.0/24"]);
  assert.equal(api.requests.length, 2);
  // The first page comes from the watch cache; a continue token carries
  // its version, so later pages name none.
  assert.equal(api.requests[0]!.url.search, "?limit=500&resourceVersion=0");
  assert.equal(api.requests[1]!.url.search, "?limit=500&continue=p2");
});

Deno.test("list() starts over as a quorum read when a continue token has expired (410)", async () => {
  let expired = true;
  const api = new FakeApi((r) => {
    const cont = r.url.searchParams.get("continue");
    if (cont === "old" && expired) {
      expired = false;
      return status(
        410,
        "Expired",
        "The provided continue parameter is too old",
      );
    }
    return cont
      ? list([node("b", "6", "10.244.2.0/24", "192.0.2.2")], "20")
      : list([node("a", "5", "10.244.1.0/24", "192.0.2.1")], "20", "old");
  });
  const w = new NodeWatcher(api.client(), slim, { pageSize: 1 });
  const { nodes } = await w.list(new AbortController().signal);
  assert.deepEqual([...nodes.keys()], ["a", "b"]);
  assert.deepEqual(
    api.requests.map((r) => r.url.search),
    [
      "?limit=1&resourceVersion=0",
      "?limit=1&continue=old",
      "?limit=1",
      "?limit=1&continue=old",
    ],
  );
  // A quorum read is a fallback, not a habit: the next list asks the cache.
  await w.list(new AbortController().signal);
  assert.equal(
    api.requests.at(-2)!.url.search,
    "?limit=1&resourceVersion=0",
  );
});

Deno.test("list() falls back to a quorum read when the cache refuses resourceVersion=0 (410)", async () => {
  const api = new FakeApi((r) =>
    r.url.searchParams.has("resourceVersion")
      ? status(410, "Gone", "resource version 0 is not served")
      : list([node("a", "5", "10.244.1.0/24", "192.0.2.1")], "20")
  );
  const w = new NodeWatcher(api.client(), slim);
  const { nodes } = await w.list(new AbortController().signal);
  assert.deepEqual([...nodes.keys()], ["a"]);
  assert.deepEqual(api.requests.map((r) => r.url.search), [
    "?limit=500&resourceVersion=0",
    "?limit=500",
  ]);
});

Deno.test("run() hands the first listing's nodes over as they arrive, then the complete set", async () => {
  const api = new FakeApi((r) =>
    isWatch(r)
      ? new Response(new WatchStream().body, { status: 200 })
      : r.url.searchParams.get("continue") === "p2"
      ? list([node("c", "9", "10.244.3.0/24", "192.0.2.3")], "10")
      : list(
        [
          node("a", "5", "10.244.1.0/24", "192.0.2.1"),
          node("b", "6", "10.244.2.0/24", "192.0.2.2"),
        ],
        "10",
        "p2",
      )
  );
  const rec = new Recorder().watching(api);
  const seen: string[] = [];
  rec.listed = (nodes: SlimNode[]) => {
    seen.push(nodes.map((n) => n.name).join(","));
    rec.log.push(`listed ${nodes.map((n) => n.name).join(",")}`);
  };
  const ctl = new AbortController();
  const done = new NodeWatcher(api.client(), slim, fast).run(rec, ctl.signal);
  await rec.until(() => rec.log.includes("sync a,b,c"));
  // Every node was handed over before the complete set; pages in order.
  assert.equal(rec.log.at(-1), "sync a,b,c");
  assert.ok(rec.log.slice(0, -1).every((l) => l.startsWith("listed ")));
  assert.deepEqual(seen.join(",").split(","), ["a", "b", "c"]);
  ctl.abort();
  await done;
});

Deno.test("run() watches from the list's version and resumes from the last event or bookmark", async () => {
  const streams: WatchStream[] = [];
  const api = new FakeApi((r) => {
    if (!isWatch(r)) {
      return list([node("a", "5", "10.244.1.0/24", "192.0.2.1")], "7");
    }
    const s = new WatchStream();
    streams.push(s);
    return new Response(s.body, { status: 200 });
  });
  const rec = new Recorder().watching(api);
  const ctl = new AbortController();
  const w = new NodeWatcher(api.client(), slim, fast);
  const done = w.run(rec, ctl.signal);
  await rec.until(() => streams.length === 1);
  const q = api.requests[1]!.url.searchParams;
  assert.equal(q.get("watch"), "1");
  assert.equal(q.get("resourceVersion"), "7");
  assert.equal(q.get("allowWatchBookmarks"), "true");
  const timeout = Number(q.get("timeoutSeconds"));
  assert.ok(timeout >= 300 && timeout < 600, `timeoutSeconds ${timeout}`);

  // An event split across chunks, two events in one chunk, then a bookmark.
  const added = JSON.stringify({
    type: "ADDED",
    object: node("b", "8", "10.244.2.0/24", "192.0.2.2"),
  });
  streams[0]!.send(added.slice(0, 17));
  streams[0]!.send(
    added.slice(17) + "\n" + JSON.stringify({
      type: "DELETED",
      object: node("a", "9", "10.244.1.0/24", "192.0.2.1"),
    }) +
      '\n{"type":"BOOKMARK","object":{"kind":"Node","metadata":{"resourceVersion":"12"}}}',
  );
  await rec.until(() => rec.log.length === 3);
  streams[0]!.send("\n");
  streams[0]!.end(); // the server's timeoutSeconds
  await rec.until(() => streams.length === 2);
  assert.equal(w.resourceVersion, "12");
  assert.equal(
    api.requests.at(-1)!.url.searchParams.get("resourceVersion"),
    "12",
  );
  assert.deepEqual(rec.log, ["sync a", "upsert b", "remove a"]);
  ctl.abort();
  await done;
  assert.ok(streams[1]!.cancelled, "the open watch is closed on abort");
});

Deno.test("run() relists after an in-stream 410 and after an HTTP 410", async () => {
  let lists = 0;
  let watches = 0;
  const streams: WatchStream[] = [];
  const api = new FakeApi((r) => {
    if (!isWatch(r)) {
      lists++;
      // The second listing no longer has "a": a delete missed while away.
      return lists === 1
        ? list([node("a", "5", "10.244.1.0/24", "192.0.2.1")], "7")
        : list([node("b", "30", "10.244.2.0/24", "192.0.2.2")], "31");
    }
    watches++;
    if (watches === 2) {
      return status(410, "Expired", "too old resource version: 7 (30)");
    }
    const s = new WatchStream();
    streams.push(s);
    return new Response(s.body, { status: 200 });
  });
  const rec = new Recorder().watching(api);
  const ctl = new AbortController();
  const relists = metrics.relists.get();
  const done = new NodeWatcher(api.client(), slim, fast).run(rec, ctl.signal);
  await rec.until(() => streams.length === 1);
  streams[0]!.event("ERROR", {
    kind: "Status",
    status: "Failure",
    message: "too old resource version: 7 (30)",
    reason: "Expired",
    code: 410,
  });
  // The relisted version is watched; an HTTP 410 relists again.
  await rec.until(() => streams.length === 2);
  assert.deepEqual(rec.log, ["sync a", "sync b", "sync b"]);
  assert.equal(lists, 3);
  assert.equal(metrics.relists.get() - relists, 2);
  assert.equal(
    api.requests.at(-1)!.url.searchParams.get("resourceVersion"),
    "31",
  );
  // After each 410 the relist is a quorum read: no resourceVersion.
  const listReqs = api.requests.filter((r) => !isWatch(r));
  assert.deepEqual(
    listReqs.map((r) => r.url.searchParams.get("resourceVersion")),
    ["0", null, null],
  );
  ctl.abort();
  await done;
});

/** A watcher whose API lists nothing and whose watches stay silent. */
async function silentWatches(opts: NodeWatcherOptions) {
  const streams: WatchStream[] = [];
  const api = new FakeApi((r) => {
    if (!isWatch(r)) return list([], "3");
    const s = new WatchStream();
    streams.push(s);
    return new Response(s.body, { status: 200 });
  });
  const rec = new Recorder().watching(api);
  const ctl = new AbortController();
  const done = new NodeWatcher(api.client(), slim, { ...fast, ...opts })
    .run(rec, ctl.signal);
  await rec.until(() => streams.length === 1);
  return { streams, rec, stop: () => (ctl.abort(), done) };
}

Deno.test("run() with a fixed idle timeout (--watch-idle-timeout) restarts a silent watch after it, whatever the server timeout", async () => {
  const { streams, rec, stop } = await silentWatches({
    timeoutSeconds: () => 600,
    idleTimeoutMs: 150,
  });
  const t0 = performance.now();
  await rec.until(() => streams.length === 2, 2000);
  assert.ok(streams[0]!.cancelled);
  assert.ok(performance.now() - t0 >= 140);
  await stop();
});

Deno.test("run() aborts a watch that stays silent past its timeout plus grace", async () => {
  const { streams, rec, stop } = await silentWatches({
    timeoutSeconds: () => 0,
    idleGraceMs: 100,
  });
  const t0 = performance.now();
  // Data keeps it alive... (real time on purpose: the behaviour under
  // test is the idle timer itself)
  for (let i = 0; i < 4; i++) {
    await new Promise((r) => setTimeout(r, 60));
    streams[0]!.send("\n");
  }
  assert.equal(streams.length, 1);
  // ...silence does not.
  await rec.until(() => streams.length === 2, 2000);
  assert.ok(streams[0]!.cancelled);
  assert.ok(performance.now() - t0 >= 300);
  await stop();
});

Deno.test("run() falls back to periodic listing after repeated watch failures, then watches again", async () => {
  let failWatches = true;
  let lists = 0;
  const streams: WatchStream[] = [];
  const api = new FakeApi((r) => {
    if (!isWatch(r)) {
      lists++;
      return list(
        [node(`n${lists}`, "5", "10.244.1.0/24", "192.0.2.1")],
        String(lists),
      );
    }
    // A proxy that lets LIST through but breaks every watch.
    if (failWatches) return new Response("broken", { status: 502 });
    const s = new WatchStream();
    streams.push(s);
    return new Response(s.body, { status: 200 });
  });
  const lines: string[] = [];
  const prev = setLogSink((l) => {
    lines.push(l);
    api.changes.notify();
  });
  const rec = new Recorder().watching(api);
  const ctl = new AbortController();
  const done = new NodeWatcher(api.client(), slim, {
    ...fast,
    fallbackAfter: 3,
    pollIntervalMs: 30,
  }).run(rec, ctl.signal);
  try {
    await rec.until(() => lists >= 4);
    assert.ok(
      lines.some((l) =>
        /Node watch failed 3 times in a row; listing nodes every 0s/.test(l)
      ),
      lines.join("\n"),
    );
    // Three failed watches from the first list, then in fallback at most
    // one watch attempt per periodic list (not a retry storm).
    const watches = api.requests.filter(isWatch).length;
    assert.ok(
      watches >= 3 + (lists - 2) && watches <= 3 + (lists - 1),
      `${watches} watches, ${lists} lists`,
    );
    failWatches = false;
    await rec.until(() => streams.length === 1, 3000);
    await rec.until(() => lines.some((l) => /Node watch works again/.test(l)));
    const n = lists;
    // Five poll intervals of real time: the claim is that no timer fires.
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(lists, n, "no more periodic lists once watching");
  } finally {
    ctl.abort();
    await done;
    setLogSink(prev);
  }
});

Deno.test("run() keeps watching, not polling, while the server is unreachable", async () => {
  let down = true;
  let lists = 0;
  const streams: WatchStream[] = [];
  const api = new FakeApi((r) => {
    if (!isWatch(r)) {
      lists++;
      return list([node("n1", "5", "10.244.1.0/24", "192.0.2.1")], "7");
    }
    if (down) throw new TypeError("connection refused");
    const s = new WatchStream();
    streams.push(s);
    return new Response(s.body, { status: 200 });
  });
  const lines: string[] = [];
  const prev = setLogSink((l) => {
    lines.push(l);
    api.changes.notify();
  });
  const ctl = new AbortController();
  const done = new NodeWatcher(api.client(), slim, {
    ...fast,
    fallbackAfter: 2,
    pollIntervalMs: 60_000,
  }).run(new Recorder(), ctl.signal);
  try {
    const rec = new Recorder().watching(api);
    await rec.until(() => api.requests.filter(isWatch).length >= 5, 3000);
    assert.ok(
      !lines.some((l) => /listing nodes every/.test(l)),
      lines.join("\n"),
    );
    down = false;
    await rec.until(() => streams.length === 1, 3000);
    assert.equal(lists, 1, "resumed from the last version, no relist");
  } finally {
    ctl.abort();
    await done;
    setLogSink(prev);
  }
});

Deno.test("run() waits as long as a 429's Retry-After says", async () => {
  let watches = 0;
  const at: number[] = [];
  const streams: WatchStream[] = [];
  const api = new FakeApi((r) => {
    if (!isWatch(r)) return list([], "3");
    at.push(performance.now());
    if (watches++ === 0) {
      return status(429, "TooManyRequests", "try later", {
        "Retry-After": "1",
      });
    }
    const s = new WatchStream();
    streams.push(s);
    return new Response(s.body, { status: 200 });
  });
  const rec = new Recorder().watching(api);
  const ctl = new AbortController();
  const done = new NodeWatcher(api.client(), slim, fast).run(rec, ctl.signal);
  await rec.until(() => streams.length === 1, 3000);
  assert.ok(at[1]! - at[0]! >= 950, `retried after ${at[1]! - at[0]!}ms`);
  ctl.abort();
  await done;
});

Deno.test("list() refuses a 200 that is not a Node list, rather than reading it as no nodes", async () => {
  const bodies: [string, RegExp][] = [
    [
      '{"kind":"NodeList","items":{"not":"a list"},"metadata":{"resourceVersion":"5"}}',
      /no "items" array/,
    ],
    ['{"result":7}', /no "items" array/],
    ['{"kind":"NodeList","items":[]}', /no metadata.resourceVersion/],
    [
      "<!DOCTYPE html><html><body>Bad Gateway</body></html>",
      /Cannot parse list/,
    ],
  ];
  for (const [body, why] of bodies) {
    const api = new FakeApi(() =>
      new Response(body, {
        status: 200,
        headers: { "content-type": "application/json" },
      })
    );
    const w = new NodeWatcher(api.client(), slim);
    await assert.rejects(w.list(new AbortController().signal), why, body);
  }
  // An empty cluster is still a list.
  const empty = new FakeApi(() => list([], "7"));
  const w = new NodeWatcher(empty.client(), slim);
  assert.equal((await w.list(new AbortController().signal)).nodes.size, 0);
});

Deno.test("run() lists again after a watch event past the line bound, and the list passes over the oversized Node on its own", async () => {
  const streams: WatchStream[] = [];
  let lists = 0;
  const big = node("big", "8", "10.244.5.0/24", "192.0.2.5");
  (big.metadata as Record<string, unknown>).labels = {
    pad: "p".repeat(17 << 20),
  };
  const api = new FakeApi((r) => {
    if (!isWatch(r)) {
      lists++;
      return list(
        lists === 1 ? [node("a", "5", "10.244.1.0/24", "192.0.2.1")] : [
          node("a", "5", "10.244.1.0/24", "192.0.2.1"),
          big,
          node("c", "9", "10.244.3.0/24", "192.0.2.3"),
        ],
        lists === 1 ? "7" : "10",
      );
    }
    const s = new WatchStream();
    streams.push(s);
    return new Response(s.body, { status: 200 });
  });
  const rec = new Recorder().watching(api);
  const ctl = new AbortController();
  const w = new NodeWatcher(api.client(), slim, fast);
  const done = w.run(rec, ctl.signal);
  await rec.until(() => streams.length === 1);
  streams[0]!.event("ADDED", big);
  await rec.until(() => streams.length === 2, 10_000);
  assert.equal(lists, 2);
  assert.deepEqual(rec.log, ["sync a", "sync a,big,c"]);
  const { what, bytes, limit } = rec.state.get("big")!.oversized!;
  assert.deepEqual([what, limit], ["Node object", 16 << 20]);
  assert.equal(bytes, new TextEncoder().encode(JSON.stringify(big)).length);
  assert.equal(
    api.requests.at(-1)!.url.searchParams.get("resourceVersion"),
    "10",
  );
  ctl.abort();
  await done;
});
