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

Deno.test("deploy/permissions.txt runs bridge from exactly the delegate directories the CNI plugin names", async () => {
  const { ALLOWED_DELEGATE_DIRS } = await import("../../cni/plugin.ts");
  const words = (await Deno.readTextFile(`${ROOT}deploy/permissions.txt`))
    .trim().split(/\s+/);
  const run = words.find((w) => w.startsWith("--allow-run="))!
    .slice("--allow-run=".length).split(",");
  assertEquals(
    run.filter((p) => p.endsWith("/bridge")),
    ALLOWED_DELEGATE_DIRS.map((d) => `${d}/bridge`),
  );
});

const CNI_RESULT =
  '{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.42.1.2/24"}]}';

/**
 * Runs weft's CNI plugin ADD under `deno run` with the shipped permissions,
 * in a private mount namespace whose /var/lib, /run/flannel and
 * /opt/cni/bin are empty tmpfs (the host gets at most those mount points,
 * made when missing): subnet.env
 * written, `setup` run first (it lays out plugins), CNI_PATH `cniPath`.
 * Returns the plugin's exit code, its stdout and the calls the fake plugins
 * logged (`<argv0> <CNI_COMMAND>` lines in /var/lib/calls).
 */
async function shippedCni(setup: string, cniPath: string) {
  const perms = (await Deno.readTextFile(`${ROOT}deploy/permissions.txt`))
    .trim();
  const conf = JSON.stringify({
    cniVersion: "0.3.1",
    name: "cbr0",
    type: "flannel",
    delegate: { hairpinMode: true, isDefaultGateway: true },
  });
  const script = `set -e
for d in /var/lib /run/flannel /opt/cni/bin; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
printf 'FLANNEL_NETWORK=10.42.0.0/16\\nFLANNEL_SUBNET=10.42.1.1/24\\nFLANNEL_MTU=1450\\nFLANNEL_IPMASQ=true\\n' >/run/flannel/subnet.env
cat >/var/lib/result <<'RESULT'
${CNI_RESULT}
RESULT
fake() { # PATH: a plugin that logs how it was called and answers ADD
  mkdir -p "$(dirname "$1")"
  printf '#!/bin/sh\\necho "$0 $CNI_COMMAND" >>/var/lib/calls\\ncat >/dev/null\\ncat /var/lib/result\\n' >"$1"
  chmod +x "$1"
}
${setup}
deno run --no-prompt ${perms} ${ROOT}main.ts cni <<'CONF' || echo "exit $?"
${conf}
CONF
echo "calls:"; cat /var/lib/calls 2>/dev/null || true
`;
  const out = await new Deno.Command("unshare", {
    args: ["-m", "--propagation", "private", "sh", "-c", script],
    env: {
      CNI_COMMAND: "ADD",
      CNI_CONTAINERID: "c0ffee",
      CNI_NETNS: "/run/netns/none",
      CNI_IFNAME: "eth0",
      CNI_PATH: cniPath,
      DENO_DIR: Deno.env.get("DENO_DIR") ??
        `${Deno.env.get("HOME")}/.cache/deno`,
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const [result = "", calls = ""] = text.split("calls:\n");
  const exit = result.match(/^exit (\d+)$/m);
  return {
    code: exit ? Number(exit[1]) : 0,
    stdout: result.replace(/^exit \d+\n/m, "").trim(),
    calls: calls.trim().split("\n").filter((l) => l),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/**
 * k3s's layouts: since 2024 data/cni/bridge -> ../<build>/bin/cni (a
 * multi-call binary); before, data/current/bin, data/current -> <build>.
 */
const K3S_LAYOUTS = [
  {
    name: "data/cni, a symlink to a multi-call binary",
    setup: "mkdir -p $k3s/cni && ln -s ../0123abcd/bin/cni $k3s/cni/bridge",
    cniPath: "/var/lib/rancher/k3s/data/cni",
  },
  {
    name: "data/current/bin, a symlink to the build's directory",
    setup: "ln -s cni $k3s/0123abcd/bin/bridge && ln -s 0123abcd $k3s/current",
    cniPath: "/var/lib/rancher/k3s/data/current/bin",
  },
];

for (const layout of K3S_LAYOUTS) {
  kernelTest(
    `weft's CNI plugin with the shipped permissions runs bridge from k3s's ${layout.name}`,
    async () => {
      const r = await shippedCni(
        `k3s=/var/lib/rancher/k3s/data
fake $k3s/0123abcd/bin/cni
${layout.setup}`,
        layout.cniPath,
      );
      assertEquals([r.code, r.stdout], [0, CNI_RESULT], r.stderr);
      // Run by the path in CNI_PATH: a multi-call binary dispatches on argv[0].
      assertEquals(r.calls, [`${layout.cniPath}/bridge ADD`]);
    },
  );
}

/** Delegates the shipped build cannot run, and the CNI error for each. */
const UNRUNNABLE = [
  {
    name: "outside its --allow-run",
    setup: "fake /var/lib/rancher/k3s/data/0123abcd/bin/bridge",
    cniPath: "/var/lib/rancher/k3s/data/0123abcd/bin",
    msg:
      'Cannot find delegate plugin "bridge" in CNI_PATH "/var/lib/rancher/k3s/data/0123abcd/bin": this weft build has no run permission on "/var/lib/rancher/k3s/data/0123abcd/bin/bridge" (its --allow-run names each delegate by the path it is run as; the shipped list, deploy/permissions.txt, allows "/opt/cni/bin/bridge", "/usr/libexec/cni/bridge", "/usr/lib/cni/bridge", "/var/lib/rancher/k3s/data/cni/bridge", "/var/lib/rancher/k3s/data/current/bin/bridge")',
  },
  {
    name: "it may run but cannot execute",
    setup: "fake /opt/cni/bin/bridge && chmod -x /opt/cni/bin/bridge",
    cniPath: "/opt/cni/bin",
    msg:
      "Cannot run delegate plugin \"/opt/cni/bin/bridge\": Failed to spawn '/opt/cni/bin/bridge': Permission denied (os error 13); it needs execute permission (and search permission on its directories) for the user weft runs as",
  },
];

for (const bad of UNRUNNABLE) {
  kernelTest(
    `weft's CNI plugin with the shipped permissions names a delegate ${bad.name}`,
    async () => {
      const r = await shippedCni(bad.setup, bad.cniPath);
      assertEquals(r.code, 1, r.stderr);
      assertEquals(JSON.parse(r.stdout).msg, bad.msg);
      assertEquals(r.calls, []);
    },
  );
}
