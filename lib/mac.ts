/**
 * MAC addresses as canonical strings (`aa:bb:cc:dd:ee:ff`, lower case), and
 * the random locally administered unicast MAC a new VTEP gets.
 *
 * @module
 */
import { fail, ok, type Result } from "./result.ts";
import { quote } from "./log.ts";

/** Parses a MAC address; accepts `:` or `-` separators and either case. */
export function parseMac(text: unknown): Result<string> {
  if (typeof text !== "string") {
    return fail(`Cannot parse MAC address ${quote(text)}`);
  }
  if (!/^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$/.test(text)) {
    return fail(`Cannot parse MAC address ${quote(text)}`);
  }
  return ok(text.toLowerCase().replaceAll("-", ":"));
}

/** Parses a MAC that can be a VTEP address: unicast and not all zeros. */
export function parseUnicastMac(text: unknown): Result<string> {
  const mac = parseMac(text);
  if (!mac.ok) return mac;
  const first = parseInt(mac.value.slice(0, 2), 16);
  if (first & 1) return fail(`MAC address "${mac.value}" is multicast`);
  if (mac.value === "00:00:00:00:00:00") {
    return fail(`MAC address "${mac.value}" is all zeros`);
  }
  return mac;
}

/** A random locally administered unicast MAC. */
export function randomMac(): string {
  const b = crypto.getRandomValues(new Uint8Array(6));
  b[0] = (b[0]! & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join(":");
}
