/**
 * Kernel tier for `ffi/monitor.ts`: notifications from a throwaway
 * namespace, and a close() that wakes a pending next() so the process can
 * exit.
 */
import assert, { deepStrictEqual as assertEquals } from "node:assert/strict";
import { kernelTest, Netns } from "../_netns.ts";
import { openMonitor } from "../../ffi/monitor.ts";
import { openNetlink } from "../../ffi/netlink.ts";
import type { NotificationSummary } from "../../ffi/types.ts";

async function untilSeen(
  next: () => Promise<NotificationSummary>,
  want: (s: NotificationSummary) => boolean,
  timeoutMs: number,
): Promise<NotificationSummary> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = deadline - Date.now();
    assert(left > 0, "notification not seen in time");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const s = await Promise.race([
      next(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("timed out")), left);
      }),
    ]).finally(() => clearTimeout(timer));
    if (want(s)) return s;
  }
}

kernelTest(
  "monitor sees a route deleted by ip route del, with its device",
  async () => {
    await using ns = await Netns.create("ffi-mon");
    await ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1");
    await ns.ip("link", "set", "eth0", "up");
    await ns.ip("addr", "add", "198.18.0.1/24", "dev", "eth0");
    await ns.ip("route", "add", "10.244.7.0/24", "via", "198.18.0.7");
    using nl = openNetlink({ netns: ns.path });
    const eth0 = nl.linkByName("eth0")!.index;
    using mon = openMonitor({ netns: ns.path });

    const pending = untilSeen(() => mon.next(), (s) => s.delRoute > 0, 2000);
    await ns.ip("route", "del", "10.244.7.0/24");
    const s = await pending;
    assertEquals(s.delRoute, 1);
    assert(s.indexes.includes(eth0), `indexes ${s.indexes}`);
    assertEquals(s.overrun, false);

    // Changes made through ffi/ are seen too, by kind.
    nl.neighSet({
      index: eth0,
      dst: "198.18.0.9",
      lladdr: "02:00:00:00:00:09",
      state: 0x80,
    });
    const n = await untilSeen(() => mon.next(), (x) => x.newNeigh > 0, 2000);
    assertEquals(n.delRoute, 0);
    await ns.ip("link", "del", "eth0");
    const l = await untilSeen(() => mon.next(), (x) => x.delLink > 0, 2000);
    assert(l.indexes.includes(eth0));
  },
);

kernelTest("monitor close() rejects a pending next() promptly", async () => {
  await using ns = await Netns.create("ffi-monc");
  const mon = openMonitor({ netns: ns.path });
  const pending = mon.next();
  const started = Date.now();
  setTimeout(() => mon.close(), 50);
  await assert.rejects(pending, Deno.errors.BadResource);
  assert(Date.now() - started < 1000, `took ${Date.now() - started} ms`);
  await assert.rejects(mon.next(), Deno.errors.BadResource);
  mon.close(); // idempotent
});

kernelTest(
  "a process waiting in monitor next() exits after close()",
  async () => {
    await using ns = await Netns.create("ffi-mone");
    const script = await Deno.makeTempFile({ suffix: ".ts" });
    try {
      const mod = new URL("../../ffi/monitor.ts", import.meta.url).href;
      await Deno.writeTextFile(
        script,
        `import { openMonitor } from "${mod}";
const mon = openMonitor({ netns: "${ns.path}" });
mon.next().catch((e) => console.log("rejected", e.name));
setTimeout(() => mon.close(), 100);
`,
      );
      const started = Date.now();
      const root = new URL("../../", import.meta.url).pathname;
      const child = await new Deno.Command("timeout", {
        args: [
          "10",
          Deno.execPath(),
          "run",
          "--config",
          `${root}deno.json`, // the script lives outside the repository
          "--allow-ffi",
          "--allow-read",
          "--allow-env",
          script,
        ],
        cwd: root,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const dec = new TextDecoder();
      const out = {
        code: child.code,
        stdout: dec.decode(child.stdout),
        stderr: dec.decode(child.stderr),
      };
      assertEquals(out.code, 0, `${script}: ${out.stderr}`);
      assertEquals(out.stdout.trim(), "rejected BadResource");
      assert(Date.now() - started < 8000);
    } finally {
      await Deno.remove(script);
    }
  },
);
