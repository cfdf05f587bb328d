#!/usr/bin/env bash
# Makes sure the machine has what the cluster tier (tests/k8s/) needs: the
# Debian packages (runc, buildah, mmdebstrap, busybox-static), the
# Kubernetes binaries, containerd 2 and CoreDNS built from the Go module
# proxy (.ci/build_servers.sh --with-cluster --with-containerd
# --with-coredns, cached) and the images (tests/k8s/images.sh, into
# $WEFT_CACHE/images/k8s), and helm for the Helm steps. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
packages=(runc buildah mmdebstrap busybox-static curl containernetworking-plugins)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "k8s prepare: missing Debian packages; run:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "k8s prepare: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
bash .ci/build_servers.sh --with-cluster --with-flanneld --with-helm --with-containerd --with-coredns
bash tests/k8s/images.sh "${WEFT_CACHE:-/var/cache/weft}/images/k8s" v0.1.0 v0.1.1
# The stock kube-flannel.yml of the flanneld version weft replaces, for the
# image-swap test: it ships in the flannel module (Documentation/).
GOMODCACHE="${WEFT_CACHE:-/var/cache/weft}/gomod" GOFLAGS=-mod=mod GOTOOLCHAIN=local \
  PATH="$PATH:/usr/local/go/bin" go mod download github.com/flannel-io/flannel@v0.28.9
