/**
 * subnet.env on disk: bytes, modes and atomic replacement. Needs
 * --allow-read --allow-write (a temporary directory only).
 *
 * @module
 */
import {
  deepStrictEqual as assertEquals,
  ok as assert,
  rejects,
} from "node:assert/strict";
import {
  ensureSubnetEnv,
  readSubnetEnv,
  writeSubnetEnv,
} from "../../subnet/subnet_env.ts";
import { writeFileAtomic } from "../../lib/atomic_write.ts";

const params = {
  network: "10.244.0.0/16",
  subnet: "10.244.1.0/24",
  mtu: 1450,
  ipMasq: true,
} as const;

Deno.test("writeSubnetEnv() creates the directory 0755 and the file 0644 with flanneld's bytes", async () => {
  const root = await Deno.makeTempDir({ prefix: "weft-subnet-env-" });
  const old = Deno.umask(0o077);
  try {
    const path = `${root}/run/flannel/subnet.env`;
    await writeSubnetEnv(path, params);
    assertEquals(
      await Deno.readTextFile(path),
      "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    );
    assertEquals((await Deno.stat(path)).mode! & 0o777, 0o644);
    assertEquals((await Deno.stat(`${root}/run/flannel`)).mode! & 0o777, 0o755);
    // Nothing but the file is left in the directory.
    const names = [];
    for await (const e of Deno.readDir(`${root}/run/flannel`)) {
      names.push(e.name);
    }
    assertEquals(names, ["subnet.env"]);
  } finally {
    Deno.umask(old);
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("writeSubnetEnv() replaces the file by rename, not in place", async () => {
  const root = await Deno.makeTempDir({ prefix: "weft-subnet-env-" });
  try {
    const path = `${root}/subnet.env`;
    await Deno.writeTextFile(path, "FLANNEL_MTU=1\n", { mode: 0o600 });
    const before = await Deno.stat(path);
    await writeSubnetEnv(path, { ...params, ipMasq: false });
    const after = await Deno.stat(path);
    // A new inode: a reader holding the old file sees the old content whole.
    assert(before.ino !== after.ino, "inode changed");
    assertEquals(after.mode! & 0o777, 0o644);
    const back = await readSubnetEnv(path);
    assertEquals(back.ok && back.value?.ipMasq, false);
    assertEquals(back.ok && back.value?.subnet, "10.244.1.0/24");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("readSubnetEnv() gives null for a missing file and names a bad one", async () => {
  const root = await Deno.makeTempDir({ prefix: "weft-subnet-env-" });
  try {
    assertEquals(await readSubnetEnv(`${root}/none.env`), {
      ok: true,
      value: null,
    });
    await Deno.writeTextFile(`${root}/bad.env`, "FLANNEL_MTU=x\n");
    assertEquals(await readSubnetEnv(`${root}/bad.env`), {
      ok: false,
      reason:
        `Cannot parse subnet file "${root}/bad.env": Bad FLANNEL_MTU "x": not an unsigned integer`,
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("writeFileAtomic() leaves no temporary file when the rename fails", async () => {
  const root = await Deno.makeTempDir({ prefix: "weft-subnet-env-" });
  try {
    // The target is a non-empty directory: rename(2) fails.
    await Deno.mkdir(`${root}/target/sub`, { recursive: true });
    let error: Error | undefined;
    try {
      await writeFileAtomic(`${root}/target`, "x");
    } catch (e) {
      error = e as Error;
    }
    assert(error?.message.startsWith(`Cannot write "${root}/target": `));
    const names = [];
    for await (const e of Deno.readDir(root)) names.push(e.name);
    assertEquals(names, ["target"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("ensureSubnetEnv() puts back a deleted or edited file and names the file it cannot write", async () => {
  const root = await Deno.makeTempDir({ prefix: "weft-subnet-env-" });
  try {
    const path = `${root}/run/flannel/subnet.env`;
    assertEquals(await ensureSubnetEnv(path, params), true);
    const text = await Deno.readTextFile(path);
    assertEquals(await ensureSubnetEnv(path, params), false);
    await Deno.remove(path);
    assertEquals(await ensureSubnetEnv(path, params), true);
    assertEquals(await Deno.readTextFile(path), text);
    await Deno.writeTextFile(path, "FLANNEL_SUBNET=10.244.9.1/24\n");
    assertEquals(await ensureSubnetEnv(path, params), true);
    assertEquals(await Deno.readTextFile(path), text);
    // A directory that cannot hold the file (a plain file in its place).
    await Deno.writeTextFile(`${root}/blocked`, "");
    await rejects(
      ensureSubnetEnv(`${root}/blocked/subnet.env`, params),
      new RegExp(`^Error: Cannot (read|write) "${root}/blocked/subnet.env"`),
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
