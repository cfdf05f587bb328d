import assert from "node:assert/strict";
import { parseNetConfig } from "../../subnet/config.ts";
import type { Lease, LeaseEvent } from "../../subnet/lease.ts";
import { unwrap } from "../../lib/result.ts";
import { setLogSink } from "../../lib/log.ts";
import { metrics } from "../../lib/metrics.ts";
import { type CommandOutput, RunPermissionError } from "../../lib/command.ts";
import type { Underlay } from "../backend.ts";
import {
  createExtensionBackend,
  type ExtensionOptions,
  parseExtensionConfig,
} from "./extension.ts";

const logs: string[] = [];
setLogSink((l) => logs.push(l));

const underlay: Underlay = {
  index: 2,
  name: "eth0",
  mtu: 1500,
  ifaceAddr: "198.18.0.1",
  publicIP: "203.0.113.1",
};

interface Call {
  argv: readonly string[];
  env: Record<string, string>;
  stdin: string;
}

/** A backend whose commands are recorded and answered by `answer`. */
function backend(
  commands: Record<string, string>,
  answer: (c: Call) => Promise<CommandOutput> | CommandOutput = () => ({
    code: 0,
    stdout: "",
    stderr: "",
  }),
  opts: ExtensionOptions = {},
) {
  const calls: Call[] = [];
  const netConf = JSON.stringify({
    Network: "10.244.0.0/16",
    Backend: { Type: "extension", ...commands },
  });
  const b = unwrap(
    createExtensionBackend(
      undefined,
      unwrap(parseNetConfig(netConf)),
      underlay,
      {
        run: async (argv, o) => {
          const c = { argv, env: o.env ?? {}, stdin: o.stdin ?? "" };
          calls.push(c);
          return await answer(c);
        },
        getEnv: (n) => n === "HOME" ? "/root" : undefined,
        mayRun: () => true,
        mayReadEnv: () => true,
        ...opts,
      },
    ),
  );
  return { b, calls };
}

function lease(n: number, data?: unknown, type = "extension"): Lease {
  return {
    key: `node-${n}`,
    subnet: `10.244.${n}.0/24`,
    attrs: {
      backendType: type,
      publicIP: `198.18.0.${n}`,
      ...(data !== undefined && { backendData: data }),
    },
  };
}

const ev = (type: "added" | "removed", l: Lease): LeaseEvent => ({
  type,
  lease: l,
  receivedAt: 0,
});

Deno.test("parseExtensionConfig() reads flanneld's keys case-insensitively and names a bad one", () => {
  assert.deepEqual(
    unwrap(parseExtensionConfig({
      Type: "extension",
      subnetaddcommand: "/bin/add $SUBNET",
      PreStartupCommand: null,
    })),
    {
      PreStartupCommand: "",
      PostStartupCommand: "",
      SubnetAddCommand: "/bin/add $SUBNET",
      SubnetRemoveCommand: "",
    },
  );
  assert.deepEqual(parseExtensionConfig({ SubnetRemoveCommand: 7 }), {
    ok: false,
    reason: "Invalid Backend.SubnetRemoveCommand 7: must be a string",
  });
  assert.deepEqual(parseExtensionConfig({ PostStartupCommand: " \t" }), {
    ok: false,
    reason: 'Invalid Backend.PostStartupCommand " \\t": names no program',
  });
});

Deno.test("setup() publishes PreStartupCommand's trimmed output as the backend data, with the interface address", async () => {
  const { b, calls } = backend(
    { PreStartupCommand: "/bin/pre --home=$HOME" },
    () => ({ code: 0, stdout: "  key-123\n", stderr: "" }),
  );
  await b.setup(new AbortController().signal);
  assert.deepEqual(calls, [{
    argv: ["/bin/pre", "--home=/root"],
    env: {},
    stdin: "\n",
  }]);
  assert.deepEqual(b.prepare(), {
    backendType: "extension",
    publicIP: "198.18.0.1",
    backendData: "key-123",
  });
  const none = backend({}).b;
  await none.setup(new AbortController().signal);
  assert.deepEqual(none.prepare(), {
    backendType: "extension",
    publicIP: "198.18.0.1",
  });
});

Deno.test("start() runs PostStartupCommand with flanneld's variables; its failure rejects started", async () => {
  const { b, calls } = backend({ PostStartupCommand: "/bin/post" });
  const net = b.start({ ...lease(1), attrs: b.prepare() });
  await net.started;
  assert.equal(net.mtu, 1500);
  assert.deepEqual(net.families, []);
  assert.deepEqual(calls[0]!.env, {
    NETWORK: "10.244.0.0/16",
    SUBNET: "10.244.1.0/24",
    IPV6SUBNET: "::/0",
    PUBLIC_IP: "198.18.0.1",
    PUBLIC_IPV6: "<nil>",
  });
  const failing = backend(
    { PostStartupCommand: "/bin/post" },
    () => ({ code: 3, stdout: "", stderr: "boom" }),
  ).b;
  await assert.rejects(
    failing.start(lease(1)).started!,
    /PostStartupCommand "\/bin\/post" failed/,
  );
  assert.ok(logs.some((l) => l.includes("exit status 3; output: boom")));
});

Deno.test("handle() runs SubnetAdd/RemoveCommand with the peer's variables and its data on stdin, once per change", async () => {
  const { b, calls } = backend({
    SubnetAddCommand: "/bin/add ${SUBNET}",
    SubnetRemoveCommand: "/bin/del $PUBLIC_IP",
  });
  b.handle([ev("added", lease(2, "peer-key")), ev("added", lease(3))]);
  await b.idle();
  b.handle([ev("added", lease(2, "peer-key"))]); // no change: nothing runs
  b.handle([ev("added", lease(9, undefined, "vxlan"))]); // not ours
  b.handle([ev("added", lease(3, "new"))]);
  b.handle([ev("removed", lease(2, "peer-key"))]);
  await b.idle();
  assert.deepEqual(calls, [
    {
      argv: ["/bin/add", "10.244.2.0/24"],
      env: { SUBNET: "10.244.2.0/24", PUBLIC_IP: "198.18.0.2" },
      stdin: "peer-key\n",
    },
    {
      argv: ["/bin/add", "10.244.3.0/24"],
      env: { SUBNET: "10.244.3.0/24", PUBLIC_IP: "198.18.0.3" },
      stdin: "\n",
    },
    {
      argv: ["/bin/add", "10.244.3.0/24"],
      env: { SUBNET: "10.244.3.0/24", PUBLIC_IP: "198.18.0.3" },
      stdin: "new\n",
    },
    {
      argv: ["/bin/del", "198.18.0.2"],
      env: { SUBNET: "10.244.2.0/24", PUBLIC_IP: "198.18.0.2" },
      stdin: "peer-key\n",
    },
  ]);
});

Deno.test("handle() does not run a command on backend data that is not a JSON string, and counts it", async () => {
  const { b, calls } = backend({ SubnetAddCommand: "/bin/add" });
  const before = metrics.extensionCommandFailures.get({
    command: "SubnetAddCommand",
  });
  b.handle([ev("added", lease(2, { VNI: 1 }))]);
  await b.idle();
  assert.deepEqual(calls, []);
  assert.equal(
    metrics.extensionCommandFailures.get({ command: "SubnetAddCommand" }),
    before + 1,
  );
  assert.ok(logs.some((l) => l.includes('its backend data {"VNI":1}')));
});

Deno.test("a slow peer command holds up no other peer, and one peer's commands keep their order", async () => {
  let release!: () => void;
  const held = new Promise<void>((r) => release = r);
  const done: string[] = [];
  const { b } = backend({
    SubnetAddCommand: "/bin/add $SUBNET",
    SubnetRemoveCommand: "/bin/del $SUBNET",
  }, async (c) => {
    if (c.argv[1] === "10.244.2.0/24" && c.argv[0] === "/bin/add") await held;
    done.push(c.argv.join(" "));
    return { code: 0, stdout: "", stderr: "" };
  }, { parallel: 2 });
  b.handle([
    ev("added", lease(2)),
    ev("removed", lease(2)),
    ev("added", lease(3)),
    ev("added", lease(4)),
  ]);
  const deadline = Date.now() + 2000;
  while (done.length < 2 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.deepEqual(done, ["/bin/add 10.244.3.0/24", "/bin/add 10.244.4.0/24"]);
  release();
  await b.idle();
  assert.deepEqual(done.slice(2), [
    "/bin/add 10.244.2.0/24",
    "/bin/del 10.244.2.0/24",
  ]);
});

Deno.test("a failed, timed-out or unrunnable peer command is logged with its status and counted", async () => {
  const { b } = backend({ SubnetAddCommand: "/bin/add $SUBNET" }, (c) => {
    if (c.argv[1] === "10.244.2.0/24") {
      return { code: 124, stdout: "", stderr: "killed", timedOut: true };
    }
    if (c.argv[1] === "10.244.3.0/24") throw new Error("No such file");
    return { code: 1, stdout: "out", stderr: "err" };
  });
  const before = metrics.extensionCommandFailures.get({
    command: "SubnetAddCommand",
  });
  logs.length = 0;
  b.handle([
    ev("added", lease(2)),
    ev("added", lease(3)),
    ev("added", lease(4)),
  ]);
  await b.idle();
  assert.equal(
    metrics.extensionCommandFailures.get({ command: "SubnetAddCommand" }),
    before + 3,
  );
  const errors = logs.filter((l) => l.includes("failed")).join("\n");
  assert.match(errors, /for "node-2" failed: killed at its deadline/);
  assert.match(
    errors,
    /for "node-3" failed: exit status 127; output: No such file/,
  );
  assert.match(errors, /for "node-4" failed: exit status 1; output: outerr/);
});

Deno.test("setup() refuses, naming them, a program and a variable outside the permissions", async () => {
  const { b, calls } = backend(
    {
      PreStartupCommand: "/bin/pre $SECRET",
      SubnetAddCommand: "/etc/flannel/add.sh $SUBNET",
      // Depends on the event: checked when it runs.
      SubnetRemoveCommand: "$SUBNET",
    },
    undefined,
    {
      mayRun: (p) => p === "/bin/pre",
      mayReadEnv: (n) => n !== "SECRET",
    },
  );
  const err = await b.setup(new AbortController().signal).then(
    () => undefined,
    (e) => e,
  );
  assert.ok(err instanceof RunPermissionError);
  const lines = err.message.split("\n");
  assert.equal(lines.length, 2);
  assert.match(
    lines[0]!,
    /^Backend\.PreStartupCommand refers to \$SECRET, but this weft build has no env permission on "SECRET"/,
  );
  assert.match(
    lines[1]!,
    /^Backend\.SubnetAddCommand runs "\/etc\/flannel\/add\.sh", but this weft build has no run permission on "\/etc\/flannel\/add\.sh".*deploy\/permissions-extension\.txt/,
  );
  assert.deepEqual(calls, []);
});
