/**
 * The wireguard backend's one configuration path, `wg`, against userspace
 * WireGuard (wireguard-go, built by .ci/build_servers.sh --with-wireguard):
 * devices made by the userspace starter in two namespaces, configured
 * through WgCli, read back with `wg show dump`, and pinged across.
 *
 * wireguard-go's UAPI socket lives in /var/run/wireguard on the file
 * system, shared by all network namespaces, so each node runs in its own
 * mount namespace with its own directory bound there.
 *
 * @module
 */
import assert from "node:assert/strict";
import { joinOnBridge, kernelTest, Netns, sh } from "../_netns.ts";
import { WIREGUARD_GO, wireguardMount } from "../e2e/_wireguard.ts";
import { userspaceStarter } from "../../backend/wireguard/device.ts";
import { generatePrivateKey } from "../../backend/wireguard/keys.ts";
import { WgCli } from "../../backend/wireguard/wg.ts";

/** Runs the rest of argv in `ns` with `dir` as its /var/run/wireguard. */
function nodePrefix(dir: string, ns: string): string[] {
  return [...wireguardMount(dir), "ip", "netns", "exec", ns];
}

kernelTest(
  "wireguard-go devices configured through wg read back and carry traffic",
  async () => {
    await using hub = await Netns.create("wghub");
    await using a = await Netns.create("wga");
    await using b = await Netns.create("wgb");
    await joinOnBridge(hub, [a, b], ["198.18.0.1/24", "198.18.0.2/24"]);
    const dirs = [await Deno.makeTempDir(), await Deno.makeTempDir()];
    try {
      const nodes = [a, b].map((ns, i) => {
        const prefix = nodePrefix(dirs[i]!, ns.name);
        const launcher = `${dirs[i]}.launch`;
        // The starter runs WG_USERSPACE_IMPLEMENTATION by name: a launcher
        // puts it into the node's namespaces, as the agent would be.
        Deno.writeTextFileSync(
          launcher,
          `#!/bin/sh\nexec ${
            prefix.map((p) => `'${p}'`).join(" ")
          } ${WIREGUARD_GO} "$@"\n`,
          { mode: 0o755 },
        );
        const key = generatePrivateKey();
        Deno.writeTextFileSync(`${dirs[i]}.key`, key + "\n", { mode: 0o400 });
        return {
          ns,
          wg: new WgCli({ prefix }),
          key,
          start: userspaceStarter(
            new Map([["WG_USERSPACE_IMPLEMENTATION", launcher]]),
          ),
        };
      });
      for (const [i, n] of nodes.entries()) {
        n.start("flannel-wg");
        n.wg.setDevice("flannel-wg", {
          listenPort: 51820,
          privateKeyFile: `${dirs[i]}.key`,
        });
        await n.ns.ip(
          "addr",
          "add",
          `10.244.${i + 1}.0/32`,
          "dev",
          "flannel-wg",
        );
        await n.ns.ip("link", "set", "flannel-wg", "up", "mtu", "1420");
        await n.ns.ip(
          "route",
          "add",
          "10.244.0.0/16",
          "dev",
          "flannel-wg",
          "scope",
          "link",
        );
      }
      const pubs = nodes.map((n) => n.wg.show("flannel-wg").publicKey!);
      for (const [i, n] of nodes.entries()) {
        const other = 1 - i;
        n.wg.setPeer("flannel-wg", {
          publicKey: pubs[other]!,
          endpoint: `198.18.0.${other + 1}:51820`,
          allowedIps: [`10.244.${other + 1}.0/24`],
          keepalive: 0,
        });
      }
      const dump = nodes[0]!.wg.show("flannel-wg");
      assert.equal(dump.privateKey, nodes[0]!.key);
      assert.equal(dump.listenPort, 51820);
      assert.deepEqual(dump.peers, [{
        publicKey: pubs[1],
        endpoint: "198.18.0.2:51820",
        allowedIps: ["10.244.2.0/24"],
        keepalive: 0,
      }]);
      const link = JSON.parse(await a.ip("-j", "link", "show", "flannel-wg"));
      assert.equal(link[0].mtu, 1420);
      assert.equal(await a.ping("10.244.2.0", 3), true, "ping over WireGuard");
      nodes[0]!.wg.removePeer("flannel-wg", pubs[1]!);
      assert.deepEqual(nodes[0]!.wg.show("flannel-wg").peers, []);
      // The socket is in the node's own directory, not in the shared one.
      const socks = await sh(["ls", dirs[0]!]);
      assert.match(socks, /flannel-wg\.sock/);
    } finally {
      await a.close();
      await b.close();
      for (const d of dirs) {
        await Deno.remove(d, { recursive: true }).catch(() => {});
        for (const f of [`${d}.launch`, `${d}.key`]) {
          await Deno.remove(f).catch(() => {});
        }
      }
    }
  },
);

kernelTest(
  "without kernel WireGuard and without a userspace implementation the error names both",
  () => {
    const start = userspaceStarter(
      new Map([["WG_USERSPACE_IMPLEMENTATION", "/nonexistent/wireguard-go"]]),
    );
    assert.throws(
      () => start("flannel-wg"),
      /the kernel has no wireguard link type and no userspace implementation was found \("\/nonexistent\/wireguard-go"; set WG_USERSPACE_IMPLEMENTATION or install wireguard-go on PATH\)/,
    );
  },
);
