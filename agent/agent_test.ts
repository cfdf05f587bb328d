import assert from "node:assert/strict";
import { changeSource } from "./agent.ts";
import { emptySummary } from "../ffi/nlmsg.ts";
import type { NetlinkMonitor, NotificationSummary } from "../ffi/types.ts";
import { setLogSink } from "../lib/log.ts";
import { metrics } from "../lib/metrics.ts";

/** A monitor that hands out `summaries` in order. */
function monitorOf(summaries: NotificationSummary[]): NetlinkMonitor {
  return {
    next: () => {
      const s = summaries.shift();
      return s ? Promise.resolve(s) : Promise.reject(new Error("drained"));
    },
    close: () => {},
  };
}

const idle = { lastWrite: { any: -Infinity, del: -Infinity } };

Deno.test("changeSource() wakes on an overrun, counts it and warns once", async () => {
  const lines: string[] = [];
  const prev = setLogSink((l) => lines.push(l));
  try {
    const before = metrics.netlinkOverruns.get();
    // Pod churn on a device that is not ours is skipped; the overrun is not.
    const churn = { ...emptySummary(), newLink: 1, indexes: [42] };
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
  const watched = () => ({ overlay: new Set([7]), external: 2 });
  const arp = { ...emptySummary(), newNeigh: 3, neighIndexes: [2] };
  const overlayNeigh = { ...emptySummary(), delNeigh: 1, neighIndexes: [7] };
  const src = changeSource(monitorOf([arp, overlayNeigh]), watched, idle);
  assert.equal(await src.next(), overlayNeigh, "eth0's ARP churn skipped");
  const extLink = { ...emptySummary(), newLink: 1, indexes: [2] };
  const fdb = { ...emptySummary(), newFdb: 1, neighIndexes: [7] };
  const src2 = changeSource(monitorOf([extLink, fdb]), watched, idle);
  assert.equal(await src2.next(), extLink, "the external interface's link");
  assert.equal(await src2.next(), fdb, "an FDB entry on the overlay device");
});

Deno.test("changeSource() is quiet only while nothing about our objects arrived, echoes included, and never after an overrun or a failure", async () => {
  const watched = () => ({ overlay: new Set([7]), external: 2 });
  const podChurn = { ...emptySummary(), newLink: 1, indexes: [42] };
  const ours = { ...emptySummary(), newNeigh: 1, neighIndexes: [7] };
  const overrun = { ...emptySummary(), overrun: true };
  // Our own write just now: what follows is its echo, and wakes nothing.
  const busy = {
    lastWrite: { any: performance.now() + 60_000, del: -Infinity },
  };
  const src = changeSource(
    monitorOf([podChurn, ours, overrun]),
    watched,
    busy,
  );
  assert.equal(src.quiet!(), false, "nothing is known before it starts");
  assert.equal(src.quiet!(), true);
  // The echo is not returned; the overrun is; both were heard.
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
