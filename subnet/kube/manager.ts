/**
 * The Kubernetes subnet manager (`--kube-subnet-mgr`): leases are Nodes.
 * Our lease is our node's pod CIDR, which the controller manager assigns;
 * we publish how to reach it in the node's flannel annotations, exactly as
 * flanneld does, so weft and flanneld nodes interoperate. Peer leases come
 * from a list+watch over Nodes that keeps only a slim record per node and
 * feeds a {@linkcode LeaseTable}, which validates and diffs them.
 *
 * @module
 */
import { logger, quote } from "../../lib/log.ts";
import { metrics } from "../../lib/metrics.ts";
import { type NetworkConfig, parseNetConfig } from "../config.ts";
import type {
  Lease,
  LeaseAttrs,
  LeaseEvent,
  LeaseHandler,
  SubnetManager,
} from "../lease.ts";
import { LeaseTable } from "../lease_table.ts";
import { sleep } from "../../lib/retry.ts";
import {
  connect,
  type ConnectOptions,
  isTransient,
  KubeApiError,
  type KubeClient,
  resolveNodeName,
  retrying,
} from "./client.ts";
import {
  type AnnotationKeys,
  annotationKeys,
  annotationPatch,
  DEFAULT_ANNOTATION_PREFIX,
  nodePublicIPOverride,
  nodeToLease,
  ownSubnets,
  podCidrsOf,
  slimmer,
  type SlimNode,
} from "./node.ts";
import { NodeWatcher, type NodeWatcherOptions } from "./watch.ts";

const log = logger("kube");

/** The NetworkUnavailable condition flanneld sets once it runs. */
export const NETWORK_UP_CONDITION = {
  type: "NetworkUnavailable",
  status: "False",
  reason: "FlannelIsUp",
  message: "Flannel is running on this node",
} as const;

/** Options of {@linkcode KubeSubnetManager}. */
export interface KubeSubnetManagerOptions {
  readonly client: KubeClient;
  /** This node's name. */
  readonly nodeName: string;
  /** `--net-config-path`. */
  readonly netConfPath: string;
  /** `--kube-annotation-prefix`. Default `flannel.alpha.coreos.com`. */
  readonly annotationPrefix?: string;
  /** `--set-node-network-unavailable`. Default true. */
  readonly setNodeNetworkUnavailable?: boolean;
  /** How long to wait for our node and its pod CIDR, ms. Default 30000. */
  readonly podCidrTimeoutMs?: number;
  /** Pause between looks at our node while waiting, ms. Default 1000. */
  readonly podCidrIntervalMs?: number;
  readonly watch?: NodeWatcherOptions;
  /** Reads `netConfPath`. Default `Deno.readTextFile` (tests replace it). */
  readonly readTextFile?: (path: string) => Promise<string>;
}

/** The flags {@linkcode KubeSubnetManager.create} reads (agent/flags.ts). */
export interface KubeFlags {
  readonly kubeApiUrl: string;
  readonly kubeconfigFile: string;
  readonly kubeAnnotationPrefix: string;
  readonly netConfigPath: string;
  readonly setNodeNetworkUnavailable: boolean;
  /** `--allow-token-over-http`; default false. */
  readonly allowTokenOverHttp?: boolean;
  /** `--watch-idle-timeout` in seconds; 0 or absent: the watch's own bound. */
  readonly watchIdleTimeout?: number;
}

interface NodeObject {
  metadata?: { annotations?: Record<string, string> };
  spec?: unknown;
  status?: {
    conditions?: {
      type?: string;
      status?: string;
      reason?: string;
      message?: string;
    }[];
  };
}

/** Subnet manager backed by the Kubernetes API (`--kube-subnet-mgr`). */
export class KubeSubnetManager implements SubnetManager {
  readonly name = "kube";
  readonly nodeName: string;
  readonly keys: AnnotationKeys;
  readonly #client: KubeClient;
  readonly #opts: KubeSubnetManagerOptions;
  readonly #nodePath: string;
  #config: NetworkConfig | undefined;
  #lease: Lease | undefined;
  #ownCidrs: readonly string[] | undefined;
  #table: LeaseTable | undefined;
  #handler: LeaseHandler | undefined;

  /** Throws when the annotation prefix is invalid. */
  constructor(opts: KubeSubnetManagerOptions) {
    const keys = annotationKeys(
      opts.annotationPrefix ?? DEFAULT_ANNOTATION_PREFIX,
    );
    if (!keys.ok) throw new Error(keys.reason);
    this.keys = keys.value;
    this.#client = opts.client;
    this.#opts = opts;
    this.nodeName = opts.nodeName;
    this.#nodePath = `/api/v1/nodes/${encodeURIComponent(opts.nodeName)}`;
  }

  /**
   * Connects as flanneld does (kubeconfig, else in-cluster, `--kube-api-url`
   * overriding the server), finds this node's name (`NODE_NAME`, else the
   * pod's `spec.nodeName`) and returns the manager.
   *
   * @example
   * ```ts
   * const sm = await KubeSubnetManager.create(flags, signal);
   * ```
   */
  static async create(
    flags: KubeFlags,
    signal: AbortSignal,
    extra: Partial<ConnectOptions> & {
      readonly watch?: NodeWatcherOptions;
      readonly podCidrTimeoutMs?: number;
    } = {},
  ): Promise<KubeSubnetManager> {
    // Validate the prefix before touching the network.
    const keys = annotationKeys(flags.kubeAnnotationPrefix);
    if (!keys.ok) throw new Error(keys.reason);
    const client = await connect({
      ...extra,
      kubeApiUrl: flags.kubeApiUrl,
      kubeconfigFile: flags.kubeconfigFile,
      ...(flags.allowTokenOverHttp && { allowTokenOverHttp: true }),
    });
    try {
      const nodeName = await resolveNodeName(client, signal, extra.env);
      log.info(
        `Kubernetes subnet manager for node "${nodeName}" via ${client.server}`,
      );
      return new KubeSubnetManager({
        client,
        nodeName,
        netConfPath: flags.netConfigPath,
        annotationPrefix: flags.kubeAnnotationPrefix,
        setNodeNetworkUnavailable: flags.setNodeNetworkUnavailable,
        ...((extra.watch || flags.watchIdleTimeout) && {
          watch: {
            ...extra.watch,
            ...(flags.watchIdleTimeout &&
              { idleTimeoutMs: flags.watchIdleTimeout * 1000 }),
          },
        }),
        ...(extra.podCidrTimeoutMs !== undefined &&
          { podCidrTimeoutMs: extra.podCidrTimeoutMs }),
      });
    } catch (e) {
      client.close();
      throw e;
    }
  }

  /** The API client (for the caller to close at exit). */
  get client(): KubeClient {
    return this.#client;
  }

  /** Reads and validates `--net-config-path` once. */
  async getNetworkConfig(_signal: AbortSignal): Promise<NetworkConfig> {
    if (this.#config) return this.#config;
    const path = this.#opts.netConfPath;
    let text: string;
    try {
      text = await (this.#opts.readTextFile ?? Deno.readTextFile)(path);
    } catch (e) {
      throw new Error(
        `failed to read net conf "${path}": ${(e as Error).message}`,
      );
    }
    const parsed = parseNetConfig(text);
    if (!parsed.ok) {
      throw new Error(
        `error parsing subnet config "${path}": ${parsed.reason}`,
      );
    }
    this.#config = parsed.value;
    return parsed.value;
  }

  /** GETs our node, retrying transient errors and 404 until `deadline`. */
  #getNode(signal: AbortSignal, deadlineMs: number): Promise<NodeObject> {
    return retrying(
      () => this.#client.getJson<NodeObject>(this.#nodePath, signal),
      {
        signal,
        deadlineMs,
        what: `get node "${this.nodeName}"`,
        retryIf: (e) =>
          isTransient(e) || (e instanceof KubeApiError && e.status === 404),
      },
    );
  }

  /**
   * What our node's annotations say we published before (backend type and
   * data, with the VTEP MAC), so a recreated device keeps its MAC.
   * Undefined when the node has none or cannot be read. `publicIP` is not
   * needed: the node is ours by name.
   */
  async previousAttrs(
    _publicIP: string | undefined,
    signal: AbortSignal,
  ): Promise<LeaseAttrs | undefined> {
    let annotations: Record<string, string>;
    try {
      const node = await this.#getNode(signal, 10_000);
      annotations = node.metadata?.annotations ?? {};
    } catch (e) {
      log.warn(
        `Cannot read earlier annotations of node "${this.nodeName}": ${
          (e as Error).message
        }`,
      );
      return undefined;
    }
    const type = annotations[this.keys.backendType];
    if (type === undefined) return undefined;
    const json = (key: string): unknown => {
      const text = annotations[key];
      if (text === undefined) return undefined;
      try {
        return JSON.parse(text);
      } catch {
        return undefined;
      }
    };
    const data = json(this.keys.backendData);
    const v6 = json(this.keys.backendV6Data);
    return {
      backendType: type,
      ...(data !== undefined && { backendData: data }),
      ...(v6 !== undefined && { backendV6Data: v6 }),
    };
  }

  /**
   * Reads our node's pod CIDRs (waiting up to `podCidrTimeoutMs` for the
   * controller manager to assign them), publishes `attrs` in the node's
   * annotations when they differ (one PATCH of the `status` subresource,
   * which also sets NetworkUnavailable=False when enabled), and returns
   * our lease.
   */
  async acquireLease(attrs: LeaseAttrs, signal: AbortSignal): Promise<Lease> {
    const config = await this.getNetworkConfig(signal);
    const timeoutMs = this.#opts.podCidrTimeoutMs ?? 30_000;
    const intervalMs = this.#opts.podCidrIntervalMs ?? 1000;
    const start = performance.now();
    let node: NodeObject;
    let waited = false;
    for (;;) {
      const left = Math.max(0, timeoutMs - (performance.now() - start));
      try {
        node = await this.#getNode(signal, left);
      } catch (e) {
        if (signal.aborted) throw e;
        if (e instanceof KubeApiError && e.status === 404) {
          throw new Error(`node "${this.nodeName}" not found`, { cause: e });
        }
        throw new Error(
          `timeout contacting kube-api, failed to get node "${this.nodeName}": ${
            (e as Error).message
          }`,
          { cause: e },
        );
      }
      if (podCidrsOf(node.spec).length > 0) break;
      if (performance.now() - start + intervalMs > timeoutMs) {
        throw new Error(`node "${this.nodeName}" pod cidr not assigned`);
      }
      if (!waited) {
        waited = true;
        log.info(
          `Waiting for node "${this.nodeName}" to be assigned a pod cidr`,
        );
      }
      await sleep(intervalMs, signal);
    }
    const cidrs = podCidrsOf(node.spec);
    const subnets = ownSubnets(this.nodeName, cidrs, config);
    if (!subnets.ok) throw new Error(subnets.reason);

    const annotations = node.metadata?.annotations ?? {};
    for (
      const [over, what] of [
        [this.keys.publicIPOverwrite, "public ip"],
        [this.keys.publicIPv6Overwrite, "public ipv6"],
      ] as const
    ) {
      const v = annotations[over];
      if (v) {
        log.info(
          `Overriding ${what} with ${quote(v)} from node annotation '${over}'`,
        );
      }
    }
    const patch = annotationPatch(annotations, attrs, this.keys);
    const body: Record<string, unknown> = {};
    if (Object.keys(patch).length > 0) {
      body.metadata = { annotations: patch };
    }
    if (this.#opts.setNodeNetworkUnavailable ?? true) {
      const cond = node.status?.conditions?.find((c) =>
        c.type === NETWORK_UP_CONDITION.type
      );
      if (
        cond?.status !== NETWORK_UP_CONDITION.status ||
        cond.reason !== NETWORK_UP_CONDITION.reason ||
        cond.message !== NETWORK_UP_CONDITION.message
      ) {
        const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
        body.status = {
          conditions: [{
            ...NETWORK_UP_CONDITION,
            lastTransitionTime: now,
            lastHeartbeatTime: now,
          }],
        };
      }
    }
    if (Object.keys(body).length > 0) {
      log.v(1, `Patching node "${this.nodeName}": ${quote(body, 1000)}`);
      try {
        await retrying(
          () =>
            this.#client.patchJson(
              `${this.#nodePath}/status`,
              body,
              "strategic",
              signal,
            ),
          { signal, deadlineMs: 30_000, what: `patch node "${this.nodeName}"` },
        );
      } catch (e) {
        if (signal.aborted) throw e;
        throw new Error(
          `failed to patch node "${this.nodeName}": ${(e as Error).message}`,
          { cause: e },
        );
      }
    } else {
      log.v(1, `Node "${this.nodeName}" already carries our annotations`);
    }

    const lease: Lease = {
      key: this.nodeName,
      ...subnets.value,
      attrs,
    };
    this.#lease = lease;
    this.#ownCidrs = cidrs;
    if (this.#table && this.#handler) {
      this.#emit(this.#table.setOwnLease(lease, performance.now()));
    }
    return lease;
  }

  /** Set once the first listing has been handed over. */
  #delivered = false;

  /**
   * Hands events to the handler. The first listing is always delivered,
   * even empty: it tells the backend the peer set is complete. Before it,
   * only `partial` batches of that listing are (not an acquireLease racing
   * the first LIST).
   */
  #emit(events: LeaseEvent[], listing: "complete" | "partial" | "" = ""): void {
    if (!this.#handler) return;
    if (listing === "partial") {
      if (events.length > 0 && !this.#delivered) this.#handler(events, true);
      return;
    }
    if (!this.#delivered && !listing) return;
    if (events.length === 0 && this.#delivered) return;
    this.#delivered = true;
    this.#handler(events);
  }

  /** Logs (once per change) when our node's pod CIDRs move under us. */
  #checkOwn(node: SlimNode): void {
    if (node.name !== this.nodeName || this.#ownCidrs === undefined) return;
    const now = node.podCIDRs.join(",");
    const before = this.#ownCidrs.join(",");
    if (now === before) return;
    this.#ownCidrs = node.podCIDRs;
    log.error(
      `Pod CIDR of node "${this.nodeName}" changed from "${before}" to "${now}"; weft keeps using "${before}" until it restarts`,
    );
  }

  /**
   * Lists and watches every Node, turning each into a lease (or a reason)
   * for the LeaseTable, and hands `handler` the resulting events. Runs
   * until `signal` aborts; API trouble is retried, never returned.
   */
  async watchLeases(handler: LeaseHandler, signal: AbortSignal): Promise<void> {
    const config = await this.getNetworkConfig(signal);
    const table = new LeaseTable(config, {
      ownKey: this.nodeName,
      noun: "node",
      // podCIDR sizes are the controller-manager's (see LeaseTable).
      lengths: "own",
      ...(this.#lease && { ownLease: this.#lease }),
    });
    this.#table = table;
    this.#handler = handler;
    this.#delivered = false;
    const keys = this.keys;
    // A node refused for its size is counted once per oversized write
    // (a new length), however often lists and events repeat it.
    const counted = new Map<string, number>();
    const toLease = (n: SlimNode) => {
      if (n.oversized && counted.get(n.name) !== n.oversized.bytes) {
        counted.set(n.name, n.oversized.bytes);
        metrics.peerObjectsOversized.inc();
      } else if (!n.oversized) counted.delete(n.name);
      return nodeToLease(n, keys, config);
    };
    const watcher = new NodeWatcher(
      this.#client,
      slimmer(keys),
      this.#opts.watch,
    );
    let first = true;
    // Leases read from the first listing as it arrived, reused by sync().
    let early = new WeakMap<SlimNode, ReturnType<typeof toLease>>();
    await watcher.run({
      listed: (nodes, at) => {
        const events: LeaseEvent[] = [];
        for (const n of nodes) {
          this.#checkOwn(n);
          const lease = toLease(n);
          early.set(n, lease);
          for (const ev of table.listed(n.name, lease, at)) events.push(ev);
        }
        this.#emit(events, "partial");
      },
      sync: (nodes, at) => {
        const listing = new Map<string, ReturnType<typeof toLease>>();
        for (const [name, n] of nodes) {
          const lease = early.get(n);
          if (lease === undefined) this.#checkOwn(n);
          listing.set(name, lease ?? toLease(n));
        }
        early = new WeakMap();
        const events = table.replaceAll(listing, at);
        if (first) {
          first = false;
          log.info(
            `Listed ${nodes.size} nodes: ${table.leases.length} peer leases, ${table.invalidCount} skipped`,
          );
        }
        this.#emit(events, "complete");
      },
      upsert: (n, at) => {
        this.#checkOwn(n);
        this.#emit(table.update(n.name, toLease(n), at));
      },
      remove: (name, at) => this.#emit(table.remove(name, at)),
    }, signal);
  }

  /**
   * Kube leases do not expire: waits for `signal`. Changes of our own pod
   * CIDR are reported by the watch.
   */
  keepLease(_lease: Lease, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      signal.addEventListener("abort", () => resolve(), { once: true });
    });
  }

  /**
   * The `node-public-ip` / `node-public-ipv6` annotations of our node: the
   * addresses a user wants used as `--public-ip` / `--public-ipv6`.
   * Throws when one is set but is not an address of its family.
   */
  async getNodePublicIPOverride(
    signal: AbortSignal = new AbortController().signal,
  ): Promise<{ ipv4?: string; ipv6?: string }> {
    const node = await this.#getNode(signal, 30_000);
    const r = nodePublicIPOverride(
      this.nodeName,
      node.metadata?.annotations ?? {},
      this.keys,
    );
    if (!r.ok) throw new Error(r.reason);
    return r.value;
  }

  /** Releases the API client. */
  close(): void {
    this.#client.close();
  }
}
