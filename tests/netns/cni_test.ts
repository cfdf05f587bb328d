/**
 * Kernel tests of the flannel CNI plugin with Debian's reference plugins
 * (`containernetworking-plugins`, CNI_PATH=/usr/lib/cni). The plugin runs
 * as a separate process inside a "node" namespace (`ip netns exec`), as a
 * runtime would run it, with CNI_NETNS naming a "pod" namespace. IPAM state
 * and the stored delegate configurations live in a temporary directory.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import { kernelTest, Netns, type Output, run } from "../_netns.ts";
import { runCommand } from "../../lib/command.ts";

const CNI_PATH = "/usr/lib/cni";
const ENTRY = new URL("../../cni/main.ts", import.meta.url).pathname;

interface Setup {
  node: Netns;
  pod: Netns;
  dir: string;
  conf: (version?: string, extra?: Record<string, unknown>) => string;
  [Symbol.asyncDispose](): Promise<void>;
}

async function setup(): Promise<Setup> {
  const node = await Netns.create("cni-node");
  const pod = await Netns.create("cni-pod");
  const dir = await Deno.makeTempDir({ prefix: "weft-cni-" });
  await Deno.writeTextFile(
    `${dir}/subnet.env`,
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
  );
  return {
    node,
    pod,
    dir,
    // The stock conflist's flannel entry, plus where to keep state.
    conf: (version = "0.3.1", extra = {}) =>
      JSON.stringify({
        cniVersion: version,
        name: "cbr0",
        type: "flannel",
        subnetFile: `${dir}/subnet.env`,
        dataDir: `${dir}/flannel`,
        ipam: { dataDir: `${dir}/ipam` },
        delegate: { hairpinMode: true, isDefaultGateway: true },
        ...extra,
      }),
    async [Symbol.asyncDispose]() {
      await pod.close();
      await node.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Runs the plugin in the node namespace, the way a runtime would. */
function plugin(
  s: Setup,
  command: string,
  conf: string,
  opts: {
    containerId?: string;
    netns?: string;
    cniPath?: string;
    env?: Record<string, string>;
    /** More programs the plugin may run than the bridge plugin. */
    allowRun?: string[];
  } = {},
): Promise<Output> {
  const env = {
    ...opts.env,
    CNI_COMMAND: command,
    CNI_CONTAINERID: opts.containerId ?? "pod0",
    CNI_NETNS: opts.netns ?? s.pod.path,
    CNI_IFNAME: "eth0",
    CNI_PATH: opts.cniPath ?? CNI_PATH,
  };
  return runCommand([
    "ip",
    "netns",
    "exec",
    s.node.name,
    Deno.execPath(),
    "run",
    "--no-prompt",
    // As narrow as the compiled binary's: the state directory, the CNI
    // variables, the delegate.
    `--allow-read=${s.dir}`,
    `--allow-write=${s.dir}`,
    "--allow-env=CNI_*,PATH",
    `--allow-run=${[`${CNI_PATH}/bridge`, ...opts.allowRun ?? []].join(",")}`,
    ENTRY,
  ], { env, stdin: conf });
}

interface AddrJson {
  ifname: string;
  addr_info: { family: string; local: string; prefixlen: number }[];
  linkinfo?: { info_kind?: string };
  master?: string;
}

kernelTest(
  "cni: ADD wires a pod to the cni0 bridge with an address in the node subnet, DEL removes it",
  async () => {
    if (!(await Deno.stat(`${CNI_PATH}/bridge`).catch(() => null))) {
      throw new Error(
        `No bridge plugin in ${CNI_PATH}: install containernetworking-plugins`,
      );
    }
    await using s = await setup();

    const add = await plugin(s, "ADD", s.conf());
    assertEquals(add.code, 0, `ADD failed: ${add.stdout} ${add.stderr}`);
    const result = JSON.parse(add.stdout) as {
      ips: { address: string; gateway: string }[];
    };
    const address = result.ips[0]!.address;
    assert(/^10\.244\.1\.\d+\/24$/.test(address), address);
    assertEquals(result.ips[0]!.gateway, "10.244.1.1");

    // The pod: eth0 with that address, default route and cluster route via .1.
    const podAddrs = await s.pod.json<AddrJson[]>(
      "addr",
      "show",
      "dev",
      "eth0",
    );
    assertEquals(
      podAddrs[0]!.addr_info.filter((a) => a.family === "inet").map((a) =>
        `${a.local}/${a.prefixlen}`
      ),
      [address],
    );
    const routes = await s.pod.json<{ dst: string; gateway?: string }[]>(
      "-4",
      "route",
      "show",
    );
    assert(
      routes.some((r) => r.dst === "default" && r.gateway === "10.244.1.1"),
      JSON.stringify(routes),
    );
    assert(
      routes.some((r) =>
        r.dst === "10.244.0.0/16" && r.gateway === "10.244.1.1"
      ),
      JSON.stringify(routes),
    );
    const mtu = await s.pod.json<{ mtu: number }[]>(
      "link",
      "show",
      "dev",
      "eth0",
    );
    assertEquals(mtu[0]!.mtu, 1450);

    // The node: the bridge holding the gateway address and the pod's veth.
    // The stock conflist names the network "cbr0"; the bridge plugin's
    // device is "cni0" (its default), as on every flannel node.
    const cni0 = await s.node.json<AddrJson[]>(
      "-d",
      "addr",
      "show",
      "dev",
      "cni0",
    );
    assertEquals(cni0[0]!.linkinfo?.info_kind, "bridge");
    assert(
      cni0[0]!.addr_info.some((a) =>
        a.local === "10.244.1.1" && a.prefixlen === 24
      ),
    );
    const ports = await s.node.json<AddrJson[]>(
      "link",
      "show",
      "master",
      "cni0",
    );
    assertEquals(ports.length, 1);
    assert(await s.pod.ping("10.244.1.1"), "pod reaches its gateway");

    // The stored delegate is flannel's, with the configuration's ipam.
    assertEquals(
      await Deno.readTextFile(`${s.dir}/flannel/pod0`),
      `{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"dataDir":"${s.dir}/ipam","ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}`,
    );
    assertEquals(
      (await Deno.stat(`${s.dir}/flannel/pod0`)).mode! & 0o777,
      0o600,
    );
    const ip = address.split("/")[0]!;
    assert(
      await Deno.stat(`${s.dir}/ipam/cbr0/${ip}`),
      "host-local reserved the IP",
    );

    const del = await plugin(s, "DEL", s.conf());
    assertEquals([del.code, del.stdout], [0, ""], del.stderr);
    const after = await s.pod.tryExec(["ip", "link", "show", "dev", "eth0"]);
    assert(after.code !== 0, "eth0 is gone from the pod");
    assertEquals(await s.node.json("link", "show", "master", "cni0"), []);
    assertEquals(
      await Deno.stat(`${s.dir}/flannel/pod0`).catch(() => null),
      null,
    );
    assertEquals(
      await Deno.stat(`${s.dir}/ipam/cbr0/${ip}`).catch(() => null),
      null,
    );

    // A second DEL has nothing stored and still succeeds.
    const again = await plugin(s, "DEL", s.conf());
    assertEquals([again.code, again.stdout], [0, ""]);
  },
);

kernelTest(
  "cni: a CNI_PATH directory outside --allow-run is skipped, the next one is used",
  async () => {
    await using s = await setup();
    // A real directory holding a bridge binary the permission list does not
    // name: Deno refuses to run it (NotCapable) before looking at the file.
    const other = `${s.dir}/bin`;
    await Deno.mkdir(other);
    await Deno.copyFile(`${CNI_PATH}/bridge`, `${other}/bridge`);
    await Deno.chmod(`${other}/bridge`, 0o755);
    const path = `${other}:${CNI_PATH}`;
    const add = await plugin(s, "ADD", s.conf(), { cniPath: path });
    assertEquals(add.code, 0, `ADD failed: ${add.stdout} ${add.stderr}`);
    assert(await s.pod.ping("10.244.1.1"), "pod reaches its gateway");
    const del = await plugin(s, "DEL", s.conf(), { cniPath: path });
    assertEquals([del.code, del.stdout], [0, ""], del.stderr);

    // Only a directory it may not run from: the error says so.
    const none = await plugin(s, "ADD", s.conf(), {
      containerId: "pod1",
      cniPath: other,
    });
    assertEquals(none.code, 1);
    assertEquals(
      JSON.parse(none.stdout).msg,
      `Cannot find delegate plugin "bridge" in CNI_PATH "${other}": this weft build has no run permission on "${other}/bridge" (its --allow-run names each delegate by the path it is run as; the shipped list, deploy/permissions.txt, allows "/opt/cni/bin/bridge", "/usr/libexec/cni/bridge", "/usr/lib/cni/bridge", "/var/lib/rancher/k3s/data/cni/bridge", "/var/lib/rancher/k3s/data/current/bin/bridge")`,
    );
  },
);

kernelTest(
  "cni: ADD and DEL work when the runtime's environment holds LD_LIBRARY_PATH",
  async () => {
    // containerd hands its plugins LD_LIBRARY_PATH; a child inheriting it
    // would need --allow-run for every program.
    await using s = await setup();
    const ld = { LD_LIBRARY_PATH: "/opt/containerd/lib:" };
    const add = await plugin(s, "ADD", s.conf(), { env: ld });
    assertEquals(add.code, 0, `ADD failed: ${add.stdout} ${add.stderr}`);
    assert(await s.pod.ping("10.244.1.1"), "pod reaches its gateway");
    const del = await plugin(s, "DEL", s.conf(), { env: ld });
    assertEquals([del.code, del.stdout], [0, ""], del.stderr);
  },
);

kernelTest("cni: DEL of a container never added succeeds", async () => {
  await using s = await setup();
  const del = await plugin(s, "DEL", s.conf(), { containerId: "never-added" });
  assertEquals([del.code, del.stdout], [0, ""], del.stderr);
});

kernelTest(
  "cni: CHECK passes on a wired pod and fails once its address is gone",
  async () => {
    await using s = await setup();
    const add = await plugin(s, "ADD", s.conf("1.0.0"));
    assertEquals(add.code, 0, `ADD failed: ${add.stdout} ${add.stderr}`);
    const prevResult = JSON.parse(add.stdout);
    const check = await plugin(s, "CHECK", s.conf("1.0.0", { prevResult }));
    assertEquals([check.code, check.stdout], [0, ""], check.stderr);

    await s.pod.ip("addr", "flush", "dev", "eth0");
    const broken = await plugin(s, "CHECK", s.conf("1.0.0", { prevResult }));
    assertEquals(broken.code, 1);
    const err = JSON.parse(broken.stdout) as { code: number; msg: string };
    assert(err.msg.length > 0, broken.stdout);

    const del = await plugin(s, "DEL", s.conf("1.0.0"));
    assertEquals(del.code, 0, del.stdout);
  },
);

kernelTest(
  "cni: ADD before subnet.env exists asks the runtime to try again",
  async () => {
    await using s = await setup();
    await Deno.remove(`${s.dir}/subnet.env`);
    const add = await plugin(s, "ADD", s.conf());
    assertEquals(add.code, 1);
    assertEquals(JSON.parse(add.stdout), {
      cniVersion: "0.3.1",
      code: 11,
      msg:
        `Subnet file "${s.dir}/subnet.env" does not exist yet: the network agent (weft or flanneld) has not written it`,
    });
    assertEquals(
      (await run(["ip", "-n", s.pod.name, "-o", "link"])).stdout.includes(
        "eth0",
      ),
      false,
    );
  },
);

kernelTest(
  "cni: a network configuration over 1 MiB on stdin is refused with a decoding error",
  async () => {
    await using s = await setup();
    const big = s.conf().replace("}", `,"pad":"${"x".repeat(2 << 20)}"}`);
    const add = await plugin(s, "ADD", big);
    assertEquals(add.code, 1);
    assertEquals(JSON.parse(add.stdout), {
      cniVersion: "1.1.0",
      code: 6,
      msg: "Network configuration on stdin is larger than 1048576 bytes",
    });
    assertEquals(
      await Deno.stat(`${s.dir}/flannel/pod0`).catch(() => null),
      null,
    );
  },
);

kernelTest(
  "cni: 50 concurrent ADDs on one node give 50 distinct addresses, and 50 DELs free them",
  async () => {
    await using s = await setup();
    const pods: Netns[] = [];
    try {
      for (let i = 0; i < 50; i++) pods.push(await Netns.create(`cni-p${i}`));
      const adds = await Promise.all(
        pods.map((p, i) =>
          plugin(s, "ADD", s.conf(), { containerId: `ctr${i}`, netns: p.path })
        ),
      );
      const failed = adds.filter((a) => a.code !== 0);
      assertEquals(failed.map((a) => a.stdout), []);
      const ips = adds.map((a) =>
        (JSON.parse(a.stdout) as { ips: { address: string }[] }).ips[0]!
          .address
      );
      assertEquals(new Set(ips).size, 50, ips.join(" "));
      // The kernel agrees: each pod holds the address it was given.
      for (const [i, p] of pods.entries()) {
        const a = await p.json<AddrJson[]>("addr", "show", "dev", "eth0");
        const have = a[0]!.addr_info.filter((x) => x.family === "inet").map(
          (x) => `${x.local}/${x.prefixlen}`,
        );
        assertEquals(have, [ips[i]]);
      }
      assertEquals(
        (await s.node.json("link", "show", "master", "cni0")).length,
        50,
      );
      const dels = await Promise.all(
        pods.map((p, i) =>
          plugin(s, "DEL", s.conf(), { containerId: `ctr${i}`, netns: p.path })
        ),
      );
      assertEquals(dels.filter((d) => d.code !== 0).map((d) => d.stdout), []);
      const left = [...Deno.readDirSync(`${s.dir}/ipam/cbr0`)].map((e) =>
        e.name
      ).filter((n) => /^\d+\.\d+\.\d+\.\d+$/.test(n));
      assertEquals(left, []);
    } finally {
      for (const p of pods) await p.close();
    }
  },
);

/**
 * A CNI_PATH directory whose `bridge` sleeps a second before an ADD, then
 * runs Debian's (which finds host-local in Debian's directory): ADD's
 * delegate is still at work when DEL comes.
 */
async function slowBridge(s: Setup): Promise<string> {
  const dir = `${s.dir}/slow`;
  await Deno.mkdir(dir);
  await Deno.writeTextFile(
    `${dir}/bridge`,
    `#!/bin/sh\nif [ "$CNI_COMMAND" = ADD ]; then /bin/sleep 1; fi\nCNI_PATH=${CNI_PATH} exec ${CNI_PATH}/bridge\n`,
    { mode: 0o755 },
  );
  return dir;
}

/** Waits (up to 20 s) until `path` exists. */
async function waitForFile(path: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!(await Deno.stat(path).catch(() => null))) {
    if (Date.now() > deadline) throw new Error(`"${path}" never appeared`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** What a node keeps of its pods: veths, IP reservations, stored files, locks. */
async function leftovers(s: Setup): Promise<string[]> {
  const names = (dir: string) =>
    [...Deno.readDirSync(dir)].map((e) => `${dir}/${e.name}`);
  const veths = await s.node.json<{ ifname: string }[]>(
    "link",
    "show",
    "type",
    "veth",
  );
  return [
    ...veths.map((l) => `veth ${l.ifname}`),
    ...names(`${s.dir}/ipam/cbr0`).filter((n) =>
      /\/\d+\.\d+\.\d+\.\d+$/.test(n)
    ),
    ...names(`${s.dir}/flannel`).filter((n) => !n.endsWith("/.locks")),
    ...names(`${s.dir}/flannel/.locks`),
  ];
}

kernelTest(
  "cni: 50 ADD/DEL pairs at once, each DEL while its ADD's delegate is still at work, leave no veth, address, stored file or lock",
  async () => {
    await using s = await setup();
    const slow = await slowBridge(s);
    const pods: Netns[] = [];
    try {
      for (let i = 0; i < 50; i++) pods.push(await Netns.create(`cni-q${i}`));
      const pairs = pods.map(async (p, i) => {
        const opts = {
          containerId: `ctr${i}`,
          netns: p.path,
          cniPath: slow,
          allowRun: [`${slow}/bridge`],
        };
        const add = plugin(s, "ADD", s.conf(), opts);
        // ADD stores its configuration under the lock, then runs the
        // delegate: DEL now comes while ADD is in progress.
        await waitForFile(`${s.dir}/flannel/ctr${i}`);
        const del = plugin(s, "DEL", s.conf(), opts);
        return [await add, await del];
      });
      const results = (await Promise.all(pairs)).flat();
      assertEquals(
        results.filter((r) => r.code !== 0).map((r) => r.stdout),
        [],
      );
      assertEquals(await leftovers(s), []);
      for (const p of pods) {
        const eth0 = await p.tryExec(["ip", "link", "show", "dev", "eth0"]);
        assert(eth0.code !== 0, `eth0 left in ${p.name}`);
      }
    } finally {
      for (const p of pods) await p.close();
    }
  },
);

kernelTest(
  "cni: DEL with an unreadable stored configuration releases the veth and address with the derived one; with nothing to derive from it fails naming the file",
  async () => {
    await using s = await setup();
    const add = await plugin(s, "ADD", s.conf());
    assertEquals(add.code, 0, `ADD failed: ${add.stdout} ${add.stderr}`);
    const stored = `${s.dir}/flannel/pod0`;
    await Deno.writeTextFile(stored, '{"cniVersion":"0.3.1","ty');
    const del = await plugin(s, "DEL", s.conf());
    assertEquals([del.code, del.stdout], [0, ""], del.stderr);
    assert(del.stderr.includes(`"${stored}" is not a delegate configuration`));
    assertEquals(await leftovers(s), []);

    // Again, now with subnet.env gone as well: nothing can be released,
    // and DEL says so instead of succeeding.
    const again = await plugin(s, "ADD", s.conf());
    assertEquals(again.code, 0, again.stdout);
    await Deno.writeTextFile(stored, "");
    await Deno.remove(`${s.dir}/subnet.env`);
    const failed = await plugin(s, "DEL", s.conf());
    assertEquals(failed.code, 1);
    const err = JSON.parse(failed.stdout) as { code: number; msg: string };
    assertEquals(err.code, 5);
    assert(
      err.msg.startsWith(
        `Cannot release container "pod0": stored delegate configuration "${stored}" is not a delegate configuration`,
      ),
      err.msg,
    );
    assert(await Deno.stat(stored), "the stored file stays for a retry");
    assert(
      await Deno.stat(`${s.dir}/flannel/.locks/pod0`),
      "its lock file stays with it",
    );
  },
);
