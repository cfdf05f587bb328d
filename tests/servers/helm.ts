/**
 * helm, as the chart tests run it: the binary `.ci/build_servers.sh
 * --with-helm` builds, with its configuration, cache and data directories
 * in a directory of the caller's (never the user's home), and the two
 * charts the tests give it: weft's (chart/weft) and flannel v0.28.9's own
 * (chart/kube-flannel of the flannel module in the Go module cache, there
 * once `.ci/build_servers.sh --with-flanneld` has run).
 *
 * @module
 */
import type { Need } from "../_gate.ts";
import { type Output, run } from "../_netns.ts";
import { DEFAULT_WEFT_CACHE, serverBinary } from "./paths.ts";

/** weft's chart. */
export const WEFT_CHART = new URL("../../chart/weft", import.meta.url).pathname;

/** flannel v0.28.9's own chart. */
export const FLANNEL_CHART = `${
  Deno.env.get("WEFT_CACHE") ?? DEFAULT_WEFT_CACHE
}/gomod/github.com/flannel-io/flannel@v0.28.9/chart/kube-flannel`;

/** helm and flannel's chart are there. */
export const HELM: Need = async () => {
  if (!(await serverBinary("helm"))) {
    return "no helm: run .ci/build_servers.sh --with-helm";
  }
  if (!(await Deno.stat(`${FLANNEL_CHART}/values.yaml`).catch(() => null))) {
    return `no ${FLANNEL_CHART}: run .ci/build_servers.sh --with-flanneld`;
  }
  return undefined;
};

/** Where and how helm runs. */
export interface HelmOptions {
  /** Holds helm's config, cache and data directories. */
  readonly home: string;
  /** `--kubeconfig`, for commands that reach a cluster. */
  readonly kubeconfig?: string;
  /** A network namespace to run in (`ip netns exec`). */
  readonly netns?: string;
}

/** Runs helm; never throws on its exit status. */
export async function helm(
  opts: HelmOptions,
  args: string[],
  stdin?: string,
): Promise<Output> {
  const bin = await serverBinary("helm");
  if (!bin) throw new Error("No helm: run .ci/build_servers.sh --with-helm");
  return await run([
    ...(opts.netns ? ["ip", "netns", "exec", opts.netns] : []),
    "env",
    `HELM_CONFIG_HOME=${opts.home}/config`,
    `HELM_CACHE_HOME=${opts.home}/cache`,
    `HELM_DATA_HOME=${opts.home}/data`,
    bin,
    ...(opts.kubeconfig ? [`--kubeconfig=${opts.kubeconfig}`] : []),
    ...args,
  ], stdin);
}

/** Like {@linkcode helm}, throwing with its stderr when it fails. */
export async function helmOk(
  opts: HelmOptions,
  args: string[],
  stdin?: string,
): Promise<string> {
  const r = await helm(opts, args, stdin);
  if (r.code !== 0) {
    throw new Error(`helm ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
  }
  return r.stdout;
}
