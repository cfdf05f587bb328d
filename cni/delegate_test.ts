import { deepStrictEqual as assertEquals } from "node:assert/strict";
import {
  type FlannelNetConf,
  goMarshal,
  GoStruct,
  parseNetConf,
  renderDelegate,
  validateDelegate,
} from "./delegate.ts";
import { parseSubnetEnv, type SubnetEnvFile } from "../subnet/subnet_env.ts";

/** The flannel entry of kube-flannel's stock conflist, as libcni passes it. */
const STOCK = JSON.stringify({
  cniVersion: "0.3.1",
  name: "cbr0",
  type: "flannel",
  delegate: { hairpinMode: true, isDefaultGateway: true },
});

function conf(text: string): FlannelNetConf {
  const r = parseNetConf(text);
  if (!r.ok) throw new Error(r.reason.msg);
  return r.value;
}

function env(text: string): SubnetEnvFile {
  const r = parseSubnetEnv(text);
  if (!r.ok) throw new Error(r.reason);
  return r.value;
}

const V4 = env(
  "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
);

function render(c: FlannelNetConf, e: SubnetEnvFile) {
  const r = renderDelegate(c, e);
  if (!r.ok) throw new Error(r.reason.msg);
  return r.value;
}

Deno.test("renderDelegate() gives flanneld's delegate for the stock conflist", () => {
  const d = render(conf(STOCK), V4);
  assertEquals(
    JSON.parse(goMarshal(d)),
    JSON.parse(
      '{"name":"cbr0","cniVersion":"0.3.1","type":"bridge","hairpinMode":true,"isDefaultGateway":true,"ipMasq":false,"mtu":1450,"isGateway":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}]}}',
    ),
  );
  // The bytes of Go's json.Marshal of the map: keys sorted.
  assertEquals(
    goMarshal(d),
    '{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}',
  );
});

Deno.test("renderDelegate() sets ipMasq to the opposite of FLANNEL_IPMASQ unless given", () => {
  const noMasq = env(
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
  );
  assertEquals(render(conf(STOCK), noMasq).ipMasq, true);
  const given = conf(JSON.stringify({
    cniVersion: "0.3.1",
    name: "cbr0",
    delegate: { ipMasq: false, mtu: 1400, isGateway: false },
  }));
  const d = render(given, noMasq);
  assertEquals([d.ipMasq, d.mtu, d.isGateway], [false, 1400, false]);
});

Deno.test("renderDelegate() gives IPv6 ranges and routes on dual stack", () => {
  const dual = env(
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
  );
  assertEquals(
    goMarshal(render(conf(STOCK), dual).ipam),
    '{"ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]],"routes":[{"dst":"10.244.0.0/16"},{"dst":"fd00:10:244::/56"}],"type":"host-local"}',
  );
});

Deno.test("renderDelegate() keeps the configuration's ipam keys and routes first", () => {
  const c = conf(JSON.stringify({
    cniVersion: "1.0.0",
    name: "pods",
    ipam: {
      dataDir: "/tmp/ipam",
      routes: [{ dst: "0.0.0.0/0" }, {
        dst: "192.168.0.0/16",
        gw: "10.244.1.1",
        mtu: 0,
        table: 0,
      }],
    },
    runtimeConfig: { portMappings: [] },
    delegate: { type: "ipvlan", master: "eth0" },
  }));
  const d = render(c, V4);
  assertEquals(
    goMarshal(d),
    '{"cniVersion":"1.0.0","ipMasq":false,"ipam":{"dataDir":"/tmp/ipam","ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.244.1.1","table":0},{"dst":"10.244.0.0/16"}],"type":"host-local"},"master":"eth0","mtu":1450,"name":"pods","runtimeConfig":{"portMappings":[]},"type":"ipvlan"}',
  );
});

Deno.test("renderDelegate() rejects bad ipam routes naming the entry", () => {
  const bad = (routes: unknown) =>
    renderDelegate(conf(JSON.stringify({ name: "x", ipam: { routes } })), V4);
  assertEquals(bad("nope"), {
    ok: false,
    reason: { code: 7, msg: 'Invalid "ipam.routes": not a list' },
  });
  assertEquals(bad([{ dst: "10.0.0.0" }]), {
    ok: false,
    reason: {
      code: 7,
      msg: 'Invalid "ipam.routes[0]": "dst" "10.0.0.0" is not a CIDR',
    },
  });
  assertEquals(bad([{ dst: "10.0.0.0/8", gw: "x" }]), {
    ok: false,
    reason: {
      code: 7,
      msg: 'Invalid "ipam.routes[0]": "gw" "x" is not an IP address',
    },
  });
});

Deno.test("validateDelegate() refuses name, ipam and a non-string type", () => {
  const check = (delegate: unknown) =>
    validateDelegate(conf(JSON.stringify({ name: "cbr0", delegate })));
  assertEquals(check({ hairpinMode: true }), undefined);
  assertEquals(check({ name: "x" }), {
    code: 7,
    msg: 'Invalid "delegate": it must not have "name", flannel sets it',
  });
  assertEquals(check({ ipam: {} }), {
    code: 7,
    msg: 'Invalid "delegate": it must not have "ipam", flannel sets it',
  });
  assertEquals(check({ type: 3 }), {
    code: 7,
    msg: 'Invalid "delegate": "type" must be a string, got 3',
  });
});

Deno.test("parseNetConf() applies defaults and rejects bad shapes", () => {
  const c = conf('{"name":"cbr0","type":"flannel","dataDir":""}');
  assertEquals(
    [c.subnetFile, c.dataDir, c.cniVersion, c.delegate],
    ["/run/flannel/subnet.env", "/var/lib/cni/flannel", "", {}],
  );
  const r = parseNetConf('{"delegate":"bridge"}');
  assertEquals(r, {
    ok: false,
    reason: {
      code: 6,
      msg: 'Cannot parse network configuration: "delegate" must be an object',
    },
  });
  const j = parseNetConf("{");
  assertEquals(j.ok ? 0 : j.reason.code, 6);
});

Deno.test("goMarshal() sorts map keys, keeps struct order and escapes like Go", () => {
  assertEquals(
    goMarshal({
      b: 1,
      a: [true, null, "<&>"],
      c: new GoStruct([["z", 1], ["a", 2]]),
    }),
    '{"a":[true,null,"\\u003c\\u0026\\u003e"],"b":1,"c":{"z":1,"a":2}}',
  );
  assertEquals(
    goMarshal({ x: 1.5, y: 1e21, s: "\u2028" }),
    '{"s":"\\u2028","x":1.5,"y":1e+21}',
  );
});
