#!/usr/bin/env bash
# The whole suite (`deno task test`): prepare, then the tiers in order, each
# stopping the run when it fails.
#
# The cluster tier's preparation (tests/k8s/prepare.sh: Kubernetes,
# containerd and CoreDNS builds, images; about 9 minutes from an empty cache)
# runs in the background, at the lowest CPU priority, while the tiers that do
# not need it run; the cluster tier (tests/k8s/run.sh) waits for it. Its
# output is shown when it ends.
#
# A run that passes records how long each part took in
# bench/results/test-times.md, in the section for a cold run (no server
# binaries cached in WEFT_CACHE at the start: everything is built) or a
# warm one. Deno's own cache cannot tell: `deno task` fills DENO_DIR with
# the npm packages before this script starts.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${WEFT_CACHE:-/var/cache/weft}"
cold=1
if [ -d "$cache/bin" ]; then cold=0; fi
start=$SECONDS
times=()
timed() { # timed NAME CMD...: runs CMD, records its seconds under NAME
  local name="$1" t=$SECONDS
  shift
  "$@"
  times+=("$name|$((SECONDS - t))")
}

timed "tests/prepare.sh (Debian packages, servers)" bash tests/prepare.sh

prep_log="$(mktemp -t weft-k8s-prepare.XXXXXX)"
# Its own session, so one kill stops the builds it started.
prep_start=$SECONDS
setsid nice -n 19 bash tests/k8s/prepare.sh >"$prep_log" 2>&1 &
prep=$!
stop_prep() {
  kill -- -"$prep" 2>/dev/null || true
  wait "$prep" 2>/dev/null || true
  rm -f "$prep_log"
}
trap stop_prep EXIT

for tier in unit netns integration e2e conformance; do
  timed "test:$tier" deno task "test:$tier"
done

rc=0
waited=$SECONDS
wait "$prep" || rc=$?
echo "tests/k8s/prepare.sh (run beside the tiers above, exit $rc):"
cat "$prep_log"
trap - EXIT
rm -f "$prep_log"
((rc == 0)) || exit "$rc"
times+=("tests/k8s/prepare.sh (in the background from its start; waited for after test:conformance: $((SECONDS - waited)) s)|$((SECONDS - prep_start))")

timed "test:k8s (tests/k8s/run.sh, two lanes)" bash tests/k8s/run.sh

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no -- . ':!bench/results' 2>/dev/null)" ]; then
  commit="$commit plus uncommitted changes"
fi
if ((cold)); then
  heading="## Cold: no server binaries cached in $cache at the start"
else
  heading="## Warm: server binaries cached by an earlier run"
fi
section="$heading

\`deno task test\` (tests/test.sh), $(date -u +%Y-%m-%d), commit $commit, $(nproc) cores, Linux $(uname -r), CI=${CI:-}.

| part | seconds |
| --- | ---: |
$(for t in "${times[@]}"; do printf '| %s | %s |\n' "${t%%|*}" "${t##*|}"; done)
| **whole run** | **$((SECONDS - start))** |
"
out=bench/results/test-times.md
[ -f "$out" ] || printf '# How long `deno task test` takes\n\nWritten by tests/test.sh at the end of a run that passed.\n' >"$out"
tmp="$(mktemp)"
printf '%s\n' "$section" >"$tmp"
# Replaces this kind's section (up to the next "## "), or appends it.
awk -v kind="${heading:0:7}" -v file="$tmp" '
  BEGIN { while ((getline l < file) > 0) sec = sec l "\n" }
  /^## / { skip = 0; if (index($0, kind) == 1) { printf "%s", sec; done = 1; skip = 1; next } }
  !skip { print }
  END { if (!done) printf "\n%s", sec }
' "$out" >"$tmp.new"
mv -f "$tmp.new" "$out"
rm -f "$tmp"
echo "times written to $out"
