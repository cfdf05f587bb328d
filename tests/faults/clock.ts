/**
 * Wall-clock steps under a running agent. The host clock is not ours to
 * step, so one agent runs with libfaketime preloaded (Debian's
 * `libfaketime`): `FAKETIME_TIMESTAMP_FILE` holds an offset the suite
 * rewrites at runtime (`FAKETIME_NO_CACHE=1` rereads it on every call),
 * and `DONT_FAKE_MONOTONIC=1` leaves the monotonic clock alone, as a real
 * step (NTP, an operator's `date -s`) would. Deno's `Date.now()` goes
 * through the faked `clock_gettime(CLOCK_REALTIME)`; the agent's own log
 * timestamps prove the step reached it.
 *
 * The library is preloaded by starting deno through the dynamic loader
 * (`ld.so --preload`), not with `LD_PRELOAD`: Deno refuses to spawn a
 * child (`iptables-restore`) while `LD_PRELOAD` is in its environment
 * unless `--allow-run` is unrestricted, and the agent must keep its own
 * permission list. The children run on the real clock.
 *
 * The agent runs with a renew margin of 23 h on a 24 h lease: its renewal
 * is due about an hour after it took the lease, so an agent timing the
 * renewal by the wall clock would renew at once after a +1 h step.
 *
 * @module
 */
import type { ClusterNode } from "../_cluster.ts";
import { keyName } from "./corpus.ts";
import { DIR, type EtcdRun } from "./etcd.ts";
import { warnedIn } from "./corpus_run.ts";
import { fmtMs } from "./report.ts";
import { Checks, lossText, sleep, waitUntil } from "./run.ts";

const LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const LD_SO = "/lib64/ld-linux-x86-64.so.2";

/** Seconds of the day in a log line's stamp (`I1130 06:51:10.787000`). */
function stampSeconds(line: string): number | undefined {
  const m = /^[IWE]\d{4} (\d\d):(\d\d):(\d\d)/.exec(line);
  return m ? Number(m[1]) * 3600 + Number(m[2]) * 60 + Number(m[3]) : undefined;
}

/** `a - b` in seconds of the day, folded into [-12 h, 12 h). */
function dayDiff(a: number, b: number): number {
  return ((a - b + 86_400 + 43_200) % 86_400) - 43_200;
}

/**
 * Steps node `n`'s agent clock +1 h, then to 1 h behind real time, while
 * pods ping: zero loss, same lease (key, etcd lease ID, VTEP MAC), no
 * renewal, ready all along, and watches keep working (a probe peer added
 * after each step reaches the node).
 */
export async function wallClockSteps(
  s: EtcdRun,
  n: ClusterNode,
): Promise<void> {
  const offsetFile = `${n.dir}/faketime`;
  const setOffset = (o: string) => Deno.writeTextFile(offsetFile, `${o}\n`);
  await setOffset("+0");
  const lib = await Deno.stat(LIB).catch(() => undefined);
  await s.stop(n);
  await s.start(n, ["--subnet-lease-renew-margin=1380"], [], {
    FAKETIME_TIMESTAMP_FILE: offsetFile,
    FAKETIME_NO_CACHE: "1",
    DONT_FAKE_MONOTONIC: "1",
  }, lib ? [LD_SO, "--preload", LIB] : []);
  await s.c.waitReady(n, 30_000);
  const live = s.nodes(1, 2, 3);
  await s.converged(live, 10_000);
  const identity = async () => {
    const l = (await s.leases()).find((l) => l.value.PublicIP === n.ip);
    return `${l?.key} lease ${l?.etcdLease} MAC ${l?.value.BackendData?.VtepMAC}`;
  };
  const before = await identity();

  for (
    const step of [
      { offset: "+3600", expect: 3600, name: "+1 h" },
      { offset: "-3600", expect: -3600, name: "-2 h (to 1 h behind)" },
    ]
  ) {
    const chk = new Checks();
    chk.that(lib !== undefined, `${LIB} missing (Debian package libfaketime)`);
    const from = await s.logSize(n);
    const p = s.ping("node1-pod1", `${n.name}-pod1`);
    await sleep(300);
    await setOffset(step.offset);
    const stepped = performance.now();
    // Ready all along, polled through more than one resync period.
    const unready: string[] = [];
    while (performance.now() - stepped < 12_000) {
      const code = await s.httpCode(n, "/readyz");
      if (code !== "200") unready.push(code);
      await sleep(500);
    }
    const probe = await s.probe(243);
    const reached = await s.routeOnAll([n], probe.subnet, true, 10_000);
    await s.del(probe.key);
    const gone = await s.routeOnAll([n], probe.subnet, false, 10_000);
    // A bad key makes the agent log a warning now, stamped by its clock.
    const bad = `${DIR}${keyName(`10.244.${await s.freeOctet()}.0/24`)}`;
    await s.put(bad, "not json");
    await waitUntil(async () => (await warnedIn(s, n, from))(bad), 10_000, 200);
    await s.del(bad);
    const loss = await p.stop();
    const log = (await s.logSince(n, from)).split("\n");
    const stamped = log.filter((l) => l.includes(`"${bad}"`)).map(
      stampSeconds,
    ).filter((x) => x !== undefined);
    const now = new Date();
    const real = now.getUTCHours() * 3600 + now.getUTCMinutes() * 60 +
      now.getUTCSeconds();
    const shift = stamped.length > 0
      ? dayDiff(stamped[stamped.length - 1]!, real)
      : undefined;
    const renewals = log.filter((l) => l.includes("Lease renewed")).length;
    const after = await identity();
    chk.that(
      shift !== undefined && Math.abs(shift - step.expect) < 120,
      `the agent's clock did not step: log stamps are ${
        shift === undefined ? "absent" : `${shift} s`
      } off real time`,
    );
    chk.that(loss.lost === 0, `${loss.lost} lost`);
    chk.that(unready.length === 0, `/readyz answered ${unready.join(", ")}`);
    chk.that(renewals === 0, `${renewals} lease renewal(s) after the step`);
    chk.that(after === before, `lease changed: ${before} → ${after}`);
    chk.that(
      reached !== undefined,
      "a peer added after the step never arrived",
    );
    chk.that(gone !== undefined, "a peer removed after the step stayed");
    chk.that(await s.alive(n), "agent exited");
    if (shift !== undefined) chk.note(`log stamps ${shift} s off real time`);
    s.row({
      section: "wall-clock steps (libfaketime in one agent)",
      fault: `${n.name}'s wall clock stepped ${step.name}`,
      expected:
        "zero loss; same lease key, etcd lease and VTEP MAC; no renewal; /readyz 200 throughout; watches keep working",
      lost: lossText(loss),
      recovery: `probe peer programmed ${fmtMs(reached)} after adding`,
      outcome: chk.outcome(),
    });
  }

  await setOffset("+0");
  await s.stop(n);
  await s.start(n);
  await s.c.waitReady(n, 30_000);
  await waitUntil(async () => (await s.problems(live)).length === 0, 10_000);
}
