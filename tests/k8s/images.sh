#!/usr/bin/env bash
# tests/k8s/images.sh - build, offline, the images the cluster tier runs and
# write them as docker-archive tarballs for `ctr -n k8s.io images import`:
#
#   weft:<tag>            the project's Containerfile, WEFT_BINARY=deno-run
#                         (deno compile cannot fetch its runtime here), on a
#                         base made from Debian packages with mmdebstrap
#   weft-pause:1          the pod sandbox: busybox-static sleeping forever
#   weft-testpod:1        busybox-static (sh, ping, nc, wget, ip, httpd)
#   flanneld.tar          flanneld v0.28.9 (when built) in the weft image
#   weft-coredns:1        CoreDNS (when built by .ci/build_servers.sh
#                         --with-coredns): the static binary alone
#   weft-lib.tar          the weft image's /usr/local/lib/weft (deno and
#                         sources, which its CNI plugin needs on the node)
#
# Usage: tests/k8s/images.sh OUTDIR [WEFT_TAG...]   (default tag v0.1.0)
# Each weft tag is the same image under another name (rolling updates).
# Needs root, buildah, mmdebstrap, busybox-static; the Debian base tarball is
# cached in $WEFT_CACHE/images (default /var/cache/weft).
set -euo pipefail
self="$(readlink -f "$0")"
cd "$(dirname "$0")/../.."
out="${1:?usage: images.sh OUTDIR [TAG...]}"; shift
tags=("${@:-v0.1.0}")
cache="${WEFT_CACHE:-/var/cache/weft}/images"
mkdir -p "$out" "$cache"
log() { printf 'images: %s\n' "$*" >&2; }
# Root here lacks CAP_SYS_RESOURCE: an explicit nproc ulimit makes runc
# fail ("error setting rlimit type 6"); buildah's defaults work.
ulimits=()

flanneld_bin="${WEFT_CACHE:-/var/cache/weft}/bin/flanneld"
coredns_bin="${WEFT_CACHE:-/var/cache/weft}/bin/coredns"

# Everything that goes into the images, hashed: when OUTDIR holds tarballs
# made from the same inputs, they are reused (a second `prepare` or the
# demo after the tests costs seconds, not a rebuild).
inputs_hash() {
  {
    printf '%s\n' "${tags[@]}"
    sha256sum "$self" Containerfile deno.json deno.lock main.ts /bin/busybox \
      "$(readlink -f "$(command -v deno)")"
    find deploy agent backend cni ffi lib subnet traffic -type f -print0 | sort -z | xargs -0 sha256sum
    if [[ -x "$flanneld_bin" ]]; then sha256sum "$flanneld_bin"; fi
    if [[ -x "$coredns_bin" ]]; then sha256sum "$coredns_bin"; fi
  } | sha256sum | cut -d' ' -f1
}
hash="$(inputs_hash)"
if [[ -f "$out/inputs.sha256" && "$(cat "$out/inputs.sha256")" == "$hash" ]]; then
  log "up to date in $out (inputs unchanged)"
  exit 0
fi

base="$cache/debian-bookworm-weft-base.tar"
if [[ ! -f "$base" || ! -s "$base" ]]; then
  log "debian base: mmdebstrap (minbase + libnl, iptables, nftables, ca-certificates)"
  # mmdebstrap picks its output format from the file name unless told:
  # "x.tar.tmp" would become a directory.
  rm -rf "$base" "$base.tmp"
  mmdebstrap --quiet --variant=minbase --format=tar \
    --include=libnl-3-200,libnl-route-3-200,iptables,nftables,ca-certificates \
    bookworm "$base.tmp" http://deb.debian.org/debian
  mv -f "$base.tmp" "$base"
fi

work="$(mktemp -d /tmp/weft-k-images.XXXXXX)"
trap 'rm -rf "$work"' EXIT
from_tar() { # NAME TARBALL: an image whose only layer is TARBALL
  mkdir -p "$work/$1"
  cp "$2" "$work/$1/root.tar"
  printf 'FROM scratch\nADD root.tar /\n' >"$work/$1/Containerfile"
  buildah bud --quiet ${ulimits[@]+"${ulimits[@]}"} -t "$1" -f "$work/$1/Containerfile" "$work/$1" >/dev/null
}
from_tar localhost/weft-debian-base:bookworm "$base"

# busybox-static images: /bin/busybox and its applets, nothing else.
bb="$work/bb"
mkdir -p "$bb/bin" "$bb/etc" "$bb/tmp"
cp /bin/busybox "$bb/bin/busybox"
for a in $(/bin/busybox --list); do [[ "$a" == busybox ]] || ln -sf busybox "$bb/bin/$a"; done
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$bb/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$bb/etc/group"
tar -C "$bb" -cf "$work/bb.tar" .
mkdir -p "$work/pause" "$work/testpod"
cp "$work/bb.tar" "$work/pause/root.tar"
cp "$work/bb.tar" "$work/testpod/root.tar"
# PID 1 ignores signals it has no handler for: trap them so a stop is quick.
printf 'FROM scratch\nADD root.tar /\nENTRYPOINT ["/bin/sh", "-c", "trap \\"exit 0\\" TERM INT; while :; do sleep 3600 & wait; done"]\n' >"$work/pause/Containerfile"
printf 'FROM scratch\nADD root.tar /\nCMD ["/bin/sh"]\n' >"$work/testpod/Containerfile"
buildah bud --quiet ${ulimits[@]+"${ulimits[@]}"} -t localhost/weft-pause:1 -f "$work/pause/Containerfile" "$work/pause" >/dev/null
buildah bud --quiet ${ulimits[@]+"${ulimits[@]}"} -t localhost/weft-testpod:1 -f "$work/testpod/Containerfile" "$work/testpod" >/dev/null

# weft from the project's Containerfile; the deno binary goes into the context.
mkdir -p build
cp "$(readlink -f "$(command -v deno)")" build/deno
[[ -d node_modules ]] || deno install --frozen
log "weft: Containerfile, WEFT_BINARY=deno-run, BASE=localhost/weft-debian-base:bookworm"
buildah bud --quiet ${ulimits[@]+"${ulimits[@]}"} --network host \
  --build-arg BASE=localhost/weft-debian-base:bookworm --build-arg WEFT_BINARY=deno-run \
  -t "localhost/weft:${tags[0]}" -f Containerfile . >/dev/null
for t in "${tags[@]:1}"; do buildah tag "localhost/weft:${tags[0]}" "localhost/weft:$t"; done

# flanneld's image for the migration test, when .ci/build_servers.sh
# --with-flanneld built it: the weft image with the real flanneld as
# /opt/bin/flanneld (flannel's own CNI plugin is not on the module proxy,
# so /flannel stays weft's plugin, which reads the same subnet.env).
if [[ -x "$flanneld_bin" ]]; then
  mkdir -p "$work/flanneld"
  cp "$flanneld_bin" "$work/flanneld/flanneld"
  printf 'FROM localhost/weft:%s\nCOPY flanneld /opt/bin/flanneld.real\nRUN mv -f /opt/bin/flanneld.real /opt/bin/flanneld\nENTRYPOINT ["/opt/bin/flanneld"]\n' \
    "${tags[0]}" >"$work/flanneld/Containerfile"
  buildah bud --quiet -t localhost/flanneld:v0.28.9 -f "$work/flanneld/Containerfile" "$work/flanneld" >/dev/null
fi

# CoreDNS is static (CGO_ENABLED=0): the binary is the whole image.
if [[ -x "$coredns_bin" ]]; then
  mkdir -p "$work/coredns"
  cp "$coredns_bin" "$work/coredns/coredns"
  printf 'FROM scratch\nCOPY coredns /coredns\nENTRYPOINT ["/coredns"]\n' >"$work/coredns/Containerfile"
  buildah bud --quiet -t localhost/weft-coredns:1 -f "$work/coredns/Containerfile" "$work/coredns" >/dev/null
fi

rm -f "$out"/*.tar "$out/inputs.sha256"
for img in localhost/weft-pause:1 localhost/weft-testpod:1; do
  n="${img#localhost/}"; n="${n%%:*}"
  buildah push --quiet "$img" "docker-archive:$out/$n.tar:$img" >/dev/null
done
if [[ -x "$coredns_bin" ]]; then
  buildah push --quiet localhost/weft-coredns:1 "docker-archive:$out/weft-coredns.tar:localhost/weft-coredns:1" >/dev/null
fi
if [[ -x "$flanneld_bin" ]]; then
  buildah push --quiet localhost/flanneld:v0.28.9 "docker-archive:$out/flanneld.tar:localhost/flanneld:v0.28.9" >/dev/null
fi
for t in "${tags[@]}"; do
  buildah push --quiet "localhost/weft:$t" "docker-archive:$out/weft-$t.tar:localhost/weft:$t" >/dev/null
done
# The deno-run variant's CNI plugin runs on the node: the harness mounts the
# image's own /usr/local/lib/weft there.
c="$(buildah from "localhost/weft:${tags[0]}")"
mnt="$(buildah mount "$c")"
tar -C "$mnt/usr/local/lib" -cf "$out/weft-lib.tar" weft
buildah umount "$c" >/dev/null
buildah rm "$c" >/dev/null
printf '%s\n' "$hash" >"$out/inputs.sha256"
ls -la "$out" >&2
