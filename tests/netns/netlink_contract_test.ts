/**
 * Kernel tier of the Netlink contract (`backend/_netlink_contract.ts`):
 * the same cases the in-memory kernel passes in the unit tier, run
 * through libnl in a throwaway namespace.
 */
import { kernelTest, Netns } from "../_netns.ts";
import { openNetlink } from "../../ffi/netlink.ts";
import { netlinkContract } from "../../backend/_netlink_contract.ts";

netlinkContract("libnl", kernelTest, async () => {
  const ns = await Netns.create("contract");
  try {
    await ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1");
    await ns.ip("addr", "add", "198.18.0.1/24", "dev", "eth0");
    await ns.ip("link", "set", "eth0", "up");
    await ns.ip("link", "set", "eth1", "up");
    const nl = openNetlink({ netns: ns.path });
    return {
      nl,
      underlay: nl.linkByName("eth0")!,
      async [Symbol.asyncDispose]() {
        nl.close();
        await ns[Symbol.asyncDispose]();
      },
    };
  } catch (e) {
    await ns[Symbol.asyncDispose]();
    throw e;
  }
});
