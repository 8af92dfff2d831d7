#!/usr/bin/env bash
# Install the Debian packages a group of tests needs.
# Idempotent: when everything is installed it runs no apt at all (< 1 s).
#
#   tools/k8s/host-deps.sh [GROUP]           install what is missing
#   tools/k8s/host-deps.sh --check [GROUP]   exit 0 if everything is installed
#
# GROUP: node (default) the real node and the local image builds;
#        monitoring     Prometheus and promtool (the rule and dashboard tests).
set -euo pipefail

check=0
if [[ "${1:-}" == "--check" ]]; then check=1; shift; fi
GROUP="${1:-node}"
case "$GROUP" in
  node)
    PKGS=(
      podman buildah runc containerd          # image builds, container runtime
      debootstrap                             # local base image (no registry here)
      iptables nftables                       # kube-proxy, CNI portmap
      containernetworking-plugins             # bridge, host-local, portmap, loopback
      iproute2 conntrack ethtool socat        # kubelet/kube-proxy host tools
      uidmap fuse-overlayfs                   # podman/buildah expect them
      musl-tools                              # static tiny init for the pause image
      openssl curl ca-certificates
    ) ;;
  # /usr/bin/prometheus and /usr/bin/promtool. The tests run their own
  # Prometheus on loopback with a temporary data directory.
  monitoring) PKGS=(prometheus) ;;
  *) echo "unknown package group: $GROUP (node, monitoring)" >&2; exit 2 ;;
esac

log() { printf '[host-deps %s %s] %s\n' "$GROUP" "$(date +%H:%M:%S)" "$*" >&2; }

missing() {
  local p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

todo=$(missing)
if (( check )); then
  [[ -z "$todo" ]] && { log "all installed"; exit 0; }
  log "missing: $(echo $todo)"; exit 1
fi
if [[ -z "$todo" ]]; then
  log "all ${#PKGS[@]} packages already installed"
  exit 0
fi
[[ $EUID == 0 ]] || { echo "run as root (apt-get)" >&2; exit 1; }
T0=$(date +%s)
log "installing: $(echo $todo)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $todo >/dev/null
log "done in $(( $(date +%s) - T0 ))s"
