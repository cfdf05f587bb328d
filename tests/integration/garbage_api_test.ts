/**
 * An etcd endpoint answering 200 with bodies that are not range
 * responses: the client must refuse them rather than read "no keys",
 * which would withdraw every peer's routes.
 *
 * @module
 */
import assert from "node:assert/strict";
import { EtcdClient } from "../../subnet/etcd/client.ts";

Deno.test("EtcdClient refuses a 200 that is not a range response", async () => {
  let body = "";
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen: () => {} },
    () =>
      new Response(body, { headers: { "content-type": "application/json" } }),
  );
  const url = `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
  const client = new EtcdClient({ endpoints: [url], requestTimeoutMs: 2000 });
  try {
    for (
      const garbage of [
        "{}",
        '{"kind":"NodeList","items":{"not":"a list"},"header":{"revision":[]},"kvs":"x","result":7}',
        '{"header":{"revision":"9"},"kvs":"x"}',
        '{"header":{"revision":"9"},"kvs":[{"value":"eA=="}]}',
      ]
    ) {
      body = garbage;
      await assert.rejects(
        client.rangePrefix("/coreos.com/network/subnets/"),
        /answered 200 with a body that is not a range response/,
        garbage,
      );
    }
    body = "<!DOCTYPE html><html><body>Bad Gateway</body></html>";
    await assert.rejects(
      client.rangePrefix("/coreos.com/network/subnets/"),
      /not JSON/,
    );
    // A real empty answer: the header, no kvs (proto3 omits empty lists).
    body = '{"header":{"revision":"12"}}';
    const r = await client.rangePrefix("/coreos.com/network/subnets/");
    assert.deepEqual(r, { revision: 12n, kvs: [] });
  } finally {
    client.close();
    ac.abort();
    await server.finished;
  }
});
