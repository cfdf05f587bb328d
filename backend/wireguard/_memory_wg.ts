/**
 * An in-memory {@linkcode Wg} over a {@linkcode MemoryKernel}: a link of
 * kind `wireguard` or `tun` is a WireGuard device, whose key, port and
 * peers live here. The public key is a stand-in derived from the private
 * key (its bytes reversed), enough for tests that compare keys.
 *
 * @module
 */
import type { MemoryKernel } from "../memory_kernel.ts";
import type { UserspaceStarter } from "./device.ts";
import type { Wg, WgDeviceSettings, WgDump, WgPeer } from "./wg.ts";

interface Device {
  privateKey?: string;
  listenPort: number;
  peers: Map<string, WgPeer>;
}

/** The stand-in public key of a private key. */
export function fakePublicKey(privateKey: string): string {
  const b = Uint8Array.from(atob(privateKey), (c) => c.charCodeAt(0));
  return btoa(String.fromCharCode(...b.reverse()));
}

/** `wg` over the memory kernel; `calls` counts set/remove calls, `shows` reads. */
export class MemoryWg implements Wg {
  readonly #kernel: MemoryKernel;
  readonly devices = new Map<string, Device>();
  /** Private key files by path, as `wg` would read them. */
  readonly files = new Map<string, string>();
  calls = 0;
  shows = 0;
  /** Makes setPeer fail for this public key (a refusing kernel). */
  failKey: string | undefined;

  constructor(kernel: MemoryKernel) {
    this.#kernel = kernel;
  }

  #dev(name: string): Device {
    const link = this.#kernel.linkByName(name);
    if (link?.kind !== "wireguard" && link?.kind !== "tun") {
      this.devices.delete(name);
      throw new Error(`Unable to access interface ${name}: No such device`);
    }
    let d = this.devices.get(name);
    if (!d) this.devices.set(name, d = { listenPort: 0, peers: new Map() });
    return d;
  }

  show(dev: string): WgDump {
    this.shows++;
    const d = this.#dev(dev);
    return {
      ...(d.privateKey !== undefined && {
        privateKey: d.privateKey,
        publicKey: fakePublicKey(d.privateKey),
      }),
      listenPort: d.listenPort,
      peers: [...d.peers.values()],
    };
  }

  setDevice(dev: string, s: WgDeviceSettings): void {
    const d = this.#dev(dev);
    this.calls++;
    const key = this.files.get(s.privateKeyFile);
    if (key === undefined) throw new Error(`No file ${s.privateKeyFile}`);
    d.privateKey = key;
    d.listenPort = s.listenPort;
  }

  setPeer(dev: string, peer: WgPeer, pskFile?: string): void {
    const d = this.#dev(dev);
    this.calls++;
    if (peer.publicKey === this.failKey) throw new Error("Invalid argument");
    // As `wg`: the PSK comes from the file named, trimmed, else none.
    const { psk: _asked, ...rest } = peer;
    const psk = peer.psk !== undefined && pskFile !== undefined
      ? this.files.get(pskFile)?.trim()
      : undefined;
    d.peers.set(peer.publicKey, {
      ...rest,
      ...(psk !== undefined && { psk }),
      allowedIps: [...peer.allowedIps],
    });
  }

  removePeer(dev: string, publicKey: string): void {
    this.calls++;
    this.#dev(dev).peers.delete(publicKey);
  }

  /** A userspace starter that makes a TUN link of the name. */
  starter(): UserspaceStarter & { started: string[] } {
    const started: string[] = [];
    const start = (name: string) => {
      started.push(name);
      const l = this.#kernel.addDevice(name, 1420, false);
      this.#kernel.links.set(l.index, { ...l, kind: "tun" });
    };
    return Object.assign(start, { started });
  }
}
