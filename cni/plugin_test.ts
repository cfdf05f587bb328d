import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import {
  type CniDeps,
  type ExecOutput,
  isCniInvocation,
  runCni,
  withRouteGateways,
} from "./plugin.ts";

const SUBNET_ENV =
  "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
const STOCK = JSON.stringify({
  cniVersion: "0.3.1",
  name: "cbr0",
  type: "flannel",
  delegate: { hairpinMode: true, isDefaultGateway: true },
});
const DELEGATE =
  '{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}';
const RESULT =
  '{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.244.1.2/24"}]}';

interface Call {
  path: string;
  env: Record<string, string>;
  stdin: string;
}

/** A fake filesystem and plugin directory. */
function fake(
  plugins: Record<string, (call: Call) => ExecOutput> = {},
) {
  const files = new Map<
    string,
    { data: string; mode: number; dirMode: number }
  >([
    ["/run/flannel/subnet.env", {
      data: SUBNET_ENV,
      mode: 0o644,
      dirMode: 0o755,
    }],
  ]);
  const calls: Call[] = [];
  /** Lock events: `lock <path>`, `release <path>` (`+remove`). */
  const locks: string[] = [];
  let out = "";
  let err = "";
  const deps: CniDeps = {
    stdout: (t) => (out += t),
    stderr: (t) => (err += t),
    readTextFile: (path) => {
      const f = files.get(path);
      return f
        ? Promise.resolve(f.data)
        : Promise.reject(new Deno.errors.NotFound(`No such file "${path}"`));
    },
    writeFile: (path, data, mode, dirMode) => {
      files.set(path, { data, mode, dirMode });
      return Promise.resolve();
    },
    remove: (path) => {
      files.delete(path);
      return Promise.resolve();
    },
    exec: (path, env, stdin) => {
      if (path.startsWith("/forbidden/")) {
        return Promise.reject(
          new Deno.errors.NotCapable(`Requires run access to "${path}"`),
        );
      }
      if (path.startsWith("/noexec/")) {
        return Promise.reject(
          new Deno.errors.PermissionDenied(
            `Failed to spawn '${path}': Permission denied (os error 13)`,
          ),
        );
      }
      const p = plugins[path];
      if (!p) return Promise.reject(new Deno.errors.NotFound(path));
      const call = { path, env, stdin };
      calls.push(call);
      return Promise.resolve(p(call));
    },
    lock: (path) => {
      locks.push(`lock ${path}`);
      return Promise.resolve({
        release: (remove = false) => {
          locks.push(`release ${path}${remove ? " +remove" : ""}`);
          return Promise.resolve();
        },
      });
    },
  };
  return {
    deps,
    files,
    calls,
    locks,
    get out() {
      return out;
    },
    get err() {
      return err;
    },
  };
}

const ENV = {
  CNI_COMMAND: "ADD",
  CNI_CONTAINERID: "c0ffee",
  CNI_NETNS: "/run/netns/pod",
  CNI_IFNAME: "eth0",
  CNI_PATH: "/nonexistent:/opt/cni/bin/",
  PATH: "/usr/bin",
};

const bridge = (call: Call): ExecOutput =>
  call.env.CNI_COMMAND === "ADD"
    ? { code: 0, stdout: RESULT, stderr: "" }
    : { code: 0, stdout: "", stderr: "" };

Deno.test("runCni() ADD stores the delegate and runs bridge from CNI_PATH", async () => {
  const f = fake({ "/opt/cni/bin/bridge": bridge });
  assertEquals(await runCni(ENV, STOCK, f.deps), 0);
  assertEquals(f.out, RESULT);
  assertEquals(f.files.get("/var/lib/cni/flannel/c0ffee"), {
    data: DELEGATE,
    mode: 0o600,
    dirMode: 0o700,
  });
  assertEquals(f.calls.length, 1);
  assertEquals(f.calls[0]!.stdin, DELEGATE);
  // The CNI variables and PATH, nothing else (see CniDeps.exec).
  assertEquals(f.calls[0]!.env, ENV);
});

Deno.test("runCni() skips a CNI_PATH directory this build may not run from", async () => {
  const f = fake({ "/opt/cni/bin/bridge": bridge });
  const env = { ...ENV, CNI_PATH: "/forbidden/cni:/opt/cni/bin" };
  assertEquals(await runCni(env, STOCK, f.deps), 0);
  assertEquals(f.out, RESULT);
  assertEquals(f.calls.map((c) => c.path), ["/opt/cni/bin/bridge"]);
});

Deno.test("runCni() names the delegates it may not run when none is found", async () => {
  const f = fake({});
  const env = { ...ENV, CNI_PATH: "/forbidden/a:/nonexistent:/forbidden/b/" };
  assertEquals(await runCni(env, STOCK, f.deps), 1);
  assertEquals(
    JSON.parse(f.out).msg,
    'Cannot find delegate plugin "bridge" in CNI_PATH "/forbidden/a:/nonexistent:/forbidden/b/": this weft build has no run permission on "/forbidden/a/bridge", "/forbidden/b/bridge" (its --allow-run names each delegate by the path it is run as; the shipped list, deploy/permissions.txt, allows "/opt/cni/bin/bridge", "/usr/libexec/cni/bridge", "/usr/lib/cni/bridge", "/var/lib/rancher/k3s/data/cni/bridge", "/var/lib/rancher/k3s/data/current/bin/bridge")',
  );
  assertEquals(f.calls.length, 0);
});

Deno.test("runCni() names a delegate it may run but cannot execute, and the permission it lacks", async () => {
  const f = fake({ "/opt/cni/bin/bridge": bridge });
  const env = { ...ENV, CNI_PATH: "/noexec/cni:/opt/cni/bin" };
  assertEquals(await runCni(env, STOCK, f.deps), 1);
  assertEquals(JSON.parse(f.out), {
    cniVersion: "0.3.1",
    code: 999,
    msg:
      "Cannot run delegate plugin \"/noexec/cni/bridge\": Failed to spawn '/noexec/cni/bridge': Permission denied (os error 13); it needs execute permission (and search permission on its directories) for the user weft runs as",
  });
  // The first delegate found is the one run (libcni's FindInPath).
  assertEquals(f.calls.length, 0);
});

Deno.test("runCni() DEL runs the delegate with the stored configuration and removes it", async () => {
  const f = fake({ "/opt/cni/bin/bridge": bridge });
  f.files.set("/tmp/d/c0ffee", { data: DELEGATE, mode: 0o600, dirMode: 0o700 });
  const del = { ...ENV, CNI_COMMAND: "DEL", CNI_NETNS: "" };
  const code = await runCni(
    del,
    JSON.stringify({ name: "cbr0", dataDir: "/tmp/d/" }),
    f.deps,
  );
  assertEquals([code, f.out], [0, ""]);
  assertEquals(f.calls.map((c) => [c.env.CNI_COMMAND, c.stdin]), [[
    "DEL",
    DELEGATE,
  ]]);
  assertEquals(f.files.has("/tmp/d/c0ffee"), false);
});

Deno.test("runCni() DEL with nothing stored succeeds without running anything", async () => {
  const f = fake({ "/opt/cni/bin/bridge": bridge });
  const code = await runCni({ ...ENV, CNI_COMMAND: "DEL" }, STOCK, f.deps);
  assertEquals([code, f.out, f.calls.length], [0, "", 0]);
});

Deno.test("runCni() passes a delegate's CNI error through and keeps the stored file", async () => {
  const failing = () => ({
    code: 1,
    stdout: '{"cniVersion":"0.3.1","code":7,"msg":"bad bridge","details":"x"}',
    stderr: "bridge says no\n",
  });
  const f = fake({ "/opt/cni/bin/bridge": failing });
  f.files.set("/var/lib/cni/flannel/c0ffee", {
    data: DELEGATE,
    mode: 0o600,
    dirMode: 0o700,
  });
  assertEquals(await runCni({ ...ENV, CNI_COMMAND: "DEL" }, STOCK, f.deps), 1);
  assertEquals(JSON.parse(f.out), {
    cniVersion: "0.3.1",
    code: 7,
    msg: "bad bridge",
    details: "x",
  });
  assertEquals(f.err, "bridge says no\n");
  assert(f.files.has("/var/lib/cni/flannel/c0ffee"));
});

Deno.test("runCni() reports errors as CNI JSON with the right codes", async () => {
  const cases: [Record<string, string>, string, number, string][] = [
    [
      { ...ENV, CNI_NETNS: "", CNI_IFNAME: "" },
      STOCK,
      4,
      'Required environment variables "CNI_NETNS", "CNI_IFNAME" missing',
    ],
    [
      { ...ENV, CNI_CONTAINERID: "../etc" },
      STOCK,
      4,
      'Invalid CNI_CONTAINERID "../etc": only letters, digits, "_", "." and "-" are allowed',
    ],
    [{ ...ENV, CNI_COMMAND: "FROB" }, STOCK, 4, 'Unknown CNI_COMMAND "FROB"'],
    [ENV, "{", 6, "Cannot parse network configuration: "],
    [
      ENV,
      '{"cniVersion":"9.9.9"}',
      1,
      'Incompatible CNI version "9.9.9": the plugin supports 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0',
    ],
    [
      ENV,
      '{"cniVersion":"0.3.1","subnetFile":"/none"}',
      11,
      'Subnet file "/none" does not exist yet: the network agent (weft or flanneld) has not written it',
    ],
    [
      ENV,
      '{"cniVersion":"0.3.1","delegate":{"name":"x"}}',
      7,
      'Invalid "delegate": it must not have "name", flannel sets it',
    ],
    [
      ENV,
      STOCK,
      999,
      'Cannot find delegate plugin "bridge" in CNI_PATH "/nonexistent:/opt/cni/bin/"',
    ],
    [
      { ...ENV, CNI_COMMAND: "CHECK" },
      STOCK,
      1,
      'CNI version "0.3.1" does not allow CHECK',
    ],
    [
      { ...ENV, CNI_COMMAND: "CHECK" },
      '{"cniVersion":"1.0.0"}',
      3,
      'No delegate configuration stored for container "c0ffee" in "/var/lib/cni/flannel"',
    ],
  ];
  for (const [env, stdin, code, msg] of cases) {
    const f = fake();
    assertEquals(await runCni(env, stdin, f.deps), 1, msg);
    const out = JSON.parse(f.out);
    assertEquals(out.code, code, msg);
    assert(
      (out.msg as string).startsWith(msg),
      `${out.msg} starts with ${msg}`,
    );
    assert(typeof out.cniVersion === "string");
  }
});

Deno.test("runCni() reports a subnet.env missing keys as try-again-later", async () => {
  const f = fake({ "/opt/cni/bin/bridge": bridge });
  f.files.set("/run/flannel/subnet.env", {
    data: "FLANNEL_MTU=1450\n",
    mode: 0o644,
    dirMode: 0o755,
  });
  assertEquals(await runCni(ENV, STOCK, f.deps), 1);
  assertEquals(JSON.parse(f.out), {
    cniVersion: "0.3.1",
    code: 11,
    msg:
      'Subnet file "/run/flannel/subnet.env" is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ',
  });
});

Deno.test("runCni() CHECK runs the delegate with the stored config and prevResult", async () => {
  const f = fake({ "/opt/cni/bin/bridge": bridge });
  f.files.set("/var/lib/cni/flannel/c0ffee", {
    data: DELEGATE,
    mode: 0o600,
    dirMode: 0o700,
  });
  const prevResult = JSON.parse(RESULT);
  const conf = JSON.stringify({
    cniVersion: "1.0.0",
    name: "cbr0",
    prevResult,
  });
  assertEquals(await runCni({ ...ENV, CNI_COMMAND: "CHECK" }, conf, f.deps), 0);
  const sent = JSON.parse(f.calls[0]!.stdin);
  assertEquals([
    f.calls[0]!.env.CNI_COMMAND,
    sent.cniVersion,
    sent.prevResult,
    sent.type,
  ], [
    "CHECK",
    "1.0.0",
    prevResult,
    "bridge",
  ]);
});

Deno.test("runCni() answers VERSION and STATUS", async () => {
  const f = fake();
  assertEquals(await runCni({ CNI_COMMAND: "VERSION" }, "", f.deps), 0);
  assertEquals(JSON.parse(f.out).supportedVersions.at(-1), "1.1.0");
  const ok = fake();
  assertEquals(
    await runCni({ CNI_COMMAND: "STATUS" }, '{"cniVersion":"1.1.0"}', ok.deps),
    0,
  );
  const down = fake();
  down.files.clear();
  assertEquals(
    await runCni(
      { CNI_COMMAND: "STATUS" },
      '{"cniVersion":"1.1.0"}',
      down.deps,
    ),
    1,
  );
  assertEquals(JSON.parse(down.out).code, 50);
});

Deno.test("isCniInvocation() knows the plugin by its name or the cni argument", () => {
  assertEquals(isCniInvocation("/opt/cni/bin/flannel", []), true);
  assertEquals(isCniInvocation("/usr/local/bin/weft", ["cni"]), true);
  assertEquals(isCniInvocation("/usr/local/bin/weft", ["--ip-masq"]), false);
  assertEquals(isCniInvocation("/usr/bin/deno", []), false);
});

Deno.test("withRouteGateways() gives gateway-less routes the gateway of their family", () => {
  assertEquals(
    withRouteGateways({
      cniVersion: "1.0.0",
      ips: [
        { address: "10.244.1.2/24", gateway: "10.244.1.1" },
        { address: "fd00::2/64", gateway: "fd00::1" },
      ],
      routes: [
        { dst: "10.244.0.0/16" },
        { dst: "0.0.0.0/0", gw: "10.244.1.254" },
        { dst: "fd00::/56" },
      ],
    }),
    {
      cniVersion: "1.0.0",
      ips: [
        { address: "10.244.1.2/24", gateway: "10.244.1.1" },
        { address: "fd00::2/64", gateway: "fd00::1" },
      ],
      routes: [
        { dst: "10.244.0.0/16", gw: "10.244.1.1" },
        { dst: "0.0.0.0/0", gw: "10.244.1.254" },
        { dst: "fd00::/56", gw: "fd00::1" },
      ],
    },
  );
  assertEquals(withRouteGateways("x"), "x");
});

Deno.test("runCni() runs ADD, DEL and CHECK under the container's lock; the lock file goes with the stored configuration", async () => {
  const f = fake({ "/opt/cni/bin/bridge": bridge });
  const lock = "/var/lib/cni/flannel/.locks/c0ffee";
  assertEquals(await runCni(ENV, STOCK, f.deps), 0);
  // Still stored after ADD: the lock file stays.
  assertEquals(f.locks, [`lock ${lock}`, `release ${lock}`]);
  f.locks.length = 0;
  const check = JSON.stringify({
    cniVersion: "1.0.0",
    name: "cbr0",
    prevResult: JSON.parse(RESULT),
  });
  assertEquals(
    await runCni({ ...ENV, CNI_COMMAND: "CHECK" }, check, f.deps),
    0,
  );
  assertEquals(f.locks, [`lock ${lock}`, `release ${lock}`]);
  f.locks.length = 0;
  assertEquals(await runCni({ ...ENV, CNI_COMMAND: "DEL" }, STOCK, f.deps), 0);
  assertEquals(f.locks, [`lock ${lock}`, `release ${lock} +remove`]);
  // A failed ADD that stored nothing leaves no lock file either.
  f.files.delete("/run/flannel/subnet.env");
  f.locks.length = 0;
  assertEquals(await runCni(ENV, STOCK, f.deps), 1);
  assertEquals(f.locks, [`lock ${lock}`, `release ${lock} +remove`]);
  // VERSION takes no lock.
  f.locks.length = 0;
  await runCni({ CNI_COMMAND: "VERSION" }, "", f.deps);
  assertEquals(f.locks, []);
});

Deno.test("runCni() DEL with an unreadable stored configuration releases with the derived one, or fails naming the file", async () => {
  const f = fake({ "/opt/cni/bin/bridge": bridge });
  const stored = "/var/lib/cni/flannel/c0ffee";
  f.files.set(stored, { data: "{trunc", mode: 0o600, dirMode: 0o700 });
  const del = { ...ENV, CNI_COMMAND: "DEL" };
  assertEquals(await runCni(del, STOCK, f.deps), 0);
  assertEquals(f.calls.map((c) => [c.env.CNI_COMMAND, c.stdin]), [[
    "DEL",
    DELEGATE,
  ]]);
  assertEquals(f.files.has(stored), false);
  assert(f.err.includes(`"${stored}" is not a delegate configuration`), f.err);

  // Nothing to derive it from (no subnet.env): a CNI error naming the
  // file and both causes, and the file stays for the retry.
  const g = fake({ "/opt/cni/bin/bridge": bridge });
  g.files.set(stored, { data: "{trunc", mode: 0o600, dirMode: 0o700 });
  g.files.delete("/run/flannel/subnet.env");
  assertEquals(await runCni(del, STOCK, g.deps), 1);
  const err = JSON.parse(g.out) as { code: number; msg: string };
  assertEquals(err.code, 5);
  assert(
    err.msg.startsWith(
      `Cannot release container "c0ffee": stored delegate configuration "${stored}" is not a delegate configuration (JSON with a "type"), and none can be derived: Subnet file "/run/flannel/subnet.env" does not exist yet`,
    ),
    err.msg,
  );
  assertEquals(g.calls.length, 0);
  assert(g.files.has(stored));

  // A read error (not "missing") is no success either.
  const h = fake({
    "/opt/cni/bin/bridge": () => ({ code: 1, stdout: "", stderr: "boom" }),
  });
  const read = h.deps.readTextFile;
  const deps = {
    ...h.deps,
    readTextFile: (path: string) =>
      path === stored
        ? Promise.reject(new Deno.errors.PermissionDenied("EACCES"))
        : read(path),
  };
  assertEquals(await runCni(del, STOCK, deps), 1);
  assert(
    (JSON.parse(h.out) as { msg: string }).msg.startsWith(
      `Cannot release container "c0ffee": stored delegate configuration "${stored}" cannot be read (EACCES), and the delegate's DEL with the configuration derived from "/run/flannel/subnet.env" failed: Delegate plugin "/opt/cni/bin/bridge" DEL exited 1: boom`,
    ),
    h.out,
  );
});
