/**
 * Preloaded into weft by bench/list_cost.ts, never by the agent itself:
 * takes `resourceVersion` and `resourceVersionMatch` out of weft's Node
 * LIST requests, so that each LIST is a quorum read the API server serves
 * from etcd rather than from its watch cache. Watches are left alone.
 * weft reaches the API server through `node:https` (subnet/kube/
 * pinned_fetch.ts), so that is where the path is changed. Each changed
 * request is logged (`quorum-list: <path>`), so the benchmark can check
 * that it applied.
 *
 * @module
 */
import https from "node:https";

/** The path without its resource version, if it is a Node LIST. */
export function quorumPath(path: string): string {
  const q = path.indexOf("?");
  if (q < 0 || !path.startsWith("/api/v1/nodes?")) return path;
  const params = new URLSearchParams(path.slice(q + 1));
  if (params.has("watch") || !params.has("resourceVersion")) return path;
  params.delete("resourceVersion");
  params.delete("resourceVersionMatch");
  return `${path.slice(0, q)}?${params}`;
}

const request = https.request;
(https as { request: unknown }).request = function (
  this: unknown,
  ...args: unknown[]
) {
  const opts = args[0] as { path?: unknown } | undefined;
  if (typeof opts === "object" && typeof opts?.path === "string") {
    const path = quorumPath(opts.path);
    if (path !== opts.path) {
      console.error(`quorum-list: ${path}`);
      args[0] = { ...opts, path };
    }
  }
  return (request as (...a: unknown[]) => unknown).apply(this, args);
};
