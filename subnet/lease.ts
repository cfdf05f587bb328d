/**
 * Subnet leases, the unit of agreement between nodes: one node owns one
 * subnet per family and publishes how to reach it (public IP, backend type,
 * backend data). The Kubernetes manager derives leases from Node objects,
 * the etcd manager from keys under `<prefix>/subnets/`. The backend only
 * ever sees these values.
 *
 * @module
 */
import type { NetworkConfig } from "./config.ts";

/** What a node publishes about itself, flanneld's `LeaseAttrs`. */
export interface LeaseAttrs {
  /** IPv4 address other nodes send encapsulated traffic to. */
  readonly publicIP?: string;
  readonly publicIPv6?: string;
  /** `vxlan`, `host-gw`, ... */
  readonly backendType: string;
  /** Backend specific, already parsed from JSON (vxlan: `{VNI, VtepMAC}`). */
  readonly backendData?: unknown;
  readonly backendV6Data?: unknown;
}

/** One node's subnet lease. Subnets are canonical prefixes. */
export interface Lease {
  /** Stable identity: the node name (kube) or the etcd key (etcd). */
  readonly key: string;
  /** IPv4 subnet, `10.244.1.0/24`, when IPv4 is enabled. */
  readonly subnet?: string;
  /** IPv6 subnet, when IPv6 is enabled. */
  readonly ipv6Subnet?: string;
  readonly attrs: LeaseAttrs;
  /** When the lease runs out (etcd mode); undefined means never. */
  readonly expiration?: Date;
  /**
   * When the lease's present claims (subnets, MACs, public IPs) were made;
   * the earlier claim wins a conflict. Kube mode: the latest `time` of the
   * Node's managedFields entries owning a flannel annotation or the pod
   * CIDRs, in ms (the API gives seconds). etcd mode: the revision since
   * which the key has carried these claims. Comparable only within one
   * source; undefined when unknown (it then loses to any known claim).
   */
  readonly claimedAt?: number;
  /**
   * The etcd key's create revision: the tie-break when two claims have one
   * `claimedAt` (both older than etcd's compaction, see `subnet/etcd`).
   */
  readonly createdAt?: number;
}

/** A change to the set of peer leases. */
export interface LeaseEvent {
  readonly type: "added" | "removed";
  readonly lease: Lease;
  /** `performance.now()` when the event was received, for latency metrics. */
  readonly receivedAt: number;
}

/**
 * Receives batches of lease events, in order. `partial` batches come from
 * an initial listing that is still arriving: their peers may be programmed
 * at once, but nothing may be pruned until the complete listing (a call
 * without `partial`) is in.
 */
export type LeaseHandler = (events: LeaseEvent[], partial?: boolean) => void;

/**
 * Where leases come from: flanneld's subnet manager, reduced to what the
 * agent uses.
 */
export interface SubnetManager {
  /** Short name for logs: `kube` or `etcd`. */
  readonly name: string;
  /** The network configuration (net-conf.json, or `<prefix>/config`). */
  getNetworkConfig(signal: AbortSignal): Promise<NetworkConfig>;
  /** Takes (or reuses) this node's lease and publishes `attrs` with it. */
  acquireLease(attrs: LeaseAttrs, signal: AbortSignal): Promise<Lease>;
  /**
   * Delivers every peer lease (never our own) as `added` events, then
   * changes as they happen, until `signal` aborts. The first call of
   * `handler` carries the complete initial listing and happens even when
   * it is empty: only then may the backend prune stale kernel entries.
   * Before it, a manager may hand over `partial` batches of that listing.
   * Never returns early on a transient error: it retries with backoff.
   */
  watchLeases(handler: LeaseHandler, signal: AbortSignal): Promise<void>;
  /**
   * Keeps our own lease alive (etcd renewal) until `signal` aborts.
   * Rejects when the lease is lost for good, which ends the agent.
   */
  keepLease(lease: Lease, signal: AbortSignal): Promise<void>;
  /**
   * What this node published before (its backend data carries the VTEP
   * MAC), so a recreated device keeps its MAC. `publicIP` identifies the
   * node in etcd mode (its IPv6 address when IPv6 only). Undefined when
   * unknown.
   */
  previousAttrs(
    publicIP: string | undefined,
    signal: AbortSignal,
  ): Promise<LeaseAttrs | undefined>;
}

/** VXLAN backend data, as flanneld writes it: `{"VNI":1,"VtepMAC":"..."}`. */
export interface VxlanBackendData {
  readonly VNI: number;
  readonly VtepMAC: string;
}

/**
 * WireGuard backend data, as flanneld writes it:
 * `{"PublicKey":"<base64>","Port":51820}`. `Port` 0 (or missing, older
 * flannel) means "the same port as mine".
 */
export interface WireguardBackendData {
  readonly PublicKey: string;
  readonly Port: number;
}
