/**
 * What pods do on a cluster, as steps of the cluster tier: cluster DNS
 * (CoreDNS deployed from tests/k8s/coredns.yaml, asked over UDP and TCP),
 * UDP between pods, a NodePort, a hostPort, a large TCP transfer and
 * full-size packets with DF set, each across nodes. The three echo pods
 * a, b and d run on three different nodes: a asks, b serves, and CoreDNS
 * runs on d's node, so every answer crosses the overlay.
 *
 * Where busybox in the pod cannot do the job (it has no UDP client or
 * server besides nslookup, and its ping cannot set DF), the node's own tool
 * runs inside the pod's network namespace (`nsenter --net`), so the packets
 * still leave from the pod's eth0.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import {
  CLUSTER_DNS,
  execPod,
  type K8sCluster,
  type K8sNode,
  type PodInfo,
  pods,
  rollout,
  servicePod,
  until,
} from "./_k8s.ts";
import {
  dnsAnswerA,
  dnsQueryA,
  parseOdHex,
  printfEscaped,
} from "./_dns_wire.ts";

/** The node a pod runs on. */
export function nodeOf(c: K8sCluster, name: string): K8sNode {
  const n = c.nodes.find((n) => n.name === name);
  if (!n) throw new Error(`No node ${name}`);
  return n;
}

/** The path, on the pod's node, of the network namespace holding `ip`. */
async function podNetns(node: K8sNode, ip: string): Promise<string> {
  const found = await node.exec([
    "sh",
    "-c",
    `for n in $(ls /run/netns); do
  ip -n "$n" -4 -o addr show dev eth0 2>/dev/null | grep -q " $0/" && echo "/run/netns/$n"
done; true`,
    ip,
  ]);
  const paths = found.split("\n").filter((l) => l !== "");
  if (paths.length !== 1) {
    throw new Error(
      `${paths.length} network namespaces on ${node.name} hold ${ip}: ${paths}`,
    );
  }
  return paths[0]!;
}

/** Runs a node's `cmd` in the network namespace of the pod `p`. */
async function inPodNetns(c: K8sCluster, p: PodInfo, cmd: string[]) {
  const node = nodeOf(c, p.node);
  return node.tryExec([
    "nsenter",
    `--net=${await podNetns(node, p.ip)}`,
    ...cmd,
  ]);
}

/** `kubectl exec` that throws unless the command exits 0. */
async function mustExec(c: K8sCluster, pod: string, script: string) {
  const r = await execPod(c, pod, ["sh", "-c", script]);
  if (r.code !== 0) {
    throw new Error(`${pod}: "${script}" exited ${r.code}: ${r.stderr}`);
  }
  return r.stdout;
}

/** The pairs (name, address) busybox nslookup printed, and its server. */
function parseNslookup(text: string): { server: string; answers: string[] } {
  const server = text.match(/^Server:\s+(\S+)/m)?.[1] ?? "";
  const answers = [...text.matchAll(/^Name:\s+(\S+)\s*\nAddress:\s+(\S+)/gm)]
    .map((m) => `${m[1]} ${m[2]}`);
  return { server, answers };
}

/** An A query over TCP sent from pod `from` with busybox nc, decoded. */
async function tcpLookup(c: K8sCluster, from: string, name: string) {
  const id = 1 + Math.floor(Math.random() * 0xfffe);
  const out = await mustExec(
    c,
    from,
    `printf '${
      printfEscaped(dnsQueryA(name, id))
    }' | nc -w 5 ${CLUSTER_DNS} 53 | od -An -tx1 -v`,
  );
  return dnsAnswerA(parseOdHex(out), id);
}

/**
 * Polls `url` with curl from `node` until the body is `body` (kube-proxy and
 * portmap rules may land a moment after the API says the pod is Ready).
 */
async function untilServed(node: K8sNode, url: string, body: string) {
  let last = "";
  await until(`"${body}" from ${url} on ${node.name}`, 30_000, async () => {
    const r = await node.tryExec(["curl", "-s", "--max-time", "3", url]);
    last = `exit ${r.code}: ${r.stdout}${r.stderr}`;
    return r.stdout.trim() === body ? true : undefined;
  }).catch((e) => {
    throw new Error(`${(e as Error).message}; last answer ${last}`);
  });
}

/** The UDP port of the echo server run in a pod's namespace. */
const UDP_PORT = 9053;
/** The hostPort of the pod the hostPort step runs. */
const HOST_PORT = 18080;

/**
 * A UDP echo server for the node's deno: answers every datagram with its
 * payload, prints the first sender's address, and exits 3 s after it (or
 * fails after 60 s with none).
 */
const UDP_ECHO = `
const s = Deno.listenDatagram({ hostname: "0.0.0.0", port: ${UDP_PORT}, transport: "udp" });
setTimeout(() => Deno.exit(2), 60_000);
let first = true;
for (;;) {
  const [data, addr] = await s.receive();
  await s.send(data, addr);
  if (first) { first = false; console.log(addr.hostname); setTimeout(() => Deno.exit(0), 3_000); }
}`;

/** A UDP client: sends Deno.args[1] to Deno.args[0] every 500 ms, prints the reply. */
const UDP_SEND = `
const [dst, text] = Deno.args;
const s = Deno.listenDatagram({ hostname: "0.0.0.0", port: 0, transport: "udp" });
setTimeout(() => Deno.exit(2), 30_000);
const send = () => s.send(new TextEncoder().encode(text), { transport: "udp", hostname: dst, port: ${UDP_PORT} });
send();
setInterval(send, 500);
const [data, from] = await s.receive();
console.log(from.hostname + " " + new TextDecoder().decode(data));
Deno.exit(0);`;

/**
 * Registers the steps; `echo` is the echo Deployment's three pods, one per
 * node.
 */
export async function podPathSteps(
  t: Deno.TestContext,
  c: K8sCluster,
  echo: readonly PodInfo[],
): Promise<void> {
  const [a, b, d] = echo as [PodInfo, PodInfo, PodInfo];
  assertEquals(new Set([a.node, b.node, d.node]).size, 3);
  // A NodePort Service backed by b only: its name is what DNS must resolve,
  // its nodePort what another node must forward.
  const far = await servicePod<
    { spec: { clusterIP: string; ports: { nodePort: number }[] } }
  >(c, b.name, "far", ["type: NodePort"]);
  const kubernetes = await c.getJson<{ spec: { clusterIP: string } }>([
    "service",
    "kubernetes",
  ]);

  await t.step(
    "CoreDNS applied from tests/k8s/coredns.yaml runs on a third node behind the kubelet's clusterDNS",
    async () => {
      const yaml = await Deno.readTextFile(
        new URL("coredns.yaml", import.meta.url),
      );
      await c.kubectl(["apply", "-f", "-"], yaml);
      // Pinned to d's node: neither the asking pod's nor the answer's.
      await c.kubectl([
        "-n",
        "kube-system",
        "patch",
        "deployment",
        "coredns",
        "-p",
        JSON.stringify({
          spec: {
            template: {
              spec: { nodeSelector: { "kubernetes.io/hostname": d.node } },
            },
          },
        }),
      ]);
      await rollout(c, "kube-system", "deployment/coredns", 120);
      const dns = await until("one CoreDNS pod, Ready", 60_000, async () => {
        const p = await pods(c, "k8s-app=kube-dns", "kube-system");
        return p.length === 1 && p[0]!.ready ? p[0] : undefined;
      });
      assertEquals(dns.node, d.node);
      const svc = await c.getJson<{ spec: { clusterIP: string } }>([
        "-n",
        "kube-system",
        "service",
        "kube-dns",
      ]);
      assertEquals(svc.spec.clusterIP, CLUSTER_DNS);
      const log = await c.kubectl(["-n", "kube-system", "logs", dns.name]);
      assert(log.includes("CoreDNS-1.15.0"), log);
      const conf = await mustExec(c, a.name, "cat /etc/resolv.conf");
      assert(conf.includes(`nameserver ${CLUSTER_DNS}`), conf);
      assert(conf.includes("search default.svc.cluster.local"), conf);
    },
  );

  await t.step(
    "a pod resolves kubernetes.default and a Service on another node over UDP",
    async () => {
      // The libc resolver (what programs use: the search list, ndots:5),
      // seen through the address busybox ping prints before it sends.
      for (
        const [name, ip] of [
          ["kubernetes.default", kubernetes.spec.clusterIP],
          ["far", far.spec.clusterIP],
        ]
      ) {
        const r = await until(`${name} through libc`, 30_000, async () => {
          const r = await execPod(c, a.name, [
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            name!,
          ]);
          return r.stdout.match(/^PING \S+ \(([\d.]+)\)/m)?.[1];
        });
        assertEquals(r, ip, name);
      }
      // busybox nslookup (UDP only) applies the search list only to names
      // without a dot, so the dotted short name is asked for in full.
      for (
        const [name, fqdn, ip] of [
          [
            "kubernetes.default.svc.cluster.local",
            "kubernetes.default.svc.cluster.local",
            kubernetes.spec.clusterIP,
          ],
          ["far", "far.default.svc.cluster.local", far.spec.clusterIP],
        ]
      ) {
        const r = await execPod(c, a.name, ["nslookup", "-type=a", name!]);
        const p = parseNslookup(r.stdout);
        assertEquals(p.server, CLUSTER_DNS, r.stdout);
        assertEquals(p.answers, [`${fqdn} ${ip}`], r.stdout);
      }
    },
  );

  await t.step(
    "a pod resolves kubernetes.default and a Service on another node over TCP",
    async () => {
      assertEquals(
        await tcpLookup(c, a.name, "kubernetes.default.svc.cluster.local"),
        { rcode: 0, a: [kubernetes.spec.clusterIP] },
      );
      assertEquals(
        await tcpLookup(c, a.name, "far.default.svc.cluster.local"),
        { rcode: 0, a: [far.spec.clusterIP] },
      );
      // NXDOMAIN: the zone is CoreDNS's, nothing is made up.
      assertEquals(
        await tcpLookup(c, a.name, "nosuch.default.svc.cluster.local"),
        { rcode: 3, a: [] },
      );
    },
  );

  await t.step(
    "UDP from a pod to a pod on another node comes back unchanged, unNATed",
    async () => {
      const deno = Deno.execPath();
      const payload = crypto.getRandomValues(new Uint8Array(500)).reduce(
        (s, x) => s + x.toString(16).padStart(2, "0"),
        "",
      );
      const server = inPodNetns(c, d, [
        deno,
        "eval",
        "--unstable-net",
        UDP_ECHO,
      ]);
      const client = await inPodNetns(c, a, [
        deno,
        "eval",
        "--unstable-net",
        UDP_SEND,
        d.ip,
        payload,
      ]);
      const s = await server;
      assertEquals(client.code, 0, client.stderr);
      assertEquals(s.code, 0, s.stderr);
      assertEquals(client.stdout.trim(), `${d.ip} ${payload}`);
      assertEquals(s.stdout.trim(), a.ip);
    },
  );

  await t.step(
    "a NodePort answers through a node its pod is not on",
    async () => {
      const port = far.spec.ports[0]!.nodePort;
      const via = nodeOf(c, a.node).ip;
      await untilServed(nodeOf(c, d.node), `http://${via}:${port}/`, b.name);
    },
  );

  await t.step(
    "a hostPort (the conflist's portmap) answers on its node's IP from another node",
    async () => {
      await c.kubectl(
        ["apply", "-f", "-"],
        `apiVersion: v1
kind: Pod
metadata: {name: hostport, namespace: default}
spec:
  nodeName: ${a.node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: localhost/weft-testpod:1
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{containerPort: 8080, hostPort: ${HOST_PORT}}]
`,
      );
      await c.kubectl([
        "wait",
        "--for=condition=Ready",
        "pod/hostport",
        "--timeout=120s",
      ]);
      const at = nodeOf(c, a.node).ip;
      await untilServed(
        nodeOf(c, d.node),
        `http://${at}:${HOST_PORT}/`,
        "hostport",
      );
      await c.kubectl(["delete", "pod", "hostport", "--wait=true"]);
    },
  );

  await t.step(
    "16 MiB over TCP from a pod to a pod on another node arrive with the same SHA-256",
    async () => {
      const size = 16 * 1024 * 1024;
      // The receiver's stdin stays open (sleep) so that its nc does not
      // half-close first, which would end the sender's nc early.
      await mustExec(
        c,
        d.name,
        "rm -f /tmp/recv; (sleep 120 | nc -l -p 9001 >/tmp/recv) >/dev/null 2>&1 </dev/null & echo started",
      );
      await until("the receiver to listen", 30_000, async () => {
        const r = await mustExec(c, d.name, "netstat -ltn");
        return /:9001\s/.test(r) ? true : undefined;
      });
      const sent = await mustExec(
        c,
        a.name,
        `head -c ${size} /dev/urandom >/tmp/blob && sha256sum /tmp/blob && nc -w 10 ${d.ip} 9001 </tmp/blob && rm -f /tmp/blob`,
      );
      const received = await until(
        "the receiver to finish",
        60_000,
        async () => {
          const r = await mustExec(
            c,
            d.name,
            "pidof nc >/dev/null && echo running; wc -c </tmp/recv; sha256sum /tmp/recv",
          );
          return r.startsWith("running") ? undefined : r;
        },
      );
      const [bytes, sum] = received.trim().split("\n");
      assertEquals(Number(bytes), size);
      const want = sent.split(" ")[0]!;
      assert(/^[0-9a-f]{64}$/.test(want), sent);
      assertEquals(sum?.split(" ")[0], want);
      await mustExec(c, d.name, "rm -f /tmp/recv");
    },
  );

  await t.step(
    "full-MTU packets with DF set cross nodes; one byte more is refused at the sender",
    async () => {
      const mtu = Number(
        (await mustExec(c, a.name, "cat /sys/class/net/eth0/mtu")).trim(),
      );
      assert(mtu > 1000, `MTU ${mtu}`);
      // iputils ping: -M do sets DF; 28 bytes of IPv4 and ICMP headers.
      const full = await inPodNetns(c, a, [
        "ping",
        "-M",
        "do",
        "-s",
        String(mtu - 28),
        "-c",
        "3",
        "-W",
        "2",
        d.ip,
      ]);
      assert(full.stdout.includes(`${mtu - 28}(${mtu}) bytes`), full.stdout);
      const got = full.stdout.match(/(\d+) received/)?.[1];
      assert(Number(got) > 0, `${full.stdout}${full.stderr}`);
      const over = await inPodNetns(c, a, [
        "ping",
        "-M",
        "do",
        "-s",
        String(mtu - 27),
        "-c",
        "2",
        "-W",
        "2",
        d.ip,
      ]);
      assertEquals(over.code, 1, over.stdout);
      assert(
        over.stderr.includes(`ping: local error: message too long, mtu=${mtu}`),
        over.stderr,
      );
      assert(/ 0 received/.test(over.stdout), over.stdout);
    },
  );
}
