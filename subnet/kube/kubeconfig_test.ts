import assert from "node:assert/strict";
import { parseKubeconfig } from "./kubeconfig.ts";
import { unwrap } from "../../lib/result.ts";

const PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const b64 = btoa(PEM);

async function reason(
  text: string,
  path = "/etc/weft/kubeconfig",
): Promise<string> {
  const r = await parseKubeconfig(text, path);
  assert.equal(r.ok, false, "expected a failure");
  return !r.ok ? r.reason : "";
}

const full = `
apiVersion: v1
kind: Config
current-context: weft@cluster
clusters:
- name: other
  cluster: {server: "https://192.0.2.99:6443"}
- name: cluster
  cluster:
    server: https://10.0.0.1:6443/
    certificate-authority-data: ${b64}
contexts:
- name: weft@cluster
  context: {cluster: cluster, user: weft}
users:
- name: weft
  user:
    client-certificate: certs/client.crt
    client-key-data: ${
  btoa("-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----\n")
}
`;

Deno.test("parseKubeconfig() takes the current context's server and credentials", async () => {
  const c = unwrap(await parseKubeconfig(full, "/etc/weft/kubeconfig"));
  assert.equal(c.server, "https://10.0.0.1:6443");
  assert.deepEqual(c.ca, { data: PEM });
  assert.deepEqual(c.clientCert, { file: "/etc/weft/certs/client.crt" });
  assert.ok(
    c.clientKey && "data" in c.clientKey &&
      c.clientKey.data.includes("PRIVATE KEY"),
  );
  assert.equal(c.insecureSkipTlsVerify, false);
  assert.equal(c.context, "weft@cluster");
});

Deno.test("parseKubeconfig() reads a kubeadm-style YAML kubeconfig without npm:yaml", async () => {
  const key = btoa(
    "-----BEGIN RSA PRIVATE KEY-----\nAA\n-----END RSA PRIVATE KEY-----\n",
  );
  const text = `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: ${b64}
    server: https://192.168.56.10:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
kind: Config
preferences: {}
users:
- name: kubernetes-admin
  user:
    client-certificate-data: ${b64}
    client-key-data: ${key}
`;
  // The fast path takes it; npm:yaml would only be loaded on a refusal.
  const noFullYaml = () => Promise.reject(new Error("npm:yaml was asked"));
  for (const t of [text, text.replaceAll("\n", "\r\n")]) {
    const c = unwrap(
      await parseKubeconfig(
        t,
        "/etc/kubernetes/admin.conf",
        undefined,
        noFullYaml,
      ),
    );
    assert.deepEqual(c, {
      server: "https://192.168.56.10:6443",
      ca: { data: PEM },
      clientCert: { data: PEM },
      clientKey: { data: atob(key) },
      insecureSkipTlsVerify: false,
      context: "kubernetes-admin@kubernetes",
      cluster: "kubernetes",
      user: "kubernetes-admin",
    });
  } // YAML outside the subset goes to the full parser.
  let asked = 0;
  const full = (t: string) => {
    asked++;
    return Promise.resolve(JSON.parse(JSON.stringify({ x: t.length })));
  };
  await parseKubeconfig(`%YAML 1.2\n---\n${text}`, "/k", undefined, full);
  assert.equal(asked, 1);
});

Deno.test("parseKubeconfig() lets --kube-api-url override the server", async () => {
  const c = unwrap(await parseKubeconfig(full, "/k", "https://[fd00::1]:6443"));
  assert.equal(c.server, "https://[fd00::1]:6443");
});

Deno.test("parseKubeconfig() reads token, tokenFile and certificate-authority paths", async () => {
  const text = `
current-context: c
clusters: [{name: k, cluster: {server: "https://k:6443", certificate-authority: /pki/ca.crt, insecure-skip-tls-verify: true}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
users: [{name: u, user: {tokenFile: tok}}]
`;
  const c = unwrap(await parseKubeconfig(text, "kube/config"));
  assert.deepEqual(c.ca, { file: "/pki/ca.crt" });
  assert.equal(c.tokenFile, "kube/tok");
  assert.equal(c.insecureSkipTlsVerify, true);
  const t = unwrap(
    await parseKubeconfig(
      text.replace("{tokenFile: tok}", "{token: abc}"),
      "/k",
    ),
  );
  assert.equal(t.token, "abc");
  assert.equal(t.tokenFile, undefined);
});

Deno.test("parseKubeconfig() errors name the file and the missing field", async () => {
  const p = "/etc/weft/kubeconfig";
  assert.equal(
    await reason("clusters: []"),
    `Cannot use kubeconfig "${p}": current-context is not set`,
  );
  assert.equal(
    await reason("current-context: x\ncontexts: []"),
    `Cannot use kubeconfig "${p}": current-context "x" is not in contexts`,
  );
  assert.equal(
    await reason(full.replace("server: https://10.0.0.1:6443/", "foo: bar")),
    `Cannot use kubeconfig "${p}": cluster "cluster" has no server`,
  );
  assert.equal(
    await reason(
      full.replace(
        "{cluster: cluster, user: weft}",
        "{cluster: gone, user: weft}",
      ),
    ),
    `Cannot use kubeconfig "${p}": cluster "gone" of context "weft@cluster" is not in clusters`,
  );
  assert.equal(
    await reason(
      full.replace(
        "{cluster: cluster, user: weft}",
        "{cluster: cluster, user: nobody}",
      ),
    ),
    `Cannot use kubeconfig "${p}": user "nobody" of context "weft@cluster" is not in users`,
  );
  assert.equal(
    await reason(
      full.replace(
        `certificate-authority-data: ${b64}`,
        "certificate-authority-data: '%%%'",
      ),
    ),
    `Cannot use kubeconfig "${p}": certificate-authority-data of cluster "cluster" is not base64-encoded PEM`,
  );
  assert.match(
    await reason(full.replace(/ {4}client-key-data: .*\n/, "")),
    /user "weft" has no client-key\(-data\) to go with its client-certificate/,
  );
  assert.match(
    await reason(
      full.replace("server: https://10.0.0.1:6443/", "server: ftp://x"),
    ),
    /server "ftp:\/\/x" of cluster "cluster" is not an http\(s\) URL/,
  );
  assert.match(
    await reason("a: [unclosed"),
    /^Cannot parse kubeconfig "\/etc\/weft\/kubeconfig": /,
  );
  assert.match(await reason("- just\n- a list"), /not a YAML mapping/);
});

Deno.test("parseKubeconfig() refuses exec plugins with a clear reason", async () => {
  const text = full.replace(
    "    client-certificate: certs/client.crt\n",
    "    exec: {command: aws}\n    client-certificate: certs/client.crt\n",
  );
  assert.match(
    await reason(text),
    /user "weft" uses exec, which weft does not support/,
  );
});

Deno.test("parseKubeconfig() reads a JSON kubeconfig as YAML would", async () => {
  const json = JSON.stringify({
    "current-context": "c",
    clusters: [{ name: "k", cluster: { server: "https://10.0.0.1:6443" } }],
    contexts: [{ name: "c", context: { cluster: "k", user: "u" } }],
    users: [{ name: "u", user: { token: "abc" } }],
  });
  const c = unwrap(await parseKubeconfig(json, "/k"));
  assert.equal(c.server, "https://10.0.0.1:6443");
  assert.equal(c.token, "abc");
  assert.match(
    await reason('{"current-context": '),
    /^Cannot parse kubeconfig "\/etc\/weft\/kubeconfig": /,
  );
});
