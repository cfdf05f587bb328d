import assert from "node:assert/strict";
import {
  annotationKeys,
  annotationPatch,
  backendDataJson,
  nodePublicIPOverride,
  nodeToLease,
  ownSubnets,
  slimNode,
} from "./node.ts";
import { parseNetConfig } from "../config.ts";
import { validateLease } from "../validate.ts";
import { unwrap } from "../../lib/result.ts";

const keys = unwrap(annotationKeys());
const v4 = { enableIPv4: true, enableIPv6: false };

/** A node as flanneld v0.28 leaves it (taken from a kubeadm cluster). */
function flannelNode(name = "node01") {
  return {
    kind: "Node",
    apiVersion: "v1",
    metadata: {
      name,
      resourceVersion: "1234",
      labels: { "kubernetes.io/hostname": name },
      annotations: {
        "flannel.alpha.coreos.com/backend-data":
          '{"VNI":1,"VtepMAC":"e6:7d:c5:e2:80:1a"}',
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": "172.80.0.2",
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
      },
      managedFields: [{
        manager: "kubelet",
        fieldsV1: { big: "x".repeat(500) },
      }],
    },
    spec: { podCIDR: "10.244.0.0/24", podCIDRs: ["10.244.0.0/24"] },
    status: {
      images: [{ names: ["registry.k8s.io/etcd:3.5.15-0"], sizeBytes: 1 }],
    },
  };
}

Deno.test("annotationKeys() uses flanneld's default prefix with a slash", () => {
  assert.equal(keys.publicIP, "flannel.alpha.coreos.com/public-ip");
  assert.equal(keys.backendData, "flannel.alpha.coreos.com/backend-data");
  assert.equal(keys.backendV6Data, "flannel.alpha.coreos.com/backend-v6-data");
  assert.equal(
    keys.subnetKubeManaged,
    "flannel.alpha.coreos.com/kube-subnet-manager",
  );
  assert.equal(
    keys.publicIPOverwrite,
    "flannel.alpha.coreos.com/public-ip-overwrite",
  );
  assert.equal(
    keys.nodePublicIPv6,
    "flannel.alpha.coreos.com/node-public-ipv6",
  );
});

Deno.test("annotationKeys() appends '-' to a prefix with a name part", () => {
  assert.equal(
    unwrap(annotationKeys("example.com/weft")).publicIP,
    "example.com/weft-public-ip",
  );
  assert.equal(
    unwrap(annotationKeys("example.com/weft-")).backendType,
    "example.com/weft-backend-type",
  );
  assert.equal(
    unwrap(annotationKeys("example.com/")).backendType,
    "example.com/backend-type",
  );
});

Deno.test("annotationKeys() refuses two slashes and non-FQDN prefixes", () => {
  const two = annotationKeys("a.com/b/c");
  assert.equal(two.ok, false);
  assert.match(!two.ok ? two.reason : "", /at most one slash/);
  assert.equal(annotationKeys("nodots").ok, false);
});

Deno.test("slimNode() keeps the name, pod CIDRs and flannel annotations only", () => {
  const slim = unwrap(slimNode(flannelNode(), keys));
  assert.deepEqual(slim, {
    name: "node01",
    podCIDRs: ["10.244.0.0/24"],
    annotations: {
      "flannel.alpha.coreos.com/backend-data":
        '{"VNI":1,"VtepMAC":"e6:7d:c5:e2:80:1a"}',
      "flannel.alpha.coreos.com/backend-type": "vxlan",
      "flannel.alpha.coreos.com/kube-subnet-manager": "true",
      "flannel.alpha.coreos.com/public-ip": "172.80.0.2",
    },
  });
  assert.ok(JSON.stringify(slim).length < 400);
});

Deno.test("slimNode() keeps when the lease was last written, from the managedFields that own it", () => {
  const n = flannelNode();
  const entry = (manager: string, time: string, fields: unknown) => ({
    manager,
    operation: "Update",
    time,
    fieldsType: "FieldsV1",
    fieldsV1: fields,
  });
  const annotation = (k: string) => ({
    "f:metadata": { "f:annotations": { [`f:${k}`]: {} } },
  });
  n.metadata.managedFields = [
    // kubelet's own annotations and a later status write: not the lease.
    entry(
      "kubelet",
      "2026-12-06T10:00:09Z",
      annotation("node.alpha.kubernetes.io/ttl"),
    ),
    entry("kube-controller-manager", "2026-12-06T10:00:01Z", {
      "f:spec": { "f:podCIDR": {}, "f:podCIDRs": { ".": {} } },
    }),
    entry("flanneld", "2026-12-06T10:00:03Z", annotation(keys.backendType)),
    entry(
      "kubectl-patch",
      "2026-12-06T10:00:05Z",
      annotation(keys.backendData),
    ),
  ] as never;
  assert.equal(
    unwrap(slimNode(n, keys)).claimedAt,
    Date.parse("2026-12-06T10:00:05Z"),
  );
  const lease = unwrap(nodeToLease(unwrap(slimNode(n, keys)), keys, v4));
  assert.equal(lease.claimedAt, Date.parse("2026-12-06T10:00:05Z"));
  // Without an owning entry (managedFields stripped) the time is unknown.
  n.metadata.managedFields = [
    entry(
      "kubelet",
      "2026-12-06T10:00:09Z",
      annotation("node.alpha.kubernetes.io/ttl"),
    ),
  ] as never;
  assert.equal(unwrap(slimNode(n, keys)).claimedAt, undefined);
  assert.equal(
    unwrap(slimNode({ ...n, metadata: { name: "x" } }, keys)).claimedAt,
    undefined,
  );
});

Deno.test("slimNode() falls back to spec.podCIDR and rejects nameless objects", () => {
  const n = flannelNode();
  const spec = { podCIDR: "10.244.3.0/24" };
  assert.deepEqual(unwrap(slimNode({ ...n, spec }, keys)).podCIDRs, [
    "10.244.3.0/24",
  ]);
  assert.equal(slimNode({ metadata: {} }, keys).ok, false);
  assert.equal(slimNode("x", keys).ok, false);
});

Deno.test("nodeToLease() reads flanneld's annotations into a lease", () => {
  const lease = unwrap(
    nodeToLease(unwrap(slimNode(flannelNode(), keys)), keys, v4),
  );
  assert.deepEqual(lease, {
    key: "node01",
    subnet: "10.244.0.0/24",
    attrs: {
      backendType: "vxlan",
      publicIP: "172.80.0.2",
      backendData: { VNI: 1, VtepMAC: "e6:7d:c5:e2:80:1a" },
    },
  });
});

Deno.test("nodeToLease() reads a dual-stack node", () => {
  const lease = unwrap(nodeToLease(
    {
      name: "ds",
      podCIDRs: ["10.244.5.0/24", "fd00:10:244:5::/64"],
      annotations: {
        [keys.subnetKubeManaged]: "true",
        [keys.backendType]: "vxlan",
        [keys.publicIP]: "192.0.2.5",
        [keys.publicIPv6]: "2001:db8::5",
        [keys.backendData]: '{"VNI":1,"VtepMAC":"02:00:00:00:00:05"}',
        [keys.backendV6Data]: '{"VNI":1,"VtepMAC":"02:00:00:00:00:06"}',
      },
    },
    keys,
    { enableIPv4: true, enableIPv6: true },
  ));
  assert.equal(lease.subnet, "10.244.5.0/24");
  assert.equal(lease.ipv6Subnet, "fd00:10:244:5::/64");
  assert.equal(lease.attrs.publicIPv6, "2001:db8::5");
  assert.deepEqual(lease.attrs.backendV6Data, {
    VNI: 1,
    VtepMAC: "02:00:00:00:00:06",
  });
});

Deno.test("nodeToLease() gives a reason for unmanaged and broken nodes", () => {
  const base = unwrap(slimNode(flannelNode(), keys));
  const reason = (
    annotations: Record<string, string>,
    podCIDRs = base.podCIDRs,
  ) => {
    const r = nodeToLease({ ...base, podCIDRs, annotations }, keys, v4);
    assert.equal(r.ok, false);
    return !r.ok ? r.reason : "";
  };
  const { [keys.subnetKubeManaged]: _m, ...unmanaged } = base.annotations;
  assert.match(
    reason(unmanaged),
    /not annotated flannel\.alpha\.coreos\.com\/kube-subnet-manager=true/,
  );
  assert.match(
    reason({ ...base.annotations, [keys.backendData]: "{not json" }),
    /Invalid flannel\.alpha\.coreos\.com\/backend-data "\{not json": not JSON/,
  );
  const { [keys.publicIP]: _p, ...noIp } = base.annotations;
  assert.match(reason(noIp), /Missing flannel\.alpha\.coreos\.com\/public-ip/);
  assert.match(reason(base.annotations, []), /No IPv4 podCIDR/);
  assert.match(
    reason(base.annotations, ["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"]),
    /pod cidrs should be IPv4\/IPv6 only or dualstack/,
  );
});

Deno.test("nodeToLease() keeps a dual-stack node without backend-v6-data", () => {
  // A host-gw node as written by hand or by an older agent: no backend
  // data at all. flanneld routes both families; so must weft.
  const config = unwrap(parseNetConfig(
    '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}',
  ));
  const node = (type: string) => ({
    name: "hg",
    podCIDRs: ["10.244.5.0/24", "fc00:0:0:5::/64"],
    annotations: {
      [keys.subnetKubeManaged]: "true",
      [keys.backendType]: type,
      [keys.publicIP]: "192.0.2.5",
      [keys.publicIPv6]: "2001:db8::5",
    },
  });
  const hostGw = unwrap(nodeToLease(node("host-gw"), keys, config));
  assert.deepEqual(unwrap(validateLease(hostGw, config)), {
    key: "hg",
    subnet: "10.244.5.0/24",
    ipv6Subnet: "fc00:0:0:5::/64",
    attrs: {
      backendType: "host-gw",
      publicIP: "192.0.2.5",
      publicIPv6: "2001:db8::5",
    },
  });
  // vxlan cannot program a peer without its VTEP MAC: the reason names
  // the annotation (flanneld drops the whole event too).
  const vx = node("vxlan");
  const vxlan = unwrap(nodeToLease(
    {
      ...vx,
      annotations: {
        ...vx.annotations,
        [keys.backendData]: '{"VNI":1,"VtepMAC":"02:00:00:00:00:05"}',
      },
    },
    keys,
    config,
  ));
  const r = validateLease(vxlan, config);
  assert.equal(r.ok, false);
  assert.match(!r.ok ? r.reason : "", /Invalid backend-v6-data/);
});

Deno.test("backendDataJson() matches Go's marshaling of vxlan data", () => {
  assert.equal(
    backendDataJson("vxlan", { VtepMAC: "3a:bb:55:60:be:4e", VNI: 1 }),
    '{"VNI":1,"VtepMAC":"3a:bb:55:60:be:4e"}',
  );
  assert.equal(backendDataJson("host-gw", undefined), "null");
});

Deno.test("annotationPatch() writes flanneld's annotations on a bare node", () => {
  const patch = annotationPatch({}, {
    backendType: "vxlan",
    publicIP: "172.80.0.4",
    backendData: { VNI: 1, VtepMAC: "3a:bb:55:60:be:4e" },
  }, keys);
  assert.deepEqual(patch, {
    "flannel.alpha.coreos.com/backend-type": "vxlan",
    "flannel.alpha.coreos.com/backend-data":
      '{"VNI":1,"VtepMAC":"3a:bb:55:60:be:4e"}',
    "flannel.alpha.coreos.com/public-ip": "172.80.0.4",
    "flannel.alpha.coreos.com/kube-subnet-manager": "true",
  });
});

Deno.test("annotationPatch() is empty when the node already matches", () => {
  const attrs = {
    backendType: "vxlan",
    publicIP: "172.80.0.2",
    backendData: { VNI: 1, VtepMAC: "e6:7d:c5:e2:80:1a" },
  };
  const current = flannelNode().metadata.annotations;
  assert.deepEqual(annotationPatch(current, attrs, keys), {});
  assert.deepEqual(
    annotationPatch(current, { ...attrs, publicIP: "172.80.0.9" }, keys),
    { "flannel.alpha.coreos.com/public-ip": "172.80.0.9" },
  );
});

Deno.test("annotationPatch() publishes public-ip-overwrite instead of our IP", () => {
  const current = {
    ...flannelNode().metadata.annotations,
    [keys.publicIPOverwrite]: "203.0.113.7",
  };
  const attrs = {
    backendType: "vxlan",
    publicIP: "172.80.0.2",
    backendData: { VNI: 1, VtepMAC: "e6:7d:c5:e2:80:1a" },
  };
  assert.deepEqual(annotationPatch(current, attrs, keys), {
    "flannel.alpha.coreos.com/public-ip": "203.0.113.7",
  });
  const done = { ...current, [keys.publicIP]: "203.0.113.7" };
  assert.deepEqual(annotationPatch(done, attrs, keys), {});
});

Deno.test("annotationPatch() writes IPv6 data only when the backend has some", () => {
  const patch = annotationPatch({}, {
    backendType: "vxlan",
    publicIPv6: "2001:db8::4",
    backendV6Data: { VNI: 1, VtepMAC: "3a:bb:55:60:be:4f" },
  }, keys);
  assert.deepEqual(
    Object.keys(patch).sort(),
    [
      keys.backendType,
      keys.backendV6Data,
      keys.subnetKubeManaged,
      keys.publicIPv6,
    ].sort(),
  );
  assert.equal(patch[keys.publicIPv6], "2001:db8::4");
  // host-gw: backend-data "null" always, as flanneld.
  const hg = annotationPatch({}, {
    backendType: "host-gw",
    publicIP: "192.0.2.1",
  }, keys);
  assert.equal(hg[keys.backendData], "null");
  assert.equal(hg[keys.backendV6Data], undefined);
});

Deno.test("ownSubnets() explains an unassigned or out-of-network pod CIDR", () => {
  const config = unwrap(parseNetConfig('{"Network":"10.244.0.0/16"}'));
  const none = ownSubnets("controlplane", [], config);
  assert.equal(
    !none.ok && none.reason,
    'node "controlplane" pod cidr not assigned',
  );
  const out = ownSubnets("controlplane", ["10.10.0.0/24"], config);
  assert.equal(
    !out.ok && out.reason,
    'subnet "10.244.0.0/16" specified in the flannel net config doesn\'t contain "10.10.0.0/24" PodCIDR of the "controlplane" node',
  );
  assert.deepEqual(unwrap(ownSubnets("n", ["10.244.7.0/24"], config)), {
    subnet: "10.244.7.0/24",
  });
  const ds = unwrap(parseNetConfig(
    '{"Network":"10.244.0.0/16","IPv6Network":"fd00::/48","EnableIPv6":true}',
  ));
  const noV6 = ownSubnets("n", ["10.244.7.0/24"], ds);
  assert.match(!noV6.ok ? noV6.reason : "", /has no IPv6 PodCIDR/);
});

Deno.test("nodePublicIPOverride() reads node-public-ip annotations", () => {
  assert.deepEqual(
    unwrap(nodePublicIPOverride("n", {
      [keys.nodePublicIP]: "198.51.100.4",
      [keys.nodePublicIPv6]: "2001:DB8:0::1",
    }, keys)),
    { ipv4: "198.51.100.4", ipv6: "2001:db8::1" },
  );
  assert.deepEqual(unwrap(nodePublicIPOverride("n", {}, keys)), {});
  const bad = nodePublicIPOverride(
    "n",
    { [keys.nodePublicIP]: "2001:db8::1" },
    keys,
  );
  assert.match(
    !bad.ok ? bad.reason : "",
    /node-public-ip="2001:db8::1" on node "n": not an IPv4 address/,
  );
});

Deno.test("annotationPatch() and nodeToLease() carry flanneld's empty extension data and alloc's empty type", () => {
  const p = "flannel.alpha.coreos.com/";
  const ext = annotationPatch({}, {
    backendType: "extension",
    publicIP: "172.80.0.4",
  }, keys);
  assert.equal(ext[`${p}backend-data`], "");
  const withData = annotationPatch({}, {
    backendType: "extension",
    publicIP: "172.80.0.4",
    backendData: "<key & x>",
  }, keys);
  assert.equal(
    withData[`${p}backend-data`],
    '"\\u003ckey \\u0026 x\\u003e"',
  );
  assert.deepEqual(
    annotationPatch({}, { backendType: "", publicIP: "172.80.0.4" }, keys),
    {
      [`${p}backend-type`]: "",
      [`${p}backend-data`]: "null",
      [`${p}public-ip`]: "172.80.0.4",
      [`${p}kube-subnet-manager`]: "true",
    },
  );
  const node = flannelNode();
  Object.assign(node.metadata.annotations, ext);
  assert.deepEqual(
    nodeToLease(unwrap(slimNode(node, keys)), keys, v4),
    {
      ok: true,
      value: {
        key: "node01",
        subnet: "10.244.0.0/24",
        attrs: { backendType: "extension", publicIP: "172.80.0.4" },
      },
    },
  );
  // Empty data stays an error for the backends that need it: the lease is
  // read, and refused by validation naming what is missing.
  node.metadata.annotations[`${p}backend-type`] = "vxlan";
  const vxlan = unwrap(nodeToLease(unwrap(slimNode(node, keys)), keys, v4));
  const refused = validateLease(
    vxlan,
    unwrap(parseNetConfig('{"Network":"10.244.0.0/16"}')),
  );
  assert.equal(refused.ok, false);
  assert.match(!refused.ok ? refused.reason : "", /backend-data/);
});
