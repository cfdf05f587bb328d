/**
 * The bad-input corpus of the fault suite, as data: peer leases as etcd
 * keys and values, network configs (`<prefix>/config`) and command lines.
 * Each case says what it is and what weft must do with it; the suite
 * (tests/e2e/faults_test.ts) injects them into a running cluster and
 * lists every case in its table.
 *
 * Peer cases are built from a {@linkcode PeerSlot}: a free subnet, an
 * unused public IP and MAC of their own, so any kernel entry a refused
 * case leaves behind can be traced back to it.
 *
 * @module
 */

/** What a peer case gets to build its key and value from. */
export interface PeerSlot {
  /** `/coreos.com/network/subnets/`. */
  readonly dir: string;
  /** A /24 in the cluster network used by nobody: `10.244.201.0/24`. */
  readonly subnet: string;
  /** The slot's public IP, never a real node's: `198.18.0.201`. */
  readonly publicIP: string;
  /** The slot's VTEP MAC: `0a:fa:00:00:00:c9`. */
  readonly mac: string;
  /** The subnet of the node under test (node1). */
  readonly ownSubnet: string;
  /** The subnets of its real peers. */
  readonly peerSubnets: readonly string[];
  /** Its real peers' VTEP MACs and public IPs, in the same order. */
  readonly peerMacs: readonly string[];
  readonly peerIPs: readonly string[];
  /** The VTEP MAC of the node under test. */
  readonly ownMac: string;
}

/** A peer lease to write: full etcd key and exact value bytes. */
export interface PeerInput {
  readonly key: string;
  readonly value: string | Uint8Array;
  /** Subnet the key claims, when it names one (for the kernel check). */
  readonly claims?: string;
}

/** One malformed (or, for the control, valid) peer lease. */
export interface PeerCase {
  readonly name: string;
  /** `refused`: warned about, never programmed; `programmed`: the control. */
  readonly expect: "refused" | "programmed";
  readonly make: (s: PeerSlot) => PeerInput;
  /** What its warning must say after the key (see corpus_run.ts). */
  readonly reason?: RegExp;
  /** The `weft_peers_refused_total` label it must count under. */
  readonly counter?: string;
}

/** `c` with the reason and counter label its refusal must show. */
export function refusedAs<T>(c: T, reason: RegExp, counter = "invalid"): T {
  return { ...c, reason, counter };
}

/** `10.244.7.0/24` → `10.244.7.0-24`. */
export function keyName(subnet: string): string {
  return subnet.replace("/", "-");
}

function octets(subnet: string): number[] {
  return subnet.split("/")[0]!.split(".").map(Number);
}

/** The /`len` network containing `subnet`. */
export function supernet(subnet: string, len: number): string {
  const [a, b, c, d] = octets(subnet) as [number, number, number, number];
  const n = ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
  const m = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  const x = (n & m) >>> 0;
  return `${x >>> 24}.${(x >>> 16) & 255}.${(x >>> 8) & 255}.${x & 255}/${len}`;
}

/** Whether `a` and `b` (IPv4 CIDRs) overlap. */
export function overlaps(a: string, b: string): boolean {
  const la = Number(a.split("/")[1]);
  const lb = Number(b.split("/")[1]);
  const l = Math.min(la, lb);
  return supernet(a, l) === supernet(b, l);
}

/** The lease value flanneld writes, for the slot. */
function validValue(s: PeerSlot): Record<string, unknown> {
  return {
    PublicIP: s.publicIP,
    PublicIPv6: null,
    BackendType: "vxlan",
    BackendData: { VNI: 1, VtepMAC: s.mac },
  };
}

/** A case whose value is the valid lease with some fields replaced. */
function patched(
  name: string,
  patch: (v: Record<string, unknown>, s: PeerSlot) => void,
): PeerCase {
  return {
    name,
    expect: "refused",
    make: (s) => {
      const v = validValue(s);
      patch(v, s);
      return { key: s.dir + keyName(s.subnet), value: JSON.stringify(v) };
    },
  };
}

/** A case with a raw value at the slot's key. */
function raw(
  name: string,
  value: (s: PeerSlot) => string | Uint8Array,
): PeerCase {
  return {
    name,
    expect: "refused",
    make: (s) => ({ key: s.dir + keyName(s.subnet), value: value(s) }),
  };
}

/** A case with a valid value under a bad or hostile key name. */
function keyed(
  name: string,
  key: (s: PeerSlot) => string,
  claims?: (s: PeerSlot) => string,
): PeerCase {
  return {
    name,
    expect: "refused",
    make: (s) => ({
      key: s.dir + key(s),
      value: JSON.stringify(validValue(s)),
      ...(claims && { claims: claims(s) }),
    }),
  };
}

function data(v: Record<string, unknown>): Record<string, unknown> {
  return v.BackendData as Record<string, unknown>;
}

/** A real peer subnet whose /23 does not hold our own subnet. */
function supernetTarget(s: PeerSlot): string {
  for (const p of s.peerSubnets) {
    if (!overlaps(supernet(p, 23), s.ownSubnet)) return supernet(p, 23);
  }
  return supernet(s.peerSubnets[0]!, 22);
}

const MIB = 1 << 20;

/** Malformed peer leases (plus one valid control), at least 50. */
export const PEER_CASES: readonly PeerCase[] = [
  {
    name: "control: a valid lease (must be programmed)",
    expect: "programmed",
    make: (s) => ({
      key: s.dir + keyName(s.subnet),
      value: JSON.stringify(validValue(s)),
    }),
  },
  // Not JSON, or not a JSON object.
  raw("value is not JSON", () => "not json"),
  raw(
    "value is truncated JSON",
    (s) => JSON.stringify(validValue(s)).slice(0, 30),
  ),
  raw("value is empty", () => ""),
  raw("value has a trailing comma", (s) => `{"PublicIP":"${s.publicIP}",}`),
  raw("value is null", () => "null"),
  raw("value is an array", (s) => JSON.stringify([validValue(s)])),
  raw("value is a number", () => "42"),
  raw("value is a string", () => '"vxlan"'),
  raw("value is true", () => "true"),
  raw("value is an empty object", () => "{}"),
  raw(
    "value starts with a UTF-8 BOM",
    (s) => "\uFEFF" + JSON.stringify(validValue(s)),
  ),
  raw(
    "value is not UTF-8",
    () => new Uint8Array([0xff, 0xfe, 0x7b, 0x80, 0x7d]),
  ),
  refusedAs(
    raw("value is 1 MiB of garbage", () => "x".repeat(MIB)),
    /^value of 1048576 bytes refused for its size/,
  ),
  refusedAs(
    patched(
      "value is 1 MiB (PublicIP padded)",
      (v, s) => v.PublicIP = s.publicIP + " ".repeat(MIB),
    ),
    /^value of \d+ bytes refused for its size/,
  ),
  refusedAs(
    patched(
      "value is 200 KiB, valid but padded (past the 64 KiB value bound)",
      (v) => v.Pad = "p".repeat(200 << 10),
    ),
    /^value of \d{6} bytes refused for its size \(at most 65536\)$/,
  ),
  refusedAs(
    patched(
      "VtepMAC with a newline and a forged log line",
      (v, s) =>
        data(v).VtepMAC = `${s.mac}\nE1206 00:00:00.000000 1 vxlan] forged`,
    ),
    /Cannot parse MAC address "[0-9a-f:]{17}\\nE1206 00:00:00\.000000 1 vxlan\] forged"$/,
  ),
  refusedAs(
    keyed(
      "key with a newline and a forged log line",
      (s) => `${keyName(s.subnet)}\nW1206 00:00:00.000000 1 etcd] forged`,
    ),
    /^Key name "[0-9.]+-24\\nW1206 00:00:00\.000000 1 etcd\] forged" is not a subnet$/,
  ),
  raw(
    "value nests arrays 100 000 deep",
    () => "[".repeat(100_000) + "]".repeat(100_000),
  ),
  // PublicIP.
  patched("PublicIP missing", (v) => delete v.PublicIP),
  patched("PublicIP null", (v) => v.PublicIP = null),
  patched("PublicIP a number", (v) => v.PublicIP = 3323068617),
  patched("PublicIP an object", (v) => v.PublicIP = { ip: "198.18.0.9" }),
  patched(
    "PublicIP not an address (999.1.1.1)",
    (v) => v.PublicIP = "999.1.1.1",
  ),
  patched("PublicIP three octets", (v) => v.PublicIP = "198.18.0"),
  patched(
    "PublicIP with a prefix length",
    (v, s) => v.PublicIP = `${s.publicIP}/24`,
  ),
  patched("PublicIP IPv6 in the IPv4 field", (v) => v.PublicIP = "fd00::1"),
  patched("PublicIP with leading zeros", (v) => v.PublicIP = "198.018.000.010"),
  patched(
    "PublicIP with a leading space",
    (v, s) => v.PublicIP = ` ${s.publicIP}`,
  ),
  patched("PublicIP unspecified (0.0.0.0)", (v) => v.PublicIP = "0.0.0.0"),
  patched("PublicIP multicast (224.0.0.1)", (v) => v.PublicIP = "224.0.0.1"),
  patched(
    "PublicIP broadcast (255.255.255.255)",
    (v) => v.PublicIP = "255.255.255.255",
  ),
  patched("PublicIP given twice, the last one bad", (v) => v.publicip = "bad"),
  // BackendType.
  patched("BackendType missing", (v) => delete v.BackendType),
  patched("BackendType a number", (v) => v.BackendType = 1),
  patched("BackendType upper case (VXLAN)", (v) => v.BackendType = "VXLAN"),
  patched(
    "BackendType unknown (bogus-type)",
    (v) => v.BackendType = "bogus-type",
  ),
  patched(
    "BackendType of another backend (host-gw)",
    (v) => v.BackendType = "host-gw",
  ),
  patched(
    "BackendType 1000 characters",
    (v) => v.BackendType = "v".repeat(1000),
  ),
  // BackendData.
  patched("BackendData missing", (v) => delete v.BackendData),
  patched("BackendData null", (v) => v.BackendData = null),
  patched(
    "BackendData a JSON string",
    (v) => v.BackendData = JSON.stringify(v.BackendData),
  ),
  patched("BackendData an array", (v) => v.BackendData = [v.BackendData]),
  patched("VNI a string", (v) => data(v).VNI = "1"),
  patched("VNI negative", (v) => data(v).VNI = -1),
  patched("VNI above 2^24", (v) => data(v).VNI = 16777216),
  patched("VNI a fraction", (v) => data(v).VNI = 1.5),
  raw(
    "VNI 1e400 (infinite)",
    (s) => JSON.stringify(validValue(s)).replace('"VNI":1', '"VNI":1e400'),
  ),
  patched("VtepMAC missing", (v) => delete data(v).VtepMAC),
  patched("VtepMAC a number", (v) => data(v).VtepMAC = 42),
  patched("VtepMAC not hex", (v) => data(v).VtepMAC = "zz:zz:zz:zz:zz:zz"),
  patched(
    "VtepMAC five octets",
    (v, s) => data(v).VtepMAC = s.mac.slice(0, 14),
  ),
  patched("VtepMAC seven octets", (v, s) => data(v).VtepMAC = `${s.mac}:01`),
  patched(
    "VtepMAC without separators",
    (v, s) => data(v).VtepMAC = s.mac.replaceAll(":", ""),
  ),
  patched(
    "VtepMAC multicast (01:00:5e:00:00:01)",
    (v) => data(v).VtepMAC = "01:00:5e:00:00:01",
  ),
  patched("VtepMAC broadcast", (v) => data(v).VtepMAC = "ff:ff:ff:ff:ff:ff"),
  patched("VtepMAC all zeros", (v) => data(v).VtepMAC = "00:00:00:00:00:00"),
  // Subnets that do not fit.
  keyed(
    "subnet outside the network (10.99.x.0/24)",
    (s) => keyName(s.subnet).replace("10.244.", "10.99."),
    (s) => s.subnet.replace("10.244.", "10.99."),
  ),
  keyed(
    "subnet inside ours (upper /25 of our /24)",
    (s) => keyName(s.ownSubnet).replace(".0-24", ".128-25"),
    (s) => s.ownSubnet.replace(".0/24", ".128/25"),
  ),
  keyed(
    "subnet inside a peer's (upper /25)",
    (s) => keyName(s.peerSubnets[0]!).replace(".0-24", ".128-25"),
    (s) => s.peerSubnets[0]!.replace(".0/24", ".128/25"),
  ),
  keyed(
    "supernet of a peer's subnet (sorts before it)",
    (s) => keyName(supernetTarget(s)),
    supernetTarget,
  ),
  keyed(
    "the whole cluster network (10.244.0.0/16)",
    () => "10.244.0.0-16",
    () => "10.244.0.0/16",
  ),
  keyed(
    "a peer's subnet again, under a dual-stack key",
    (s) => `${keyName(s.peerSubnets[1] ?? s.peerSubnets[0]!)}&fc00::-64`,
    (s) => s.peerSubnets[1] ?? s.peerSubnets[0]!,
  ),
  // Claims on what another accepted lease or this node holds.
  patched(
    "VtepMAC of a real peer (duplicate; the older claim keeps it)",
    (v, s) => data(v).VtepMAC = s.peerMacs[0]!,
  ),
  patched(
    "VtepMAC of a real peer, in upper case",
    (v, s) =>
      data(v).VtepMAC = s.peerMacs[1 % s.peerMacs.length]!.toUpperCase(),
  ),
  patched(
    "VtepMAC of the node under test",
    (v, s) => data(v).VtepMAC = s.ownMac,
  ),
  patched(
    "PublicIP of a real peer (duplicate, same backend type)",
    (v, s) => v.PublicIP = s.peerIPs[0]!,
  ),
  // Public IPs that are not global or private unicast, or point into the
  // overlay.
  patched(
    "PublicIP link-local (169.254.1.1)",
    (v) => v.PublicIP = "169.254.1.1",
  ),
  patched("PublicIP in 0.0.0.0/8 (0.1.2.3)", (v) => v.PublicIP = "0.1.2.3"),
  patched("PublicIP reserved (240.0.0.1)", (v) => v.PublicIP = "240.0.0.1"),
  patched("PublicIP loopback (127.0.0.1)", (v) => v.PublicIP = "127.0.0.1"),
  patched(
    "PublicIP inside the cluster network",
    (v, s) => v.PublicIP = s.subnet.replace(".0/24", ".9"),
  ),
  patched(
    "PublicIP IPv4-mapped IPv6 (::ffff:198.18.0.x)",
    (v, s) => v.PublicIP = `::ffff:${s.publicIP}`,
  ),
  // Subnets of another length than the cluster's /24s.
  keyed(
    "subnet /25 in a free range (length differs)",
    (s) => keyName(s.subnet).replace("-24", "-25"),
    (s) => s.subnet.replace("/24", "/25"),
  ),
  keyed(
    "subnet /26 in a free range (length differs)",
    (s) => keyName(s.subnet).replace("-24", "-26"),
    (s) => s.subnet.replace("/24", "/26"),
  ),
  keyed(
    "subnet /32, a host route in a free range",
    (s) => keyName(s.subnet).replace(".0-24", ".7-32"),
    (s) => s.subnet.replace(".0/24", ".7/32"),
  ),
  keyed(
    "supernet /17 over real peers' subnets",
    (s) => keyName(supernet(s.peerSubnets[0]!, 17)),
    (s) => supernet(s.peerSubnets[0]!, 17),
  ),
  keyed(
    "subnet /23 in a free range (length differs)",
    (s) => keyName(supernet(s.subnet, 23)),
    (s) => supernet(s.subnet, 23),
  ),
  // Keys that are not subnets.
  keyed("key is not a subnet (foo)", () => "foo"),
  keyed("key has no prefix length", (s) => s.subnet.split("/")[0]!),
  keyed("key has an extra path element", (s) => `${keyName(s.subnet)}/extra`),
  keyed(
    "key has leading zeros",
    (s) => keyName(s.subnet).replace("10.244.", "10.244.0"),
  ),
  keyed(
    "key has prefix length 33",
    (s) => keyName(s.subnet).replace("-24", "-33"),
  ),
  keyed("key has an octet of 300", () => "10.244.300.0-24"),
  keyed(
    "key has host bits (x.1/24)",
    (s) => keyName(s.subnet).replace(".0-24", ".1-24"),
  ),
  keyed("key has a bad IPv6 part", (s) => `${keyName(s.subnet)}&nothex-64`),
  keyed("key has a trailing space", (s) => `${keyName(s.subnet)} `),
  keyed("key is 4096 characters", () => "9".repeat(4096)),
];

/** What an agent must do with a bad network config of its own. */
export type ConfigExpectation =
  /** Keep running and retry, logging a message naming the etcd key. */
  | { readonly kind: "retry"; readonly mentions: readonly string[] }
  /** Exit with status 1 and a message naming the input. */
  | { readonly kind: "exit"; readonly mentions: readonly string[] };

/** A bad `<prefix>/config`. */
export interface ConfigCase {
  readonly name: string;
  /** The value written; undefined leaves the key missing. */
  readonly value: string | undefined;
  readonly expect: ConfigExpectation;
}

const retry = (...mentions: string[]): ConfigExpectation => ({
  kind: "retry",
  mentions,
});
const exit = (...mentions: string[]): ConfigExpectation => ({
  kind: "exit",
  mentions,
});
const net = (extra: Record<string, unknown>) =>
  JSON.stringify({ Network: "10.244.0.0/16", ...extra });

/** Bad network configs in etcd (`<prefix>/config`). */
export const CONFIG_CASES: readonly ConfigCase[] = [
  { name: "config key missing", value: undefined, expect: retry("not found") },
  { name: "config not JSON", value: '{"Network":', expect: retry("JSON") },
  { name: "config empty", value: "", expect: retry("JSON") },
  { name: "config null", value: "null", expect: retry("not a JSON object") },
  { name: "config an array", value: "[]", expect: retry("not a JSON object") },
  { name: "config without Network", value: "{}", expect: retry("Network") },
  {
    name: "Network a number",
    value: '{"Network":42}',
    expect: retry("Network"),
  },
  {
    name: "Network without prefix length",
    value: '{"Network":"10.244.0.0"}',
    expect: retry("Network", "10.244.0.0"),
  },
  {
    name: "Network prefix /33",
    value: '{"Network":"10.244.0.0/33"}',
    expect: retry("Network"),
  },
  {
    name: "Network IPv6 in the IPv4 field",
    value: '{"Network":"fc00::/48"}',
    expect: retry("Network", "fc00::/48"),
  },
  {
    name: "Network too small (/29)",
    value: '{"Network":"10.244.0.0/29"}',
    expect: retry("too small"),
  },
  {
    name: "SubnetLen 31",
    value: net({ SubnetLen: 31 }),
    expect: retry("SubnetLen"),
  },
  {
    name: "SubnetLen 17 (< prefix+2)",
    value: net({ SubnetLen: 17 }),
    expect: retry("SubnetLen"),
  },
  {
    name: "SubnetLen a string",
    value: net({ SubnetLen: "24" }),
    expect: retry("SubnetLen"),
  },
  {
    name: "SubnetMin outside Network",
    value: net({ SubnetMin: "10.9.0.0" }),
    expect: retry("SubnetMin"),
  },
  {
    name: "SubnetMin off a boundary",
    value: net({ SubnetMin: "10.244.1.7" }),
    expect: retry("SubnetMin"),
  },
  {
    name: "SubnetMin above SubnetMax",
    value: net({ SubnetMin: "10.244.200.0", SubnetMax: "10.244.100.0" }),
    expect: retry("SubnetMin", "SubnetMax"),
  },
  {
    // (EnableIPv4 false with IPv6 enabled is IPv6-only, a valid config.)
    name: "EnableIPv4 and EnableIPv6 both false",
    value: net({ EnableIPv4: false, EnableIPv6: false }),
    expect: retry("EnableIPv4", "EnableIPv6"),
  },
  {
    name: "EnableIPv4 a string",
    value: net({ EnableIPv4: "yes" }),
    expect: retry("EnableIPv4"),
  },
  {
    name: "Backend a string",
    value: net({ Backend: "vxlan" }),
    expect: retry("Backend"),
  },
  {
    name: "Backend.Type a number",
    value: net({ Backend: { Type: 1 } }),
    expect: retry("Backend.Type"),
  },
  {
    name: "config 1 MiB of garbage",
    value: "x".repeat(MIB),
    expect: retry("JSON"),
  },
  {
    name: "Backend.Type unknown",
    value: net({ Backend: { Type: "bogus" } }),
    expect: exit("bogus"),
  },
  {
    name: "Backend.VNI above 2^24",
    value: net({ Backend: { Type: "vxlan", VNI: 16777216 } }),
    expect: exit("Backend.VNI"),
  },
  {
    name: "Backend.Port a string",
    value: net({ Backend: { Type: "vxlan", Port: "8472" } }),
    expect: exit("Backend.Port"),
  },
];

/** A bad command line. */
export interface FlagCase {
  readonly name: string;
  readonly args: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  /** Fragments the error must contain (besides the usage text). */
  readonly mentions: readonly string[];
}

/** Bad flags: each must exit 2 with a message naming it and the usage. */
export const FLAG_CASES: readonly FlagCase[] = [
  {
    name: "unknown flag",
    args: ["--no-such-flag"],
    mentions: ["--no-such-flag"],
  },
  { name: "unknown single-dash flag", args: ["-x"], mentions: ["-x"] },
  { name: "positional argument", args: ["eth0"], mentions: ["eth0"] },
  {
    name: "bad flag syntax (---iface)",
    args: ["---iface=eth0"],
    mentions: ["---iface"],
  },
  {
    name: "value missing at the end",
    args: ["--subnet-file"],
    mentions: ["subnet-file"],
  },
  {
    name: "--subnet-lease-renew-margin=0",
    args: ["--subnet-lease-renew-margin=0"],
    mentions: ["subnet-lease-renew-margin", "0"],
  },
  {
    name: "--subnet-lease-renew-margin=1440",
    args: ["--subnet-lease-renew-margin=1440"],
    mentions: ["subnet-lease-renew-margin", "1440"],
  },
  {
    name: "--subnet-lease-renew-margin=abc",
    args: ["--subnet-lease-renew-margin=abc"],
    mentions: ["subnet-lease-renew-margin", "abc"],
  },
  {
    name: "--iface-regex=( (bad regex)",
    args: ["--iface-regex=("],
    mentions: ["iface-regex", "("],
  },
  {
    name: "--iface-regex=[a- (bad regex)",
    args: ["--iface-regex=[a-"],
    mentions: ["iface-regex", "[a-"],
  },
  { name: "--iface= (empty)", args: ["--iface="], mentions: ["iface"] },
  {
    name: "--public-ip=1.2.3.999",
    args: ["--public-ip=1.2.3.999"],
    mentions: ["public-ip", "1.2.3.999"],
  },
  {
    name: "--public-ip=fd00::1 (IPv6)",
    args: ["--public-ip=fd00::1"],
    mentions: ["public-ip", "fd00::1"],
  },
  {
    name: "--healthz-port=70000",
    args: ["--healthz-port=70000"],
    mentions: ["healthz-port", "70000"],
  },
  {
    name: "--iptables-resync=0",
    args: ["--iptables-resync=0"],
    mentions: ["iptables-resync"],
  },
  {
    name: "--ip-masq=maybe",
    args: ["--ip-masq=maybe"],
    mentions: ["ip-masq", "maybe"],
  },
  {
    name: "--etcd-endpoints=ftp://x",
    args: ["--etcd-endpoints=ftp://x"],
    mentions: ["etcd-endpoints", "ftp://x"],
  },
  {
    name: "--kube-api-url=not a url",
    args: ["--kube-api-url=not a url"],
    mentions: ["kube-api-url"],
  },
  {
    name: "--kube-annotation-prefix=a/b/c",
    args: ["--kube-annotation-prefix=a/b/c"],
    mentions: ["kube-annotation-prefix"],
  },
  { name: "-v=x", args: ["-v=x"], mentions: ["-v", "x"] },
  {
    name: "FLANNELD_SUBNET_LEASE_RENEW_MARGIN=2000",
    args: [],
    env: { FLANNELD_SUBNET_LEASE_RENEW_MARGIN: "2000" },
    mentions: ["FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "2000"],
  },
  {
    name: "FLANNELD_IFACE_REGEX=( (bad regex)",
    args: [],
    env: { FLANNELD_IFACE_REGEX: "(" },
    mentions: ["FLANNELD_IFACE_REGEX"],
  },
];

/** What a Kubernetes node case builds its Node object from. */
export interface NodeSlot {
  /** `fault-07`: sorts before the real nodes (`node1`...), as a relist sees it. */
  readonly name: string;
  /** A free /24 in the cluster network. */
  readonly podCIDR: string;
  readonly publicIP: string;
  readonly mac: string;
  /** The pod CIDR of the node under test (node1). */
  readonly ownPodCIDR: string;
  /** The pod CIDRs of its real peers. */
  readonly peerPodCIDRs: readonly string[];
  /** Its real peers' VTEP MACs and public IPs, in the same order. */
  readonly peerMacs: readonly string[];
  readonly peerIPs: readonly string[];
  /** The public IP and VTEP MAC of the node under test. */
  readonly ownIP: string;
  readonly ownMac: string;
}

/** One bad Node object (or, for the control, a valid one). */
export interface NodeCase {
  readonly name: string;
  readonly expect: "refused" | "programmed";
  /** The Node object to create (`metadata.name` is the slot's). */
  readonly make: (s: NodeSlot) => Record<string, unknown>;
  /** The subnet it claims, for the kernel check (default the slot's). */
  readonly claims?: (s: NodeSlot) => string | undefined;
}

/** flanneld's annotation prefix. */
const ANN = "flannel.alpha.coreos.com/";

/** The annotations a flannel agent publishes, for the slot. */
function validAnnotations(s: NodeSlot): Record<string, string> {
  return {
    [`${ANN}backend-type`]: "vxlan",
    [`${ANN}backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: s.mac }),
    [`${ANN}kube-subnet-manager`]: "true",
    [`${ANN}public-ip`]: s.publicIP,
  };
}

function node(
  s: NodeSlot,
  annotations: Record<string, string>,
  podCIDR: string | undefined,
): Record<string, unknown> {
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: { name: s.name, annotations },
    spec: podCIDR === undefined ? {} : { podCIDR, podCIDRs: [podCIDR] },
  };
}

/** A case with the valid annotations changed by `patch`. */
function annotated(
  name: string,
  patch: (a: Record<string, string>, s: NodeSlot) => void,
): NodeCase {
  return {
    name,
    expect: "refused",
    make: (s) => {
      const a = validAnnotations(s);
      patch(a, s);
      return node(s, a, s.podCIDR);
    },
  };
}

/** A case with valid annotations and another pod CIDR. */
function cidr(
  name: string,
  podCIDR: (s: NodeSlot) => string | undefined,
  claims?: (s: NodeSlot) => string | undefined,
  expect: "refused" | "programmed" = "refused",
): NodeCase {
  return {
    name,
    expect,
    make: (s) => node(s, validAnnotations(s), podCIDR(s)),
    claims: claims ?? podCIDR,
  };
}

/** Bad Node objects for Kubernetes mode, plus one valid control. */
export const NODE_CASES: readonly NodeCase[] = [
  {
    name:
      "control: a node as a flannel agent annotates it (must be programmed)",
    expect: "programmed",
    make: (s) => node(s, validAnnotations(s), s.podCIDR),
  },
  annotated("backend-data not JSON", (a) => a[`${ANN}backend-data`] = "{VNI:1"),
  annotated(
    "backend-data a JSON array",
    (a, s) =>
      a[`${ANN}backend-data`] = JSON.stringify([{ VNI: 1, VtepMAC: s.mac }]),
  ),
  annotated("backend-data null", (a) => a[`${ANN}backend-data`] = "null"),
  annotated("backend-data empty", (a) => a[`${ANN}backend-data`] = ""),
  annotated(
    "backend-data without VtepMAC",
    (a) => a[`${ANN}backend-data`] = '{"VNI":1}',
  ),
  annotated(
    "backend-data VtepMAC multicast",
    (a) => a[`${ANN}backend-data`] = '{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}',
  ),
  annotated(
    "backend-data VtepMAC not a MAC",
    (a) => a[`${ANN}backend-data`] = '{"VNI":1,"VtepMAC":"not-a-mac"}',
  ),
  annotated(
    "backend-data VNI a string",
    (a, s) =>
      a[`${ANN}backend-data`] = JSON.stringify({ VNI: "1", VtepMAC: s.mac }),
  ),
  annotated(
    "backend-data 200 KiB (VtepMAC padded)",
    (a, s) =>
      a[`${ANN}backend-data`] = JSON.stringify({
        VNI: 1,
        VtepMAC: s.mac + " ".repeat(200 * 1024),
      }),
  ),
  annotated("backend-type missing", (a) => delete a[`${ANN}backend-type`]),
  annotated(
    "backend-type unknown (bogus)",
    (a) => a[`${ANN}backend-type`] = "bogus",
  ),
  annotated("public-ip missing", (a) => delete a[`${ANN}public-ip`]),
  annotated(
    "public-ip not an address",
    (a) => a[`${ANN}public-ip`] = "999.1.1.1",
  ),
  annotated(
    "public-ip IPv6 in the IPv4 annotation",
    (a) => a[`${ANN}public-ip`] = "fd00::1",
  ),
  annotated(
    "public-ip unspecified (0.0.0.0)",
    (a) => a[`${ANN}public-ip`] = "0.0.0.0",
  ),
  annotated(
    "kube-subnet-manager missing",
    (a) => delete a[`${ANN}kube-subnet-manager`],
  ),
  annotated(
    'kube-subnet-manager "false"',
    (a) => a[`${ANN}kube-subnet-manager`] = "false",
  ),
  cidr("podCIDR missing", () => undefined, (s) => s.podCIDR),
  cidr(
    "podCIDR outside Network (10.99.x.0/24)",
    (s) => s.podCIDR.replace("10.244.", "10.99."),
  ),
  // A podCIDR that is not a CIDR, or has host bits, never gets this far:
  // the apiserver refuses the Node object (422).
  cidr(
    "podCIDR inside ours (upper /25)",
    (s) => s.ownPodCIDR.replace(".0/24", ".128/25"),
  ),
  cidr(
    "podCIDR inside a peer's (upper /25)",
    (s) => s.peerPodCIDRs[0]!.replace(".0/24", ".128/25"),
  ),
  cidr(
    "podCIDR equal to another peer's (this node sorts first)",
    (s) => s.peerPodCIDRs[1] ?? s.peerPodCIDRs[0]!,
    () => undefined,
  ),
  // Claims on what another accepted node or this node holds.
  annotated(
    "backend-data VtepMAC of a real peer (duplicate)",
    (a, s) =>
      a[`${ANN}backend-data`] = JSON.stringify({
        VNI: 1,
        VtepMAC: s.peerMacs[0]!,
      }),
  ),
  annotated(
    "backend-data VtepMAC of a real peer, in upper case",
    (a, s) =>
      a[`${ANN}backend-data`] = JSON.stringify({
        VNI: 1,
        VtepMAC: s.peerMacs[1 % s.peerMacs.length]!.toUpperCase(),
      }),
  ),
  annotated(
    "backend-data VtepMAC of the node under test",
    (a, s) =>
      a[`${ANN}backend-data`] = JSON.stringify({ VNI: 1, VtepMAC: s.ownMac }),
  ),
  annotated(
    "public-ip of a real peer (duplicate, same backend type)",
    (a, s) => a[`${ANN}public-ip`] = s.peerIPs[0]!,
  ),
  annotated(
    "public-ip of the node under test",
    (a, s) => a[`${ANN}public-ip`] = s.ownIP,
  ),
  annotated(
    "public-ip link-local (169.254.1.1)",
    (a) => a[`${ANN}public-ip`] = "169.254.1.1",
  ),
  annotated(
    "public-ip in 0.0.0.0/8 (0.1.2.3)",
    (a) => a[`${ANN}public-ip`] = "0.1.2.3",
  ),
  annotated(
    "public-ip reserved (240.0.0.1)",
    (a) => a[`${ANN}public-ip`] = "240.0.0.1",
  ),
  annotated(
    "public-ip loopback (127.0.0.1)",
    (a) => a[`${ANN}public-ip`] = "127.0.0.1",
  ),
  annotated(
    "public-ip inside the cluster network",
    (a, s) => a[`${ANN}public-ip`] = s.podCIDR.replace(".0/24", ".9"),
  ),
  annotated(
    "public-ip IPv4-mapped IPv6 (::ffff:198.18.0.x)",
    (a, s) => a[`${ANN}public-ip`] = `::ffff:${s.publicIP}`,
  ),
  // Pod CIDRs of another length than this node's: a cluster whose
  // controller-manager mask size changed holds both, and flanneld programs
  // them all. Free ones must be programmed; one over real peers refused.
  cidr(
    "podCIDR /25 in a free range (length differs: programmed)",
    (s) => s.podCIDR.replace("/24", "/25"),
    undefined,
    "programmed",
  ),
  cidr(
    "podCIDR /26 in a free range (length differs: programmed)",
    (s) => s.podCIDR.replace("/24", "/26"),
    undefined,
    "programmed",
  ),
  cidr(
    "podCIDR /32, a host route in a free range (programmed)",
    (s) => s.podCIDR.replace(".0/24", ".7/32"),
    undefined,
    "programmed",
  ),
  cidr(
    // Below the slots' and probes' octets (110 and up) and above the
    // real nodes': free, and overlapping no other case.
    "podCIDR /23 in a free range (length differs: programmed)",
    () => "10.244.100.0/23",
    undefined,
    "programmed",
  ),
  cidr(
    "podCIDR /17 over real peers' pod CIDRs",
    (s) => supernet(s.peerPodCIDRs[0]!, 17),
  ),
];
