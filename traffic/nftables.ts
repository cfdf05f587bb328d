/**
 * flanneld's nftables rules (`EnableNFTables`): tables `flannel-ipv4` /
 * `flannel-ipv6` written in one `nft -f -` transaction. Pure rendering;
 * applying is the manager's.
 *
 * @module
 */
import { canon, type TrafficSpec } from "./spec.ts";

/** nftables table name of a family. */
export function nftTable(family: 4 | 6): string {
  return family === 4 ? "flannel-ipv4" : "flannel-ipv6";
}

/**
 * The `nft -f -` commands for one family, flanneld's layout: table with
 * comment, `postrtg` nat chain at srcnat, `forward` filter chain, each
 * flushed and refilled in the same transaction.
 */
export function renderNftFamily(spec: TrafficSpec, family: 4 | 6): string[] {
  const nets = family === 4 ? spec.ipv4 : spec.ipv6;
  const fam = family === 4 ? "ip" : "ip6";
  const t = `${fam} ${nftTable(family)}`;
  // flanneld creates both tables at start, whatever is enabled
  // (pkg/trafficmngr/nftables/nftables.go `Init`): so does weft, so that
  // a node's ruleset reads the same under either agent.
  const lines = [
    `add table ${t} { comment "rules for ${nftTable(family)}" ; }`,
  ];
  if (!nets || (!spec.ipMasq && !spec.forwardRules)) return lines;
  const cluster = canon(nets.network);
  const pod = canon(nets.subnet);
  if (spec.ipMasq) {
    const masq = spec.randomFully ? "masquerade fully-random" : "masquerade";
    const multicast = family === 4 ? "224.0.0.0/4" : "ff00::/8";
    const rule = (r: string) => lines.push(`add rule ${t} postrtg ${r}`);
    lines.push(
      `add chain ${t} postrtg { type nat hook postrouting priority srcnat ; comment "chain to manage traffic masquerading by flannel" ; }`,
      `flush chain ${t} postrtg`,
    );
    rule(`meta mark & 0x00004000 == 0x00004000 return`);
    rule(`${fam} saddr ${pod} ${fam} daddr ${cluster} return`);
    rule(`${fam} saddr ${cluster} ${fam} daddr ${pod} return`);
    rule(`${fam} saddr != ${cluster} ${fam} daddr ${pod} return`);
    rule(`${fam} saddr ${cluster} ${fam} daddr != ${multicast} ${masq}`);
    rule(`${fam} saddr != ${cluster} ${fam} daddr ${cluster} ${masq}`);
  }
  if (spec.forwardRules) {
    lines.push(
      `add chain ${t} forward { type filter hook forward priority filter ; comment "chain to accept flannel traffic" ; }`,
      `flush chain ${t} forward`,
      `add rule ${t} forward ${fam} saddr ${cluster} accept`,
      `add rule ${t} forward ${fam} daddr ${cluster} accept`,
    );
  }
  return lines;
}

/** The whole nftables transaction: every enabled family at once. */
export function renderNftables(spec: TrafficSpec): string {
  const lines = [...renderNftFamily(spec, 4), ...renderNftFamily(spec, 6)];
  return lines.length ? lines.join("\n") + "\n" : "";
}

/** Options of {@linkcode TrafficManager}. */
