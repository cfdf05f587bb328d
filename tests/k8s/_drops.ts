/**
 * Where the kernel dropped packets during a traffic window: the drop and
 * error counters of every namespace the probes' packets cross (each
 * probe pod's, each node's) and of the whole kernel (the per-CPU input
 * backlog, the neighbour table), read before and after. A lost echo with
 * no counter moved points at the dataplane the agents program; one with
 * the input backlog's drops counted points at a machine out of CPU. The
 * probe pods' TCP retransmissions tell a TCP line delayed in the network
 * (a segment lost and sent again) from one whose probe waited for a CPU.
 *
 * @module
 */
import type { K8sCluster, PodInfo } from "./_k8s.ts";
import { execPod } from "./_k8s.ts";
import { sh } from "../_netns.ts";

/** Counter name → value. */
export type Counters = Map<string, number>;

/** Names of counters that count a packet dropped, refused or sent again. */
const DROPPY =
  /drop|discard|err|noroute|unres|fail|overflow|prune|squeeze|csum|toobig|retrans|timeout/i;

/** `/proc/net/snmp` or `/proc/net/netstat`: header and value line pairs. */
export function parseSnmp(text: string, where: string, out: Counters): void {
  const lines = text.split("\n").filter((l) => /^\w+: /.test(l));
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const names = lines[i]!.split(/\s+/);
    const values = lines[i + 1]!.split(/\s+/);
    if (names[0] !== values[0]) continue;
    const group = names[0]!.slice(0, -1);
    for (let k = 1; k < names.length; k++) {
      const v = Number(values[k]);
      if (Number.isFinite(v)) out.set(`${where} ${group}.${names[k]}`, v);
    }
  }
}

/** `/proc/net/dev`: receive and transmit errors and drops per interface. */
export function parseDev(text: string, where: string, out: Counters): void {
  for (const line of text.split("\n")) {
    const m = line.match(/^\s*([^:\s]+):\s*(.*)$/);
    if (!m) continue;
    const f = m[2]!.trim().split(/\s+/).map(Number);
    if (f.length < 12) continue;
    out.set(`${where} ${m[1]} rx_errors`, f[2]!);
    out.set(`${where} ${m[1]} rx_dropped`, f[3]!);
    out.set(`${where} ${m[1]} tx_errors`, f[10]!);
    out.set(`${where} ${m[1]} tx_dropped`, f[11]!);
  }
}

/**
 * `/proc/net/softnet_stat` (per CPU, hex: processed, dropped,
 * time_squeeze, ...) and `/proc/net/stat/arp_cache` (hex, a header line).
 */
export function parseKernel(
  softnet: string,
  arp: string,
  out: Counters,
): void {
  let dropped = 0, squeezed = 0;
  for (const line of softnet.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 3) continue;
    dropped += parseInt(f[1]!, 16);
    squeezed += parseInt(f[2]!, 16);
  }
  out.set("kernel backlog dropped", dropped);
  out.set("kernel backlog time_squeeze", squeezed);
  const [head, ...rows] = arp.trim().split("\n");
  const names = head?.trim().split(/\s+/) ?? [];
  for (const [k, name] of names.entries()) {
    let sum = 0;
    for (const row of rows) sum += parseInt(row.trim().split(/\s+/)[k]!, 16);
    out.set(`kernel arp_cache ${name}`, sum);
  }
}

/**
 * Every counter of the pods' and their nodes' namespaces and of the
 * kernel. A read that fails throws, naming the pod or node.
 */
export async function readCounters(
  c: K8sCluster,
  list: readonly PodInfo[],
): Promise<Counters> {
  const out: Counters = new Map();
  const files = ["/proc/net/snmp", "/proc/net/netstat", "/proc/net/dev"];
  const split = (text: string, where: string) => {
    const [snmp, netstat, dev] = text.split("\n--\n");
    parseSnmp(snmp ?? "", where, out);
    parseSnmp(netstat ?? "", where, out);
    parseDev(dev ?? "", where, out);
  };
  const script = files.map((f) => `cat ${f}`).join("; echo --; ");
  await Promise.all(list.map(async (p) => {
    const r = await execPod(c, p.name, ["sh", "-c", script]);
    if (r.code !== 0) throw new Error(`Counters of pod ${p.name}: ${r.stderr}`);
    split(r.stdout, podCounter(p, "").trimEnd());
    const node = c.nodes.find((n) => n.name === p.node);
    if (!node) {
      throw new Error(`Counters of node ${p.node}: not in the cluster`);
    }
    split(await node.exec(["sh", "-c", script]), p.node);
  }));
  // Through cat: Deno lets only --allow-all read /proc.
  const [softnet, arp] = await Promise.all([
    sh(["cat", "/proc/net/softnet_stat"]),
    sh(["cat", "/proc/net/stat/arp_cache"]),
  ]);
  parseKernel(softnet, arp, out);
  return out;
}

/** How much counter `name` grew from `before` to `after`. */
export function grewBy(
  before: Counters,
  after: Counters,
  name: string,
): number {
  const was = before.get(name), now = after.get(name);
  if (was === undefined || now === undefined) {
    throw new Error(`Counter "${name}" was not read before and after`);
  }
  return now - was;
}

/** The pod's counter `name` as {@linkcode readCounters} names it. */
export function podCounter(pod: PodInfo, name: string): string {
  return `pod on ${pod.node} ${name}`;
}

/** Counters that count drops and grew from `before` to `after`. */
export function dropsBetween(before: Counters, after: Counters): string[] {
  const grew: string[] = [];
  for (const [name, v] of after) {
    const was = before.get(name);
    if (was === undefined || v <= was) continue;
    if (!DROPPY.test(name.split(" ").at(-1)!)) continue;
    grew.push(`${name} +${v - was}`);
  }
  return grew.sort();
}
