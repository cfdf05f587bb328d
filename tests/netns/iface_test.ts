/**
 * Kernel tests of agent/iface.ts: the external interface chosen from the
 * real links, addresses and routes of a throwaway namespace, read through
 * ffi/netlink.ts.
 *
 * @module
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { kernelTest, Netns } from "../_netns.ts";
import { openNetlink } from "../../ffi/netlink.ts";
import {
  type IfaceOptions,
  selectExternalInterface,
} from "../../agent/iface.ts";
import { setLogSink } from "../../lib/log.ts";

setLogSink(() => {});

/**
 * eth0: 192.0.2.10/24 and 2001:db8::10/64, default routes of both
 * families; eth1: 198.51.100.5/24, the route to 203.0.113.0/24.
 */
async function node(): Promise<Netns> {
  const ns = await Netns.create("iface");
  try {
    // veth pairs: this kernel may lack the dummy driver. The peers stay
    // in the namespace, up, so both ends have carrier.
    for (const [dev, mtu] of [["eth0", "1500"], ["eth1", "9000"]] as const) {
      await ns.ip(
        "link",
        "add",
        dev,
        "type",
        "veth",
        "peer",
        "name",
        `${dev}p`,
      );
      for (const d of [dev, `${dev}p`]) {
        await ns.ip("link", "set", d, "mtu", mtu, "up");
      }
    }
    await ns.ip("addr", "add", "192.0.2.10/24", "dev", "eth0");
    await ns.ip("-6", "addr", "add", "2001:db8::10/64", "dev", "eth0", "nodad");
    await ns.ip("addr", "add", "198.51.100.5/24", "dev", "eth1");
    await ns.ip("route", "add", "default", "via", "192.0.2.1", "dev", "eth0");
    await ns.ip(
      "-6",
      "route",
      "add",
      "default",
      "via",
      "2001:db8::1",
      "dev",
      "eth0",
    );
    await ns.ip(
      "route",
      "add",
      "203.0.113.0/24",
      "via",
      "198.51.100.1",
      "dev",
      "eth1",
    );
    return ns;
  } catch (e) {
    await ns.close();
    throw e;
  }
}

function choose(ns: Netns, opts: IfaceOptions) {
  using nl = openNetlink({ netns: ns.path });
  return selectExternalInterface(nl, opts);
}

kernelTest("iface: the default route's interface and its address", async () => {
  await using ns = await node();
  const eth0 =
    (await ns.json<{ ifindex: number }[]>("link", "show", "eth0"))[0]!
      .ifindex;
  assertEquals(choose(ns, {}), {
    ok: true,
    value: {
      index: eth0,
      name: "eth0",
      mtu: 1500,
      ipv4: "192.0.2.10",
      publicIP: "192.0.2.10",
    },
  });
  const v6 = choose(ns, { enableIPv4: false, enableIPv6: true });
  assertEquals(v6.ok && [v6.value.name, v6.value.ipv6, v6.value.publicIPv6], [
    "eth0",
    "2001:db8::10",
    "2001:db8::10",
  ]);
  const dual = choose(ns, {
    iface: ["eth0"],
    enableIPv6: true,
    publicIP: "203.0.113.77",
  });
  assertEquals(
    dual.ok && [dual.value.ipv4, dual.value.ipv6, dual.value.publicIP],
    ["192.0.2.10", "2001:db8::10", "203.0.113.77"],
  );
});

kernelTest(
  "iface: --iface by name or address, --iface-regex, --iface-can-reach",
  async () => {
    await using ns = await node();
    const pick = (opts: IfaceOptions) => {
      const r = choose(ns, opts);
      if (!r.ok) throw new Error(r.reason);
      return [r.value.name, r.value.mtu, r.value.ipv4];
    };
    const eth1 = ["eth1", 9000, "198.51.100.5"];
    assertEquals(pick({ iface: ["eth1"] }), eth1);
    assertEquals(pick({ iface: ["wlan0", "198.51.100.5"] }), eth1);
    assertEquals(pick({ ifaceRegex: ["^198\\.51\\."] }), eth1);
    assertEquals(pick({ ifaceRegex: ["^eth1$"] }), eth1);
    assertEquals(pick({ ifaceCanReach: "203.0.113.9" }), eth1);
    assertEquals(pick({ publicIP: "198.51.100.5" }), eth1);
  },
);

kernelTest("iface: nothing matching lists what was tried", async () => {
  await using ns = await node();
  assertEquals(
    choose(ns, { iface: ["bond0"], ifaceRegex: ["^10\\."] }),
    {
      ok: false,
      reason: "No interface matches the interface flags: " +
        '--iface "bond0": no interface named "bond0"; ' +
        '--iface-regex "^10\\.": matches no interface name or address ' +
        "(available: lo [127.0.0.1], eth0p [], eth0 [192.0.2.10], eth1p [], eth1 [198.51.100.5])",
    },
  );
  assertEquals(choose(ns, { publicIP: "203.0.113.5" }), {
    ok: false,
    reason:
      'Cannot use --public-ip "203.0.113.5" without --iface: no interface has address "203.0.113.5" (behind NAT, choose the interface with --iface)',
  });
  await ns.ip("route", "del", "default");
  assertEquals(choose(ns, {}), {
    ok: false,
    reason:
      "Cannot choose the interface of the default route: no default route",
  });
});

kernelTest(
  "iface: a deprecated address loses to a permanent one on the same interface",
  async () => {
    await using ns = await node();
    // Added first, so it is listed first; preferred_lft 0 makes it deprecated.
    await ns.ip("addr", "flush", "dev", "eth1");
    await ns.ip(
      "addr",
      "add",
      "198.51.100.4/24",
      "dev",
      "eth1",
      "valid_lft",
      "3600",
      "preferred_lft",
      "0",
    );
    await ns.ip("addr", "add", "198.51.100.5/24", "dev", "eth1");
    const flags = (await ns.json<
      { addr_info: { local: string; deprecated?: boolean }[] }[]
    >(
      "addr",
      "show",
      "dev",
      "eth1",
    ))[0]!.addr_info;
    assertEquals(
      flags.find((a) => a.local === "198.51.100.4")?.deprecated,
      true,
    );
    const r = choose(ns, { iface: ["eth1"] });
    assertEquals(r.ok && r.value.ipv4, "198.51.100.5");
  },
);
