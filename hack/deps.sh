#!/usr/bin/env bash
# hack/deps.sh [e2e|containers]: installs what the demo and the tests need
# from Debian/Ubuntu packages, only when something is missing. "e2e" adds the
# real AWS clients of the SDK matrix (Debian's awscli and boto3, Node.js and
# the JavaScript SDK from npm, cached in ~/.npm); "containers" adds podman,
# runc and debootstrap (with their Recommends: netavark, aardvark-dns).
# Root only; without root it says what is missing and goes on (the
# root-only tests then skip, loudly).
set -euo pipefail
cd "$(dirname "$0")/.."

# command or file -> package
declare -A need=(
  [iptables-nft]=iptables [iptables-legacy]=iptables [ip]=iproute2 [socat]=socat
  [curl]=curl [setpriv]=util-linux [flock]=util-linux [sysctl]=procps [ss]=iproute2
  [shellcheck]=shellcheck
)
recommends=--no-install-recommends
case ${1:-} in
  e2e)
    # Debian's own clients, by path: PATH may find another aws or python first.
    need+=([/usr/bin/aws]=awscli [/usr/lib/python3/dist-packages/boto3]=python3-boto3 [node]=nodejs [npm]=npm) ;;
  containers)
    need+=([podman]=podman [runc]=runc [catatonit]=catatonit [debootstrap]=debootstrap [/usr/lib/podman/netavark]=netavark [/usr/lib/podman/aardvark-dns]=aardvark-dns)
    recommends="" ;;
esac
have() {
  if [[ $1 == /* ]]; then [[ -e $1 ]]; else
    command -v "$1" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1
  fi
}
missing=()
for what in "${!need[@]}"; do
  have "$what" || missing+=("${need[$what]}")
done
if ((${#missing[@]})); then
  mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps: missing packages ${pkgs[*]}: run as root (sudo make ...) to install them" >&2
    exit 0
  fi
  echo "deps: installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $recommends "${pkgs[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "deps: Go is required (https://go.dev/dl/)" >&2; exit 1; }

if [[ ${1:-} == e2e ]]; then
  # The lock file pins the exact JavaScript SDK the README's matrix names.
  dir=test/e2e/node
  stamp=$dir/node_modules/.ecsmeta-lock.sha256
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "deps: npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$want" > "$stamp"
  fi
fi
