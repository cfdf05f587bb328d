/**
 * net-conf.json: parsing and validation with flanneld's rules (see
 * ../shared/REFERENCE.md "net-conf.json"). Implemented by the config work.
 *
 * @module
 */
import type { IpNet } from "./ip.ts";

/** The backend section of net-conf.json. `type` is lower-cased. */
export interface BackendConfig {
  readonly type: string;
  /** The whole Backend object as given, for backend-specific keys. */
  readonly raw: Record<string, unknown>;
}

/** A validated network configuration with defaults filled in. */
export interface NetworkConfig {
  readonly enableIPv4: boolean;
  readonly enableIPv6: boolean;
  readonly enableNFTables: boolean;
  readonly network?: IpNet;
  readonly subnetLen: number;
  readonly subnetMin?: IpNet;
  readonly subnetMax?: IpNet;
  readonly ipv6Network?: IpNet;
  readonly ipv6SubnetLen: number;
  readonly ipv6SubnetMin?: IpNet;
  readonly ipv6SubnetMax?: IpNet;
  readonly backend: BackendConfig;
  /** True when net-conf.json had no Backend and vxlan was assumed. */
  readonly backendDefaulted: boolean;
}
