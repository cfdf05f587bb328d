/**
 * Names the commit a results file was measured at: the short hash, with
 * " plus uncommitted changes" when tracked files other than results files
 * (bench/results/, which one run writes tier by tier) differ from it. In a
 * copy without `.git`, `WEFT_FAULT_REV` names it, else "?".
 *
 * @module
 */

const ROOT = new URL("..", import.meta.url).pathname;

async function git(args: string[]): Promise<string | undefined> {
  try {
    const out = await new Deno.Command("git", {
      args: ["-C", ROOT, ...args],
      stdout: "piped",
      stderr: "null",
    }).output();
    return out.success
      ? new TextDecoder().decode(out.stdout).trim()
      : undefined;
  } catch {
    return undefined;
  }
}

/** The commit under measurement, as results files name it. */
export async function describeCommit(): Promise<string> {
  const head = await git(["rev-parse", "--short", "HEAD"]);
  if (head === undefined) return Deno.env.get("WEFT_FAULT_REV") ?? "?";
  const dirty = await git([
    "status",
    "--porcelain",
    "--untracked-files=no",
    "--",
    ".",
    ":!bench/results",
  ]);
  return dirty ? `${head} plus uncommitted changes` : head;
}
