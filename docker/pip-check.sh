#!/bin/sh
# `pip check`, except that TORCH_VARIANT=cpu-local leaves triton out on purpose.
out="$(pip check 2>&1)" && exit 0
rest="$(printf '%s\n' "$out" | grep -v -e ' requires triton' -e '^No broken requirements')"
if [ "${TORCH_VARIANT:-}" = cpu-local ] && [ -z "$rest" ]; then exit 0; fi
printf '%s\n' "$out" >&2
exit 1
