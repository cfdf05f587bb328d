import assert from "node:assert/strict";
import {
  b64,
  EtcdClient,
  EtcdError,
  isTransient,
  prefixRangeEnd,
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
