/**
 * The `Backend` section of a wireguard net-conf.json, with flanneld
 * v0.28.9's keys and defaults (pkg/backend/wireguard/wireguard.go).
 *
 * @module
 */
import { fail, ok, type Result } from "../../lib/result.ts";
import { backendKey } from "../backend.ts";
import { parseWgKey } from "../../subnet/validate.ts";

/**
 * How peers are reached: `separate` runs one device per family
 * (`flannel-wg`, `flannel-wg-v6`); the others run one device, `flannel-wg`,
 * carrying both families' subnets to an endpoint of one family.
 */
export type WireguardMode = "separate" | "auto" | "ipv4" | "ipv6";

const MODES: readonly WireguardMode[] = ["separate", "auto", "ipv4", "ipv6"];

/** The Backend section for wireguard, with defaults. */
export interface WireguardConfig {
  /** UDP port of `flannel-wg`; default 51820. */
  readonly listenPort: number;
  /** UDP port of `flannel-wg-v6`; default 51821. */
  readonly listenPortV6: number;
  /** Preshared key (base64, as `wg genpsk` prints); default none. */
  readonly psk?: string;
  /** Seconds between keepalives; 0 (default) turns them off. */
  readonly keepalive: number;
  /** Default `separate`. */
  readonly mode: WireguardMode;
  /**
   * Underlay MTU the devices are sized for (device MTU = this − 80);
   * 0 (default) means the external interface's MTU.
   */
  readonly mtu: number;
}

/**
 * Outer header overhead, as flanneld counts it: IPv6 header 40, UDP 8,
 * type 4, key index 4, nonce 8, authentication tag 16.
 */
export const OVERHEAD = 80;

/** Parses the Backend object of a wireguard config. */
export function parseWireguardConfig(
  raw: Record<string, unknown>,
): Result<WireguardConfig> {
  const port = backendKey(raw, "ListenPort", "number");
  const portV6 = backendKey(raw, "ListenPortV6", "number");
  const psk = backendKey(raw, "PSK", "string");
  const keepalive = backendKey(raw, "PersistentKeepaliveInterval", "number");
  const mode = backendKey(raw, "Mode", "string");
  const mtu = backendKey(raw, "MTU", "number");
  if (!port.ok) return port;
  if (!portV6.ok) return portV6;
  if (!psk.ok) return psk;
  if (!keepalive.ok) return keepalive;
  if (!mode.ok) return mode;
  if (!mtu.ok) return mtu;
  const cfg: WireguardConfig = {
    listenPort: port.value ?? 51820,
    listenPortV6: portV6.value ?? 51821,
    ...(psk.value && { psk: psk.value }),
    keepalive: keepalive.value ?? 0,
    mode: (mode.value ?? "separate") as WireguardMode,
    mtu: mtu.value ?? 0,
  };
  for (
    const [key, v] of [["ListenPort", cfg.listenPort], [
      "ListenPortV6",
      cfg.listenPortV6,
    ]] as const
  ) {
    if (v < 1 || v > 65535) {
      return fail(`Invalid Backend.${key} ${v}: must be 1..65535`);
    }
  }
  if (!MODES.includes(cfg.mode)) {
    return fail(
      `Invalid Backend.Mode ${JSON.stringify(cfg.mode)}: must be one of ${
        MODES.join(", ")
      }`,
    );
  }
  if (cfg.keepalive < 0 || cfg.keepalive > 65535) {
    return fail(
      `Invalid Backend.PersistentKeepaliveInterval ${cfg.keepalive}: must be 0..65535 seconds`,
    );
  }
  // Kept as `wg show` reports it (trimmed), or every pass would see the
  // peers' PSK differ and set them again.
  const key = cfg.psk === undefined ? undefined : parseWgKey(cfg.psk);
  if (key && !key.ok) {
    return fail(
      "Invalid Backend.PSK: must be a base64 key of 32 bytes (as `wg genpsk` prints)",
    );
  }
  if (cfg.mtu !== 0 && (cfg.mtu < 68 + OVERHEAD || cfg.mtu > 65535)) {
    return fail(
      `Invalid Backend.MTU ${cfg.mtu}: must be ${
        68 + OVERHEAD
      }..65535 (the underlay MTU; the device gets ${OVERHEAD} less)`,
    );
  }
  return ok(key?.ok ? { ...cfg, psk: key.value } : cfg);
}
