/**
 * The masquerade and forward rules flanneld installs (its `trafficmngr`):
 * with iptables, nat chain `FLANNEL-POSTRTG` jumped to from `POSTROUTING`
 * and filter chain `FLANNEL-FWD` jumped to from `FORWARD`, rule for rule
 * the text `iptables-save` prints for flanneld's rules; with nftables
 * (`EnableNFTables`), tables `flannel-ipv4` / `flannel-ipv6` written in one
 * `nft -f -` transaction.
 *
 * Rendering is pure and separate from applying. {@linkcode TrafficManager}
 * reads the current rules back (`iptables-save -t <table>`, `nft list
 * table`), rebuilds a table only when something differs, and repeats every
 * `--iptables-resync` seconds. Commands go through an injectable
 * {@linkcode CommandRunner}, so tests run them inside a namespace with
 * `ip netns exec`.
 *
 * Where weft differs from flanneld, on purpose:
 * - The iptables check is exact: the chain must hold exactly our rules in
 *   order, and any other rule carrying our comment in `POSTROUTING` /
 *   `FORWARD` (left by an older flanneld or an earlier subnet) is deleted.
 *   flanneld only checks that each rule exists, and recycles stale rules
 *   once at start from subnet.env.
 * - nftables: flanneld's fourth masquerade rule is `saddr != pod daddr
 *   cluster return`, which also returns host-to-remote-pod traffic and
 *   leaves its last rule dead; weft uses the iptables rule's meaning,
 *   `saddr != cluster daddr pod return`. The kube-proxy mark is matched as
 *   a bit (`meta mark & 0x4000 == 0x4000`, like `--mark 0x4000/0x4000`),
 *   not as the whole mark. `--ip-masq-fully-random-disable` is honoured.
 * - Nothing is torn down at exit (flanneld's nftables mode deletes its
 *   tables): restarts must be hitless.
 *
 * @module
 */
import { metrics } from "./metrics.ts";
import { logger } from "./log.ts";
import { canonicalNet, formatNet, parseIpNet } from "../subnet/ip.ts";

const log = logger("iptables");

/** Output of a finished command. */
export interface CommandOutput {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command to completion; never throws on a non-zero exit. */
export type CommandRunner = (
  cmd: readonly string[],
  stdin?: string,
) => Promise<CommandOutput>;

/**
 * A {@linkcode CommandRunner} over `Deno.Command`. `prefix` is prepended to
 * every command (tests: `["ip", "netns", "exec", ns]`).
 */
export function commandRunner(prefix: readonly string[] = []): CommandRunner {
  return async (cmd, stdin) => {
    const [program, ...args] = [...prefix, ...cmd];
    if (program === undefined) throw new Error("Cannot run an empty command");
    const child = new Deno.Command(program, {
      args,
      stdin: stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (stdin !== undefined) {
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode(stdin));
      await w.close();
    }
    const out = await child.output();
    const dec = new TextDecoder();
    return {
      code: out.code,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
    };
  };
}

/** The networks of one family: cluster network and this node's lease. */
export interface FamilyNets {
  /** The cluster network, `10.244.0.0/16`. */
  readonly network: string;
  /** This node's lease subnet, `10.244.1.0/24`. */
  readonly subnet: string;
}

/** What rules to install. */
export interface TrafficSpec {
  /** `--ip-masq`: the masquerade chain. */
  readonly ipMasq: boolean;
  /** `--iptables-forward-rules`: the forward-accept chain. */
  readonly forwardRules: boolean;
  /** MASQUERADE with `--random-fully` (flag not disabled and supported). */
  readonly randomFully: boolean;
  /** IPv4 networks, when IPv4 is enabled. */
  readonly ipv4?: FamilyNets;
  /** IPv6 networks, when IPv6 is enabled. */
  readonly ipv6?: FamilyNets;
}

/** nat chain of the masquerade rules. */
export const MASQ_CHAIN = "FLANNEL-POSTRTG";
/** filter chain of the forward rules. */
export const FWD_CHAIN = "FLANNEL-FWD";
/** kube-proxy's masquerade mark, which flanneld leaves alone. */
export const KUBE_PROXY_MARK = "0x4000/0x4000";

const MASQ_COMMENT = `-m comment --comment "flanneld masq"`;
const FWD_COMMENT = `-m comment --comment "flanneld forward"`;

function canon(prefix: string): string {
  const net = parseIpNet(prefix);
  if (!net.ok) {
    throw new Error(`Cannot render rules for "${prefix}": ${net.reason}`);
  }
  return formatNet(canonicalNet(net.value));
}

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
  if (!nets || (!spec.ipMasq && !spec.forwardRules)) return [];
  const fam = family === 4 ? "ip" : "ip6";
  const t = `${fam} ${nftTable(family)}`;
  const cluster = canon(nets.network);
  const pod = canon(nets.subnet);
  const lines = [
    `add table ${t} { comment "rules for ${nftTable(family)}" ; }`,
  ];
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
export interface TrafficManagerOptions {
  /** Networks and which rules; `randomFully` is the wish before detection. */
  readonly spec: TrafficSpec;
  /** net-conf.json `EnableNFTables`; default false (iptables). */
  readonly nftables?: boolean;
  /** `--iptables-resync` seconds between checks; default 5. */
  readonly resyncSeconds?: number;
  /** How commands run; default {@linkcode commandRunner}(). */
  readonly run?: CommandRunner;
  /** Told whether the rules are in place after every check. */
  readonly onState?: (ready: boolean, detail: string) => void;
}

/** What one {@linkcode TrafficManager.ensure} did. */
export interface EnsureResult {
  /** Whether rules were (re)written. */
  readonly changed: boolean;
  /** Why, one entry per difference found. */
  readonly reasons: readonly string[];
}

/** `v1.8.9` → [1, 8, 9]. */
function versionOf(text: string): [number, number, number] | undefined {
  const m = /v(\d+)\.(\d+)\.(\d+)/.exec(text);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

function atLeast(v: [number, number, number], min: [number, number, number]) {
  for (let i = 0; i < 3; i++) {
    if (v[i]! !== min[i]!) return v[i]! > min[i]!;
  }
  return true;
}

/**
 * Keeps flanneld's rules in place. `ensure()` checks once and repairs;
 * `run(signal)` checks every `resyncSeconds` until aborted. Failures are
 * logged and reported through `onState`, never thrown out of `run`.
 */
export class TrafficManager {
  readonly #spec: TrafficSpec;
  readonly #nft: boolean;
  readonly #resync: number;
  readonly #run: CommandRunner;
  readonly #onState: (ready: boolean, detail: string) => void;
  #probed?: { randomFully: boolean; wait: boolean };
  /** nftables: `nft list table` text right after our last write. */
  readonly #nftSnapshot = new Map<4 | 6, string>();
  #ready = false;
  #last: Promise<void> = Promise.resolve();

  constructor(opts: TrafficManagerOptions) {
    this.#spec = opts.spec;
    this.#nft = opts.nftables ?? false;
    this.#resync = opts.resyncSeconds ?? 5;
    this.#run = opts.run ?? commandRunner();
    this.#onState = opts.onState ?? (() => {});
  }

  /** Whether the last check found (or left) every rule in place. */
  get ready(): boolean {
    return this.#ready;
  }

  get #families(): (4 | 6)[] {
    return [
      ...(this.#spec.ipv4 ? [4 as const] : []),
      ...(this.#spec.ipv6 ? [6 as const] : []),
    ];
  }

  get #empty(): boolean {
    return (!this.#spec.ipMasq && !this.#spec.forwardRules) ||
      this.#families.length === 0;
  }

  async #exec(cmd: string[], stdin?: string): Promise<string> {
    const out = await this.#run(cmd, stdin);
    if (out.code !== 0) {
      metrics.kernelErrors.inc({ op: cmd[0]! });
      throw new Error(
        `Command "${cmd.join(" ")}" exited ${out.code}: ${
          out.stderr.trim() || out.stdout.trim()
        }`,
      );
    }
    return out.stdout;
  }

  /** Detects `--random-fully` and `--wait` support once, like flanneld. */
  async #probe(): Promise<{ randomFully: boolean; wait: boolean }> {
    if (this.#probed) return this.#probed;
    let randomFully = this.#spec.randomFully;
    let wait = false;
    if (this.#nft) {
      if (randomFully) {
        const out = await this.#run(
          ["nft", "-c", "-f", "-"],
          "add table ip weft-probe\n" +
            "add chain ip weft-probe p { type nat hook postrouting priority srcnat ; }\n" +
            "add rule ip weft-probe p masquerade fully-random\n",
        );
        if (out.code !== 0) {
          log.warn("nftables: random fully unsupported");
          randomFully = false;
        }
      }
    } else {
      const text = await this.#exec(["iptables-restore", "--version"]);
      const v = versionOf(text);
      // iptables 1.6.2 added both --random-fully and restore --wait.
      const modern = v !== undefined && atLeast(v, [1, 6, 2]);
      randomFully = randomFully && modern;
      wait = modern;
    }
    this.#probed = { randomFully, wait };
    return this.#probed;
  }

  /**
   * Checks the rules once and rewrites whatever differs. Calls are
   * serialised: a read-then-restore must not interleave with another
   * (flanneld guards its iptables-restore with a mutex for the same reason).
   */
  ensure(): Promise<EnsureResult> {
    const next = this.#last.then(() => this.#ensureOnce());
    this.#last = next.then(() => {}, () => {});
    return next;
  }

  async #ensureOnce(): Promise<EnsureResult> {
    if (this.#empty) {
      this.#setState(true, "no rules wanted");
      return { changed: false, reasons: [] };
    }
    try {
      const probed = await this.#probe();
      const spec = { ...this.#spec, randomFully: probed.randomFully };
      const result = this.#nft
        ? await this.#ensureNft(spec)
        : await this.#ensureIptables(spec, probed.wait);
      if (result.changed) {
        const kind = this.#nft ? "nftables" : "iptables";
        metrics.reconcileRepairs.inc({ kind }, 1);
      }
      this.#setState(true, "rules in place");
      return result;
    } catch (e) {
      const msg = (e as Error).message;
      this.#setState(false, msg);
      throw e;
    }
  }

  #setState(ready: boolean, detail: string) {
    this.#ready = ready;
    this.#onState(ready, detail);
  }

  async #ensureIptables(
    spec: TrafficSpec,
    wait: boolean,
  ): Promise<EnsureResult> {
    const reasons: string[] = [];
    for (const family of this.#families) {
      const save = family === 4 ? "iptables-save" : "ip6tables-save";
      const restore = family === 4 ? "iptables-restore" : "ip6tables-restore";
      const chains = desiredChains(spec, family);
      let payload = "";
      const why: string[] = [];
      for (const table of ["nat", "filter"] as const) {
        const mine = chains.filter((c) => c.table === table);
        if (mine.length === 0) continue;
        const saved = parseIptablesSave(
          await this.#exec([save, "-t", table]),
        );
        const drift = mine.flatMap((c) => chainDrift(c, saved));
        if (drift.length === 0) continue;
        why.push(...drift.map((d) => `IPv${family} ${d}`));
        payload += renderRestore(table, mine, saved);
      }
      if (payload === "") continue;
      log.info(
        `Some iptables rules are missing; deleting and recreating rules (${
          why.join("; ")
        })`,
      );
      log.v(6, `${restore} --noflush <<EOF\n${payload}EOF`);
      await this.#exec(
        [restore, "--noflush", ...(wait ? ["--wait"] : [])],
        payload,
      );
      reasons.push(...why);
    }
    return { changed: reasons.length > 0, reasons };
  }

  async #listNft(family: 4 | 6): Promise<string | undefined> {
    const fam = family === 4 ? "ip" : "ip6";
    const out = await this.#run([
      "nft",
      "list",
      "table",
      fam,
      nftTable(family),
    ]);
    return out.code === 0 ? out.stdout : undefined;
  }

  async #ensureNft(spec: TrafficSpec): Promise<EnsureResult> {
    const reasons: string[] = [];
    for (const family of this.#families) {
      const want = this.#nftSnapshot.get(family);
      if (want === undefined) {
        reasons.push(`table ${nftTable(family)} not written yet`);
        continue;
      }
      const have = await this.#listNft(family);
      if (have === undefined) {
        reasons.push(`table ${nftTable(family)} is missing`);
      } else if (have !== want) {
        reasons.push(`table ${nftTable(family)} was changed`);
      }
    }
    if (reasons.length === 0) return { changed: false, reasons };
    const tx = renderNftables(spec);
    log.info(`nftables: rewriting flannel tables (${reasons.join("; ")})`);
    log.v(6, `nft -f - <<EOF\n${tx}EOF`);
    await this.#exec(["nft", "-f", "-"], tx);
    for (const family of this.#families) {
      const text = await this.#listNft(family);
      if (text === undefined) {
        throw new Error(
          `nftables: table ${nftTable(family)} missing after write`,
        );
      }
      this.#nftSnapshot.set(family, text);
    }
    return { changed: true, reasons };
  }

  /**
   * Checks now if never checked, then every `resyncSeconds` until `signal`
   * aborts. Repairs are logged; failures are logged and retried.
   */
  async run(signal: AbortSignal): Promise<void> {
    let first = this.#probed === undefined;
    while (!signal.aborted) {
      if (!first) {
        const go = await sleep(this.#resync * 1000, signal);
        if (!go) return;
      }
      first = false;
      try {
        await this.ensure();
      } catch (e) {
        log.error(`Failed to ensure iptables rules: ${(e as Error).message}`);
      }
    }
  }
}

/** Resolves true after `ms`, or false as soon as `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(false);
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
