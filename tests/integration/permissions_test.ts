/**
 * The shipped permission model: weft run by `deno run` with exactly the
 * list `deno task compile` bakes into the binary (deploy/permissions.txt)
 * refuses, before doing anything, a flag naming a file outside that list,
 * and says which flag, path and permission.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import { kernelTest } from "../_netns.ts";

const ROOT = new URL("../..", import.meta.url).pathname;

async function shipped(args: string[]) {
  const perms = (await Deno.readTextFile(`${ROOT}deploy/permissions.txt`))
    .trim().split(/\s+/);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", ...perms, `${ROOT}main.ts`, ...args],
    env: { NODE_NAME: "n1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("weft with the shipped permissions exits 2 naming a --subnet-file outside them", async () => {
  const r = await shipped([
    "--kube-subnet-mgr",
    "--kube-api-url=https://127.0.0.1:1",
    "--subnet-file=/var/tmp/weft-flannel.env",
  ]);
  assertEquals(r.code, 2, r.stderr);
  assert(
    r.stderr.includes(
      'Flag --subnet-file names "/var/tmp/weft-flannel.env", but this weft build has no read permission on "/var/tmp/weft-flannel.env"',
    ),
    r.stderr,
  );
  assert(
    r.stderr.includes('no write permission on "/var/tmp" (for'),
    r.stderr,
  );
});

Deno.test("weft with the shipped permissions exits 2 naming etcd TLS files outside them", async () => {
  const r = await shipped([
    "--etcd-endpoints=https://127.0.0.1:1",
    "--etcd-cafile=/etc/ssl/etcd/ca.pem",
    "--etcd-certfile=/run/flannel/etcd.pem",
  ]);
  assertEquals(r.code, 2, r.stderr);
  assertEquals(
    r.stderr.trim().split("\n").map((l) => l.slice(0, l.indexOf(", but"))),
    ['Flag --etcd-cafile names "/etc/ssl/etcd/ca.pem"'],
  );
});

/**
 * Runs weft with the shipped permissions (plus `extraRun` in --allow-run)
 * as an etcd-mode node of a one-node wireguard cluster, its own
 * /var/run/wireguard bound in a mount namespace; returns the exit status
 * and log, or stops it once ready and returns what it left.
 */
async function shippedWireguard(extraRun: string[]) {
  const { Cluster } = await import("../_cluster.ts");
  const { WG_NET_CONF, WIREGUARD_GO, wireguardMount } = await import(
    "../e2e/_wireguard.ts"
  );
  const perms = (await Deno.readTextFile(`${ROOT}deploy/permissions.txt`))
    .trim().split(/\s+/).map((p) =>
      p.startsWith("--allow-run=") && extraRun.length
        ? `${p},${extraRun.join(",")}`
        : p
    );
  await using c = await Cluster.create({
    prefix: "weft-pwg",
    nodes: 1,
    netConf: WG_NET_CONF,
  });
  const node = c.nodes[0]!;
  // The shipped list may only touch /run/flannel: a directory of its own there.
  const run = `/run/flannel/weft-test-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(`${run}/wireguard`, { recursive: true });
  try {
    const child = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        node.ns.name,
        ...wireguardMount(`${run}/wireguard`),
        Deno.execPath(),
        "run",
        "--no-prompt",
        ...perms,
        `${ROOT}main.ts`,
        `--etcd-endpoints=${c.etcdEndpoint}`,
        "--iface=eth0",
        `--subnet-file=${run}/subnet.env`,
        "--healthz-port=10256",
      ],
      env: {
        NODE_NAME: "n1",
        WIREGUARD_KEY_FILE: `${run}/wgkey`,
        WG_USERSPACE_IMPLEMENTATION: WIREGUARD_GO,
      },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const stderr = new Response(child.stderr).text();
    // waitReady stops early if the agent exits; its log is stderr here.
    node.agent = { child, logPath: "/dev/null", started: performance.now() };
    const ready = await c.waitReady(node, 20_000).then(() => true, () => false);
    const mode = ready ? (await Deno.stat(`${run}/wgkey`)).mode! & 0o777 : 0;
    const env = ready ? await Deno.readTextFile(`${run}/subnet.env`) : "";
    await c.stopAgent(node, "SIGTERM");
    const status = await child.status;
    return { ready, status, log: await stderr, mode, env };
  } finally {
    await Deno.remove(run, { recursive: true }).catch(() => {});
  }
}

kernelTest(
  "weft with the shipped permissions runs the wireguard backend on userspace WireGuard once its path is allowed",
  async () => {
    const { WIREGUARD_GO } = await import("../e2e/_wireguard.ts");
    const r = await shippedWireguard([WIREGUARD_GO]);
    assert(r.ready, r.log);
    assertEquals(r.mode, 0o400);
    assert(r.env.includes("FLANNEL_MTU=1420"), r.env);
    assertEquals(r.status.code, 0, r.log);
  },
);

kernelTest(
  "weft with the shipped permissions exits naming the userspace WireGuard it may not run",
  async () => {
    const { WIREGUARD_GO } = await import("../e2e/_wireguard.ts");
    const r = await shippedWireguard([]);
    assertEquals(r.ready, false);
    assert(r.status.code !== 0, r.log);
    assert(r.log.includes(`Cannot run "${WIREGUARD_GO}"`), r.log);
  },
);

Deno.test("deploy/permissions-extension.txt is deploy/permissions.txt with --allow-run for any program, nothing else", async () => {
  const words = async (name: string) =>
    (await Deno.readTextFile(`${ROOT}deploy/${name}`)).trim().split(/\s+/);
  const shipped = await words("permissions.txt");
  assert(shipped.some((w) => w.startsWith("--allow-run=")));
  assertEquals(
    await words("permissions-extension.txt"),
    shipped.map((w) => w.startsWith("--allow-run=") ? "--allow-run" : w),
  );
});
