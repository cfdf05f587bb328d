/**
 * Choice of the external interface: the device VXLAN packets leave by, its
 * address (the tunnel's local end) and the public addresses published to
 * peers. The rules are flanneld's (`pkg/ipmatch` `LookupExtIface`):
 * `--iface` entries in order (a name, or an address of the interface),
 * then `--iface-regex` entries (an address, then a name, of any interface),
 * then `--iface-can-reach` (`ip route get`), else the interface of the
 * first default route. `--public-ip` with no interface flag selects the
 * interface that owns that address. Addresses are preferred global before
 * link-local, permanent before dynamic, stable before temporary, and
 * deprecated ones are never used.
 *
 * Everything here reads the kernel through {@linkcode Netlink}, so the
 * decision is tested with a fake.
 *
 * @module
 */
import type { AddrInfo, LinkInfo, Netlink, RouteInfo } from "../ffi/types.ts";
import { type Family, ipString, parseIp, parseIpNet } from "../lib/ip.ts";
import { fail, ok, type Result } from "../lib/result.ts";
import { logger } from "../lib/log.ts";

const log = logger("iface");

/** Address flag: configured by hand, not autoconfigured (IFA_F_PERMANENT). */
export const IFA_F_PERMANENT = 0x80;
/** Address flag: preferred lifetime over (IFA_F_DEPRECATED). */
export const IFA_F_DEPRECATED = 0x20;
/** Address flag: RFC 4941 privacy address (IFA_F_TEMPORARY). */
export const IFA_F_TEMPORARY = 0x01;

/**
 * The public addresses to look for: the node's `node-public-ip` /
 * `node-public-ipv6` annotations win over `--public-ip` / `--public-ipv6`,
 * family by family, as in flanneld's main.go.
 */
export function publicIPChoice(
  flags: { readonly publicIP: string; readonly publicIPv6: string },
  annotated: { readonly ipv4?: string; readonly ipv6?: string },
): { publicIP: string; publicIPv6: string } {
  return {
    publicIP: annotated.ipv4 || flags.publicIP,
    publicIPv6: annotated.ipv6 || flags.publicIPv6,
  };
}

/** The chosen interface. Addresses are plain (no prefix length). */
export interface ExternalInterface {
  readonly index: number;
  readonly name: string;
  readonly mtu: number;
  /** The interface's IPv4 address (the VXLAN local end), IPv4 enabled only. */
  readonly ipv4?: string;
  /** The interface's IPv6 address, IPv6 enabled only. */
  readonly ipv6?: string;
  /** The IPv4 address peers send to: `--public-ip`, else `ipv4`. */
  readonly publicIP?: string;
  /** The IPv6 address peers send to: `--public-ipv6`, else `ipv6`. */
  readonly publicIPv6?: string;
}

/** Inputs of {@linkcode selectExternalInterface}, from flags and config. */
export interface IfaceOptions {
  /** `--iface` values in order: names or addresses. Default none. */
  readonly iface?: readonly string[];
  /** `--iface-regex` values in order. Default none. */
  readonly ifaceRegex?: readonly string[];
  /** `--iface-can-reach` address, "" or undefined for none. */
  readonly ifaceCanReach?: string;
  /** `--public-ip`, "" or undefined for the interface address. */
  readonly publicIP?: string;
  /** `--public-ipv6`, "" or undefined for the interface address. */
  readonly publicIPv6?: string;
  /** net-conf.json `EnableIPv4`; default true. */
  readonly enableIPv4?: boolean;
  /** net-conf.json `EnableIPv6`; default false. */
  readonly enableIPv6?: boolean;
}

/** The part of {@linkcode Netlink} this module reads. */
export type IfaceNetlink = Pick<
  Netlink,
  "linkList" | "addrList" | "routeList" | "routeGet"
>;

interface Stack {
  readonly v4: boolean;
  readonly v6: boolean;
}

/** A matched link with the addresses the match itself fixed, if any. */
interface Candidate {
  readonly link: LinkInfo;
  readonly v4?: string;
  readonly v6?: string;
}

interface Parsed {
  readonly ip: string;
  readonly family: Family;
  readonly value: bigint;
  readonly flags: number;
}

/** An address read back; one without flags counts as permanent. */
function parseAddr(a: AddrInfo): Parsed | undefined {
  const net = parseIpNet(a.local);
  const ip = net.ok ? undefined : parseIp(a.local);
  const family = net.ok ? net.value.family : ip?.ok ? ip.value.family : 0;
  const value = net.ok ? net.value.addr : ip?.ok ? ip.value.value : 0n;
  if (family !== 4 && family !== 6) return undefined;
  return {
    ip: ipString({ family, value }),
    family,
    value,
    flags: a.flags ?? IFA_F_PERMANENT,
  };
}

/** Go's `net.IP.IsLinkLocalUnicast`: 169.254.0.0/16, fe80::/10. */
export function isLinkLocalUnicast(family: Family, value: bigint): boolean {
  return family === 4 ? value >> 16n === 0xa9fen : value >> 118n === 0x3fan;
}

/** Go's `net.IP.IsGlobalUnicast` (which includes private ranges). */
export function isGlobalUnicast(family: Family, value: bigint): boolean {
  if (isLinkLocalUnicast(family, value)) return false;
  if (family === 4) {
    return value !== 0n && value !== 0xffffffffn && value >> 24n !== 127n &&
      value >> 28n !== 0xen;
  }
  return value !== 0n && value !== 1n && value >> 120n !== 0xffn;
}

function rank(a: Parsed): number {
  let r = 0;
  if (!isGlobalUnicast(a.family, a.value)) r += 4;
  if ((a.flags & IFA_F_PERMANENT) === 0) r += 2;
  if ((a.flags & IFA_F_TEMPORARY) !== 0) r += 1;
  return r;
}

/**
 * The usable addresses of a link for a family, best first: global or
 * link-local unicast, not deprecated, ordered as flanneld's `compareAddrs`.
 */
export function usableAddrs(
  nl: IfaceNetlink,
  index: number,
  family: Family,
): string[] {
  return nl.addrList(index, family)
    .map((a) => parseAddr(a))
    .filter((a): a is Parsed =>
      a !== undefined && a.family === family &&
      (isGlobalUnicast(a.family, a.value) ||
        isLinkLocalUnicast(a.family, a.value)) &&
      (a.flags & IFA_F_DEPRECATED) === 0
    )
    .map((a, i) => ({ a, i }))
    .sort((x, y) => rank(x.a) - rank(y.a) || x.i - y.i)
    .map(({ a }) => a.ip);
}

function links(nl: IfaceNetlink): LinkInfo[] {
  return [...nl.linkList()].sort((a, b) => a.index - b.index);
}

function byAddress(nl: IfaceNetlink, text: string): Result<Candidate> {
  const ip = parseIp(text);
  if (!ip.ok) return fail(`"${text}" is not an IP address`);
  const want = ipString(ip.value);
  for (const link of links(nl)) {
    for (const a of nl.addrList(link.index, ip.value.family)) {
      if (parseAddr(a)?.ip === want) {
        return ok(
          ip.value.family === 4 ? { link, v4: want } : { link, v6: want },
        );
      }
    }
  }
  return fail(`no interface has address "${want}"`);
}

function byNameOrAddress(nl: IfaceNetlink, spec: string): Result<Candidate> {
  if (parseIp(spec).ok) return byAddress(nl, spec);
  const link = links(nl).find((l) => l.name === spec);
  return link ? ok({ link }) : fail(`no interface named "${spec}"`);
}

function describe(nl: IfaceNetlink, stack: Stack): string {
  return links(nl).map((l) => {
    const addrs = [
      ...(stack.v4 ? nl.addrList(l.index, 4) : []),
      ...(stack.v6 ? nl.addrList(l.index, 6) : []),
    ].map((a) => parseAddr(a)?.ip).filter((a) => a !== undefined);
    return `${l.name} [${addrs.join(" ")}]`;
  }).join(", ");
}

function byRegex(
  nl: IfaceNetlink,
  pattern: string,
  stack: Stack,
): Result<Candidate> {
  let re: RegExp;
  try {
    re = new RegExp(pattern);
  } catch (e) {
    return fail(`not a valid regular expression (${(e as Error).message})`);
  }
  const all = links(nl);
  for (const link of all) {
    const v4 = stack.v4
      ? usableAddrs(nl, link.index, 4).find((a) => re.test(a))
      : undefined;
    const v6 = stack.v6
      ? usableAddrs(nl, link.index, 6).find((a) => re.test(a))
      : undefined;
    if ((stack.v4 && !v4) || (stack.v6 && !v6)) continue;
    return ok({
      link,
      ...(v4 === undefined ? {} : { v4 }),
      ...(v6 === undefined ? {} : { v6 }),
    });
  }
  const link = all.find((l) => re.test(l.name));
  if (link) return ok({ link });
  return fail(
    `matches no interface name or address (available: ${describe(nl, stack)})`,
  );
}

function byRoute(nl: IfaceNetlink, dst: string): Result<Candidate> {
  const ip = parseIp(dst);
  if (!ip.ok) return fail(`"${dst}" is not an IP address`);
  let routes: RouteInfo[];
  try {
    routes = nl.routeGet(ipString(ip.value));
  } catch (e) {
    return fail(`no route to "${dst}" (${(e as Error).message})`);
  }
  const route = routes.find((r) => r.index !== undefined);
  if (!route) return fail(`no route to "${dst}" names an interface`);
  const link = links(nl).find((l) => l.index === route.index);
  if (!link) {
    return fail(`route to "${dst}" uses unknown device ${route.index}`);
  }
  const src = route.src === undefined ? undefined : parseIp(route.src);
  if (src?.ok) {
    const s = ipString(src.value);
    return ok(src.value.family === 4 ? { link, v4: s } : { link, v6: s });
  }
  return ok({ link });
}

function defaultRouteLink(
  nl: IfaceNetlink,
  family: Family,
): Result<LinkInfo> {
  const dst = family === 4 ? "0.0.0.0/0" : "::/0";
  const route = nl.routeList({ family }).find((r) => r.dst === dst);
  const what = family === 4 ? "default route" : "default IPv6 route";
  if (!route) return fail(`no ${what}`);
  if (route.index === undefined) {
    return fail(`the ${what} names no interface`);
  }
  const link = links(nl).find((l) => l.index === route.index);
  if (!link) return fail(`the ${what} uses unknown device ${route.index}`);
  return ok(link);
}

function byDefaultRoute(nl: IfaceNetlink, stack: Stack): Result<Candidate> {
  if (stack.v4) {
    const v4 = defaultRouteLink(nl, 4);
    if (!v4.ok) return v4;
    if (stack.v6) {
      const v6 = defaultRouteLink(nl, 6);
      if (!v6.ok) return v6;
      if (v6.value.index !== v4.value.index) {
        return fail(
          `the default IPv6 route uses "${v6.value.name}" but the default route uses "${v4.value.name}"`,
        );
      }
    }
    return ok({ link: v4.value });
  }
  const v6 = defaultRouteLink(nl, 6);
  return v6.ok ? ok({ link: v6.value }) : v6;
}

/** Fills in the addresses and public IPs of a matched link. */
function complete(
  nl: IfaceNetlink,
  c: Candidate,
  stack: Stack,
  opts: IfaceOptions,
): Result<ExternalInterface> {
  const { link } = c;
  let ipv4 = stack.v4 ? c.v4 : undefined;
  let ipv6 = stack.v6 ? c.v6 : undefined;
  if (stack.v4 && ipv4 === undefined) {
    ipv4 = usableAddrs(nl, link.index, 4)[0];
    if (ipv4 === undefined) {
      return fail(`interface "${link.name}" has no usable IPv4 address`);
    }
  }
  if (stack.v6 && ipv6 === undefined) {
    ipv6 = usableAddrs(nl, link.index, 6)[0];
    if (ipv6 === undefined) {
      return fail(`interface "${link.name}" has no usable IPv6 address`);
    }
  }
  if (!(link.mtu > 0)) {
    return fail(`interface "${link.name}" reports MTU ${link.mtu}`);
  }
  let publicIP = stack.v4 ? ipv4 : undefined;
  if (opts.publicIP) {
    const ip = parseIp(opts.publicIP);
    if (!ip.ok || ip.value.family !== 4) {
      return fail(`--public-ip "${opts.publicIP}" is not an IPv4 address`);
    }
    publicIP = ipString(ip.value);
  }
  let publicIPv6 = stack.v6 ? ipv6 : undefined;
  if (opts.publicIPv6) {
    const ip = parseIp(opts.publicIPv6);
    if (!ip.ok || ip.value.family !== 6) {
      return fail(`--public-ipv6 "${opts.publicIPv6}" is not an IPv6 address`);
    }
    publicIPv6 = ipString(ip.value);
  }
  return ok({
    index: link.index,
    name: link.name,
    mtu: link.mtu,
    ...(ipv4 === undefined ? {} : { ipv4 }),
    ...(ipv6 === undefined ? {} : { ipv6 }),
    ...(publicIP === undefined ? {} : { publicIP }),
    ...(publicIPv6 === undefined ? {} : { publicIPv6 }),
  });
}

function then(
  nl: IfaceNetlink,
  c: Result<Candidate>,
  stack: Stack,
  opts: IfaceOptions,
): Result<ExternalInterface> {
  return c.ok ? complete(nl, c.value, stack, opts) : c;
}

/**
 * Chooses the external interface as flanneld does (see the module doc).
 * When nothing matches, the reason lists every flag value tried and why
 * each failed.
 *
 * @example
 * ```ts
 * const ext = selectExternalInterface(nl, { iface: ["eth1", "10.0.0.2"] });
 * if (ext.ok) console.log(ext.value.name, ext.value.publicIP);
 * ```
 */
export function selectExternalInterface(
  nl: IfaceNetlink,
  opts: IfaceOptions,
): Result<ExternalInterface> {
  const stack = {
    v4: opts.enableIPv4 ?? true,
    v6: opts.enableIPv6 ?? false,
  };
  if (!stack.v4 && !stack.v6) {
    return fail("Cannot choose an interface: neither IPv4 nor IPv6 is enabled");
  }
  const ifaces = opts.iface ?? [];
  const regexes = opts.ifaceRegex ?? [];
  const canReach = opts.ifaceCanReach ?? "";

  const chosen = (r: Result<ExternalInterface>, how: string) => {
    if (r.ok) {
      const v = r.value;
      log.info(
        `Using interface with name ${v.name} and address ${
          [v.ipv4, v.ipv6].filter((a) => a).join(", ")
        } (${how})`,
      );
      if (v.publicIP !== undefined) {
        log.info(`Using ${v.publicIP} as external address`);
      }
      if (v.publicIPv6 !== undefined) {
        log.info(`Using ${v.publicIPv6} as external IPv6 address`);
      }
    }
    return r;
  };

  if (ifaces.length === 0 && regexes.length === 0 && canReach === "") {
    // flanneld: a public IP with no interface flag names the interface.
    for (
      const [flag, value] of [
        ["--public-ip", opts.publicIP],
        ["--public-ipv6", opts.publicIPv6],
      ] as const
    ) {
      if (!value) continue;
      const r = then(nl, byAddress(nl, value), stack, opts);
      if (r.ok) return chosen(r, `${flag} ${value}`);
      return fail(
        `Cannot use ${flag} "${value}" without --iface: ${r.reason} (behind NAT, choose the interface with --iface)`,
      );
    }
    log.info("Determining IP address of default interface");
    const r = then(nl, byDefaultRoute(nl, stack), stack, opts);
    if (r.ok) return chosen(r, "default route");
    return fail(
      `Cannot choose the interface of the default route: ${r.reason}`,
    );
  }

  const tried: string[] = [];
  for (const spec of ifaces) {
    const r = then(nl, byNameOrAddress(nl, spec), stack, opts);
    if (r.ok) return chosen(r, `--iface ${spec}`);
    log.info(`Could not find valid interface matching ${spec}: ${r.reason}`);
    tried.push(`--iface "${spec}": ${r.reason}`);
  }
  for (const pattern of regexes) {
    const r = then(nl, byRegex(nl, pattern, stack), stack, opts);
    if (r.ok) return chosen(r, `--iface-regex ${pattern}`);
    log.info(`Could not find valid interface matching ${pattern}: ${r.reason}`);
    tried.push(`--iface-regex "${pattern}": ${r.reason}`);
  }
  if (canReach !== "") {
    const r = then(nl, byRoute(nl, canReach), stack, opts);
    if (r.ok) return chosen(r, `--iface-can-reach ${canReach}`);
    log.info(
      `Could not find valid interface matching ifaceCanReach: ${canReach}: ${r.reason}`,
    );
    tried.push(`--iface-can-reach "${canReach}": ${r.reason}`);
  }
  return fail(`No interface matches the interface flags: ${tried.join("; ")}`);
}
