import assert from "node:assert/strict";
import {
  asState,
  diff,
  type FamilyPlan,
  type OwnedState,
  ownedState,
  type PeerEntries,
  vxlanPeerEntries,
} from "./plan.ts";
import { parseIpNet } from "../lib/ip.ts";
import { unwrap } from "../lib/result.ts";
import { peer } from "./_testing.ts";

const plan: FamilyPlan = {
  family: 4,
  network: unwrap(parseIpNet("10.244.0.0/16")),
  ownSubnet: "10.244.1.0/24",
  deviceIndex: 5,
  externalIndex: 2,
  manageExternal: false,
};

function entries(...ns: Parameters<typeof peer>[]): PeerEntries[] {
  return ns.map((args) => vxlanPeerEntries(plan, peer(...args), "vxlan")!);
}

function kinds(ops: ReturnType<typeof diff>): string[] {
  return ops.map((o) =>
    `${o.kind} ${
      "route" in o
        ? o.route.dst
        : "fdb" in o
        ? `${o.fdb.lladdr}>${o.fdb.dst}`
        : o.neigh.dst
    }`
  );
}

const empty: OwnedState = { neighs: [], fdbs: [], routes: [] };

Deno.test("vxlanPeerEntries() matches a flanneld worker's kernel state", () => {
  const [e] = entries([0, { mac: "e6:7d:c5:e2:80:1a", ip: "172.80.0.2" }]);
  assert.deepEqual(e!.neigh, {
    index: 5,
    dst: "10.244.0.0",
    lladdr: "e6:7d:c5:e2:80:1a",
    state: 0x80,
  });
  assert.deepEqual(e!.fdb, {
    index: 5,
    lladdr: "e6:7d:c5:e2:80:1a",
    dst: "172.80.0.2",
    state: 0x80,
    flags: 2,
  });
  assert.deepEqual(e!.route, {
    dst: "10.244.0.0/24",
    gw: "10.244.0.0",
    index: 5,
    onlink: true,
    table: 254,
  });
});

const cases: {
  name: string;
  desired: PeerEntries[];
  actual: OwnedState;
  want: string[];
}[] = [
  {
    name: "first sync programs neighbour, FDB entry, then route per peer",
    desired: entries([2], [3]),
    actual: empty,
    want: [
      "neighSet 10.244.2.0",
      "fdbSet 0a:00:00:00:00:02>198.18.0.2",
      "routeReplace 10.244.2.0/24",
      "neighSet 10.244.3.0",
      "fdbSet 0a:00:00:00:00:03>198.18.0.3",
      "routeReplace 10.244.3.0/24",
    ],
  },
  {
    name: "nothing to do when the kernel already matches",
    desired: entries([2], [3]),
    actual: asState(entries([2], [3])),
    want: [],
  },
  {
    name: "a peer added in steady state gets only its own entries",
    desired: entries([2], [3]),
    actual: asState(entries([2])),
    want: [
      "neighSet 10.244.3.0",
      "fdbSet 0a:00:00:00:00:03>198.18.0.3",
      "routeReplace 10.244.3.0/24",
    ],
  },
  {
    name: "a removed peer loses route, FDB entry and neighbour, route first",
    desired: entries([2]),
    actual: asState(entries([2], [3])),
    want: [
      "routeDel 10.244.3.0/24",
      "fdbDel 0a:00:00:00:00:03>198.18.0.3",
      "neighDel 10.244.3.0",
    ],
  },
  {
    name:
      "a peer whose MAC changed gets new entries and loses its old FDB entry",
    desired: entries([2, { mac: "0a:00:00:00:00:99" }]),
    actual: asState(entries([2])),
    want: [
      "neighSet 10.244.2.0",
      "fdbSet 0a:00:00:00:00:99>198.18.0.2",
      "fdbDel 0a:00:00:00:00:02>198.18.0.2",
    ],
  },
  {
    name: "a peer whose public IP changed gets its FDB entry replaced",
    desired: entries([2, { ip: "198.18.0.77" }]),
    actual: asState(entries([2])),
    want: [
      "fdbSet 0a:00:00:00:00:02>198.18.0.77",
      "fdbDel 0a:00:00:00:00:02>198.18.0.2",
    ],
  },
];

for (const c of cases) {
  Deno.test(`diff(): ${c.name}`, () => {
    assert.deepEqual(kinds(diff(c.desired, c.actual)), c.want);
  });
}

Deno.test("ownedState() leaves foreign routes, own subnet and other devices alone", () => {
  const kernel = {
    neighs: [
      { index: 5, dst: "10.244.2.0", lladdr: "0a:00:00:00:00:02", state: 0x80 },
      { index: 5, dst: "10.244.9.9", lladdr: "0a:00:00:00:00:09", state: 0x02 },
      { index: 7, dst: "10.244.1.5", lladdr: "0a:00:00:00:00:05", state: 0x80 },
    ],
    fdbs: [{
      index: 5,
      lladdr: "0a:00:00:00:00:02",
      dst: "198.18.0.2",
      state: 0x80,
      flags: 2,
    }],
    routes: [
      { dst: "10.244.2.0/24", gw: "10.244.2.0", index: 5, onlink: true },
      { dst: "10.244.1.0/24", index: 7 }, // cni0: our own pods
      { dst: "10.244.50.0/24", gw: "198.18.0.50", index: 2 }, // someone's route on eth0
      { dst: "192.168.0.0/24", gw: "10.244.2.0", index: 5 }, // outside the network
      { dst: "10.244.3.0/24", gw: "10.244.3.0", index: 5, table: 100 }, // other table
      { dst: "10.244.1.0/32", index: 5 }, // the kernel's route for our address
    ],
  };
  const owned = ownedState(plan, kernel);
  assert.deepEqual(owned.neighs.map((n) => n.dst), ["10.244.2.0"]);
  assert.equal(owned.fdbs.length, 1);
  assert.deepEqual(owned.routes.map((r) => r.dst), ["10.244.2.0/24"]);
  const withDirect = ownedState({ ...plan, manageExternal: true }, kernel);
  assert.deepEqual(withDirect.routes.map((r) => r.dst), [
    "10.244.2.0/24",
    "10.244.50.0/24",
  ]);
});

Deno.test("vxlanPeerEntries() in direct mode routes via the public IP on the external interface", () => {
  const e = vxlanPeerEntries(plan, peer(4), "direct")!;
  assert.equal(e.neigh, undefined);
  assert.equal(e.fdb, undefined);
  assert.deepEqual(e.route, {
    dst: "10.244.4.0/24",
    gw: "198.18.0.4",
    index: 2,
    table: 254,
  });
});
