import {
  deepStrictEqual as assertEquals,
  ok as assert,
  rejects,
} from "node:assert/strict";
import {
  chainDrift,
  type CommandRunner,
  desiredChains,
  forwardRules,
  masqRules,
  parseIptablesSave,
  renderNftables,
  renderRestore,
  type SavedTables,
  TrafficManager,
  type TrafficSpec,
} from "./traffic.ts";
import { setLogSink } from "./log.ts";

setLogSink(() => {});

const v4 = { network: "10.244.0.0/16", subnet: "10.244.1.0/24" };
const v6 = { network: "fd00:10:244::/56", subnet: "fd00:10:244:1::/64" };
const spec: TrafficSpec = {
  ipMasq: true,
  forwardRules: true,
  randomFully: true,
  ipv4: v4,
};

const FLANNEL_V4_NAT = [
  '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
  '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
  '-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
  '-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
  '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN',
  '-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
  '-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
];

Deno.test("masqRules() renders flanneld's six rules as iptables-save prints them", () => {
  assertEquals(
    masqRules(4, v4, true).map((r) => `-A FLANNEL-POSTRTG ${r}`),
    FLANNEL_V4_NAT.slice(1),
  );
  assertEquals(
    masqRules(6, v6, false).slice(4),
    [
      '-s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE',
      '! -s fd00:10:244::/56 -d fd00:10:244::/56 -m comment --comment "flanneld masq" -j MASQUERADE',
    ],
  );
  assertEquals(forwardRules("10.244.0.0/16"), [
    '-s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
    '-d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
  ]);
});

Deno.test("desiredChains() follows --ip-masq, --iptables-forward-rules and the families", () => {
  assertEquals(desiredChains(spec, 4).map((c) => c.chain), [
    "FLANNEL-POSTRTG",
    "FLANNEL-FWD",
  ]);
  assertEquals(desiredChains(spec, 6), []);
  assertEquals(
    desiredChains({ ...spec, ipMasq: false }, 4).map((c) => c.chain),
    ["FLANNEL-FWD"],
  );
  assertEquals(
    desiredChains({ ...spec, forwardRules: false, ipv6: v6 }, 6).map((c) =>
      c.chain
    ),
    ["FLANNEL-POSTRTG"],
  );
});

Deno.test("renderRestore() flushes our chain, moves the jump to the end and deletes stale rules", () => {
  const saved = parseIptablesSave(
    [
      "*nat",
      ":POSTROUTING ACCEPT [0:0]",
      ":FLANNEL-POSTRTG - [0:0]",
      '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
      '-A POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
      "-A POSTROUTING -j KUBE-POSTROUTING",
      "COMMIT",
      "",
    ].join("\n"),
  );
  const nat = desiredChains(spec, 4).filter((c) => c.table === "nat");
  assertEquals(
    renderRestore("nat", nat, saved),
    [
      "*nat",
      ":FLANNEL-POSTRTG - [0:0]",
      '-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
      '-D POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
      ...FLANNEL_V4_NAT,
      "COMMIT",
      "",
    ].join("\n"),
  );
  assertEquals(chainDrift(nat[0]!, saved), [
    'rule "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN" is missing',
    'rule "-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN" is missing',
    'rule "-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN" is missing',
    'rule "-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN" is missing',
    'rule "-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully" is missing',
    'rule "-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully" is missing',
    'stale rule "-A POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN"',
  ]);
});

Deno.test("chainDrift() sees a reordered chain and a doubled jump", () => {
  const [nat] = desiredChains(spec, 4);
  const rules = [...nat!.rules];
  [rules[0], rules[1]] = [rules[1]!, rules[0]!];
  const saved: SavedTables = new Map([[
    "nat",
    new Map([
      ["POSTROUTING", [nat!.jump, nat!.jump]],
      ["FLANNEL-POSTRTG", rules],
    ]),
  ]]);
  assertEquals(chainDrift(nat!, saved), [
    "chain nat/FLANNEL-POSTRTG is out of order",
    `rule "-A POSTROUTING ${nat!.jump}" appears 2 times`,
  ]);
});

Deno.test("renderNftables() writes flanneld's tables and chains in one transaction", () => {
  assertEquals(
    renderNftables({ ...spec, ipv6: v6, randomFully: false }),
    [
      'add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }',
      'add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat ; comment "chain to manage traffic masquerading by flannel" ; }',
      "flush chain ip flannel-ipv4 postrtg",
      "add rule ip flannel-ipv4 postrtg meta mark & 0x00004000 == 0x00004000 return",
      "add rule ip flannel-ipv4 postrtg ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return",
      "add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return",
      "add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return",
      "add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade",
      "add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade",
      'add chain ip flannel-ipv4 forward { type filter hook forward priority filter ; comment "chain to accept flannel traffic" ; }',
      "flush chain ip flannel-ipv4 forward",
      "add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept",
      "add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept",
      'add table ip6 flannel-ipv6 { comment "rules for flannel-ipv6" ; }',
      'add chain ip6 flannel-ipv6 postrtg { type nat hook postrouting priority srcnat ; comment "chain to manage traffic masquerading by flannel" ; }',
      "flush chain ip6 flannel-ipv6 postrtg",
      "add rule ip6 flannel-ipv6 postrtg meta mark & 0x00004000 == 0x00004000 return",
      "add rule ip6 flannel-ipv6 postrtg ip6 saddr fd00:10:244:1::/64 ip6 daddr fd00:10:244::/56 return",
      "add rule ip6 flannel-ipv6 postrtg ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return",
      "add rule ip6 flannel-ipv6 postrtg ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return",
      "add rule ip6 flannel-ipv6 postrtg ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade",
      "add rule ip6 flannel-ipv6 postrtg ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade",
      'add chain ip6 flannel-ipv6 forward { type filter hook forward priority filter ; comment "chain to accept flannel traffic" ; }',
      "flush chain ip6 flannel-ipv6 forward",
      "add rule ip6 flannel-ipv6 forward ip6 saddr fd00:10:244::/56 accept",
      "add rule ip6 flannel-ipv6 forward ip6 daddr fd00:10:244::/56 accept",
      "",
    ].join("\n"),
  );
  assertEquals(
    renderNftables({ ...spec, ipMasq: false, forwardRules: false }),
    "",
  );
});

/**
 * An in-memory iptables: `iptables-save -t T` prints the state and
 * `iptables-restore --noflush` applies chain declarations (flush), `-D`
 * and `-A` the way the real one does.
 */
function fakeIptables(version = "v1.8.9") {
  const tables = new Map<string, Map<string, string[]>>([
    ["nat", new Map([["POSTROUTING", ["-j KUBE-POSTROUTING"]]])],
    ["filter", new Map([["FORWARD", []]])],
  ]);
  const calls: string[] = [];
  const run: CommandRunner = (cmd, stdin) => {
    calls.push(cmd.join(" "));
    const out = (stdout: string, code = 0) =>
      Promise.resolve({ code, stdout, stderr: code ? stdout : "" });
    if (cmd[0] === "iptables-restore" && cmd[1] === "--version") {
      return out(`iptables-restore ${version} (nf_tables)\n`);
    }
    if (cmd[0] === "iptables-save") {
      const t = tables.get(cmd[2]!)!;
      const lines = [`*${cmd[2]}`];
      for (const c of t.keys()) lines.push(`:${c} - [0:0]`);
      for (const [c, rules] of t) {
        for (const r of rules) lines.push(`-A ${c} ${r}`);
      }
      lines.push("COMMIT");
      return out(lines.join("\n") + "\n");
    }
    if (cmd[0] === "iptables-restore") {
      let t: Map<string, string[]> | undefined;
      for (const line of stdin!.split("\n")) {
        if (line.startsWith("*")) t = tables.get(line.slice(1));
        else if (line.startsWith(":")) t!.set(line.slice(1).split(" ")[0]!, []);
        else if (line.startsWith("-A ") || line.startsWith("-D ")) {
          const [op, chain, ...rest] = line.split(" ");
          const rule = rest.join(" ");
          const list = t!.get(chain!);
          if (!list) return out(`No chain ${chain}`, 1);
          if (op === "-A") list.push(rule);
          else {
            const i = list.indexOf(rule);
            if (i < 0) return out(`Bad rule: ${rule}`, 1);
            list.splice(i, 1);
          }
        }
      }
      return out("");
    }
    return out(`unexpected ${cmd.join(" ")}`, 127);
  };
  return { tables, calls, run };
}

Deno.test("TrafficManager.ensure() installs the rules once and then leaves them alone", async () => {
  const ipt = fakeIptables();
  const states: [boolean, string][] = [];
  const tm = new TrafficManager({
    spec,
    run: ipt.run,
    onState: (ready, detail) => states.push([ready, detail]),
  });
  const first = await tm.ensure();
  assert(first.changed);
  assertEquals(ipt.tables.get("nat")!.get("POSTROUTING"), [
    "-j KUBE-POSTROUTING",
    '-m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
  ]);
  assertEquals(
    ipt.tables.get("nat")!.get("FLANNEL-POSTRTG")!.map((r) =>
      `-A FLANNEL-POSTRTG ${r}`
    ),
    FLANNEL_V4_NAT.slice(1),
  );
  assertEquals(ipt.tables.get("filter")!.get("FLANNEL-FWD")!.length, 2);
  assert(ipt.calls.includes("iptables-restore --noflush --wait"));
  const second = await tm.ensure();
  assertEquals(second, { changed: false, reasons: [] });
  assert(tm.ready);
  assertEquals(states.at(-1), [true, "rules in place"]);

  // A rule deleted by hand comes back, in its place.
  ipt.tables.get("nat")!.get("FLANNEL-POSTRTG")!.splice(2, 1);
  const third = await tm.ensure();
  assertEquals(third.reasons, [
    'IPv4 rule "-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN" is missing',
  ]);
  assertEquals(
    ipt.tables.get("nat")!.get("FLANNEL-POSTRTG")!.map((r) =>
      `-A FLANNEL-POSTRTG ${r}`
    ),
    FLANNEL_V4_NAT.slice(1),
  );
});

Deno.test("TrafficManager drops --random-fully and --wait before iptables 1.6.2", async () => {
  const ipt = fakeIptables("v1.6.1");
  const tm = new TrafficManager({ spec, run: ipt.run });
  await tm.ensure();
  assert(ipt.calls.includes("iptables-restore --noflush"));
  const masq = ipt.tables.get("nat")!.get("FLANNEL-POSTRTG")!;
  assert(masq.every((r) => !r.includes("--random-fully")));
});

Deno.test("TrafficManager reports a failed restore as not ready, naming the command", async () => {
  const ipt = fakeIptables();
  const failing: CommandRunner = (cmd, stdin) =>
    cmd[0] === "iptables-restore" && cmd[1] === "--noflush"
      ? Promise.resolve({ code: 2, stdout: "", stderr: "line 3 failed" })
      : ipt.run(cmd, stdin);
  const states: [boolean, string][] = [];
  const tm = new TrafficManager({
    spec,
    run: failing,
    onState: (ready, detail) => states.push([ready, detail]),
  });
  await rejects(tm.ensure(), /exited 2: line 3 failed/);
  assertEquals(tm.ready, false);
  assertEquals(states, [[
    false,
    'Command "iptables-restore --noflush --wait" exited 2: line 3 failed',
  ]]);
});

Deno.test("TrafficManager.run() checks every resync period until aborted", async () => {
  const ipt = fakeIptables();
  const tm = new TrafficManager({ spec, run: ipt.run, resyncSeconds: 0.01 });
  const ac = new AbortController();
  const done = tm.run(ac.signal);
  await new Promise((r) => setTimeout(r, 60));
  ac.abort();
  await done;
  const saves = ipt.calls.filter((c) => c === "iptables-save -t nat").length;
  assert(saves >= 3, `checked ${saves} times`);
  assert(tm.ready);
});

Deno.test("TrafficManager with no rule wanted runs no command", async () => {
  const ipt = fakeIptables();
  const tm = new TrafficManager({
    spec: { ...spec, ipMasq: false, forwardRules: false },
    run: ipt.run,
  });
  assertEquals(await tm.ensure(), { changed: false, reasons: [] });
  assertEquals(ipt.calls, []);
  assert(tm.ready);
});

Deno.test("TrafficManager.ensure() calls do not interleave", async () => {
  const ipt = fakeIptables();
  const tm = new TrafficManager({ spec, run: ipt.run });
  const results = await Promise.all([tm.ensure(), tm.ensure(), tm.ensure()]);
  // Only the first finds anything to do; interleaved, all three would
  // have read the empty tables and restored the rules three times.
  assertEquals(results.map((r) => r.changed), [true, false, false]);
  assertEquals(
    ipt.calls.filter((c) => c.startsWith("iptables-restore --noflush")).length,
    1,
  );
});
