#!/usr/bin/env bash
# Build a pinned Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl) plus kwok and helm from Go
# modules, once, into a cache directory.  A second run builds nothing.
#
#   tools/k8s/build.sh            # build what is missing, print the bin dir
#   tools/k8s/build.sh --check    # exit 0 if everything is built, 1 otherwise
#   tools/k8s/build.sh --print-bin
#   tools/k8s/build.sh --real-node [--check]   also kubelet + kube-proxy (same
#                                 wrapper module and version) for tools/k8s/real-node.sh
#
# Environment:
#   LORAPLEX_K8S_CACHE   cache dir (default $HOME/.cache/loraplex/k8s)
#   GOPROXY etc.         passed through to go
set -euo pipefail

K8S_VERSION=v1.36.3          # k8s.io/kubernetes
STAGING_VERSION=v0.36.3      # published k8s.io/<staging> modules
ETCD_VERSION=v3.6.16         # go.etcd.io/etcd/server/v3
KWOK_VERSION=v0.8.0          # sigs.k8s.io/kwok
HELM_VERSION=v3.22.0         # helm.sh/helm/v3

CACHE="${LORAPLEX_K8S_CACHE:-$HOME/.cache/loraplex/k8s}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
STAMPS="$BIN/.stamps"

log() { printf '[k8s-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=../progress.sh
source "$(dirname "${BASH_SOURCE[0]}")/../progress.sh"
PROGRESS_PREFIX="[k8s-build]"
die() { printf '[k8s-build] ERROR: %s\n' "$*" >&2; exit 1; }


# Never let go silently download another toolchain; fail clearly instead.
export GOTOOLCHAIN=local
export CGO_ENABLED="${CGO_ENABLED:-0}"

# --- version probes ---------------------------------------------------------
# Each prints the version the binary reports (empty when it cannot run).
probe() {
  local name=$1 b="$BIN/$1"
  [[ -x "$b" ]] || return 0
  case "$name" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy)
      "$b" --version 2>/dev/null | awk '{print $2}' ;;
    kubectl)
      "$b" version --client 2>/dev/null | awk '/Client Version/{print $3}' ;;
    etcd)
      "$b" --version 2>/dev/null | awk '/etcd Version/{print "v"$3}' ;;
    kwok)
      "$b" --version 2>/dev/null | awk '{print $3}' ;;
    helm)
      "$b" version --template '{{.Version}}' 2>/dev/null ;;
  esac
}

want() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy) echo "$K8S_VERSION" ;;
    etcd) echo "$ETCD_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
  esac
}

ALL=(etcd kwok helm kubectl kube-apiserver kube-controller-manager kube-scheduler)

is_built() {
  local name=$1 w
  w=$(want "$name")
  [[ -x "$BIN/$name" ]] || return 1
  [[ -f "$STAMPS/$name" && "$(cat "$STAMPS/$name")" == "$w" ]] || return 1
  [[ "$(probe "$name")" == "$w" ]]
}

stamp() { mkdir -p "$STAMPS"; want "$1" >"$STAMPS/$1"; }

check_all() {
  local ok=0 n
  for n in "${ALL[@]}"; do
    if is_built "$n"; then log "ok      $n $(want "$n")"; else log "missing $n $(want "$n")"; ok=1; fi
  done
  return $ok
}

MODE=build
for arg in "$@"; do
  case "$arg" in
    --check) MODE=check ;;
    --print-bin) echo "$BIN"; exit 0 ;;
    # Opt-in: the real node's kubelet and kube-proxy (tools/k8s/real-node.sh).
    --real-node) ALL+=(kubelet kube-proxy) ;;
    *) die "unknown argument: $arg (use --check, --print-bin, --real-node)" ;;
  esac
done
[[ $MODE == check ]] && { check_all; exit $?; }

command -v go >/dev/null 2>&1 || die "go is not on PATH (need go >= 1.26.0)"
mkdir -p "$BIN" "$SRC"
T0=$(date +%s)

# --- etcd -------------------------------------------------------------------
build_etcd() {
  local d="$SRC/etcd"
  log "etcd $ETCD_VERSION: preparing wrapper module in $d"
  rm -rf "$d"; mkdir -p "$d"
  cat >"$d/main.go" <<'EOF'
// Wrapper so etcd builds from the module proxy without the etcd root
// module's local replace directives.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (cd "$d" && go mod init loraplex.local/etcd >/dev/null 2>&1 \
     && go mod edit -go=1.26.0 \
     && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
     && go mod tidy) || die "etcd: go mod resolution failed"
  log "etcd: compiling"
  (cd "$d" && go build -mod=mod -trimpath -ldflags='-s -w' -o "$BIN/etcd" .) || die "etcd: build failed"
}

# --- kwok / helm (plain go install) ----------------------------------------
build_kwok() {
  log "kwok $KWOK_VERSION: go install"
  GOBIN="$BIN" go install -trimpath -ldflags='-s -w' \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" || die "kwok: go install failed"
}

build_helm() {
  log "helm $HELM_VERSION: go install"
  local dir minor ld
  dir=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | awk -F'"' '/"Dir"/{print $4}')
  [[ -n "$dir" ]] || die "helm: cannot download helm.sh/helm/v3@$HELM_VERSION"
  # Same as helm's Makefile: default .Capabilities.KubeVersion from its client-go.
  minor=$(awk '$1=="k8s.io/client-go"{print $2}' "$dir/go.mod" | cut -d. -f2)
  ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  if [[ -n "$minor" ]]; then
    ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
    ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  fi
  GOBIN="$BIN" go install -trimpath -ldflags="$ld" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" || die "helm: go install failed"
}

# --- kubernetes ---------------------------------------------------------------
K8S_WRAPPER_READY=0
prepare_k8s() {
  [[ $K8S_WRAPPER_READY == 1 ]] && return 0
  local d="$SRC/kubernetes" kdir modfile m
  log "kubernetes $K8S_VERSION: downloading module"
  kdir=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | awk -F'"' '/"GoMod"/{print $4}')
  modfile="$kdir"
  [[ -f "$modfile" ]] || die "kubernetes: go mod download k8s.io/kubernetes@$K8S_VERSION failed"

  log "kubernetes: preparing wrapper module in $d"
  rm -rf "$d"; mkdir -p "$d"
  (cd "$d" && go mod init loraplex.local/kubernetes >/dev/null 2>&1 && go mod edit -go=1.26.0) \
    || die "kubernetes: go mod init failed"

  # Modules k8s.io/kubernetes actually requires (so a missing one is fatal).
  local required
  required=$(awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r{print $1} /^require [^(]/{print $2}' "$modfile")

  # The replace list: every "=> ./staging/..." line of that go.mod.
  local n=0 skipped=()
  while read -r m; do
    if go list -m "$m@$STAGING_VERSION" >/dev/null 2>&1; then
      (cd "$d" && go mod edit -replace="$m=$m@$STAGING_VERSION")
      n=$((n+1))
    elif grep -qx "$m" <<<"$required"; then
      die "kubernetes: $m@$STAGING_VERSION is required but not available from the module proxy"
    else
      skipped+=("$m")
    fi
  done < <(awk '$2=="=>" && $3 ~ /^\.\/staging\// {print $1}' "$modfile")
  [[ $n -gt 0 ]] || die "kubernetes: found no ./staging replace lines in $modfile"
  log "kubernetes: $n staging replaces -> $STAGING_VERSION${skipped:+ (skipped, unpublished and unused: ${skipped[*]})}"

  (cd "$d" && go mod edit -require="k8s.io/kubernetes@$K8S_VERSION")
  cat >"$d/tools.go" <<'EOF'
//go:build tools

// Package tools pins the commands built from k8s.io/kubernetes.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
EOF
  log "kubernetes: go mod tidy (downloads several hundred MB of modules the first time)"
  (cd "$d" && go mod tidy) || die "kubernetes: go mod tidy failed"
  local got
  got=$(cd "$d" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
  [[ "$got" == "$K8S_VERSION" ]] || die "kubernetes: resolved k8s.io/kubernetes $got, want $K8S_VERSION"
  K8S_WRAPPER_READY=1
}

k8s_ldflags() {
  local v=${K8S_VERSION#v} major minor date ld="-s -w" key val p
  major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
  # Fixed date keeps the flags (and so the build cache) stable between runs.
  date=2026-01-01T00:00:00Z
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for kv in "gitVersion=$K8S_VERSION" "gitMajor=$major" "gitMinor=$minor" \
              "gitTreeState=clean" "gitCommit=$K8S_VERSION" "buildDate=$date"; do
      ld+=" -X $p.$kv"
    done
  done
  echo "$ld"
}

build_k8s() {
  local name=$1
  prepare_k8s
  log "$name $K8S_VERSION: compiling (long on 2 cores)"
  (cd "$SRC/kubernetes" && go build -mod=mod -trimpath -ldflags="$(k8s_ldflags)" \
      -o "$BIN/$name" "k8s.io/kubernetes/cmd/$name") || die "$name: build failed"
}

# What a first build costs on 2 cores (tools/k8s/README.md, "Measured"), said before it starts.
typical() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kubelet) echo "several minutes" ;;
    kube-scheduler|kubectl|kube-proxy|etcd|helm) echo "1-3 minutes" ;;
    kwok) echo "about a minute" ;;
  esac
}

built_any=0
todo=()
for n in "${ALL[@]}"; do is_built "$n" || todo+=("$n"); done
if (( ${#todo[@]} )); then
  log "${#todo[@]} of ${#ALL[@]} to build (${todo[*]}); the rest is cached in $BIN"
  log "a first build downloads the Go modules (~1 GB) and compiles for tens of minutes on 2 cores"
fi
i=0
for n in "${ALL[@]}"; do
  i=$((i + 1))
  if is_built "$n"; then
    progress_step "$i" "${#ALL[@]}" "$n $(want "$n") (cached)"
    continue
  fi
  progress_step "$i" "${#ALL[@]}" "$n $(want "$n"): building (typically $(typical "$n") here; total so far $(progress_duration $(( $(date +%s) - T0 ))))"
  case "$n" in
    etcd) progress_run "etcd" build_etcd ;;
    kwok) progress_run "kwok" build_kwok ;;
    helm) progress_run "helm" build_helm ;;
    *)
      if [[ $K8S_WRAPPER_READY == 0 ]]; then
        # go mod tidy fetches several hundred MB of modules the first time: show the module cache growing.
        PROGRESS_STATUS="du -sh \"$(go env GOMODCACHE)\" | cut -f1 | sed 's/^/Go module cache /'" \
          progress_run "kubernetes $K8S_VERSION wrapper module" prepare_k8s
      fi
      progress_run "compiling $n" build_k8s "$n" ;;
  esac
  got=$(probe "$n")
  [[ "$got" == "$(want "$n")" ]] || die "$n: built binary reports version '$got', want '$(want "$n")'"
  stamp "$n"
  built_any=1
  log "built   $n $got"
done

if [[ $built_any == 1 ]]; then
  log "done in $(( $(date +%s) - T0 ))s; bin dir size: $(du -sh "$BIN" | cut -f1)"
else
  log "nothing to build"
fi
echo "$BIN"
