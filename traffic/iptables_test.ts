import { deepStrictEqual as assertEquals } from "node:assert/strict";
import {
  chainDrift,
  desiredChains,
  forwardRules,
  masqRules,
  parseIptablesSave,
  renderCleanup,
  renderRestore,
  type SavedTables,
} from "./iptables.ts";
import {
  FLANNEL_V4_NAT,
  SPEC as spec,
  V4 as v4,
  V6 as v6,
} from "./_testing.ts";

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

Deno.test("renderCleanup() deletes the jumps by chain name or comment, then flushes and deletes our chains", () => {
  const saved = parseIptablesSave([
    "*nat",
    ":POSTROUTING ACCEPT [0:0]",
    ":FLANNEL-POSTRTG - [0:0]",
    "-A POSTROUTING -j RETURN",
    '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    "-A POSTROUTING -j FLANNEL-POSTRTG",
    '-A FLANNEL-POSTRTG -m comment --comment "flanneld masq" -j RETURN',
    "COMMIT",
  ].join("\n"));
  assertEquals(
    renderCleanup("nat", saved),
    [
      "*nat",
      '-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
      "-D POSTROUTING -j FLANNEL-POSTRTG",
      "-F FLANNEL-POSTRTG",
      "-X FLANNEL-POSTRTG",
      "COMMIT",
      "",
    ].join("\n"),
  );
  assertEquals(renderCleanup("filter", saved), "");
  assertEquals(
    renderCleanup(
      "nat",
      parseIptablesSave("*nat\n:POSTROUTING ACCEPT\nCOMMIT\n"),
    ),
    "",
  );
});
