/**
 * End-to-end, etcd mode, for the two backends without a data path of
 * their own, on one shared switch and etcd:
 *
 * - extension: three agents whose commands are one recording script.
 *   Each node's PreStartupCommand output is published; PostStartupCommand
 *   sees flanneld's variables; SubnetAddCommand runs for each peer with
 *   its variables and data on stdin; on node1 the add for node2 is slow
 *   and the one for node3 fails, and the failure is logged and counted
 *   while the slow one still runs; a deleted lease runs
 *   SubnetRemoveCommand on the others.
 * - alloc: a fourth agent under another etcd prefix takes a lease with
 *   flanneld's attributes, writes subnet.env, creates no device, and
 *   renews the lease (renew margin 1439 of 1440 minutes: one minute in).
 *
 * @module
 */
import assert from "node:assert/strict";
import { kernelTest } from "../_netns.ts";
import { Cluster, type ClusterNode } from "../_cluster.ts";
import { waitFor } from "./_checks.ts";

const PREFIX = "weft-x";
const DIR = `/tmp/${PREFIX}`;
const HOOK = `${DIR}/hook.sh`;
const ALLOC_PREFIX = "/weft-alloc/network";

/**
 * Records each run as one line `<event> <node> <var>=<value>... stdin=<stdin>`
 * in `<dir>/<node>.events`; `pre` prints the node's backend data. On node1,
 * the adds for 198.18.0.2 and 198.18.0.3 each wait (up to 10 s) for the
 * other to have started and record `met <ip>`, which only commands running
 * side by side can do; then the first sleeps and the second fails with
 * status 3.
 */
const HOOK_SCRIPT = `#!/bin/sh
in=$(cat)
rec="$1 $NODE_NAME SUBNET=$SUBNET PUBLIC_IP=$PUBLIC_IP NETWORK=$NETWORK IPV6SUBNET=$IPV6SUBNET PUBLIC_IPV6=$PUBLIC_IPV6 stdin=$in"
out=${DIR}/$NODE_NAME.events
case "$1" in
pre) echo "key-$NODE_NAME"; echo "$rec" >>"$out" ;;
add)
  echo "start $rec" >>"$out"
  if [ "$NODE_NAME" = node1 ]; then
    case "$PUBLIC_IP" in 198.18.0.2) other=198.18.0.3 ;; 198.18.0.3) other=198.18.0.2 ;; *) other= ;; esac
    if [ -n "$other" ]; then
      touch "${DIR}/node1-add-$PUBLIC_IP"
      i=0
      while [ ! -e "${DIR}/node1-add-$other" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
      [ -e "${DIR}/node1-add-$other" ] && echo "met $PUBLIC_IP" >>"$out"
    fi
  fi
  if [ "$NODE_NAME" = node1 ] && [ "$PUBLIC_IP" = 198.18.0.2 ]; then exec sleep 20; fi
  if [ "$NODE_NAME" = node1 ] && [ "$PUBLIC_IP" = 198.18.0.3 ]; then echo "refusing $SUBNET" >&2; exit 3; fi
  echo "done $rec" >>"$out" ;;
*) echo "$rec" >>"$out" ;;
esac
`;

const NET_CONF = JSON.stringify({
  Network: "10.244.0.0/16",
  Backend: {
    Type: "extension",
    PreStartupCommand: `${HOOK} pre`,
    PostStartupCommand: `${HOOK} post`,
    SubnetAddCommand: `${HOOK} add`,
    SubnetRemoveCommand: `${HOOK} remove`,
  },
});

async function events(node: ClusterNode): Promise<string[]> {
  const t = await Deno.readTextFile(`${DIR}/${node.name}.events`).catch(
    () => "",
  );
  return t.split("\n").filter((l) => l !== "");
}

kernelTest(
  "e2e etcd: extension commands run on lease events with flanneld's variables and stdin, a slow or failing one blocks no peer; alloc takes, publishes and renews a lease",
  async () => {
    await using c = await Cluster.create({
      prefix: PREFIX,
      nodes: 4,
      netConf: NET_CONF,
      // The agents may run the hook (added to the list they run with).
      denoFlags: [`--allow-run=${HOOK}`],
    });
    await Deno.writeTextFile(HOOK, HOOK_SCRIPT, { mode: 0o755 });
    const [n1, n2, n3, n4] = c.nodes as [
      ClusterNode,
      ClusterNode,
      ClusterNode,
      ClusterNode,
    ];
    try {
      // alloc first: its renewal is due a minute after it starts.
      await c.etcdctl(
        "put",
        `${ALLOC_PREFIX}/config`,
        '{"Network":"10.250.0.0/16","Backend":{"Type":"alloc"}}',
      );
      await c.startAgent(n4, [
        `--etcd-prefix=${ALLOC_PREFIX}`,
        "--subnet-lease-renew-margin=1439",
      ]);
      for (const n of [n1, n2, n3]) await c.startAgent(n);
      for (const n of [n1, n2, n3, n4]) await c.waitReady(n);

      // Published: PreStartupCommand's output and the interface address.
      const leases = await c.leases();
      for (const n of [n1, n2, n3]) {
        const l = leases.find((l) => l.value.PublicIP === n.ip);
        assert.deepEqual(l?.value, {
          PublicIP: n.ip,
          PublicIPv6: null,
          BackendType: "extension",
          BackendData: `key-${n.name}`,
        } as unknown);
      }
      const subnetOf = (n: ClusterNode) =>
        leases.find((l) => l.value.PublicIP === n.ip)!.subnet;

      // PostStartupCommand: flanneld's variables, an empty line on stdin.
      for (const n of [n1, n2, n3]) {
        const env = await n.subnetEnv();
        assert.equal(env.FLANNEL_MTU, "1500");
        assert.equal(
          env.FLANNEL_SUBNET,
          subnetOf(n).replace(/0\/24$/, "1/24"),
        );
        assert.ok(
          (await events(n)).includes(
            `post ${n.name} SUBNET=${
              subnetOf(n)
            } PUBLIC_IP=${n.ip} NETWORK=10.244.0.0/16 IPV6SUBNET=::/0 PUBLIC_IPV6=<nil> stdin=`,
          ),
          (await events(n)).join("\n"),
        );
      }

      // SubnetAddCommand on every node for every peer, with its data.
      const added = (n: ClusterNode, p: ClusterNode, state: string) =>
        `${state} add ${n.name} SUBNET=${
          subnetOf(p)
        } PUBLIC_IP=${p.ip} NETWORK= IPV6SUBNET= PUBLIC_IPV6= stdin=key-${p.name}`;
      const pairs = [[n2, n1], [n2, n3], [n3, n1], [n3, n2]] as const;
      const allAdded = await waitFor(
        async () => {
          for (const [n, p] of pairs) {
            if (!(await events(n)).includes(added(n, p, "done"))) return false;
          }
          return true;
        },
        15_000,
        100,
      );
      assert.ok(
        allAdded !== undefined,
        `adds missing:\n${(await events(n2)).join("\n")}\n${
          (await events(n3)).join("\n")
        }`,
      );

      // node1: node2's and node3's adds ran side by side (each saw the
      // other start); node3's failed (logged, counted) while node2's is
      // still running.
      const failed = await waitFor(
        async () =>
          (await Deno.readTextFile(n1.agent!.logPath)).includes(
            `failed: exit status 3; output: refusing ${subnetOf(n3)}`,
          ),
        15_000,
        100,
      );
      assert.ok(failed !== undefined, "node1 logged no failed add for node3");
      const e1 = await events(n1);
      assert.ok(e1.includes(added(n1, n2, "start")), e1.join("\n"));
      for (const n of [n2, n3]) {
        assert.ok(e1.includes(`met ${n.ip}`), e1.join("\n"));
      }
      assert.match(
        await c.metrics(n1),
        /weft_extension_command_failures_total\{command="SubnetAddCommand"\} 1\n/,
      );

      // A lease deleted: SubnetRemoveCommand on the others.
      await c.stopAgent(n3);
      const key3 = leases.find((l) => l.value.PublicIP === n3.ip)!.key;
      await c.etcdctl("del", key3);
      const removed = (n: ClusterNode) =>
        `remove ${n.name} SUBNET=${
          subnetOf(n3)
        } PUBLIC_IP=${n3.ip} NETWORK= IPV6SUBNET= PUBLIC_IPV6= stdin=key-node3`;
      const gone = await waitFor(
        async () =>
          (await events(n1)).includes(removed(n1)) &&
          (await events(n2)).includes(removed(n2)),
        15_000,
        100,
      );
      assert.ok(
        gone !== undefined,
        `no remove:\n${(await events(n2)).join("\n")}`,
      );

      // alloc: flanneld's attributes, subnet.env, no device, renewed.
      const allocLease = async () => {
        const r = await c.etcdctl(
          "get",
          "--prefix",
          `${ALLOC_PREFIX}/subnets/`,
          "-w",
          "json",
        );
        const kv = (JSON.parse(
          r.stdout.replace(/"lease":\s*(\d+)/g, '"lease":"$1"'),
        ).kvs ?? [])[0];
        return kv && {
          value: atob(kv.value),
          lease: String(kv.lease),
          key: atob(kv.key),
        };
      };
      const first = await allocLease();
      assert.equal(first?.value, '{"PublicIP":"198.18.0.4","PublicIPv6":null}');
      const env4 = await n4.subnetEnv();
      const sub4 = first!.key.split("/").pop()!.replace("-", "/");
      assert.deepEqual(env4, {
        FLANNEL_NETWORK: "10.250.0.0/16",
        FLANNEL_SUBNET: sub4.replace(/0\/24$/, "1/24"),
        FLANNEL_MTU: "1500",
        FLANNEL_IPMASQ: "true",
      });
      const links = await n4.ns.exec(["ip", "-o", "link", "show"]);
      assert.doesNotMatch(links, /flannel/);
      const renewed = await waitFor(
        async () => (await allocLease())?.lease !== first!.lease,
        75_000,
        500,
      );
      assert.ok(renewed !== undefined, "the alloc lease was not renewed");
      const ttl = await c.etcdctl(
        "lease",
        "timetolive",
        BigInt((await allocLease())!.lease).toString(16),
      );
      const granted = ttl.stdout.match(/granted with TTL\((\d+)s\)/)?.[1];
      assert.equal(granted, "86400", ttl.stdout);
      assert.match(
        await Deno.readTextFile(n4.agent!.logPath),
        /Lease renewed, new expiration/,
      );
    } finally {
      // SIGTERM: the agents kill the commands they still run.
      for (const n of c.nodes) await c.stopAgent(n);
    }
  },
);

/** weft with a permission list from deploy/, in `node`'s namespace. */
async function shippedWeft(
  node: ClusterNode,
  list: string,
  subnetFile: string,
): Promise<Deno.ChildProcess> {
  const root = new URL("../..", import.meta.url).pathname;
  const perms = (await Deno.readTextFile(`${root}deploy/${list}`)).trim()
    .split(/\s+/);
  return new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      node.ns.name,
      Deno.execPath(),
      "run",
      "--no-prompt",
      ...perms,
      `${root}main.ts`,
      "--etcd-endpoints=http://198.18.0.254:2379",
      "--iface=eth0",
      `--subnet-file=${subnetFile}`,
    ],
    env: { NODE_NAME: node.name },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

kernelTest(
  "weft with the shipped permissions exits 2 naming an extension command's program; with deploy/permissions-extension.txt it runs it",
  async () => {
    const prefix = "weft-xp";
    const pre = `/tmp/${prefix}/pre.sh`;
    await using c = await Cluster.create({
      prefix,
      nodes: 1,
      netConf: JSON.stringify({
        Network: "10.244.0.0/16",
        Backend: { Type: "extension", PreStartupCommand: pre },
      }),
    });
    await Deno.writeTextFile(pre, "#!/bin/sh\necho published\n", {
      mode: 0o755,
    });
    const node = c.nodes[0]!;
    // /run/flannel is the only place both lists may write.
    const dir = `/run/flannel/${prefix}`;
    try {
      const shipped = await (await shippedWeft(
        node,
        "permissions.txt",
        `${dir}/subnet.env`,
      )).output();
      const stderr = new TextDecoder().decode(shipped.stderr);
      assert.equal(shipped.code, 2, stderr);
      assert.match(
        stderr,
        /Backend\.PreStartupCommand runs "\/tmp\/weft-xp\/pre\.sh", but this weft build has no run permission on "\/tmp\/weft-xp\/pre\.sh".*deploy\/permissions-extension\.txt/,
      );
      assert.deepEqual(await c.leases(), []);

      const weft = await shippedWeft(
        node,
        "permissions-extension.txt",
        `${dir}/subnet.env`,
      );
      const out = weft.output();
      const published = await waitFor(
        async () =>
          (await c.leases()).some((l) =>
            (l.value.BackendData as unknown) === "published"
          ),
        20_000,
        100,
      );
      weft.kill("SIGTERM");
      const r = await out;
      assert.ok(
        published !== undefined,
        new TextDecoder().decode(r.stderr).slice(-2000),
      );
      assert.equal(r.code, 0);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);
