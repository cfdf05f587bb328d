/**
 * The backend interface, as flannel splits it: a backend prepares what it
 * can before the lease exists (the device, whose MAC goes into the lease),
 * then, given our lease, returns a network that the reconciler keeps in
 * shape. `createBackend` (registry.ts) picks the implementation from
 * net-conf.json.
 *
 * @module
 */
import type { Netlink } from "../ffi/types.ts";
import type { NetworkConfig } from "../subnet/config.ts";
import type { Lease, LeaseAttrs, LeaseEvent } from "../subnet/lease.ts";
import { fail, type Result } from "../lib/result.ts";
import type { FamilyNetwork } from "./reconciler.ts";

/** The external (underlay) interface the overlay runs over. */
export interface Underlay {
  readonly index: number;
  readonly name: string;
  readonly mtu: number;
  /** IPv4 address of the interface (the VXLAN source). */
  readonly ifaceAddr?: string;
  readonly ifaceV6Addr?: string;
  /** IPv4 address published to peers (may differ behind NAT). */
  readonly publicIP?: string;
  readonly publicIPv6?: string;
}

/** A backend network, ready for the reconciler. */
export interface BackendNetwork {
  /** MTU for pods: FLANNEL_MTU in subnet.env. */
  readonly mtu: number;
  readonly families: FamilyNetwork[];
  /**
   * Settles when setup that takes time is done (extension: its
   * PostStartupCommand); a rejection ends the agent. Absent: nothing to
   * wait for.
   */
  readonly started?: Promise<void>;
  /**
   * Takes peer lease events, for work a backend does beside kernel
   * entries (extension: operator commands). Returns at once.
   */
  readonly onLeases?: (events: readonly LeaseEvent[]) => void;
}

/** A backend (`vxlan`, `host-gw`, `extension`, `alloc`). */
export interface Backend {
  readonly type: string;
  /**
   * Work before {@linkcode prepare} that takes time (extension: its
   * PreStartupCommand, whose output is published). `signal` aborts when
   * the agent stops, killing what the backend runs from then on.
   */
  setup?(signal: AbortSignal): Promise<void>;
  /**
   * Creates devices as far as possible without a lease and returns the
   * attributes to publish. `previous` is what we published before, if
   * known, so the VTEP MAC survives a lost device.
   */
  prepare(previous?: LeaseAttrs): LeaseAttrs;
  /** Completes setup for our lease. */
  start(lease: Lease): BackendNetwork;
}

/** Extra knobs not in net-conf.json. */
export interface BackendOptions {
  /** Writes sysctls such as IPv6 `accept_ra`. */
  readonly sysctl?: (path: string, value: string) => void;
}

/** Builds one backend type's implementation from net-conf.json. */
export type BackendFactory = (
  nl: Netlink,
  config: NetworkConfig,
  underlay: Underlay,
  opts: BackendOptions,
) => Result<Backend>;

/** The TypeScript type of a Backend key read as `type`. */
type KeyValue<T extends "number" | "boolean" | "string"> = T extends "number"
  ? number
  : T extends "boolean" ? boolean
  : string;

/**
 * Reads a key of the Backend object case-insensitively (Go's
 * encoding/json rules), checking its type.
 */
export function backendKey<T extends "number" | "boolean" | "string">(
  raw: Record<string, unknown>,
  key: string,
  type: T,
): Result<KeyValue<T> | undefined> {
  // Of several spellings the last wins, as `json.Unmarshal` fills a field.
  const k = Object.keys(raw).findLast((x) =>
    x.toLowerCase() === key.toLowerCase()
  );
  const v = k === undefined ? undefined : raw[k];
  if (v === undefined || v === null) return { ok: true, value: undefined };
  if (typeof v !== type || (type === "number" && !Number.isInteger(v))) {
    const want = {
      number: "an integer",
      boolean: "true or false",
      string: "a string",
    }[type];
    return fail(`Invalid Backend.${key} ${JSON.stringify(v)}: must be ${want}`);
  }
  return { ok: true, value: v as KeyValue<T> };
}
