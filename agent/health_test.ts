import { deepStrictEqual as assertEquals } from "node:assert/strict";
import {
  healthHandler,
  METRICS_CONTENT_TYPE,
  Readiness,
  READY,
} from "./health.ts";
import { Registry } from "../lib/metrics.ts";

async function get(
  handler: (req: Request) => Response,
  path: string,
  method = "GET",
): Promise<[number, string, string | null]> {
  const res = handler(new Request(`http://node:10256${path}`, { method }));
  return [res.status, await res.text(), res.headers.get("content-type")];
}

Deno.test("/healthz answers 200 whatever the readiness", async () => {
  const handler = healthHandler({ readiness: new Readiness() });
  assertEquals(await get(handler, "/healthz"), [
    200,
    "weft is running\n",
    "text/plain; charset=utf-8",
  ]);
});

Deno.test("/readyz is 503 listing what is not ready, then 200 when all are", async () => {
  const readiness = new Readiness();
  const handler = healthHandler({ readiness });
  assertEquals(await get(handler, "/readyz"), [
    503,
    "[-]no readiness condition registered\nreadyz check failed\n",
    "text/plain; charset=utf-8",
  ]);
  const lease = readiness.register(READY.lease);
  const rules = readiness.register(READY.rules);
  const env = readiness.register(READY.subnetEnv);
  lease(true);
  rules(false, 'Command "iptables-restore --noflush" exited 2: line 3 failed');
  assertEquals((await get(handler, "/readyz")).slice(0, 2), [
    503,
    "[+]lease held ok\n" +
    '[-]rules in place: Command "iptables-restore --noflush" exited 2: line 3 failed\n' +
    "[-]subnet.env written: not checked yet\n" +
    "readyz check failed\n",
  ]);
  rules(true);
  env(true, "/run/flannel/subnet.env");
  assertEquals((await get(handler, "/readyz")).slice(0, 2), [
    200,
    "[+]lease held ok\n[+]rules in place ok\n[+]subnet.env written ok\nreadyz check passed\n",
  ]);
  // Registering again keeps the state; a regression shows at once.
  readiness.register(READY.lease);
  readiness.set(READY.lease, false, "lease lost");
  assertEquals((await get(handler, "/readyz"))[0], 503);
  assertEquals(readiness.ready, false);
});

Deno.test("/metrics renders the registry in the Prometheus text format", async () => {
  const registry = new Registry();
  registry.counter("weft_test_total", "A test counter").inc({ kind: "x" }, 2);
  const handler = healthHandler({
    readiness: new Readiness(),
    renderMetrics: () => registry.render(),
  });
  assertEquals(await get(handler, "/metrics"), [
    200,
    '# HELP weft_test_total A test counter\n# TYPE weft_test_total counter\nweft_test_total{kind="x"} 2\n',
    METRICS_CONTENT_TYPE,
  ]);
});

Deno.test("The health handler refuses other paths and methods", async () => {
  const handler = healthHandler({ readiness: new Readiness() });
  assertEquals((await get(handler, "/nope")).slice(0, 2), [
    404,
    'No such path "/nope"\n',
  ]);
  const res = handler(
    new Request("http://node/healthz", { method: "POST", body: "x" }),
  );
  assertEquals(res.status, 405);
  assertEquals(res.headers.get("allow"), "GET, HEAD");
  assertEquals((await get(handler, "/healthz", "HEAD"))[0], 200);
});

Deno.test("/readyz?verbose lists informational lines that never make the node unready", async () => {
  const readiness = new Readiness();
  const handler = healthHandler({ readiness });
  readiness.register(READY.lease)(true);
  readiness.inform("failing peers", 'node "b" (IPv4): route replace failed');
  assertEquals((await get(handler, "/readyz")).slice(0, 2), [
    200,
    "[+]lease held ok\nreadyz check passed\n",
  ]);
  assertEquals((await get(handler, "/readyz?verbose")).slice(0, 2), [
    200,
    "[+]lease held ok\n" +
    '[i]failing peers: node "b" (IPv4): route replace failed\n' +
    "readyz check passed\n",
  ]);
  readiness.inform("failing peers", "");
  assertEquals(
    (await get(handler, "/readyz?verbose"))[1],
    "[+]lease held ok\nreadyz check passed\n",
  );
});

Deno.test("Every request brings the conditions up to date first (onRead), with no timer", async () => {
  const readiness = new Readiness();
  const peers = readiness.register(READY.peers);
  let synced = false;
  let reads = 0;
  readiness.onRead(() => {
    reads++;
    peers(synced, synced ? "ok" : "waiting for the first listing");
  });
  const handler = healthHandler({ readiness });
  assertEquals((await get(handler, "/readyz"))[0], 503);
  synced = true;
  // Nothing reported the change: the read itself looks.
  assertEquals((await get(handler, "/readyz"))[0], 200);
  await get(handler, "/metrics");
  assertEquals(reads, 3);
});
