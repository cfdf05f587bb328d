import { deepStrictEqual as assertEquals } from "node:assert/strict";
import {
  describeGap,
  filePermissionGaps,
  type PermissionQuery,
} from "./file_permissions.ts";

/** Grants like Deno's path lists: the path itself or anything below it. */
function baked(read: string[], write: string[]): PermissionQuery {
  const covers = (list: string[], path: string) =>
    list.some((p) => path === p || path.startsWith(`${p}/`));
  return ({ name, path }) => covers(name === "read" ? read : write, path);
}

const SHIPPED = baked(
  ["/run/flannel", "/etc/kube-flannel", "/var/run/secrets/kubernetes.io"],
  ["/run/flannel"],
);

const KUBE = {
  kubeSubnetMgr: true,
  subnetFile: "/run/flannel/subnet.env",
  netConfigPath: "/etc/kube-flannel/net-conf.json",
  kubeconfigFile: "",
  etcdKeyfile: "",
  etcdCertfile: "",
  etcdCafile: "",
};

Deno.test("filePermissionGaps() finds nothing missing for the defaults", () => {
  assertEquals(filePermissionGaps(KUBE, SHIPPED), []);
  assertEquals(
    filePermissionGaps({ ...KUBE, kubeSubnetMgr: false }, SHIPPED),
    [],
  );
});

Deno.test("filePermissionGaps() names each flag whose file lies outside the permissions", () => {
  const gaps = filePermissionGaps({
    ...KUBE,
    subnetFile: "/var/run/flannel.env",
    netConfigPath: "/srv/net-conf.json",
    kubeconfigFile: "/root/.kube/config",
  }, SHIPPED);
  assertEquals(gaps, [
    {
      flag: "--subnet-file",
      path: "/var/run/flannel.env",
      on: "/var/run/flannel.env",
      permission: "read",
    },
    {
      flag: "--subnet-file",
      path: "/var/run/flannel.env",
      on: "/var/run",
      permission: "write",
    },
    {
      flag: "--kubeconfig-file",
      path: "/root/.kube/config",
      on: "/root/.kube/config",
      permission: "read",
    },
    {
      flag: "--net-config-path",
      path: "/srv/net-conf.json",
      on: "/srv/net-conf.json",
      permission: "read",
    },
  ]);
});

Deno.test("filePermissionGaps() checks the etcd TLS files in etcd mode only", () => {
  const tls = {
    ...KUBE,
    etcdKeyfile: "/etc/ssl/etcd/key.pem",
    etcdCertfile: "/run/flannel/cert.pem",
    etcdCafile: "/etc/ssl/etcd/ca.pem",
  };
  assertEquals(filePermissionGaps(tls, SHIPPED), []);
  assertEquals(
    filePermissionGaps({ ...tls, kubeSubnetMgr: false }, SHIPPED).map((g) =>
      `${g.flag} ${g.path}`
    ),
    [
      "--etcd-keyfile /etc/ssl/etcd/key.pem",
      "--etcd-cafile /etc/ssl/etcd/ca.pem",
    ],
  );
});

Deno.test("filePermissionGaps() needs write on the subnet file's directory, not just the file", () => {
  const fileOnly = baked(
    ["/run/flannel", "/etc/kube-flannel"],
    ["/run/flannel/subnet.env"],
  );
  assertEquals(filePermissionGaps(KUBE, fileOnly).map((g) => g.on), [
    "/run/flannel",
  ]);
});

Deno.test("describeGap() names the flag, the path and the permission", () => {
  assertEquals(
    describeGap({
      flag: "--subnet-file",
      path: "/var/run/flannel.env",
      on: "/var/run",
      permission: "write",
    }),
    'Flag --subnet-file names "/var/run/flannel.env", but this weft build has no write permission on "/var/run" (for "/var/run/flannel.env"): its --allow-write list (deno.json, baked into the binary) does not cover it; use a path it covers or build with the path added',
  );
});
