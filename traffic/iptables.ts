/**
 * flanneld's iptables rules (its `trafficmngr/iptables`): nat chain
 * `FLANNEL-POSTRTG` jumped to from `POSTROUTING` and filter chain
 * `FLANNEL-FWD` jumped to from `FORWARD`, rule for rule the text
 * `iptables-save` prints for flanneld's rules. Pure: rendering, parsing
 * `iptables-save` and deciding drift; applying is the manager's.
 *
 * @module
 */
import { canon, type FamilyNets, type TrafficSpec } from "./spec.ts";

/** nat chain of the masquerade rules. */
export const MASQ_CHAIN = "FLANNEL-POSTRTG";
/** filter chain of the forward rules. */
export const FWD_CHAIN = "FLANNEL-FWD";
/** kube-proxy's masquerade mark, which flanneld leaves alone. */
export const KUBE_PROXY_MARK = "0x4000/0x4000";

const MASQ_COMMENT = `-m comment --comment "flanneld masq"`;
const FWD_COMMENT = `-m comment --comment "flanneld forward"`;

/** One of our chains, the hook chain that jumps to it, and its rules. */
export interface ChainRules {
  readonly table: "nat" | "filter";
  /** Built-in chain holding the jump: `POSTROUTING` or `FORWARD`. */
  readonly hook: string;
  /** Our chain: `FLANNEL-POSTRTG` or `FLANNEL-FWD`. */
  readonly chain: string;
  /** The comment match every rule of ours carries. */
  readonly comment: string;
  /** The jump rule in `hook`, as `iptables-save` prints it after `-A hook`. */
  readonly jump: string;
  /** Rules of `chain` in order, as `iptables-save` prints them after `-A chain`. */
  readonly rules: readonly string[];
}

/**
 * flanneld's masquerade rules (`masqRules` / `masqIP6Rules`) for one
 * family, in order, as `iptables-save` prints them.
 */
export function masqRules(
  family: 4 | 6,
  nets: FamilyNets,
  randomFully: boolean,
): string[] {
  const cluster = canon(nets.network);
  const pod = canon(nets.subnet);
  const multicast = family === 4 ? "224.0.0.0/4" : "ff00::/8";
  const masq = randomFully ? "MASQUERADE --random-fully" : "MASQUERADE";
  return [
    `-m mark --mark ${KUBE_PROXY_MARK} ${MASQ_COMMENT} -j RETURN`,
    `-s ${pod} -d ${cluster} ${MASQ_COMMENT} -j RETURN`,
    `-s ${cluster} -d ${pod} ${MASQ_COMMENT} -j RETURN`,
    `! -s ${cluster} -d ${pod} ${MASQ_COMMENT} -j RETURN`,
    `-s ${cluster} ! -d ${multicast} ${MASQ_COMMENT} -j ${masq}`,
    `! -s ${cluster} -d ${cluster} ${MASQ_COMMENT} -j ${masq}`,
  ];
}

/** flanneld's forward rules (`forwardRules`) for a cluster network. */
export function forwardRules(network: string): string[] {
  const cluster = canon(network);
  return [
    `-s ${cluster} ${FWD_COMMENT} -j ACCEPT`,
    `-d ${cluster} ${FWD_COMMENT} -j ACCEPT`,
  ];
}

/** The chains of one family the spec asks for (none when disabled). */
export function desiredChains(spec: TrafficSpec, family: 4 | 6): ChainRules[] {
  const nets = family === 4 ? spec.ipv4 : spec.ipv6;
  if (!nets) return [];
  const out: ChainRules[] = [];
  if (spec.ipMasq) {
    out.push({
      table: "nat",
      hook: "POSTROUTING",
      chain: MASQ_CHAIN,
      comment: MASQ_COMMENT,
      jump: `${MASQ_COMMENT} -j ${MASQ_CHAIN}`,
      rules: masqRules(family, nets, spec.randomFully),
    });
  }
  if (spec.forwardRules) {
    out.push({
      table: "filter",
      hook: "FORWARD",
      chain: FWD_CHAIN,
      comment: FWD_COMMENT,
      jump: `${FWD_COMMENT} -j ${FWD_CHAIN}`,
      rules: forwardRules(nets.network),
    });
  }
  return out;
}

/** `iptables-save` output: table → chain → rule specs (after `-A chain`). */
export type SavedTables = Map<string, Map<string, string[]>>;

/** Parses `iptables-save` output. Declared chains appear even when empty. */
export function parseIptablesSave(text: string): SavedTables {
  const tables: SavedTables = new Map();
  let chains: Map<string, string[]> | undefined;
  for (const line of text.split("\n")) {
    if (line.startsWith("*")) {
      chains = new Map();
      tables.set(line.slice(1).trim(), chains);
    } else if (!chains || line.startsWith("#") || line === "COMMIT") {
      continue;
    } else if (line.startsWith(":")) {
      const name = line.slice(1).split(" ")[0]!;
      if (!chains.has(name)) chains.set(name, []);
    } else if (line.startsWith("-A ")) {
      const rest = line.slice(3);
      const sp = rest.indexOf(" ");
      const chain = sp < 0 ? rest : rest.slice(0, sp);
      const spec = sp < 0 ? "" : rest.slice(sp + 1);
      const list = chains.get(chain) ?? [];
      list.push(spec);
      chains.set(chain, list);
    }
  }
  return tables;
}

/**
 * Why the saved rules differ from `want` (empty when they match): our
 * chain must hold exactly our rules in order, and the hook chain exactly
 * one rule with our comment, the jump.
 */
export function chainDrift(want: ChainRules, saved: SavedTables): string[] {
  const chains = saved.get(want.table);
  const have = chains?.get(want.chain);
  const why: string[] = [];
  if (have === undefined) {
    why.push(`chain ${want.table}/${want.chain} is missing`);
  } else {
    for (const rule of want.rules) {
      if (!have.includes(rule)) {
        why.push(`rule "-A ${want.chain} ${rule}" is missing`);
      }
    }
    for (const rule of have) {
      if (!want.rules.includes(rule)) {
        why.push(`rule "-A ${want.chain} ${rule}" is not ours`);
      }
    }
    if (why.length === 0 && have.join("\n") !== want.rules.join("\n")) {
      why.push(`chain ${want.table}/${want.chain} is out of order`);
    }
  }
  const hooked = (chains?.get(want.hook) ?? []).filter((r) =>
    r.includes(want.comment)
  );
  const jumps = hooked.filter((r) => r === want.jump).length;
  if (jumps === 0) {
    why.push(`rule "-A ${want.hook} ${want.jump}" is missing`);
  } else if (jumps > 1) {
    why.push(`rule "-A ${want.hook} ${want.jump}" appears ${jumps} times`);
  }
  for (const rule of hooked) {
    if (rule !== want.jump) {
      why.push(`stale rule "-A ${want.hook} ${rule}"`);
    }
  }
  return why;
}

/**
 * The `iptables-restore --noflush` payload that rebuilds one table's
 * chains: declaring our chain flushes it, every rule of ours in the hook
 * chain is deleted, then the jump is appended (flanneld's `-D` then `-A`)
 * and our rules follow in order.
 */
export function renderRestore(
  table: string,
  chains: readonly ChainRules[],
  saved: SavedTables,
): string {
  const lines = [`*${table}`];
  for (const c of chains) lines.push(`:${c.chain} - [0:0]`);
  for (const c of chains) {
    for (const rule of saved.get(table)?.get(c.hook) ?? []) {
      if (rule.includes(c.comment)) {
        lines.push(`-D ${c.hook} ${rule}`);
      }
    }
    lines.push(`-A ${c.hook} ${c.jump}`);
    for (const rule of c.rules) lines.push(`-A ${c.chain} ${rule}`);
  }
  lines.push("COMMIT");
  return lines.join("\n") + "\n";
}

/**
 * The `iptables-restore --noflush` payload that removes flanneld's chains
 * from one table whole: the jumps to them (found by chain name or by our
 * comment) are deleted, then the chains flushed and deleted. Empty when
 * the table holds none of them.
 */
export function renderCleanup(table: string, saved: SavedTables): string {
  const chains = saved.get(table);
  if (!chains) return "";
  const ours = [MASQ_CHAIN, FWD_CHAIN].filter((c) => chains.has(c));
  const jumps: string[] = [];
  for (const [chain, rules] of chains) {
    if (ours.includes(chain)) continue;
    for (const rule of rules) {
      if (
        ours.some((c) => rule.endsWith(`-j ${c}`)) ||
        rule.includes(MASQ_COMMENT) || rule.includes(FWD_COMMENT)
      ) {
        jumps.push(`-D ${chain} ${rule}`);
      }
    }
  }
  if (ours.length === 0 && jumps.length === 0) return "";
  return [
    `*${table}`,
    ...jumps,
    ...ours.map((c) => `-F ${c}`),
    ...ours.map((c) => `-X ${c}`),
    "COMMIT",
  ].join("\n") + "\n";
}
