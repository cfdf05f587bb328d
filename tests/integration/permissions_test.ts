/**
 * The shipped permission model: weft run by `deno run` with exactly the
 * list `deno task compile` bakes into the binary (deploy/permissions.txt)
 * refuses, before doing anything, a flag naming a file outside that list,
 * and says which flag, path and permission.
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";

const ROOT = new URL("../..", import.meta.url).pathname;

async function shipped(args: string[]) {
  const perms = (await Deno.readTextFile(`${ROOT}deploy/permissions.txt`))
    .trim().split(/\s+/);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", ...perms, `${ROOT}main.ts`, ...args],
    env: { NODE_NAME: "n1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("weft with the shipped permissions exits 2 naming a --subnet-file outside them", async () => {
  const r = await shipped([
    "--kube-subnet-mgr",
    "--kube-api-url=https://127.0.0.1:1",
    "--subnet-file=/var/tmp/weft-flannel.env",
  ]);
  assertEquals(r.code, 2, r.stderr);
  assert(
    r.stderr.includes(
      'Flag --subnet-file names "/var/tmp/weft-flannel.env", but this weft build has no read permission on "/var/tmp/weft-flannel.env"',
    ),
    r.stderr,
  );
  assert(
    r.stderr.includes('no write permission on "/var/tmp" (for'),
    r.stderr,
  );
});

Deno.test("weft with the shipped permissions exits 2 naming etcd TLS files outside them", async () => {
  const r = await shipped([
    "--etcd-endpoints=https://127.0.0.1:1",
    "--etcd-cafile=/etc/ssl/etcd/ca.pem",
    "--etcd-certfile=/run/flannel/etcd.pem",
  ]);
  assertEquals(r.code, 2, r.stderr);
  assertEquals(
    r.stderr.trim().split("\n").map((l) => l.slice(0, l.indexOf(", but"))),
    ['Flag --etcd-cafile names "/etc/ssl/etcd/ca.pem"'],
  );
});
