import { MemoryKernel } from "./memory_kernel.ts";
import { netlinkContract } from "./_netlink_contract.ts";

netlinkContract("in-memory kernel", (name, fn) => Deno.test(name, fn), () => {
  const nl = new MemoryKernel();
  const underlay = nl.addDevice("eth0");
  nl.addrs.push({ index: underlay.index, local: "198.18.0.1/24" });
  nl.routes.push({
    dst: "198.18.0.0/24",
    index: underlay.index,
    scope: 253,
    src: "198.18.0.1",
  });
  return Promise.resolve({
    nl,
    underlay,
    [Symbol.asyncDispose]: () => Promise.resolve(),
  });
});
