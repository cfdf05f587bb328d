#!/usr/bin/env bash
# Makes sure the machine has what the tests (or, with --demo, the demo)
# need: Debian packages, and for the integration tier the kube-apiserver and
# etcd >= 3.5 test binaries (built once from the Go module proxy and cached
# outside the repository by .ci/build_servers.sh). As root it installs what
# is missing; otherwise it stops with the exact command to run.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libnl-3-200 libnl-route-3-200 iproute2 iputils-ping iptables nftables
  etcd-server etcd-client curl containernetworking-plugins iperf3 openssl
  libfaketime wireguard-tools tcpdump)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "prepare: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "prepare: missing Debian packages; run:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
# Debian's etcd-server package may start a host etcd; tests start their own.
if [ "${1:-}" != "--demo" ] && [ -x .ci/build_servers.sh ] && [ "${WEFT_SKIP_SERVER_BUILD:-}" != 1 ]; then
  # flanneld v0.28.9 is the reference the conformance tier runs weft against
  # (its module also holds flannel's chart); helm renders chart/weft;
  # wireguard-go is userspace WireGuard for the wireguard backend's tests.
  bash .ci/build_servers.sh --with-flanneld --with-helm --with-wireguard
fi
deno install --frozen >/dev/null
