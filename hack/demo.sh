#!/usr/bin/env bash
# The main job end to end, in a throw-away network namespace: a test
# credential server on 127.0.0.1:1338, ecsmeta-init, then a real credential
# fetch through http://169.254.170.2/v1/credentials, then clean-up.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "demo: run as root (sudo make demo): it creates a network namespace" >&2; exit 1; }
ns=ecsmeta-demo-$$
token=demo-token-$RANDOM
go build -o bin/ecsmeta-testkit ./test/testkit
cleanup() {
  if [[ -n ${srv:-} ]]; then kill "$srv" 2>/dev/null || true; fi
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
in_ns() { ip netns exec "$ns" "$@"; }

echo "# 1. a fresh network namespace ($ns), like a new pod's"
ip netns add "$ns"
in_ns ip link set lo up
echo "# 2. a test credential server on 127.0.0.1:1338 (as CredProxy would be)"
in_ns bin/ecsmeta-testkit credserver --listen 127.0.0.1:1338 --token "$token" --quiet &
srv=$!
for _ in $(seq 50); do in_ns curl -sf -o /dev/null http://127.0.0.1:1338/health && break; sleep 0.1; done
echo "# 3. ecsmeta-init"
in_ns bin/ecsmeta-init
echo "# 4. what it did"
in_ns ip -o addr show dev lo | awk '{print "   ", $2, $3, $4, $NF}'
in_ns iptables-save | grep ECSMETA | sed 's/^/    /'
echo "# 5. a credential fetch, as every AWS SDK does with AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.2/v1/credentials"
in_ns curl -sS --max-time 5 -H "Authorization: $token" http://169.254.170.2/v1/credentials | head -c 300
echo
echo "# 6. --check, then --cleanup"
in_ns bin/ecsmeta-init --check
in_ns bin/ecsmeta-init --cleanup
echo "# demo ok"
