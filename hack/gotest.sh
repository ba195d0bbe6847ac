#!/usr/bin/env bash
# gotest.sh ARGS...: go test -v with the noise filtered out and a summary
# line; as root a skipped test is a failure (root-only tests must run in
# CI, not pass by skipping).
set -u
log=$(mktemp)
trap 'rm -f "$log"' EXIT
go test -v "$@" 2>&1 | tee "$log" | grep -vE '^(=== (RUN|PAUSE|CONT)|\s*--- PASS|I[0-9]{4} |\s*$)'
rc=${PIPESTATUS[0]}
passed=$(grep -cE '^\s*--- PASS' "$log")
failed=$(grep -cE '^\s*--- FAIL' "$log")
skipped=$(grep -cE '^\s*--- SKIP' "$log")
if [[ $(id -u) -eq 0 && $skipped -gt 0 ]]; then
  echo "gotest: $skipped test(s) skipped although running as root:" >&2
  grep -E -A2 '^\s*--- SKIP' "$log" >&2
  rc=1
fi
if [[ $rc -ne 0 && $failed -eq 0 ]]; then failed=1; fi
echo "$passed passed, $failed failed, $skipped skipped"
exit "$rc"
