/**
 * Benchmark (not a test): where weft's start-up goes before its first API
 * request, step by step, each measured as its own process so one step's
 * caches do not flatter the next: a bare `deno run` of an empty script
 * (the runtime alone), loading every module of the agent's etcd path, and
 * of its kube path from a cold and from a warm transpile cache
 * (`DENO_DIR`), opening libnl plus the first link and route dumps (read
 * only, in the host's own namespace), one GET with exact CA trust to a
 * local TLS server through fetch (as the image runs) and through
 * `node:https` (the fallback, which brings Deno's Node compatibility
 * layer), and the health server answering once. Each probe
 * then lets the event loop run for 200 ms, as any long-lived process does
 * (a bare Deno process grows by some 7 MiB on its first timer). Prints a
 * markdown table with time, CPU (utime+stime, 10 ms ticks) and RSS;
 * medians of `--runs` (default 5) runs.
 *
 * A second table decodes a LIST body of 5000 realistic Nodes
 * (bench/kube.ts) the way the watcher does (streamed in 64 KiB chunks,
 * split, slimmed, turned into leases) under V8 flag sets and with or
 * without dropping each Node's status: the figures behind the flags baked
 * into `deno task start` and `deno task compile`.
 *
 * Run: `deno run -A bench/startup.ts [--runs=5]`; writes
 * bench/results/startup.md.
 *
 * @module
 */
import { machine, median } from "./_stats.ts";
import { realisticNode } from "./kube.ts";
import { commitOf, startV8Flags } from "./compare.ts";
import { makeCa, SERVER_EXT, signedCert } from "../tests/servers/pki.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** Runs a script `runs` times; returns median wall ms and RSS MiB it printed. */
export async function probe(
  name: string,
  code: string,
  runs: number,
  env: () => Record<string, string> = () => ({}),
  flags: string[] = [],
): Promise<
  { name: string; wallMs: number; innerMs: number; rss: number; cpu: number }
> {
  const file = `${ROOT}bench/_startup_probe_${crypto.randomUUID()}.ts`;
  await Deno.writeTextFile(
    file,
    `${code}
await new Promise((r) => setTimeout(r, 200)); // the event loop's own share
const st = Deno.readTextFileSync("/proc/self/status");
const sf = Deno.readTextFileSync("/proc/self/stat");
const f = sf.slice(sf.lastIndexOf(")") + 2).split(" ");
console.log(JSON.stringify({
  ms: performance.now() - 200,
  rss: Number(/VmRSS:\\s+(\\d+)/.exec(st)![1]) / 1024,
  cpu: (Number(f[11]) + Number(f[12])) * 10,
}));
`,
  );
  const walls: number[] = [], inner: number[] = [], rss: number[] = [];
  const cpu: number[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", ...flags, file],
        env: env(),
        stdout: "piped",
        stderr: "piped",
      }).output();
      walls.push(performance.now() - t0);
      if (!out.success) {
        throw new Error(`${name}: ${new TextDecoder().decode(out.stderr)}`);
      }
      const r = JSON.parse(new TextDecoder().decode(out.stdout).trim()) as {
        ms: number;
        rss: number;
        cpu: number;
      };
      inner.push(r.ms);
      rss.push(r.rss);
      cpu.push(r.cpu);
    }
  } finally {
    await Deno.remove(file);
  }
  return {
    name,
    wallMs: median(walls),
    innerMs: median(inner),
    rss: median(rss),
    cpu: median(cpu),
  };
}

/** An HTTPS server answering "ok", with a throwaway CA in `dir`. */
async function tlsServer(): Promise<
  { dir: string; port: number } & AsyncDisposable
> {
  const dir = await Deno.makeTempDir({ prefix: "weft-startup-tls-" });
  await makeCa(dir);
  await signedCert(dir, `${dir}/server`, "/CN=127.0.0.1", [
    ...SERVER_EXT,
    "subjectAltName=IP:127.0.0.1",
  ]);
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    cert: await Deno.readTextFile(`${dir}/server.crt`),
    key: await Deno.readTextFile(`${dir}/server.key`),
    onListen: () => {},
  }, () => new Response("ok"));
  return {
    dir,
    port: server.addr.port,
    [Symbol.asyncDispose]: async () => {
      await server.shutdown();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** A NodeList body of `n` realistic flannel vxlan Nodes, written to a file. */
async function listBody(n: number): Promise<string> {
  const p = "flannel.alpha.coreos.com";
  const items = Array.from({ length: n }, (_, i) => {
    const node = realisticNode(i) as {
      metadata: { annotations: Record<string, string> };
    };
    node.metadata.annotations[`${p}/public-ip`] = `198.19.${(i >> 8) & 255}.${
      i & 255
    }`;
    node.metadata.annotations[`${p}/backend-data`] =
      '{"VNI":1,"VtepMAC":"0a:42:00:00:00:01"}';
    return node;
  });
  const file = await Deno.makeTempFile({ prefix: "weft-list-" });
  await Deno.writeTextFile(
    file,
    JSON.stringify({ kind: "NodeList", metadata: {}, items }),
  );
  return file;
}

/** Decodes `file` as the watcher does; the probe's code. */
function decodeProbe(file: string, drop: boolean): string {
  return `import { ListSplitter } from "${ROOT}subnet/kube/list_stream.ts";
import { annotationKeys, nodeToLease, slimmer } from "${ROOT}subnet/kube/node.ts";
import { parseNetConfig } from "${ROOT}subnet/config.ts";
import "${ROOT}main.ts";
import "${ROOT}subnet/kube/manager.ts";
const keys = annotationKeys();
const config = parseNetConfig('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}');
if (!keys.ok || !config.ok) throw new Error("setup");
const slim = slimmer(keys.value);
const s = new ListSplitter(${drop ? '{ drop: "status" }' : ""});
const kept = new Map();
using file = Deno.openSync("${file}");
const buf = new Uint8Array(65536);
for (let n = file.readSync(buf); n !== null; n = file.readSync(buf)) {
  for (const item of s.push(buf.subarray(0, n))) {
    const r = slim(item);
    if (r.ok) kept.set(r.value.name, nodeToLease(r.value, keys.value, config.value));
  }
}
s.finish();
if (kept.size !== 5000) throw new Error("kept " + kept.size);`;
}

if (import.meta.main) {
  const runsArg = Deno.args.find((a) => a.startsWith("--runs="));
  const runs = runsArg ? Number(runsArg.slice(7)) : 5;
  const flags = await startV8Flags(ROOT);
  const kubePath = `import "${ROOT}main.ts";
import "${ROOT}subnet/kube/manager.ts";`;
  const netlinkPath = `${kubePath}
import { openNetlink } from "${ROOT}ffi/netlink.ts";
const nl = openNetlink();
nl.linkList();
nl.routeList({ family: 4 });`;
  await using tls = await tlsServer();
  /**
   * The netlink step, then one GET through weft's exact-CA transport,
   * which must be `transport`, then `after`.
   */
  const tlsGet = (transport: "fetch" | "node:https", after = "") =>
    `${netlinkPath}
const { claimProcessTrust, exactCaFetch } = await import("${ROOT}lib/exact_trust.ts");
${
      transport === "fetch"
        ? 'if (claimProcessTrust()) throw new Error("store not claimed");'
        : ""
    }
const get = exactCaFetch({ ca: Deno.readTextFileSync("${tls.dir}/ca.crt"), caFile: "${tls.dir}/ca.crt" });
if (get.transport !== "${transport}") throw new Error(get.transport);
const res = await get("https://127.0.0.1:${tls.port}/");
if ((await res.text()) !== "ok") throw new Error("TLS probe");
${after}
get.close();`;
  const rows = [
    await probe("empty script (the runtime alone)", "", runs, undefined, flags),
    await probe(
      "agent modules, etcd path, warm transpile cache",
      `import "${ROOT}main.ts";
import "${ROOT}subnet/etcd/manager.ts";`,
      runs,
      undefined,
      flags,
    ),
    await probe(
      "agent modules, kube path, cold transpile cache",
      kubePath,
      runs,
      () => ({ DENO_DIR: Deno.makeTempDirSync({ prefix: "weft-denodir-" }) }),
      flags,
    ),
    await probe(
      "agent modules, kube path, warm transpile cache",
      kubePath,
      runs,
      undefined,
      flags,
    ),
    await probe(
      "the same + libnl open (FFI) + first link and route dumps",
      netlinkPath,
      runs,
      undefined,
      flags,
    ),
    await probe(
      "the same + one GET with exact CA trust through fetch (the image's `DENO_TLS_CA_STORE=system`)",
      tlsGet("fetch"),
      runs,
      () => ({ DENO_TLS_CA_STORE: "system" }),
      flags,
    ),
    await probe(
      "the same, through `node:https` (`DENO_TLS_CA_STORE` unset)",
      tlsGet("node:https"),
      runs,
      undefined,
      flags,
    ),
    await probe(
      "the fetch row + the health server (`Deno.serve`) answering one request",
      tlsGet(
        "fetch",
        `const srv = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => new Response("ok"));
const r2 = await fetch("http://127.0.0.1:" + srv.addr.port + "/healthz");
await r2.text();
srv.unref(); // as the agent's, it lives on; it must not keep the probe alive`,
      ),
      runs,
      () => ({ DENO_TLS_CA_STORE: "system" }),
      flags,
    ),
  ];
  const body = await listBody(5000);
  const bodyMiB = (await Deno.stat(body)).size / 2 ** 20;
  const decode = [];
  try {
    for (
      const [name, f, drop] of [
        ["no V8 flags", [], false],
        [
          "--max-semi-space-size=1",
          ["--v8-flags=--max-semi-space-size=1"],
          false,
        ],
        ["the start task's flags", flags, false],
        ["the start task's flags, status dropped", flags, true],
      ] as const
    ) {
      decode.push(
        await probe(name, decodeProbe(body, drop), runs, undefined, [
          ...f,
        ]),
      );
    }
  } finally {
    await Deno.remove(body);
  }
  const text = [
    `# Where weft's start-up goes (bench/startup.ts)`,
    "",
    `Machine: ${await machine()}. weft at ${await commitOf(ROOT)}, run ${
      new Date().toISOString().slice(0, 16)
    } UTC by \`deno run -A bench/startup.ts\`.`,
    "",
    `Start-up, median of ${runs} runs (${flags.join(" ") || "no V8 flags"}):`,
    "",
    "| step | in-process, to the step's end (ms) | CPU (ms) | RSS (MiB) |",
    "|---|---:|---:|---:|",
    ...rows.map((r) =>
      `| ${r.name} | ${r.innerMs.toFixed(0)} | ${r.cpu.toFixed(0)} | ${
        r.rss.toFixed(1)
      } |`
    ),
    "",
    `Decoding a LIST of 5000 realistic Nodes (${
      bodyMiB.toFixed(1)
    } MiB of JSON; agent modules loaded), median of ${runs} runs:`,
    "",
    "| V8 flags | CPU, whole process (ms) | RSS after (MiB) |",
    "|---|---:|---:|",
    ...decode.map((r) =>
      `| ${r.name} | ${r.cpu.toFixed(0)} | ${r.rss.toFixed(1)} |`
    ),
  ].join("\n");
  await Deno.writeTextFile(`${ROOT}bench/results/startup.md`, text + "\n");
  console.log(text);
}
