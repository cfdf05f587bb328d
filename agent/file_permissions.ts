/**
 * Checks, before anything starts, that the files named by flags lie inside
 * the read and write permissions this process was given. The shipped binary
 * is `deno compile`d with a fixed `--allow-read`/`--allow-write` list
 * (deno.json), and a permission cannot be widened at run time, so a
 * documented flag such as `--subnet-file=/var/run/flannel.env` would
 * otherwise fail much later, deep inside a lease acquisition or a subnet.env
 * write, with Deno's generic "Requires read access". Here it fails at once
 * with the flag, the path and the missing permission.
 *
 * @module
 */
import type { Flags } from "./flags.ts";

/** One file a flag names that this process may not use as it needs to. */
export interface PermissionGap {
  /** The flag, e.g. `--subnet-file`. */
  readonly flag: string;
  /** The path the flag gave. */
  readonly path: string;
  /** The path the permission is needed on (a file, or its directory). */
  readonly on: string;
  /** The permission that is missing. */
  readonly permission: "read" | "write";
}

/** Answers whether a permission is granted (`Deno.permissions.querySync`). */
export type PermissionQuery = (
  desc: { name: "read" | "write"; path: string },
) => boolean;

/** The real query: granted now, without prompting. */
export const denoPermissionQuery: PermissionQuery = (desc) =>
  Deno.permissions.querySync(desc).state === "granted";

function dirname(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  const i = trimmed.lastIndexOf("/");
  if (i < 0) return ".";
  return i === 0 ? "/" : trimmed.slice(0, i);
}

/**
 * Lists the permissions missing for the files the given flags make weft
 * use: `--subnet-file` (read it, and write its directory: it is replaced
 * atomically through a temporary file beside it), `--net-config-path` (kube
 * mode), `--kubeconfig-file`, and `--etcd-keyfile`/`--etcd-certfile`/
 * `--etcd-cafile` (etcd mode). Empty when everything is covered.
 *
 * @example
 * ```ts
 * const gaps = filePermissionGaps(flags, denoPermissionQuery);
 * for (const g of gaps) console.error(describeGap(g));
 * ```
 */
export function filePermissionGaps(
  flags: Pick<
    Flags,
    | "kubeSubnetMgr"
    | "subnetFile"
    | "netConfigPath"
    | "kubeconfigFile"
    | "etcdKeyfile"
    | "etcdCertfile"
    | "etcdCafile"
  >,
  granted: PermissionQuery,
): PermissionGap[] {
  const needs: PermissionGap[] = [
    {
      flag: "--subnet-file",
      path: flags.subnetFile,
      on: flags.subnetFile,
      permission: "read",
    },
    {
      flag: "--subnet-file",
      path: flags.subnetFile,
      on: dirname(flags.subnetFile),
      permission: "write",
    },
  ];
  const read = (flag: string, path: string) => {
    if (path !== "") needs.push({ flag, path, on: path, permission: "read" });
  };
  read("--kubeconfig-file", flags.kubeconfigFile);
  if (flags.kubeSubnetMgr) {
    read("--net-config-path", flags.netConfigPath);
  } else {
    read("--etcd-keyfile", flags.etcdKeyfile);
    read("--etcd-certfile", flags.etcdCertfile);
    read("--etcd-cafile", flags.etcdCafile);
  }
  return needs.filter((n) => !granted({ name: n.permission, path: n.on }));
}

/** One line naming the flag, the path and the permission it lacks. */
export function describeGap(g: PermissionGap): string {
  const where = g.on === g.path ? `"${g.path}"` : `"${g.on}" (for "${g.path}")`;
  return `Flag ${g.flag} names "${g.path}", but this weft build has no ${g.permission} permission on ${where}: its --allow-${g.permission} list (deno.json, baked into the binary) does not cover it; use a path it covers or build with the path added`;
}
