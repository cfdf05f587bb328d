/**
 * Ownership of native libnl objects and the namespace switch used to open
 * sockets inside another network namespace. Every allocation is wrapped in
 * an {@linkcode Owned}, so callers write `using x = owned(...)` and the
 * object is freed exactly once, on every path.
 *
 * @module
 */
import { errno, errnoText, type Libs } from "./libnl.ts";
import { KernelError, NLE_NODEV } from "./types.ts";

/** A native pointer freed once when disposed, unless {@linkcode release}d. */
export class Owned implements Disposable {
  #ptr: Deno.PointerObject | null;
  readonly #free: (p: Deno.PointerObject) => void;

  constructor(ptr: Deno.PointerObject, free: (p: Deno.PointerObject) => void) {
    this.#ptr = ptr;
    this.#free = free;
  }

  /** The pointer; throws after dispose or release. */
  get ptr(): Deno.PointerObject {
    if (this.#ptr === null) throw new Error("Native object already freed");
    return this.#ptr;
  }

  /** Gives up ownership (the pointer now belongs to someone else). */
  release(): Deno.PointerObject {
    const p = this.ptr;
    this.#ptr = null;
    return p;
  }

  [Symbol.dispose](): void {
    const p = this.#ptr;
    this.#ptr = null;
    if (p !== null) this.#free(p);
  }
}

/** Wraps a fresh allocation; a null pointer (ENOMEM) throws. */
export function owned(
  ptr: Deno.PointerValue,
  free: (p: Deno.PointerObject) => void,
  what: string,
): Owned {
  if (ptr === null) throw new Error(`Cannot allocate ${what}: out of memory`);
  return new Owned(ptr, free);
}

const O_RDONLY = 0;
const O_CLOEXEC = 0o2000000;
/** `CLONE_NEWNET` for setns(2). */
export const CLONE_NEWNET = 0x40000000;
const encoder = new TextEncoder();

function openFd(libs: Libs, path: string): number {
  const fd = libs.libc.open(encoder.encode(path + "\0"), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const e = errno();
    throw new KernelError(
      "netns open",
      path,
      e === 2 ? NLE_NODEV : 0,
      errnoText(e),
    );
  }
  return fd;
}

/**
 * Runs `fn` with the calling thread inside the network namespace at `path`,
 * then moves the thread back. Sockets created by `fn` stay bound to that
 * namespace. Failing to move back leaves the thread in the wrong namespace,
 * which nothing can repair: that throws an error saying so.
 */
export function inNetns<T>(libs: Libs, path: string, fn: () => T): T {
  const { libc } = libs;
  const target = openFd(libs, path);
  let saved = -1;
  try {
    saved = openFd(libs, "/proc/thread-self/ns/net");
    if (libc.setns(target, CLONE_NEWNET) !== 0) {
      const e = errno();
      throw new KernelError("netns enter", path, 0, errnoText(e));
    }
    try {
      return fn();
    } finally {
      if (libc.setns(saved, CLONE_NEWNET) !== 0) {
        const e = errno();
        // deno-lint-ignore no-unsafe-finally
        throw new Error(
          `Cannot return to the original network namespace after "${path}": ${
            errnoText(e)
          }; this thread is now in the wrong namespace`,
        );
      }
    }
  } finally {
    if (saved >= 0) libc.close(saved);
    libc.close(target);
  }
}
