/**
 * weft's other modes on a real cluster (tests/k8s/_k8s.ts), one cluster for
 * all of them: a dual-stack cluster (IPv6 underlay `fd00:198:18::/64`,
 * controller-manager with an IPv4 and an IPv6 cluster CIDR, Services of
 * both families), kube-proxy in nftables mode, and deploy/weft.yaml with
 * only its net-conf.json changed to `EnableIPv6`, `EnableNFTables` and the
 * host-gw backend. Checked from the outside: podCIDRs, annotations and
 * subnet.env of both families, host-gw routes, the nftables tables weft and
 * kube-proxy wrote (and no iptables chains of either), pod traffic of both
 * families across every node pair, a dual-stack Service, and no masquerade
 * of IPv6 traffic inside the cluster.
 *
 * Needs root and the binaries of `.ci/build_servers.sh --with-cluster`;
 * under `CI=true` nothing is ignored.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { gatedTest, ROOT } from "../_gate.ts";
import {
  CLUSTER,
  CLUSTER_CIDR,
  echoManifest,
  execPod,
  httpGet,
  IMAGES,
  K8sCluster,
  type K8sNode,
  manifest,
  parsePingCount,
  rollout,
  servicePod,
  until,
} from "./_k8s.ts";

const CLUSTER_CIDR_V6 = "fd00:10:244::/56";
const SERVICE_CIDRS = ["10.96.0.0/16", "fd00:10:96::/112"];
/** flanneld's nftables tables (pkg/trafficmngr/nftables). */
const FLANNEL_TABLES = {
  4: ["ip", "flannel-ipv4"],
  6: ["ip6", "flannel-ipv6"],
} as const;

/** deploy/weft.yaml with its net-conf.json switched to this file's modes. */
async function modesManifest(): Promise<string> {
  const docs = parseAllDocuments(await manifest("localhost/weft:v0.1.0"));
  const cm = docs.find((d) => d.get("kind") === "ConfigMap");
  const conf = cm?.getIn(["data", "net-conf.json"]);
  if (!cm || typeof conf !== "string") {
    throw new Error("deploy/weft.yaml has no ConfigMap with a net-conf.json");
  }
  cm.setIn(
    ["data", "net-conf.json"],
    JSON.stringify(
      {
        ...JSON.parse(conf),
        EnableIPv6: true,
        IPv6Network: CLUSTER_CIDR_V6,
        EnableNFTables: true,
        Backend: { Type: "host-gw" },
      },
      null,
      2,
    ) + "\n",
  );
  return docs.map((d) => d.toString()).join("---\n");
}

interface NodeJson {
  metadata: { name: string; annotations?: Record<string, string> };
  spec: { podCIDRs?: string[] };
}

/** A pod with its address of each family. */
interface DualPod {
  readonly name: string;
  readonly node: string;
  readonly v4: string;
  readonly v6: string;
}

async function dualPods(c: K8sCluster, selector: string): Promise<DualPod[]> {
  const list = await c.getJson<{
    items: {
      metadata: { name: string };
      spec: { nodeName?: string };
      status: { podIPs?: { ip: string }[] };
    }[];
  }>(["pods", "-l", selector]);
  return list.items.map((p) => {
    const ips = (p.status.podIPs ?? []).map((i) => i.ip);
    return {
      name: p.metadata.name,
      node: p.spec.nodeName ?? "",
      v4: ips.find((ip) => !ip.includes(":")) ?? "",
      v6: ips.find((ip) => ip.includes(":")) ?? "",
    };
  });
}

/** The routes `ip -j route show <dst>` lists in a node. */
async function routesTo(node: K8sNode, family: 4 | 6, dst: string) {
  const text = await node.exec([
    "ip",
    `-${family}`,
    "-j",
    "route",
    "show",
    dst,
  ]);
  return JSON.parse(text) as { dst: string; gateway?: string; dev: string }[];
}

/**
 * A node's iptables rules of both families as the host's iptables-save
 * prints them, and its whole nftables ruleset, where rules written by an
 * iptables-nft of another version (the weft image's) show too.
 */
async function iptablesRules(node: K8sNode): Promise<string> {
  const out = [];
  for (
    const cmd of [["iptables-save"], ["ip6tables-save"], [
      "nft",
      "list",
      "ruleset",
    ]]
  ) {
    out.push(await node.exec(cmd));
  }
  return out.join("\n");
}

await gatedTest({
  name:
    "k8s: dual stack, host-gw and nftables (weft and kube-proxy) across nodes",
  needs: [ROOT, CLUSTER],
  fn: async (t) => {
    const t0 = Date.now();
    await using c = await K8sCluster.up({
      images: IMAGES,
      log: (l) => console.log(`  ${l}`),
      clusterCidrs: [CLUSTER_CIDR, CLUSTER_CIDR_V6],
      serviceCidrs: SERVICE_CIDRS,
      underlayV6: "fd00:198:18::",
      proxyMode: "nftables",
    });
    console.log(`  cluster up in ${Date.now() - t0} ms`);
    const byName = new Map(c.nodes.map((n) => [n.name, n]));
    const nodeOf = (name: string): K8sNode => {
      const n = byName.get(name);
      if (!n) throw new Error(`No node ${name}`);
      return n;
    };

    await t.step("the DaemonSet is Ready on 3/3 nodes", async () => {
      for (const n of c.nodes) {
        assertEquals(
          (await n.tryExec(["sh", "-c", "command -v nft"])).code,
          0,
          `no nft in ${n.name}: kube-proxy's nftables mode needs it`,
        );
      }
      await c.kubectl(["apply", "-f", "-"], await modesManifest());
      await rollout(c, "kube-flannel", "daemonset/weft");
    });

    const nodes = await c.getJson<{ items: NodeJson[] }>(["nodes"]);
    const cidrs = new Map(
      nodes.items.map((n) => [n.metadata.name, n.spec.podCIDRs ?? []]),
    );

    await t.step(
      "every node has both podCIDRs, host-gw annotations of both families and a dual-stack subnet.env",
      async () => {
        for (const n of nodes.items) {
          const node = nodeOf(n.metadata.name);
          const [v4, v6] = n.spec.podCIDRs ?? [];
          assert(/^10\.244\.\d+\.0\/24$/.test(v4 ?? ""), `${node.name}: ${v4}`);
          assert(
            /^fd00:10:244:([0-9a-f]{1,2}:)?:\/64$/.test(v6 ?? ""),
            `${node.name}: ${v6}`,
          );
          const a = n.metadata.annotations ?? {};
          const k = "flannel.alpha.coreos.com/";
          // flanneld's host-gw lease has no backend data: its nil
          // json.RawMessage is published as "null" for each family.
          assertEquals(
            {
              type: a[`${k}backend-type`],
              data: a[`${k}backend-data`],
              v6data: a[`${k}backend-v6-data`],
              ip: a[`${k}public-ip`],
              ipv6: a[`${k}public-ipv6`],
              managed: a[`${k}kube-subnet-manager`],
            },
            {
              type: "host-gw",
              data: "null",
              v6data: "null",
              ip: node.ip,
              ipv6: node.ipv6,
              managed: "true",
            },
          );
          // flanneld's WriteSubnetFile: first host of each lease, both
          // families, MTU of the underlay (host-gw adds no header).
          assertEquals(
            await node.exec(["cat", "/run/flannel/subnet.env"]),
            [
              `FLANNEL_NETWORK=${CLUSTER_CIDR}`,
              `FLANNEL_SUBNET=${v4!.replace(".0/24", ".1/24")}`,
              `FLANNEL_IPV6_NETWORK=${CLUSTER_CIDR_V6}`,
              `FLANNEL_IPV6_SUBNET=${v6!.replace("::/64", "::1/64")}`,
              "FLANNEL_MTU=1500",
              "FLANNEL_IPMASQ=true",
              "",
            ].join("\n"),
          );
        }
        assertEquals(nodes.items.length, 3);
      },
    );

    await t.step(
      "host-gw routes of both families go via the peers' underlay addresses on eth0",
      async () => {
        for (const node of c.nodes) {
          for (const peer of c.nodes.filter((p) => p !== node)) {
            const [v4, v6] = cidrs.get(peer.name) ?? [];
            for (
              const [family, dst, via] of [
                [4, v4!, peer.ip],
                [6, v6!, peer.ipv6!],
              ] as const
            ) {
              const routes = await routesTo(node, family, dst);
              assertEquals(
                routes.map((r) => [r.dst, r.gateway, r.dev]),
                [[dst, via, "eth0"]],
                `${node.name} -> ${peer.name}`,
              );
            }
          }
          const links = await node.exec(["ip", "-o", "link", "show"]);
          assert(!/: flannel/.test(links), `${node.name}:\n${links}`);
        }
      },
    );

    await t.step(
      "weft's rules are flanneld's nftables tables; no iptables FLANNEL chain",
      async () => {
        for (const node of c.nodes) {
          for (const family of [4, 6] as const) {
            const [fam, table] = FLANNEL_TABLES[family];
            const net = family === 4 ? CLUSTER_CIDR : CLUSTER_CIDR_V6;
            const text = await node.exec(["nft", "list", "table", fam, table]);
            assert(text.includes("chain postrtg {"), `${node.name}:\n${text}`);
            assert(
              text.includes("type nat hook postrouting priority srcnat;"),
              text,
            );
            assert(text.includes("chain forward {"), text);
            assert(text.includes(`${fam} saddr ${net} accept`), text);
            assert(text.includes(`${fam} daddr ${net} accept`), text);
            assert(
              new RegExp(`${fam} saddr ${net} ${fam} daddr != \\S+ masquerade`)
                .test(text),
              text,
            );
          }
          const rules = await iptablesRules(node);
          assert(!rules.includes("FLANNEL"), `${node.name}:\n${rules}`);
        }
      },
    );

    await t.step(
      "kube-proxy runs in nftables mode: its kube-proxy tables, no KUBE-SERVICES chain",
      async () => {
        for (const node of c.nodes) {
          const mode = await node.exec([
            "curl",
            "-s",
            "--max-time",
            "5",
            "http://127.0.0.1:10249/proxyMode",
          ]);
          assertEquals(mode.trim(), "nftables");
          for (const fam of ["ip", "ip6"]) {
            // The kubernetes Service is IPv4 only: the ip table serves it.
            const want = fam === "ip" ? "10.96.0.1" : "chain services {";
            await until(
              `${fam} kube-proxy table on ${node.name}`,
              60_000,
              async () => {
                const r = await node.tryExec([
                  "nft",
                  "list",
                  "table",
                  fam,
                  "kube-proxy",
                ]);
                return r.code === 0 && r.stdout.includes(want)
                  ? r.stdout
                  : undefined;
              },
            );
          }
          const rules = await iptablesRules(node);
          assert(!rules.includes("KUBE-SERVICES"), `${node.name}:\n${rules}`);
        }
      },
    );

    await c.kubectl(["apply", "-f", "-"], echoManifest(3));
    await rollout(c, "default", "deployment/echo");
    const echo = await dualPods(c, "app=echo");
    assertEquals(new Set(echo.map((p) => p.node)).size, 3);
    for (const p of echo) {
      assert(p.v4 !== "" && p.v6 !== "", `${p.name}: ${p.v4} ${p.v6}`);
    }

    await t.step(
      "pods reach pods on every other node over IPv4 and IPv6 (ICMP and TCP)",
      async () => {
        const failed: string[] = [];
        let pairs = 0;
        for (const from of echo) {
          for (const to of echo.filter((p) => p.node !== from.node)) {
            for (const ip of [to.v4, to.v6]) {
              pairs++;
              const r = await execPod(c, from.name, [
                "ping",
                "-c",
                "2",
                "-W",
                "2",
                ip,
              ]);
              const tcp = await httpGet(c, from.name, ip, 8080);
              if (parsePingCount(r.stdout).received === 0 || tcp !== to.name) {
                failed.push(
                  `${from.name} (${from.node}) -> ${ip} (${to.node}): ping ${r.stdout.trim()} http ${tcp}`,
                );
              }
            }
          }
        }
        assertEquals(failed, []);
        assertEquals(pairs, 12);
      },
    );

    const [a, b] = echo as [DualPod, DualPod];

    await t.step(
      "a dual-stack Service backed by a pod on another node answers on both ClusterIPs",
      async () => {
        const svc = await servicePod<{ spec: { clusterIPs: string[] } }>(
          c,
          b.name,
          "echo-dual",
          ["ipFamilyPolicy: RequireDualStack", "ipFamilies: [IPv4, IPv6]"],
        );
        const [ip4, ip6] = svc.spec.clusterIPs;
        assert(/^10\.96\./.test(ip4 ?? ""), `${svc.spec.clusterIPs}`);
        assert(/^fd00:10:96::/.test(ip6 ?? ""), `${svc.spec.clusterIPs}`);
        assert(a.node !== b.node);
        for (const ip of [ip4!, ip6!]) {
          const body = await until(`echo-dual on ${ip}`, 30_000, async () => {
            const r = await httpGet(c, a.name, ip, 80);
            return r === b.name ? r : undefined;
          });
          assertEquals(body, b.name);
        }
      },
    );

    await t.step(
      "IPv6 inside the cluster is not masqueraded: the peer sees the pod's own address",
      async () => {
        // busybox httpd hands the client's address to CGI as REMOTE_ADDR
        // (an IPv6 one in brackets).
        const cgi = await execPod(c, b.name, [
          "sh",
          "-c",
          `mkdir -p /www/cgi-bin && printf '#!/bin/sh\\nprintf "Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n%%s\\\\n" "$REMOTE_ADDR"\\n' >/www/cgi-bin/peer && chmod +x /www/cgi-bin/peer`,
        ]);
        assertEquals(cgi.code, 0, cgi.stderr);
        // busybox wget crashes on an IPv6 literal here: nc, as httpGet().
        const r = await execPod(c, a.name, [
          "sh",
          "-c",
          `printf 'GET /cgi-bin/peer HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${b.v6} 8080`,
        ]);
        const peer = r.stdout.trim().split("\n").pop() ?? "";
        assertEquals(peer, `[${a.v6}]`, r.stdout + r.stderr);
        const ping = await execPod(c, a.name, [
          "ping",
          "-c",
          "1",
          "-W",
          "2",
          b.v6,
        ]);
        assert(ping.stdout.includes(`bytes from ${b.v6}:`), ping.stdout);
      },
    );
    console.log(`  modes test done in ${Date.now() - t0} ms`);
  },
});
