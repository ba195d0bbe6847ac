#!/usr/bin/env bash
# stage NAME CMD...: runs one test stage and prints its wall time.
set -uo pipefail
name=$1; shift
start=$(date +%s%N)
echo "=== stage $name: start"
"$@"
rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
printf '=== stage %s: %s in %d.%01ds\n' "$name" "$([[ $rc -eq 0 ]] && echo ok || echo "FAILED (exit $rc)")" $((ms / 1000)) $((ms % 1000 / 100))
exit $rc
