/**
 * chart/weft with the real helm: `helm lint`, and `helm template` compared
 * object by object with deploy/weft.yaml (defaults) and with flannel
 * v0.28.9's own chart given the same values file (each value must mean the
 * same in both), what weft makes of what the chart renders (flags and
 * net-conf.json through weft's own parsers), weft's own keys, and wrong
 * values refused with the value named. helm only renders here; the cluster
 * tier (tests/k8s/_helm.ts) installs the charts.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { parseFlags } from "../../agent/flags.ts";
import { parseNetConfig } from "../../subnet/config.ts";
import { gatedTest } from "../_gate.ts";
import {
  FLANNEL_CHART,
  HELM,
  helm,
  helmOk,
  WEFT_CHART,
} from "../servers/helm.ts";

// deno-lint-ignore no-explicit-any
type Obj = any;

const NAMESPACE = "kube-flannel";
const MANIFEST = new URL("../../deploy/weft.yaml", import.meta.url);

function parseDocs(text: string): Obj[] {
  return parseAllDocuments(text).map((d) => {
    if (d.errors.length) throw d.errors[0];
    return d.toJS();
  }).filter((o) => o);
}

function byKind(objs: Obj[]): Map<string, Obj> {
  return new Map(objs.map((o) => [`${o.kind}/${o.metadata.name}`, o]));
}

/** Renders `chart` (release "r" in kube-flannel) with values files and --set. */
async function template(
  home: string,
  chart: string,
  values: { files?: string[]; set?: string[] } = {},
): Promise<Obj[]> {
  return parseDocs(
    await helmOk({ home }, [
      "template",
      "r",
      chart,
      `--namespace=${NAMESPACE}`,
      ...(values.files ?? []).map((f) => `--values=${f}`),
      ...(values.set ?? []).map((s) => `--set=${s}`),
    ]),
  );
}

/**
 * What a values file means once rendered, in terms both charts share: the
 * images of the agent and of the CNI plugin install, the agent's flags
 * (whatever runs them), the network and CNI configuration, where the CNI
 * files go, and the pod's scheduling, resources and probes.
 */
function meaning(objs: Obj[]): Obj {
  const ds = objs.find((o) => o.kind === "DaemonSet");
  const cm = objs.find((o) => o.kind === "ConfigMap");
  const pod = ds.spec.template.spec;
  const [agent] = pod.containers;
  const init = (name: string) =>
    pod.initContainers.find((c: Obj) => c.name === name);
  const hostPath = (name: string) =>
    pod.volumes.find((v: Obj) => v.name === name).hostPath.path;
  // flannel's chart puts flanneld's flags after the command; weft's in args.
  const flags = [...agent.command, ...(agent.args ?? [])].filter((a) =>
    a.startsWith("-")
  );
  const probe = (p: Obj) => p && { ...p, httpGet: p.httpGet.path };
  return {
    agentImage: agent.image,
    pluginImage: init("install-cni-plugin").image,
    installsConf: init("install-cni") !== undefined,
    confImage: init("install-cni")?.image,
    flags,
    cniConf: JSON.parse(cm.data["cni-conf.json"]),
    netConf: JSON.parse(cm.data["net-conf.json"]),
    cniBinDir: hostPath("cni-plugin"),
    cniConfDir: hostPath("cni"),
    resources: agent.resources,
    tolerations: pod.tolerations,
    nodeSelector: pod.nodeSelector,
    imagePullSecrets: pod.imagePullSecrets,
    healthPort: agent.ports?.[0]?.containerPort,
    liveness: probe(agent.livenessProbe),
    readiness: probe(agent.readinessProbe),
  };
}

/** weft's probe timings where a values file leaves them unset. */
const PROBE_DEFAULTS = {
  liveness: { timeoutSeconds: 5, failureThreshold: 6 },
  readiness: { timeoutSeconds: 5, failureThreshold: 3 },
};

/**
 * `weft` means what `flannel` means. A probe timing the values leave unset
 * is weft's default where flannel's chart leaves the Kubernetes default
 * (helm merges a values file over the chart's defaults, key by key).
 */
function assertSameMeaning(weft: Obj, flannel: Obj): void {
  const { liveness, readiness, ...rest } = weft;
  const { liveness: l, readiness: r, ...flannelRest } = flannel;
  assertEquals(rest, flannelRest);
  for (
    const [name, got, want] of [
      ["liveness", liveness, l],
      ["readiness", readiness, r],
    ] as const
  ) {
    const defaults: Obj = PROBE_DEFAULTS[name];
    const expected = { ...want };
    for (const [k, v] of Object.entries(defaults)) {
      if (!(k in want)) expected[k] = v;
    }
    assertEquals(got, expected, name);
  }
}

/** A values file using every key the two charts share, none at its default. */
const EVERY_KEY = `
global:
  imagePullSecrets: [{name: pull-secret}]
podCidr: "10.50.0.0/16"
podCidrv6: "fd00:50::/56"
flannel:
  image: {repository: registry.example/weft, tag: v9}
  flannel_cni:
    image: {repository: registry.example/flannel-cni-plugin, tag: v1.9.1-flannel3}
  cniBinDir: /usr/libexec/cni
  cniConfDir: /etc/cni/conf.d
  skipCNIConfigInstallation: true
  enableNFTables: true
  args: ["--ip-masq", "--kube-subnet-mgr", "--iface=eth1"]
  backend: vxlan
  backendPort: 4789
  mtu: 9000
  vni: 7
  GBP: true
  directRouting: true
  cniConf: |
    {"name": "cbr0", "cniVersion": "1.0.0", "plugins": [{"type": "flannel", "delegate": {"hairpinMode": false}}]}
  resources: {requests: {cpu: 50m, memory: 40Mi}, limits: {memory: 200Mi}}
  healthz:
    port: 9099
    livenessProbe: {initialDelaySeconds: 3, periodSeconds: 7}
    readinessProbe: {initialDelaySeconds: 2, periodSeconds: 4}
  tolerations: [{key: dedicated, operator: Equal, value: net, effect: NoSchedule}]
  nodeSelector: {node-role.example/net: "yes"}
`;

await gatedTest({
  name: "chart/weft: lint, defaults, flannel's values, weft's keys, bad values",
  needs: [HELM],
  fn: async (t) => {
    const home = await Deno.makeTempDir({ prefix: "weft-helm-" });
    try {
      await t.step("helm lint --strict passes", async () => {
        const out = await helmOk({ home }, [
          "lint",
          "--strict",
          `--namespace=${NAMESPACE}`,
          WEFT_CHART,
        ]);
        assert(/1 chart\(s\) linted, 0 chart\(s\) failed/.test(out), out);
      });

      await t.step(
        "the defaults render deploy/weft.yaml, object for object",
        async () => {
          const chart = byKind(await template(home, WEFT_CHART));
          const stock = byKind(parseDocs(await Deno.readTextFile(MANIFEST)));
          // Deliberately not rendered: the Namespace. A chart installs into
          // its release namespace, which the operator creates (with
          // pod-security.kubernetes.io/enforce=privileged) or helm does
          // with --create-namespace, as with flannel's chart.
          stock.delete("Namespace/kube-flannel");
          assertEquals([...chart.keys()].sort(), [...stock.keys()].sort());
          for (const [key, want] of stock) {
            const got = structuredClone(chart.get(key));
            if (key === "ConfigMap/kube-flannel-cfg") {
              // net-conf.json is JSON built from the values: the same
              // document, its keys in another order.
              assertEquals(
                JSON.parse(got.data["net-conf.json"]),
                JSON.parse(want.data["net-conf.json"]),
              );
              got.data["net-conf.json"] = want.data["net-conf.json"];
            }
            assertEquals(got, want, key);
          }
        },
      );

      await t.step(
        "flannel's own values file means the same in weft's chart as in flannel's",
        async () => {
          const values = `${FLANNEL_CHART}/values.yaml`;
          const flannel = meaning(
            await template(home, FLANNEL_CHART, { files: [values] }),
          );
          const weft = meaning(
            await template(home, WEFT_CHART, { files: [values] }),
          );
          assertSameMeaning(weft, flannel);
          assertEquals(weft.agentImage, "ghcr.io/flannel-io/flannel:v0.28.9");
          assertEquals(weft.flags, [
            "--ip-masq",
            "--kube-subnet-mgr",
            "--healthz-port=8081",
          ]);
        },
      );

      await t.step(
        "a values file setting every shared key means the same in both charts, and weft accepts the result",
        async () => {
          const file = `${home}/every-key.yaml`;
          await Deno.writeTextFile(file, EVERY_KEY);
          const flannel = meaning(
            await template(home, FLANNEL_CHART, { files: [file] }),
          );
          const rendered = await template(home, WEFT_CHART, { files: [file] });
          const weft = meaning(rendered);
          assertSameMeaning(weft, flannel);
          assertEquals(weft.installsConf, false);
          assertEquals(weft.cniBinDir, "/usr/libexec/cni");

          const flags = parseFlags(weft.flags, {});
          assert(flags.ok, flags.ok ? "" : flags.reason);
          assertEquals(
            [flags.value.iface, flags.value.healthzPort],
            [["eth1"], 9099],
          );
          const net = parseNetConfig(JSON.stringify(weft.netConf));
          assert(net.ok, net.ok ? "" : net.reason);
          assertEquals(net.value.backend.type, "vxlan");
          assertEquals(weft.netConf, {
            Network: "10.50.0.0/16",
            IPv6Network: "fd00:50::/56",
            EnableIPv6: true,
            EnableNFTables: true,
            Backend: {
              Type: "vxlan",
              Port: 4789,
              VNI: 7,
              GBP: true,
              DirectRouting: true,
              MTU: 9000,
            },
          });
        },
      );

      await t.step(
        "flannel's wireguard values render the wireguard backend's keys",
        async () => {
          const objs = await template(home, WEFT_CHART, {
            set: [
              "flannel.backend=wireguard",
              "flannel.backendPort=51830",
              "flannel.backendPortv6=51831",
              "flannel.psk=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
              "flannel.tunnelMode=auto",
              "flannel.keepaliveInterval=25",
              "flannel.mtu=1400",
            ],
          });
          const cm = objs.find((o) => o.kind === "ConfigMap");
          const conf = JSON.parse(cm.data["net-conf.json"]);
          assertEquals(conf.Backend, {
            Type: "wireguard",
            ListenPort: 51830,
            ListenPortV6: 51831,
            PSK: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            Mode: "auto",
            PersistentKeepaliveInterval: 25,
            MTU: 1400,
          });
          const net = parseNetConfig(JSON.stringify(conf));
          assert(net.ok, net.ok ? "" : net.reason);
          assertEquals(net.value.backend.type, "wireguard");
        },
      );

      await t.step(
        "weft's own keys: reconcile period, scrape annotations, ServiceMonitor",
        async () => {
          const objs = await template(home, WEFT_CHART, {
            set: [
              "weft.reconcilePeriod=30",
              "weft.metrics.scrapeAnnotations=true",
              "weft.metrics.serviceMonitor.enabled=true",
              "weft.metrics.serviceMonitor.labels.release=prom",
            ],
          });
          const ds = objs.find((o) => o.kind === "DaemonSet");
          const [agent] = ds.spec.template.spec.containers;
          const flags = parseFlags(agent.args, {});
          assert(flags.ok, flags.ok ? "" : flags.reason);
          assertEquals(flags.value.reconcilePeriod, 30);
          assertEquals(ds.spec.template.metadata.annotations, {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "10262",
            "prometheus.io/path": "/metrics",
          });
          const svc = objs.find((o) => o.kind === "Service");
          assertEquals(svc.spec.selector, { app: "weft" });
          assertEquals(svc.spec.ports[0].targetPort, 10262);
          const sm = objs.find((o) => o.kind === "ServiceMonitor");
          assertEquals(sm.metadata.labels, {
            "k8s-app": "weft",
            release: "prom",
          });
          assertEquals(sm.spec.selector.matchLabels, svc.metadata.labels);
          assertEquals(sm.spec.endpoints, [
            { port: "healthz", path: "/metrics", interval: "30s" },
          ]);
        },
      );

      await t.step("a wrong value fails, naming the value", async () => {
        const cases: [string[], RegExp][] = [
          [["flannel.backend=udp"], /flannel\/backend/],
          [["flannel.tunnelMode=both"], /flannel\/tunnelMode/],
          [["podCidr=10.244.0.0/33"], /podCidr/],
          [["podCidrv6=fd00::/200"], /podCidrv6/],
          [["flannel.mtu=100"], /flannel\/mtu/],
          [["flannel.vni=16777216"], /flannel\/vni/],
          [["flannel.backendPort=70000"], /flannel\/backendPort/],
          [["flannel.healthz.port=-1"], /flannel\/healthz\/port/],
          [["flannel.GBP=yes"], /flannel\/GBP/],
          [["flannel.args[0]=ip-masq"], /flannel\/args\/0/],
          [["flannel.cniBinDir=opt/cni/bin"], /flannel\/cniBinDir/],
          [["flannel.bakend=vxlan"], /bakend/],
          [["netpol.enabled=true"], /netpol\/enabled/],
          [["weft.reconcilePeriod=0"], /weft\/reconcilePeriod/],
          [["podCidr=", "podCidrv6="], /podCidr and podCidrv6 are both empty/],
          [
            [
              "flannel.healthz.port=0",
              "weft.metrics.serviceMonitor.enabled=true",
            ],
            /flannel\.healthz\.port is 0/,
          ],
        ];
        for (const [set, named] of cases) {
          const r = await helm({ home }, [
            "template",
            "r",
            WEFT_CHART,
            ...set.map((s) => `--set=${s}`),
          ]);
          assert(r.code !== 0, `${set.join(" ")} rendered:\n${r.stdout}`);
          assert(named.test(r.stderr), `${set.join(" ")}: ${r.stderr}`);
        }
      });
    } finally {
      await Deno.remove(home, { recursive: true });
    }
  },
});
