/**
 * Kernel tests of traffic/: rules applied inside a throwaway
 * network namespace (every command runs under `ip netns exec`), read back
 * with iptables-save / nft, broken by hand and repaired. The host's own
 * rules are compared before and after to prove they were never touched.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import { kernelTest, Netns, run } from "../_netns.ts";
import { commandRunner } from "../../lib/command.ts";
import { TrafficManager } from "../../traffic/manager.ts";
import {
  FLANNEL_V4_FILTER as FILTER_V4,
  FLANNEL_V4_NAT as NAT_V4,
  SPEC as spec,
} from "../../traffic/_testing.ts";
import { setLogSink } from "../../lib/log.ts";

setLogSink(() => {});

async function rules(
  ns: Netns,
  save: string,
  table: string,
): Promise<string[]> {
  const out = await ns.exec([save, "-t", table]);
  return out.split("\n").filter((l) => l.startsWith("-A "));
}

/** The host's rules, to check that a test left them alone. */
async function hostRules(): Promise<string> {
  const parts = await Promise.all([
    run(["iptables-save"]),
    run(["ip6tables-save"]),
    run(["nft", "list", "ruleset"]),
  ]);
  return parts.map((p) => p.stdout.replace(/^#.*\n/gm, "")).join("\n---\n");
}

kernelTest(
  "traffic: iptables rules match flanneld's and are repaired after a manual delete",
  async () => {
    const before = await hostRules();
    await using ns = await Netns.create("ipt");
    const tm = new TrafficManager({
      spec,
      run: commandRunner({ prefix: ["ip", "netns", "exec", ns.name] }),
    });
    assert((await tm.ensure()).changed);
    assertEquals(await rules(ns, "iptables-save", "nat"), NAT_V4);
    assertEquals(await rules(ns, "iptables-save", "filter"), FILTER_V4);
    assertEquals(await tm.ensure(), { changed: false, reasons: [] });

    // Someone deletes the third masquerade rule: it comes back in place.
    await ns.exec(["iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "3"]);
    assertEquals((await rules(ns, "iptables-save", "nat")).length, 6);
    const repaired = await tm.ensure();
    assertEquals(repaired.reasons, [
      'IPv4 rule "-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN" is missing',
    ]);
    assertEquals(await rules(ns, "iptables-save", "nat"), NAT_V4);

    // The FORWARD jump is deleted: it is appended again.
    await ns.exec(["iptables", "-I", "FORWARD", "-j", "ACCEPT"]);
    await ns.exec([
      "iptables",
      "-D",
      "FORWARD",
      "-m",
      "comment",
      "--comment",
      "flanneld forward",
      "-j",
      "FLANNEL-FWD",
    ]);
    assert((await tm.ensure()).changed);
    assertEquals(await rules(ns, "iptables-save", "filter"), [
      "-A FORWARD -j ACCEPT",
      ...FILTER_V4,
    ]);
    assertEquals(await hostRules(), before);
  },
);

kernelTest(
  "traffic: rules flanneld left behind are adopted without a rewrite, stale ones removed",
  async () => {
    await using ns = await Netns.create("ipt");
    // What flanneld leaves on a node: its chains, plus a rule of an older
    // flanneld that masqueraded straight from POSTROUTING.
    await ns.exec(
      ["iptables-restore", "--noflush"],
      [
        "*nat",
        ":FLANNEL-POSTRTG - [0:0]",
        ...NAT_V4,
        "COMMIT",
        "*filter",
        ":FLANNEL-FWD - [0:0]",
        ...FILTER_V4,
        "COMMIT",
        "",
      ].join("\n"),
    );
    const tm = new TrafficManager({
      spec,
      run: commandRunner({ prefix: ["ip", "netns", "exec", ns.name] }),
    });
    assertEquals(await tm.ensure(), { changed: false, reasons: [] });

    await ns.exec([
      "iptables",
      "-t",
      "nat",
      "-I",
      "POSTROUTING",
      "-s",
      "10.5.0.0/16",
      "-d",
      "10.5.0.0/16",
      "-m",
      "comment",
      "--comment",
      "flanneld masq",
      "-j",
      "RETURN",
    ]);
    const r = await tm.ensure();
    assertEquals(r.reasons, [
      'IPv4 stale rule "-A POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN"',
    ]);
    assertEquals(await rules(ns, "iptables-save", "nat"), NAT_V4);
  },
);

kernelTest("traffic: IPv6 rules go through ip6tables-restore", async () => {
  await using ns = await Netns.create("ip6t");
  const tm = new TrafficManager({
    spec: {
      ...spec,
      randomFully: false,
      ipv6: { network: "fd00:10:244::/56", subnet: "fd00:10:244:1::/64" },
    },
    run: commandRunner({ prefix: ["ip", "netns", "exec", ns.name] }),
  });
  await tm.ensure();
  assertEquals(await rules(ns, "ip6tables-save", "nat"), [
    '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s fd00:10:244:1::/64 -d fd00:10:244::/56 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s fd00:10:244::/56 -d fd00:10:244:1::/64 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244:1::/64 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE',
    '-A FLANNEL-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244::/56 -m comment --comment "flanneld masq" -j MASQUERADE',
  ]);
  assertEquals(await rules(ns, "ip6tables-save", "filter"), [
    '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
    '-A FLANNEL-FWD -s fd00:10:244::/56 -m comment --comment "flanneld forward" -j ACCEPT',
    '-A FLANNEL-FWD -d fd00:10:244::/56 -m comment --comment "flanneld forward" -j ACCEPT',
  ]);
  assertEquals((await rules(ns, "iptables-save", "nat")).length, 7);
  assertEquals(await tm.ensure(), { changed: false, reasons: [] });
});

interface NftRule {
  rule: { chain: string; handle: number; expr: unknown[] };
}

kernelTest(
  "traffic: nftables tables are written in one transaction and repaired",
  async () => {
    const before = await hostRules();
    await using ns = await Netns.create("nft");
    const tm = new TrafficManager({
      spec: {
        ...spec,
        ipv6: { network: "fd00:10:244::/56", subnet: "fd00:10:244:1::/64" },
      },
      nftables: true,
      run: commandRunner({ prefix: ["ip", "netns", "exec", ns.name] }),
    });
    await tm.ensure();
    const v4 = await ns.exec(["nft", "list", "table", "ip", "flannel-ipv4"]);
    assertEquals(
      v4,
      [
        "table ip flannel-ipv4 {",
        '\tcomment "rules for flannel-ipv4"',
        "\tchain postrtg {",
        '\t\tcomment "chain to manage traffic masquerading by flannel"',
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        "\t\tmeta mark & 0x00004000 == 0x00004000 return",
        "\t\tip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return",
        "\t\tip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return",
        "\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return",
        "\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
        "\t}",
        "",
        "\tchain forward {",
        '\t\tcomment "chain to accept flannel traffic"',
        "\t\ttype filter hook forward priority filter; policy accept;",
        "\t\tip saddr 10.244.0.0/16 accept",
        "\t\tip daddr 10.244.0.0/16 accept",
        "\t}",
        "}",
        "",
      ].join("\n"),
    );
    const v6 = await ns.exec(["nft", "list", "table", "ip6", "flannel-ipv6"]);
    assert(
      v6.includes(
        "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random",
      ),
    );
    assertEquals(await tm.ensure(), { changed: false, reasons: [] });

    // Delete one rule by handle: ensure() notices and restores the table.
    const listing = JSON.parse(
      await ns.exec([
        "nft",
        "-j",
        "list",
        "chain",
        "ip",
        "flannel-ipv4",
        "postrtg",
      ]),
    ) as { nftables: (NftRule | Record<string, unknown>)[] };
    const handles = listing.nftables
      .filter((o): o is NftRule => "rule" in o)
      .map((o) => o.rule.handle);
    assertEquals(handles.length, 6);
    await ns.exec([
      "nft",
      "delete",
      "rule",
      "ip",
      "flannel-ipv4",
      "postrtg",
      "handle",
      String(handles[2]),
    ]);
    const r = await tm.ensure();
    assertEquals(r.reasons, ["table flannel-ipv4 was changed"]);
    assertEquals(
      await ns.exec(["nft", "list", "table", "ip", "flannel-ipv4"]),
      v4,
    );

    // The whole table deleted: rebuilt.
    await ns.exec(["nft", "delete", "table", "ip6", "flannel-ipv6"]);
    assertEquals((await tm.ensure()).reasons, [
      "table flannel-ipv6 is missing",
    ]);
    assertEquals(
      await ns.exec(["nft", "list", "table", "ip6", "flannel-ipv6"]),
      v6,
    );
    assertEquals(await hostRules(), before);
  },
);

kernelTest(
  "traffic: switching between iptables and nftables removes the other manager's rules, as flanneld does at start",
  async () => {
    await using ns = await Netns.create("ipt-nft");
    const inNs = commandRunner({ prefix: ["ip", "netns", "exec", ns.name] });
    const ipt = new TrafficManager({ spec, run: inNs });
    await ipt.ensure();
    // Something else's rule in the same hook chains stays.
    await ns.exec([
      "iptables",
      "-t",
      "nat",
      "-A",
      "POSTROUTING",
      "-j",
      "RETURN",
    ]);
    const nft = new TrafficManager({ spec, run: inNs, nftables: true });
    assertEquals(await nft.cleanUpOther(), ["IPv4 iptables chains"]);
    assertEquals(await rules(ns, "iptables-save", "nat"), [
      "-A POSTROUTING -j RETURN",
    ]);
    assertEquals(await rules(ns, "iptables-save", "filter"), []);
    const saved = await ns.exec(["iptables-save"]);
    assert(!saved.includes("FLANNEL"), saved);
    await nft.ensure();
    // Throws when the table is missing.
    await ns.exec(["nft", "list", "table", "ip", "flannel-ipv4"]);

    // And back: the nftables tables go, the iptables chains come back.
    const back = new TrafficManager({ spec, run: inNs });
    // nftables mode writes both tables, as flanneld does: both go.
    assertEquals(await back.cleanUpOther(), [
      "nftables table ip flannel-ipv4",
      "nftables table ip6 flannel-ipv6",
    ]);
    const gone = await run([
      "ip",
      "netns",
      "exec",
      ns.name,
      "nft",
      "list",
      "table",
      "ip",
      "flannel-ipv4",
    ]);
    assert(gone.code !== 0, "flannel-ipv4 is deleted");
    await back.ensure();
    assertEquals(await rules(ns, "iptables-save", "nat"), [
      "-A POSTROUTING -j RETURN",
      ...NAT_V4,
    ]);
    // Nothing of the other manager left: a second cleanup finds nothing.
    assertEquals(await back.cleanUpOther(), []);
  },
);
