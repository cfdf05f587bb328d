#!/bin/sh
# /opt/bin/install-conf in the weft image: what flannel's image provides
# under that name (flannel v0.28.9, cmd/install_conf), for a kube-flannel.yml
# whose install-cni step runs `/opt/bin/install-conf SRC DEST`: copy SRC to
# a temporary file beside DEST, then rename it over DEST, so a runtime never
# reads a half-written configuration.
set -e
if [ "$#" -ne 2 ]; then
  echo "usage: $0 <src> <dest>" >&2
  exit 1
fi
dir=$(dirname "$2")
tmp="$dir/.$(basename "$2").tmp"
if ! cp -f "$1" "$tmp" || ! mv -f "$tmp" "$2"; then
  echo "error installing \"$1\" as \"$2\"" >&2
  rm -f "$tmp"
  exit 1
fi
