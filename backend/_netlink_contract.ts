/**
 * The behaviour of the {@linkcode Netlink} interface that weft relies on,
 * written once and run against both implementations: the in-memory kernel
 * in the unit tier (`memory_kernel_test.ts`) and libnl in a throwaway
 * namespace in the kernel tier (`tests/netns/netlink_contract_test.ts`),
 * so the test double cannot drift from the kernel it stands for.
 *
 * Each case gets a fresh world with one underlay device, up, holding
 * `198.18.0.1/24` and a route for that prefix (as the kernel adds with
 * the address), and nothing else of ours.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  KernelError,
  type LinkInfo,
  type Netlink,
  NTF_SELF,
  NUD_PERMANENT,
  type VxlanLinkSpec,
} from "../ffi/types.ts";

/** One fresh world to run a case in. */
export interface ContractWorld extends AsyncDisposable {
  readonly nl: Netlink;
  /** The underlay device (`eth0`), up, with `198.18.0.1/24`. */
  readonly underlay: LinkInfo;
}

/** Registers one named case (Deno.test, or a kernel test). */
export type Register = (
  name: string,
  fn: () => Promise<void>,
) => void;

function kernelError(fn: () => unknown): KernelError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof KernelError, `not a KernelError: ${e}`);
    return e;
  }
  throw new assert.AssertionError({ message: "expected a KernelError" });
}

function spec(underlay: LinkInfo): VxlanLinkSpec {
  return {
    name: "flannel.1",
    vni: 1,
    port: 0,
    local: "198.18.0.1",
    linkIndex: underlay.index,
    learning: false,
    gbp: false,
    mtu: 1450,
    mac: "3a:bb:55:60:be:4e",
  };
}

const MAIN = 254;

/** Registers every case of the contract for one implementation. */
export function netlinkContract(
  impl: string,
  register: Register,
  world: () => Promise<ContractWorld>,
): void {
  const t = (name: string, fn: (w: ContractWorld) => Promise<void> | void) =>
    register(`Netlink contract (${impl}): ${name}`, async () => {
      await using w = await world();
      await fn(w);
    });

  t(
    "linkAddVxlan creates the device as specified, down; a second add of the name is refused as existing",
    ({ nl, underlay }) => {
      const link = nl.linkAddVxlan(spec(underlay));
      assert.equal(link.kind, "vxlan");
      assert.equal(link.up, false);
      const back = nl.linkByName("flannel.1")!;
      assert.equal(back.index, link.index);
      assert.equal(back.mtu, 1450);
      assert.equal(back.mac, "3a:bb:55:60:be:4e");
      assert.deepEqual(back.vxlan, {
        vni: 1,
        local: "198.18.0.1",
        linkIndex: underlay.index,
        port: 8472,
        learning: false,
        gbp: false,
      });
      assert.ok(kernelError(() => nl.linkAddVxlan(spec(underlay))).exists);
      assert.equal(nl.linkByIndex(link.index)?.name, "flannel.1");
      assert.ok(nl.linkList().some((l) => l.index === link.index));
    },
  );

  t(
    "linkSetUp and linkSetMtu are read back; a missing device is notFound",
    ({ nl, underlay }) => {
      const link = nl.linkAddVxlan(spec(underlay));
      nl.linkSetUp(link.index);
      nl.linkSetMtu(link.index, 1400);
      const back = nl.linkByIndex(link.index)!;
      assert.equal(back.up, true);
      assert.equal(back.mtu, 1400);
      assert.ok(kernelError(() => nl.linkSetMtu(999_999, 1400)).notFound);
    },
  );

  t(
    "addrAdd, addrList by device and family, addrDel; a duplicate exists, a missing one is notFound",
    ({ nl, underlay }) => {
      const link = nl.linkAddVxlan(spec(underlay));
      nl.addrAdd({ index: link.index, local: "10.244.1.0/32" });
      assert.deepEqual(
        nl.addrList(link.index, 4).map((a) => a.local),
        ["10.244.1.0/32"],
      );
      assert.deepEqual(nl.addrList(link.index, 6), []);
      assert.ok(
        kernelError(() =>
          nl.addrAdd({ index: link.index, local: "10.244.1.0/32" })
        )
          .exists,
      );
      nl.addrDel({ index: link.index, local: "10.244.1.0/32" });
      assert.deepEqual(nl.addrList(link.index), []);
      assert.ok(
        kernelError(() =>
          nl.addrDel({ index: link.index, local: "10.244.1.0/32" })
        )
          .notFound,
      );
    },
  );

  t(
    "routeReplace is idempotent and replaces by destination; routeList filters; routeDel of a missing route is notFound",
    ({ nl, underlay }) => {
      const link = nl.linkAddVxlan(spec(underlay));
      nl.linkSetUp(link.index);
      const r = {
        dst: "10.244.2.0/24",
        gw: "10.244.2.0",
        index: link.index,
        onlink: true,
      };
      nl.routeReplace(r);
      nl.routeReplace(r);
      const ours = () =>
        nl.routeList({ family: 4, index: link.index })
          .filter((x) => x.dst === "10.244.2.0/24");
      assert.equal(ours().length, 1);
      assert.equal(ours()[0]!.gw, "10.244.2.0");
      assert.equal(ours()[0]!.onlink, true);
      assert.equal(ours()[0]!.table ?? MAIN, MAIN);
      // Replacing the destination moves it (here: to a direct route).
      nl.routeReplace({
        dst: "10.244.2.0/24",
        gw: "198.18.0.2",
        index: underlay.index,
      });
      assert.equal(ours().length, 0);
      const moved = nl.routeList({ family: 4, index: underlay.index })
        .filter((x) => x.dst === "10.244.2.0/24");
      assert.deepEqual(moved.map((x) => x.gw), ["198.18.0.2"]);
      // The kernel may add fe80::/64 on an up device; no IPv4 route is IPv6.
      assert.ok(
        nl.routeList({ family: 6, index: link.index })
          .every((x) => x.dst.includes(":")),
      );
      // A delete names the route as it was read back; another gateway
      // does not match it.
      assert.ok(
        kernelError(() => nl.routeDel({ ...moved[0]!, gw: "198.18.0.3" }))
          .notFound,
      );
      nl.routeDel(moved[0]!);
      assert.ok(kernelError(() => nl.routeDel(moved[0]!)).notFound);
    },
  );

  t(
    "routeAdd adds a blackhole route once and never replaces another route to the prefix; routeList lists unicast routes only",
    ({ nl }) => {
      const bh = { dst: "10.244.1.0/24", blackhole: true };
      nl.routeAdd(bh);
      assert.ok(kernelError(() => nl.routeAdd(bh)).exists);
      assert.ok(
        nl.routeList({ family: 4 }).every((r) => r.dst !== "10.244.1.0/24"),
      );
      nl.routeDel(bh);
      nl.routeAdd(bh);
      // The underlay's connected route is in the way: refused, kept.
      assert.ok(
        kernelError(() =>
          nl.routeAdd({ dst: "198.18.0.0/24", blackhole: true })
        )
          .exists,
      );
      assert.ok(
        nl.routeList({ family: 4 }).some((r) => r.dst === "198.18.0.0/24"),
      );
      nl.routeAdd({ dst: "fc00:0:0:1::/64", blackhole: true });
      assert.ok(
        kernelError(() =>
          nl.routeAdd({ dst: "fc00:0:0:1::/64", blackhole: true })
        ).exists,
      );
    },
  );

  t("routeGet answers with the longest matching prefix", ({ nl, underlay }) => {
    const link = nl.linkAddVxlan(spec(underlay));
    nl.linkSetUp(link.index);
    nl.routeReplace({
      dst: "10.244.0.0/16",
      gw: "198.18.0.2",
      index: underlay.index,
    });
    nl.routeReplace({
      dst: "10.244.3.0/24",
      gw: "10.244.3.0",
      index: link.index,
      onlink: true,
    });
    assert.equal(nl.routeGet("10.244.3.7")[0]?.index, link.index);
    assert.equal(nl.routeGet("10.244.9.7")[0]?.index, underlay.index);
    const direct = nl.routeGet("198.18.0.2")[0];
    assert.equal(direct?.index, underlay.index);
    assert.equal(direct?.gw, undefined, "on-link: no gateway");
  });

  t(
    "neighSet replaces the address of a destination; neighDel of a missing entry is notFound",
    ({ nl, underlay }) => {
      const link = nl.linkAddVxlan(spec(underlay));
      const n = { index: link.index, dst: "10.244.2.0", state: NUD_PERMANENT };
      nl.neighSet({ ...n, lladdr: "0a:00:00:00:00:01" });
      nl.neighSet({ ...n, lladdr: "0a:00:00:00:00:02" });
      const got = nl.neighList(link.index, 4).filter((x) =>
        x.dst === "10.244.2.0"
      );
      assert.deepEqual(got.map((x) => x.lladdr), ["0a:00:00:00:00:02"]);
      assert.ok((got[0]!.state & NUD_PERMANENT) !== 0);
      nl.neighDel(n);
      assert.ok(kernelError(() => nl.neighDel(n)).notFound);
    },
  );

  t(
    "fdbSet replaces the remote of a MAC; fdbDel of a missing entry is notFound",
    ({ nl, underlay }) => {
      const link = nl.linkAddVxlan(spec(underlay));
      const f = {
        index: link.index,
        lladdr: "0a:00:00:00:00:01",
        state: NUD_PERMANENT,
        flags: NTF_SELF,
      };
      nl.fdbSet({ ...f, dst: "198.18.0.2" });
      nl.fdbSet({ ...f, dst: "198.18.0.3" });
      const got = nl.fdbList(link.index).filter((x) => x.lladdr === f.lladdr);
      assert.deepEqual(got.map((x) => x.dst), ["198.18.0.3"]);
      nl.fdbDel({ ...f, dst: "198.18.0.3" });
      assert.ok(
        kernelError(() => nl.fdbDel({ ...f, dst: "198.18.0.3" })).notFound,
      );
    },
  );

  t(
    "linkDel removes the device with its addresses, routes, neighbours and FDB entries",
    ({ nl, underlay }) => {
      const link = nl.linkAddVxlan(spec(underlay));
      nl.linkSetUp(link.index);
      nl.addrAdd({ index: link.index, local: "10.244.1.0/32" });
      nl.neighSet({
        index: link.index,
        dst: "10.244.2.0",
        lladdr: "0a:00:00:00:00:01",
        state: NUD_PERMANENT,
      });
      nl.fdbSet({
        index: link.index,
        lladdr: "0a:00:00:00:00:01",
        dst: "198.18.0.2",
        state: NUD_PERMANENT,
        flags: NTF_SELF,
      });
      nl.routeReplace({
        dst: "10.244.2.0/24",
        gw: "10.244.2.0",
        index: link.index,
        onlink: true,
      });
      nl.linkDel(link.index);
      assert.equal(nl.linkByName("flannel.1"), undefined);
      assert.equal(nl.addrList(link.index).length, 0);
      assert.equal(nl.neighList(link.index).length, 0);
      assert.equal(nl.fdbList(link.index).length, 0);
      assert.equal(
        nl.routeList({ family: 4 }).filter((r) => r.dst === "10.244.2.0/24")
          .length,
        0,
      );
      assert.ok(kernelError(() => nl.linkDel(link.index)).notFound);
    },
  );
}
