/**
 * Deadlines on external commands, with real processes: a command past its
 * deadline is killed and reported, an abort kills it at once, and the
 * traffic manager driving a hung `iptables-restore` reports the rules as
 * not in place within its deadline and stops promptly.
 *
 * @module
 */
import assert from "node:assert/strict";
import { commandRunner, runCommand, TIMED_OUT } from "../../lib/command.ts";
import { TrafficManager } from "../../traffic/manager.ts";
import { setLogSink } from "../../lib/log.ts";

setLogSink(() => {});

Deno.test("runCommand() kills a command at its deadline and says so", async () => {
  const t0 = performance.now();
  const out = await runCommand(["sleep", "30"], { timeoutMs: 200 });
  const ms = performance.now() - t0;
  assert.equal(out.code, TIMED_OUT);
  assert.equal(out.timedOut, true);
  assert.match(out.stderr, /killed after its deadline of 200 ms/);
  assert.ok(ms < 3000, `took ${ms} ms`);
});

Deno.test("runCommand() kills a command as soon as its signal aborts", async () => {
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  const t0 = performance.now();
  const out = await runCommand(["sleep", "30"], { signal: ac.signal });
  assert.equal(out.aborted, true);
  assert.equal(out.code, TIMED_OUT);
  assert.ok(performance.now() - t0 < 3000);
  // An already aborted signal never leaves the command running.
  const again = await runCommand(["sleep", "30"], { signal: ac.signal });
  assert.equal(again.aborted, true);
});

/** A directory whose iptables-restore hangs (a held xtables lock). */
async function hangingIptables(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "weft-hang-" });
  const script = (body: string) => `#!/bin/sh\n${body}\n`;
  await Deno.writeTextFile(
    `${dir}/iptables-restore`,
    script(
      'if [ "$1" = "--version" ]; then echo "iptables-restore v1.8.9 (legacy)"; exit 0; fi\necho "$@" > "$(dirname "$0")/args"\nexec sleep 613',
    ),
  );
  await Deno.writeTextFile(
    `${dir}/iptables-save`,
    script('echo "*$2"; echo "COMMIT"'),
  );
  for (const f of ["iptables-restore", "iptables-save"]) {
    await Deno.chmod(`${dir}/${f}`, 0o755);
  }
  return dir;
}

Deno.test("TrafficManager with a hung iptables-restore: not ready within the deadline, --wait in seconds, prompt stop", async () => {
  const dir = await hangingIptables();
  try {
    const path = `${dir}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}`;
    const states: [boolean, string][] = [];
    const spec = {
      ipMasq: true,
      forwardRules: true,
      randomFully: true,
      ipv4: { network: "10.244.0.0/16", subnet: "10.244.1.0/24" },
    };
    const tm = new TrafficManager({
      spec,
      timeoutMs: 2000,
      run: commandRunner({ timeoutMs: 2000, prefix: ["env", `PATH=${path}`] }),
      onState: (ready, detail) => states.push([ready, detail]),
    });
    const t0 = performance.now();
    await assert.rejects(tm.ensure(), /timed out/);
    const ms = performance.now() - t0;
    assert.ok(ms >= 1900 && ms < 6000, `took ${ms} ms`);
    assert.equal(tm.ready, false);
    assert.match(
      states.at(-1)![1],
      /^Command "iptables-restore --noflush --wait 1" timed out: killed after its deadline of 2000 ms/,
    );
    assert.equal(
      (await Deno.readTextFile(`${dir}/args`)).trim(),
      "--noflush --wait 1",
    );

    // A stop while the command hangs (deadline far away) ends run() at once.
    const slow = new TrafficManager({
      spec,
      timeoutMs: 600_000,
      run: commandRunner({
        timeoutMs: 600_000,
        prefix: ["env", `PATH=${path}`],
      }),
    });
    const ac = new AbortController();
    const done = slow.run(ac.signal);
    await new Promise((r) => setTimeout(r, 500));
    const t1 = performance.now();
    ac.abort();
    await done;
    assert.ok(performance.now() - t1 < 3000);
    const left = await runCommand(["pgrep", "-x", "-f", "sleep 613"]);
    assert.equal(left.stdout.trim(), "", "a hung iptables-restore was left");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
