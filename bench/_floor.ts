/**
 * The floor every benchmark compares against: the same VXLAN peer entries
 * (neighbour, FDB entry, route per peer, in flanneld's order) programmed by
 * `ip -batch` and `bridge -batch` into a fresh namespace with its own
 * `flannel.1`, timed from the first process start to the last exit.
 *
 * @module
 */
import { Netns, sh } from "../tests/_netns.ts";

/** What a VXLAN peer needs in the kernel. */
export interface FloorPeer {
  /** `10.1.2.0/24` */
  readonly subnet: string;
  /** VTEP MAC of the peer. */
  readonly mac: string;
  /** Public (underlay) IP of the peer. */
  readonly vtep: string;
}

/** A fresh namespace with `eth0` (`198.18.0.1/15`) as the underlay. */
export async function underlayNs(tag: string): Promise<Netns> {
  const ns = await Netns.create(tag);
  await ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1");
  await ns.ip("addr", "add", "198.18.0.1/15", "dev", "eth0");
  await ns.ip("link", "set", "eth0", "up");
  await ns.ip("link", "set", "eth1", "up");
  return ns;
}

/**
 * {@linkcode underlayNs} plus `flannel.1` as flanneld makes it (`vxlan id 1
 * local 198.18.0.1 dev eth0 dstport 8472 nolearning`, a /32, up), made with
 * iproute2 so that what is measured is only the peer programming.
 */
export async function vxlanNs(
  tag: string,
  address = "10.0.1.0/32",
): Promise<Netns> {
  const ns = await underlayNs(tag);
  try {
    await ns.ip(
      ..."link add flannel.1 type vxlan id 1 local 198.18.0.1 dev eth0".split(
        " ",
      ),
      ..."dstport 8472 nolearning".split(" "),
    );
    await ns.ip("addr", "add", address, "dev", "flannel.1");
    await ns.ip("link", "set", "flannel.1", "up");
  } catch (e) {
    await ns.close();
    throw e;
  }
  return ns;
}

/** Number of routes, neighbours and FDB entries on `flannel.1`. */
export async function countObjects(ns: Netns): Promise<number> {
  const routes = await ns.json("route", "show", "dev", "flannel.1");
  const neigh = await ns.json("neigh", "show", "dev", "flannel.1");
  const fdb = await ns.json("bridge", "fdb", "show", "dev", "flannel.1");
  return routes.length + neigh.length + fdb.length;
}

/**
 * Milliseconds for `ip -batch` + `bridge -batch` to program `peers` into
 * a fresh namespace (created, checked and deleted here).
 */
export async function ipBatchFloor(
  peers: readonly FloorPeer[],
): Promise<number> {
  await using ns = await vxlanNs("bench-ipb");
  const ipLines: string[] = [];
  const fdbLines: string[] = [];
  for (const p of peers) {
    const gw = p.subnet.slice(0, p.subnet.indexOf("/"));
    ipLines.push(
      `neigh replace ${gw} lladdr ${p.mac} dev flannel.1 nud permanent`,
    );
    fdbLines.push(
      `fdb replace ${p.mac} dev flannel.1 dst ${p.vtep} self permanent`,
    );
    ipLines.push(`route replace ${p.subnet} via ${gw} dev flannel.1 onlink`);
  }
  const dir = await Deno.makeTempDir({ prefix: "weft-bench-" });
  try {
    await Deno.writeTextFile(`${dir}/ip`, ipLines.join("\n") + "\n");
    await Deno.writeTextFile(`${dir}/fdb`, fdbLines.join("\n") + "\n");
    const t0 = performance.now();
    await sh(["ip", "-n", ns.name, "-batch", `${dir}/ip`]);
    await sh(["bridge", "-n", ns.name, "-batch", `${dir}/fdb`]);
    const ms = performance.now() - t0;
    const got = await countObjects(ns);
    if (got !== 3 * peers.length) {
      throw new Error(
        `ip -batch made ${got} objects, want ${3 * peers.length}`,
      );
    }
    return ms;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
