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
 * - Nothing is torn down at exit, as with flanneld: restarts must be
 *   hitless.
 *
 * @module
 */
import { metrics } from "../lib/metrics.ts";
import { logger } from "../lib/log.ts";
import { sleep } from "../lib/retry.ts";
import { type CommandRunner, commandRunner } from "../lib/command.ts";
import type { TrafficSpec } from "./spec.ts";
import {
  chainDrift,
  desiredChains,
  parseIptablesSave,
  renderCleanup,
  renderRestore,
} from "./iptables.ts";
import { nftTable, renderNftables } from "./nftables.ts";

const log = logger("iptables");

export interface TrafficManagerOptions {
  /** Networks and which rules; `randomFully` is the wish before detection. */
  readonly spec: TrafficSpec;
  /** net-conf.json `EnableNFTables`; default false (iptables). */
  readonly nftables?: boolean;
  /** `--iptables-resync` seconds between checks; default 5. */
  readonly resyncSeconds?: number;
  /**
   * Deadline of each iptables/nft command, ms; default 20 000. A command
   * that passes it is killed and the rules are reported not in place.
   * `iptables-restore` waits for the xtables lock half of it
   * (`--wait <seconds>`), so a held lock ends as a clear error rather
   * than a kill.
   */
  readonly timeoutMs?: number;
  /** How commands run; default {@linkcode commandRunner} with the deadline. */
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
  readonly #waitSeconds: number;
  /** Aborted when `run` stops: kills a command in flight. */
  #stop: AbortSignal | undefined;

  constructor(opts: TrafficManagerOptions) {
    this.#spec = opts.spec;
    this.#nft = opts.nftables ?? false;
    this.#resync = opts.resyncSeconds ?? 5;
    const timeoutMs = opts.timeoutMs ?? 20_000;
    this.#waitSeconds = Math.max(1, Math.floor(timeoutMs / 2000));
    this.#run = opts.run ?? commandRunner({ timeoutMs });
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
    const out = await this.#run(cmd, stdin, this.#stop);
    if (out.timedOut) {
      metrics.kernelErrors.inc({ op: cmd[0]! });
      throw new Error(
        `Command "${cmd.join(" ")}" timed out: ${out.stderr.trim()}`,
      );
    }
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
          this.#stop,
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
        [
          restore,
          "--noflush",
          ...(wait ? ["--wait", String(this.#waitSeconds)] : []),
        ],
        payload,
      );
      reasons.push(...why);
    }
    return { changed: reasons.length > 0, reasons };
  }

  async #listNft(family: 4 | 6): Promise<string | undefined> {
    const fam = family === 4 ? "ip" : "ip6";
    const out = await this.#run(
      ["nft", "list", "table", fam, nftTable(family)],
      undefined,
      this.#stop,
    );
    if (out.timedOut) {
      throw new Error(`Command "nft list table" timed out: ${out.stderr}`);
    }
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
   * Removes the rules of the traffic manager this node does not use, as
   * flanneld does at start (`main.go`), so a node switched between
   * iptables and nftables is not left with both. With iptables, the
   * `flannel-ipv4` / `flannel-ipv6` nftables tables are deleted, as
   * flanneld deletes them. With nftables, flanneld's iptables chains are
   * removed whole, jumps included (flanneld only flushes
   * `FLANNEL-POSTRTG`; see docs/flanneld-differences.md). Best effort: a
   * missing tool or table is no error. Returns what was removed.
   */
  async cleanUpOther(): Promise<string[]> {
    const removed: string[] = [];
    const quiet = (cmd: string[], stdin?: string) =>
      this.#run(cmd, stdin, this.#stop).catch(() => undefined);
    if (!this.#nft) {
      for (const family of [4, 6] as const) {
        const fam = family === 4 ? "ip" : "ip6";
        const table = nftTable(family);
        const listed = await quiet(["nft", "list", "table", fam, table]);
        if (listed?.code !== 0) continue;
        const out = await quiet(["nft", "delete", "table", fam, table]);
        if (out?.code === 0) removed.push(`nftables table ${fam} ${table}`);
        else {log.warn(
            `Cannot delete nftables table ${fam} ${table}: ${out?.stderr.trim()}`,
          );}
      }
    } else {
      for (const family of [4, 6] as const) {
        const save = family === 4 ? "iptables-save" : "ip6tables-save";
        const restore = family === 4 ? "iptables-restore" : "ip6tables-restore";
        let payload = "";
        for (const table of ["nat", "filter"]) {
          const out = await quiet([save, "-t", table]);
          if (out?.code !== 0) continue;
          payload += renderCleanup(table, parseIptablesSave(out.stdout));
        }
        if (payload === "") continue;
        const out = await quiet([restore, "--noflush"], payload);
        if (out?.code === 0) removed.push(`IPv${family} iptables chains`);
        else {log.warn(
            `Cannot remove flannel's IPv${family} iptables chains: ${out?.stderr.trim()}`,
          );}
      }
    }
    for (const what of removed) {
      log.info(`Removed the unused traffic manager's rules: ${what}`);
    }
    return removed;
  }

  /**
   * Checks now if never checked, then every `resyncSeconds` until `signal`
   * aborts. Repairs are logged; failures are logged and retried.
   */
  async run(signal: AbortSignal): Promise<void> {
    this.#stop = signal;
    let first = this.#probed === undefined;
    // The other manager's rules go once, after our own are in place: a
    // hung tool there must not delay readiness.
    let cleaned = !first;
    while (!signal.aborted) {
      if (!first) {
        const slept = await sleep(this.#resync * 1000, signal).then(
          () => true,
          () => false,
        );
        if (!slept) return;
      }
      first = false;
      try {
        await this.ensure();
      } catch (e) {
        if (signal.aborted) return;
        log.error(`Failed to ensure iptables rules: ${(e as Error).message}`);
      }
      if (!cleaned && !signal.aborted) {
        cleaned = true;
        await this.cleanUpOther();
      }
    }
  }
}
