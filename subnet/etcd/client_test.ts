import assert from "node:assert/strict";
import {
  b64,
  EtcdClient,
  EtcdError,
  failoverVerdict,
  isTransient,
  MAX_ANSWER_BYTES,
  MAX_VALUE_BYTES,
  prefixRangeEnd,
  redactUrl,
  unb64,
} from "./client.ts";

const dec = new TextDecoder();

Deno.test("prefixRangeEnd() increments the last byte of the prefix", () => {
  assert.equal(
    dec.decode(unb64(prefixRangeEnd("/coreos.com/network/subnets/"))),
    "/coreos.com/network/subnets0",
  );
  // Trailing 0xff bytes are dropped before incrementing.
  assert.deepEqual(
    [...unb64(prefixRangeEnd("a\u00ff"))], // UTF-8: 61 c3 bf
    [0x61, 0xc3, 0xc0],
  );
});

Deno.test("b64() encodes UTF-8 and unb64() reverses it", () => {
  assert.equal(b64("/a/x"), "L2EveA==");
  assert.equal(dec.decode(unb64(b64("fc00::-64 é"))), "fc00::-64 é");
});

Deno.test("EtcdClient refuses an endpoint without a scheme", () => {
  assert.throws(
    () => new EtcdClient({ endpoints: ["127.0.0.1:2379"] }),
    /Invalid etcd endpoint "127.0.0.1:2379"/,
  );
  const c = new EtcdClient({ endpoints: ["http://127.0.0.1:2379/"] });
  assert.deepEqual(c.endpoints, ["http://127.0.0.1:2379"]);
});

Deno.test("isTransient() retries unreachable and no-leader errors only", () => {
  assert.ok(isTransient(new EtcdError("x", "unreachable")));
  assert.ok(isTransient(new EtcdError("x", "api", 14)));
  assert.ok(!isTransient(new EtcdError("x", "api", 3)));
  assert.ok(!isTransient(new Error("x")));
});

/** A scripted gateway: each endpoint answers from its own queue. */
function scripted(
  answers: Record<string, (() => Response | Promise<Response>)[]>,
): { fetch: typeof fetch; calls: string[] } {
  const calls: string[] = [];
  const fetchFn = (input: RequestInfo | URL, init?: RequestInit) => {
    const url = new URL(String(input));
    calls.push(`${url.host}${url.pathname}`);
    const next = answers[url.host]?.shift();
    if (!next) return Promise.reject(new TypeError("connection refused"));
    if (init?.signal?.aborted) return Promise.reject(init.signal.reason);
    return Promise.resolve(next());
  };
  return { fetch: fetchFn as typeof fetch, calls };
}

const json = (status: number, body: unknown, headers: HeadersInit = {}) => () =>
  new Response(JSON.stringify(body), { status, headers });
const OK_RANGE = json(200, { header: { revision: "7" }, kvs: [] });
const endpoints = ["http://a:1", "http://b:2"];

Deno.test("failoverVerdict() renews on 16, moves on for 14, 429 and 5xx, stops otherwise", () => {
  assert.equal(failoverVerdict(401, 16), "reauth");
  assert.equal(failoverVerdict(503, 14), "next");
  assert.equal(failoverVerdict(429, undefined), "next");
  assert.equal(failoverVerdict(500, 2), "next");
  assert.equal(failoverVerdict(502, undefined), "next");
  assert.equal(failoverVerdict(400, 3), "final");
  assert.equal(failoverVerdict(404, 5), "final");
});

Deno.test("EtcdClient fails over a refused connection and remembers the good endpoint", async () => {
  const s = scripted({ "b:2": [OK_RANGE, OK_RANGE] });
  using c = new EtcdClient({ endpoints, fetch: s.fetch });
  assert.equal((await c.range("k")).revision, 7n);
  await c.range("k");
  assert.deepEqual(s.calls, [
    "a:1/v3/kv/range",
    "b:2/v3/kv/range",
    "b:2/v3/kv/range",
  ]);
});

Deno.test("EtcdClient fails over a JSON 500 for unary requests and watches alike", async () => {
  const err500 = json(500, { error: "etcdserver: unknown", code: 2 });
  const s = scripted({
    "a:1": [err500, err500],
    "b:2": [OK_RANGE, () => new Response("", { status: 200 })],
  });
  using c = new EtcdClient({ endpoints, fetch: s.fetch });
  assert.equal((await c.range("k")).revision, 7n);
  // The watch opens on b (the last good one) first; make a fail first.
  const s2 = scripted({
    "a:1": [err500],
    "b:2": [() => new Response("", { status: 200 })],
  });
  using w = new EtcdClient({ endpoints, fetch: s2.fetch });
  const stream = w.watch({
    key: "k",
    idleTimeoutMs: 1000,
    signal: new AbortController().signal,
  });
  await assert.rejects(
    stream.next(),
    /Watch stream from etcd "http:\/\/b:2" ended/,
  );
  assert.deepEqual(s2.calls, ["a:1/v3/watch", "b:2/v3/watch"]);
});

Deno.test("EtcdClient stops at a final error and names the endpoint and code", async () => {
  const s = scripted({
    "a:1": [json(400, { error: "etcdserver: too many operations", code: 3 })],
  });
  using c = new EtcdClient({ endpoints, fetch: s.fetch });
  await assert.rejects(
    c.range("k"),
    (e: unknown) =>
      e instanceof EtcdError && e.kind === "api" && e.code === 3 &&
      e.message ===
        'etcd "http://a:1" /v3/kv/range: etcdserver: too many operations (code 3)',
  );
  assert.deepEqual(s.calls, ["a:1/v3/kv/range"]);
});

Deno.test("EtcdClient reports every endpoint's reason and the last Retry-After when all fail", async () => {
  const s = scripted({
    "a:1": [json(429, { error: "too many requests" }, { "retry-after": "3" })],
    "b:2": [() => new Response("<html>bad gateway</html>", { status: 502 })],
  });
  using c = new EtcdClient({ endpoints, fetch: s.fetch });
  await assert.rejects(c.range("k"), (e: unknown) => {
    assert.ok(e instanceof EtcdError);
    assert.equal(e.kind, "unreachable");
    assert.equal(e.retryAfterMs, 3000);
    assert.match(e.message, /"http:\/\/a:1": .*too many requests/);
    assert.match(e.message, /"http:\/\/b:2": .*bad gateway/);
    return true;
  });
});

Deno.test("EtcdClient asks an endpoint nothing until its Retry-After has passed, for every caller", async () => {
  const s = scripted({
    "a:1": [
      json(429, { error: "too many requests" }, { "retry-after": "1" }),
      OK_RANGE,
    ],
    "b:2": [() => new Response("down", { status: 503 }), OK_RANGE],
  });
  using c = new EtcdClient({ endpoints, fetch: s.fetch });
  await assert.rejects(c.range("k"));
  assert.equal(s.calls.length, 2);
  // Another request (say the watch's) within the second: no call to a:1.
  const started = Date.now();
  const r = await c.range("k");
  assert.equal(r.revision, 7n);
  assert.deepEqual(s.calls.slice(2), ["b:2/v3/kv/range"]);
  // With b:2 held too, nothing is sent at all, and the wait is reported.
  const held = scripted({
    "a:1": [json(429, {}, { "retry-after": "1" })],
    "b:2": [json(429, {}, { "retry-after": "1" })],
  });
  using c2 = new EtcdClient({ endpoints, fetch: held.fetch });
  await assert.rejects(c2.range("k"));
  await assert.rejects(c2.range("k"), (e: unknown) => {
    assert.ok(e instanceof EtcdError);
    assert.ok(
      e.retryAfterMs! > 0 && e.retryAfterMs! <= 1000,
      String(e.retryAfterMs),
    );
    assert.match(e.message, /asked to wait \d+ ms more \(Retry-After\)/);
    return true;
  });
  assert.equal(held.calls.length, 2);
  assert.ok(Date.now() - started < 1000, "the test outlived the hold");
});

Deno.test("EtcdClient logs in again once on an expired token, on the same endpoint", async () => {
  const s = scripted({
    "a:1": [
      json(200, { token: "t1" }),
      json(401, { error: "etcdserver: invalid auth token", code: 16 }),
      json(200, { token: "t2" }),
      OK_RANGE,
    ],
  });
  using c = new EtcdClient({
    endpoints,
    username: "root",
    allowCredentialsOverHttp: true,
    password: "pw",
    fetch: s.fetch,
  });
  assert.equal((await c.range("k")).revision, 7n);
  assert.deepEqual(s.calls, [
    "a:1/v3/auth/authenticate",
    "a:1/v3/kv/range",
    "a:1/v3/auth/authenticate",
    "a:1/v3/kv/range",
  ]);
});

Deno.test("EtcdClient treats a 200 whose body is not JSON as a protocol error", async () => {
  const s = scripted({
    "a:1": [() => new Response("<html>", { status: 200 })],
  });
  using c = new EtcdClient({ endpoints, fetch: s.fetch });
  await assert.rejects(
    c.range("k"),
    (e: unknown) => e instanceof EtcdError && e.kind === "protocol",
  );
});

Deno.test("EtcdClient takes credentials out of an endpoint URL and never shows the password", () => {
  assert.throws(
    () => new EtcdClient({ endpoints: ["http://root:s3cret@10.0.0.1:2379"] }),
    (e: Error) =>
      e.message ===
        'Refusing to send etcd credentials to "http://10.0.0.1:2379" over plain HTTP: use an https endpoint, or pass --allow-token-over-http' &&
      !e.message.includes("s3cret"),
  );
  const c = new EtcdClient({
    endpoints: ["https://root:s3cret@10.0.0.1:2379/"],
  });
  assert.deepEqual(c.endpoints, ["https://10.0.0.1:2379"]);
  c.close();
  const allowed = new EtcdClient({
    endpoints: ["http://10.0.0.1:2379"],
    username: "root",
    password: "s3cret",
    allowCredentialsOverHttp: true,
  });
  assert.deepEqual(allowed.endpoints, ["http://10.0.0.1:2379"]);
  allowed.close();
  assert.throws(
    () => new EtcdClient({ endpoints: ["ftp://root:s3cret@host:2379"] }),
    (e: Error) =>
      e.message ===
        'Invalid etcd endpoint "ftp://root:***@host:2379": expected http(s)://host:port',
  );
  assert.equal(
    redactUrl("http://user:pw@h:1/x"),
    "http://user:***@h:1/x",
  );
  assert.equal(redactUrl("http://h:1"), "http://h:1");
});

/** A watch on one endpoint whose stream sends `body`, then ends. */
function watchAnswering(body: string) {
  const s = scripted({
    "a:1": [() => new Response(body, { status: 200 })],
  });
  const w = new EtcdClient({ endpoints: ["http://a:1"], fetch: s.fetch });
  return w.watch({
    key: "k",
    idleTimeoutMs: 1000,
    signal: new AbortController().signal,
  });
}

Deno.test("EtcdClient refuses watch lines without a header revision (not etcd speaking)", async () => {
  const stream = watchAnswering(
    '{"result":{"kind":"NodeList","items":{"not":"a list"},"header":{"revision":[]},"kvs":"x","result":7}}\n',
  );
  await assert.rejects(
    stream.next(),
    (e: unknown) =>
      e instanceof EtcdError && e.kind === "protocol" &&
      /a response without a header revision/.test(e.message),
  );
});

Deno.test("EtcdClient refuses an endpoint whose port is out of range", () => {
  assert.throws(
    () => new EtcdClient({ endpoints: ["http://127.0.0.1:417930"] }),
    /Invalid etcd endpoint "http:\/\/127\.0\.0\.1:417930": expected http\(s\):\/\/host:port/,
  );
});

Deno.test("EtcdClient passes on a compaction cancel, whose header has no revision", async () => {
  const stream = watchAnswering(
    '{"result":{"header":{"cluster_id":"1"},"canceled":true,"compact_revision":"9"}}\n',
  );
  const first = await stream.next();
  assert.equal(first.done, false);
  assert.equal(first.value!.compactRevision, 9n);
  assert.equal(first.value!.canceled, true);
  await stream.return(undefined);
});

Deno.test("EtcdClient refuses an endless answer and fails over, reading no more than its bound", async () => {
  let pulled = 0;
  let cancelled = false;
  const endless = () =>
    new Response(
      new ReadableStream<Uint8Array>({
        pull(ctl) {
          pulled += 1 << 20;
          ctl.enqueue(new Uint8Array(1 << 20).fill(0x78));
        },
        cancel() {
          cancelled = true;
        },
      }),
      { status: 200 },
    );
  const s = scripted({ "a:1": [endless], "b:2": [OK_RANGE] });
  using c = new EtcdClient({ endpoints, fetch: s.fetch });
  assert.equal((await c.range("k")).revision, 7n);
  assert.ok(cancelled);
  assert.ok(pulled <= MAX_ANSWER_BYTES + (2 << 20), `read ${pulled} bytes`);
  const only = scripted({ "a:1": [endless] });
  using c2 = new EtcdClient({ endpoints: ["http://a:1"], fetch: only.fetch });
  await assert.rejects(
    c2.range("k"),
    (e: unknown) =>
      e instanceof EtcdError && e.kind === "oversized" &&
      /"http:\/\/a:1": answer larger than 33554432 bytes/.test(e.message),
  );
});

Deno.test("EtcdClient judges endpoint schemes case-insensitively: HTTP:// carries no password, HTTPS:// is https", () => {
  assert.throws(
    () =>
      new EtcdClient({
        endpoints: ["https://10.0.0.2:2379", "HTTP://10.0.0.1:2379"],
        username: "root",
        password: "s3cret",
      }),
    (e: Error) =>
      e.message ===
        'Refusing to send etcd credentials to "http://10.0.0.1:2379" over plain HTTP: use an https endpoint, or pass --allow-token-over-http',
  );
  const c = new EtcdClient({
    endpoints: ["HTTPS://10.0.0.1:2379"],
    username: "root",
    password: "s3cret",
  });
  assert.deepEqual(c.endpoints, ["https://10.0.0.1:2379"]);
  c.close();
});

/** A gateway serving `/v3/kv/range` over `store` as etcd pages it. */
function rangeGateway(store: Map<string, string>) {
  const requests: { limit: number; keysOnly: boolean; revision: string }[] = [];
  const bytes = (s: string) => new TextEncoder().encode(s);
  const fetchFn = async (_input: RequestInfo | URL, init?: RequestInit) => {
    const r = JSON.parse(String(init!.body));
    const from = new TextDecoder().decode(unb64(r.key));
    const end = unb64(r.range_end);
    const limit = Number(r.limit ?? 0);
    requests.push({ limit, keysOnly: !!r.keys_only, revision: r.revision });
    const below = (k: string) => {
      const kb = bytes(k);
      for (let i = 0; i < Math.min(kb.length, end.length); i++) {
        if (kb[i] !== end[i]) return kb[i]! < end[i]!;
      }
      return kb.length < end.length;
    };
    const keys = [...store.keys()].sort().filter((k) => k >= from && below(k));
    const page = limit > 0 ? keys.slice(0, limit) : keys;
    return await Promise.resolve(Response.json({
      header: { revision: "9" },
      kvs: page.map((k) => ({
        key: b64(k),
        ...(!r.keys_only && { value: b64(store.get(k)!) }),
        mod_revision: "5",
      })),
      more: page.length < keys.length,
      count: String(keys.length),
    }));
  };
  return { fetch: fetchFn as typeof fetch, requests };
}

Deno.test("rangePrefix() shrinks a page that passes the answer bound, lists a value larger than a whole answer by its key alone, and always completes", async () => {
  const store = new Map<string, string>();
  for (let i = 0; i < 40; i++) {
    store.set(
      `/p/k${String(i).padStart(2, "0")}`,
      "v".repeat(i === 7 ? 5000 : i % 3 === 0 ? 900 : 100),
    );
  }
  store.set("/q/outside", "x");
  const g = rangeGateway(store);
  using c = new EtcdClient({
    endpoints: ["http://a:1"],
    fetch: g.fetch,
    maxAnswerBytes: 4096,
  });
  const first = await c.rangePrefix("/p/", undefined, 32);
  assert.deepEqual(
    first.kvs.map((kv) => kv.key),
    [...store.keys()].filter((k) => k.startsWith("/p/")),
  );
  const k07 = first.kvs.find((kv) => kv.key === "/p/k07")!;
  assert.equal(k07.value, "");
  assert.equal(k07.oversized, 4097);
  assert.equal(first.kvs.filter((kv) => kv.oversized !== undefined).length, 1);
  assert.equal(
    first.kvs.find((kv) => kv.key === "/p/k03")!.value,
    "v".repeat(900),
  );
  const keysOnly = g.requests.findIndex((r) => r.keysOnly && r.limit === 1);
  assert.ok(keysOnly >= 0);
  // Past it, pages grow back: the rest is not read a key at a time.
  assert.ok(
    g.requests.slice(keysOnly + 1).some((r) => r.limit >= 8),
    JSON.stringify(g.requests),
  );
  // Every page after the first reads at the first page's revision.
  const pinned = g.requests.findIndex((r) => r.revision === "9");
  assert.ok(
    pinned > 0 && g.requests.slice(pinned).every((r) => r.revision === "9"),
  );
  // The next listing starts at the size that worked, not at 32 again.
  const n = g.requests.length;
  await c.rangePrefix("/p/", undefined, 32);
  assert.ok(g.requests[n]!.limit < 32, JSON.stringify(g.requests[n]));
});

Deno.test("EtcdClient keeps a value past MAX_VALUE_BYTES out of memory, marked with its length", async () => {
  const store = new Map([["/p/a", "a".repeat(MAX_VALUE_BYTES + 1)], [
    "/p/b",
    "ok",
  ]]);
  using c = new EtcdClient({
    endpoints: ["http://a:1"],
    fetch: rangeGateway(store).fetch,
  });
  const { kvs } = await c.rangePrefix("/p/");
  assert.deepEqual(
    kvs.map((kv) => [kv.key, kv.value, kv.oversized]),
    [["/p/a", "", MAX_VALUE_BYTES + 1], ["/p/b", "ok", undefined]],
  );
});
