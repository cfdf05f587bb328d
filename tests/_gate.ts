/**
 * The one way a test declares what it needs of the machine: root for
 * network namespaces, or real servers (Debian's etcd, kube-apiserver and
 * etcd >= 3.5, flanneld). A need that is not met makes the test ignored,
 * with the reason printed once, when run by hand; under `CI=true` the test
 * runs and fails with that reason instead, so CI can never pass a tier
 * that did not do its work.
 *
 * @module
 */

/** What a test needs: undefined when met, else a sentence saying what is missing and how to get it. */
export type Need = () => string | undefined | Promise<string | undefined>;

/** Root, for network namespaces and netlink. */
export const ROOT: Need = () =>
  Deno.uid() === 0
    ? undefined
    : "needs root (network namespaces, netlink); run as root or with sudo";

/** Options of {@linkcode gatedTest}. */
export interface GatedTest {
  readonly name: string;
  /** Checked once, when the test module loads. */
  readonly needs: readonly Need[];
  readonly fn: (t: Deno.TestContext) => Promise<void> | void;
  /**
   * Deno's op and resource sanitizers. Default false: servers, namespaces
   * and watch streams outlive single awaits by design, and each test
   * awaits what it started.
   */
  readonly sanitize?: boolean;
}

const warned = new Set<string>();

/**
 * Declares a test that runs only where its needs are met (see the module
 * doc). Needs that answer synchronously register the test at once; a test
 * with an asynchronous need must be awaited at the module's top level
 * (`await gatedTest(...)`) so that it is registered while the module loads.
 */
export function gatedTest(def: GatedTest): void | Promise<void> {
  const answers = def.needs.map((need) => need());
  if (answers.every((a) => !(a instanceof Promise))) {
    register(def, (answers as (string | undefined)[]).find((a) => a));
    return;
  }
  return Promise.all(answers).then((all) =>
    register(def, all.find((a) => a !== undefined))
  );
}

function register(def: GatedTest, why: string | undefined): void {
  const ci = Deno.env.get("CI") === "true";
  if (why !== undefined && !ci && !warned.has(why)) {
    warned.add(why);
    console.warn(`ignored (${why}): ${def.name}`);
  }
  const sanitize = def.sanitize ?? false;
  Deno.test({
    name: def.name,
    ignore: why !== undefined && !ci,
    sanitizeOps: sanitize,
    sanitizeResources: sanitize,
    fn: async (t) => {
      if (why !== undefined) {
        throw new Error(`${why}; CI=true forbids skipping`);
      }
      await def.fn(t);
    },
  });
}
