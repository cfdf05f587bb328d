/**
 * TLS trust of the Kubernetes and etcd clients is exactly the configured
 * CA. A server whose certificate comes from a CA the process trusts anyway
 * (the system store, `DENO_TLS_CA_STORE=system` + `SSL_CERT_FILE`, or
 * `DENO_CERT`) but the kubeconfig or `--etcd-cafile` does not name must be
 * refused, and must never see the token or the etcd password, however the
 * scheme is spelled (`HTTPS://`). A plain
 * `Deno.createHttpClient({ caCerts })` in the same process accepts it (the
 * control: its CA list adds to the roots).
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
import { EtcdClient } from "${
  new URL("../../subnet/etcd/client.ts", import.meta.url).href
}";
const [url, caA, caB, kubeA, kubeB, kubeUpperA] = Deno.args;
const out = {};
try {
  const c = Deno.createHttpClient({ caCerts: [Deno.readTextFileSync(caA)] });
  const r = await fetch(url + "/control", { client: c });
  out.control = r.status;
  await r.body?.cancel();
} catch (e) { out.control = "refused: " + e.message; }
for (const [name, kc] of [["wrongCa", kubeA], ["rightCa", kubeB], ["upperWrongCa", kubeUpperA]]) {
  const client = await connect({ kubeconfigFile: kc, requestTimeoutMs: 5000 });
  try {
    const node = await client.getJson("/api/v1/nodes/n1");
    out[name] = "ok " + node.metadata.name;
  } catch (e) { out[name] = "refused: " + e.message; }
  client.close();
}
for (const [name, caFile, ep] of [
  ["etcdWrongCa", caA, url],
  ["etcdUpperWrongCa", caA, url.replace("https", "HTTPS")],
  ["etcdRightCa", caB, url],
]) {
  const etcd = new EtcdClient({
    endpoints: [ep],
    tls: { caFile },
    username: "root",
    password: "etcd-pw",
    requestTimeoutMs: 5000,
  });
  try {
    const r = await etcd.range("/coreos.com/network/config");
    out[name] = "ok " + r.revision;
  } catch (e) { out[name] = "refused: " + e.message; }
  etcd.close();
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

/**
 * Runs a child `deno run` with network and read access plus `flags`, and
 * returns the JSON it printed; fails the test if it exits non-zero.
 */
async function runChild(
  flags: string[],
  env: Record<string, string>,
  clearEnv = false,
): Promise<Record<string, string | number>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      "--allow-net",
      "--allow-read",
      "--config",
      new URL("../../deno.json", import.meta.url).pathname,
      ...flags,
    ],
    env,
    clearEnv,
    cwd: new URL("../..", import.meta.url).pathname,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, `${text}\n${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(text);
}

/** What the impostor server saw of one request. */
interface Seen {
  path: string;
  auth: string | null;
  body: string;
}

/**
 * Makes CAs `a` and `b` under `dir` and serves, until `signal`, a fake
 * API server and etcd whose certificate CA b signed; returns its URL.
 */
async function impostor(
  dir: string,
  seen: Seen[],
  signal: AbortSignal,
): Promise<string> {
  for (const ca of ["a", "b"]) {
    await Deno.mkdir(`${dir}/${ca}`);
    await makeCa(`${dir}/${ca}`);
  }
  await signedCert(`${dir}/b`, `${dir}/b/srv`, "/CN=127.0.0.1", [
    ...SERVER_EXT,
    "subjectAltName=IP:127.0.0.1",
  ]);
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: await Deno.readTextFile(`${dir}/b/srv.crt`),
    key: await Deno.readTextFile(`${dir}/b/srv.key`),
    signal,
    onListen: () => {},
  }, async (req) => {
    const path = new URL(req.url).pathname;
    seen.push({
      path,
      auth: req.headers.get("authorization"),
      body: await req.text(),
    });
    if (path === "/v3/auth/authenticate") {
      return Response.json({ header: { revision: "7" }, token: "etcd-tok" });
    }
    if (path === "/v3/kv/range") {
      return Response.json({ header: { revision: "7" }, kvs: [] });
    }
    return Response.json({ kind: "Node", metadata: { name: "n1" } });
  });
  return `https://127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
}

Deno.test("Kube and etcd clients trust exactly the configured CA (HTTPS:// too), not the process's extra roots, and never send the token or password to an impostor", async () => {
  const dir = await Deno.makeTempDir({ prefix: "weft-tls-" });
  const seen: Seen[] = [];
  const ac = new AbortController();
  try {
    const url = await impostor(dir, seen, ac.signal);
    await Deno.writeTextFile(
      `${dir}/kube-a.json`,
      kubeconfig(url, `${dir}/a/ca.crt`, "secret-a"),
    );
    await Deno.writeTextFile(
      `${dir}/kube-b.json`,
      kubeconfig(url, `${dir}/b/ca.crt`, "secret-b"),
    );
    await Deno.writeTextFile(
      `${dir}/kube-upper-a.json`,
      kubeconfig(url.replace("https", "HTTPS"), `${dir}/a/ca.crt`, "secret-a"),
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
      const r = await runChild(
        [
          "--allow-env",
          `${dir}/child.ts`,
          url,
          `${dir}/a/ca.crt`,
          `${dir}/b/ca.crt`,
          `${dir}/kube-a.json`,
          `${dir}/kube-b.json`,
          `${dir}/kube-upper-a.json`,
        ],
        env,
      );
      const label = JSON.stringify(env);
      assert.equal(r.control, 200, `control trusts CA b through ${label}`);
      assert.match(
        String(r.wrongCa),
        /^refused: Cannot reach Kubernetes API server .*TLS error/,
        label,
      );
      assert.match(
        String(r.upperWrongCa),
        /^refused: Cannot reach Kubernetes API server .*TLS error/,
        `${label}: HTTPS:// is https, pinned as well`,
      );
      assert.equal(r.rightCa, "ok n1", label);
      for (const name of ["etcdWrongCa", "etcdUpperWrongCa"]) {
        assert.match(
          String(r[name]),
          /^refused: Cannot reach etcd for \/v3\/auth\/authenticate: .*(certificate|TLS|verify)/i,
          `${label}: ${name}`,
        );
      }
      assert.equal(r.etcdRightCa, "ok 7", label);
      assert.deepEqual(
        seen.filter((s) => s.path !== "/control").map((s) => [
          s.path,
          s.auth,
          s.path === "/v3/auth/authenticate" ? JSON.parse(s.body).password : "",
        ]),
        [
          ["/api/v1/nodes/n1", "Bearer secret-b", ""],
          ["/v3/auth/authenticate", null, "etcd-pw"],
          ["/v3/kv/range", "etcd-tok", ""],
        ],
        `${label}: only the clients trusting CA b reached the server`,
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
    // A scheme is a scheme in any case: HTTP:// is plain http.
    await assert.rejects(
      connect({
        kubeApiUrl: "HTTP://127.0.0.1:6443",
        serviceAccountDir: dir,
        env,
      }),
      refused,
    );
    const upper = `${dir}/kubeconfig-upper.json`;
    await Deno.writeTextFile(
      upper,
      (await Deno.readTextFile(kc)).replace("http://", "HTTP://"),
    );
    await assert.rejects(connect({ kubeconfigFile: upper }), refused);
    await assert.rejects(
      connect({ kubeconfigFile: kc, kubeApiUrl: "Http://127.0.0.1:6443" }),
      refused,
    );
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

const FETCH_CHILD = `
import { connect } from "${
  new URL("../../subnet/kube/client.ts", import.meta.url).href
}";
import { EtcdClient } from "${
  new URL("../../subnet/etcd/client.ts", import.meta.url).href
}";
import { claimProcessTrust } from "${
  new URL("../../lib/exact_trust.ts", import.meta.url).href
}";
import { setLogSink } from "${
  new URL("../../lib/log.ts", import.meta.url).href
}";
const logs = [];
setLogSink((line) => logs.push(line));
const [what, url, arg] = Deno.args;
const out = { claim: claimProcessTrust() ?? "claimed" };
if (what === "kube") {
  const client = await connect({ kubeconfigFile: arg, requestTimeoutMs: 5000 });
  try {
    out.result = "ok " + (await client.getJson("/api/v1/nodes/n1")).metadata.name;
  } catch (e) { out.result = "refused: " + e.message; }
  client.close();
} else {
  const etcd = new EtcdClient({
    endpoints: [url], tls: { caFile: arg }, username: "root",
    password: "etcd-pw", requestTimeoutMs: 5000,
  });
  try {
    out.result = "ok " + (await etcd.range("/coreos.com/network/config")).revision;
  } catch (e) { out.result = "refused: " + e.message; }
  etcd.close();
}
out.transport = logs.join("\\n").match(/via (fetch|node:https)/)?.[1] ?? "not logged";
console.log(JSON.stringify(out));
`;

Deno.test("With DENO_TLS_CA_STORE=system the agent's fetch trusts exactly the configured CA: SSL_CERT_FILE, SSL_CERT_DIR and DENO_CERT naming an impostor's CA do not make it trusted", async () => {
  const dir = await Deno.makeTempDir({ prefix: "weft-tls-fetch-" });
  const seen: Seen[] = [];
  const ac = new AbortController();
  try {
    // The impostor: a server whose certificate CA b signed.
    const url = await impostor(dir, seen, ac.signal);
    // CA b in an OpenSSL hashed directory, as SSL_CERT_DIR expects.
    await Deno.mkdir(`${dir}/certdir`);
    await Deno.copyFile(`${dir}/b/ca.crt`, `${dir}/certdir/b.pem`);
    const hash = new TextDecoder().decode(
      (await new Deno.Command("openssl", {
        args: ["x509", "-noout", "-subject_hash", "-in", `${dir}/b/ca.crt`],
        stdout: "piped",
      }).output()).stdout,
    ).trim();
    await Deno.copyFile(`${dir}/b/ca.crt`, `${dir}/certdir/${hash}.0`);
    for (const ca of ["a", "b"]) {
      await Deno.writeTextFile(
        `${dir}/kube-${ca}.json`,
        kubeconfig(url, `${dir}/${ca}/ca.crt`, `secret-${ca}`),
      );
    }
    await Deno.writeTextFile(`${dir}/child.ts`, FETCH_CHILD);
    // The agent's own variable grants, from the shipped list.
    const shipped = await Deno.readTextFile(
      new URL("../../deploy/permissions.txt", import.meta.url),
    );
    const allowEnv = shipped.split(/\s+/).find((w) =>
      w.startsWith("--allow-env=")
    )!;
    const child = async (
      env: Record<string, string>,
      args: string[],
    ): Promise<Record<string, string>> => {
      return await runChild(
        [allowEnv, `${dir}/child.ts`, ...args],
        env,
        true,
      ) as Record<string, string>;
    };
    const impostorTrusted = {
      DENO_TLS_CA_STORE: "system",
      SSL_CERT_FILE: `${dir}/b/ca.crt`,
      SSL_CERT_DIR: `${dir}/certdir`,
    };
    const cases: [string, Record<string, string>, string[], RegExp, string][] =
      [
        // The kubeconfig names CA a; everything else names the impostor's.
        [
          "kube, wrong CA",
          impostorTrusted,
          ["kube", url, `${dir}/kube-a.json`],
          /^refused: Cannot reach Kubernetes API server .*TLS error/,
          "fetch",
        ],
        [
          "kube, right CA",
          impostorTrusted,
          ["kube", url, `${dir}/kube-b.json`],
          /^ok n1$/,
          "fetch",
        ],
        [
          "kube, DENO_CERT names the impostor's CA",
          { DENO_TLS_CA_STORE: "system", DENO_CERT: `${dir}/b/ca.crt` },
          ["kube", url, `${dir}/kube-a.json`],
          /^refused: Cannot reach Kubernetes API server .*TLS error/,
          "node:https",
        ],
        [
          "etcd, wrong CA",
          impostorTrusted,
          ["etcd", url, `${dir}/a/ca.crt`],
          /^refused: Cannot reach etcd for \/v3\/auth\/authenticate: .*(certificate|TLS|verify)/i,
          "",
        ],
      ];
    for (const [label, env, args, expect, transport] of cases) {
      seen.length = 0;
      const r = await child(env, args);
      assert.match(r.result!, expect, `${label}: ${JSON.stringify(r)}`);
      if (transport !== "") assert.equal(r.transport, transport, label);
      assert.equal(
        r.claim,
        env.DENO_CERT === undefined
          ? "claimed"
          : `DENO_CERT "${env.DENO_CERT}" adds a root to the process`,
        label,
      );
      assert.deepEqual(
        seen.map((s) => s.auth),
        expect.source.startsWith("^ok") ? ["Bearer secret-b"] : [],
        `${label}: only a client trusting CA b reaches the server`,
      );
    }
  } finally {
    ac.abort();
    await Deno.remove(dir, { recursive: true });
  }
});
