/**
 * Prometheus metrics in the text exposition format, with no dependency:
 * counters, gauges and histograms, optionally with labels. One registry
 * per process; `/metrics` renders it.
 *
 * @module
 */

type Labels = Record<string, string>;

function labelKey(labels: Labels | undefined): string {
  if (!labels) return "";
  const parts = Object.keys(labels).sort().map((k) =>
    `${k}="${
      String(labels[k]).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(
        /\n/g,
        "\\n",
      )
    }"`
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}

interface Metric {
  readonly name: string;
  render(): string;
}

/** A monotonically increasing count. */
export class Counter implements Metric {
  readonly #values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}
  /** Adds `n` (default 1). */
  inc(labels?: Labels, n = 1): void {
    const k = labelKey(labels);
    this.#values.set(k, (this.#values.get(k) ?? 0) + n);
  }
  /** Current value, for tests and logs. */
  get(labels?: Labels): number {
    return this.#values.get(labelKey(labels)) ?? 0;
  }
  render(): string {
    const lines = [
      `# HELP ${this.name} ${this.help}`,
      `# TYPE ${this.name} counter`,
    ];
    if (this.#values.size === 0) lines.push(`${this.name} 0`);
    for (const [k, v] of this.#values) lines.push(`${this.name}${k} ${v}`);
    return lines.join("\n");
  }
}

/** A value that goes up and down. */
export class Gauge implements Metric {
  readonly #values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}
  set(value: number, labels?: Labels): void {
    this.#values.set(labelKey(labels), value);
  }
  get(labels?: Labels): number {
    return this.#values.get(labelKey(labels)) ?? 0;
  }
  render(): string {
    const lines = [
      `# HELP ${this.name} ${this.help}`,
      `# TYPE ${this.name} gauge`,
    ];
    if (this.#values.size === 0) lines.push(`${this.name} 0`);
    for (const [k, v] of this.#values) lines.push(`${this.name}${k} ${v}`);
    return lines.join("\n");
  }
}

/** A distribution of observations in fixed buckets (seconds by default). */
export class Histogram implements Metric {
  readonly #counts: number[];
  #sum = 0;
  #count = 0;
  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: readonly number[] = [
      0.001,
      0.005,
      0.01,
      0.025,
      0.05,
      0.1,
      0.25,
      0.5,
      1,
      2.5,
      5,
      10,
    ],
  ) {
    this.#counts = buckets.map(() => 0);
  }
  observe(value: number): void {
    this.#sum += value;
    this.#count++;
    for (const [i, b] of this.buckets.entries()) {
      if (value <= b) this.#counts[i]!++;
    }
  }
  get count(): number {
    return this.#count;
  }
  render(): string {
    const lines = [
      `# HELP ${this.name} ${this.help}`,
      `# TYPE ${this.name} histogram`,
    ];
    for (const [i, b] of this.buckets.entries()) {
      lines.push(`${this.name}_bucket{le="${b}"} ${this.#counts[i]}`);
    }
    lines.push(`${this.name}_bucket{le="+Inf"} ${this.#count}`);
    lines.push(`${this.name}_sum ${this.#sum}`);
    lines.push(`${this.name}_count ${this.#count}`);
    return lines.join("\n");
  }
}

/** A set of metrics rendered together. */
export class Registry {
  readonly #metrics: Metric[] = [];
  counter(name: string, help: string): Counter {
    return this.#add(new Counter(name, help));
  }
  gauge(name: string, help: string): Gauge {
    return this.#add(new Gauge(name, help));
  }
  histogram(name: string, help: string, buckets?: number[]): Histogram {
    return this.#add(new Histogram(name, help, buckets));
  }
  #add<M extends Metric>(m: M): M {
    this.#metrics.push(m);
    return m;
  }
  /** The whole registry in Prometheus text format. */
  render(): string {
    return this.#metrics.map((m) => m.render()).join("\n") + "\n";
  }
}

/** The process-wide metrics of weft. Names are stable API. */
export const metrics = (() => {
  const r = new Registry();
  return {
    registry: r,
    peersProgrammed: r.gauge(
      "weft_peers_programmed",
      "Peers whose kernel entries are all in place",
    ),
    peersFailing: r.gauge(
      "weft_peers_failing",
      "Peers whose kernel entries the last attempt failed to program (not a readiness failure)",
    ),
    peersWaitingForeignRoute: r.gauge(
      "weft_peers_waiting_foreign_route",
      "Peers whose route waits because a route weft did not create holds its destination",
    ),
    peersInvalid: r.counter(
      "weft_peers_invalid_total",
      "Peer leases skipped because they were invalid",
    ),
    peersRefused: r.counter(
      "weft_peers_refused_total",
      "Peer leases refused, by reason (invalid, subnet_length, overlap, duplicate_mac, duplicate_public_ip, duplicate_public_key)",
    ),
    peerObjectsOversized: r.counter(
      "weft_peer_objects_oversized_total",
      "Peer objects refused for their size alone (an etcd value or a Node past its bound), once per write",
    ),
    reconcilePasses: r.counter(
      "weft_reconcile_passes_total",
      "Reconcile passes run",
    ),
    reconcileQuietSkips: r.counter(
      "weft_reconcile_quiet_skips_total",
      "Periodic reconcile passes skipped: the kernel reported no change to weft's objects since the last",
    ),
    reconcileDuration: r.histogram(
      "weft_reconcile_duration_seconds",
      "Duration of reconcile passes",
    ),
    reconcileRepairs: r.counter(
      "weft_reconcile_repairs_total",
      "Kernel operations applied by reconcile passes, by kind",
    ),
    kernelErrors: r.counter(
      "weft_kernel_errors_total",
      "Kernel operations that failed, by operation",
    ),
    netlinkOverruns: r.counter(
      "weft_netlink_overruns_total",
      "Kernel notification overruns (ENOBUFS), each answered by a full reconcile pass",
    ),
    watchRestarts: r.counter(
      "weft_watch_restarts_total",
      "Watches restarted after an error or timeout",
    ),
    relists: r.counter(
      "weft_relists_total",
      "Full relists of leases (410 Gone, compaction, fallback)",
    ),
    heapUsed: r.gauge(
      "weft_process_heap_used_bytes",
      "V8 heap in use (Deno.memoryUsage().heapUsed)",
    ),
    runSignalListeners: r.gauge(
      "weft_run_signal_abort_listeners",
      "Abort listeners live on the agent's run signal (steady growth is a leak)",
    ),
    eventToKernel: r.histogram(
      "weft_event_to_kernel_seconds",
      "Time from a peer lease event to its kernel entries being programmed",
    ),
    extensionCommandFailures: r.counter(
      "weft_extension_command_failures_total",
      "Extension backend commands that failed, passed their deadline or could not run, by command (SubnetAddCommand, ...)",
    ),
  };
})();
