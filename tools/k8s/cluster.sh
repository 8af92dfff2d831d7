#!/usr/bin/env bash
# A local test Kubernetes control plane made of real processes on 127.0.0.1:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
# (fake GPU nodes whose pods become Running/Ready at once).
#
#   tools/k8s/cluster.sh up       build if needed, start, create fake GPU nodes
#   tools/k8s/cluster.sh up --real-node   ... plus one real node (tools/k8s/real-node.sh)
#   tools/k8s/cluster.sh down     stop everything, remove the state dir (component logs kept in <dir>.last-logs)
#   tools/k8s/cluster.sh status   show processes, apiserver health, nodes
#   tools/k8s/cluster.sh env      print `export KUBECONFIG=...` (eval it)
#   tools/k8s/cluster.sh stop-api   stop kube-apiserver and etcd, keep their state (a control
#                                   plane outage: the tests check the data plane keeps serving)
#   tools/k8s/cluster.sh start-api  start them again on the same state
#
# The apiserver writes an audit log of every write (create/update/patch/delete,
# metadata only; not leases or events) to $LORAPLEX_CLUSTER_DIR/logs/audit.log:
# the tests count the operator's writes with it.
#
# Environment (defaults in brackets):
#   LORAPLEX_CLUSTER_DIR          state dir [$HOME/.cache/loraplex/cluster]
#   LORAPLEX_K8S_CACHE            build cache [$HOME/.cache/loraplex/k8s]
#   LORAPLEX_ETCD_PORT            etcd client port [23790]
#   LORAPLEX_ETCD_PEER_PORT       etcd peer port [23800]
#   LORAPLEX_APISERVER_PORT       kube-apiserver secure port [16443]
#   LORAPLEX_KCM_PORT             kube-controller-manager secure port [16257]
#   LORAPLEX_SCHEDULER_PORT       kube-scheduler secure port [16259]
#   LORAPLEX_KWOK_PORT            kwok health/debug server port [16247]
#   LORAPLEX_FAKE_GPU_NODES       number of fake GPU nodes [3]
#   LORAPLEX_FAKE_GPUS_PER_NODE   nvidia.com/gpu per node [1]
#   LORAPLEX_FAKE_CPU_NODES       untainted nodes without GPUs, "cpu-node-N", for
#                                 pods that tolerate nothing (the operator) [1]
#   LORAPLEX_POD_CIDR             pod IP range handed out by kwok [10.244.0.0/16]
#   LORAPLEX_SERVICE_CIDR         Service ClusterIP range [10.96.0.0/16]
#
# Nothing on this machine owns the pod and Service ranges, so `up` first routes
# both to an `unreachable` route (a connection fails at once, no packet leaves)
# and refuses to start if it cannot; `down` removes the routes it added.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${LORAPLEX_K8S_CACHE:-$HOME/.cache/loraplex/k8s}"
BIN="$CACHE/bin"
STATE="${LORAPLEX_CLUSTER_DIR:-$HOME/.cache/loraplex/cluster}"

ETCD_PORT="${LORAPLEX_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${LORAPLEX_ETCD_PEER_PORT:-23800}"
API_PORT="${LORAPLEX_APISERVER_PORT:-16443}"
KCM_PORT="${LORAPLEX_KCM_PORT:-16257}"
SCHED_PORT="${LORAPLEX_SCHEDULER_PORT:-16259}"
KWOK_PORT="${LORAPLEX_KWOK_PORT:-16247}"
NODES="${LORAPLEX_FAKE_GPU_NODES:-3}"
GPUS="${LORAPLEX_FAKE_GPUS_PER_NODE:-1}"
CPU_NODES="${LORAPLEX_FAKE_CPU_NODES:-1}"
POD_CIDR="${LORAPLEX_POD_CIDR:-10.244.0.0/16}"
SERVICE_CIDR="${LORAPLEX_SERVICE_CIDR:-10.96.0.0/16}"
# The apiserver takes the first address of the range for the `kubernetes` Service.
SERVICE_IP="$(python3 -c 'import ipaddress,sys; print(next(ipaddress.ip_network(sys.argv[1]).hosts()))' "$SERVICE_CIDR")"
CLUSTER_NAME=loraplex-test   # marker: tests refuse contexts not named like this

PKI="$STATE/pki"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
KUBECONFIG_FILE="$STATE/kubeconfig"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# --- process bookkeeping ----------------------------------------------------
pid_of() { [[ -f "$PIDS/$1.pid" ]] && cat "$PIDS/$1.pid" || true; }

# Alive and really our binary (guards against pid reuse).
alive() {
  local pid; pid=$(pid_of "$1")
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$BIN/$1 "
}

start() {
  local name=$1; shift
  [[ -x "$BIN/$name" ]] || die "binary missing: $BIN/$name (run tools/k8s/build.sh)"
  log "starting $name (log: $LOGS/$name.log)"
  setsid nohup "$BIN/$name" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() {
  local p name bad=0
  for p in "etcd:$ETCD_PORT" "etcd-peer:$ETCD_PEER_PORT" "kube-apiserver:$API_PORT" \
           "kube-controller-manager:$KCM_PORT" "kube-scheduler:$SCHED_PORT" "kwok:$KWOK_PORT"; do
    name=${p%%:*}
    if port_taken "${p##*:}"; then
      printf '[cluster] ERROR: port %s (for %s) on 127.0.0.1 is already in use%s\n' \
        "${p##*:}" "$name" "$(command -v ss >/dev/null && ss -ltnpH "sport = :${p##*:}" 2>/dev/null | awk '{print ": "$NF}' | head -1)" >&2
      bad=1
    fi
  done
  [[ $bad == 0 ]] || die "free the ports above or choose others (LORAPLEX_*_PORT, see header of $0)"
}

# wait_for DESCRIPTION SECONDS COMPONENT CMD...: retry CMD until it succeeds;
# fail early if COMPONENT died.
wait_for() {
  local what=$1 secs=$2 comp=$3; shift 3
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$comp" ]] && ! alive "$comp"; then
      tail -n 30 "$LOGS/$comp.log" >&2 || true
      die "$comp exited while waiting for $what (log: $LOGS/$comp.log)"
    fi
    (( $(date +%s) < end )) || die "timed out after ${secs}s waiting for $what (logs: $LOGS)"
    sleep 0.5
  done
}

# --- keep the fake address ranges on this machine ---------------------------------
# route_is_local IP: the kernel would not send a packet for IP off this machine:
# no route (unreachable/blackhole), a local or loopback route, or a virtual
# device made here (a bridge of the real node) reached without a gateway.
route_is_local() {
  local out dev
  out=$(ip route get "$1" 2>&1) || return 0
  [[ $out == local\ * || $out == unreachable* || $out == blackhole* || $out == prohibit* ]] && return 0
  [[ $out == *" via "* ]] && return 1
  dev=$(sed -n 's/.* dev \([^ ]*\).*/\1/p' <<<"${out%%$'\n'*}")
  [[ $dev == lo ]] && return 0
  [[ -n $dev && $(readlink -f "/sys/class/net/$dev") == */devices/virtual/* ]]
}

first_address() { python3 -c 'import ipaddress,sys; print(next(ipaddress.ip_network(sys.argv[1]).hosts()))' "$1"; }

install_local_routes() {
  command -v ip >/dev/null || die "the 'ip' command (iproute2) is needed to keep $POD_CIDR and $SERVICE_CIDR on this machine"
  local cidr err
  : >"$STATE/routes"
  for cidr in "$POD_CIDR" "$SERVICE_CIDR"; do
    if [[ -n "$(ip route show exact "$cidr" 2>/dev/null)" ]]; then
      # Already routed: fine if it stays here (our unreachable route, a local bridge); kept on down.
      route_is_local "$(first_address "$cidr")" \
        || die "$cidr is already routed off this machine ($(ip route show exact "$cidr" | head -1)): choose another LORAPLEX_POD_CIDR / LORAPLEX_SERVICE_CIDR"
      log "route: $cidr already routed locally ($(ip route show exact "$cidr" | head -1)), kept on down"
      continue
    fi
    if ! err=$(ip route add unreachable "$cidr" 2>&1); then
      die "cannot install the route 'unreachable $cidr' ($err): without it, connections to fake pod or Service addresses would leave this machine. Run as root (CAP_NET_ADMIN), or choose LORAPLEX_POD_CIDR / LORAPLEX_SERVICE_CIDR ranges that are free and route them locally yourself."
    fi
    echo "$cidr" >>"$STATE/routes"
    log "route: unreachable $cidr (nothing on this machine owns it)"
  done
  for cidr in "$POD_CIDR" "$SERVICE_CIDR"; do
    local probe; probe=$(first_address "$cidr")
    route_is_local "$probe" || die "$probe (in $cidr) would still leave this machine: $(ip route get "$probe" 2>&1 | head -1)"
  done
}

remove_local_routes() {
  local cidr
  [[ -f "$STATE/routes" ]] || return 0
  while read -r cidr; do
    [[ -n "$cidr" ]] || continue
    ip route del unreachable "$cidr" 2>/dev/null && log "route: removed unreachable $cidr" || true
  done <"$STATE/routes"
}

# --- certificates -------------------------------------------------------------
gen_pki() {
  mkdir -p "$PKI"
  command -v openssl >/dev/null || die "openssl not found"
  log "generating CA, certificates and service-account keys in $PKI"
  (
    cd "$PKI"
    set -e
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout ca.key -out ca.crt -subj "/CN=$CLUSTER_NAME-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" 2>/dev/null
    # sign NAME SUBJECT EXTENSIONS
    sign() {
      openssl req -new -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -days 3650 -sha256 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    sign admin "/O=system:masters/CN=loraplex-admin" "$client"
    sign kube-controller-manager "/CN=system:kube-controller-manager" "$client"
    sign kube-scheduler "/CN=system:kube-scheduler" "$client"
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
    # Aggregation layer (front proxy): lets aggregated APIs (metrics-server…)
    # authenticate the apiserver, and silences requestheader errors.
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout front-proxy-ca.key -out front-proxy-ca.crt -subj "/CN=$CLUSTER_NAME-front-proxy-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -keyout front-proxy-client.key -out front-proxy-client.csr \
      -subj "/CN=front-proxy-client" 2>/dev/null
    printf '%s\n' "$client" >front-proxy-client.ext
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key \
      -CAcreateserial -days 3650 -sha256 -extfile front-proxy-client.ext -out front-proxy-client.crt 2>/dev/null
    rm -f front-proxy-client.csr front-proxy-client.ext
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || die "certificate generation failed"
}

# write_kubeconfig FILE USER-CERT-NAME
write_kubeconfig() {
  local f=$1 u=$2
  "$BIN/kubectl" config --kubeconfig "$f" set-cluster "$CLUSTER_NAME" \
    --server "https://127.0.0.1:$API_PORT" --certificate-authority "$PKI/ca.crt" --embed-certs >/dev/null
  "$BIN/kubectl" config --kubeconfig "$f" set-credentials "$CLUSTER_NAME-$u" \
    --client-certificate "$PKI/$u.crt" --client-key "$PKI/$u.key" --embed-certs >/dev/null
  "$BIN/kubectl" config --kubeconfig "$f" set-context "$CLUSTER_NAME" \
    --cluster "$CLUSTER_NAME" --user "$CLUSTER_NAME-$u" >/dev/null
  "$BIN/kubectl" config --kubeconfig "$f" use-context "$CLUSTER_NAME" >/dev/null
  chmod 600 "$f"
}

# --- fake GPU nodes -------------------------------------------------------------
node_manifests() {
  local i
  for ((i = 0; i < NODES; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: gpu-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: gpu-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/agent: ""
    type: kwok
    loraplex.io/gpu: "true"
spec:
  taints:
  - key: nvidia.com/gpu
    value: present
    effect: NoSchedule
status:
  capacity:
    cpu: "32"
    memory: 256Gi
    pods: "110"
    nvidia.com/gpu: "$GPUS"
  allocatable:
    cpu: "32"
    memory: 256Gi
    pods: "110"
    nvidia.com/gpu: "$GPUS"
EOF
  done
  for ((i = 0; i < CPU_NODES; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: cpu-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: cpu-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/agent: ""
    type: kwok
status:
  capacity:
    cpu: "16"
    memory: 64Gi
    pods: "110"
  allocatable:
    cpu: "16"
    memory: 64Gi
    pods: "110"
EOF
  done
}

# --- etcd and the apiserver (also restarted alone: stop-api / start-api) --------------
write_audit_policy() {
  # Writes only, metadata only; leases (heartbeats) and events are noise.
  cat >"$STATE/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    resources:
      - group: coordination.k8s.io
        resources: [leases]
      - group: ""
        resources: [events]
      - group: events.k8s.io
        resources: [events]
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
POLICY
}

start_etcd() {
  start etcd \
    --name loraplex --data-dir "$STATE/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "loraplex=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync=true --log-level=warn
  wait_for "etcd health" 30 etcd \
    bash -c "exec 3<>/dev/tcp/127.0.0.1/$ETCD_PORT && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && grep -q '\"health\":\"true\"' <&3"
}

start_apiserver() {
  start kube-apiserver \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --cert-dir "$PKI" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC \
    --allow-privileged=true \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --enable-aggregator-routing=true \
    --endpoint-reconciler-type none \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --profiling=false \
    --audit-policy-file "$STATE/audit-policy.yaml" --audit-log-path "$LOGS/audit.log" \
    --audit-log-format json --audit-log-maxsize 200 --audit-log-maxbackup 1
  wait_for "kube-apiserver /readyz" 120 kube-apiserver kc get --raw /readyz
}

cmd_stop_api() {
  alive kube-apiserver || alive etcd || die "the API is not running (state $STATE)"
  stop_group kube-apiserver
  stop_group etcd
  log "API stopped (kube-apiserver, etcd); the rest keeps running. '$0 start-api' brings it back"
}

cmd_start_api() {
  [[ -f "$KUBECONFIG_FILE" ]] || die "no cluster state in $STATE: '$0 up' first"
  alive etcd || start_etcd
  alive kube-apiserver || start_apiserver
  log "API up"
}

# --- commands ---------------------------------------------------------------------
all_alive() { local c; for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done; }
any_alive() { local c; for c in "${COMPONENTS[@]}"; do alive "$c" && return 0; done; return 1; }

cmd_status() {
  local c rc=0
  echo "state dir:  $STATE"
  echo "kubeconfig: $KUBECONFIG_FILE (context $CLUSTER_NAME)"
  for c in "${COMPONENTS[@]}"; do
    if alive "$c"; then printf '  %-24s running (pid %s)\n' "$c" "$(pid_of "$c")"
    else printf '  %-24s not running\n' "$c"; rc=1; fi
  done
  if [[ $rc == 0 ]]; then
    printf '  %-24s %s\n' "apiserver /readyz" "$(kc get --raw /readyz 2>&1 | head -1)"
    echo "  ports: etcd $ETCD_PORT/$ETCD_PEER_PORT apiserver $API_PORT kcm $KCM_PORT scheduler $SCHED_PORT kwok $KWOK_PORT"
    local cidr
    for cidr in "$POD_CIDR" "$SERVICE_CIDR"; do
      printf '  %-24s %s\n' "route $cidr" "$(ip route show exact "$cidr" 2>/dev/null | head -1 || true)"
    done
    kc get nodes -L loraplex.io/gpu 2>&1 | sed 's/^/  /'
  fi
  return $rc
}

cmd_env() {
  echo "export KUBECONFIG=$KUBECONFIG_FILE"
  echo "export PATH=$BIN:\$PATH"
}

# stop_group COMPONENT...: TERM them together, wait up to 10s, then KILL.
stop_group() {
  local c pid pids=() names=()
  for c in "$@"; do
    if alive "$c"; then
      pid=$(pid_of "$c"); pids+=("$pid"); names+=("$c($pid)")
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  [[ ${#pids[@]} -gt 0 ]] || return 0
  log "stopping ${names[*]}"
  for _ in $(seq 1 40); do
    local left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [[ $left == 0 ]] && return 0
    sleep 0.25
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then log "pid $pid did not exit, sending KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  done
}

cmd_down() {
  stop_group kwok kube-scheduler kube-controller-manager
  stop_group kube-apiserver
  stop_group etcd
  remove_local_routes
  if [[ -d "$STATE" ]]; then
    # The components' logs outlive the state: a test session that saw the apiserver go away can be read after.
    if [[ -d "$LOGS" ]]; then
      rm -rf "$STATE.last-logs" && mkdir -p "$STATE.last-logs"
      find "$LOGS" -maxdepth 1 -name '*.log' ! -name 'audit*' -exec cp {} "$STATE.last-logs/" \;
    fi
    log "removing $STATE (logs kept in $STATE.last-logs)"
    rm -rf "$STATE"
  fi
  log "down"
}

cmd_up() {
  if all_alive; then
    log "already up"
    cmd_status
    return 0
  fi
  if any_alive; then
    cmd_status || true
    die "cluster is partly running; run '$0 down' first"
  fi

  if ! "$HERE/build.sh" --check >/dev/null 2>&1; then
    log "binaries missing or not at the pinned versions: running build.sh (long the first time)"
    "$HERE/build.sh" >&2 || die "build failed"
  fi
  local b
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do
    [[ -x "$BIN/$b" ]] || die "binary missing: $BIN/$b (run tools/k8s/build.sh)"
  done
  check_ports

  rm -rf "$STATE"
  mkdir -p "$STATE" "$LOGS" "$PIDS" "$STATE/etcd-data"
  chmod 700 "$STATE" "$STATE/etcd-data"
  install_local_routes   # before any component could dial a pod or Service address
  gen_pki
  write_kubeconfig "$KUBECONFIG_FILE" admin
  write_kubeconfig "$STATE/kube-controller-manager.kubeconfig" kube-controller-manager
  write_kubeconfig "$STATE/kube-scheduler.kubeconfig" kube-scheduler
  write_audit_policy

  local T0; T0=$(date +%s)
  start_etcd
  start_apiserver

  local common=(--bind-address 127.0.0.1 --leader-elect=false --profiling=false)
  start kube-controller-manager "${common[@]}" \
    --secure-port "$KCM_PORT" --cert-dir "$STATE/kcm-certs" \
    --kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --use-service-account-credentials=true \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --controllers '*' \
    --node-monitor-grace-period 40s
  start kube-scheduler "${common[@]}" \
    --secure-port "$SCHED_PORT" --cert-dir "$STATE/scheduler-certs" \
    --kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/kube-scheduler.kubeconfig"

  local stages=() f
  for f in "$HERE"/stages/*.yaml; do stages+=(--config "$f"); done
  [[ ${#stages[@]} -gt 0 ]] || die "no kwok stages in $HERE/stages"
  start kwok "${stages[@]}" \
    --kubeconfig "$KUBECONFIG_FILE" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr "$POD_CIDR" \
    --node-lease-duration-seconds 40 \
    --server-address "127.0.0.1:$KWOK_PORT"

  wait_for "kube-controller-manager /healthz" 60 kube-controller-manager \
    curl -fsk "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for "kube-scheduler /healthz" 60 kube-scheduler \
    curl -fsk "https://127.0.0.1:$SCHED_PORT/healthz"
  wait_for "kwok /healthz" 60 kwok curl -fs "http://127.0.0.1:$KWOK_PORT/healthz"

  log "creating $NODES fake GPU node(s) with $GPUS nvidia.com/gpu each, $CPU_NODES CPU-only node(s)"
  node_manifests | kc apply -f - >/dev/null || die "creating fake nodes failed"
  if [[ $((NODES + CPU_NODES)) -gt 0 ]]; then
    wait_for "fake nodes Ready" 90 kwok \
      kc wait --for=condition=Ready node -l type=kwok --timeout=5s
  fi
  # Pods are refused until the namespace's default ServiceAccount exists.
  wait_for "default ServiceAccount" 60 kube-controller-manager kc -n default get serviceaccount default

  log "up in $(( $(date +%s) - T0 ))s"
  cmd_status
  echo
  echo "use it with:  eval \"\$($0 env)\""
}

# --- real node (tools/k8s/real-node.sh) -------------------------------------------
# `up --real-node` adds one real kubelet node (containerd, kube-proxy) to this
# cluster; `down` removes it first when it belongs to this cluster.
REAL_NODE_DIR="${LORAPLEX_REAL_NODE_DIR:-$HOME/.cache/loraplex/real-node}"
real_node_up() { "$HERE/real-node.sh" up; }
real_node_down() {
  [[ -f "$REAL_NODE_DIR/cluster-dir" && "$(cat "$REAL_NODE_DIR/cluster-dir")" == "$STATE" ]] || return 0
  "$HERE/real-node.sh" down || log "real-node.sh down failed (see above)"
}

case "${1:-}" in
  up) cmd_up; [[ "${2:-}" != --real-node ]] || real_node_up ;;
  down) real_node_down; cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  stop-api) cmd_stop_api ;;
  start-api) cmd_start_api ;;
  *) echo "usage: $0 up|down|status|env|stop-api|start-api" >&2; exit 2 ;;
esac
