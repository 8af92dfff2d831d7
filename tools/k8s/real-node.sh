#!/usr/bin/env bash
# One real Kubernetes node beside kwok's fake ones: containerd + kubelet +
# kube-proxy on this machine, joined to the control plane of cluster.sh, so
# pods of locally built images really run (on the CPU).
#
#   tools/k8s/real-node.sh up       start it (the cluster must be up)
#   tools/k8s/real-node.sh down     stop it and undo everything it changed on the host
#   tools/k8s/real-node.sh status
#
# Only one real node can exist on a machine (kubelet cgroups, iptables, the
# Service route): `up` refuses when another one's state dir exists.
#
# What `up` changes on the host, and `down` undoes (also after a failed `up`):
#   - bridge $BRIDGE with $NODE_IP/16 (pods get IPs from it; no default route
#     in pods, and a FORWARD rule drops anything from the bridge to another
#     interface: nothing a pod sends can leave the machine)
#   - the Service range route: 10.96.0.0/16 -> $BRIDGE (instead of the
#     `unreachable` route cluster.sh installs; restored on down)
#   - sysctls the kubelet/kube-proxy set (saved first, restored)
#   - KUBE-* iptables chains (kubelet, kube-proxy), chain LORAPLEX-REAL-NODE
#   - cgroups under /$CGROUP_ROOT in every cgroup v1 controller
#   - processes: containerd, kubelet, kube-proxy, shims, pod processes
#   - a private mount namespace holds every mount containerd and the kubelet
#     make (rootfs overlays, volumes, netns bind mounts): none reach the host's
#     mount table, and all go away with the namespace.
#
# Environment (defaults in brackets):
#   LORAPLEX_CLUSTER_DIR, LORAPLEX_APISERVER_PORT, LORAPLEX_K8S_CACHE: as cluster.sh
#   LORAPLEX_REAL_NODE_DIR      run state, removed on down [$HOME/.cache/loraplex/real-node]
#   LORAPLEX_REAL_NODE_IMAGES   containerd root (imported images), kept across
#                               down/up; `down --purge` removes it
#                               [$HOME/.cache/loraplex/real-node-images]
#   LORAPLEX_REAL_NODE_NAME     node name [loraplex-real-0]
#   LORAPLEX_REAL_NODE_CIDR     pod network on the bridge [10.77.0.0/16]
#   LORAPLEX_REAL_NODE_GPUS     fake nvidia.com/gpu capacity patched into the node [2]
#   LORAPLEX_KUBELET_PORT       kubelet API port on the node IP [10250]
#   LORAPLEX_REAL_NODE_TAINT    registered taint ["" for none] [loraplex.io/real-node=true:NoSchedule]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${LORAPLEX_K8S_CACHE:-$HOME/.cache/loraplex/k8s}"
BIN="$CACHE/bin"
CLUSTER="${LORAPLEX_CLUSTER_DIR:-$HOME/.cache/loraplex/cluster}"
API_PORT="${LORAPLEX_APISERVER_PORT:-16443}"
PKI="$CLUSTER/pki"
DIR="${LORAPLEX_REAL_NODE_DIR:-$HOME/.cache/loraplex/real-node}"
CTR_ROOT="${LORAPLEX_REAL_NODE_IMAGES:-$HOME/.cache/loraplex/real-node-images}"
NODE="${LORAPLEX_REAL_NODE_NAME:-loraplex-real-0}"
POD_NET="${LORAPLEX_REAL_NODE_CIDR:-10.77.0.0/16}"
GPUS="${LORAPLEX_REAL_NODE_GPUS:-2}"
KUBELET_PORT="${LORAPLEX_KUBELET_PORT:-10250}"
TAINT="${LORAPLEX_REAL_NODE_TAINT-loraplex.io/real-node=true:NoSchedule}"
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
BRIDGE=lpxbr0
FWD_CHAIN=LORAPLEX-REAL-NODE
CGROUP_ROOT=loraplex-real-node
PAUSE_IMAGE=localhost/loraplex/pause:1

NET_BASE=${POD_NET%/*}; NET_BASE=${NET_BASE%.*.*}
NODE_IP="$NET_BASE.0.1"
SOCK="$DIR/containerd/containerd.sock"
LOGS="$DIR/logs"; PIDS="$DIR/pids"
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward
         net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables net.netfilter.nf_conntrack_max)

log() { printf '[real-node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[real-node] ERROR: %s\n' "$*" >&2; exit 1; }
kc() { "$BIN/kubectl" --kubeconfig "$CLUSTER/kubeconfig" "$@"; }

pid_of() { [[ -f "$PIDS/$1.pid" ]] && cat "$PIDS/$1.pid" || true; }
alive() { local p; p=$(pid_of "$1"); [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; }

# --- pki --------------------------------------------------------------------------
# sign NAME SUBJECT EXTENSIONS: a key and a cert signed by the cluster CA.
sign() {
  local n=$1
  openssl req -new -newkey rsa:2048 -nodes -keyout "$DIR/pki/$n.key" -out "$DIR/pki/$n.csr" -subj "$2" 2>/dev/null
  printf '%s\n' "$3" >"$DIR/pki/$n.ext"
  openssl x509 -req -in "$DIR/pki/$n.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -CAserial "$DIR/pki/ca.srl" -days 3650 -sha256 -extfile "$DIR/pki/$n.ext" -out "$DIR/pki/$n.crt" 2>/dev/null
  rm -f "$DIR/pki/$n.csr" "$DIR/pki/$n.ext"
}

kubeconfig_for() {  # FILE CERT-NAME
  local f=$1 u=$2 k=("$BIN/kubectl" config --kubeconfig "$1")
  "${k[@]}" set-cluster loraplex-test --server "https://127.0.0.1:$API_PORT" \
    --certificate-authority "$PKI/ca.crt" --embed-certs >/dev/null
  "${k[@]}" set-credentials "$u" --client-certificate "$DIR/pki/$u.crt" --client-key "$DIR/pki/$u.key" --embed-certs >/dev/null
  "${k[@]}" set-context loraplex-test --cluster loraplex-test --user "$u" >/dev/null
  "${k[@]}" use-context loraplex-test >/dev/null
  chmod 600 "$f"
}

gen_pki() {
  mkdir -p "$DIR/pki"
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  sign kubelet-client "/O=system:nodes/CN=system:node:$NODE" "$client"
  sign kube-proxy "/CN=system:kube-proxy" "$client"
  sign kubelet-serving "/O=system:nodes/CN=system:node:$NODE" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE,DNS:localhost"
  kubeconfig_for "$DIR/kubelet.kubeconfig" kubelet-client
  kubeconfig_for "$DIR/kube-proxy.kubeconfig" kube-proxy
}

# --- host state: sysctls, routes, bridge, iptables ----------------------------------
save_sysctls() {
  # Only the first `up` after a clean `down` saves: a retry must not save
  # values the kubelet already changed.
  [[ -f "$DIR/sysctls.saved" ]] && return 0
  local s v
  for s in "${SYSCTLS[@]}"; do
    v=$(sysctl -n "$s" 2>/dev/null) && printf '%s=%s\n' "$s" "$v" >>"$DIR/sysctls.saved.tmp"
  done
  mv "$DIR/sysctls.saved.tmp" "$DIR/sysctls.saved"
}

restore_sysctls() {
  [[ -f "$DIR/sysctls.saved" ]] || return 0
  local line
  while IFS= read -r line; do
    sysctl -q -w "$line" >/dev/null 2>&1 || log "could not restore sysctl $line"
  done <"$DIR/sysctls.saved"
  log "restored sysctls: $(tr '\n' ' ' <"$DIR/sysctls.saved")"
  rm -f "$DIR/sysctls.saved"
}

check_network() {
  local r
  # The pod network must not overlap anything routed already.
  r=$(ip -4 route show to match "$NODE_IP" | grep -v '^default' || true)
  [[ -z "$r" || "$r" == *"dev $BRIDGE "* ]] || die "pod network $POD_NET overlaps an existing route: $r (set LORAPLEX_REAL_NODE_CIDR)"
  for r in 10.244.0.0/16 "$SERVICE_CIDR"; do
    [[ "$POD_NET" != "$r" ]] || die "pod network must not be $r"
  done
}

setup_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/${POD_NET#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Service range: local packets to a ClusterIP need a route before
  # kube-proxy's DNAT (OUTPUT chain) rewrites them to a pod IP.
  if [[ ! -f "$DIR/service-route.saved" ]]; then
    ip -4 route show exact "$SERVICE_CIDR" >"$DIR/service-route.saved" 2>/dev/null || true
  fi
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
  # Nothing from the pods leaves through another interface.
  iptables -w -N "$FWD_CHAIN" 2>/dev/null || iptables -w -F "$FWD_CHAIN"
  iptables -w -A "$FWD_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
  iptables -w -C FORWARD -j "$FWD_CHAIN" 2>/dev/null || iptables -w -I FORWARD 1 -j "$FWD_CHAIN"
  local got
  for ip in "$NET_BASE.0.2" 10.96.0.1; do
    got=$(ip -4 route get "$ip")
    [[ "$got" == *"dev $BRIDGE "* ]] || die "route check: $ip goes '$got', not via $BRIDGE"
  done
}

# The apiserver listens on 127.0.0.1 only and the `kubernetes` Service has no
# endpoints (cluster.sh: --endpoint-reconciler-type none). Pods on the bridge
# reach it at the in-cluster address 10.96.0.1:443 (in the serving cert)
# through a DNAT to 127.0.0.1, ahead of kube-proxy's rules; route_localnet is
# set on the bridge only (it goes away with it). Nothing else changes.
API_CHAIN=LORAPLEX-REAL-NODE-API
setup_api_access() {
  sysctl -q -w "net.ipv4.conf.$BRIDGE.route_localnet=1" >/dev/null
  iptables -w -t nat -N "$API_CHAIN" 2>/dev/null || iptables -w -t nat -F "$API_CHAIN"
  iptables -w -t nat -A "$API_CHAIN" -d "${SERVICE_IP}/32" -p tcp --dport 443 \
    -j DNAT --to-destination "127.0.0.1:$API_PORT"
  iptables -w -t nat -C PREROUTING -i "$BRIDGE" -j "$API_CHAIN" 2>/dev/null \
    || iptables -w -t nat -I PREROUTING 1 -i "$BRIDGE" -j "$API_CHAIN"
}

teardown_network() {
  if iptables -w -t nat -L "$API_CHAIN" -n >/dev/null 2>&1; then
    while iptables -w -t nat -D PREROUTING -i "$BRIDGE" -j "$API_CHAIN" 2>/dev/null; do :; done
    iptables -w -t nat -F "$API_CHAIN"; iptables -w -t nat -X "$API_CHAIN"
  fi
  if iptables -w -L "$FWD_CHAIN" -n >/dev/null 2>&1; then
    while iptables -w -D FORWARD -j "$FWD_CHAIN" 2>/dev/null; do :; done
    iptables -w -F "$FWD_CHAIN"; iptables -w -X "$FWD_CHAIN"
  fi
  if ip -4 route show exact "$SERVICE_CIDR" | grep -q "dev $BRIDGE"; then
    ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
  fi
  if [[ -s "$DIR/service-route.saved" ]]; then
    # e.g. "unreachable 10.96.0.0/16": put back what cluster.sh had installed.
    # shellcheck disable=SC2046
    ip route replace $(cat "$DIR/service-route.saved") 2>/dev/null \
      && log "restored route: $(cat "$DIR/service-route.saved")" || log "could not restore route $(cat "$DIR/service-route.saved")"
  fi
  rm -f "$DIR/service-route.saved"
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; log "removed bridge $BRIDGE"; fi
}

# Remove every KUBE-* chain (kubelet's and kube-proxy's) from iptables and
# ip6tables; only one real node may run on a machine, so they are ours.
cleanup_kube_chains() {
  local ipt table chains c
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle raw; do
      chains=$("$ipt" -w -t "$table" -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^KUBE-/ {print $2}') || continue
      [[ -n "$chains" ]] || continue
      # Drop every rule jumping to a KUBE-* chain from the built-in chains first.
      "$ipt" -w -t "$table" -S 2>/dev/null | awk '$1=="-A" && $2 !~ /^KUBE-/ && / -j KUBE-/' | \
        while read -r line; do
          # shellcheck disable=SC2086
          "$ipt" -w -t "$table" -D ${line#-A } 2>/dev/null || true
        done
      for c in $chains; do "$ipt" -w -t "$table" -F "$c" 2>/dev/null || true; done
      for c in $chains; do "$ipt" -w -t "$table" -X "$c" 2>/dev/null || true; done
    done
  done
  for fam in ip ip6; do nft delete table "$fam" kube-proxy 2>/dev/null || true; done
}

# --- cgroups --------------------------------------------------------------------------
cgroup_dirs() {  # every v1 controller mount point, and the v2 mount of a hybrid setup
  awk '$3=="cgroup" || $3=="cgroup2" {print $2}' /proc/mounts
}

kill_cgroup_procs() {
  local d pids
  for d in $(cgroup_dirs); do
    [[ -d "$d/$CGROUP_ROOT" ]] || continue
    pids=$(find "$d/$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u) || true
    [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null || true
  done
}

remove_cgroups() {
  local d
  for d in $(cgroup_dirs); do
    [[ -d "$d/$CGROUP_ROOT" ]] || continue
    # Depth first; a cgroup with processes left cannot go (reported below).
    find "$d/$CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [[ -d "$d/$CGROUP_ROOT" ]] && log "WARNING: $d/$CGROUP_ROOT still there (processes left?)"
  done
  return 0
}

# --- processes ---------------------------------------------------------------------------
# start NAME CMD...: run inside the node's mount namespace, log, remember the pid.
start() {
  local name=$1; shift
  log "starting $name (log: $LOGS/$name.log)"
  setsid nsenter --mount="$DIR/mntns" -- "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

stop() {  # NAME [SIGNAL]
  local name=$1 p; p=$(pid_of "$1")
  [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null || { rm -f "$PIDS/$name.pid"; return 0; }
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$p" 2>/dev/null && { log "$name ($p) did not stop, KILL"; kill -KILL "$p" 2>/dev/null || true; }
  rm -f "$PIDS/$name.pid"
  log "stopped $name ($p)"
}

# containerd's shims outlive it; they are ours when their command line names our socket.
kill_shims() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- "-address $SOCK " || continue
    kill -KILL "${p#/proc/}" 2>/dev/null || true
  done
}

wait_for() {  # DESCRIPTION SECONDS COMPONENT CMD...
  local what=$1 secs=$2 comp=$3; shift 3
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$comp" ]] && ! alive "$comp"; then
      tail -n 30 "$LOGS/$comp.log" >&2 || true
      die "$comp exited while waiting for $what (log: $LOGS/$comp.log)"
    fi
    (( $(date +%s) < end )) || { tail -n 20 "$LOGS/$comp.log" >&2 || true; die "timed out after ${secs}s waiting for $what"; }
    sleep 0.5
  done
}

# --- configs ----------------------------------------------------------------------------------
write_configs() {
  mkdir -p "$DIR/cni/net.d" "$DIR/cni/ipam" "$DIR/containerd/state" "$CTR_ROOT" "$DIR/kubelet" "$DIR/pod-logs"
  cat >"$DIR/containerd/config.toml" <<EOF
version = 2
root = "$CTR_ROOT"
state = "$DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE here: runc cannot write negative oom_score_adj values.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
EOF
  # No default route in pods: they reach the pod network (on-link) and the
  # Service range (via the bridge, where kube-proxy's DNAT happens), nothing else.
  cat >"$DIR/cni/net.d/10-loraplex.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "loraplex-real-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_NET", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  # Pods resolve nothing outside (no cluster DNS here; nothing may leave the machine).
  printf 'nameserver 127.0.0.1\noptions ndots:1\n' >"$DIR/resolv.conf"
  local taints=""
  if [[ -n "$TAINT" ]]; then
    local k=${TAINT%%=*} rest=${TAINT#*=}
    taints="registerWithTaints:
- key: $k
  value: \"${rest%%:*}\"
  effect: ${rest##*:}"
  fi
  cat >"$DIR/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
tlsCertFile: $DIR/pki/kubelet-serving.crt
tlsPrivateKeyFile: $DIR/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
# No CAP_SYS_RESOURCE: oom_score_adj cannot go negative.
oomScoreAdj: 0
containerRuntimeEndpoint: unix://$SOCK
podLogsDir: $DIR/pod-logs
resolvConf: $DIR/resolv.conf
clusterDomain: cluster.local
# Locally imported images must never be garbage-collected: nothing can pull them back.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
serializeImagePulls: false
maxPods: 30
nodeStatusReportFrequency: 10s
$taints
EOF
  cat >"$DIR/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $DIR/kube-proxy.kubeconfig
mode: iptables
hostnameOverride: $NODE
clusterCIDR: $POD_NET
detectLocalMode: ClusterCIDR
# NodePorts only on the bridge address, never on the machine's real interfaces.
nodePortAddresses: ["$NODE_IP/32"]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables:
  localhostNodePorts: false
  masqueradeAll: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# --- commands -------------------------------------------------------------------------------------
cmd_status() {
  local c rc=0
  echo "real node:  $NODE (ip $NODE_IP, state $DIR)"
  for c in mntns containerd kubelet kube-proxy; do
    if alive "$c"; then printf '  %-12s running (pid %s)\n' "$c" "$(pid_of "$c")"
    else printf '  %-12s not running\n' "$c"; rc=1; fi
  done
  if [[ $rc == 0 && -f "$CLUSTER/kubeconfig" ]]; then
    kc get node "$NODE" -o wide 2>&1 | sed 's/^/  /'
  fi
  return $rc
}

cmd_down() {
  local purge=${1:-}
  if [[ ! -d "$DIR" && ! -e /sys/class/net/$BRIDGE ]]; then
    [[ $purge == --purge ]] && rm -rf "$CTR_ROOT"
    log "nothing to do"; return 0
  fi
  stop kube-proxy
  [[ -x "$BIN/kube-proxy" ]] && "$BIN/kube-proxy" --cleanup >"$LOGS/kube-proxy-cleanup.log" 2>&1 || true
  stop kubelet
  # Pods: everything in our cgroup tree, then the shims, then containerd.
  kill_cgroup_procs
  kill_shims
  stop containerd
  kill_cgroup_procs
  stop mntns
  mountpoint -q "$DIR/mntns" 2>/dev/null && umount "$DIR/mntns"
  remove_cgroups
  cleanup_kube_chains
  teardown_network
  restore_sysctls
  # containerd named the pod network namespaces here; their mounts lived in
  # the private mount namespace, so only the empty files are left.
  if [[ -f "$DIR/netns.before" ]]; then
    local f
    for f in /var/run/netns/cni-*; do
      [[ -e "$f" ]] || continue
      grep -qxF "$f" "$DIR/netns.before" || { mountpoint -q "$f" || rm -f "$f"; }
    done
  fi
  if [[ -f "$CLUSTER/kubeconfig" ]] && kc get node "$NODE" >/dev/null 2>&1; then
    kc delete node "$NODE" --wait=false >/dev/null 2>&1 || true
  fi
  if grep -q " $DIR" /proc/mounts; then
    log "WARNING: mounts left under $DIR:"; grep " $DIR" /proc/mounts >&2
  else
    rm -rf "$DIR"
  fi
  [[ $purge == --purge ]] && { rm -rf "$CTR_ROOT"; log "removed image store $CTR_ROOT"; }
  log "down"
}

cmd_up() {
  if alive kubelet && alive containerd && alive kube-proxy; then log "already up"; cmd_status; return 0; fi
  [[ $EUID == 0 ]] || die "needs root"
  [[ -f "$PKI/ca.key" && -f "$CLUSTER/kubeconfig" ]] || die "no cluster at $CLUSTER (tools/k8s/cluster.sh up first)"
  kc get --raw /readyz >/dev/null 2>&1 || die "apiserver at 127.0.0.1:$API_PORT not ready"
  local b
  for b in kubelet kube-proxy kubectl; do
    [[ -x "$BIN/$b" ]] || die "missing $BIN/$b (tools/k8s/build.sh --real-node)"
  done
  for b in containerd containerd-shim-runc-v2 runc ctr iptables nsenter unshare; do
    command -v "$b" >/dev/null || die "missing $b (tools/k8s/host-deps.sh)"
  done
  [[ -x /usr/lib/cni/bridge ]] || die "missing CNI plugins in /usr/lib/cni (tools/k8s/host-deps.sh)"
  if [[ -d "$DIR" ]] && ls "$PIDS"/*.pid >/dev/null 2>&1; then
    die "a real node is partly running ($DIR); run '$0 down' first"
  fi
  check_network
  local T0; T0=$(date +%s)
  mkdir -p "$DIR" "$LOGS" "$PIDS"
  echo "$CLUSTER" >"$DIR/cluster-dir"   # cluster.sh down removes the node of its own cluster only
  UP_DONE=0
  trap '[[ $UP_DONE == 1 ]] || { log "up failed: cleaning up"; cmd_down; }' EXIT
  save_sysctls
  ls -1d /var/run/netns/* 2>/dev/null >"$DIR/netns.before" || true
  gen_pki
  write_configs
  setup_network

  # A private mount namespace (rshared inside, as the kubelet wants) for
  # containerd, its shims and the kubelet: their mounts never reach the host.
  touch "$DIR/mntns"
  setsid unshare --mount="$DIR/mntns" --propagation private \
    sh -c 'mount --make-rshared / && exec sleep infinity' >"$LOGS/mntns.log" 2>&1 </dev/null &
  echo $! >"$PIDS/mntns.pid"
  wait_for "mount namespace" 10 mntns sh -c "findmnt -rno TARGET '$DIR/mntns' | grep -q ."
  local d
  for d in $(cgroup_dirs); do
    mkdir -p "$d/$CGROUP_ROOT"
    if [[ -f "$d/cpuset.cpus" ]]; then  # a new cpuset cgroup starts empty: no task could join it
      cat "$d/cpuset.cpus" >"$d/$CGROUP_ROOT/cpuset.cpus"
      cat "$d/cpuset.mems" >"$d/$CGROUP_ROOT/cpuset.mems"
    fi
  done

  start containerd containerd --config "$DIR/containerd/config.toml"
  wait_for "containerd socket" 30 containerd ctr -a "$SOCK" version
  if ! ctr -a "$SOCK" -n k8s.io images ls -q | grep -qxF "$PAUSE_IMAGE"; then
    if podman image exists "$PAUSE_IMAGE" 2>/dev/null || "$HERE/images.sh" --no-import pause; then
      podman save --format docker-archive "$PAUSE_IMAGE" | ctr -a "$SOCK" -n k8s.io images import - >/dev/null
      log "imported $PAUSE_IMAGE"
    fi
  fi

  start kubelet "$BIN/kubelet" --config "$DIR/kubelet-config.yaml" \
    --kubeconfig "$DIR/kubelet.kubeconfig" --root-dir "$DIR/kubelet" --cert-dir "$DIR/pki" \
    --hostname-override "$NODE" --node-ip "$NODE_IP" \
    --node-labels "loraplex.io/real-node=true" \
    --v=1
  wait_for "node $NODE registered" 60 kubelet kc get node "$NODE"
  # Fake GPUs (there are none): the scheduler counts them like real ones.
  if [[ "$GPUS" -gt 0 ]]; then
    kc patch node "$NODE" --subresource=status --type=json -p \
      "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$GPUS\"},
        {\"op\":\"add\",\"path\":\"/status/allocatable/nvidia.com~1gpu\",\"value\":\"$GPUS\"}]" >/dev/null
  fi
  wait_for "node $NODE Ready" 60 kubelet kc wait --for=condition=Ready "node/$NODE" --timeout=5s

  start kube-proxy "$BIN/kube-proxy" --config "$DIR/kube-proxy-config.yaml" --v=1
  wait_for "kube-proxy rules" 30 kube-proxy iptables -w -t nat -S KUBE-SERVICES
  setup_api_access
  UP_DONE=1
  log "up in $(( $(date +%s) - T0 ))s"
  cmd_status
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down "${2:-}" ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down [--purge]|status" >&2; exit 2 ;;
esac
