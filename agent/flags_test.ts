import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import { envName, type Flags, parseFlags, usage } from "./flags.ts";

function parse(
  argv: string[],
  env: Record<string, string | undefined> = {},
): Flags {
  const r = parseFlags(argv, env);
  if (!r.ok) throw new Error(`unexpected failure: ${r.reason}`);
  return r.value;
}

function reason(
  argv: string[],
  env: Record<string, string | undefined> = {},
): string {
  const r = parseFlags(argv, env);
  if (r.ok) throw new Error(`expected failure for ${JSON.stringify(argv)}`);
  return r.reason;
}

Deno.test("parseFlags() gives flanneld's defaults with no arguments", () => {
  const f = parse([]);
  const { explicit, ...rest } = f;
  assertEquals(explicit.size, 0);
  assertEquals(rest, {
    etcdEndpoints: ["http://127.0.0.1:4001", "http://127.0.0.1:2379"],
    etcdPrefix: "/coreos.com/network",
    etcdKeyfile: "",
    etcdCertfile: "",
    etcdCafile: "",
    etcdUsername: "",
    etcdPassword: "",
    iface: [],
    ifaceRegex: [],
    ifaceCanReach: "",
    subnetFile: "/run/flannel/subnet.env",
    publicIP: "",
    publicIPv6: "",
    subnetLeaseRenewMargin: 60,
    ipMasq: false,
    ipMasqFullyRandomDisable: false,
    kubeSubnetMgr: false,
    kubeApiUrl: "",
    kubeAnnotationPrefix: "flannel.alpha.coreos.com",
    kubeconfigFile: "",
    version: false,
    healthzIP: "0.0.0.0",
    healthzPort: 0,
    iptablesResync: 5,
    iptablesForwardRules: true,
    netConfigPath: "/etc/kube-flannel/net-conf.json",
    setNodeNetworkUnavailable: true,
    ipBlackholeRoute: false,
    v: 0,
    vmodule: "",
    logBacktraceAt: "",
    reconcilePeriod: 10,
    watchIdleTimeout: 0,
    allowTokenOverHttp: false,
    help: false,
  });
});

Deno.test("parseFlags() accepts every spelling Go's flag package accepts", () => {
  const cases: [string[], Partial<Flags>][] = [
    [["--ip-masq"], { ipMasq: true }],
    [["-ip-masq"], { ipMasq: true }],
    [["--ip-masq=false"], { ipMasq: false }],
    [["--ip-masq=0"], { ipMasq: false }],
    [["--ip-masq=T"], { ipMasq: true }],
    [["--iptables-forward-rules=false"], { iptablesForwardRules: false }],
    [["--healthz-port=10256"], { healthzPort: 10256 }],
    [["--healthz-port", "10256"], { healthzPort: 10256 }],
    [["-healthz-port", "10256"], { healthzPort: 10256 }],
    [["-v=2"], { v: 2 }],
    [["-v", "2"], { v: 2 }],
    [["--v=2"], { v: 2 }],
    [["--v", "3"], { v: 3 }],
    [["--v=12"], { v: 12 }],
    [["-v=-1"], { v: -1 }],
    [["-v=2147483647"], { v: 2147483647 }],
    [["--ip-blackhole-route"], { ipBlackholeRoute: true }],
    [["-vmodule=vxlan=4,kube*=2,"], { vmodule: "vxlan=4,kube*=2," }],
    [["-vmodule", ""], { vmodule: "" }],
    [["-log_backtrace_at=main.go:120"], { logBacktraceAt: "main.go:120" }],
    [["--subnet-file", "/tmp/s.env"], { subnetFile: "/tmp/s.env" }],
    [["--etcd-endpoints=https://a:2379,http://b:2379"], {
      etcdEndpoints: ["https://a:2379", "http://b:2379"],
    }],
    [["--iface", "eth0", "--iface=10.0.0.1", "-iface", "ens3"], {
      iface: ["eth0", "10.0.0.1", "ens3"],
    }],
    [["--iface-regex", "^en", "--iface-regex=^eth"], {
      ifaceRegex: ["^en", "^eth"],
    }],
    [["--public-ip", "192.0.2.1", "--public-ipv6=2001:db8::1"], {
      publicIP: "192.0.2.1",
      publicIPv6: "2001:db8::1",
    }],
    [["--iface-can-reach=8.8.8.8"], { ifaceCanReach: "8.8.8.8" }],
    [["--kube-api-url="], { kubeApiUrl: "" }],
    [["--subnet-lease-renew-margin=1"], { subnetLeaseRenewMargin: 1 }],
    [["--reconcile-period", "30"], { reconcilePeriod: 30 }],
    [["--watch-idle-timeout", "5"], { watchIdleTimeout: 5 }],
    [["--allow-token-over-http=true"], { allowTokenOverHttp: true }],
    [["-h"], { help: true }],
    [["--help"], { help: true }],
    [["--version"], { version: true }],
    [["--ip-masq", "--"], { ipMasq: true }],
  ];
  for (const [argv, want] of cases) {
    const got = parse(argv) as unknown as Record<string, unknown>;
    for (const [k, v] of Object.entries(want)) {
      assertEquals(got[k], v, `${argv.join(" ")}: ${k}`);
    }
  }
});

Deno.test("parseFlags() rejects bad input with a reason naming it", () => {
  const cases: [string[], string][] = [
    [["--nope"], 'Unknown flag "--nope"'],
    [
      ["-v=2147483648"],
      'Invalid value "2147483648" for flag -v: out of range -2147483648..2147483647',
    ],
    [
      ["-vmodule=vxlan"],
      'Invalid value "vxlan" for flag --vmodule: syntax error: expect comma-separated list of filename=N',
    ],
    [
      ["-vmodule=vxlan=-1"],
      'Invalid value "vxlan=-1" for flag --vmodule: negative value for vmodule level',
    ],
    [
      ["-log_backtrace_at=main:12"],
      'Invalid value "main:12" for flag --log_backtrace_at: syntax error: expect file.go:234',
    ],
    [["-x=1"], 'Unknown flag "-x=1"'],
    [["--healthz-port"], 'Flag "--healthz-port" needs a value'],
    [
      ["--healthz-port=abc"],
      'Invalid value "abc" for flag --healthz-port: not an integer',
    ],
    [
      ["--healthz-port=65536"],
      'Invalid value "65536" for flag --healthz-port: out of range 0..65535',
    ],
    [
      ["--subnet-lease-renew-margin=0"],
      'Invalid value "0" for flag --subnet-lease-renew-margin: out of range 1..1439',
    ],
    [
      ["--subnet-lease-renew-margin=1440"],
      'Invalid value "1440" for flag --subnet-lease-renew-margin: out of range 1..1439',
    ],
    [
      ["--ip-masq=yes"],
      'Invalid value "yes" for flag --ip-masq: not a boolean',
    ],
    [
      ["--public-ip=2001:db8::1"],
      'Invalid value "2001:db8::1" for flag --public-ip: not an IPv4 address',
    ],
    [
      ["--public-ipv6=10.0.0.1"],
      'Invalid value "10.0.0.1" for flag --public-ipv6: not an IPv6 address',
    ],
    [
      ["--public-ip=10.0.0.256"],
      'Invalid value "10.0.0.256" for flag --public-ip: not an IP address',
    ],
    [
      ["--healthz-ip=localhost"],
      'Invalid value "localhost" for flag --healthz-ip: not an IP address',
    ],
    [
      ["--iface-can-reach=example.com"],
      'Invalid value "example.com" for flag --iface-can-reach: not an IP address',
    ],
    [
      ["--iface-regex=("],
      'Invalid value "(" for flag --iface-regex: not a valid regular expression',
    ],
    [
      ["--etcd-endpoints=127.0.0.1:2379"],
      'Invalid value "127.0.0.1:2379" for flag --etcd-endpoints: "127.0.0.1:2379" is not an http(s) URL',
    ],
    [
      ["--kube-api-url=ftp://x"],
      'Invalid value "ftp://x" for flag --kube-api-url: not an http(s) URL',
    ],
    [
      ["--kube-annotation-prefix=a/b/c"],
      'Invalid value "a/b/c" for flag --kube-annotation-prefix: more than one slash',
    ],
    [
      ["--iptables-resync=0"],
      'Invalid value "0" for flag --iptables-resync: out of range 1..86400',
    ],
    [["eth0"], 'Unexpected argument "eth0"'],
    [["--", "eth0"], 'Unexpected argument "eth0"'],
    [["---ip-masq"], 'Bad flag syntax "---ip-masq"'],
    [["-"], 'Unexpected argument "-"'],
  ];
  for (const [argv, want] of cases) {
    const got = reason(argv);
    assert(got.startsWith(want), `${argv.join(" ")}: got ${got}`);
  }
});

Deno.test("parseFlags() reads FLANNELD_* env, and a flag wins over env", () => {
  const env = {
    FLANNELD_IFACE: "eth1",
    FLANNELD_IP_MASQ: "true",
    FLANNELD_HEALTHZ_PORT: "8080",
    FLANNELD_SUBNET_FILE: "/x/subnet.env",
    FLANNELD_KUBECONFIG_FILE: "/k",
    FLANNELD_V: "4",
    FLANNELD_PUBLIC_IP: "",
    FLANNELD_VERSION: "v0.26.0",
    PATH: "/usr/bin",
  };
  const f = parse(["--healthz-port=9090"], env);
  assertEquals(f.iface, ["eth1"]);
  assertEquals(f.ipMasq, true);
  assertEquals(f.healthzPort, 9090);
  assertEquals(f.subnetFile, "/x/subnet.env");
  assertEquals(f.kubeconfigFile, "/k");
  assertEquals(f.v, 4);
  assertEquals(f.publicIP, "");
  assertEquals(f.version, false);
  assertEquals(
    [...f.explicit].sort(),
    [
      "healthz-port",
      "iface",
      "ip-masq",
      "kubeconfig-file",
      "subnet-file",
      "v",
    ],
  );
  // A repeatable flag given on the command line ignores its env variable.
  assertEquals(parse(["--iface=eth2"], env).iface, ["eth2"]);
});

Deno.test("parseFlags() names the env variable of a bad value", () => {
  assertEquals(
    reason([], { FLANNELD_HEALTHZ_PORT: "http" }),
    'Invalid value "http" for FLANNELD_HEALTHZ_PORT (--healthz-port): not an integer',
  );
  assertEquals(
    reason([], { FLANNELD_IP_MASQ: "on" }),
    'Invalid value "on" for FLANNELD_IP_MASQ (--ip-masq): not a boolean',
  );
});

Deno.test("envName() follows flagutil's naming", () => {
  assertEquals(envName("iface-can-reach"), "FLANNELD_IFACE_CAN_REACH");
  assertEquals(envName("v"), "FLANNELD_V");
});

Deno.test("usage() lists every flag sorted, with Go's layout and defaults", () => {
  const text = usage("weft");
  const lines = text.split("\n");
  assertEquals(lines[0], "Usage: weft [OPTION]...");
  assert(
    text.includes(
      '  -etcd-endpoints string\n    \ta comma-delimited list of etcd endpoints (default "http://127.0.0.1:4001,http://127.0.0.1:2379")\n',
    ),
  );
  assert(
    text.includes(
      "  -ip-masq\n    \tsetup IP masquerade rule for traffic destined outside of overlay network\n",
    ),
  );
  assert(
    text.includes(
      "  -iptables-forward-rules\n    \tadd default accept rules to FORWARD chain in iptables (default true)\n",
    ),
  );
  assert(
    text.includes(
      "  -iptables-resync int\n    \tresync period for iptables rules, in seconds (default 5)\n",
    ),
  );
  assert(text.includes("  -iface value\n"));
  assert(
    text.includes("  -v value\n    \tnumber for the log level verbosity\n"),
  );
  assert(
    text.includes(
      "  -healthz-port int\n    \tthe port for healthz server to listen(0 to disable)\n",
    ),
  );
  const names = lines.filter((l) => l.startsWith("  -")).map((l) =>
    l.slice(3).split(" ")[0]!
  );
  assertEquals(names, [...names].sort());
  for (
    const flag of [
      "kube-subnet-mgr",
      "kube-api-url",
      "kubeconfig-file",
      "kube-annotation-prefix",
      "etcd-prefix",
      "etcd-keyfile",
      "etcd-certfile",
      "etcd-cafile",
      "etcd-username",
      "etcd-password",
      "iface-regex",
      "iface-can-reach",
      "public-ip",
      "public-ipv6",
      "ip-masq-fully-random-disable",
      "subnet-file",
      "net-config-path",
      "subnet-lease-renew-margin",
      "healthz-ip",
      "set-node-network-unavailable",
      "version",
      "reconcile-period",
    ]
  ) {
    assert(names.includes(flag), `usage lists -${flag}`);
  }
});
