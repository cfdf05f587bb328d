/**
 * HTTPS that trusts exactly the configured CA, through `fetch` when the
 * process allows it and through `node:https` ({@linkcode pinnedFetch})
 * otherwise. Both the Kubernetes and the etcd client use it.
 *
 * Deno's `fetch` verifies servers against one process-wide root store,
 * loaded at the first TLS connection, and
 * `Deno.createHttpClient({ caCerts })` only adds to it. With
 * `DENO_TLS_CA_STORE=system` in the environment at start, that store is
 * the PEM file named by `SSL_CERT_FILE` and nothing else (no bundled
 * Mozilla roots; `SSL_CERT_DIR` is ignored once `SSL_CERT_FILE` is set;
 * checked on Deno 2.9.6, see docs/tls.md). So a process that has made no
 * TLS connection yet can point `SSL_CERT_FILE` at the configured CA file
 * and use `fetch` with exact trust, without loading Node's compatibility
 * layer (what that saves is measured in bench/results/compare.md, under
 * "Levers").
 *
 * Because the store is the process's, the agent opts in once, at start,
 * before any connection ({@linkcode claimProcessTrust}); the first client
 * with a CA file then takes the store for that CA. Everything else (no
 * opt-in, `DENO_TLS_CA_STORE` other than `system`, `DENO_CERT` set, a CA
 * given inline, a second different CA, a CA file that rotated) goes through
 * {@linkcode pinnedFetch}, loaded only then.
 *
 * @module
 */
import type { PinnedFetch } from "./pinned_fetch.ts";

export type { PinnedFetch };

/** TLS settings of {@linkcode exactCaFetch}, all PEM. */
export interface ExactTls {
  /** The only CA certificates trusted (a bundle may hold several). */
  readonly ca: string;
  /**
   * The file `ca` was read from, if it came from one. Only a file can
   * become the process's root store.
   */
  readonly caFile?: string;
  /** Client certificate and key, for mutual TLS. */
  readonly cert?: string;
  readonly key?: string;
}

/** A fetch with exact trust, and how it verifies servers. */
export interface ExactFetch extends PinnedFetch {
  /**
   * `"fetch"` (the process's root store is exactly the CA) or
   * `"node:https"` (the CA is given to each connection).
   */
  readonly transport: "fetch" | "node:https";
}

type StoreState =
  | { readonly kind: "off"; readonly why: string }
  | { readonly kind: "free" }
  | { readonly kind: "taken"; readonly ca: string };

let store: StoreState = { kind: "off", why: "not claimed at start" };

/**
 * Claims the process's TLS root store for {@linkcode exactCaFetch}: call
 * once, at start, before any TLS connection. Returns `undefined` when the
 * store can be made exactly one CA, else why not (for the log).
 *
 * @example
 * ```ts
 * const why = claimProcessTrust();
 * if (why) log.info(`HTTPS through node:https: ${why}`);
 * ```
 */
export function claimProcessTrust(
  env: (name: string) => string | undefined = readEnv,
): string | undefined {
  const caStore = env("DENO_TLS_CA_STORE");
  if (caStore !== "system") {
    store = {
      kind: "off",
      why: caStore === undefined
        ? 'DENO_TLS_CA_STORE is not set to "system"'
        : `DENO_TLS_CA_STORE is "${caStore}", not "system"`,
    };
  } else if (env("DENO_CERT") !== undefined) {
    store = {
      kind: "off",
      why: `DENO_CERT "${env("DENO_CERT")}" adds a root to the process`,
    };
  } else {
    store = { kind: "free" };
  }
  return store.kind === "off" ? store.why : undefined;
}

/** For tests: forget the claim. */
export function resetProcessTrust(): void {
  store = { kind: "off", why: "not claimed at start" };
}

function readEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    // No --allow-env for it: treated as unset.
    return undefined;
  }
}

/** Builds a fetch that verifies the server against `tls.ca` only. */
export function exactCaFetch(tls: ExactTls): ExactFetch {
  if (tls.caFile !== undefined && takeStore(tls.ca, tls.caFile)) {
    const client = Deno.createHttpClient(
      tls.cert !== undefined && tls.key !== undefined
        ? { cert: tls.cert, key: tls.key }
        : {},
    );
    const f = (input: string | URL, init: RequestInit = {}) =>
      fetch(input, { ...init, client });
    return Object.assign(f, {
      close: () => client.close(),
      transport: "fetch" as const,
    });
  }
  // Loaded only when needed: it brings Node's compatibility layer.
  let pinned: PinnedFetch | undefined;
  const loading = import("./pinned_fetch.ts").then((m) =>
    pinned = m.pinnedFetch(tls)
  );
  let closed = false;
  const f = async (input: string | URL, init: RequestInit = {}) => {
    const p = pinned ?? await loading;
    if (closed) throw new Error("HTTPS client is closed");
    return p(input, init);
  };
  return Object.assign(f, {
    close: () => {
      closed = true;
      pinned?.close();
      loading.then((p) => p.close(), () => {});
    },
    transport: "node:https" as const,
  });
}

function takeStore(ca: string, caFile: string): boolean {
  if (store.kind === "taken") return store.ca === ca;
  if (store.kind === "off") return false;
  try {
    Deno.env.set("SSL_CERT_FILE", caFile);
  } catch {
    // No --allow-env=SSL_CERT_FILE: keep node:https.
    store = { kind: "off", why: "SSL_CERT_FILE cannot be set" };
    return false;
  }
  store = { kind: "taken", ca };
  return true;
}
