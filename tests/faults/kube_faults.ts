/**
 * The Kubernetes-mode half of the fault suite: a namespace cluster whose
 * agents run `--kube-subnet-mgr` against a real kube-apiserver in the
 * switch namespace (tests/e2e/_kube.ts), with these faults:
 *
 * - a corpus of bad Node objects (annotations, pod CIDRs), then node1
 *   restarted with them present;
 * - a misbehaving HTTPS proxy between node3 and the apiserver (it
 *   terminates TLS with a certificate of the cluster CA and presents
 *   node3's client certificate upstream);
 * - kube-apiserver killed for `WEFT_FAULT_OUTAGE_S`, restarted with the
 *   same command line, then node4 joins;
 * - node2, which authenticates with a service-account token file through
 *   a second proxy (that forwards its bearer token), gets a new token and
 *   the old one is revoked (its bound Secret deleted);
 * - node2's CA file is replaced by a bundle with a new CA, and its API
 *   endpoint starts serving a certificate of that new CA.
 *
 * @module
 */
import {
  Cluster,
  type ClusterNode,
  DEFAULT_NET_CONF,
  type EtcdLease,
  SWITCH_IP,
} from "../_cluster.ts";
import { run, sh } from "../_netns.ts";
import { KUBE_PORT, KubeControlPlane } from "../e2e/_kube.ts";
import { NODE_CASES, type NodeSlot } from "./corpus.ts";
import { slotEntries } from "./kernel.ts";
import { type CorpusCase, corpusRun } from "./corpus_run.ts";
import { FaultProxy } from "./proxy.ts";
import { type FaultRow, fmtMs } from "./report.ts";
import {
  Checks,
  FaultRun,
  lossText,
  OUTAGE_S,
  SILENT_PAST_IDLE,
  sleep,
  STANDARD_FAULTS,
  waitUntil,
} from "./run.ts";

const ANN = "flannel.alpha.coreos.com/";
/** node3's misbehaving proxy. */
const PROXY3_PORT = 6444;
/** node2's proxy (token auth passes through). */
const PROXY2_PORT = 6445;
const SA = "weft-agent";
const NS = "kube-system";

function kubeconfigYaml(opts: {
  server: string;
  caFile: string;
  tokenFile: string;
}): string {
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: weft",
    "  cluster:",
    `    server: ${opts.server}`,
    `    certificate-authority: ${opts.caFile}`,
    "users:",
    "- name: agent",
    "  user:",
    `    tokenFile: ${opts.tokenFile}`,
    "contexts:",
    "- name: weft",
    "  context:",
    "    cluster: weft",
    "    user: agent",
    "current-context: weft",
    "",
  ].join("\n");
}

/** Writes a file by rename, as kubelet swaps projected volumes. */
async function replaceFile(path: string, text: string): Promise<void> {
  const tmp = `${path}.new`;
  await Deno.writeTextFile(tmp, text, { mode: 0o600 });
  await Deno.rename(tmp, path);
}

/** The Kubernetes-mode cluster and its phases. */
export class KubeFaults extends FaultRun {
  readonly kube: KubeControlPlane;
  readonly pki: string;
  #freeOctets: number[] = [];
  /** The apiserver as respawned by {@linkcode restartApiserver}. */
  #apiserver: Deno.ChildProcess | undefined;
  #proxies: FaultProxy[] = [];
  /** node2's proxy and token state. */
  #proxy2: FaultProxy | undefined;
  #secret = 0;

  private constructor(c: Cluster, rows: FaultRow[], kube: KubeControlPlane) {
    super(c, rows);
    this.kube = kube;
    this.pki = `${kube.dir}/pki`;
  }

  /** Builds the cluster, the control plane, agents on node1-3 and pods. */
  static async create(rows: FaultRow[], prefix: string): Promise<KubeFaults> {
    const c = await Cluster.create({ nodes: 4, prefix, etcd: false });
    let s: KubeFaults | undefined;
    try {
      const kube = await KubeControlPlane.start(
        c.hub,
        SWITCH_IP,
        `${c.dir}/kube`,
      );
      s = new KubeFaults(c, rows, kube);
      for (const n of s.nodes(1, 2, 3)) {
        await s.#prepareNode(n);
        // node1's Node strictly older than the others (ages are whole
        // seconds): the claim-order rows copy a MAC from an older Node.
        if (n.n === 1) await sleep(1050 - Date.now() % 1000);
      }
      await s.#tokenSetup(s.node(2));
      for (const n of s.nodes(1, 2, 3)) await s.startKube(n);
      for (const n of s.nodes(1, 2, 3)) await c.waitReady(n, 30_000);
      for (const n of s.nodes(1, 2, 3)) await c.addPod(n, 1);
      if ((await s.converged(s.nodes(1, 2, 3), 15_000)) === undefined) {
        throw new Error(
          `Cluster did not converge: ${
            (await s.problems(s.nodes(1, 2, 3))).join("; ")
          }`,
        );
      }
    } catch (e) {
      if (s) await s.close();
      else await c.close();
      throw e;
    }
    return s;
  }

  /** Node object, kubeconfig (client certificate) and net-conf.json. */
  async #prepareNode(n: ClusterNode): Promise<void> {
    await this.kube.createNode(n.name, `10.244.${n.n}.0/24`);
    await this.kube.writeKubeconfig(n.name, `${n.dir}/kubeconfig`);
    await Deno.writeTextFile(`${n.dir}/net-conf.json`, DEFAULT_NET_CONF);
  }

  /**
   * Starts a node's agent in Kubernetes mode; it may reach the apiserver
   * and the suite's proxies.
   */
  async startKube(
    n: ClusterNode,
    kubeconfig?: string,
    extra: readonly string[] = [],
  ): Promise<void> {
    await this.start(n, [
      "--kube-subnet-mgr",
      `--kubeconfig-file=${kubeconfig ?? this.#kubeconfigOf(n)}`,
      `--net-config-path=${n.dir}/net-conf.json`,
      ...extra,
    ], [KUBE_PORT, PROXY2_PORT, PROXY3_PORT].map((p) => `${SWITCH_IP}:${p}`));
  }

  #kubeconfigOf(n: ClusterNode): string {
    return n.name === "node2"
      ? `${n.dir}/kubeconfig-token`
      : `${n.dir}/kubeconfig`;
  }

  async #api(method: string, path: string, body?: unknown): Promise<unknown> {
    const r = await this.kube.api(method, path, body);
    if (r.status < 200 || r.status >= 300) {
      throw new Error(
        `${method} ${path} answered ${r.status}: ${
          JSON.stringify(r.body).slice(0, 300)
        }`,
      );
    }
    return r.body;
  }

  /** Every annotated node's lease, as the agents must program it. */
  async leases(): Promise<EtcdLease[]> {
    const out: EtcdLease[] = [];
    for (const n of await this.kube.nodes()) {
      const a = n.metadata.annotations ?? {};
      if (a[`${ANN}kube-subnet-manager`] !== "true" || !n.spec.podCIDR) {
        continue;
      }
      let data: { VNI?: number; VtepMAC?: string };
      try {
        data = JSON.parse(a[`${ANN}backend-data`] ?? "");
      } catch {
        continue;
      }
      out.push({
        key: n.metadata.name,
        subnet: n.spec.podCIDR,
        value: {
          PublicIP: a[`${ANN}public-ip`] ?? "",
          BackendType: a[`${ANN}backend-type`] ?? "",
          BackendData: data,
        },
        etcdLease: "0",
      });
    }
    return out;
  }

  #freeOctet(): number {
    if (this.#freeOctets.length === 0) {
      for (let o = 253; o >= 110; o--) this.#freeOctets.push(o);
    }
    return this.#freeOctets.shift()!;
  }

  /** A valid fake node (a probe); its pod CIDR and how to delete it. */
  async probe(
    ipLast = 243,
  ): Promise<{ subnet: string; remove(): Promise<void> }> {
    const o = this.#freeOctet();
    const subnet = `10.244.${o}.0/24`;
    const name = `probe-${o}`;
    await this.#api("POST", "/api/v1/nodes", {
      apiVersion: "v1",
      kind: "Node",
      metadata: {
        name,
        annotations: {
          [`${ANN}backend-type`]: "vxlan",
          [`${ANN}backend-data`]: JSON.stringify({
            VNI: 1,
            VtepMAC: `0a:fc:00:00:00:${ipLast.toString(16).padStart(2, "0")}`,
          }),
          [`${ANN}kube-subnet-manager`]: "true",
          [`${ANN}public-ip`]: `198.18.0.${ipLast}`,
        },
      },
      spec: { podCIDR: subnet, podCIDRs: [subnet] },
    });
    return { subnet, remove: () => this.kube.deleteNode(name) };
  }

  // ------------------------------------------------------ TLS and tokens

  /** A certificate for the switch address signed by `ca` (files `<name>.crt/key`). */
  async #serverCert(name: string, caCrt: string, caKey: string): Promise<{
    certFile: string;
    keyFile: string;
  }> {
    const d = this.c.dir;
    await Deno.writeTextFile(
      `${d}/${name}.ext`,
      `subjectAltName=IP:${SWITCH_IP}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n`,
    );
    await sh([
      "openssl",
      "req",
      "-new",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      `${d}/${name}.key`,
      "-subj",
      `/CN=${name}`,
      "-out",
      `${d}/${name}.csr`,
    ]);
    await sh([
      "openssl",
      "x509",
      "-req",
      "-in",
      `${d}/${name}.csr`,
      "-CA",
      caCrt,
      "-CAkey",
      caKey,
      "-CAcreateserial",
      "-days",
      "2",
      "-extfile",
      `${d}/${name}.ext`,
      "-out",
      `${d}/${name}.crt`,
    ]);
    return { certFile: `${d}/${name}.crt`, keyFile: `${d}/${name}.key` };
  }

  /** A new self-signed CA: `<dir>/<name>.crt` and `.key`. */
  async #newCa(name: string): Promise<{ crt: string; key: string }> {
    const d = this.c.dir;
    await sh([
      "openssl",
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      `${d}/${name}.key`,
      "-out",
      `${d}/${name}.crt`,
      "-days",
      "2",
      "-subj",
      `/CN=${name}`,
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    return { crt: `${d}/${name}.crt`, key: `${d}/${name}.key` };
  }

  async #startProxy(
    port: number,
    tls: { certFile: string; keyFile: string },
    clientOf?: string,
  ): Promise<FaultProxy> {
    const p = await FaultProxy.start({
      netns: this.c.hub.name,
      hostname: SWITCH_IP,
      port,
      upstream: `https://${SWITCH_IP}:${KUBE_PORT}`,
      tls: {
        ...tls,
        upstreamCaFile: `${this.pki}/ca.crt`,
        ...(clientOf && {
          upstreamCertFile: `${this.pki}/node-${clientOf}.crt`,
          upstreamKeyFile: `${this.pki}/node-${clientOf}.key`,
        }),
      },
      logPath: `${this.c.dir}/proxy-${port}.log`,
    });
    this.#proxies.push(p);
    return p;
  }

  /** A token of the agents' service account bound to a new Secret. */
  async #newToken(): Promise<{ token: string; secret: string }> {
    const secret = `${SA}-${++this.#secret}`;
    const s = await this.#api("POST", `/api/v1/namespaces/${NS}/secrets`, {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: secret },
    }) as { metadata: { uid: string } };
    const t = await this.#api(
      "POST",
      `/api/v1/namespaces/${NS}/serviceaccounts/${SA}/token`,
      {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenRequest",
        spec: {
          expirationSeconds: 3600,
          boundObjectRef: {
            apiVersion: "v1",
            kind: "Secret",
            name: secret,
            uid: s.metadata.uid,
          },
        },
      },
    ) as { status: { token: string } };
    return { token: t.status.token, secret };
  }

  /** HTTP status the apiserver gives `token` (curl in the switch namespace). */
  async #statusFor(token: string): Promise<string> {
    const r = await run([
      "ip",
      "netns",
      "exec",
      this.c.hub.name,
      "curl",
      "-s",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      "--cacert",
      `${this.pki}/ca.crt`,
      "-H",
      `Authorization: Bearer ${token}`,
      `https://${SWITCH_IP}:${KUBE_PORT}/api/v1/nodes?limit=1`,
    ]);
    return r.stdout;
  }

  #token: { token: string; secret: string } | undefined;

  /**
   * node2 authenticates as service account `kube-system/weft-agent`
   * (flannel's ClusterRole) with a token file, through its own proxy.
   */
  async #tokenSetup(n: ClusterNode): Promise<void> {
    await waitUntil(
      async () =>
        (await this.kube.api("GET", `/api/v1/namespaces/${NS}`)).status ===
          200,
      30_000,
      200,
    );
    await this.#api("POST", `/api/v1/namespaces/${NS}/serviceaccounts`, {
      apiVersion: "v1",
      kind: "ServiceAccount",
      metadata: { name: SA },
    });
    await this.#api(
      "POST",
      "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
      {
        apiVersion: "rbac.authorization.k8s.io/v1",
        kind: "ClusterRoleBinding",
        metadata: { name: `${SA}-flannel` },
        roleRef: {
          apiGroup: "rbac.authorization.k8s.io",
          kind: "ClusterRole",
          name: "flannel",
        },
        subjects: [{ kind: "ServiceAccount", name: SA, namespace: NS }],
      },
    );
    this.#token = await this.#newToken();
    await replaceFile(`${n.dir}/token`, this.#token.token);
    await Deno.copyFile(`${this.pki}/ca.crt`, `${n.dir}/ca.crt`);
    const cert = await this.#serverCert(
      "proxy2",
      `${this.pki}/ca.crt`,
      `${this.pki}/ca.key`,
    );
    this.#proxy2 = await this.#startProxy(PROXY2_PORT, cert);
    await Deno.writeTextFile(
      `${n.dir}/kubeconfig-token`,
      kubeconfigYaml({
        server: this.#proxy2.url,
        caFile: `${n.dir}/ca.crt`,
        tokenFile: `${n.dir}/token`,
      }),
    );
  }

  // ------------------------------------------------------------ apiserver

  /** The running kube-apiserver's pid and command line. */
  async #apiserverProcess(): Promise<{ pid: number; argv: string[] }> {
    const pids = await run(["ip", "netns", "pids", this.c.hub.name]);
    const seen: string[] = [];
    for (const pid of pids.stdout.split("\n").filter((p) => p !== "")) {
      // Deno reads /proc/<pid>/cmdline only with --allow-all: ask cat.
      const cmdline = (await run(["cat", `/proc/${pid}/cmdline`])).stdout;
      const argv = cmdline.split("\0").filter((a) => a !== "");
      if (argv[0]?.endsWith("kube-apiserver")) {
        return { pid: Number(pid), argv };
      }
      seen.push(`${pid} ${argv[0]}`);
    }
    throw new Error(
      `No kube-apiserver process in ${this.c.hub.name}: ${
        seen.join(", ") || pids.stderr || "no process"
      }`,
    );
  }

  /** Kills kube-apiserver (SIGKILL) and returns its command line. */
  async killApiserver(): Promise<string[]> {
    const { pid, argv } = await this.#apiserverProcess();
    Deno.kill(pid, "SIGKILL");
    await waitUntil(
      async () => (await run(["kill", "-0", String(pid)])).code !== 0,
      10_000,
      50,
    );
    return argv;
  }

  /** Starts kube-apiserver with `argv` again; ms until /readyz is 200. */
  async startApiserver(argv: string[]): Promise<number> {
    // As the harness does: the shell appends to the log, then execs.
    this.#apiserver = new Deno.Command("sh", {
      args: [
        "-c",
        'exec "$@" >>"$0" 2>&1',
        `${this.kube.dir}/kube-apiserver-fault.log`,
        "ip",
        "netns",
        "exec",
        this.c.hub.name,
        ...argv,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const t0 = performance.now();
    const ms = await waitUntil(
      async () => (await this.kube.api("GET", "/readyz")).status === 200,
      90_000,
      250,
    );
    if (ms === undefined) throw new Error("kube-apiserver did not come back");
    return performance.now() - t0;
  }

  /** Stops everything this run started. */
  override async close(): Promise<void> {
    for (const p of this.#proxies) await p.close().catch(() => {});
    if (this.#apiserver) {
      try {
        this.#apiserver.kill("SIGKILL");
      } catch { /* exited */ }
      await this.#apiserver.status;
    }
    await this.kube.close();
    await this.c.close();
  }

  // --------------------------------------------------------------- phases

  /** Bad Node objects, then node1 restarted with them present. */
  async nodeCorpus(): Promise<void> {
    const section = "Kubernetes: node corpus (annotations, pod CIDRs)";
    const live = this.nodes(1, 2, 3);
    const real = await this.leases();
    const own = real.find((l) => l.value.PublicIP === this.node(1).ip)!;
    const realSubnets = new Set(real.map((l) => l.subnet));
    const slots: NodeSlot[] = [];
    for (const [i] of NODE_CASES.entries()) {
      slots.push({
        name: `fault-${String(i).padStart(2, "0")}`,
        podCIDR: `10.244.${this.#freeOctet()}.0/24`,
        publicIP: `198.18.0.${100 + i}`,
        mac: `0a:fd:00:00:00:${(i + 1).toString(16).padStart(2, "0")}`,
        ownPodCIDR: own.subnet,
        peerPodCIDRs: real.filter((l) => l !== own).map((l) => l.subnet),
        peerMacs: real.filter((l) => l !== own).map((l) =>
          l.value.BackendData!.VtepMAC!
        ),
        peerIPs: real.filter((l) => l !== own).map((l) => l.value.PublicIP),
        ownIP: own.value.PublicIP,
        ownMac: own.value.BackendData!.VtepMAC!,
      });
    }
    // The control and every other case that must be programmed, with the
    // pod CIDR it claims.
    const expected: EtcdLease[] = [
      ...real,
      ...NODE_CASES.flatMap((k, i) => {
        const cs = slots[i]!;
        return k.expect === "programmed"
          ? [{
            key: cs.name,
            subnet: (k.claims ? k.claims(cs) : undefined) ?? cs.podCIDR,
            value: {
              PublicIP: cs.publicIP,
              BackendType: "vxlan",
              BackendData: { VNI: 1, VtepMAC: cs.mac },
            },
            etcdLease: "0",
          }]
          : [];
      }),
    ];
    const cases: CorpusCase[] = NODE_CASES.map((k, i) => {
      const slot = slots[i]!;
      const named = k.claims ? k.claims(slot) : slot.podCIDR;
      const trace = {
        claims: named !== undefined && realSubnets.has(named)
          ? undefined
          : named,
        mac: slot.mac,
        publicIP: slot.publicIP,
      };
      return {
        name: k.name,
        expect: k.expect,
        id: slot.name,
        write: async () => {
          const r = await this.kube.api("POST", "/api/v1/nodes", k.make(slot));
          if (r.status !== 201) {
            throw new Error(
              `the apiserver refused the object (${r.status}): ${
                JSON.stringify(r.body).slice(0, 200)
              }`,
            );
          }
        },
        remove: () => this.kube.api("DELETE", `/api/v1/nodes/${slot.name}`),
        entries: (s) => slotEntries(s.v4, trace),
      };
    });
    await corpusRun(this, {
      section,
      cases,
      expected,
      live,
      restart: (n) => this.startKube(n),
      noun: "node",
    });
  }

  /** A misbehaving HTTPS proxy between node3 and the apiserver. */
  async proxy(): Promise<void> {
    const section =
      "Kubernetes: misbehaving API (proxy between node3 and kube-apiserver)";
    const n3 = this.node(3);
    const cert = await this.#serverCert(
      "proxy3",
      `${this.pki}/ca.crt`,
      `${this.pki}/ca.key`,
    );
    const proxy = await this.#startProxy(PROXY3_PORT, cert, "node3");
    const kubeconfig = `${n3.dir}/kubeconfig-proxy`;
    await Deno.writeTextFile(
      kubeconfig,
      (await Deno.readTextFile(`${n3.dir}/kubeconfig`)).replace(
        `${SWITCH_IP}:${KUBE_PORT}`,
        `${SWITCH_IP}:${PROXY3_PORT}`,
      ),
    );
    try {
      await this.stop(n3);
      await this.startKube(n3, kubeconfig);
      await this.c.waitReady(n3, 30_000);
      await this.proxyFaults({
        section,
        proxy,
        node: n3,
        ping: ["node1-pod1", "node3-pod1"],
        faults: [...STANDARD_FAULTS, SILENT_PAST_IDLE],
        restart: async (args = []) => {
          await this.stop(n3);
          await this.startKube(n3, kubeconfig, args);
        },
        probe: () => this.probe(),
        retryAfterRequired: true,
      });
    } finally {
      await this.stop(n3);
      await this.startKube(n3);
      await this.c.waitReady(n3, 30_000);
      await proxy.close();
    }
  }

  /** kube-apiserver killed, then restarted; then node4 joins. */
  async outage(): Promise<void> {
    const section = "Kubernetes: kube-apiserver outage";
    const live = this.nodes(1, 2, 3);
    const chk = new Checks();
    const pings = [this.ping(), this.ping("node1-pod1", "node3-pod1")];
    await sleep(500);
    const argv = await this.killApiserver();
    const down = performance.now();
    const dead = new Set<string>();
    while (performance.now() - down < OUTAGE_S * 1000) {
      for (const n of live) if (!(await this.alive(n))) dead.add(n.name);
      await sleep(1000);
    }
    const startMs = await this.startApiserver(argv);
    const up = performance.now();
    const probe = await this.probe(244);
    const resumed = await this.routeOnAll(live, probe.subnet, true, 60_000);
    const resumedMs = resumed === undefined
      ? undefined
      : performance.now() - up;
    await probe.remove();
    const removed = await this.routeOnAll(live, probe.subnet, false, 15_000);
    chk.that(
      removed !== undefined,
      "a node deleted after recovery stayed programmed for 15 s",
    );
    const losses = await Promise.all(pings.map((p) => p.stop()));
    for (const n of live) if (!(await this.alive(n))) dead.add(n.name);
    chk.that(dead.size === 0, `agent exited: ${[...dead].join(", ")}`);
    chk.that(resumed !== undefined, "watches did not resume within 60 s");
    const lost = losses.reduce((a, l) => a + l.lost, 0);
    chk.that(lost === 0, `${lost} lost`);
    chk.note(`apiserver took ${fmtMs(startMs)} to start again`);
    this.row({
      section,
      fault: `kube-apiserver killed for ${OUTAGE_S} s, then restarted`,
      expected:
        "zero loss between existing pods; agents keep running; watches resume (a node added after recovery reaches every node)",
      lost: losses.map(lossText).join(" + "),
      recovery: `watch resumed ${fmtMs(resumedMs)} after the apiserver`,
      outcome: chk.outcome(),
    });

    const j = new Checks();
    const n4 = this.node(4);
    await this.#prepareNode(n4);
    const t0 = performance.now();
    await this.startKube(n4);
    const ready = await this.c.waitReady(n4, 30_000).catch(() => undefined);
    j.that(ready !== undefined, "node4 not ready");
    const all = this.nodes(1, 2, 3, 4);
    const conv = await this.converged(all, 15_000);
    const joinMs = conv === undefined ? undefined : performance.now() - t0;
    if (!j.that(conv !== undefined, "did not converge")) {
      j.note((await this.problems(all)).join(", "));
    }
    await this.c.addPod(n4, 1);
    const reach = await this.c.pingRun(
      "node1-pod1",
      this.c.pod("node4-pod1").ip,
      { count: 3, interval: 0.1, deadline: 5 },
    );
    j.that(
      reach.received > 0,
      `node1's pod cannot reach node4's: ${reach.text}`,
    );
    this.row({
      section,
      fault: "node4 joins right after the outage",
      expected:
        "its route appears on every node and theirs on it; pods reach it",
      lost: "—",
      recovery: `converged ${fmtMs(joinMs)} after start`,
      outcome: j.outcome(),
    });
  }

  /** node2's token rotated, the old one revoked, connections dropped. */
  async tokenRotation(): Promise<void> {
    const section = "Kubernetes: credentials";
    const n2 = this.node(2);
    const chk = new Checks();
    const p = this.ping();
    await sleep(300);
    const old = this.#token!;
    const next = await this.#newToken();
    await replaceFile(`${n2.dir}/token`, next.token);
    await this.#api("DELETE", `/api/v1/namespaces/${NS}/secrets/${old.secret}`);
    const revoked = await waitUntil(
      async () => (await this.#statusFor(old.token)) === "401",
      15_000,
      200,
    );
    chk.that(revoked !== undefined, "precondition: the old token still works");
    chk.that(
      (await this.#statusFor(next.token)) === "200",
      "precondition: the new token does not work",
    );
    this.#token = next;
    // Drop node2's connections so it must authenticate again.
    const from = Date.now();
    await this.#proxy2!.set({ kind: "pass" });
    const t0 = performance.now();
    const probe = await this.probe(245);
    const seen = await this.routeOnAll([n2], probe.subnet, true, 30_000);
    const ms = seen === undefined ? undefined : performance.now() - t0;
    await probe.remove();
    const gone = await this.routeOnAll([n2], probe.subnet, false, 30_000);
    const loss = await p.stop();
    const recs = (await this.#proxy2!.records()).filter((r) => r.at >= from);
    const unauthorized = recs.filter((r) => r.status === 401).length;
    chk.that(await this.alive(n2), "node2's agent exited");
    chk.that(
      seen !== undefined,
      "a node added after the rotation never reached node2",
    );
    chk.that(gone !== undefined, "its deletion never reached node2");
    chk.that(loss.lost === 0, `${loss.lost} lost`);
    chk.note(`${unauthorized} request(s) answered 401 after the rotation`);
    this.row({
      section,
      fault:
        "service-account token file rotated, old token revoked (bound Secret deleted), connections dropped",
      expected: "node2's agent keeps working with the new token",
      lost: lossText(loss),
      recovery: fmtMs(ms),
      outcome: chk.outcome(),
    });
  }

  /**
   * node2's CA file becomes a bundle with a new CA, and its API endpoint
   * starts serving a certificate of the new CA (a CA rotation).
   */
  async caRotation(): Promise<void> {
    const section = "Kubernetes: credentials";
    const n2 = this.node(2);
    const chk = new Checks();
    const p = this.ping();
    await sleep(300);
    const ca2 = await this.#newCa("ca2");
    await replaceFile(
      `${n2.dir}/ca.crt`,
      (await Deno.readTextFile(`${this.pki}/ca.crt`)) +
        (await Deno.readTextFile(ca2.crt)),
    );
    await sleep(500);
    const cert = await this.#serverCert("proxy2-ca2", ca2.crt, ca2.key);
    const old = this.#proxy2!;
    await old.close();
    this.#proxies = this.#proxies.filter((x) => x !== old);
    this.#proxy2 = await this.#startProxy(PROXY2_PORT, cert);
    // The new setup must itself be sound: the bundle verifies the endpoint.
    const tls = await run([
      "ip",
      "netns",
      "exec",
      this.c.hub.name,
      "curl",
      "-s",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      "--cacert",
      `${n2.dir}/ca.crt`,
      `https://${SWITCH_IP}:${PROXY2_PORT}/readyz`,
    ]);
    chk.that(
      tls.stdout !== "000" && tls.stdout !== "",
      `precondition: curl with the new CA file cannot reach the endpoint (${tls.stderr})`,
    );
    const offset = await this.logSize(n2);
    const t0 = performance.now();
    const probe = await this.probe(246);
    const seen = await this.routeOnAll([n2], probe.subnet, true, 30_000);
    const ms = seen === undefined ? undefined : performance.now() - t0;
    await probe.remove();
    const loss = await p.stop();
    const log = await this.logSince(n2, offset);
    chk.that(await this.alive(n2), "node2's agent exited");
    if (
      !chk.that(
        seen !== undefined,
        "node2 never reached the API again with the new CA",
      )
    ) {
      const tls = log.split("\n").find((l) =>
        /certificate|UnknownIssuer|tls/i.test(l)
      );
      if (tls) chk.note(tls.slice(0, 200));
    }
    chk.that(loss.lost === 0, `${loss.lost} lost`);
    // Whatever happened, node2 starts again with the new CA file, so the
    // phases after this one have a working node2.
    await this.stop(n2);
    await this.startKube(n2);
    const restarted = await this.c.waitReady(n2, 30_000).catch(() => undefined);
    chk.note(
      restarted === undefined
        ? "node2 not ready even after a restart"
        : "a restarted agent reads the new CA file",
    );
    this.row({
      section,
      fault:
        "CA file replaced by a bundle with a new CA; the API endpoint then serves a certificate of the new CA",
      expected: "node2's agent keeps working (re-reads its CA file)",
      lost: lossText(loss),
      recovery: fmtMs(ms),
      outcome: chk.outcome(),
    });
  }
}
