/**
 * Atomic file replacement: readers see the old content or the new, never
 * a torn write. Used for subnet.env, the CNI plugin's state and the
 * conflist the init step installs.
 *
 * @module
 */

function splitPath(path: string): [dir: string, name: string] {
  const slash = path.lastIndexOf("/");
  if (slash < 0) return [".", path];
  return [slash === 0 ? "/" : path.slice(0, slash), path.slice(slash + 1)];
}

/**
 * Writes `content` to `path` atomically: a temporary file in the same
 * directory, fsync, chmod, rename over the target, then fsync of the
 * directory. Creates the directory (mode `dirMode`) when missing.
 */
export async function writeFileAtomic(
  path: string,
  content: string | Uint8Array,
  mode = 0o644,
  dirMode = 0o755,
): Promise<void> {
  const [dir, name] = splitPath(path);
  if (name === "") throw new Error(`Cannot write "${path}": not a file path`);
  let created = false;
  try {
    await Deno.stat(dir);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    await Deno.mkdir(dir, { recursive: true, mode: dirMode });
    created = true;
  }
  // mkdir's mode goes through the umask; flanneld's directory is 0755.
  if (created) await Deno.chmod(dir, dirMode);
  const tmp = `${dir}/.${name}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  const bytes = typeof content === "string"
    ? new TextEncoder().encode(content)
    : content;
  try {
    const file = await Deno.open(tmp, {
      write: true,
      createNew: true,
      mode,
    });
    try {
      let written = 0;
      while (written < bytes.length) {
        written += await file.write(bytes.subarray(written));
      }
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.chmod(tmp, mode);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`Cannot write "${path}": ${(e as Error).message}`);
  }
  try {
    // Persist the rename itself; best effort (not every fs allows it).
    const d = await Deno.open(dir, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  } catch {
    // A directory fsync failure does not undo the rename.
  }
}
