/**
 * The health server on a real socket (127.0.0.1, ephemeral port).
 * Needs --allow-net.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import {
  METRICS_CONTENT_TYPE,
  Readiness,
  READY,
  startHealthServer,
} from "../../agent/health.ts";
import { metrics } from "../../lib/metrics.ts";
import { setLogSink } from "../../lib/log.ts";

setLogSink(() => {});

Deno.test("startHealthServer() serves /healthz, /readyz and /metrics over HTTP", async () => {
  const readiness = new Readiness();
  const peers = readiness.register(READY.peers);
  const ac = new AbortController();
  const server = startHealthServer({
    hostname: "127.0.0.1",
    port: 0,
    ephemeral: true,
    readiness,
    signal: ac.signal,
  });
  assert(server);
  const base = `http://127.0.0.1:${server.port}`;
  try {
    const h = await fetch(`${base}/healthz`);
    assertEquals([h.status, await h.text()], [200, "weft is running\n"]);

    let r = await fetch(`${base}/readyz`);
    assertEquals([r.status, await r.text()], [
      503,
      "[-]peers synced: not checked yet\nreadyz check failed\n",
    ]);
    peers(true);
    r = await fetch(`${base}/readyz`);
    assertEquals([r.status, await r.text()], [
      200,
      "[+]peers synced ok\nreadyz check passed\n",
    ]);

    metrics.reconcilePasses.inc();
    const m = await fetch(`${base}/metrics`);
    assertEquals(m.headers.get("content-type"), METRICS_CONTENT_TYPE);
    const body = await m.text();
    assert(body.includes("# TYPE weft_reconcile_passes_total counter\n"));
    assert(/\nweft_reconcile_passes_total [1-9]\d*\n/.test(body));
  } finally {
    ac.abort();
    await server.finished;
  }
  // Stopped: the port refuses connections.
  const refused = await fetch(`${base}/healthz`).then(() => false, () => true);
  assert(refused, "server stopped");
});

Deno.test("startHealthServer() with port 0 starts nothing", () => {
  assertEquals(
    startHealthServer({
      hostname: "0.0.0.0",
      port: 0,
      readiness: new Readiness(),
    }),
    undefined,
  );
});

Deno.test("startHealthServer() throws when the port is taken", () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    let error: unknown;
    try {
      startHealthServer({
        hostname: "127.0.0.1",
        port: (taken.addr as Deno.NetAddr).port,
        readiness: new Readiness(),
      });
    } catch (e) {
      error = e;
    }
    assert(error instanceof Deno.errors.AddrInUse, String(error));
  } finally {
    taken.close();
  }
});
