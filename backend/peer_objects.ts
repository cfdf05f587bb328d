/**
 * Per-peer kernel objects a backend keeps besides neighbours, FDB entries
 * and routes (a WireGuard peer), with the same shape as the rest of the
 * reconciler: desired objects as data, a read-back of what the kernel
 * holds, and a pure diff between the two that sets what is missing or
 * different and removes what no lease wants.
 *
 * @module
 */
import type { Lease } from "../subnet/lease.ts";
import type { FamilyPlan } from "./plan.ts";

/** One kernel object, named by its identity in the kernel. */
export interface PeerObject {
  /** Identity (a public key): the kernel holds one object per id. */
  readonly id: string;
}

/**
 * A backend's per-peer object set, as the reconciler drives it. Every
 * method but `desired` reaches the kernel and may throw.
 */
export interface PeerObjects<T extends PeerObject = PeerObject> {
  /** The object a lease needs, or undefined when it needs none. Pure. */
  desired(plan: FamilyPlan, lease: Lease): T | undefined;
  /** What the kernel holds now. */
  list(plan: FamilyPlan): T[];
  /** Whether the kernel's `have` is what `want` asks for. */
  same(want: T, have: T): boolean;
  /** Creates or replaces the object. */
  set(plan: FamilyPlan, obj: T): void;
  /** Removes the object; a missing one is no error. */
  del(plan: FamilyPlan, obj: T): void;
  /** The object's change in words, for logs (`wg set ... peer KEY ...`). */
  describe(kind: "set" | "del", obj: T): string;
}

/** One change to the object set; `peer` names the lease it is for. */
export interface ObjectOp<T extends PeerObject = PeerObject> {
  readonly kind: "set" | "del";
  readonly obj: T;
  readonly peer?: string;
}

/**
 * The changes that turn `actual` into `desired` (lease key → object):
 * sets first, so a peer's new object is in before anything goes, then
 * removals of ids nobody wants. Idempotent: equal input gives nothing.
 */
export function diffObjects<T extends PeerObject>(
  objects: Pick<PeerObjects<T>, "same">,
  desired: ReadonlyMap<string, T>,
  actual: Iterable<T>,
): ObjectOp<T>[] {
  const have = new Map<string, T>();
  for (const o of actual) have.set(o.id, o);
  const want = new Set<string>();
  const ops: ObjectOp<T>[] = [];
  for (const [peer, obj] of desired) {
    want.add(obj.id);
    const h = have.get(obj.id);
    if (!h || !objects.same(obj, h)) ops.push({ kind: "set", obj, peer });
  }
  for (const [id, obj] of have) {
    if (!want.has(id)) ops.push({ kind: "del", obj });
  }
  return ops;
}
