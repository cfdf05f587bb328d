/**
 * All of weft's benchmarks, one after the other, each table printed as it
 * completes and all of them written to bench/results/bench.md:
 *
 * - netlink: `ffi/` against `ip -batch` for N peers (bench/netlink.ts);
 * - reconcile: the reconciler's cold start, steady add and no-op pass
 *   (bench/reconcile.ts);
 * - kube: the node watcher's sync time, memory and bytes against a real
 *   kube-apiserver (bench/kube.ts), when the servers are built;
 * - compare: weft beside upstream flanneld (bench/compare.ts), when the
 *   servers and flanneld are built; also writes compare.md and compare.svg.
 *
 * `deno task bench soak [--minutes=60] [--peers=1000]` runs the soak
 * (bench/soak.ts) instead, alone; `deno task bench k8s [--pods=50]` the
 * cluster tier's figures (bench/k8s.ts), alone; `deno task bench wireguard
 * [--runs=3]` pod traffic over wireguard beside vxlan (bench/wireguard.ts).
 *
 * Needs root (network namespaces). `deno task bench [--quick]
 * [--weft=<checkout>] [name...]`: names pick benchmarks (default all);
 * `--quick` uses smaller N; `--weft` runs another checkout's main.ts in
 * compare (say, a `git archive HEAD` snapshot free of uncommitted edits).
 *
 * @module
 */
import { benchNetlink, formatRows as formatNetlink } from "./netlink.ts";
import { benchReconcile, formatRows as formatReconcile } from "./reconcile.ts";
import {
  benchCompare,
  commitOf,
  compareAvailable,
  formatCompare,
  writeCompareResults,
} from "./compare.ts";
import { kubeServersAvailable } from "../tests/servers/kube.ts";
import { machine } from "./_stats.ts";

// `deno task bench soak [--minutes=N] [--peers=N]`: the long soak
// (bench/soak.ts), run only when asked for.
if (Deno.args[0] === "soak") {
  const { soak } = await import("./soak.ts");
  await soak();
  Deno.exit(0);
}
if (Deno.args[0] === "wireguard") {
  const { wireguardBench } = await import("./wireguard.ts");
  await wireguardBench(Deno.args.slice(1));
  Deno.exit(0);
}
if (Deno.args[0] === "k8s") {
  const { k8sBench } = await import("./k8s.ts");
  await k8sBench(Deno.args.slice(1));
  Deno.exit(0);
}

const ALL = ["netlink", "reconcile", "kube", "compare"] as const;
type Name = typeof ALL[number];

const args = Deno.args;
const quick = args.includes("--quick");
// A clean checkout (`git archive HEAD`) to run as the agent in compare.
const weftRoot = args.find((a) => a.startsWith("--weft="))?.slice(7);
const picked = args.filter((a) => !a.startsWith("--")) as Name[];
for (const p of picked) {
  if (!ALL.includes(p)) {
    console.error(`Unknown benchmark "${p}" (known: ${ALL.join(", ")})`);
    Deno.exit(2);
  }
}
const want = (n: Name) => picked.length === 0 || picked.includes(n);
const progress = (line: string) => console.error(line);

const sections: string[] = [];
const m = await machine();
console.log(`Machine: ${m}\n`);

function section(title: string, body: string): void {
  const text = `## ${title}\n\n${body}\n`;
  sections.push(text);
  console.log(text);
}

if (want("netlink")) {
  const rows = await benchNetlink(quick ? [1000] : [1000, 10000]);
  section("ffi/ vs ip -batch (bench/netlink.ts)", formatNetlink(rows));
}

if (want("reconcile")) {
  const rows = await benchReconcile(quick ? [1000] : [1000, 5000], {
    progress,
  });
  section("Reconciler (bench/reconcile.ts)", formatReconcile(rows));
}

if (want("kube")) {
  if (await kubeServersAvailable()) {
    const kube = await import("./kube.ts");
    const rows = await kube.benchKube(quick ? [1000] : [1000, 5000], {
      progress,
    });
    section("Kubernetes node watcher (bench/kube.ts)", kube.formatRows(rows));
  } else {
    section(
      "Kubernetes node watcher (bench/kube.ts)",
      "Skipped: kube-apiserver or etcd >= 3.5 is not built (.ci/build_servers.sh).",
    );
  }
}

if (want("compare")) {
  if (await compareAvailable()) {
    const started = new Date().toISOString();
    const rows = await benchCompare(quick ? [100, 1000] : [100, 1000, 5000], {
      progress,
      ...(quick && { reps: 1 }),
      ...(weftRoot && { weftRoot }),
    });
    const res = {
      machine: m,
      commit: await commitOf(
        weftRoot ?? new URL("../", import.meta.url).pathname,
      ),
      started,
      finished: new Date().toISOString(),
      reps: quick ? 1 : 3,
      rows,
      steady: [],
    };
    await writeCompareResults(res);
    section(
      "weft vs flanneld (bench/compare.ts; chart: compare.svg)",
      formatCompare(res),
    );
  } else {
    section(
      "weft vs flanneld (bench/compare.ts)",
      "Skipped: flanneld, kube-apiserver or etcd is not built (.ci/build_servers.sh).",
    );
  }
}

const dir = new URL("./results/", import.meta.url).pathname;
await Deno.mkdir(dir, { recursive: true });
await Deno.writeTextFile(
  `${dir}bench.md`,
  `# weft benchmarks (${
    new Date().toISOString().slice(0, 10)
  })\n\nMachine: ${m}. weft at ${await commitOf(
    weftRoot ?? new URL("../", import.meta.url).pathname,
  )}; written by \`deno task bench ${Deno.args.join(" ")}\`.\n\n${
    sections.join("\n")
  }`,
);
console.error(`Wrote ${dir}bench.md`);
