/**
 * The alloc backend: takes and keeps a subnet lease and does nothing else
 * (no device, no routes), for operators who wire the data path themselves
 * and only want flannel's subnet allocation and subnet.env. As flanneld's,
 * it publishes only the public IP: no backend type (an empty
 * `backend-type` annotation, no `BackendType` in etcd) and no backend
 * data. The agent renews the lease (etcd) and writes subnet.env with the
 * external interface's MTU, as for any backend.
 *
 * @module
 */
import type { NetworkConfig } from "../../subnet/config.ts";
import type { Lease, LeaseAttrs } from "../../subnet/lease.ts";
import { ok, type Result } from "../../lib/result.ts";
import type { Backend, BackendNetwork, Underlay } from "../backend.ts";

class AllocBackend implements Backend {
  /** The net-conf.json type; the published backend type is empty. */
  readonly type = "alloc";
  readonly #underlay: Underlay;

  constructor(underlay: Underlay) {
    this.#underlay = underlay;
  }

  prepare(_previous?: LeaseAttrs): LeaseAttrs {
    const ip = this.#underlay.publicIP;
    return { backendType: "", ...(ip !== undefined && { publicIP: ip }) };
  }

  start(_lease: Lease): BackendNetwork {
    return { mtu: this.#underlay.mtu, families: [] };
  }
}

/** Creates the alloc backend; it has no Backend keys of its own. */
export function createAllocBackend(
  _nl: unknown,
  _config: NetworkConfig,
  underlay: Underlay,
): Result<Backend> {
  return ok(new AllocBackend(underlay));
}
