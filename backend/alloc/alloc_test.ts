import assert from "node:assert/strict";
import { parseNetConfig } from "../../subnet/config.ts";
import { unwrap } from "../../lib/result.ts";
import { MemoryKernel } from "../memory_kernel.ts";
import { createBackend } from "../registry.ts";

Deno.test("alloc publishes only the public IP, no backend type or data, and plans no kernel entries", () => {
  const kernel = new MemoryKernel();
  const config = unwrap(
    parseNetConfig('{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}'),
  );
  const b = unwrap(createBackend(kernel, config, {
    index: 2,
    name: "eth0",
    mtu: 1400,
    ifaceAddr: "198.18.0.1",
    publicIP: "203.0.113.1",
  }));
  assert.equal(b.type, "alloc");
  const attrs = b.prepare();
  assert.deepEqual(attrs, { backendType: "", publicIP: "203.0.113.1" });
  const net = b.start({ key: "n1", subnet: "10.244.1.0/24", attrs });
  assert.deepEqual(net, { mtu: 1400, families: [] });
  assert.equal(kernel.links.size, 0);
  assert.deepEqual(kernel.routes, []);
});
