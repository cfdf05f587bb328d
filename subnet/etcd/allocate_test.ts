import assert from "node:assert/strict";
import {
  chooseSubnets,
  fitsConfig,
  freeSubnets,
  isTaken,
  MAX_CANDIDATES,
} from "./allocate.ts";
import { parseNetConfig } from "../config.ts";
import { formatIp, type IpNet, parseIpNet } from "../../lib/ip.ts";
import { unwrap } from "../../lib/result.ts";

const net = (s: string): IpNet => unwrap(parseIpNet(s));
const v4 = (addrs: bigint[]) => addrs.map((a) => formatIp(4, a));
const config = unwrap(parseNetConfig('{"Network":"10.5.0.0/16"}'));

Deno.test("freeSubnets() starts at SubnetMin and skips taken subnets", () => {
  const taken = [net("10.5.1.0/24"), net("10.5.3.0/24")];
  assert.deepEqual(
    v4(freeSubnets(4, config.subnetMin!, config.subnetMax!, 24, taken, 4)),
    ["10.5.2.0", "10.5.4.0", "10.5.5.0", "10.5.6.0"],
  );
});

Deno.test("freeSubnets() skips subnets overlapped by a shorter or longer prefix", () => {
  const taken = [
    net("10.5.0.0/22"), // covers .0-.3
    net("10.5.5.128/25"), // inside .5
    net("10.5.6.0/23"), // covers .6-.7
    net("10.5.6.0/24"), // duplicate inside the /23
  ];
  assert.deepEqual(
    v4(freeSubnets(4, config.subnetMin!, config.subnetMax!, 24, taken, 3)),
    ["10.5.4.0", "10.5.8.0", "10.5.9.0"],
  );
});

Deno.test("freeSubnets() stops at SubnetMax and at the candidate limit", () => {
  const small = unwrap(
    parseNetConfig(
      '{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.12.0"}',
    ),
  );
  assert.deepEqual(
    v4(freeSubnets(4, small.subnetMin!, small.subnetMax!, 24, [])),
    ["10.5.10.0", "10.5.11.0", "10.5.12.0"],
  );
  assert.equal(
    freeSubnets(4, config.subnetMin!, config.subnetMax!, 24, []).length,
    MAX_CANDIDATES,
  );
});

Deno.test("freeSubnets() is fast with thousands of taken subnets", () => {
  const big = unwrap(parseNetConfig('{"Network":"10.0.0.0/8"}'));
  const taken: IpNet[] = [];
  for (let i = 1; i <= 20000; i++) {
    taken.push({ family: 4, addr: 0x0a000000n + BigInt(i) * 256n, prefix: 24 });
  }
  const t0 = performance.now();
  const free = freeSubnets(4, big.subnetMin!, big.subnetMax!, 24, taken);
  assert.equal(formatIp(4, free[0]!), "10.78.33.0"); // 20001 * 256
  assert.ok(performance.now() - t0 < 1000);
});

Deno.test("chooseSubnets() picks randomly among the first free subnets", () => {
  const taken = [net("10.5.1.0/24")];
  assert.deepEqual(unwrap(chooseSubnets(config, taken, () => 0)), {
    subnet: "10.5.2.0/24",
  });
  assert.deepEqual(unwrap(chooseSubnets(config, taken, () => 0.999999)), {
    subnet: "10.5.101.0/24", // the 100th free one
  });
});

Deno.test("chooseSubnets() picks an IPv6 subnet too when IPv6 is enabled", () => {
  const dual = unwrap(parseNetConfig(
    '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}',
  ));
  const taken = [net("10.5.1.0/24"), net("fc00:0:0:1::/64")];
  assert.deepEqual(unwrap(chooseSubnets(dual, taken, () => 0)), {
    subnet: "10.5.2.0/24",
    ipv6Subnet: "fc00:0:0:2::/64",
  });
});

Deno.test("chooseSubnets() says the network is out of subnets", () => {
  const tiny = unwrap(parseNetConfig(
    '{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0"}',
  ));
  const r = chooseSubnets(tiny, [net("10.5.1.0/24"), net("10.5.2.0/24")]);
  assert.equal(r.ok, false);
  assert.equal(
    r.ok ? "" : r.reason,
    "Out of subnets: every subnet from 10.5.1.0/24 to 10.5.2.0/24 is taken",
  );
});

Deno.test("fitsConfig() follows flanneld's isSubnetConfigCompat", () => {
  assert.ok(fitsConfig(config, { subnet: "10.5.7.0/24" }));
  assert.ok(!fitsConfig(config, { subnet: "10.5.0.0/24" })); // below SubnetMin
  assert.ok(!fitsConfig(config, { subnet: "10.5.7.0/25" })); // wrong length
  assert.ok(!fitsConfig(config, { subnet: "10.6.7.0/24" })); // outside
  assert.ok(!fitsConfig(config, { subnet: "10.5.7.1/24" })); // host bits
  // An IPv6 subnet exactly when IPv6 is enabled.
  assert.ok(
    !fitsConfig(config, { subnet: "10.5.7.0/24", ipv6Subnet: "fc00::/64" }),
  );
  const dual = unwrap(parseNetConfig(
    '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}',
  ));
  assert.ok(!fitsConfig(dual, { subnet: "10.5.7.0/24" }));
  assert.ok(
    fitsConfig(dual, { subnet: "10.5.7.0/24", ipv6Subnet: "fc00:0:0:7::/64" }),
  );
});

Deno.test("isTaken() finds overlaps in either family", () => {
  const taken = [net("10.5.0.0/22"), net("fc00::/64")];
  assert.ok(isTaken({ subnet: "10.5.2.0/24" }, taken));
  assert.ok(!isTaken({ subnet: "10.5.4.0/24" }, taken));
  assert.ok(
    isTaken({ subnet: "10.5.4.0/24", ipv6Subnet: "fc00::/64" }, taken),
  );
});

Deno.test("IPv6 only: the IPv4 part is flanneld's empty subnet 0.0.0.0/0", () => {
  const v6only = unwrap(parseNetConfig(
    '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}',
  ));
  assert.deepEqual(
    unwrap(chooseSubnets(v6only, [net("fc00:0:0:1::/64")], () => 0)),
    { subnet: "0.0.0.0/0", ipv6Subnet: "fc00:0:0:2::/64" },
  );
  assert.ok(
    fitsConfig(v6only, {
      subnet: "0.0.0.0/0",
      ipv6Subnet: "fc00:0:0:7::/64",
    }),
  );
  assert.ok(
    !fitsConfig(v6only, {
      subnet: "10.5.7.0/24",
      ipv6Subnet: "fc00:0:0:7::/64",
    }),
  );
  assert.ok(!fitsConfig(v6only, { subnet: "0.0.0.0/0" }));
});
