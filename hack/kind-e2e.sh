#!/usr/bin/env bash
# make kind-e2e: the chart in a real kind cluster. Needs docker (with its
# engine), kind, helm and kubectl on PATH and network access for the public
# base images; it cannot run on machines without a Docker engine.
#   hack/kind-e2e.sh [--dry-run] [--keep]
# --dry-run prints every command instead of running it; --keep leaves the
# cluster up. The cluster, images and release are all named ecsmeta-e2e.
set -euo pipefail
cd "$(dirname "$0")/.."

dry=0 keep=0
for a in "$@"; do
  case $a in
    --dry-run) dry=1 ;;
    --keep) keep=1 ;;
    -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "kind-e2e: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done

cluster=ecsmeta-e2e
ns=ecsmeta-e2e
tag=e2e
token=kind-e2e-$(date +%s)

run() {
  if ((dry)); then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

if ((!dry)); then
  for tool in docker kind helm kubectl; do
    command -v "$tool" >/dev/null || { echo "kind-e2e: $tool is required on PATH" >&2; exit 1; }
  done
fi

cleanup() { ((keep)) || run kind delete cluster --name "$cluster"; }
trap cleanup EXIT

run kind create cluster --name "$cluster" --wait 120s
run make build
run make images ENGINE=docker IMAGE_PREFIX=localhost/ IMAGE_TAG="$tag"
# The test credential server stands in for CredProxy (same protocol, same token check).
run env CGO_ENABLED=0 go build -o test/containers/ecsmeta-testkit ./test/testkit
run docker build -t localhost/ecsmeta-credserver:"$tag" -f test/containers/credserver.Containerfile test/containers
for image in ecsmeta-init ecsmeta-proxy ecsmeta-credserver; do
  run kind load docker-image --name "$cluster" "localhost/$image:$tag"
done
run kubectl create namespace "$ns"
# ecsmeta-init needs NET_ADMIN + NET_RAW: the privileged Pod Security level.
run kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=privileged
run helm install ecsmeta-e2e charts/ecsmeta --namespace "$ns" --wait --timeout 180s \
  --set auth.token="$token" \
  --set init.image.repository=localhost/ecsmeta-init --set init.image.tag="$tag" --set init.image.pullPolicy=Never \
  --set proxy.image.repository=localhost/ecsmeta-proxy --set proxy.image.tag="$tag" --set proxy.image.pullPolicy=Never \
  --set credproxy.image.repository=localhost/ecsmeta-credserver --set credproxy.image.tag="$tag" --set credproxy.image.pullPolicy=Never \
  --set-json 'credproxy.args=["credserver","--listen",":1338","--path","/v1/credentials","--token-env","CREDPROXY_AUTH_TOKEN"]'
run helm test ecsmeta-e2e --namespace "$ns" --logs --timeout 180s
echo "kind-e2e: ok"
