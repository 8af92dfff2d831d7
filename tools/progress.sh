# Progress for the long set-up steps (sourced by ./dev, tools/k8s/build.sh, tools/k8s/images.sh).
#
#   progress_step 3 8 "kube-apiserver v1.36.3 (cached)"     ->  [3/8] kube-apiserver v1.36.3 (cached)
#   progress_run "compiling kube-apiserver" CMD ARGS...      runs CMD; every $LORAPLEX_PROGRESS_INTERVAL
#                                                           seconds (default 30) prints how long it has run,
#                                                           and the output of $PROGRESS_STATUS (a command
#                                                           line, if set), e.g. the bytes downloaded so far;
#                                                           then "done in 3m02s" or "FAILED after ..." and
#                                                           CMD's exit status. With $PROGRESS_LOG set,
#                                                           CMD's output goes to that file (the progress
#                                                           lines still go to stderr).
# Lines go to stderr, prefixed with $PROGRESS_PREFIX (e.g. "[k8s-build]").

progress_duration() {  # 182 -> 3m02s
  local s=$1
  if (( s >= 3600 )); then printf '%dh%02dm%02ds' $((s / 3600)) $((s % 3600 / 60)) $((s % 60))
  elif (( s >= 60 )); then printf '%dm%02ds' $((s / 60)) $((s % 60))
  else printf '%ds' "$s"; fi
}

progress_say() { printf '%s%s\n' "${PROGRESS_PREFIX:+$PROGRESS_PREFIX }" "$*" >&2; }

progress_step() { progress_say "[$1/$2] $3"; }

progress_run() {
  local what=$1; shift
  local t0=$SECONDS interval=${LORAPLEX_PROGRESS_INTERVAL:-30} beat rc=0 status=""
  (
    # The sleep is a child of its own: stop it too, or it would hold our stderr open until it ends.
    nap= parent=$$
    trap '[[ -n "$nap" ]] && kill "$nap" 2>/dev/null; exit 0' TERM
    while :; do
      sleep "$interval" & nap=$!
      wait "$nap" || true
      kill -0 "$parent" 2>/dev/null || exit 0
      if [[ -n "${PROGRESS_STATUS:-}" ]]; then status=$(bash -c "$PROGRESS_STATUS" 2>/dev/null | tail -n1 || true); fi
      progress_say "      ... $what: $(progress_duration $((SECONDS - t0))) so far${status:+; $status}"
    done
  ) &
  beat=$!
  # CMD may exit the whole script (a `die`): take the heartbeat with it. (The scripts that source this
  # file set no EXIT trap of their own.)
  trap "kill $beat 2>/dev/null" EXIT
  if [[ -n "${PROGRESS_LOG:-}" ]]; then "$@" >"$PROGRESS_LOG" 2>&1 || rc=$?; else "$@" || rc=$?; fi
  trap - EXIT
  kill "$beat" 2>/dev/null; wait "$beat" 2>/dev/null || true
  if (( rc == 0 )); then progress_say "      $what: done in $(progress_duration $((SECONDS - t0)))"
  else progress_say "      $what: FAILED after $(progress_duration $((SECONDS - t0))) (exit $rc)"; fi
  return "$rc"
}
