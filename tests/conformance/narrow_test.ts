/**
 * The narrow deviations of the conformance harness, on hand-made
 * snapshots: what a deviation covers is compared on its own, the rest of
 * its field (and every other field) as before.
 *
 * @module
 */
import assert from "node:assert/strict";
import { compareSnapshots, type Narrow, type Snapshot } from "./_harness.ts";

const f: Snapshot = {
  subnetEnv: "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=8950",
  links: [{
    ifname: "flannel.1",
    mtu: 1450,
    linkinfo: { info_data: { local: "a", port: 8472 } },
  }],
  routes: [{ dst: "10.244.9.0/24", dev: "flannel.1" }, {
    dst: "x",
    dev: "eth0",
  }],
  etcd: { key: "k", value: "v", ttl: "no lease" },
};

function diffOf(w: Snapshot, narrows: readonly Narrow[]) {
  return [...compareSnapshots(f, w, narrows).keys()].sort();
}

Deno.test("a narrow deviation exempts only the lines, elements or attribute it names", () => {
  const mtu = {
    field: "subnetEnv",
    where: /^FLANNEL_MTU=/,
    label: "subnetEnv FLANNEL_MTU",
    anchor: "a",
  };
  // Only the MTU line differs: reported under the deviation's label.
  assert.deepEqual(
    diffOf({
      ...f,
      subnetEnv: "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450",
    }, [mtu]),
    ["subnetEnv FLANNEL_MTU"],
  );
  // Another line of the same field still counts as the field's difference.
  assert.deepEqual(
    diffOf({
      ...f,
      subnetEnv: "FLANNEL_NETWORK=10.245.0.0/16\nFLANNEL_MTU=1450",
    }, [mtu]),
    ["subnetEnv", "subnetEnv FLANNEL_MTU"],
  );
  const local = {
    field: "links",
    attr: "linkinfo.info_data.local",
    label: "links local",
    anchor: "b",
  };
  const link = (local: string, port: number) => [{
    ifname: "flannel.1",
    mtu: 1450,
    linkinfo: { info_data: { local, port } },
  }];
  assert.deepEqual(diffOf({ ...f, links: link("b", 8472) }, [local]), [
    "links local",
  ]);
  // A sibling attribute of the same object is still compared.
  assert.deepEqual(diffOf({ ...f, links: link("b", 4789) }, [local]), [
    "links",
    "links local",
  ]);
  const peer = {
    field: "routes",
    where: /10\.244\.9\./,
    label: "routes of peer 9",
    anchor: "c",
  };
  assert.deepEqual(
    diffOf({ ...f, routes: [{ dst: "x", dev: "eth0" }] }, [peer]),
    [
      "routes of peer 9",
    ],
  );
  assert.deepEqual(diffOf({ ...f, routes: [] }, [peer]), [
    "routes",
    "routes of peer 9",
  ]);
  const ttl = { field: "etcd", attr: "ttl", label: "etcd TTL", anchor: "d" };
  assert.deepEqual(
    diffOf({ ...f, etcd: { key: "k", value: "v", ttl: { granted: 86400 } } }, [
      ttl,
    ]),
    ["etcd TTL"],
  );
  assert.deepEqual(
    diffOf({ ...f, etcd: { key: "k2", value: "v", ttl: { granted: 86400 } } }, [
      ttl,
    ]),
    ["etcd", "etcd TTL"],
  );
  // Equal covered parts: no difference at all.
  assert.deepEqual(diffOf(f, [mtu, local, peer, ttl]), []);
});
