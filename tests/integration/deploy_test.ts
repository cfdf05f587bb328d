/**
 * deploy/weft.yaml: the manifest's invariants (RBAC exactly as flanneld's,
 * the DaemonSet's host access, probes on the health port weft is told to
 * use, and a ConfigMap whose two files weft and its CNI plugin accept).
 * Needs --allow-read.
 *
 * Then every object is sent to a real kube-apiserver (tests/servers/kube.ts)
 * with `?dryRun=All` and strict field validation, as POST and as a
 * server-side apply PATCH. That part is ignored with a reason when the
 * servers are not built, except under CI=true, where it fails.
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
import { goMarshal, parseNetConf, renderDelegate } from "../../cni/delegate.ts";
import { parseSubnetEnv } from "../../subnet/subnet_env.ts";
import { KUBE_SERVERS, KubeServers } from "../servers/kube.ts";
import { gatedTest } from "../_gate.ts";

const MANIFEST = new URL("../../deploy/weft.yaml", import.meta.url);

// deno-lint-ignore no-explicit-any
type Obj = any;

async function manifest(): Promise<Obj[]> {
  const docs = parseAllDocuments(await Deno.readTextFile(MANIFEST));
  const out: Obj[] = [];
  for (const d of docs) {
    if (d.errors.length) throw d.errors[0];
    const o = d.toJS();
    if (o) out.push(o);
  }
  return out;
}

function find(objs: Obj[], kind: string): Obj {
  const o = objs.find((x) => x.kind === kind);
  assert(o, `manifest has a ${kind}`);
  return o;
}

Deno.test("deploy/weft.yaml holds the objects flannel's manifest holds, in apply order", async () => {
  const objs = await manifest();
  assertEquals(
    objs.map((o) =>
      `${o.apiVersion} ${o.kind} ${
        o.metadata.namespace ?? "-"
      }/${o.metadata.name}`
    ),
    [
      "v1 Namespace -/kube-flannel",
      "v1 ServiceAccount kube-flannel/weft",
      "rbac.authorization.k8s.io/v1 ClusterRole -/weft",
      "rbac.authorization.k8s.io/v1 ClusterRoleBinding -/weft",
      "v1 ConfigMap kube-flannel/kube-flannel-cfg",
      "apps/v1 DaemonSet kube-flannel/weft",
    ],
  );
  assertEquals(
    find(objs, "Namespace").metadata
      .labels["pod-security.kubernetes.io/enforce"],
    "privileged",
  );
});

Deno.test("deploy/weft.yaml grants exactly flanneld's RBAC", async () => {
  const objs = await manifest();
  assertEquals(find(objs, "ClusterRole").rules, [
    { apiGroups: [""], resources: ["pods"], verbs: ["get"] },
    { apiGroups: [""], resources: ["nodes"], verbs: ["get", "list", "watch"] },
    { apiGroups: [""], resources: ["nodes/status"], verbs: ["patch"] },
  ]);
  const binding = find(objs, "ClusterRoleBinding");
  assertEquals(binding.roleRef, {
    apiGroup: "rbac.authorization.k8s.io",
    kind: "ClusterRole",
    name: "weft",
  });
  assertEquals(binding.subjects, [
    { kind: "ServiceAccount", name: "weft", namespace: "kube-flannel" },
  ]);
});

Deno.test("deploy/weft.yaml runs weft with host access, flags it parses, and probes on its health port", async () => {
  const ds = find(await manifest(), "DaemonSet");
  const pod = ds.spec.template.spec;
  assertEquals(ds.spec.selector.matchLabels, { app: "weft" });
  assertEquals(ds.spec.template.metadata.labels.app, "weft");
  assertEquals(pod.hostNetwork, true);
  assertEquals(pod.priorityClassName, "system-node-critical");
  assertEquals(pod.serviceAccountName, "weft");
  assertEquals(pod.tolerations, [{ operator: "Exists" }]);

  const [weft] = pod.containers;
  assertEquals(weft.securityContext.capabilities.add, ["NET_ADMIN", "NET_RAW"]);
  const flags = parseFlags(weft.args, {});
  assert(flags.ok, flags.ok ? "" : flags.reason);
  assertEquals(
    [flags.value.ipMasq, flags.value.kubeSubnetMgr, flags.value.healthzPort],
    [true, true, 10262],
  );
  assertEquals(weft.livenessProbe.httpGet, { path: "/healthz", port: 10262 });
  assertEquals(weft.readinessProbe.httpGet, { path: "/readyz", port: 10262 });
  assertEquals(
    Object.fromEntries(
      weft.env.map((e: Obj) => [e.name, e.valueFrom.fieldRef.fieldPath]),
    ),
    {
      NODE_NAME: "spec.nodeName",
      POD_NAME: "metadata.name",
      POD_NAMESPACE: "metadata.namespace",
    },
  );

  const volumes = Object.fromEntries(
    pod.volumes.map((v: Obj) => [v.name, v.hostPath ?? v.configMap]),
  );
  assertEquals(volumes, {
    run: { path: "/run/flannel", type: "DirectoryOrCreate" },
    "cni-plugin": { path: "/opt/cni/bin", type: "DirectoryOrCreate" },
    cni: { path: "/etc/cni/net.d", type: "DirectoryOrCreate" },
    "flannel-cfg": { name: "kube-flannel-cfg" },
    "xtables-lock": { path: "/run/xtables.lock", type: "FileOrCreate" },
  });
  const mounts = Object.fromEntries(
    weft.volumeMounts.map((m: Obj) => [m.name, m.mountPath]),
  );
  assertEquals(mounts, {
    run: "/run/flannel",
    "flannel-cfg": "/etc/kube-flannel/",
    "xtables-lock": "/run/xtables.lock",
  });

  // The init containers put the plugin and the conflist where runtimes look.
  const scripts = pod.initContainers.map((c: Obj) => c.command.join(" "));
  assert(scripts[0].endsWith("/opt/cni/bin/flannel"), scripts[0]);
  assert(scripts[1].endsWith("/etc/cni/net.d/10-flannel.conflist"), scripts[1]);
});

Deno.test("deploy/weft.yaml's ConfigMap is accepted by weft and renders flanneld's delegate", async () => {
  const cm = find(await manifest(), "ConfigMap");
  const net = parseNetConfig(cm.data["net-conf.json"]);
  assert(net.ok, net.ok ? "" : net.reason);
  assertEquals(net.value.backend.type, "vxlan");

  const conflist = JSON.parse(cm.data["cni-conf.json"]);
  assertEquals(conflist.plugins.map((p: Obj) => p.type), [
    "flannel",
    "portmap",
  ]);
  // What libcni passes the flannel plugin: its entry plus name and version.
  const entry = parseNetConf(JSON.stringify({
    ...conflist.plugins[0],
    name: conflist.name,
    cniVersion: conflist.cniVersion,
  }));
  assert(entry.ok);
  const env = parseSubnetEnv(
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
  );
  assert(env.ok);
  const delegate = renderDelegate(entry.value, env.value);
  assert(delegate.ok);
  assertEquals(
    JSON.parse(goMarshal(delegate.value)),
    JSON.parse(
      '{"name":"cbr0","cniVersion":"0.3.1","type":"bridge","hairpinMode":true,"isDefaultGateway":true,"ipMasq":false,"mtu":1450,"isGateway":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}]}}',
    ),
  );
});

/** The collection an object of the manifest is created in. */
function collection(o: Obj): string {
  const ns = o.metadata.namespace;
  const plural: Record<string, string> = {
    Namespace: "namespaces",
    ServiceAccount: "serviceaccounts",
    ClusterRole: "clusterroles",
    ClusterRoleBinding: "clusterrolebindings",
    ConfigMap: "configmaps",
    DaemonSet: "daemonsets",
  };
  const base = o.apiVersion === "v1" ? "/api/v1" : `/apis/${o.apiVersion}`;
  return `${base}${ns ? `/namespaces/${ns}` : ""}/${plural[o.kind]}`;
}

const DRY = "dryRun=All&fieldManager=weft-deploy-test&fieldValidation=Strict";

await gatedTest({
  name:
    "deploy/weft.yaml is accepted whole by a real kube-apiserver (server-side dry run, strict fields)",
  needs: [KUBE_SERVERS],
  fn: async () => {
    const objs = await manifest();
    await using k = await KubeServers.start();
    // Namespaced objects are only admitted into a namespace that exists.
    const ns = find(objs, "Namespace");
    const created = await k.request("POST", `${collection(ns)}?${DRY}`, ns);
    assertEquals(created.status, 201, JSON.stringify(created.body));
    assertEquals(
      (await k.request("GET", `${collection(ns)}/kube-flannel`)).status,
      404,
      "a dry run persists nothing",
    );
    await k.must("POST", `${collection(ns)}?fieldManager=weft-deploy-test`, ns);

    for (const o of objs) {
      const what = `${o.kind} ${o.metadata.name}`;
      if (o.kind !== "Namespace") {
        const post = await k.request("POST", `${collection(o)}?${DRY}`, o);
        assertEquals(post.status, 201, `${what}: ${JSON.stringify(post.body)}`);
        const body = post.body as Obj;
        assertEquals([body.kind, body.metadata.name], [
          o.kind,
          o.metadata.name,
        ]);
      }
      // kubectl apply --server-side --dry-run=server does this.
      const apply = await k.request(
        "PATCH",
        `${collection(o)}/${o.metadata.name}?${DRY}&force=true`,
        o,
        { contentType: "application/apply-patch+yaml" },
      );
      assert(
        apply.status === 200 || apply.status === 201,
        `${what}: ${apply.status} ${JSON.stringify(apply.body)}`,
      );
      if (o.kind !== "Namespace") {
        const get = await k.request(
          "GET",
          `${collection(o)}/${o.metadata.name}`,
        );
        assertEquals(get.status, 404, `${what} was not persisted`);
      }
    }

    // The server really validates: a DaemonSet without selector, or with a
    // misspelled field, is refused.
    const ds = find(objs, "DaemonSet");
    const { selector: _, ...noSelector } = ds.spec;
    const bad = await k.request("POST", `${collection(ds)}?${DRY}`, {
      ...ds,
      spec: noSelector,
    });
    assertEquals(bad.status, 422, JSON.stringify(bad.body));
    const typo = await k.request("POST", `${collection(ds)}?${DRY}`, {
      ...ds,
      spec: { ...ds.spec, updateStrategyy: {} },
    });
    assert(
      typo.status === 400 || typo.status === 422,
      JSON.stringify(typo.body),
    );
  },
});
