#!/bin/sh
# /usr/local/bin/weft in the "deno-run" variant of the image (Containerfile,
# WEFT_BINARY=deno-run): weft's sources under `deno run` with exactly the
# permission list and V8 flags `deno task compile` bakes into the binary. Installed as
# the CNI plugin (named "flannel") it acts as one, as the binary does; the
# runtime and sources must then be at /usr/local/lib/weft on the node too.
set -ef
root=/usr/local/lib/weft
case "$0" in
  flannel | */flannel) set -- cni "$@" ;;
esac
# deno keeps its transpile cache here; nothing weft itself reads or writes.
export DENO_DIR="${DENO_DIR:-/tmp/weft-deno-cache}"
export DENO_NO_UPDATE_CHECK=1
# shellcheck disable=SC2046 # one flag per word, globbing off (set -f)
exec "$root/deno" run --no-prompt --cached-only \
  $(cat "$root/src/deploy/v8-flags.txt") \
  $(cat "$root/src/deploy/permissions.txt") "$root/src/main.ts" "$@"
