/**
 * Fixtures shared by the backend's unit tests: a simulated node with an
 * underlay `eth0`, leases in flanneld's shape, and a reconciler over the
 * in-memory kernel.
 *
 * @module
 */
import { MemoryKernel } from "./memory_kernel.ts";
import type { Underlay } from "./backend.ts";
import { createBackend } from "./registry.ts";
import { Reconciler } from "./reconciler.ts";
import type { Lease, LeaseEvent } from "../subnet/lease.ts";
import { parseNetConfig } from "../subnet/config.ts";
import { unwrap } from "../lib/result.ts";
import { noChanges } from "../ffi/nlmsg.ts";
import type { ChangeCounts } from "../ffi/types.ts";
import "./vxlan.ts";
import "./hostgw.ts";

/** A peer lease: node n has subnet 10.244.n.0/24, IP 198.18.0.n, MAC ..:n. */
export function peer(
  n: number,
  opts: { mac?: string; ip?: string; type?: string; key?: string } = {},
): Lease {
  const hex = n.toString(16).padStart(2, "0");
  return {
    key: opts.key ?? `node-${n}`,
    subnet: `10.244.${n}.0/24`,
    attrs: {
      publicIP: opts.ip ?? `198.18.0.${n}`,
      backendType: opts.type ?? "vxlan",
      backendData: { VNI: 1, VtepMAC: opts.mac ?? `0a:00:00:00:00:${hex}` },
    },
  };
}

/** Events that add leases. */
export function added(...leases: Lease[]): LeaseEvent[] {
  return leases.map((lease) => ({ type: "added", lease, receivedAt: 0 }));
}

/** Events that remove leases. */
export function removed(...leases: Lease[]): LeaseEvent[] {
  return leases.map((lease) => ({ type: "removed", lease, receivedAt: 0 }));
}

/** A node (number 1) with a vxlan backend started on the memory kernel. */
export function node(
  netConf = '{"Network":"10.244.0.0/16"}',
  k?: MemoryKernel,
) {
  const kernel = k ?? new MemoryKernel();
  const eth0 = kernel.linkByName("eth0") ?? kernel.addDevice("eth0", 1500);
  if (!k) {
    kernel.addrs.push({ index: eth0.index, local: "198.18.0.1/24" });
    kernel.routes.push({ dst: "198.18.0.0/24", index: eth0.index, scope: 253 });
    kernel.routes.push({
      dst: "0.0.0.0/0",
      gw: "198.18.0.254",
      index: eth0.index,
    });
  }
  const config = unwrap(parseNetConfig(netConf));
  const underlay: Underlay = {
    index: eth0.index,
    name: "eth0",
    mtu: 1500,
    ifaceAddr: "198.18.0.1",
    publicIP: "198.18.0.1",
  };
  const backend = unwrap(createBackend(kernel, config, underlay));
  const attrs = backend.prepare();
  const own: Lease = { key: "node-1", subnet: "10.244.1.0/24", attrs };
  const network = backend.start(own);
  const rec = new Reconciler(kernel, network.families, {
    ownKey: own.key,
    backendType: backend.type,
  });
  return { kernel, eth0, backend, attrs, own, network, rec };
}

/**
 * The notifications of one vxlan peer added, then removed: its route,
 * neighbour and FDB entry each added and deleted, the neighbour reported
 * changed (failed) before it is deleted.
 */
export const PEER_ADDED_AND_REMOVED: ChangeCounts = {
  ...noChanges(),
  newRoute: 1,
  delRoute: 1,
  newNeigh: 2,
  delNeigh: 1,
  newFdb: 1,
  delFdb: 1,
};
