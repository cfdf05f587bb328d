import assert from "node:assert/strict";
import { MemoryKernel } from "../backend/memory_kernel.ts";
import { ensureBlackholeRoutes } from "./blackhole.ts";
import { setLogSink } from "../lib/log.ts";

setLogSink(() => {});

Deno.test("ensureBlackholeRoutes() adds a missing blackhole route per family, once", () => {
  const kernel = new MemoryKernel();
  const subnets = ["10.244.1.0/24", "fc00:0:0:1::/64"];
  assert.deepEqual(ensureBlackholeRoutes(kernel, subnets), subnets);
  assert.deepEqual(
    kernel.routes.map((r) => `${r.blackhole ? "blackhole " : ""}${r.dst}`),
    ["blackhole 10.244.1.0/24", "blackhole fc00:0:0:1::/64"],
  );
  assert.deepEqual(ensureBlackholeRoutes(kernel, subnets), []);
  assert.equal(kernel.routes.length, 2);
  kernel.routes = kernel.routes.slice(1);
  assert.deepEqual(ensureBlackholeRoutes(kernel, subnets), ["10.244.1.0/24"]);
});

Deno.test("ensureBlackholeRoutes() never replaces another route to the subnet", () => {
  const kernel = new MemoryKernel();
  const cni0 = kernel.addDevice("cni0");
  kernel.routeReplace({ dst: "10.244.1.0/24", index: cni0.index });
  assert.deepEqual(ensureBlackholeRoutes(kernel, ["10.244.1.0/24"]), []);
  assert.deepEqual(kernel.routes.map((r) => [r.dst, r.index, r.blackhole]), [
    ["10.244.1.0/24", cni0.index, undefined],
  ]);
});
