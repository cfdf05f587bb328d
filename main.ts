/**
 * weft: a flanneld-compatible node network agent. This file owns the
 * process: it parses flanneld's flags, dispatches the CNI plugin
 * (`weft cni`, or the binary installed as `flannel`), and runs the agent
 * until SIGTERM or SIGINT, which exit 0 and leave the dataplane in place.
 *
 * @module
 */
import { parseFlags, usage } from "./agent/flags.ts";
import { FatalError, runAgent } from "./agent/agent.ts";
import { logger } from "./lib/log.ts";
import { cniMain } from "./cni/plugin.ts";
import { VERSION } from "./lib/version.ts";
import { RunPermissionError } from "./lib/command.ts";
import {
  denoPermissionQuery,
  describeGap,
  filePermissionGaps,
} from "./agent/file_permissions.ts";

const log = logger("main");

/**
 * The environment as a lazy lookup rather than `Deno.env.toObject()`, so
 * `--allow-env` can name only what weft reads (`FLANNELD_*`, `NODE_NAME`,
 * `POD_NAME`, `POD_NAMESPACE`, `KUBERNETES_SERVICE_*`, `WEFT_*`).
 */
const envLookup = new Proxy({} as Record<string, string | undefined>, {
  get: (_target, name) =>
    typeof name === "string" ? Deno.env.get(name) : undefined,
});

async function main(args: string[]): Promise<number> {
  const argv0 = Deno.execPath().split("/").pop();
  if (args[0] === "cni" || argv0 === "flannel") return await cniMain();

  const flags = parseFlags(args, envLookup);
  if (!flags.ok) {
    console.error(`${flags.reason}\n\n${usage()}`);
    return 2;
  }
  if (flags.value.help) {
    console.log(usage());
    return 0;
  }
  if (flags.value.version) {
    console.log(VERSION);
    return 0;
  }

  // Fail now, naming the flag, rather than deep inside the first write.
  const gaps = filePermissionGaps(flags.value, denoPermissionQuery);
  if (gaps.length > 0) {
    for (const g of gaps) console.error(describeGap(g));
    return 2;
  }

  const stop = new AbortController();
  const onSignal = (name: string) => () => {
    log.info(`Received ${name}: stopping (the dataplane is left in place)`);
    stop.abort();
  };
  Deno.addSignalListener("SIGTERM", onSignal("SIGTERM"));
  Deno.addSignalListener("SIGINT", onSignal("SIGINT"));
  try {
    await runAgent(flags.value, stop.signal);
    return 0;
  } catch (e) {
    if (stop.signal.aborted) return 0;
    if (e instanceof RunPermissionError) {
      console.error(e.message);
      return 2;
    }
    const msg = e instanceof FatalError ? e.message : String(
      (e as Error)?.stack ?? e,
    );
    log.error(msg);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
