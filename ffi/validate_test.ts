import assert, { deepStrictEqual as assertEquals } from "node:assert/strict";
import type { Libs } from "./libnl.ts";
import { LibnlNetlink } from "./netlink.ts";
import { KernelError } from "./types.ts";
import {
  bytesToIp,
  bytesToMac,
  checkName,
  cidrBytes,
  describeFdb,
  describeNeigh,
  describeRoute,
  ipBytes,
  macBytes,
} from "./validate.ts";

/** A handle whose native side explodes if touched: validation must not. */
function unarmed(): LibnlNetlink {
  const boom = new Proxy({}, {
    get() {
      throw new Error("native code reached");
    },
  });
  return new LibnlNetlink(
    { nl: boom, rtnl: boom, libc: boom } as unknown as Libs,
    {} as Deno.PointerObject,
  );
}

function rejects(fn: () => unknown, message: string): KernelError {
  try {
    fn();
  } catch (e) {
    assert(e instanceof KernelError, `not a KernelError: ${e}`);
    assertEquals(e.message, message);
    assertEquals(e.code, 0);
    assert(!e.exists && !e.notFound);
    return e;
  }
  throw new assert.AssertionError({ message: "Expected a KernelError" });
}

Deno.test("ipBytes gives network-order bytes for IPv4 and IPv6", () => {
  assertEquals(ipBytes("10.244.1.2", "op", "x"), {
    family: 4,
    bytes: new Uint8Array([10, 244, 1, 2]),
    prefix: 32,
  });
  const v6 = ipBytes("fd00::1", "op", "x");
  assertEquals(v6.family, 6);
  assertEquals(v6.bytes.length, 16);
  assertEquals(v6.bytes[0], 0xfd);
  assertEquals(v6.bytes[15], 1);
  assertEquals(bytesToIp(v6.bytes), "fd00::1");
  assertEquals(bytesToIp(new Uint8Array([198, 18, 0, 1])), "198.18.0.1");
});

Deno.test("cidrBytes rejects host bits only for route destinations", () => {
  assertEquals(cidrBytes("10.244.1.5/24", "addr add", "x", false).prefix, 24);
  rejects(
    () => cidrBytes("10.244.1.5/24", "route replace", "x", true),
    'route replace x: Invalid prefix "10.244.1.5/24": host bits set for prefix length 24',
  );
  rejects(
    () => cidrBytes("10.244.1.0/33", "route replace", "x", true),
    'route replace x: Cannot parse CIDR "10.244.1.0/33"',
  );
});

Deno.test("macBytes round-trips and rejects malformed MACs", () => {
  assertEquals(
    bytesToMac(macBytes("E6:7d:c5:e2:80:1a", "op", "x")),
    "e6:7d:c5:e2:80:1a",
  );
  rejects(
    () => macBytes("e6:7d:c5:e2:80", "neigh replace", "x"),
    'neigh replace x: Cannot parse MAC address "e6:7d:c5:e2:80"',
  );
});

Deno.test("checkName enforces IFNAMSIZ and the kernel's forbidden characters", () => {
  assertEquals(checkName("flannel.1", "op", "x"), "flannel.1");
  assertEquals(checkName("a".repeat(15), "op", "x"), "a".repeat(15));
  for (const bad of ["", "a".repeat(16), "a/b", "a b", "a:b", ".", ".."]) {
    assert.throws(() => checkName(bad, "op", "x"), KernelError, bad);
  }
});

Deno.test("describe* words objects the way iproute2 prints them", () => {
  const dev = (i: number) => (i === 5 ? "flannel.1" : undefined);
  assertEquals(
    describeRoute(
      { dst: "10.244.1.0/24", gw: "10.244.1.0", index: 5, onlink: true },
      dev,
    ),
    "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink",
  );
  assertEquals(
    describeRoute({ dst: "10.0.0.0/8", index: 9, table: 7, src: "10.0.0.1" }),
    "10.0.0.0/8 dev if9 table 7 src 10.0.0.1",
  );
  // Protocols by name, the implied one left out (weft's, for its own logs).
  assertEquals(
    describeRoute({ dst: "10.244.7.0/24", blackhole: true, protocol: 4 }),
    "blackhole 10.244.7.0/24 proto static",
  );
  assertEquals(
    describeRoute({ dst: "10.244.2.0/24", index: 5, protocol: 87 }, dev, 87),
    "10.244.2.0/24 dev flannel.1",
  );
  assertEquals(
    describeRoute({ dst: "10.244.2.0/24", index: 5 }, dev, 87),
    "10.244.2.0/24 dev flannel.1 proto boot",
  );
  assertEquals(
    describeNeigh(
      { index: 5, dst: "10.244.0.0", lladdr: "e6:7d:c5:e2:80:1a", state: 0x80 },
      dev,
    ),
    "10.244.0.0 dev flannel.1 lladdr e6:7d:c5:e2:80:1a nud permanent",
  );
  assertEquals(
    describeFdb(
      {
        index: 5,
        lladdr: "e6:7d:c5:e2:80:1a",
        dst: "172.80.0.2",
        state: 0x80,
        flags: 2,
      },
      dev,
    ),
    "e6:7d:c5:e2:80:1a dev flannel.1 dst 172.80.0.2 self permanent",
  );
});

Deno.test("Netlink methods reject bad input before reaching native code", () => {
  const nl = unarmed();
  rejects(
    () =>
      nl.routeReplace({
        dst: "10.244.1.0/33",
        gw: "10.244.1.0",
        index: 3,
        onlink: true,
      }),
    'route replace 10.244.1.0/33 via 10.244.1.0 dev if3 onlink: Cannot parse CIDR "10.244.1.0/33"',
  );
  rejects(
    () =>
      nl.routeReplace({ dst: "10.244.1.0/24", gw: "10.244.1.256", index: 3 }),
    'route replace 10.244.1.0/24 via 10.244.1.256 dev if3: Cannot parse IP address "10.244.1.256"',
  );
  rejects(
    () => nl.routeDel({ dst: "10.244.1.0/24", gw: "fd00::1", index: 3 }),
    "route del 10.244.1.0/24 via fd00::1 dev if3: Address family of gateway or source differs from destination",
  );
  rejects(
    () => nl.routeGet("nope"),
    'route get nope: Cannot parse IP address "nope"',
  );
  rejects(
    () => nl.addrAdd({ index: 0, local: "10.244.1.0/32" }),
    'addr add 10.244.1.0/32 dev if0: Invalid interface index "0"',
  );
  rejects(
    () =>
      nl.neighSet({ index: 3, dst: "10.244.1.0", lladdr: "zz", state: 0x80 }),
    'neigh replace 10.244.1.0 dev if3 lladdr zz nud permanent: Cannot parse MAC address "zz"',
  );
  rejects(
    () =>
      nl.fdbSet({
        index: 3,
        lladdr: "e6:7d:c5:e2:80:1a",
        dst: "300.1.1.1",
        state: 0x80,
        flags: 2,
      }),
    'fdb replace e6:7d:c5:e2:80:1a dev if3 dst 300.1.1.1 self permanent: Cannot parse IP address "300.1.1.1"',
  );
  rejects(
    () => nl.linkSetMtu(3, 10),
    'link set index 3 mtu 10: Invalid MTU "10": must be 68..65535',
  );
  rejects(
    () => nl.linkByName("waytoolongname0123"),
    'link show dev waytoolongname0123: Invalid device name "waytoolongname0123": 1 to 15 bytes, no "/", ":" or spaces',
  );
  const spec = {
    name: "flannel.1",
    vni: 1,
    port: 0,
    local: "198.18.0.1",
    linkIndex: 2,
    learning: false,
    gbp: false,
    mtu: 1450,
    mac: "3a:bb:55:60:be:4e",
  };
  for (
    const [bad, reason] of [
      [{ vni: 2 ** 24 }, 'Invalid VNI "16777216": must be 0..16777215'],
      [{ port: 70000 }, 'Invalid port "70000": must be 0..65535'],
      [{ mtu: 1.5 }, 'Invalid MTU "1.5": must be 68..65535'],
      [{ mac: "3a:bb" }, 'Cannot parse MAC address "3a:bb"'],
      [{ local: "198.18.0" }, 'Cannot parse IP address "198.18.0"'],
      [{ linkIndex: -1 }, 'Invalid interface index "-1"'],
    ] as const
  ) {
    assert.throws(() => nl.linkAddVxlan({ ...spec, ...bad }), (err) => {
      assert(err instanceof KernelError);
      assert(
        err.message.startsWith("link add flannel.1 type vxlan id "),
        err.message,
      );
      assert(err.message.endsWith(`: ${reason}`), err.message);
      return true;
    });
  }
});

Deno.test("a closed handle refuses calls and close() is idempotent", () => {
  const nl = new LibnlNetlink(
    {
      nl: { nl_socket_free: () => {} },
      rtnl: {},
      libc: {},
    } as unknown as Libs,
    {} as Deno.PointerObject,
  );
  nl.close();
  nl.close();
  assert.throws(() => nl.linkList(), /closed/);
});
