/**
 * WireGuard configuration through `wg` from wireguard-tools, the one path
 * for the kernel module and a userspace implementation alike: `wg` speaks
 * generic netlink to the first and the UAPI socket
 * (`/var/run/wireguard/<dev>.sock`) to the second, so what the tests run
 * against wireguard-go is what runs on a kernel with the module.
 *
 * Keys never appear on a command line: the private key and the PSK are
 * passed as file names, which `wg` reads.
 *
 * Calls are synchronous like the rest of the reconciler's kernel calls;
 * `wg` answers from the kernel or the socket at once.
 *
 * @module
 */

/** A peer as `wg show <dev> dump` reports it (and as weft asks for it). */
export interface WgPeer {
  readonly publicKey: string;
  /** `ip:port` or `[ip6]:port`; undefined when none is set. */
  readonly endpoint?: string;
  /** Canonical prefixes, sorted. */
  readonly allowedIps: readonly string[];
  /** The preshared key, base64; undefined when none. */
  readonly psk?: string;
  /** Seconds; 0 means off. */
  readonly keepalive: number;
}

/** A device as `wg show <dev> dump` reports it. */
export interface WgDump {
  readonly privateKey?: string;
  readonly publicKey?: string;
  readonly listenPort: number;
  readonly peers: WgPeer[];
}

/** The device settings weft sets (`wg set DEV listen-port P private-key F`). */
export interface WgDeviceSettings {
  readonly listenPort: number;
  /** File holding the private key. */
  readonly privateKeyFile: string;
}

/** What weft does with `wg`; {@linkcode WgCli} runs it, tests use a double. */
export interface Wg {
  /** `wg show DEV dump`; throws when DEV is no WireGuard device. */
  show(dev: string): WgDump;
  /** `wg set DEV listen-port P private-key FILE`. */
  setDevice(dev: string, settings: WgDeviceSettings): void;
  /**
   * `wg set DEV peer KEY preshared-key FILE endpoint E
   * persistent-keepalive N allowed-ips A,B` (replaces the allowed IPs).
   * `pskFile` holds `peer.psk`; none removes the PSK.
   */
  setPeer(dev: string, peer: WgPeer, pskFile?: string): void;
  /** `wg set DEV peer KEY remove`; a missing peer is no error. */
  removePeer(dev: string, publicKey: string): void;
}

/** Parses `wg show <dev> dump`. */
export function parseDump(text: string): WgDump {
  const lines = text.split("\n").filter((l) => l !== "");
  const head = lines[0]?.split("\t");
  if (head?.length !== 4) {
    throw new Error(`Cannot parse wg dump header ${JSON.stringify(lines[0])}`);
  }
  const none = (v: string | undefined) =>
    v === undefined || v === "(none)" ? undefined : v;
  const peers: WgPeer[] = [];
  for (const line of lines.slice(1)) {
    const f = line.split("\t");
    if (f.length !== 8) {
      throw new Error(`Cannot parse wg dump peer line ${JSON.stringify(line)}`);
    }
    const endpoint = none(f[2]);
    const psk = none(f[1]);
    const allowed = none(f[3]);
    peers.push({
      publicKey: f[0]!,
      ...(endpoint !== undefined && { endpoint }),
      allowedIps: allowed === undefined ? [] : allowed.split(",").sort(),
      ...(psk !== undefined && { psk }),
      keepalive: f[7] === "off" ? 0 : Number(f[7]),
    });
  }
  const priv = none(head[0]);
  const pub = none(head[1]);
  return {
    ...(priv !== undefined && { privateKey: priv }),
    ...(pub !== undefined && { publicKey: pub }),
    listenPort: Number(head[2]),
    peers,
  };
}

/** The `wg set` arguments that make a peer what `peer` says. */
export function peerArgs(
  dev: string,
  peer: WgPeer,
  pskFile: string | undefined,
): string[] {
  return [
    "set",
    dev,
    "peer",
    peer.publicKey,
    "preshared-key",
    peer.psk !== undefined && pskFile !== undefined ? pskFile : "/dev/null",
    ...(peer.endpoint !== undefined ? ["endpoint", peer.endpoint] : []),
    "persistent-keepalive",
    peer.keepalive === 0 ? "off" : String(peer.keepalive),
    "allowed-ips",
    peer.allowedIps.join(","),
  ];
}

/** Options of {@linkcode WgCli}. */
export interface WgCliOptions {
  /** The `wg` program; default `wg` on PATH. */
  readonly program?: string;
  /** Prepended to every command (tests: a node's namespaces). */
  readonly prefix?: readonly string[];
}

/** Runs `wg` from wireguard-tools. */
export class WgCli implements Wg {
  readonly #cmd: readonly string[];

  constructor(opts: WgCliOptions = {}) {
    this.#cmd = [...opts.prefix ?? [], opts.program ?? "wg"];
  }

  #run(args: string[]): string {
    const [program, ...rest] = [...this.#cmd, ...args];
    const out = new Deno.Command(program!, {
      args: [...rest],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).outputSync();
    if (out.code !== 0) {
      const err = new TextDecoder().decode(out.stderr).trim();
      throw new Error(
        `wg ${args.slice(0, 2).join(" ")}${
          args[2] === "peer" ? ` peer ${args[3]}` : ""
        } failed (exit ${out.code}): ${err}`,
      );
    }
    return new TextDecoder().decode(out.stdout);
  }

  show(dev: string): WgDump {
    return parseDump(this.#run(["show", dev, "dump"]));
  }

  setDevice(dev: string, s: WgDeviceSettings): void {
    this.#run([
      "set",
      dev,
      "listen-port",
      String(s.listenPort),
      "private-key",
      s.privateKeyFile,
    ]);
  }

  setPeer(dev: string, peer: WgPeer, pskFile?: string): void {
    this.#run(peerArgs(dev, peer, pskFile));
  }

  removePeer(dev: string, publicKey: string): void {
    this.#run(["set", dev, "peer", publicKey, "remove"]);
  }
}
