import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { renderNftables } from "./nftables.ts";
import { SPEC as spec, V6 as v6 } from "./_testing.ts";

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
  // Both tables exist whatever is enabled, as flanneld's Init creates them.
  assertEquals(
    renderNftables({ ...spec, ipMasq: false, forwardRules: false }),
    [
      'add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }',
      'add table ip6 flannel-ipv6 { comment "rules for flannel-ipv6" ; }',
      "",
    ].join("\n"),
  );
});
