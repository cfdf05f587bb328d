/**
 * TLS trust of the Kubernetes client is exactly the configured CA. An API
 * server whose certificate comes from a CA the process trusts anyway (the
 * system store, `DENO_TLS_CA_STORE=system` + `SSL_CERT_FILE`, or
 * `DENO_CERT`) but the kubeconfig does not name must be refused, and must
 * never see the token. A plain `Deno.createHttpClient({ caCerts })` in the
 * same process accepts it (the control: its CA list adds to the roots).
 *
 * @module
 */
import assert from "node:assert/strict";
import { makeCa, SERVER_EXT, signedCert } from "../servers/pki.ts";
import { connect } from "../../subnet/kube/client.ts";
import { setLogSink } from "../../lib/log.ts";

setLogSink(() => {});

const CHILD = `
import { connect } from "${
  new URL("../../subnet/kube/client.ts", import.meta.url).href
}";
const [url, caA, kubeA, kubeB] = Deno.args;
const out = {};
try {
  const c = Deno.createHttpClient({ caCerts: [Deno.readTextFileSync(caA)] });
  const r = await fetch(url + "/control", { client: c });
  out.control = r.status;
  await r.body?.cancel();
} catch (e) { out.control = "refused: " + e.message; }
for (const [name, kc] of [["wrongCa", kubeA], ["rightCa", kubeB]]) {
  const client = await connect({ kubeconfigFile: kc, requestTimeoutMs: 5000 });
  try {
    const node = await client.getJson("/api/v1/nodes/n1");
    out[name] = "ok " + node.metadata.name;
  } catch (e) { out[name] = "refused: " + e.message; }
  client.close();
}
console.log(JSON.stringify(out));
`;

function kubeconfig(server: string, ca: string, token: string): string {
  return JSON.stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{
      name: "c",
      cluster: { server, "certificate-authority": ca },
    }],
    users: [{ name: "u", user: { token } }],
    contexts: [{ name: "x", context: { cluster: "c", user: "u" } }],
    "current-context": "x",
  });
}

Deno.test("Kube client trusts exactly the kubeconfig's CA, not the process's extra roots, and never sends the token to an impostor", async () => {
  const dir = await Deno.makeTempDir({ prefix: "weft-tls-" });
  const seen: { path: string; auth: string | null }[] = [];
  const ac = new AbortController();
  try {
    await Deno.mkdir(`${dir}/a`);
    await Deno.mkdir(`${dir}/b`);
    await makeCa(`${dir}/a`);
    await makeCa(`${dir}/b`);
    await signedCert(`${dir}/b`, `${dir}/b/srv`, "/CN=127.0.0.1", [
      ...SERVER_EXT,
      "subjectAltName=IP:127.0.0.1",
    ]);
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      cert: await Deno.readTextFile(`${dir}/b/srv.crt`),
      key: await Deno.readTextFile(`${dir}/b/srv.key`),
      signal: ac.signal,
      onListen: () => {},
    }, (req) => {
      seen.push({
        path: new URL(req.url).pathname,
        auth: req.headers.get("authorization"),
      });
      return Response.json({ kind: "Node", metadata: { name: "n1" } });
    });
    const url = `https://127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
    await Deno.writeTextFile(
      `${dir}/kube-a.json`,
      kubeconfig(url, `${dir}/a/ca.crt`, "secret-a"),
    );
    await Deno.writeTextFile(
      `${dir}/kube-b.json`,
      kubeconfig(url, `${dir}/b/ca.crt`, "secret-b"),
    );
    await Deno.writeTextFile(`${dir}/child.ts`, CHILD);
    for (
      const env of [
        // The system store holds CA b.
        { DENO_TLS_CA_STORE: "system", SSL_CERT_FILE: `${dir}/b/ca.crt` },
        // The process was told to trust CA b.
        { DENO_CERT: `${dir}/b/ca.crt` },
      ]
    ) {
      seen.length = 0;
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--no-prompt",
          "--allow-net",
          "--allow-read",
          "--allow-env",
          "--config",
          new URL("../../deno.json", import.meta.url).pathname,
          `${dir}/child.ts`,
          url,
          `${dir}/a/ca.crt`,
          `${dir}/kube-a.json`,
          `${dir}/kube-b.json`,
        ],
        env,
        cwd: new URL("../..", import.meta.url).pathname,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      assert.equal(
        out.code,
        0,
        `${text}\n${new TextDecoder().decode(out.stderr)}`,
      );
      const r = JSON.parse(text) as Record<string, string | number>;
      const label = JSON.stringify(env);
      assert.equal(r.control, 200, `control trusts CA b through ${label}`);
      assert.match(
        String(r.wrongCa),
        /^refused: Cannot reach Kubernetes API server .*TLS error/,
        label,
      );
      assert.equal(r.rightCa, "ok n1", label);
      assert.deepEqual(
        seen.filter((s) => s.path !== "/control"),
        [{ path: "/api/v1/nodes/n1", auth: "Bearer secret-b" }],
        `${label}: only the client trusting CA b reached the server`,
      );
    }
  } finally {
    ac.abort();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Kube client refuses to send a token over plain http unless --allow-token-over-http says so", async () => {
  const dir = await Deno.makeTempDir({ prefix: "weft-tok-" });
  try {
    await Deno.writeTextFile(`${dir}/token`, "sa-token");
    const env = (n: string) =>
      ({
        KUBERNETES_SERVICE_HOST: "10.96.0.1",
        KUBERNETES_SERVICE_PORT: "443",
      })[
        n
      ];
    const refused =
      /Refusing to send the bearer token to "http:\/\/127\.0\.0\.1:6443" over plain HTTP: use https, or pass --allow-token-over-http$/;
    await assert.rejects(
      connect({
        kubeApiUrl: "http://127.0.0.1:6443",
        serviceAccountDir: dir,
        env,
      }),
      refused,
    );
    const kc = `${dir}/kubeconfig.json`;
    await Deno.writeTextFile(
      kc,
      JSON.stringify({
        clusters: [{ name: "c", cluster: { server: "http://127.0.0.1:6443" } }],
        users: [{ name: "u", user: { token: "t0ken" } }],
        contexts: [{ name: "x", context: { cluster: "c", user: "u" } }],
        "current-context": "x",
      }),
    );
    await assert.rejects(connect({ kubeconfigFile: kc }), refused);
    const ok = await connect({ kubeconfigFile: kc, allowTokenOverHttp: true });
    assert.equal(ok.server, "http://127.0.0.1:6443");
    ok.close();
    // No token, no objection (flanneld's --kube-api-url with no credentials).
    const anon = await connect({ kubeApiUrl: "http://127.0.0.1:6443", env });
    assert.equal(anon.server, "http://127.0.0.1:6443");
    anon.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
