#!/usr/bin/env bash
# Build the images the real node runs, locally (no registry is reachable):
#   base       localhost/loraplex-base:bookworm   debootstrap minbase + python3, python3-venv
#   pause      localhost/loraplex/pause:1          FROM scratch + a static init (sandbox image)
#   operator   localhost/loraplex/operator:dev     docker/Dockerfile.operator on the base
#   inference  localhost/loraplex/inference:dev    docker/Dockerfile.inference on the base
# and import them into containerd's k8s.io namespace when its socket is up.
#
#   tools/k8s/images.sh [options] [base|pause|operator|inference ...]   (default: all)
#     --src DIR            build context (default: this checkout)
#     --torch VARIANT      TORCH_VARIANT for the inference image (default cpu-local
#                          here; the Dockerfile's own default is cuda)
#     --tag TAG            tag for operator/inference (default dev)
#     --rebuild-base       debootstrap again even if the base image exists
#     --import / --no-import   import into containerd (default: if the socket exists)
#     --sizes              only print the image sizes
#
# Environment:
#   LORAPLEX_IMAGES_CACHE   scratch dir [$HOME/.cache/loraplex/images]
#   LORAPLEX_CONTAINERD_SOCK containerd socket for the import
#                           [$LORAPLEX_REAL_NODE_DIR/containerd/containerd.sock]
#   LORAPLEX_CA_BUNDLE      CA bundle handed to pip as a build secret
#                           [/etc/ssl/certs/ca-certificates.crt]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${LORAPLEX_IMAGES_CACHE:-$HOME/.cache/loraplex/images}"
NODE_DIR="${LORAPLEX_REAL_NODE_DIR:-$HOME/.cache/loraplex/real-node}"
SOCK="${LORAPLEX_CONTAINERD_SOCK:-$NODE_DIR/containerd/containerd.sock}"
CA="${LORAPLEX_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

BASE_IMAGE=localhost/loraplex-base:bookworm
PAUSE_IMAGE=localhost/loraplex/pause:1
SRC="$REPO"; TORCH=cpu-local; TAG=dev; REBUILD_BASE=0; IMPORT=auto; TARGETS=()

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=../progress.sh
source "$HERE/../progress.sh"
PROGRESS_PREFIX="[images]"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --src) SRC="$(cd "$2" && pwd)"; shift 2 ;;
    --torch) TORCH=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    --import) IMPORT=1; shift ;;
    --no-import) IMPORT=0; shift ;;
    --sizes) TARGETS=(sizes); shift ;;
    base|pause|operator|inference) TARGETS+=("$1"); shift ;;
    *) die "unknown argument: $1" ;;
  esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(base pause operator inference)

image_ref() {
  case "$1" in
    base) echo "$BASE_IMAGE" ;; pause) echo "$PAUSE_IMAGE" ;;
    operator|inference) echo "localhost/loraplex/$1:$TAG" ;;
  esac
}


# --- base: debootstrap ----------------------------------------------------------
apt_mirror() {
  local m
  m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [[ -n "$m" ]] || m=$(awk '$1=="deb" && $0 ~ /debian/ && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

build_base() {
  if [[ $REBUILD_BASE == 0 ]] && podman image exists "$BASE_IMAGE"; then
    log "base: $BASE_IMAGE exists (--rebuild-base to redo)"; return 0
  fi
  command -v debootstrap >/dev/null || die "debootstrap missing (tools/k8s/host-deps.sh)"
  local root="$CACHE/rootfs" mirror t; mirror=$(apt_mirror); t=$(date +%s)
  log "base: debootstrap --variant=minbase bookworm from $mirror"
  rm -rf "$root"; mkdir -p "$root"
  PROGRESS_STATUS="du -sh '$root' | cut -f1 | sed 's/^/root filesystem /'" PROGRESS_LOG="$CACHE/debootstrap.log" \
  progress_run "debootstrap" debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" \
    || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
  log "base: debootstrap took $(( $(date +%s) - t ))s; importing"
  tar --numeric-owner -C "$root" -c . | podman import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
  log "base: $BASE_IMAGE built in $(( $(date +%s) - t ))s"
}

# --- pause ------------------------------------------------------------------------
build_pause() {
  local d="$CACHE/pause"
  mkdir -p "$d"
  command -v musl-gcc >/dev/null || die "musl-gcc missing (tools/k8s/host-deps.sh)"
  musl-gcc -static -Os -s -o "$d/pause" "$HERE/pause/pause.c"
  cp "$HERE/pause/Containerfile" "$d/Containerfile"
  buildah bud --quiet --layers -f "$d/Containerfile" -t "$PAUSE_IMAGE" "$d" >/dev/null
  log "pause: $PAUSE_IMAGE ($(stat -c %s "$d/pause") byte static init)"
}

# --- operator / inference -------------------------------------------------------------
build_app() {
  local what=$1 ref t old new; ref=$(image_ref "$1"); t=$(date +%s)
  old=$(podman image inspect --format '{{.Id}}' "$ref" 2>/dev/null || true)
  [[ -f "$SRC/docker/Dockerfile.$what" ]] || die "no $SRC/docker/Dockerfile.$what"
  podman image exists "$BASE_IMAGE" || build_base
  local args=(--layers -f "$SRC/docker/Dockerfile.$what" --ignorefile "$SRC/docker/Dockerfile.$what.dockerignore"
              --build-arg "PYTHON_IMAGE=$BASE_IMAGE" -t "$ref")
  [[ -f "$CA" ]] && args+=(--secret "id=ca,src=$CA")
  [[ $what == inference ]] && args+=(--build-arg "TORCH_VARIANT=$TORCH")
  log "$what: building $ref from $SRC${TORCH:+ (TORCH_VARIANT=$TORCH for inference)}"
  # buildah says "STEP 7/15: RUN ..." as it goes (and "Using cache" for the cached steps): quote the latest.
  PROGRESS_STATUS="grep -a -o 'STEP [0-9]*/[0-9]*: .\{0,70\}' '$CACHE/build-$what.log' | tail -n1" \
  PROGRESS_LOG="$CACHE/build-$what.log" progress_run "$what image" buildah bud "${args[@]}" "$SRC" \
    || { tail -40 "$CACHE/build-$what.log" >&2; die "$what: build failed (log: $CACHE/build-$what.log)"; }
  log "$what: built in $(( $(date +%s) - t ))s, $(size_of "$ref")"
  # The image this build replaced is now untagged: remove it (and the layers only it used), or every source change
  # leaves another 4 GB behind. Layers the new image shares stay; an image still tagged elsewhere is kept.
  new=$(podman image inspect --format '{{.Id}}' "$ref")
  if [[ -n "$old" && "$old" != "$new" ]] && podman rmi "$old" >/dev/null 2>&1; then
    log "$what: removed the image it replaced (${old:0:12})"
  fi
}

size_of() { podman image inspect --format '{{.Size}}' "$1" 2>/dev/null | awk '{printf "%.0f MB", $1/1e6}'; }

# The image's config digest (podman's image ID) as containerd has it under REF, or nothing.
imported_id() {
  local manifest
  manifest=$(ctr -a "$SOCK" -n k8s.io images ls 2>/dev/null | awk -v r="$1" '$1==r {print $3}')
  [[ -n "$manifest" ]] || return 0
  ctr -a "$SOCK" -n k8s.io content get "$manifest" 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["digest"].split(":")[1])' 2>/dev/null || true
}

import_one() {
  local ref=$1 t; t=$(date +%s)
  # The same image is there already: a 4 GB save/import stream would change nothing.
  if [[ "$(imported_id "$ref")" == "$(podman image inspect --format '{{.Id}}' "$ref")" ]]; then
    log "$ref already in containerd k8s.io (same image ID)"; return 0
  fi
  progress_run "import of $ref" bash -c 'podman save --format docker-archive "$1" | ctr -a "$2" -n k8s.io images import - >/dev/null' \
    _ "$ref" "$SOCK" || die "import of $ref into containerd ($SOCK) failed"
  log "imported $ref into containerd k8s.io in $(( $(date +%s) - t ))s"
}

mkdir -p "$CACHE"
T0=$(date +%s)
i=0
for t in "${TARGETS[@]}"; do
  i=$((i + 1))
  [[ $t == sizes ]] || progress_step "$i" "${#TARGETS[@]}" "$t image ($(progress_duration $(( $(date +%s) - T0 ))) so far)"
  case "$t" in
    base) build_base ;;
    pause) build_pause ;;
    operator|inference) build_app "$t" ;;
    sizes) ;;
  esac
done

for t in base pause operator inference; do
  ref=$(image_ref "$t")
  podman image exists "$ref" && printf '  %-40s %s\n' "$ref" "$(size_of "$ref")" >&2
done

if [[ $IMPORT == 1 || ( $IMPORT == auto && -S "$SOCK" ) ]]; then
  [[ -S "$SOCK" ]] || die "containerd socket $SOCK not there (tools/k8s/real-node.sh up first)"
  for t in "${TARGETS[@]}"; do
    case "$t" in pause|operator|inference) import_one "$(image_ref "$t")" ;; esac
  done
fi
log "done in $(( $(date +%s) - T0 ))s"
