/**
 * `--ip-blackhole-route`: a blackhole route for the node's own subnet (v4
 * and v6), so traffic to an unused pod address of this node is dropped
 * here instead of following the default route out (RKE2's Canal passes the
 * flag: its pods get /32 routes and no bridge route covers the subnet).
 * As flanneld v0.28.9 (main.go, pkg/ip/iface.go `AddBlackholeV4Route`):
 * added when missing, checked again every `--iptables-resync` seconds,
 * never replacing another route to the same prefix, left in place at stop.
 *
 * @module
 */
import type { Netlink } from "../ffi/types.ts";
import { KernelError } from "../ffi/types.ts";
import { sleep } from "../lib/retry.ts";
import { logger } from "../lib/log.ts";

const log = logger("main");

/**
 * Adds `ip route add blackhole <subnet>` for each subnet that lacks one.
 * An existing route to the prefix (a blackhole already there, or another
 * route in the way) is left alone. Returns the routes it added.
 */
export function ensureBlackholeRoutes(
  nl: Pick<Netlink, "routeAdd">,
  subnets: readonly string[],
): string[] {
  const added: string[] = [];
  for (const dst of subnets) {
    try {
      nl.routeAdd({ dst, blackhole: true });
      added.push(dst);
      log.info(`ip route add blackhole ${dst}`);
    } catch (e) {
      if (e instanceof KernelError && e.exists) continue;
      log.error(
        `Failed to add blackhole route ${dst}: ${(e as Error).message}`,
      );
    }
  }
  return added;
}

/** Keeps the blackhole routes in place until `signal` aborts. */
export async function keepBlackholeRoutes(
  nl: Pick<Netlink, "routeAdd">,
  subnets: readonly string[],
  periodSeconds: number,
  signal: AbortSignal,
): Promise<void> {
  while (!signal.aborted) {
    ensureBlackholeRoutes(nl, subnets);
    await sleep(periodSeconds * 1000, signal).catch(() => {});
  }
}
