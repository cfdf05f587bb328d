/**
 * WireGuard keys: the private key file flanneld keeps (`/run/flannel/wgkey`,
 * `WIREGUARD_KEY_FILE` overrides it), created once and reused across
 * restarts so peers need not re-learn our public key, and the parsing of
 * keys from foreign data. The public key is never computed here: the
 * device derives it from the private key and `wg show` reads it back.
 *
 * @module
 */
import { parseWgKey } from "../../subnet/validate.ts";
import { logger } from "../../lib/log.ts";

const log = logger("wireguard");

/** flanneld's default private key file. */
export const DEFAULT_KEY_FILE = "/run/flannel/wgkey";

/** A new private key: 32 random bytes, clamped as `wg genkey` does. */
export function generatePrivateKey(): string {
  const k = crypto.getRandomValues(new Uint8Array(32));
  k[0]! &= 248;
  k[31]! &= 127;
  k[31]! |= 64;
  return btoa(String.fromCharCode(...k));
}

/**
 * Returns the private key in `path`, creating the file (mode 0400, its
 * directory if needed) with a new key when it does not exist. A file that
 * holds no valid key is an error naming it, never silently replaced:
 * peers know the key it held.
 */
export function loadOrCreateKey(path: string): string {
  let text: string | undefined;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new Error(
        `Cannot read WireGuard private key "${path}": ${(e as Error).message}`,
      );
    }
  }
  if (text !== undefined) {
    const key = parseWgKey(text);
    if (!key.ok) {
      throw new Error(
        `WireGuard private key file "${path}" holds no valid key (${key.reason}): remove it to have a new key made`,
      );
    }
    return key.value;
  }
  const dir = path.slice(0, path.lastIndexOf("/"));
  if (dir !== "") Deno.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const key = generatePrivateKey();
  Deno.writeTextFileSync(path, key + "\n", { mode: 0o400, createNew: true });
  Deno.chmodSync(path, 0o400);
  log.info(`Created WireGuard private key "${path}"`);
  return key;
}
