/**
 * Locates the real server binaries that weft's integration tests run against
 * (kube-apiserver, etcd >= 3.5, upstream flanneld and helm), which
 * `.ci/build_servers.sh` builds from the Go module proxy into a cache outside
 * the repository. Resolution mirrors controller-runtime's envtest and the
 * build script: first `TEST_ASSET_KUBE_APISERVER` / `TEST_ASSET_ETCD` (for
 * those two binaries only), then `$KUBEBUILDER_ASSETS/<name>`, then
 * `$WEFT_CACHE/bin/<name>` (`WEFT_CACHE` defaults to `/var/cache/weft`); the
 * first candidate that exists as a file wins, and `undefined` means none does
 * (callers should skip, not fail, server-backed tests). Debian's `etcd` 3.4 at
 * `/usr/bin/etcd` is deliberately never returned: it is too old for
 * kube-apiserver and is used separately by the etcd-mode tests. Reading the
 * environment needs `--allow-env`, and checking the candidates `--allow-read`;
 * without either permission the corresponding candidates are just skipped.
 *
 * @module
 */

/** The servers that `.ci/build_servers.sh` provides. */
export type ServerName = "kube-apiserver" | "etcd" | "flanneld" | "helm";

/** Default cache root, the same default as `.ci/build_servers.sh`. */
export const DEFAULT_WEFT_CACHE = "/var/cache/weft";

const TEST_ASSET_VARS: Readonly<Partial<Record<ServerName, string>>> = {
  "kube-apiserver": "TEST_ASSET_KUBE_APISERVER",
  etcd: "TEST_ASSET_ETCD",
};

function env(name: string): string | undefined {
  try {
    const value = Deno.env.get(name);
    return value === undefined || value === "" ? undefined : value;
  } catch {
    // No --allow-env for this variable: treat it as unset.
    return undefined;
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    // Missing, unreadable, or no --allow-read.
    return false;
  }
}

/** The candidate paths for `name`, in resolution order. */
export function serverBinaryCandidates(name: ServerName): string[] {
  const candidates: string[] = [];
  const assetVar = TEST_ASSET_VARS[name];
  const asset = assetVar === undefined ? undefined : env(assetVar);
  if (asset !== undefined) candidates.push(asset);
  const kubebuilder = env("KUBEBUILDER_ASSETS");
  if (kubebuilder !== undefined) candidates.push(`${kubebuilder}/${name}`);
  candidates.push(`${env("WEFT_CACHE") ?? DEFAULT_WEFT_CACHE}/bin/${name}`);
  return candidates;
}

/**
 * Path of the `name` server binary, or `undefined` when none of
 * `TEST_ASSET_*` (kube-apiserver/etcd only), `$KUBEBUILDER_ASSETS/<name>` and
 * `$WEFT_CACHE/bin/<name>` exists.
 */
export async function serverBinary(
  name: ServerName,
): Promise<string | undefined> {
  for (const candidate of serverBinaryCandidates(name)) {
    if (await isFile(candidate)) return candidate;
  }
  return undefined;
}
