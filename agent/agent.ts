/**
 * The agent's life, in flanneld's order: pick the subnet manager, read the
 * network config, choose the external interface, prepare the backend
 * (its device MAC goes into the lease), acquire the lease, write
 * subnet.env, install the traffic rules, then watch leases and reconcile
 * until a signal. SIGTERM and SIGINT stop the agent and tear nothing down:
 * the device, routes, neighbours, FDB entries, rules, annotations and the
 * etcd lease all stay, so a restart costs no packet.
 *
 * @module
 */
import type { Flags } from "./flags.ts";
import { logger, setVerbosity } from "../lib/log.ts";
import { Readiness, READY, startHealthServer } from "./health.ts";
import { keepBlackholeRoutes } from "./blackhole.ts";
import { publicIPChoice, selectExternalInterface } from "./iface.ts";
import {
  ensureSubnetEnv,
  type SubnetEnvParams,
  writeSubnetEnv,
} from "../subnet/subnet_env.ts";
import { sleep } from "../lib/retry.ts";
import { metrics } from "../lib/metrics.ts";
import { countAbortListeners } from "../lib/listeners.ts";
import { TrafficManager } from "../traffic/manager.ts";
import { openNetlink } from "../ffi/netlink.ts";
import { openMonitor } from "../ffi/monitor.ts";
import type {
  ChangeCounts,
  Netlink,
  NetlinkMonitor,
  NotificationSummary,
} from "../ffi/types.ts";
import { noChanges } from "../ffi/nlmsg.ts";
import { checkNetworkAgainstHost } from "../subnet/validate.ts";
import { createBackend, Reconciler } from "../backend/mod.ts";
import type { ChangeSource } from "../backend/mod.ts";
import type { NetworkConfig } from "../subnet/config.ts";
import { formatNet } from "../lib/ip.ts";
import type { SubnetManager } from "../subnet/lease.ts";
import { VERSION } from "../lib/version.ts";
import { RunPermissionError } from "../lib/command.ts";
import { claimProcessTrust } from "../lib/exact_trust.ts";

const log = logger("main");

/** An error that ends the agent with a message and exit code 1. */
export class FatalError extends Error {
  override readonly name = "FatalError";
}

/**
 * Runs a backend's start-up step (extension's PreStartup and PostStartup
 * commands, WireGuard's key and device in `prepare`); a failure there
 * ends the agent with its one-line message rather than a stack trace.
 */
async function fatalOnFailure<T>(step: () => Promise<T> | T): Promise<T> {
  try {
    return await step();
  } catch (e) {
    if (e instanceof RunPermissionError || !(e instanceof Error)) throw e;
    throw new FatalError(e.message);
  }
}

/** The subnet manager's optional extras, which only the kube one has. */
interface Manager extends SubnetManager {
  close?(): void;
  getNodePublicIPOverride?(
    signal: AbortSignal,
  ): Promise<{ ipv4?: string; ipv6?: string }>;
}

/**
 * The chosen subnet manager; only its module is loaded (the other one and
 * its client are dead weight in this process).
 */
async function subnetManager(
  flags: Flags,
  signal: AbortSignal,
): Promise<Manager> {
  if (flags.kubeSubnetMgr) {
    const { KubeSubnetManager } = await import("../subnet/kube/manager.ts");
    return await KubeSubnetManager.create(flags, signal);
  }
  const { EtcdSubnetManager } = await import("../subnet/etcd/manager.ts");
  const tls = {
    ...(flags.etcdCafile && { caFile: flags.etcdCafile }),
    ...(flags.etcdCertfile && { certFile: flags.etcdCertfile }),
    ...(flags.etcdKeyfile && { keyFile: flags.etcdKeyfile }),
  };
  return new EtcdSubnetManager({
    endpoints: flags.etcdEndpoints,
    prefix: flags.etcdPrefix,
    ...(Object.keys(tls).length > 0 && { tls }),
    ...(flags.etcdUsername && { username: flags.etcdUsername }),
    ...(flags.etcdPassword && { password: flags.etcdPassword }),
    ...(flags.allowTokenOverHttp && { allowCredentialsOverHttp: true }),
    subnetFile: flags.subnetFile,
    renewMarginMinutes: flags.subnetLeaseRenewMargin,
    ...(flags.watchIdleTimeout > 0 &&
      { watchIdleTimeoutMs: flags.watchIdleTimeout * 1000 }),
  });
}

/**
 * How long a stop waits for the components to wind down. Each aborts its
 * I/O and kills its commands on the signal, so this only bounds a bug:
 * shutdown must never hang a node's rollout.
 */
const STOP_GRACE_MS = 5_000;

/** Waits for `tasks` to settle, but at most `ms`. */
async function settleWithin(tasks: Promise<unknown>[], ms: number) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  const settled = await Promise.race([
    Promise.allSettled(tasks).then(() => true),
    late,
  ]);
  clearTimeout(timer);
  if (!settled) {
    log.warn(`A component did not stop within ${ms} ms; exiting anyway`);
  }
}

/**
 * Checks subnet.env every `periodMs` until `signal` aborts and puts it
 * back if someone deleted or changed it; a failure (read-only
 * `/run/flannel`) makes the node unready, naming the file, and is
 * retried. Never rejects.
 */
async function keepSubnetEnv(
  path: string,
  params: SubnetEnvParams,
  periodMs: number,
  report: (ready: boolean, detail?: string) => void,
  signal: AbortSignal,
): Promise<void> {
  let lastError = "";
  while (!signal.aborted) {
    const slept = await sleep(periodMs, signal).then(() => true, () => false);
    if (!slept) return;
    try {
      if (await ensureSubnetEnv(path, params)) {
        log.warn(`${path} was missing or changed: wrote it again`);
      }
      if (lastError !== "") log.info(`${path} is in place again`);
      lastError = "";
      report(true, path);
    } catch (e) {
      const msg = (e as Error).message;
      if (msg !== lastError) log.error(msg);
      lastError = msg;
      report(false, msg);
    }
  }
}

/** How long after our own kernel writes their notifications are echoes. */
const ECHO_MS = 250;

/** The devices whose changes wake a pass (see {@linkcode changeSource}). */
export interface WatchedDevices {
  /** Overlay devices (flannel.1, flannel-v6.1): everything on them is ours. */
  readonly overlay: ReadonlySet<number>;
  /** The external interface: its links, addresses and routes. */
  readonly external: number;
}

/**
 * Turns the kernel monitor into the reconciler's change source. It wakes
 * the reconciler for anything on the overlay devices, for link, address
 * and route changes on the external interface, and for any route
 * deletion. Pod churn (veths coming and going, ARP on cni0) and the
 * external interface's own neighbour states (ARP and NDP of the
 * underlay, which change with every peer's traffic) are ignored, so a
 * busy node does not spin passes.
 *
 * Notifications right after our own writes are echoes of them: waking a
 * full pass for each would stall the next lease event behind a pass over
 * thousands of peers. A deletion is only an echo if we deleted something.
 *
 * It is quiet (see {@linkcode ChangeSource.quiet}) while nothing but
 * echoes arrived since it was last asked, and while it hears everything:
 * after an overrun or once the monitor fails, it never is. A wake-up
 * counts as echoes only when it came within {@linkcode ECHO_MS} of our
 * last write, changed no link or address of ours, deleted no route
 * elsewhere, and held no more notifications of each kind on our devices
 * (route, neighbour, FDB entry; added or deleted) than our writes of that
 * kind not yet matched by earlier notifications. Anyone else's change on
 * our devices in that window adds a notification our writes do not
 * account for, and the next period runs a full pass. (A write the kernel takes without a
 * notification, because the entry was already so, leaves one unmatched
 * until the window closes; a foreign change of the same kind on our
 * devices within that window would pass for its echo, and waits for the
 * full pass at least every ten minutes.)
 */
export function changeSource(
  monitor: NetlinkMonitor,
  watched: () => WatchedDevices,
  rec: Pick<Reconciler, "lastWrite" | "writes">,
): ChangeSource {
  let heard = true;
  let deaf = false;
  // Our writes already matched by notifications (or given up on).
  let matched: ChangeCounts = rec.writes;
  /** Whether `s` is nothing but echoes of writes not yet matched. */
  const onlyEchoes = (
    s: NotificationSummary,
    { overlay, external }: WatchedDevices,
    now: number,
  ): boolean => {
    const writes = rec.writes;
    if (now - rec.lastWrite.any > ECHO_MS) {
      matched = writes;
      return false;
    }
    const ours = noChanges();
    for (const [index, c] of s.byIndex) {
      const onOverlay = overlay.has(index);
      if (!onOverlay && index !== external) continue;
      for (const k of ECHO_KINDS) {
        // The external interface's neighbour states are nobody's writes.
        if (!onOverlay && (k.endsWith("Neigh") || k.endsWith("Fdb"))) continue;
        ours[k] += c[k];
      }
      if (c.newLink + c.delLink + c.newAddr + c.delAddr > 0) return false;
    }
    // A route deleted elsewhere: not ours.
    if (s.delRoute > ours.delRoute) return false;
    if (ECHO_KINDS.some((k) => ours[k] > writes[k] - matched[k])) {
      matched = writes;
      return false;
    }
    const next = { ...matched };
    for (const k of ECHO_KINDS) next[k] += ours[k];
    matched = next;
    return true;
  };
  return {
    async next() {
      for (;;) {
        let s;
        try {
          s = await monitor.next();
        } catch (e) {
          deaf = true;
          throw e;
        }
        if (s.overrun) {
          heard = true;
          // Whatever changed meanwhile is unknown: the pass this wakes
          // compares everything with the kernel.
          metrics.netlinkOverruns.inc();
          log.warn(
            "Kernel notifications overran the socket (ENOBUFS): resyncing with a full pass",
          );
          return s;
        }
        const now = performance.now();
        const devices = watched();
        const { overlay, external } = devices;
        const dels = s.delLink + s.delAddr + s.delNeigh + s.delFdb;
        const onOurs = s.indexes.some((i) =>
          i === external || overlay.has(i)
        ) ||
          s.neighIndexes.some((i) => overlay.has(i));
        const del = s.delRoute > 0 || (onOurs && dels > 0);
        if (!del && !onOurs) continue;
        if (onlyEchoes(s, devices, now)) continue;
        heard = true;
        if (del && now - rec.lastWrite.del > ECHO_MS) return s;
        if (onOurs && now - rec.lastWrite.any > ECHO_MS) return s;
      }
    },
    close: () => {
      deaf = true;
      monitor.close();
    },
    quiet: () => {
      const quiet = !heard && !deaf;
      heard = false;
      return quiet;
    },
  };
}

/** The notifications our own writes cause (see {@linkcode changeSource}). */
const ECHO_KINDS = [
  "newRoute",
  "delRoute",
  "newNeigh",
  "delNeigh",
  "newFdb",
  "delFdb",
] as const satisfies readonly (keyof ChangeCounts)[];

/**
 * Heap growth since the last collection that makes the next pass collect.
 * A pass over 1000 peers leaves several MiB, one over 5000 tens of MiB,
 * so large clusters collect after every pass; one over 100 peers leaves a
 * few hundred KiB, and a full collection after each of its passes was most
 * of weft's idle CPU.
 */
const GC_GROWTH_BYTES = 8 << 20;

/**
 * Time since the last full collection after which the next check collects,
 * if the heap grew by {@linkcode GC_INTERVAL_GROWTH_BYTES}; a timer of the
 * same period checks. Objects that outlive the 1 MiB young generation wait
 * in the old one for a major collection, and some hold native memory V8
 * does not count (buffers of the runtime's resources): with no pass to
 * collect after, weft's RSS grew by tens of MiB over minutes of churn and
 * levelled off only when V8 at last collected on its own
 * (bench/results/footprint.md).
 */
const GC_INTERVAL_MS = 60_000;

/**
 * Heap growth below which the minute's collection waits for the next
 * minute: an idle agent's heap grows slowly, and a full collection on one
 * thread is a good part of its idle CPU; under churn the heap grows by
 * more.
 */
const GC_INTERVAL_GROWTH_BYTES = 1 << 20;
let heapAfterGc = 0;
// The first minute, start-up and the first sync included, collects only
// on growth, as before there was an interval.
let lastGcAt = performance.now();

/**
 * Whether a full collection is due, `sinceMs` after the last one with the
 * heap grown by `grownBytes` since.
 */
export function collectionDue(sinceMs: number, grownBytes: number): boolean {
  // A tenth of slack: the timer's own ticks are one period apart give or
  // take its jitter, and a tick a millisecond early must not skip one.
  const minute = sinceMs >= GC_INTERVAL_MS * 0.9 &&
    grownBytes >= GC_INTERVAL_GROWTH_BYTES;
  return minute || grownBytes >= GC_GROWTH_BYTES;
}

/**
 * A full V8 collection, when the runtime exposes one (`--expose-gc` in
 * deploy/v8-flags.txt, which `deno task start`, `deno task compile` and
 * the image use) when {@linkcode collectionDue}; nothing otherwise.
 */
function collectGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) return;
  const now = performance.now();
  const grown = Deno.memoryUsage().heapUsed - heapAfterGc;
  if (!collectionDue(now - lastGcAt, grown)) return;
  gc();
  heapAfterGc = Deno.memoryUsage().heapUsed;
  lastGcAt = now;
}

/** Gateways of the main table's default routes, both families. */
function defaultGateways(nl: Netlink): string[] {
  const out: string[] = [];
  for (const family of [4, 6] as const) {
    try {
      for (const r of nl.routeList({ family })) {
        if ((r.dst === "0.0.0.0/0" || r.dst === "::/0") && r.gw) {
          out.push(r.gw);
        }
      }
    } catch (e) {
      log.warn(`Cannot list IPv${family} routes: ${(e as Error).message}`);
    }
  }
  return out;
}

function sysctl(path: string, value: string): void {
  try {
    Deno.writeTextFileSync(path, value);
  } catch (e) {
    log.warn(`Cannot write ${value} to ${path}: ${(e as Error).message}`);
  }
}

function logConfig(config: NetworkConfig): void {
  if (config.backendDefaulted) {
    log.warn('Network config has no Backend type: using "vxlan"');
  }
  log.info(
    `Network config: ${
      [
        config.network && `Network=${formatNet(config.network)}`,
        config.ipv6Network && `IPv6Network=${formatNet(config.ipv6Network)}`,
        `Backend=${config.backend.type}`,
      ].filter(Boolean).join(" ")
    }`,
  );
}

/**
 * Runs the agent until `signal` aborts. Resolves when it stopped cleanly;
 * rejects with the reason when it cannot go on (the caller logs it and
 * exits 1 so the supervisor restarts the agent).
 */
export async function runAgent(
  flags: Flags,
  signal: AbortSignal,
): Promise<void> {
  setVerbosity(flags.v);
  log.info(`weft ${VERSION} (flanneld-compatible) starting`);
  if (flags.vmodule || flags.logBacktraceAt) {
    log.info(
      "-vmodule and -log_backtrace_at are accepted for flanneld compatibility and ignored (-v applies to every file)",
    );
  }
  // Before any TLS connection: the process's root store can still become
  // exactly the API server's (or etcd's) CA (lib/exact_trust.ts).
  const notFetch = claimProcessTrust();
  if (notFetch) {
    log.info(`HTTPS goes through node:https (exact CA trust): ${notFetch}`);
  }
  const readiness = new Readiness();
  const setLease = readiness.register(READY.lease);
  const setDevice = readiness.register(READY.device);
  const setPeers = readiness.register(READY.peers);
  const setEnv = readiness.register(READY.subnetEnv);
  const setRules = readiness.register(READY.rules);
  const health = startHealthServer({
    hostname: flags.healthzIP,
    port: flags.healthzPort,
    readiness,
    signal,
  });

  using nl = openNetlink();
  const sm = await subnetManager(flags, signal);
  try {
    const config = await sm.getNetworkConfig(signal);
    logConfig(config);

    let { publicIP, publicIPv6 } = flags;
    if (sm.getNodePublicIPOverride) {
      const o = await sm.getNodePublicIPOverride(signal);
      if (o.ipv4) log.info(`Using node-public-ip annotation: ${o.ipv4}`);
      if (o.ipv6) log.info(`Using node-public-ipv6 annotation: ${o.ipv6}`);
      ({ publicIP, publicIPv6 } = publicIPChoice(flags, o));
    }
    const ext = selectExternalInterface(nl, {
      iface: flags.iface,
      ifaceRegex: flags.ifaceRegex,
      ifaceCanReach: flags.ifaceCanReach,
      publicIP,
      publicIPv6,
      enableIPv4: config.enableIPv4,
      enableIPv6: config.enableIPv6,
    });
    if (!ext.ok) throw new FatalError(ext.reason);
    const e = ext.value;
    const hostOk = checkNetworkAgainstHost(config, {
      addrs: [e.ipv4, e.ipv6, e.publicIP, e.publicIPv6].filter(
        (a): a is string => a !== undefined,
      ),
      gateways: defaultGateways(nl),
    });
    if (!hostOk.ok) throw new FatalError(hostOk.reason);
    const backend = createBackend(nl, config, {
      index: e.index,
      name: e.name,
      mtu: e.mtu,
      ...(e.ipv4 !== undefined && { ifaceAddr: e.ipv4 }),
      ...(e.ipv6 !== undefined && { ifaceV6Addr: e.ipv6 }),
      ...(e.publicIP !== undefined && { publicIP: e.publicIP }),
      ...(e.publicIPv6 !== undefined && { publicIPv6: e.publicIPv6 }),
    }, { sysctl });
    if (!backend.ok) throw new FatalError(backend.reason);

    const previous = await sm.previousAttrs(
      config.enableIPv4 ? e.publicIP : e.publicIPv6,
      signal,
    );
    await fatalOnFailure(() => backend.value.setup?.(signal));
    const attrs = await fatalOnFailure(() => backend.value.prepare(previous));
    const lease = await sm.acquireLease(attrs, signal);
    setLease(true, `lease ${lease.subnet ?? lease.ipv6Subnet}`);
    log.info(
      `Acquired lease: ${
        [lease.subnet, lease.ipv6Subnet].filter(Boolean).join(", ")
      }`,
    );
    const network = backend.value.start(lease);
    await fatalOnFailure(() => network.started);
    const rec = new Reconciler(nl, network.families, {
      ownKey: lease.key,
      backendType: backend.value.type,
      periodMs: flags.reconcilePeriod * 1000,
      afterPass: collectGarbage,
    });

    const envParams = {
      ...(config.network && lease.subnet &&
        { network: config.network, subnet: lease.subnet }),
      ...(config.ipv6Network && lease.ipv6Subnet &&
        { ipv6Network: config.ipv6Network, ipv6Subnet: lease.ipv6Subnet }),
      mtu: network.mtu,
      ipMasq: flags.ipMasq,
    };
    await writeSubnetEnv(flags.subnetFile, envParams);
    setEnv(true, flags.subnetFile);
    log.info(`Wrote ${flags.subnetFile} (MTU ${network.mtu})`);

    const traffic = new TrafficManager({
      spec: {
        ipMasq: flags.ipMasq,
        forwardRules: flags.iptablesForwardRules,
        randomFully: !flags.ipMasqFullyRandomDisable,
        ...(config.network && lease.subnet && {
          ipv4: { network: formatNet(config.network), subnet: lease.subnet },
        }),
        ...(config.ipv6Network && lease.ipv6Subnet && {
          ipv6: {
            network: formatNet(config.ipv6Network),
            subnet: lease.ipv6Subnet,
          },
        }),
      },
      nftables: config.enableNFTables,
      resyncSeconds: flags.iptablesResync,
      onState: (ready, detail) => setRules(ready, detail),
    });

    // Readiness follows the reconciler after each pass and event batch:
    // this node's own device, and the cluster's state taken in once.
    // Failing peers are reported, never unready (see health.ts).
    const refresh = () => {
      const planned = network.families.every((f) =>
        rec.plan(f.family) !== undefined
      );
      setDevice(planned, planned ? "ok" : "device not set up yet");
      const failing = rec.failing();
      setPeers(
        rec.synced,
        rec.synced
          ? `${rec.peerCount} peer(s), ${failing.length} failing`
          : "waiting for the first listing of peers and a full pass",
      );
      readiness.inform(
        "failing peers",
        failing.slice(0, 20).map((p) =>
          `"${p.key}" (IPv${p.family}): ${p.error}`
        ).join("; ") +
          (failing.length > 20 ? `; and ${failing.length - 20} more` : ""),
      );
    };

    let monitor: NetlinkMonitor | undefined;
    try {
      monitor = openMonitor();
    } catch (err) {
      log.warn(
        `Kernel notifications unavailable, relying on the ${flags.reconcilePeriod}s timer: ${
          (err as Error).message
        }`,
      );
    }
    // The external interface's index as of the last pass: a recreated
    // interface has a new one (the backend looks it up by name).
    const watched = (): WatchedDevices => {
      const overlay = new Set<number>();
      let external = e.index;
      for (const f of network.families) {
        const plan = rec.plan(f.family);
        if (plan?.deviceIndex !== undefined) overlay.add(plan.deviceIndex);
        if (plan) external = plan.externalIndex;
      }
      return { overlay, external };
    };

    // Our own stop (a component failed) or the caller's (a signal, which
    // may already have fired while we were acquiring the lease).
    const stop = new AbortController();
    const listeners = countAbortListeners(stop.signal);
    // Looked at when /healthz, /readyz or /metrics is asked, not on a
    // timer: an idle agent does not wake up for it.
    refresh();
    readiness.onRead(() => {
      refresh();
      metrics.heapUsed.set(Deno.memoryUsage().heapUsed);
      metrics.runSignalListeners.set(listeners());
    });
    const onAbort = () => stop.abort();
    if (signal.aborted) stop.abort();
    else signal.addEventListener("abort", onAbort, { once: true });
    // Passes collect after themselves; this bounds the time between
    // collections when there are none (quiet kernel, churn by events).
    const gcTimer = setInterval(collectGarbage, GC_INTERVAL_MS);
    const tasks = [
      sm.watchLeases((events, partial) => {
        rec.handle(events, partial);
        network.onLeases?.(events);
        refresh();
      }, stop.signal),
      rec.run(stop.signal, monitor && changeSource(monitor, watched, rec)),
      traffic.run(stop.signal),
      keepSubnetEnv(
        flags.subnetFile,
        envParams,
        flags.iptablesResync * 1000,
        setEnv,
        stop.signal,
      ),
      sm.keepLease(lease, stop.signal),
      ...(flags.ipBlackholeRoute
        ? [keepBlackholeRoutes(
          nl,
          [lease.subnet, lease.ipv6Subnet].filter((s) => s !== undefined),
          flags.iptablesResync,
          stop.signal,
        )]
        : []),
    ];
    try {
      // The first task to fail ends the agent; a clean stop ends them all.
      await Promise.race(tasks.map((t) =>
        t.then(() => {
          if (!stop.signal.aborted) {
            throw new FatalError("A component stopped unexpectedly");
          }
        })
      ));
    } catch (err) {
      stop.abort();
      await settleWithin(tasks, STOP_GRACE_MS);
      throw err;
    } finally {
      clearInterval(gcTimer);
      signal.removeEventListener("abort", onAbort);
    }
    await settleWithin(tasks, STOP_GRACE_MS);
    log.info("Stopped; the dataplane is left in place");
  } finally {
    sm.close?.();
    await health?.shutdown();
  }
}
