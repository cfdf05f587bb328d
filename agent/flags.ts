/**
 * The command line of weft, which is flanneld's: same flag names, defaults
 * and help texts (docs/flanneld-compat.md, "Command line"), plus weft's
 * own `--reconcile-period`. Parsing follows Go's `flag` package, which
 * flanneld uses: `-name` and `--name` are the same flag, values come as
 * `--name=value` or `--name value`, booleans only take the `=` form
 * (`--ip-masq=false`), and `--` ends the flags. Every flag not given on
 * the command line may come from `FLANNELD_<UPPER_SNAKE_NAME>` (coreos
 * `flagutil.SetFlagsFromEnv`: empty values are ignored, a repeatable flag
 * gets one value).
 *
 * `node:util` `parseArgs` is not used: it reads `-v2` and `-iface` as
 * groups of short options, which Go's syntax does not have.
 *
 * @module
 */
import { fail, ok, type Result } from "../lib/result.ts";
import { parseIp } from "../lib/ip.ts";

/** Parsed command line. Field docs name the flag and its default. */
export interface Flags {
  /** `--kube-subnet-mgr` (false): leases from the Kubernetes API, else etcd. */
  readonly kubeSubnetMgr: boolean;
  /** `--kube-api-url` (""): API server URL; "" means in-cluster config. */
  readonly kubeApiUrl: string;
  /** `--kubeconfig-file` (""): kubeconfig path; "" means in-cluster config. */
  readonly kubeconfigFile: string;
  /** `--kube-annotation-prefix` (`flannel.alpha.coreos.com`). */
  readonly kubeAnnotationPrefix: string;
  /** `--etcd-endpoints`, split on commas (`http://127.0.0.1:4001,http://127.0.0.1:2379`). */
  readonly etcdEndpoints: readonly string[];
  /** `--etcd-prefix` (`/coreos.com/network`). */
  readonly etcdPrefix: string;
  /** `--etcd-keyfile` (""): client key for etcd TLS. */
  readonly etcdKeyfile: string;
  /** `--etcd-certfile` (""): client certificate for etcd TLS. */
  readonly etcdCertfile: string;
  /** `--etcd-cafile` (""): CA bundle for etcd TLS. */
  readonly etcdCafile: string;
  /** `--etcd-username` (""): etcd basic auth user. */
  readonly etcdUsername: string;
  /** `--etcd-password` (""): etcd basic auth password. */
  readonly etcdPassword: string;
  /** `--iface`, repeatable ([]): interface names or IPs, first match wins. */
  readonly iface: readonly string[];
  /** `--iface-regex`, repeatable ([]): regexes on names or addresses. */
  readonly ifaceRegex: readonly string[];
  /** `--iface-can-reach` (""): the interface `ip route get <ip>` uses. */
  readonly ifaceCanReach: string;
  /** `--public-ip` (""): IPv4 address published to peers. */
  readonly publicIP: string;
  /** `--public-ipv6` (""): IPv6 address published to peers. */
  readonly publicIPv6: string;
  /** `--ip-masq` (false): install the FLANNEL-POSTRTG masquerade rules. */
  readonly ipMasq: boolean;
  /** `--ip-masq-fully-random-disable` (false): no `--random-fully`. */
  readonly ipMasqFullyRandomDisable: boolean;
  /** `--subnet-file` (`/run/flannel/subnet.env`). */
  readonly subnetFile: string;
  /** `--net-config-path` (`/etc/kube-flannel/net-conf.json`, kube mode). */
  readonly netConfigPath: string;
  /** `--subnet-lease-renew-margin` (60): minutes, 1..1439 (etcd mode). */
  readonly subnetLeaseRenewMargin: number;
  /** `--healthz-ip` (`0.0.0.0`). */
  readonly healthzIP: string;
  /** `--healthz-port` (0 = no health server). */
  readonly healthzPort: number;
  /** `--iptables-resync` (5): seconds between rule checks. */
  readonly iptablesResync: number;
  /** `--iptables-forward-rules` (true): install the FLANNEL-FWD rules. */
  readonly iptablesForwardRules: boolean;
  /** `--set-node-network-unavailable` (true): set NetworkUnavailable=False. */
  readonly setNodeNetworkUnavailable: boolean;
  /** `--ip-blackhole-route` (false): blackhole route for the own subnet. */
  readonly ipBlackholeRoute: boolean;
  /** `-v` (0): log verbosity; any int32, as klog takes it. */
  readonly v: number;
  /** `-vmodule` (""): klog's per-file levels; checked, then ignored. */
  readonly vmodule: string;
  /** `-log_backtrace_at` (""): klog's `file.go:N`; checked, then ignored. */
  readonly logBacktraceAt: string;
  /** `--version` (false): print the version and exit. */
  readonly version: boolean;
  /** `-h`, `--help` (false): print {@linkcode usage} and exit. */
  readonly help: boolean;
  /** `--reconcile-period` (10): seconds between full kernel reconciles (weft). */
  readonly reconcilePeriod: number;
  /**
   * `--watch-idle-timeout` (0): seconds a watch may stay silent before it
   * is restarted; 0 keeps each API's own bound (weft).
   */
  readonly watchIdleTimeout: number;
  /**
   * `--allow-token-over-http` (false): send the Kubernetes bearer token or
   * etcd credentials to an `http://` server (weft).
   */
  readonly allowTokenOverHttp: boolean;
  /** Names of the flags given explicitly, on the command line or in env. */
  readonly explicit: ReadonlySet<string>;
}

type Kind = "string" | "bool" | "int" | "list";

interface FlagDef {
  readonly name: string;
  readonly kind: Kind;
  readonly key: Exclude<keyof Flags, "explicit">;
  /** Default as Go prints it; "" / "0" / "false" print nothing. */
  readonly def: string;
  readonly help: string;
  /** Checks a parsed value; returns why it is wrong. */
  readonly check?: (value: never) => string | undefined;
  /** Not read from the environment (`--version`, `--help`). */
  readonly noEnv?: boolean;
}

function ipOf(family: 4 | 6) {
  return (text: string): string | undefined => {
    if (text === "") return undefined;
    const ip = parseIp(text);
    if (!ip.ok) return `not an IP address`;
    if (ip.value.family !== family) return `not an IPv${family} address`;
    return undefined;
  };
}

function anyIp(text: string): string | undefined {
  if (text === "") return undefined;
  return parseIp(text).ok ? undefined : "not an IP address";
}

function range(min: number, max: number) {
  return (n: number): string | undefined =>
    n < min || n > max ? `out of range ${min}..${max}` : undefined;
}

/** klog's `-vmodule` grammar (klog v2 `parseModuleSpec`). */
function vmoduleSyntax(text: string): string | undefined {
  for (const pat of text.split(",")) {
    if (pat === "") continue;
    const [name, level, ...rest] = pat.split("=");
    if (!name || !level || rest.length > 0 || !/^[+-]?\d+$/.test(level)) {
      return "syntax error: expect comma-separated list of filename=N";
    }
    const n = Number(level);
    if (n >= 2 ** 31 || n < -(2 ** 31)) {
      return "syntax error: expect comma-separated list of filename=N";
    }
    if (n < 0) return "negative value for vmodule level";
  }
  return undefined;
}

/** klog's `-log_backtrace_at` grammar (`file.go:N`, or empty). */
function traceSyntax(text: string): string | undefined {
  if (text === "") return undefined;
  const fields = text.split(":");
  if (fields.length !== 2 || !fields[0]!.includes(".")) {
    return "syntax error: expect file.go:234";
  }
  if (!/^[+-]?\d+$/.test(fields[1]!)) return "syntax error: expect file.go:234";
  if (Number(fields[1]) <= 0) return "negative or zero value for level";
  return undefined;
}

const FLAGS: readonly FlagDef[] = [
  {
    name: "etcd-endpoints",
    kind: "string",
    key: "etcdEndpoints",
    def: "http://127.0.0.1:4001,http://127.0.0.1:2379",
    help: "a comma-delimited list of etcd endpoints",
    check: (text: string) => {
      for (const ep of text.split(",")) {
        let url: URL | undefined;
        try {
          url = new URL(ep);
        } catch {
          url = undefined;
        }
        if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) {
          return `"${ep}" is not an http(s) URL`;
        }
      }
      return undefined;
    },
  },
  {
    name: "etcd-prefix",
    kind: "string",
    key: "etcdPrefix",
    def: "/coreos.com/network",
    help: "etcd prefix",
  },
  {
    name: "etcd-keyfile",
    kind: "string",
    key: "etcdKeyfile",
    def: "",
    help: "SSL key file used to secure etcd communication",
  },
  {
    name: "etcd-certfile",
    kind: "string",
    key: "etcdCertfile",
    def: "",
    help: "SSL certification file used to secure etcd communication",
  },
  {
    name: "etcd-cafile",
    kind: "string",
    key: "etcdCafile",
    def: "",
    help: "SSL Certificate Authority file used to secure etcd communication",
  },
  {
    name: "etcd-username",
    kind: "string",
    key: "etcdUsername",
    def: "",
    help: "username for BasicAuth to etcd",
  },
  {
    name: "etcd-password",
    kind: "string",
    key: "etcdPassword",
    def: "",
    help: "password for BasicAuth to etcd",
  },
  {
    name: "iface",
    kind: "list",
    key: "iface",
    def: "",
    help:
      "interface to use (IP or name) for inter-host communication. Can be specified multiple times to check each option in order. Returns the first match found.",
    check: (text: string) => text === "" ? "empty interface" : undefined,
  },
  {
    name: "iface-regex",
    kind: "list",
    key: "ifaceRegex",
    def: "",
    help:
      "regex expression to match the first interface to use (IP or name) for inter-host communication. Can be specified multiple times to check each regex in order. Returns the first match found. Regexes are checked after specific interfaces specified by the iface option have already been checked.",
    check: (text: string) => {
      try {
        new RegExp(text);
        return undefined;
      } catch (e) {
        return `not a valid regular expression (${(e as Error).message})`;
      }
    },
  },
  {
    name: "iface-can-reach",
    kind: "string",
    key: "ifaceCanReach",
    def: "",
    help:
      "detect interface to use (IP or name) for inter-host communication based on which will be used for provided IP. This is exactly the interface to use of command 'ip route get <ip-address>'",
    check: anyIp,
  },
  {
    name: "subnet-file",
    kind: "string",
    key: "subnetFile",
    def: "/run/flannel/subnet.env",
    help: "filename where env variables (subnet, MTU, ... ) will be written to",
    check: (text: string) => text === "" ? "empty path" : undefined,
  },
  {
    name: "public-ip",
    kind: "string",
    key: "publicIP",
    def: "",
    help: "IP accessible by other nodes for inter-host communication",
    check: ipOf(4),
  },
  {
    name: "public-ipv6",
    kind: "string",
    key: "publicIPv6",
    def: "",
    help: "IPv6 accessible by other nodes for inter-host communication",
    check: ipOf(6),
  },
  {
    name: "subnet-lease-renew-margin",
    kind: "int",
    key: "subnetLeaseRenewMargin",
    def: "60",
    help: "subnet lease renewal margin, in minutes, ranging from 1 to 1439",
    check: range(1, 1439),
  },
  {
    name: "ip-masq",
    kind: "bool",
    key: "ipMasq",
    def: "false",
    help:
      "setup IP masquerade rule for traffic destined outside of overlay network",
  },
  {
    name: "ip-masq-fully-random-disable",
    kind: "bool",
    key: "ipMasqFullyRandomDisable",
    def: "false",
    help: "disable fully-random mode for MASQUERADE",
  },
  {
    name: "kube-subnet-mgr",
    kind: "bool",
    key: "kubeSubnetMgr",
    def: "false",
    help: "contact the Kubernetes API for subnet assignment instead of etcd.",
  },
  {
    name: "kube-api-url",
    kind: "string",
    key: "kubeApiUrl",
    def: "",
    help:
      "Kubernetes API server URL. Does not need to be specified if flannel is running in a pod.",
    check: (text: string) => {
      if (text === "") return undefined;
      try {
        const url = new URL(text);
        return url.protocol === "http:" || url.protocol === "https:"
          ? undefined
          : "not an http(s) URL";
      } catch {
        return "not an http(s) URL";
      }
    },
  },
  {
    name: "kube-annotation-prefix",
    kind: "string",
    key: "kubeAnnotationPrefix",
    def: "flannel.alpha.coreos.com",
    help:
      'Kubernetes annotation prefix. Can contain single slash "/", otherwise it will be appended at the end.',
    check: (text: string) => {
      if (text === "") return "empty prefix";
      if (text.split("/").length > 2) return "more than one slash";
      return undefined;
    },
  },
  {
    name: "kubeconfig-file",
    kind: "string",
    key: "kubeconfigFile",
    def: "",
    help:
      "kubeconfig file location. Does not need to be specified if flannel is running in a pod.",
  },
  {
    name: "version",
    kind: "bool",
    key: "version",
    def: "false",
    help: "print version and exit",
    noEnv: true,
  },
  {
    name: "healthz-ip",
    kind: "string",
    key: "healthzIP",
    def: "0.0.0.0",
    help: "the IP address for healthz server to listen",
    check: (text: string) => text === "" ? "not an IP address" : anyIp(text),
  },
  {
    name: "healthz-port",
    kind: "int",
    key: "healthzPort",
    def: "0",
    help: "the port for healthz server to listen(0 to disable)",
    check: range(0, 65535),
  },
  {
    name: "iptables-resync",
    kind: "int",
    key: "iptablesResync",
    def: "5",
    help: "resync period for iptables rules, in seconds",
    check: range(1, 86400),
  },
  {
    name: "iptables-forward-rules",
    kind: "bool",
    key: "iptablesForwardRules",
    def: "true",
    help: "add default accept rules to FORWARD chain in iptables",
  },
  {
    name: "net-config-path",
    kind: "string",
    key: "netConfigPath",
    def: "/etc/kube-flannel/net-conf.json",
    help: "path to the network configuration file",
    check: (text: string) => text === "" ? "empty path" : undefined,
  },
  {
    name: "set-node-network-unavailable",
    kind: "bool",
    key: "setNodeNetworkUnavailable",
    def: "true",
    help: "set NodeNetworkUnavailable after ready",
  },
  {
    name: "ip-blackhole-route",
    kind: "bool",
    key: "ipBlackholeRoute",
    def: "false",
    help: "add blackroute route ont the node for the local podCIDR",
  },
  // The three klog flags flanneld copies onto its command line, checked
  // with klog's own syntax so a manifest that starts flanneld starts weft.
  {
    name: "v",
    kind: "int",
    key: "v",
    def: "0",
    help: "number for the log level verbosity",
    check: range(-(2 ** 31), 2 ** 31 - 1),
  },
  {
    name: "vmodule",
    kind: "string",
    key: "vmodule",
    def: "",
    help:
      "comma-separated list of pattern=N settings for file-filtered logging",
    check: vmoduleSyntax,
  },
  {
    name: "log_backtrace_at",
    kind: "string",
    key: "logBacktraceAt",
    def: "",
    help: "when logging hits line file:N, emit a stack trace",
    check: traceSyntax,
  },
  {
    name: "reconcile-period",
    kind: "int",
    key: "reconcilePeriod",
    def: "10",
    help:
      "period of the full kernel reconcile (routes, neighbours, FDB), in seconds; while the kernel reports no change to weft's objects, every sixtieth period (weft only)",
    check: range(1, 86400),
  },
  {
    name: "watch-idle-timeout",
    kind: "int",
    key: "watchIdleTimeout",
    def: "0",
    help:
      "restart a watch that received nothing for this many seconds; 0: 11 minutes for etcd (which reports progress every 10), the watch's own timeout plus 30 s for Kubernetes (weft only)",
    check: range(0, 86400),
  },
  {
    name: "allow-token-over-http",
    kind: "bool",
    key: "allowTokenOverHttp",
    def: "false",
    help:
      "send the Kubernetes bearer token or etcd credentials to an http:// server, where anyone on the path can read them (weft only)",
  },
  {
    name: "help",
    kind: "bool",
    key: "help",
    def: "false",
    help: "print this message",
    noEnv: true,
  },
];

const BY_NAME = new Map(FLAGS.map((f) => [f.name, f]));
BY_NAME.set("h", BY_NAME.get("help")!);

/** klog's flags, whose type Go prints as "value". */
const KLOG = new Set(["v", "vmodule", "log_backtrace_at"]);

/** The environment variable a flag may come from: `FLANNELD_IFACE_REGEX`. */
export function envName(flag: string): string {
  return `FLANNELD_${flag.replaceAll("-", "_").toUpperCase()}`;
}

const TRUE = new Set(["1", "t", "T", "TRUE", "true", "True"]);
const FALSE = new Set(["0", "f", "F", "FALSE", "false", "False"]);

type Value = string | number | boolean;

function convert(def: FlagDef, text: string): Result<Value> {
  switch (def.kind) {
    case "bool":
      if (TRUE.has(text)) return ok(true);
      if (FALSE.has(text)) return ok(false);
      return fail("not a boolean");
    case "int": {
      if (!/^[+-]?\d{1,15}$/.test(text)) return fail("not an integer");
      return ok(Number(text));
    }
    case "string":
    case "list":
      return ok(text);
  }
}

function check(def: FlagDef, value: Value): string | undefined {
  return def.check ? def.check(value as never) : undefined;
}

/**
 * Parses flanneld's command line and `FLANNELD_*` environment. Pure: the
 * caller passes `Deno.args` and `Deno.env.toObject()`.
 *
 * @example
 * ```ts
 * const flags = parseFlags(["--ip-masq", "--kube-subnet-mgr"], {});
 * if (flags.ok) console.log(flags.value.subnetFile); // /run/flannel/subnet.env
 * ```
 */
export function parseFlags(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): Result<Flags> {
  const values = new Map<string, Value | string[]>();
  const explicit = new Set<string>();

  const set = (
    def: FlagDef,
    text: string,
    origin: string,
  ): string | undefined => {
    const value = convert(def, text);
    const why = value.ok ? check(def, value.value) : value.reason;
    if (why !== undefined) {
      return `Invalid value "${text}" for ${origin}: ${why}`;
    }
    explicit.add(def.name);
    if (def.kind === "list") {
      const list = values.get(def.name) as string[] | undefined;
      values.set(def.name, [...(list ?? []), text]);
    } else {
      values.set(def.name, (value as { value: Value }).value);
    }
    return undefined;
  };

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      if (i + 1 < argv.length) {
        return fail(`Unexpected argument "${argv[i + 1]}"`);
      }
      break;
    }
    if (!arg.startsWith("-") || arg === "-") {
      return fail(`Unexpected argument "${arg}"`);
    }
    const body = arg.startsWith("--") ? arg.slice(2) : arg.slice(1);
    if (body === "" || body.startsWith("-") || body.startsWith("=")) {
      return fail(`Bad flag syntax "${arg}"`);
    }
    const eq = body.indexOf("=");
    const name = eq < 0 ? body : body.slice(0, eq);
    const def = BY_NAME.get(name);
    if (!def) return fail(`Unknown flag "${arg}"`);
    const origin = `flag -${name.length > 1 ? "-" : ""}${name}`;
    let text: string;
    if (eq >= 0) {
      text = body.slice(eq + 1);
    } else if (def.kind === "bool") {
      text = "true";
    } else {
      const next = argv[i + 1];
      if (next === undefined) return fail(`Flag "${arg}" needs a value`);
      text = next;
      i++;
    }
    const why = set(def, text, origin);
    if (why) return fail(why);
  }

  const fromArgs = new Set(explicit);
  for (const def of FLAGS) {
    if (def.noEnv || fromArgs.has(def.name)) continue;
    const name = envName(def.name);
    const text = env[name];
    if (text === undefined || text === "") continue;
    const why = set(def, text, `${name} (--${def.name})`);
    if (why) return fail(why);
  }

  const out: Record<string, unknown> = {};
  for (const def of FLAGS) {
    const given = values.get(def.name);
    if (def.kind === "list") {
      out[def.key] = given ?? [];
    } else if (given !== undefined) {
      out[def.key] = given;
    } else {
      out[def.key] = (convert(def, def.def) as { value: Value }).value;
    }
  }
  out.etcdEndpoints = String(out.etcdEndpoints).split(",");
  out.explicit = explicit;
  return ok(out as unknown as Flags);
}

function goQuote(s: string): string {
  return JSON.stringify(s);
}

/**
 * The help text, in the layout of Go's `flag.PrintDefaults` that flanneld
 * prints: flags sorted by name, type after the name, help on the next line.
 */
export function usage(program = "weft"): string {
  const lines = [`Usage: ${program} [OPTION]...`];
  const sorted = [...FLAGS].sort((a, b) => a.name < b.name ? -1 : 1);
  for (const def of sorted) {
    const type = def.kind === "bool"
      ? ""
      : def.kind === "list" || KLOG.has(def.name)
      ? " value"
      : ` ${def.kind}`;
    let line = `  -${def.name}${type}`;
    line += line.length <= 4 ? "\t" : "\n    \t";
    line += def.help;
    const isZero = def.def === "" || def.def === "0" || def.def === "false";
    if (!isZero) {
      line += ` (default ${
        def.kind === "string" ? goQuote(def.def) : def.def
      })`;
    }
    lines.push(line);
  }
  return lines.join("\n") + "\n";
}
