/**
 * Keeps the layers pointing one way. Reads the module graph Deno itself
 * resolves (`deno info --json`) from every entry point and fails on any
 * import that runs against the table below; docs/architecture.md draws
 * the same table.
 *
 * Runs in the unit tier with the two permissions it needs: running
 * `deno info` and reading the tree.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";

/** Each layer and the layers it may import (itself included). */
const MAY_IMPORT: Record<string, readonly string[]> = {
  // The floor: logging, metrics, results, retry, IP and MAC parsing, URL
  // schemes, a CA-pinned fetch, commands, atomic writes. No internal imports.
  "lib": ["lib"],
  // Kernel access and cluster state, side by side, each over the floor.
  "ffi": ["lib", "ffi"],
  "subnet": ["lib", "subnet"],
  // The dataplane: backends program the kernel from leases; traffic rules.
  "backend": ["lib", "ffi", "subnet", "backend"],
  "traffic": ["lib", "traffic"],
  // The CNI plugin is its own process: the floor and the subnet file.
  "cni": ["lib", "subnet", "cni"],
  // The one composition root.
  "agent": ["lib", "ffi", "subnet", "backend", "traffic", "agent"],
  "main.ts": ["lib", "agent", "cni"],
};

/** Entry points whose graphs together reach every product module. */
const ENTRIES = [
  "main.ts",
  "cni/main.ts",
  "backend/_testing.ts",
  "subnet/kube/_fake_api.ts",
  "subnet/etcd/_fake_etcd.ts",
  "backend/_netlink_contract.ts",
  "traffic/_testing.ts",
];

const ROOT = new URL("../", import.meta.url);

interface Info {
  modules: {
    specifier: string;
    dependencies?: {
      code?: { specifier?: string };
      type?: { specifier?: string };
    }[];
  }[];
}

async function graph(entry: string): Promise<Info> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", entry],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `deno info ${entry} failed: ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

function layerOf(specifier: string): string | undefined {
  if (!specifier.startsWith(ROOT.href)) return undefined; // npm:, node:
  const rel = specifier.slice(ROOT.href.length);
  return rel.includes("/") ? rel.slice(0, rel.indexOf("/")) : rel;
}

async function productFiles(dir = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(new URL(dir || ".", ROOT))) {
    const path = dir + e.name;
    if (e.isDirectory) {
      if (path in MAY_IMPORT) out.push(...await productFiles(path + "/"));
    } else if (
      e.name.endsWith(".ts") && !e.name.endsWith("_test.ts") &&
      (dir !== "" || path in MAY_IMPORT)
    ) {
      out.push(path);
    }
  }
  return out;
}

Deno.test("imports run only down the layers, and every product module is checked", async () => {
  const wrong = new Set<string>();
  const seen = new Set<string>();
  for (const entry of ENTRIES) {
    for (const mod of (await graph(entry)).modules) {
      const from = layerOf(mod.specifier);
      if (from === undefined) continue;
      seen.add(mod.specifier.slice(ROOT.href.length));
      const allowed = MAY_IMPORT[from];
      assert(allowed, `${mod.specifier} is in no layer (add it to MAY_IMPORT)`);
      for (const dep of mod.dependencies ?? []) {
        for (const to of [dep.code?.specifier, dep.type?.specifier]) {
          const layer = to === undefined ? undefined : layerOf(to);
          if (layer !== undefined && !allowed.includes(layer)) {
            wrong.add(
              `${mod.specifier.slice(ROOT.href.length)} -> ${
                to!.slice(ROOT.href.length)
              }`,
            );
          }
        }
      }
    }
  }
  assertEquals([...wrong], [], "imports against the layers");
  const unchecked = (await productFiles()).filter((f) => !seen.has(f));
  assertEquals(unchecked, [], "product modules no entry point reaches");
});
