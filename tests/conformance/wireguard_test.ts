/**
 * The wireguard backend beside flanneld: flanneld v0.28.9 creates its
 * device only through the kernel (`ip link add flannel-wg type wireguard`)
 * and this machine's kernel has no WireGuard module, so flanneld cannot
 * start the backend here and nothing of its state can be compared. This
 * case runs it with the wireguard net-conf anyway, asserts that it fails
 * at the device, and records its actual error in
 * bench/results/conformance-wireguard.md as "not compared here". What is
 * compared instead: the lease data and keys, read from flanneld's source
 * (docs/wireguard.md), in the unit and end-to-end tests.
 *
 * @module
 */
import assert from "node:assert/strict";
import { gatedTest, ROOT as NEEDS_ROOT } from "../_gate.ts";
import { Cluster } from "../_cluster.ts";
import { serverBinary } from "../servers/paths.ts";
import { DEBIAN_ETCD_SERVER } from "../servers/etcd.ts";
import { FLANNELD } from "./_harness.ts";
import { describeCommit } from "../_commit.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const NET_CONF = '{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}';

await gatedTest({
  name:
    "flanneld v0.28.9 cannot start its wireguard backend without the kernel module (recorded: not compared here)",
  needs: [NEEDS_ROOT, FLANNELD, DEBIAN_ETCD_SERVER],
  fn: async () => {
    await using c = await Cluster.create({
      prefix: "weft-cwg",
      nodes: 1,
      netConf: NET_CONF,
    });
    const node = c.nodes[0]!;
    const flanneld = (await serverBinary("flanneld"))!;
    const out = await node.ns.tryExec([
      "env",
      `WIREGUARD_KEY_FILE=${node.dir}/wgkey`,
      "timeout",
      "60",
      flanneld,
      `--etcd-endpoints=${c.etcdEndpoint}`,
      "--iface=eth0",
      `--subnet-file=${node.subnetFile}`,
    ]);
    const lines = out.stderr.trim().split("\n");
    const error = lines.find((l) => /Error registering network/i.test(l)) ??
      lines.at(-1) ?? "";
    assert.notEqual(out.code, 0, out.stderr);
    assert.notEqual(out.code, 124, `flanneld did not exit: ${out.stderr}`);
    assert.match(error, /not supported/i, out.stderr);
    const text = [
      "# Conformance: flanneld v0.28.9's wireguard backend",
      "",
      `\`deno task test:conformance\` (tests/conformance/wireguard_test.ts) at ${await describeCommit()}`,
      `on ${new Date().toISOString().slice(0, 10)} ran flanneld v0.28.9 with`,
      `\`${NET_CONF}\` in a node namespace. This kernel has no WireGuard`,
      `module and flanneld has no userspace path, so it exited ${out.code}:`,
      "",
      "```",
      error.replace(/^[IEW]\d{4} [\d:.]+\s+\d+ /, ""),
      "```",
      "",
      "| case | result |",
      "| --- | --- |",
      "| wireguard backend, etcd mode | not compared here: flanneld cannot start it without the kernel module |",
      "",
      "weft runs the same net-conf on wireguard-go (tests/e2e/wireguard_test.ts).",
      "",
    ].join("\n");
    await Deno.writeTextFile(
      `${ROOT}bench/results/conformance-wireguard.md`,
      text,
    );
  },
});
