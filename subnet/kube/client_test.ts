import assert from "node:assert/strict";
import { FakeApi, json, status } from "./_fake_api.ts";
import {
  inClusterServer,
  isTransient,
  KubeApiError,
  KubeClient,
  KubeConnectionError,
  retrying,
} from "./client.ts";
import { setLogSink } from "../../lib/log.ts";

setLogSink(() => {});

Deno.test("KubeClient sends the bearer token and JSON accept header", async () => {
  const api = new FakeApi(() => json(200, { kind: "Node" }));
  const c = api.client(() => "tok-1");
  assert.deepEqual(await c.getJson("/api/v1/nodes/a"), { kind: "Node" });
  const req = api.requests[0]!;
  assert.equal(req.url.pathname, "/api/v1/nodes/a");
  assert.equal(req.headers.get("Authorization"), "Bearer tok-1");
  assert.equal(req.headers.get("Accept"), "application/json");
  assert.match(req.headers.get("User-Agent") ?? "", /^weft\//);
  assert.equal(c.bytesReceived, JSON.stringify({ kind: "Node" }).length);
});

Deno.test("KubeClient turns a Status answer into KubeApiError with its message", async () => {
  const api = new FakeApi(() =>
    status(
      403,
      "Forbidden",
      'nodes "a" is forbidden: User "x" cannot get resource "nodes"',
    )
  );
  const err = await api.client().getJson("/api/v1/nodes/a").catch((e) => e);
  assert.ok(err instanceof KubeApiError);
  assert.equal(err.status, 403);
  assert.equal(err.reason, "Forbidden");
  assert.match(
    err.message,
    /GET \/api\/v1\/nodes\/a: 403 .*cannot get resource "nodes"/,
  );
  assert.equal(isTransient(err), false);
});

Deno.test("KubeClient re-reads the token after a 401 and retries once", async () => {
  let token = "old";
  let invalidated = 0;
  const api = new FakeApi((req) =>
    req.headers.get("Authorization") === "Bearer new"
      ? json(200, { ok: true })
      : status(401, "Unauthorized", "Unauthorized")
  );
  const c = api.client({
    token: () => Promise.resolve(token),
    invalidate: () => {
      invalidated++;
      token = "new";
    },
  });
  assert.deepEqual(await c.getJson("/x"), { ok: true });
  assert.equal(invalidated, 1);
  assert.deepEqual(
    api.requests.map((r) => r.headers.get("Authorization")),
    ["Bearer old", "Bearer new"],
  );
});

Deno.test("KubeClient names the server in connection and TLS errors", async () => {
  const c = new KubeClient({
    server: "https://10.0.0.1:6443",
    caHint: "is the API server's certificate signed by the CA?",
    // Deno's fetch: "fetch failed", the reason in `cause`.
    fetch: () =>
      Promise.reject(
        new TypeError("fetch failed", {
          cause: new Error(
            "error sending request for url (https://10.0.0.1:6443/api/v1/nodes): client error (Connect): invalid peer certificate: UnknownIssuer",
          ),
        }),
      ),
  });
  const err = await c.getJson("/api/v1/nodes").catch((e) => e);
  assert.ok(err instanceof KubeConnectionError);
  assert.equal(err.tls, true);
  assert.equal(
    err.message,
    'Cannot reach Kubernetes API server "https://10.0.0.1:6443" (/api/v1/nodes): TLS error: client error (Connect): invalid peer certificate: UnknownIssuer (is the API server\'s certificate signed by the CA?)',
  );
  assert.equal(isTransient(err), false, "a bad CA does not fix itself");
  const refused = new KubeClient({
    server: "https://10.0.0.1:6443",
    fetch: () =>
      Promise.reject(new TypeError("Connection refused (os error 111)")),
  });
  const err2 = await refused.getJson("/x").catch((e) => e);
  assert.ok(err2 instanceof KubeConnectionError);
  assert.equal(err2.tls, false);
  assert.equal(isTransient(err2), true);
});

Deno.test("retrying() honours Retry-After on 429 and 503, then succeeds", async () => {
  const answers = [
    () => status(429, "TooManyRequests", "slow down", { "Retry-After": "1" }),
    () => status(503, "ServiceUnavailable", "starting"),
    () => json(200, { done: true }),
  ];
  const api = new FakeApi(() => answers.shift()!());
  const c = api.client();
  const times: number[] = [];
  const t0 = performance.now();
  const out = await retrying(() => {
    times.push(performance.now() - t0);
    return c.getJson("/x");
  }, {
    signal: new AbortController().signal,
    what: "get x",
    backoff: { initialMs: 10, maxMs: 20 },
  });
  assert.deepEqual(out, { done: true });
  assert.equal(times.length, 3);
  assert.ok(times[1]! - times[0]! >= 950, `waited ${times[1]! - times[0]!}ms`);
  assert.ok(times[2]! - times[1]! < 500);
});

Deno.test("retrying() gives up on permanent errors and at the deadline", async () => {
  const api = new FakeApi(() => status(404, "NotFound", 'nodes "a" not found'));
  const c = api.client();
  const signal = new AbortController().signal;
  await assert.rejects(
    retrying(() => c.getJson("/x"), { signal, what: "x" }),
    /404/,
  );
  assert.equal(api.requests.length, 1);
  api.handler = () => status(500, "InternalError", "boom");
  await assert.rejects(
    retrying(() => c.getJson("/x"), {
      signal,
      what: "x",
      deadlineMs: 100,
      backoff: { initialMs: 20, maxMs: 40 },
    }),
    /500/,
  );
  assert.ok(api.requests.length >= 3);
});

Deno.test("inClusterServer() brackets an IPv6 service host", () => {
  assert.equal(inClusterServer("10.96.0.1", "443"), "https://10.96.0.1:443");
  assert.equal(
    inClusterServer("fd00:10:96::1", "443"),
    "https://[fd00:10:96::1]:443",
  );
});

Deno.test("KubeClient retries a TLS failure once with a client rebuilt from a rotated CA", async () => {
  let calls = 0;
  const clients: (Deno.HttpClient | undefined)[] = [];
  const fakeFetch =
    ((_url: string, init?: RequestInit & { client?: Deno.HttpClient }) => {
      calls++;
      clients.push(init?.client);
      if (calls === 1) {
        return Promise.reject(
          new TypeError("fetch failed", {
            cause: new Error(
              "client error (Connect): invalid peer certificate: UnknownIssuer",
            ),
          }),
        );
      }
      return Promise.resolve(
        new Response('{"kind":"NodeList"}', { status: 200 }),
      );
    }) as typeof fetch;
  let reloads = 0;
  const rotated = Deno.createHttpClient({});
  const client = new KubeClient({
    server: "https://198.18.0.254:6443",
    fetch: fakeFetch,
    httpClient: Deno.createHttpClient({}),
    reloadHttpClient: () => {
      reloads++;
      return Promise.resolve(rotated);
    },
  });
  try {
    assert.deepEqual(await client.getJson("/api/v1/nodes"), {
      kind: "NodeList",
    });
    assert.equal(reloads, 1);
    assert.equal(calls, 2);
    assert.equal(clients[1], rotated);
  } finally {
    client.close();
  }
  // Unchanged CA: the TLS error stands, naming the server.
  const stuck = new KubeClient({
    server: "https://198.18.0.254:6443",
    fetch: (() =>
      Promise.reject(
        new TypeError("fetch failed", {
          cause: new Error("invalid peer certificate: UnknownIssuer"),
        }),
      )) as typeof fetch,
    reloadHttpClient: () => Promise.resolve(undefined),
  });
  await assert.rejects(
    () => stuck.getJson("/api/v1/nodes"),
    /Cannot reach Kubernetes API server "https:\/\/198.18.0.254:6443".*TLS error/,
  );
});
