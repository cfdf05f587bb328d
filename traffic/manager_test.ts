import {
  deepStrictEqual as assertEquals,
  ok as assert,
  rejects,
} from "node:assert/strict";
import type { CommandRunner } from "../lib/command.ts";
import { TrafficManager } from "./manager.ts";
import { FLANNEL_V4_NAT, SPEC as spec } from "./_testing.ts";
import { setLogSink } from "../lib/log.ts";

setLogSink(() => {});

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
  // The xtables lock is waited for half of the 20 s command deadline.
  assert(ipt.calls.includes("iptables-restore --noflush --wait 10"));
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
    'Command "iptables-restore --noflush --wait 10" exited 2: line 3 failed',
  ]]);
});

Deno.test("TrafficManager.run() checks every resync period until aborted", async () => {
  const ipt = fakeIptables();
  const ac = new AbortController();
  let checks = 0;
  // Synchronise on the checks themselves: abort at the third.
  const tm = new TrafficManager({
    spec,
    run: ipt.run,
    resyncSeconds: 0.01,
    onState: () => {
      if (++checks === 3) ac.abort();
    },
  });
  await tm.run(ac.signal);
  const saves = ipt.calls.filter((c) => c === "iptables-save -t nat").length;
  assertEquals(saves, 3, `checked ${saves} times`);
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

Deno.test("TrafficManager reports rules not in place when a command passes its deadline", async () => {
  const ipt = fakeIptables();
  const hung: CommandRunner = (cmd, stdin) =>
    cmd[0] === "iptables-restore" && cmd[1] === "--noflush"
      ? Promise.resolve({
        code: 124,
        stdout: "",
        stderr: "killed after its deadline of 4000 ms",
        timedOut: true,
      })
      : ipt.run(cmd, stdin);
  const states: [boolean, string][] = [];
  const tm = new TrafficManager({
    spec,
    run: hung,
    timeoutMs: 4000,
    onState: (ready, detail) => states.push([ready, detail]),
  });
  await rejects(tm.ensure(), /timed out/);
  assertEquals(tm.ready, false);
  assertEquals(states, [[
    false,
    'Command "iptables-restore --noflush --wait 2" timed out: killed after its deadline of 4000 ms',
  ]]);
});

Deno.test("TrafficManager.run() hands its signal to commands, so a stop never waits on a hung one", async () => {
  const ipt = fakeIptables();
  const signals: (AbortSignal | undefined)[] = [];
  // A restore that hangs until its signal aborts, as runCommand kills it.
  const hanging: CommandRunner = (cmd, stdin, signal) => {
    signals.push(signal);
    if (cmd[0] === "iptables-restore" && cmd[1] === "--noflush") {
      return new Promise((resolve) =>
        signal?.addEventListener("abort", () =>
          resolve({
            code: 124,
            stdout: "",
            stderr: "killed: stopping",
            aborted: true,
          }))
      );
    }
    return ipt.run(cmd, stdin);
  };
  const tm = new TrafficManager({ spec, run: hanging });
  const ac = new AbortController();
  const done = tm.run(ac.signal);
  await new Promise((r) => setTimeout(r, 30));
  ac.abort();
  const stopped = await Promise.race([
    done.then(() => true),
    new Promise((r) => setTimeout(() => r(false), 1000)),
  ]);
  assert(stopped, "run() still waiting on the hung command");
  assert(signals.length > 0 && signals.every((s) => s === ac.signal));
  assertEquals(tm.ready, false);
});
