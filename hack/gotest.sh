#!/usr/bin/env bash
# gotest.sh ARGS...: go test -v with a summary line; as root a skipped test
# is a failure (root-only tests must run in CI, not pass by skipping).
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
go test -v "$@" 2>&1 | tee "$log" | grep -E '^(=== RUN|--- (PASS|SKIP)|    --- (PASS|SKIP))' -v | grep -vE '^\s*$' || true
rc=${PIPESTATUS[0]}
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$log" || true)
if [[ $(id -u) -eq 0 && $skipped -gt 0 ]]; then
  echo "gotest: $skipped test(s) skipped although running as root:" >&2
  grep -E -A2 '^\s*--- SKIP' "$log" >&2
  rc=1
fi
echo "$passed passed, $failed failed, $skipped skipped"
exit $rc
