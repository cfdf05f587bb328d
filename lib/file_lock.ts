/**
 * An exclusive lock shared by processes: `flock(2)` on a lock file
 * (`flock <path> <command>` in shell). Used by the CNI plugin to run one
 * container's ADD, DEL and CHECK one at a time, whichever processes the
 * runtime starts them in.
 *
 * @module
 */

/** A held lock; see {@linkcode lockFile}. */
export interface FileLock {
  /**
   * Releases the lock; with `remove`, deletes the lock file first, while
   * still holding it (a waiter that opened the old file notices and
   * locks the new one). Idempotent.
   */
  release(remove?: boolean): Promise<void>;
}

/**
 * Waits for the exclusive lock on `path`, creating the file (mode 0600)
 * and its directory (mode `dirMode`) when missing. The lock ends with
 * {@linkcode FileLock.release} or with the process.
 *
 * @example
 * ```ts ignore
 * const lock = await lockFile("/var/lib/cni/flannel/.locks/abc");
 * try {
 *   // ... one container's work ...
 * } finally {
 *   await lock.release();
 * }
 * ```
 */
export async function lockFile(
  path: string,
  dirMode = 0o700,
): Promise<FileLock> {
  const dir = path.slice(0, Math.max(path.lastIndexOf("/"), 1));
  await Deno.mkdir(dir, { recursive: true, mode: dirMode });
  for (;;) {
    const file = await Deno.open(path, {
      read: true,
      write: true,
      create: true,
      mode: 0o600,
    });
    try {
      await file.lock(true);
      // The holder before us may have removed the file after we opened
      // it: our lock is on a file nobody else will open. Try again.
      const held = await file.stat();
      const now = await Deno.stat(path).catch(() => undefined);
      if (now !== undefined && now.ino === held.ino && now.dev === held.dev) {
        return heldLock(file, path);
      }
    } catch (e) {
      file.close();
      throw e;
    }
    file.close();
  }
}

function heldLock(file: Deno.FsFile, path: string): FileLock {
  let released = false;
  return {
    async release(remove = false) {
      if (released) return;
      released = true;
      try {
        if (remove) {
          await Deno.remove(path).catch((e) => {
            if (!(e instanceof Deno.errors.NotFound)) throw e;
          });
        }
      } finally {
        // Closing the descriptor drops the flock(2) lock.
        file.close();
      }
    },
  };
}
