/**
 * The WireGuard device (`flannel-wg`, `flannel-wg-v6`): made by the kernel
 * when it has WireGuard (`ip link add NAME type wireguard`), else by a
 * userspace implementation found as wg-quick finds one
 * (`$WG_USERSPACE_IMPLEMENTATION`, else `wireguard-go` on PATH), which
 * creates a TUN device of that name and keeps running on its own. Either
 * way, the rest (key, port, peers) goes through `wg` (wg.ts).
 *
 * An existing WireGuard device is kept, with its peers: a restart of weft
 * (and the userspace daemon running on) costs no packet. flanneld instead
 * deletes and recreates the link at start; weft only does that to a
 * device of the name that is not a WireGuard device.
 *
 * The kernel-only part is the `linkAdd` call; this machine's kernel has
 * no WireGuard module, so tests run the userspace path.
 *
 * @module
 */
import { KernelError, type LinkInfo, type Netlink } from "../../ffi/types.ts";
import { logger } from "../../lib/log.ts";
import type { Wg, WgDeviceSettings, WgDump } from "./wg.ts";

const log = logger("wireguard");

/** Starts a userspace implementation for a device; see {@linkcode userspaceStarter}. */
export type UserspaceStarter = (name: string) => void;

/**
 * Starts `$WG_USERSPACE_IMPLEMENTATION` (else `wireguard-go`) for a
 * device and waits until it has daemonized (the device and its socket
 * exist then). Throws naming both when neither can be run.
 */
export function userspaceStarter(
  env: { get(key: string): string | undefined } = Deno.env,
): UserspaceStarter {
  return (name) => {
    const program = env.get("WG_USERSPACE_IMPLEMENTATION") || "wireguard-go";
    log.info(`Starting userspace WireGuard: ${program} ${name}`);
    let out: Deno.CommandOutput;
    try {
      // The daemon's own stdio is /dev/null (no LOG_LEVEL is passed), so
      // waiting for the launcher to exit does not wait for the daemon.
      out = new Deno.Command(program, {
        args: [name],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).outputSync();
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error(
          `No WireGuard: the kernel has no wireguard link type and no userspace implementation was found ("${program}"; set WG_USERSPACE_IMPLEMENTATION or install wireguard-go on PATH)`,
        );
      }
      throw new Error(`Cannot run "${program}": ${(e as Error).message}`);
    }
    if (out.code !== 0) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n")
        .slice(-3).join(" | ");
      throw new Error(
        `"${program} ${name}" failed (exit ${out.code}): ${err}`,
      );
    }
  };
}

/** What {@linkcode ensureWgDevice} makes. */
export interface WgDeviceSpec extends WgDeviceSettings {
  readonly name: string;
  readonly mtu: number;
  /** The private key the file holds, to compare with the device's. */
  readonly privateKey: string;
}

/**
 * Makes sure `spec.name` is a WireGuard device with our key, port and MTU;
 * returns it with the `wg show` dump it read (read again only after a
 * `wg set` changed the device), so callers need not run `wg` again. Peers
 * are left alone (the reconciler owns them).
 */
export function ensureWgDevice(
  nl: Netlink,
  wg: Wg,
  startUserspace: UserspaceStarter,
  spec: WgDeviceSpec,
): { link: LinkInfo; dump: WgDump } {
  let link = nl.linkByName(spec.name);
  // A kernel WireGuard link or a userspace TUN whose `wg show` fails is
  // ours with a transient fault: the error surfaces and the pass retries.
  const ours = link?.kind === "wireguard" || link?.kind === "tun";
  let dump = link && ours ? wg.show(spec.name) : undefined;
  if (link && !dump) {
    log.warn(
      `Existing device "${spec.name}" is no WireGuard device: deleting and recreating it`,
    );
    nl.linkDel(link.index);
    link = undefined;
  }
  if (!link) {
    try {
      log.info(
        `Creating device: ip link add ${spec.name} mtu ${spec.mtu} type wireguard`,
      );
      link = nl.linkAdd({ name: spec.name, kind: "wireguard", mtu: spec.mtu });
    } catch (e) {
      if (!(e instanceof KernelError) || e.exists) throw e;
      log.info(`Kernel has no WireGuard (${e.message}): using userspace`);
      startUserspace(spec.name);
      link = nl.linkByName(spec.name);
      if (!link) {
        throw new Error(
          `Userspace WireGuard started but device "${spec.name}" does not exist`,
        );
      }
    }
    dump = undefined;
  }
  dump ??= wg.show(spec.name);
  if (
    dump.privateKey !== spec.privateKey || dump.listenPort !== spec.listenPort
  ) {
    log.info(
      `wg set ${spec.name} listen-port ${spec.listenPort} private-key ${spec.privateKeyFile}`,
    );
    wg.setDevice(spec.name, spec);
    dump = wg.show(spec.name);
  }
  if (link.mtu !== spec.mtu) {
    log.v(1, `ip link set ${spec.name} mtu ${spec.mtu} (was ${link.mtu})`);
    nl.linkSetMtu(link.index, spec.mtu);
    link = nl.linkByIndex(link.index) ?? link;
  }
  return { link, dump };
}
