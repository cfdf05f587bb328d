import assert from "node:assert/strict";
import { parseYamlSubset } from "./_yaml_subset.ts";
// npm:yaml's `parse`, without the environment access it needs permission for.
import { parseYaml } from "./_yaml.ts";

/** Deterministic base64 of a PEM block about the size of a real one. */
function pemData(label: string, seed: number, bytes = 900): string {
  let x = seed;
  const body = Uint8Array.from({ length: bytes }, () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x >> 16;
  });
  const b64 = btoa(String.fromCharCode(...body)).replace(/.{64}/g, "$&\n");
  return btoa(`-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`);
}
const CA = pemData("CERTIFICATE", 1);
const CERT = pemData("CERTIFICATE", 2, 800);
const KEY = pemData("RSA PRIVATE KEY", 3, 1190);

/** The shape kubeadm's admin.conf, k3s.yaml and kind's kubeconfig share. */
function generated(
  cluster: string,
  user: string,
  context: string,
  server: string,
): string {
  return `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: ${CA}
    server: ${server}
  name: ${cluster}
contexts:
- context:
    cluster: ${cluster}
    user: ${user}
  name: ${context}
current-context: ${context}
kind: Config
preferences: {}
users:
- name: ${user}
  user:
    client-certificate-data: ${CERT}
    client-key-data: ${KEY}
`;
}
const kubeadmAdmin = generated(
  "kubernetes",
  "kubernetes-admin",
  "kubernetes-admin@kubernetes",
  "https://192.168.56.10:6443",
);

const kubeadmKubelet = `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: ${CA}
    server: https://control-plane.example.internal:6443
  name: default-cluster
contexts:
- context:
    cluster: default-cluster
    namespace: default
    user: default-auth
  name: default-context
current-context: default-context
kind: Config
preferences: {}
users:
- name: default-auth
  user:
    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem
    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem
`;

const CORPUS: Record<string, string> = {
  "kubeadm admin.conf": kubeadmAdmin,
  "kubeadm kubelet.conf": kubeadmKubelet,
  "k3s.yaml": generated(
    "default",
    "default",
    "default",
    "https://127.0.0.1:6443",
  ),
  "kind": generated(
    "kind-kind",
    "kind-kind",
    "kind-kind",
    "https://127.0.0.1:39261",
  ),
  "CRLF line ends": kubeadmKubelet.replaceAll("\n", "\r\n"),
  "multi-cluster by hand": `# Written by hand; kubectl would sort the keys.
---
apiVersion: v1
kind: Config
current-context: "prod"   # the default
preferences: {}

clusters:
  - name: prod
    cluster:
      server: "https://[fd00::1]:6443"
      certificate-authority: /etc/kubernetes/pki/ca.crt
      tls-server-name: kubernetes.default.svc
      extensions:
        - name: client.authentication.k8s.io/exec
          extension:
            audience: 'weft''s API'
            note: "caf\\u00e9 \\"quoted\\" \\\\ path\\/x"
  - name: staging
    cluster:
      server: https://staging.example.com
      insecure-skip-tls-verify: true
      proxy-url: http://proxy.example.com:3128
      disable-compression: false
contexts:
  - name: prod
    context:
      cluster: prod
      user: weft
      namespace: kube-system
  - name: staging
    context:
      cluster: staging
      user: ci
      extensions: []
users:
  - name: weft
    user:
      token: eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJzdWIiOiJ3ZWZ0In0.c2ln-bmF0_dXJl
  # A service account token, rotated by the kubelet.
  - name: ci
    user:
      tokenFile: ../secrets/token
      as: ""
      as-groups: ~
`,
  "exec and auth-provider users": `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: ${CA}
    server: https://ABCDEF0123456789.gr7.us-west-2.eks.amazonaws.com
  name: arn:aws:eks:us-west-2:123456789012:cluster/demo
contexts:
- context:
    cluster: arn:aws:eks:us-west-2:123456789012:cluster/demo
    user: arn:aws:eks:us-west-2:123456789012:cluster/demo
  name: demo
current-context: demo
kind: Config
preferences: {}
users:
- name: arn:aws:eks:us-west-2:123456789012:cluster/demo
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      args:
      - --region
      - us-west-2
      - eks
      - get-token
      - --cluster-name
      - demo
      command: aws
      env:
      - name: AWS_PROFILE
        value: default
      - name: RETRIES
        value: "3"
      interactiveMode: IfAvailable
      provideClusterInfo: false
- name: gke
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: gke-gcloud-auth-plugin
      env: null
      installHint: Install gke-gcloud-auth-plugin for use with kubectl
- name: oidc
  user:
    auth-provider:
      config:
        client-id: kubernetes
        extra-scopes: groups,email
        id-token: eyJhbGciOiJSUzI1NiJ9.e30.c2ln
        idp-issuer-url: https://dex.example.com:32000
        refresh-token: ChlxY2F2
      name: oidc
`,
  "minikube extensions": `apiVersion: v1
clusters:
- cluster:
    certificate-authority: /home/me/.minikube/ca.crt
    extensions:
    - extension:
        last-update: Mon, 01 Jan 2024 12:00:00 UTC
        provider: minikube.sigs.k8s.io
        version: v1.32.0
      name: cluster_info
    server: https://192.168.49.2:8443
  name: minikube
contexts:
- context:
    cluster: minikube
    extensions:
    - extension:
        last-update: Mon, 01 Jan 2024 12:00:00 UTC
        provider: minikube.sigs.k8s.io
        version: v1.32.0
      name: context_info
    namespace: default
    user: minikube
  name: minikube
current-context: minikube
kind: Config
preferences: {}
users:
- name: minikube
  user:
    client-certificate: /home/me/.minikube/profiles/minikube/client.crt
    client-key: /home/me/.minikube/profiles/minikube/client.key
`,
};
for (const [name, text] of Object.entries(CORPUS)) {
  Deno.test(`parseYamlSubset() reads ${name} as npm:yaml does`, () => {
    const r = parseYamlSubset(text);
    assert.ok(r.ok, r.ok ? "" : r.reason);
    assert.deepEqual(r.value, parseYaml(text));
  });
}

Deno.test("parseYamlSubset() resolves plain scalars as npm:yaml does", () => {
  const scalars = [
    ...["", "~", "null", "Null", "NULL", "nULL", "true", "True", "TRUE"],
    ...["tRUE", "false", "FALSE", "yes", "on", "0", "-0", "+12", "012"],
    ...["0o17", "0x1F", "0X1F", "1_000", ".5", "1.", "-1.5e3", "1E+3", "1e"],
    ...[".inf", "-.Inf", "+.INF", ".nan", ".NaN", "12345678901234567890"],
    ...["v1.32.0", "1.2.3", "'0'", '"true"', "a b  c", "a#b", "a #b", "x:y"],
    ...["-x", "https://[fd00::1]:6443/", "-1", "'it''s'", '"\\u00e9\\t"'],
  ];
  for (const s of scalars) {
    const text = `a: ${s}\n`;
    const r = parseYamlSubset(text);
    assert.ok(r.ok, `${JSON.stringify(s)}: ${r.ok ? "" : r.reason}`);
    assert.deepEqual(r.value, parseYaml(text), JSON.stringify(s));
  }
});

Deno.test("parseYamlSubset() reads layouts YAML allows for nesting", () => {
  for (
    const text of [
      "a:\n- x\n- y\nb: 1\n",
      "- a:\n  - x\n  b: 2\n",
      "- - a\n  - b\n-\n  c: 1\n-\n- # empty\n",
      "a:\n  # comment\n    \n  b: 1\n#c\nc:\n- d\n",
      "  a: 1\n  b: 2\n",
      '"a b" : 1\n\'c\': "d: e" # x\n__proto__: 3\n',
      "",
      "# only a comment\n",
    ]
  ) {
    const r = parseYamlSubset(text);
    assert.ok(r.ok, `${JSON.stringify(text)}: ${r.ok ? "" : r.reason}`);
    assert.deepEqual(r.value, parseYaml(text), JSON.stringify(text));
  }
});

Deno.test("parseYamlSubset() refuses what is outside the subset", () => {
  const refused: [string, RegExp][] = [
    ["a: &x 1\nb: *x\n", /^An anchor or alias on line 1$/],
    ["a: 1\nb: *x\n", /^An anchor or alias on line 2$/],
    ["a: !!str 1\n", /^A tag on line 1$/],
    ["a: |\n  text\n", /^A block scalar on line 1$/],
    ["a: >-\n  text\n", /^A block scalar on line 1$/],
    ["a: {b: 1}\n", /^A non-empty flow collection on line 1$/],
    ["a: [x, y]\n", /^A non-empty flow collection on line 1$/],
    ["a: one\n  two\n", /^A line out of place on line 2$/],
    ["- one\n  two\n", /^A line out of place on line 2$/],
    // Valid YAML, but npm:yaml rejects it after a "#c" comment line.
    ["a:\n  one\n", /^A scalar on a line of its own on line 2$/],
    ['a: "one\n  two"\n', /^A multi-line or unterminated quoted scalar/],
    ["a: 'one\n  two'\n", /^A multi-line or unterminated quoted scalar/],
    ["a:\n\tb: 1\n", /^A tab on line 2$/],
    ["a: 1\nb: 2\na: 3\n", /^Duplicate key "a" on line 3$/],
    ["a: 1\n---\nb: 2\n", /^A directive, .* on line 2$/],
    ["%YAML 1.2\n---\na: 1\n", /^A directive, .* on line 1$/],
    ["? a\n: b\n", /^A complex key on line 1$/],
    ["a:\n    b: 1\n  c: 2\n", /^A line out of place on line 3$/],
    ["a: 1\n- b\n", /^A line out of place on line 2$/],
    ["a: 1\nb\n", /^A scalar where a key belongs on line 2$/],
    ["a: b: c\n", /^A nested mapping on one line on line 1$/],
    ['a: "\\x41"\n', /^The escape "\\x" on line 1$/],
    ["a: 'b' c\n", /^Text after a quoted scalar on line 1$/],
    ["1: a\n", /^A key "1" that is not a string on line 1$/],
    [": a\n", /^An empty key on line 1$/],
    ["\ufeffa: 1\n", /^Character "U\+FEFF" on line 1$/],
  ];
  for (const [text, reason] of refused) {
    const r = parseYamlSubset(text);
    assert.equal(r.ok, false, JSON.stringify(text));
    assert.match(r.ok ? "" : r.reason, reason, JSON.stringify(text));
  }
});
