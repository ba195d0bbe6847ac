#!/usr/bin/env bash
# make e2e-containers: builds the real Dockerfile targets with podman and runs
# the docker compose examples in real containers (compose from its Go module,
# against podman's Docker API). No image is pulled: the public bases are
# replaced by local stand-ins (a Debian rootfs made with debootstrap from the
# machine's apt mirror, and a tiny static base), cached outside the repo in
# $CACHE_DIR keyed by their package list and version. Prints each stage's time.
# Root only.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "e2e-containers: run as root (sudo make e2e-containers): it runs podman and debootstrap" >&2; exit 1; }
CACHE_DIR=${CACHE_DIR:-/var/cache/ecsmeta}
COMPOSE_VERSION=v5.6.0
ROOTFS_PACKAGES=iptables,iproute2,awscli,python3-cffi-backend
# stage NAME FUNCTION: runs one stage and prints its wall time.
stage() {
  local t0=$SECONDS rc=0
  echo "=== e2e-containers $1: start"
  # In a subshell with errexit, not behind ||: there bash ignores -e inside
  # the function, and a failing step in its middle would go unnoticed.
  set +e
  (set -e; "$2")
  rc=$?
  set -e
  echo "=== e2e-containers $1: $([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc)") in $((SECONDS - t0))s"
  return $rc
}
mkdir -p "$CACHE_DIR"
work=$(mktemp -d /tmp/ecsmeta-containers.XXXXXX)
api_pid="" hc_pid=""
export DOCKER_HOST=unix://$work/podman.sock DOCKER_BUILDKIT=0
compose="$CACHE_DIR/docker-compose-$COMPOSE_VERSION"
cleanup() {
  local rc=$?
  for p in compose.yaml compose.userspace.yaml compose.restricted.yaml; do
    if [[ -x $compose && -n $api_pid ]]; then
      "$compose" -f "examples/compose/$p" down --remove-orphans -t 2 >/dev/null 2>&1 || true
    fi
  done
  [[ -n $hc_pid ]] && kill "$hc_pid" 2>/dev/null
  [[ -n $api_pid ]] && kill "$api_pid" 2>/dev/null
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

setup_podman() {
  hack/deps.sh containers
  # crun fails on this kind of host (cgroups v1 hybrid); runc works. The
  # ulimits must be ones the host allows.
  local nofile; nofile=$(ulimit -Hn)
  mkdir -p /etc/containers/containers.conf.d
  printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n' "$nofile" "$nofile" \
    > /etc/containers/containers.conf.d/50-ecsmeta-runc.conf
}

# One Debian rootfs for every stand-in that needs Debian: iptables for the
# init image's build stage, the AWS CLI for the application.
rootfs() {
  local key tar
  key=$(echo "bookworm $ROOTFS_PACKAGES" | sha256sum | cut -c1-12)
  tar="$CACHE_DIR/rootfs-bookworm-$key.tar"
  if [[ ! -f $tar ]]; then
    local mirror dir
    # shellcheck disable=SC2016 # apt's own $(SITE) placeholders
    mirror=$(apt-get indextargets --format '$(SITE) $(RELEASE)' 'Created-By: Packages' | awk '$2=="bookworm"{print $1; exit}')
    [[ -n $mirror ]] || { echo "no bookworm apt source configured" >&2; return 1; }
    dir=$work/rootfs
    debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" bookworm "$dir" "$mirror" >"$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; return 1; }
    chroot "$dir" apt-get clean
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/usr/share/{doc,man,info}/*
    tar --numeric-owner -C "$dir" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
  fi
  podman import --change 'CMD ["/bin/bash"]' "$tar" localhost/ecsmeta-standin/debian:bookworm >/dev/null
  # Stand-in for distroless/static: passwd and group with nonroot (65532), /tmp.
  local s=$work/static
  mkdir -p "$s/etc" "$s/tmp" "$s/dev/shm"
  chmod 1777 "$s/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$s/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$s/etc/group"
  tar --numeric-owner --owner=0 --group=0 -C "$s" -c . | podman import - localhost/ecsmeta-standin/static:latest >/dev/null
}

# docker compose, built once from its Go module and cached by version.
compose_plugin() {
  if [[ ! -x $compose ]]; then
    local dir src=$work/compose-src
    dir=$(go mod download -json "github.com/docker/compose/v5@$COMPOSE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    cp -r "$dir" "$src" && chmod -R u+w "$src"
    (cd "$src" && CGO_ENABLED=0 go build -trimpath -o "$compose.tmp" ./cmd) && mv "$compose.tmp" "$compose"
  fi
  "$compose" version
}

images() {
  make --no-print-directory build >/dev/null
  CGO_ENABLED=0 go build -o test/containers/ecsmeta-testkit ./test/testkit
  local std=localhost/ecsmeta-standin
  make --no-print-directory images ENGINE=podman IMAGE_PREFIX=localhost/ecsmeta-test/ IMAGE_TAG=test \
    BUILD_ARGS="--build-arg IPTABLES_BASE=$std/debian:bookworm --build-arg INIT_BASE=$std/static:latest --build-arg PROXY_BASE=$std/static:latest"
  podman build -q --pull=never --format docker -t localhost/ecsmeta-test/credserver:test -f test/containers/credserver.Containerfile test/containers >/dev/null
  rm -f test/containers/ecsmeta-testkit
  podman build -q --pull=never --format docker --build-arg BASE=$std/debian:bookworm -t localhost/ecsmeta-test/app:test -f test/containers/app.Containerfile test/containers >/dev/null
  # The images' own promises: a kept HEALTHCHECK, non-root proxy, sizes.
  local hc user
  hc=$(podman image inspect --format '{{json .Config.Healthcheck}}' localhost/ecsmeta-test/ecsmeta-proxy:test)
  [[ $hc == *healthcheck* ]] || { echo "FAIL: the proxy image lost its HEALTHCHECK: $hc" >&2; return 1; }
  user=$(podman image inspect --format '{{.Config.User}}' localhost/ecsmeta-test/ecsmeta-proxy:test)
  [[ $user == 65532:65532 ]] || { echo "FAIL: proxy image user is '$user', want 65532:65532" >&2; return 1; }
  for i in init proxy; do
    if podman run --rm --entrypoint /bin/sh "localhost/ecsmeta-test/ecsmeta-$i:test" -c true >/dev/null 2>&1; then
      echo "FAIL: the $i image has a shell" >&2; return 1
    fi
  done
  # ecsmeta-init works on both backends with a read-only root and exactly
  # NET_ADMIN + NET_RAW (the legacy lock goes to /dev/shm, a tmpfs).
  local b
  for b in nft legacy; do
    podman run --rm --network none --read-only --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW \
      --security-opt no-new-privileges localhost/ecsmeta-test/ecsmeta-init:test --iptables-backend "$b" >"$work/init-$b.log" 2>&1 \
      || { cat "$work/init-$b.log" >&2; echo "FAIL: ecsmeta-init image, $b backend" >&2; return 1; }
    grep -q "installed rules.*backend=\"iptables-$b\"" "$work/init-$b.log" \
      || { cat "$work/init-$b.log" >&2; echo "FAIL: ecsmeta-init image installed no $b rules" >&2; return 1; }
    echo "ecsmeta-init image: $b backend ok with a read-only root and only NET_ADMIN + NET_RAW"
  done
  podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'ecsmeta-test/ecsmeta-(init|proxy)' | tee "$work/sizes"
  check_size proxy 15 && check_size init 40
}

# check_size NAME MB: the image's uncompressed size, as podman reports it.
check_size() {
  local bytes
  bytes=$(podman image inspect --format '{{.Size}}' "localhost/ecsmeta-test/ecsmeta-$1:test")
  echo "image ecsmeta-$1: $((bytes / 1000000)) MB (goal <= $2 MB)"
  ((bytes <= $2 * 1000000)) || { echo "FAIL: ecsmeta-$1 image is over $2 MB" >&2; return 1; }
}

start_api() {
  podman system service --time=0 "$DOCKER_HOST" >"$work/podman-api.log" 2>&1 &
  api_pid=$!
  for _ in $(seq 50); do [[ -S $work/podman.sock ]] && break; sleep 0.1; done
  # podman 4 runs no health checks without systemd timers: run them here for
  # containers still starting, so that `condition: service_healthy` works.
  (while sleep 1; do
     for c in $(podman ps -q --filter health=starting 2>/dev/null); do podman healthcheck run "$c" >/dev/null 2>&1 || true; done
   done) &
  hc_pid=$!
}

export ECSMETA_INIT_IMAGE=localhost/ecsmeta-test/ecsmeta-init:test ECSMETA_PROXY_IMAGE=localhost/ecsmeta-test/ecsmeta-proxy:test \
  CREDPROXY_IMAGE=localhost/ecsmeta-test/credserver:test APP_IMAGE=localhost/ecsmeta-test/app:test
export CREDPROXY_TOKEN=ecsmeta-containers-test-token-$RANDOM$RANDOM

# run_example PROJECT WITH_INIT COMPOSE...: starts the project, asserts the
# init service (if WITH_INIT) exited 0, the proxy is healthy and the app
# printed credentials the test server issued for the right token.
run_example() {
  local project=$1 with_init=$2; shift 2
  "$@" down --remove-orphans -t 2 >/dev/null 2>&1 || true
  "$@" up -d --quiet-pull 2>&1 | grep -v -E '^\s*$' || true
  wait_app "$project" 120 "$@"
  if [[ -n $with_init ]]; then
    local ic
    ic=$(podman inspect --format '{{.State.ExitCode}}' "$project-ecsmeta-init-1")
    [[ $ic == 0 ]] || { echo "FAIL: $project: ecsmeta-init exited $ic" >&2; return 1; }
  fi
  [[ $(podman inspect --format '{{.State.Health.Status}}' "$project-ecsmeta-proxy-1") == healthy ]] \
    || { echo "FAIL: $project: ecsmeta-proxy is not healthy" >&2; return 1; }
  check_creds "$project" "$@"
}

# down PROJECT COMPOSE...: stops the project and asserts no container is left.
down() {
  local project=$1; shift
  "$@" down --remove-orphans -t 2 >/dev/null 2>&1
  local left
  left=$(podman ps -a -q --filter label=com.docker.compose.project="$project" | wc -l)
  [[ $left == 0 ]] || { echo "FAIL: down left $left containers of $project" >&2; return 1; }
}

# compose_files FILE...: the compose command for these files.
compose_files() { c=("$compose"); for f in "$@"; do c+=(-f "$f"); done; }

# wait_app PROJECT SECONDS COMPOSE...: the app container finished, exit 0.
wait_app() {
  local project=$1 secs=$2; shift 2
  local code
  timeout "$secs" "$@" wait app >/dev/null || true
  code=$(podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$project-app-1")
  [[ $code == "exited 0" ]] || { "$@" ps -a; "$@" logs; echo "FAIL: $project: app is '$code', want 'exited 0'" >&2; return 1; }
}

# check_creds PROJECT COMPOSE...: the app's last output is credentials the
# server issued, and the server saw the right token for them.
check_creds() {
  local project=$1; shift
  local out key hash
  out=$("$@" logs --no-log-prefix app | grep AccessKeyId | tail -1) || true
  key=$(sed -n 's/.*"AccessKeyId": *"\(ASIAECSMETATEST[0-9]*\)".*/\1/p' <<<"$out")
  [[ -n $key ]] || { echo "FAIL: $project: the app printed no test credentials: $out" >&2; return 1; }
  hash=$(printf %s "$CREDPROXY_TOKEN" | sha256sum | cut -c1-8)
  "$@" logs --no-log-prefix credproxy | grep '"auth":"ok"' | grep -q "\"authHash\":\"$hash\"" \
    || { echo "FAIL: $project: the credential server did not see the right token" >&2; return 1; }
  echo "$project: app got $key through ecsmeta; the server saw the right token"
}

ex=examples/compose tc=test/containers

example_dnat() {
  local c; compose_files $ex/compose.yaml $tc/compose.test.yaml
  run_example ecsmeta init "${c[@]}"
  # CredProxy restarting alone strands nobody: the netns belongs to "pod".
  "${c[@]}" restart -t 2 credproxy >/dev/null 2>&1
  "${c[@]}" up -d --no-deps --force-recreate app >/dev/null 2>&1
  wait_app ecsmeta 60 "${c[@]}"
  check_creds ecsmeta-after-credproxy-restart "${c[@]}"
  down ecsmeta "${c[@]}"
}

# The hardened override: the app (uid 1000) gets credentials, a container of
# another uid in the same netns gets a reset.
example_hardened() {
  local c; compose_files $ex/compose.yaml $ex/compose.hardened.yaml $tc/compose.test.yaml $tc/compose.hardened.test.yaml
  run_example ecsmeta init "${c[@]}"
  timeout 60 "${c[@]}" wait intruder >/dev/null 2>&1 || true
  local st
  st=$(podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' ecsmeta-intruder-1)
  [[ $st == exited* && $st != "exited 0" ]] || { "${c[@]}" logs intruder; echo "FAIL: a uid-2000 container got credentials ($st)" >&2; return 1; }
  "${c[@]}" logs --no-log-prefix intruder | grep -q AccessKeyId && { echo "FAIL: the intruder printed credentials" >&2; return 1; }
  echo "ecsmeta-hardened: uid 2000 in the same netns was refused ($st)"
  down ecsmeta "${c[@]}"
}

example_userspace() {
  local c; compose_files $ex/compose.userspace.yaml $tc/compose.userspace.test.yaml
  run_example ecsmeta-userspace init "${c[@]}" && down ecsmeta-userspace "${c[@]}"
}

example_restricted() {
  local c; compose_files $ex/compose.restricted.yaml $tc/compose.test.yaml
  run_example ecsmeta-restricted "" "${c[@]}" && down ecsmeta-restricted "${c[@]}"
}

# The chart's rendered pods, realized with podman by test/pods (native
# sidecars gated on startupProbes sent to the pod IP, as the kubelet does).
chart_pods() { PODS_IMAGES=built hack/gotest.sh -count=1 -timeout 15m ./test/pods/...; }

start=$(date +%s)
stage podman-setup setup_podman
stage base-images rootfs
stage compose-plugin compose_plugin
stage images images
start_api
stage compose-dnat example_dnat
stage compose-hardened example_hardened
stage compose-userspace example_userspace
stage compose-restricted example_restricted
stage chart-pods chart_pods
echo "=== e2e-containers: all ok in $(( $(date +%s) - start ))s"
