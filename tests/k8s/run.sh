#!/usr/bin/env bash
# Runs the cluster tier (tests/k8s/) in two lanes at once, each with its own
# clusters (its own WEFT_K8S_PREFIX, so their namespaces, cgroups and
# directories never meet):
#
#   lane A  every *_test.ts but switch_test.ts (the main cluster, the demo,
#           k3s's layout, the modes), output shown as it comes;
#   lane B  switch_test.ts (flanneld switched to weft and back, twice),
#           output shown when the lane ends.
#
# The lanes take about as long as each other, so the tier takes half the
# time it would in one. Both write bench/results/k8s.md, one section at a
# time under a file lock. Each cluster's nodes and control plane have their
# own CPU cgroups and the probe pods request CPU, so one lane's load does not
# starve the other's probes.
#
# With arguments, runs just those files (or deno test flags) in one lane.
# Exit status: non-zero when either lane failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
perms=(--allow-run --allow-ffi --allow-read --allow-write --allow-env --allow-net --allow-sys)
prefix="${WEFT_K8S_PREFIX:-weft-k}"

if (($#)); then
  exec deno test --no-prompt "${perms[@]}" "$@"
fi

lane_a=()
for f in tests/k8s/*_test.ts; do
  [ "$f" = tests/k8s/switch_test.ts ] || lane_a+=("$f")
done
log_b="$(mktemp -t weft-k8s-lane-b.XXXXXX)"

WEFT_K8S_PREFIX="${prefix}b" deno test --no-prompt "${perms[@]}" \
  tests/k8s/switch_test.ts >"$log_b" 2>&1 &
pid_b=$!
# An interrupted run stops lane B too (its clusters are cleaned up by the
# next run with the same prefix).
trap 'kill "$pid_b" 2>/dev/null || true' INT TERM

rc_a=0
WEFT_K8S_PREFIX="${prefix}a" deno test --no-prompt "${perms[@]}" "${lane_a[@]}" || rc_a=$?
rc_b=0
wait "$pid_b" || rc_b=$?
trap - INT TERM

echo
echo "k8s lane B (tests/k8s/switch_test.ts, WEFT_K8S_PREFIX=${prefix}b):"
cat "$log_b"
rm -f "$log_b"
echo
echo "k8s lane A: exit $rc_a; lane B: exit $rc_b"
((rc_a == 0 && rc_b == 0))
