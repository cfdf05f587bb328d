/**
 * A throwaway PKI for test API servers, made with openssl: a CA, server and
 * client certificates signed by it, and the service-account key pair.
 * Files are `<dir>/ca.{key,crt}`, `<base>.{key,crt}`, `<dir>/sa.{key,pub}`.
 *
 * @module
 */
import { sh } from "../_netns.ts";

/** Extensions of a TLS server certificate (add a subjectAltName). */
export const SERVER_EXT = [
  "basicConstraints=CA:FALSE",
  "keyUsage=critical,digitalSignature,keyEncipherment",
  "extendedKeyUsage=serverAuth",
];

/** Extensions of a TLS client certificate. */
export const CLIENT_EXT = [
  "basicConstraints=CA:FALSE",
  "keyUsage=critical,digitalSignature,keyEncipherment",
  "extendedKeyUsage=clientAuth",
];

const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/** Creates a self-signed CA, `<dir>/ca.key` and `<dir>/ca.crt`. */
export async function makeCa(
  dir: string,
  cn = `weft-test-ca-${crypto.randomUUID().slice(0, 8)}`,
): Promise<void> {
  await sh([
    "openssl",
    "req",
    "-x509",
    ...EC,
    "-nodes",
    "-keyout",
    `${dir}/ca.key`,
    "-out",
    `${dir}/ca.crt`,
    "-days",
    "2",
    "-subj",
    `/CN=${cn}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
  ]);
}

/** Creates `<base>.key` and `<base>.crt` signed by `<dir>/ca.*`. */
export async function signedCert(
  dir: string,
  base: string,
  subject: string,
  ext: string[],
): Promise<void> {
  await sh([
    "openssl",
    "req",
    ...EC,
    "-nodes",
    "-keyout",
    `${base}.key`,
    "-out",
    `${base}.csr`,
    "-subj",
    subject,
  ]);
  await Deno.writeTextFile(`${base}.ext`, ext.join("\n") + "\n");
  await sh([
    "openssl",
    "x509",
    "-req",
    "-in",
    `${base}.csr`,
    "-CA",
    `${dir}/ca.crt`,
    "-CAkey",
    `${dir}/ca.key`,
    // A random serial, not -CAcreateserial's file: certificates signed at
    // the same moment (nodes starting together) would race on it.
    "-set_serial",
    `0x${
      Array.from(
        crypto.getRandomValues(new Uint8Array(12)),
        (b) => b.toString(16).padStart(2, "0"),
      ).join("")
    }`,
    "-out",
    `${base}.crt`,
    "-days",
    "2",
    "-extfile",
    `${base}.ext`,
  ]);
}

/** Creates the service-account signing key pair `<dir>/sa.key`, `sa.pub`. */
export async function serviceAccountKeys(dir: string): Promise<void> {
  await sh(["openssl", "genrsa", "-out", `${dir}/sa.key`, "2048"]);
  await sh([
    "openssl",
    "rsa",
    "-in",
    `${dir}/sa.key`,
    "-pubout",
    "-out",
    `${dir}/sa.pub`,
  ]);
}
