import assert from "node:assert/strict";
import { changeSource, collectionDue } from "./agent.ts";
import { emptySummary, noChanges } from "../ffi/nlmsg.ts";
import type {
  ChangeCounts,
  NetlinkMonitor,
  NotificationSummary,
} from "../ffi/types.ts";
import { setLogSink } from "../lib/log.ts";
import { metrics } from "../lib/metrics.ts";

/**
 * A monitor that hands out `summaries` in order, then fails ("drained"),
 * or with `hang` calls it and waits for good.
 */
function monitorOf(
  summaries: NotificationSummary[],
  hang?: () => void,
): NetlinkMonitor {
  return {
    next: () => {
      const s = summaries.shift();
      if (s) return Promise.resolve(s);
      if (hang) {
        hang();
        return new Promise(() => {});
      }
      return Promise.reject(new Error("drained"));
    },
    close: () => {},
  };
}

/** What the monitor summarises of `counts` on device `index`. */
function on(index: number, counts: Partial<ChangeCounts>): NotificationSummary {
  const c = { ...noChanges(), ...counts };
  const neigh = c.newNeigh + c.delNeigh + c.newFdb + c.delFdb > 0;
  const other = c.newLink + c.delLink + c.newAddr + c.delAddr + c.newRoute +
      c.delRoute > 0;
  return {
    ...emptySummary(),
    ...c,
    byIndex: new Map([[index, c]]),
    indexes: other ? [index] : [],
    neighIndexes: neigh ? [index] : [],
  };
}

const idle = {
  lastWrite: { any: -Infinity, del: -Infinity },
  writes: noChanges(),
};

/**
 * A reconciler that writes `writes` once a change source watches it
 * ({@linkcode wrote}), its last write "just now" for the next minute.
 */
function busy(writes: Partial<ChangeCounts>) {
  const soon = performance.now() + 60_000;
  const deletes = Object.entries(writes).some(([k, n]) =>
    k.startsWith("del") && n > 0
  );
  return {
    lastWrite: { any: soon, del: deletes ? soon : -Infinity },
    writes: noChanges() as ChangeCounts,
    pending: { ...noChanges(), ...writes },
  };
}

/** `rec` makes its writes. */
function wrote(rec: ReturnType<typeof busy>) {
  rec.writes = rec.pending;
}

const watched = () => ({ overlay: new Set([7]), external: 2 });

/** Runs `src` until its monitor has handed out everything. */
async function drain(
  summaries: NotificationSummary[],
  rec: ReturnType<typeof busy>,
) {
  let done!: () => void;
  const drained = new Promise<void>((r) => done = r);
  const src = changeSource(monitorOf(summaries, done), watched, rec);
  wrote(rec);
  assert.equal(src.quiet!(), false, "nothing is known before it starts");
  assert.equal(src.quiet!(), true);
  let woke: NotificationSummary | undefined;
  // Either it woke (and asks the monitor no more), or it went through
  // every summary without waking.
  await Promise.race([
    drained,
    src.next().then((s) => woke = s as NotificationSummary),
  ]);
  return { quiet: src.quiet!(), woke };
}

Deno.test("changeSource() wakes on an overrun, counts it and warns once", async () => {
  const lines: string[] = [];
  const prev = setLogSink((l) => lines.push(l));
  try {
    const before = metrics.netlinkOverruns.get();
    // Pod churn on a device that is not ours is skipped; the overrun is not.
    const churn = on(42, { newLink: 1 });
    const overrun = { ...emptySummary(), overrun: true };
    const src = changeSource(
      monitorOf([churn, overrun]),
      () => ({ overlay: new Set([7]), external: 2 }),
      idle,
    );
    assert.equal(await src.next(), overrun);
    assert.equal(metrics.netlinkOverruns.get(), before + 1);
    assert.deepEqual(
      lines.filter((l) => l.includes("ENOBUFS")).map((l) => l[0]),
      ["W"],
    );
  } finally {
    setLogSink(prev);
  }
});

Deno.test("changeSource() ignores the external interface's ARP states, not the overlay's neighbours or its links", async () => {
  const arp = on(2, { newNeigh: 3 });
  const overlayNeigh = on(7, { delNeigh: 1 });
  const src = changeSource(monitorOf([arp, overlayNeigh]), watched, idle);
  assert.equal(await src.next(), overlayNeigh, "eth0's ARP churn skipped");
  const extLink = on(2, { newLink: 1 });
  const fdb = on(7, { newFdb: 1 });
  const src2 = changeSource(monitorOf([extLink, fdb]), watched, idle);
  assert.equal(await src2.next(), extLink, "the external interface's link");
  assert.equal(await src2.next(), fdb, "an FDB entry on the overlay device");
});

Deno.test("changeSource() stays quiet through echoes of our own writes, and wakes nothing for them", async () => {
  const podChurn = on(42, { newLink: 1 });
  const arp = on(2, { newNeigh: 1 });
  const echoes = [
    on(7, { newNeigh: 1, newFdb: 1 }),
    on(7, { newRoute: 1 }),
    on(7, { delRoute: 1, delNeigh: 1, delFdb: 1 }),
  ];
  const rec = busy({
    newNeigh: 1,
    newFdb: 1,
    newRoute: 1,
    delRoute: 1,
    delNeigh: 1,
    delFdb: 1,
  });
  const got = await drain([podChurn, arp, ...echoes], rec);
  assert.deepEqual(got, { quiet: true, woke: undefined });
});

Deno.test("changeSource() is not quiet after a change our writes do not account for, even among echoes", async () => {
  const cases: [string, NotificationSummary[], Partial<ChangeCounts>][] = [
    ["one neighbour more than written", [on(7, { newNeigh: 2 })], {
      newNeigh: 1,
    }],
    ["the same echo twice", [on(7, { newNeigh: 1 }), on(7, { newNeigh: 1 })], {
      newNeigh: 1,
    }],
    ["a deletion where we deleted something else", [on(7, { delRoute: 1 })], {
      delNeigh: 1,
    }],
    ["a route deleted on another device", [on(42, { delRoute: 1 })], {
      delRoute: 1,
    }],
    ["a route on the external interface", [on(2, { newRoute: 1 })], {}],
    ["the overlay device's link", [on(7, { newLink: 1 })], {}],
    ["an address on the external interface", [on(2, { newAddr: 1 })], {}],
  ];
  for (const [what, summaries, writes] of cases) {
    const got = await drain(summaries, busy(writes));
    assert.equal(got.quiet, false, what);
    // Within the echo window nothing wakes at once; the next period does.
    assert.equal(got.woke, undefined, what);
  }
  // A deletion when we deleted nothing wakes at once, as before.
  const del = on(7, { delRoute: 1 });
  const got0 = await drain([del], busy({ newRoute: 1 }));
  assert.deepEqual(got0, { quiet: false, woke: del });
  // The same notification long after our last write is not an echo: it
  // wakes the reconciler at once.
  const late = on(7, { newNeigh: 1 });
  const rec = { ...busy({ newNeigh: 1 }), lastWrite: idle.lastWrite };
  const got = await drain([late], rec);
  assert.deepEqual(got, { quiet: false, woke: late });
});

Deno.test("changeSource() is never quiet after an overrun or once the monitor fails", async () => {
  const overrun = { ...emptySummary(), overrun: true };
  const rec = busy({ newNeigh: 1 });
  const src = changeSource(
    monitorOf([on(7, { newNeigh: 1 }), overrun]),
    watched,
    rec,
  );
  wrote(rec);
  src.quiet!();
  assert.equal(src.quiet!(), true);
  // The echo is not returned; the overrun is.
  assert.equal(await src.next(), overrun);
  assert.equal(src.quiet!(), false);
  assert.equal(src.quiet!(), true);
  await assert.rejects(src.next(), /drained/);
  assert.equal(src.quiet!(), false, "a failed monitor hears nothing");
  assert.equal(src.quiet!(), false);
});

Deno.test("changeSource() is never quiet once closed (the monitor stopped)", () => {
  const src = changeSource(
    monitorOf([]),
    () => ({ overlay: new Set([7]), external: 2 }),
    idle,
  );
  src.quiet!();
  assert.equal(src.quiet!(), true);
  src.close();
  assert.equal(src.quiet!(), false, "a closed monitor hears nothing");
  assert.equal(src.quiet!(), false);
});

Deno.test("collectionDue(): 8 MiB of growth at once; a minute's growth of 1 MiB a minute after the last; timer jitter tolerated", () => {
  const MiB = 1 << 20;
  assert.equal(collectionDue(1_000, 8 * MiB), true);
  assert.equal(collectionDue(30_000, 2 * MiB), false);
  assert.equal(collectionDue(60_000, 1 * MiB), true);
  assert.equal(collectionDue(59_000, 2 * MiB), true, "a tick a little early");
  assert.equal(collectionDue(50_000, 2 * MiB), false);
  // Idle: the heap grows by about half a MiB a minute.
  assert.equal(collectionDue(60_000, MiB / 2), false);
  assert.equal(collectionDue(120_000, MiB / 2 * 2), true);
});
