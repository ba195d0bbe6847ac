#!/usr/bin/env bash
# Installs what the demo and the tests need from Debian/Ubuntu packages,
# only when something is missing. Root only; without root it says what is
# missing and goes on (the root-only tests then skip, loudly).
set -euo pipefail

# command -> package
declare -A need=(
  [iptables-nft]=iptables [iptables-legacy]=iptables [ip]=iproute2 [socat]=socat
  [curl]=curl [setpriv]=util-linux [flock]=util-linux [sysctl]=procps [ss]=iproute2
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
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
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "deps: Go is required (https://go.dev/dl/)" >&2; exit 1; }
