/**
 * weft: a flanneld-compatible node network agent. This file wires flags,
 * configuration, the subnet manager and the backend, and owns the process.
 *
 * @module
 */
import { VERSION } from "./version.ts";

if (import.meta.main) {
  const args = Deno.args;
  if (args.includes("--version")) {
    console.log(VERSION);
    Deno.exit(0);
  }
  console.log(`weft ${VERSION}: flanneld-compatible network agent
Usage: weft [flags]   (see README.md)`);
}
