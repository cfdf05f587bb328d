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
import { RTPROT_BOOT, RTPROT_WEFT } from "../ffi/types.ts";
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
    protocol: RTPROT_WEFT,
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
      "routeAdd 10.244.2.0/24",
      "neighSet 10.244.3.0",
      "fdbSet 0a:00:00:00:00:03>198.18.0.3",
      "routeAdd 10.244.3.0/24",
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
      "routeAdd 10.244.3.0/24",
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
  const W = RTPROT_WEFT, B = RTPROT_BOOT;
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
      {
        dst: "10.244.2.0/24",
        gw: "10.244.2.0",
        index: 5,
        onlink: true,
        protocol: W,
      },
      { dst: "10.244.1.0/24", index: 7, protocol: 2 }, // cni0: our own pods
      { dst: "10.244.50.0/24", gw: "198.18.0.50", index: 2, protocol: B }, // someone's route on eth0
      { dst: "10.244.51.0/24", gw: "198.18.0.51", index: 2, protocol: W }, // ours on eth0
      { dst: "10.244.52.0/24", gw: "198.18.0.52", index: 2, protocol: 4 }, // static, on eth0
      { dst: "192.168.0.0/24", gw: "10.244.2.0", index: 5, protocol: W }, // outside the network
      {
        dst: "10.244.3.0/24",
        gw: "10.244.3.0",
        index: 5,
        table: 100,
        protocol: W,
      }, // other table
      {
        dst: "10.244.4.0/24",
        gw: "10.244.4.0",
        index: 5,
        onlink: true,
        protocol: B,
      }, // flanneld's
      {
        dst: "10.244.5.0/24",
        gw: "10.244.9.1",
        index: 5,
        onlink: true,
        protocol: B,
      }, // not flanneld's shape
      {
        dst: "10.244.6.0/24",
        gw: "10.244.6.0",
        index: 5,
        onlink: true,
        protocol: 186,
      }, // a BGP daemon's
      { dst: "10.244.1.0/32", index: 5, protocol: 2 }, // the kernel's route for our address
      { dst: "10.244.1.0/32", index: 5, protocol: B }, // inside our subnet, whoever made it
    ],
  };
  const owned = ownedState(plan, kernel);
  assert.deepEqual(owned.neighs.map((n) => n.dst), ["10.244.2.0"]);
  assert.equal(owned.fdbs.length, 1);
  // Our mark on eth0 is ours even without DirectRouting (turned off since).
  assert.deepEqual(owned.routes.map((r) => r.dst), [
    "10.244.2.0/24",
    "10.244.51.0/24",
    "10.244.4.0/24",
  ]);
  assert.deepEqual(owned.adoptable!.map((r) => r.dst), []);
  assert.deepEqual(owned.foreign!.map((r) => r.dst), [
    "10.244.50.0/24",
    "10.244.52.0/24",
    "10.244.5.0/24",
    "10.244.6.0/24",
  ]);
  const withDirect = ownedState({ ...plan, manageExternal: true }, kernel);
  assert.deepEqual(withDirect.routes.map((r) => r.dst), [
    "10.244.2.0/24",
    "10.244.51.0/24",
    "10.244.4.0/24",
  ]);
  assert.deepEqual(withDirect.adoptable!.map((r) => r.dst), [
    "10.244.50.0/24",
  ]);
  assert.deepEqual(withDirect.foreign!.map((r) => r.dst), [
    "10.244.52.0/24",
    "10.244.5.0/24",
    "10.244.6.0/24",
  ]);
});

Deno.test("diff() holds a lease's route behind a foreign route at its destination, never writing over or deleting it", () => {
  const direct = { ...plan, manageExternal: true };
  const [e2, e3, e4] = entries([2], [3], [4]);
  const d5 = vxlanPeerEntries(direct, peer(5), "direct")!;
  const foreign = [
    // Another protocol on our device.
    { ...e2!.route, protocol: 4 },
    // Weft's shape and mark, on another device.
    { ...e3!.route, index: 9 },
    // Not flanneld's shape (no onlink) on our device.
    { dst: "10.244.4.0/24", index: 5, protocol: RTPROT_BOOT },
    // A boot route on eth0 through another gateway than peer 5's.
    { dst: "10.244.5.0/24", gw: "198.18.0.99", index: 2, protocol: 3 },
  ];
  const kernel = {
    neighs: [e2!.neigh!],
    fdbs: [e2!.fdb!],
    routes: [...foreign, { ...e4!.route }],
  };
  const ops = diff([e2!, e3!, e4!, d5], ownedState(direct, kernel));
  assert.deepEqual(kinds(ops), [
    "routeHeld 10.244.2.0/24",
    "neighSet 10.244.3.0",
    "fdbSet 0a:00:00:00:00:03>198.18.0.3",
    "routeHeld 10.244.3.0/24",
    "neighSet 10.244.4.0",
    "fdbSet 0a:00:00:00:00:04>198.18.0.4",
    "routeHeld 10.244.4.0/24",
    "routeHeld 10.244.5.0/24",
  ]);
  // The held operations carry the foreign route, for the log.
  assert.deepEqual(
    ops.filter((o) => o.kind === "routeHeld").map((o) =>
      "route" in o ? o.route : undefined
    ),
    foreign,
  );
  // Nobody wants them: still nothing deletes them.
  assert.deepEqual(
    kinds(diff([], ownedState(direct, kernel))).filter((k) =>
      k.startsWith("route")
    ),
    ["routeDel 10.244.4.0/24"],
  );
});

Deno.test("diff() replaces the blackhole route a moved own subnet left when a peer claims that subnet, and keeps one nobody claims", () => {
  const [e2] = entries([2]);
  const stale = [
    { dst: "10.244.2.0/24", blackhole: true, protocol: RTPROT_BOOT },
    { dst: "10.244.7.0/24", blackhole: true, protocol: RTPROT_BOOT },
  ];
  const kernel = { neighs: [], fdbs: [], routes: stale };
  assert.deepEqual(kinds(diff([e2!], ownedState(plan, kernel))), [
    "neighSet 10.244.2.0",
    "fdbSet 0a:00:00:00:00:02>198.18.0.2",
    "routeReplace 10.244.2.0/24",
  ]);
  // An operator's blackhole of another protocol is foreign: held.
  const static4 = { ...stale[0]!, protocol: 4 };
  assert.deepEqual(
    kinds(diff([e2!], ownedState(plan, { ...kernel, routes: [static4] })))
      .at(-1),
    "routeHeld 10.244.2.0/24",
  );
});

Deno.test("diff() writes a destination the kernel has no route for with add (create + excl), never replace", () => {
  const [e2] = entries([2]);
  const ops = diff([e2!], empty);
  assert.deepEqual(kinds(ops).at(-1), "routeAdd 10.244.2.0/24");
  // A route of ours that differs is replaced in place.
  const moved = { ...e2!.route, gw: "10.244.2.1" };
  assert.deepEqual(
    kinds(diff([e2!], { ...asState([e2!]), routes: [moved] })),
    ["routeReplace 10.244.2.0/24"],
  );
});

Deno.test("diff() never deletes an unmarked route on the external interface, and adopts one a lease wants by replacing it", () => {
  const direct = { ...plan, manageExternal: true };
  const kernel = {
    neighs: [],
    fdbs: [],
    routes: [
      // An administrator's static-looking route no lease wants.
      {
        dst: "10.244.50.0/24",
        gw: "198.18.0.50",
        index: 2,
        protocol: RTPROT_BOOT,
      },
      // flanneld's host-gw route for peer 4, left on a migrating node.
      {
        dst: "10.244.4.0/24",
        gw: "198.18.0.4",
        index: 2,
        protocol: RTPROT_BOOT,
      },
    ],
  };
  const want = [vxlanPeerEntries(direct, peer(4), "direct")!];
  const ops = diff(want, ownedState(direct, kernel));
  assert.deepEqual(kinds(ops), ["routeReplace 10.244.4.0/24"]);
  const op = ops[0]!;
  assert.ok(op.kind === "routeReplace" && op.route.protocol === RTPROT_WEFT);
  // Once marked, the same route is in place: nothing to do.
  const adopted = {
    ...kernel,
    routes: [kernel.routes[0]!, { ...want[0]!.route }],
  };
  assert.deepEqual(diff(want, ownedState(direct, adopted)), []);
  // And when the lease goes, only the marked route is deleted, naming
  // the protocol so the kernel matches nothing else.
  const gone = diff([], ownedState(direct, adopted));
  assert.deepEqual(kinds(gone), ["routeDel 10.244.4.0/24"]);
  assert.ok(
    gone[0]!.kind === "routeDel" && gone[0]!.route.protocol === RTPROT_WEFT,
  );
});

Deno.test("diff() adopts flanneld's vxlan routes with no change to neighbour or FDB, and prunes its stale ones", () => {
  const [e2, e3] = entries([2], [3]);
  const kernel = {
    neighs: [e2!.neigh!, e3!.neigh!],
    fdbs: [e2!.fdb!, e3!.fdb!],
    routes: [
      { ...e2!.route, protocol: RTPROT_BOOT },
      { ...e3!.route, protocol: RTPROT_BOOT },
      // A node deleted while flanneld was being replaced.
      {
        dst: "10.244.9.0/24",
        gw: "10.244.9.0",
        index: 5,
        onlink: true,
        protocol: RTPROT_BOOT,
      },
    ],
  };
  const ops = diff([e2!, e3!], ownedState(plan, kernel));
  assert.deepEqual(kinds(ops), [
    "routeReplace 10.244.2.0/24",
    "routeReplace 10.244.3.0/24",
    "routeDel 10.244.9.0/24",
  ]);
  const del = ops[2]!;
  assert.ok(del.kind === "routeDel" && del.route.protocol === RTPROT_BOOT);
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
    protocol: RTPROT_WEFT,
  });
});
