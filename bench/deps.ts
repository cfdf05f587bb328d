/**
 * Benchmark (not a test): the libraries the design named against the ones
 * weft uses, measured here. For each of `@std/cli`, `@std/yaml`,
 * `@std/assert` it records whether JSR can be reached from this machine
 * (`deno info jsr:…`); for each pair it measures, each as its own process
 * (bench/startup.ts's probe: median of `--runs` runs, 200 ms of event loop
 * before reading), the time and RSS of loading the module and doing one
 * call: `node:util` parseArgs on the agent's flags, `npm:yaml` on a
 * kubeconfig, `node:assert`, and an IPv6 parse through `npm:ip-num`
 * against lib/ip.ts. Writes bench/results/deps.md naming the commit.
 *
 * Run: `deno run -A bench/deps.ts [--runs=5]`.
 *
 * @module
 */
import { probe } from "./startup.ts";
import { describeCommit } from "../tests/_commit.ts";

const ROOT = new URL("../", import.meta.url).pathname;
/** The ip-num release the design named, fetched through the npm registry. */
const IP_NUM = "npm:ip-num@1.5.1";

async function output(cmd: string[], timeoutMs = 30_000) {
  const out = await new Deno.Command(cmd[0]!, {
    args: cmd.slice(1),
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(timeoutMs),
  }).output().catch((e) => ({
    success: false,
    stdout: new Uint8Array(),
    stderr: new TextEncoder().encode(String(e)),
  }));
  const text = (b: Uint8Array) => new TextDecoder().decode(b).trim();
  return {
    ok: out.success,
    stdout: text(out.stdout),
    stderr: text(out.stderr),
  };
}

/**
 * Whether `deno info` resolves a JSR package, and the reason when not
 * (it exits 0 either way, with the error in its JSON).
 */
async function jsr(spec: string): Promise<string> {
  const r = await output([Deno.execPath(), "info", "--json", spec]);
  let error: string | undefined;
  try {
    const info = JSON.parse(r.stdout) as { modules?: { error?: string }[] };
    error = info.modules?.find((m) => m.error)?.error;
  } catch {
    error = r.stderr.split("\n").find((l) => l.trim() !== "") ?? "no output";
  }
  if (!r.ok && error === undefined) error = r.stderr;
  return error === undefined ? "reachable" : `not reachable: ${error}`;
}

if (import.meta.main) {
  const runs = Number(
    Deno.args.find((a) => a.startsWith("--runs="))?.slice(7) ?? 5,
  );
  const commit = await describeCommit();
  const reach: [string, string][] = [];
  for (const spec of ["jsr:@std/cli", "jsr:@std/yaml", "jsr:@std/assert"]) {
    reach.push([spec, await jsr(spec)]);
  }
  // Fetch ip-num into Deno's cache first, so its load is not a download.
  // (--no-lock: the project's lock file must not gain a package it does
  // not use.)
  const ipNumCached =
    (await output([Deno.execPath(), "cache", "--no-lock", IP_NUM])).ok;
  const kubeconfig = JSON.stringify(
    "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443\n",
  );
  const probes: [string, string][] = [
    ["empty script (the runtime alone)", ""],
    [
      "`node:util` parseArgs (used), the agent's flags",
      `import { parseArgs } from "node:util";
parseArgs({ args: ["--iface=eth0", "--ip-masq"], options: { iface: { type: "string", multiple: true }, "ip-masq": { type: "boolean" } } });`,
    ],
    [
      "`npm:yaml` (used, loaded only for a non-JSON kubeconfig)",
      `import { parseYaml } from "${ROOT}subnet/kube/_yaml.ts";
parseYaml(${kubeconfig});`,
    ],
    [
      "`node:assert` (used, in tests only)",
      `import assert from "node:assert/strict"; assert.equal(1, 1);`,
    ],
    [
      "lib/ip.ts (used), one IPv6 parse",
      `import { parseIp } from "${ROOT}lib/ip.ts"; parseIp("fc00:0:0:9::1");`,
    ],
    ...(ipNumCached
      ? [[
        "`npm:ip-num` (named by the design), one IPv6 parse",
        `import { IPv6 } from "${IP_NUM}"; IPv6.fromString("fc00:0:0:9::1");`,
      ] as [string, string]]
      : []),
  ];
  const rows = [];
  for (const [name, code] of probes) {
    rows.push(
      await probe(name, code, runs, undefined, ["--no-lock"]),
    );
  }
  const md = [
    "# The design's libraries against weft's",
    "",
    `\`deno run -A bench/deps.ts --runs=${runs}\` at ${commit}, ${
      new Date().toISOString().slice(0, 16).replace("T", " ")
    } UTC, ${Deno.build.os}/${Deno.build.arch}, deno ${Deno.version.deno}.`,
    "",
    "| JSR package (named by the design) | from this machine |",
    "| --- | --- |",
    ...reach.map(([s, r]) => `| \`${s}\` | ${r.replaceAll("|", "\\|")} |`),
    "",
    `Loading a module and one call, each its own process, median of ${runs}:`,
    "",
    "| module | in-process (ms) | CPU (ms) | RSS (MiB) |",
    "| --- | ---: | ---: | ---: |",
    ...rows.map((r) =>
      `| ${r.name} | ${r.innerMs.toFixed(0)} | ${r.cpu.toFixed(0)} | ${
        r.rss.toFixed(1)
      } |`
    ),
    ...(ipNumCached
      ? []
      : ["", `\`deno cache ${IP_NUM}\` failed: ip-num not measured.`]),
    "",
  ].join("\n");
  await Deno.writeTextFile(`${ROOT}bench/results/deps.md`, md);
  console.log(md);
}
