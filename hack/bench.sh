#!/usr/bin/env bash
# make bench: every benchmark of docs/benchmarks.md, side by side in one
# run, in throw-away network namespaces. Prints a Markdown report (also
# written to bin/bench-report.md). Bounded: about 3 minutes.
#   RUNS=20 DURATION=10s ROUNDS=5 hack/bench.sh
# shellcheck disable=SC2016,SC2001 # scripts for the namespaces are single-quoted on purpose; sed reads JSON
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "bench: run as root (sudo make bench): it creates network namespaces" >&2; exit 1; }
RUNS=${RUNS:-20}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}
IDLE_CONNS=${IDLE_CONNS:-1000}
go build -o bin/ecsmeta-testkit ./test/testkit
chmod 755 bin bin/* 2>/dev/null || true
nonroot=(setpriv --reuid=65532 --regid=65532 --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs)
report=bin/bench-report.md
nss=()
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  for n in "${nss[@]}"; do ip netns del "$n" 2>/dev/null || true; done
}
trap cleanup EXIT
# newns NAME: a fresh namespace with lo up, in $n (not a subshell: cleanup must know it).
newns() { n=ecsmeta-bench-$$-$1; ip netns add "$n"; ip netns exec "$n" ip link set lo up; nss+=("$n"); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p90() { sort -n | awk '{a[NR]=$1} END {print a[int(NR*0.9+0.5)]}'; }
ticks() { awk '{print $14+$15+$16+$17}' "/proc/$1/stat"; }   # utime+stime+cutime+cstime
hz=$(getconf CLK_TCK)

# Not a pipeline: the group must run in this shell, so that cleanup sees
# its background jobs and namespaces.
exec > >(tee "$report")
{
echo "## Run of $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(uname -r), $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
echo

# --- 1. ecsmeta-init start-up, fresh namespace each run --------------------
init_ms=(); shell_ms=(); execs=""
for i in $(seq "$RUNS"); do
  newns "init$i"
  out=$(ip netns exec "$n" bash -c 's=$(date +%s%N); bin/ecsmeta-init 2>/tmp/ecsmeta-bench-init.log; e=$(date +%s%N); echo $(( (e-s)/1000 ))')
  init_ms+=("$out")
  execs=$(grep -o 'iptablesExecs=[0-9]*' /tmp/ecsmeta-bench-init.log | cut -d= -f2)
  ip netns del "$n"
  newns "shell$i"
  out=$(ip netns exec "$n" bash -c '
    s=$(date +%s%N)
    ip addr add 169.254.170.2/32 dev lo
    iptables-nft -w -t nat -N ECSMETA-OUTPUT
    iptables-nft -w -t nat -I OUTPUT 1 -j ECSMETA-OUTPUT
    iptables-nft -w -t nat -A ECSMETA-OUTPUT -d 169.254.170.2/32 -p tcp --dport 80 -j DNAT --to-destination 127.0.0.1:1338
    iptables-nft -w -N ECSMETA-INPUT
    iptables-nft -w -I INPUT 1 -j ECSMETA-INPUT
    iptables-nft -w -A ECSMETA-INPUT -d 169.254.170.2/32 ! -i lo -m conntrack --ctstate NEW,INVALID -j DROP
    e=$(date +%s%N); echo $(( (e-s)/1000 ))')
  shell_ms+=("$out")
  ip netns del "$n"
done
im=$(printf '%s\n' "${init_ms[@]}" | median); ip90=$(printf '%s\n' "${init_ms[@]}" | p90)
sm=$(printf '%s\n' "${shell_ms[@]}" | median); sp90=$(printf '%s\n' "${shell_ms[@]}" | p90)
echo "### ecsmeta-init, one run in a fresh network namespace (default flags), $RUNS runs each, interleaved"
echo
echo "| | median | p90 | iptables processes |"
echo "|---|---|---|---|"
printf '| ecsmeta-init (auto backend: reads both, one restore) | %.1f ms | %.1f ms | %s |\n' "$(echo "$im/1000" | awk -F/ '{print $1/$2}')" "$(echo "$ip90/1000" | awk -F/ '{print $1/$2}')" "$execs"
printf '| shell script, ip + 6 iptables-nft calls (no checks, no rollback) | %.1f ms | %.1f ms | 6 |\n' "$(echo "$sm/1000" | awk -F/ '{print $1/$2}')" "$(echo "$sp90/1000" | awk -F/ '{print $1/$2}')"
printf '\nRatio ecsmeta-init / shell: %.2fx (median).\n\n' "$(awk -v a="$im" -v b="$sm" 'BEGIN{print a/b}')"

# --- 2. forwarding: direct, kernel DNAT, userspace, socat ------------------
newns fwd
ip netns exec "$n" sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
ip netns exec "$n" bin/ecsmeta-testkit credserver --listen 127.0.0.1:1338 --quiet &
ip netns exec "$n" bin/ecsmeta-init 2>/dev/null
# ip netns exec and setpriv exec the program: $! is its pid.
ip netns exec "$n" "${nonroot[@]}" bin/ecsmeta-proxy --listen 127.0.0.1:15080 --health-addr 127.0.0.1:1339 2>/dev/null &
proxy_pid=$!
ip netns exec "$n" socat TCP-LISTEN:15081,bind=127.0.0.1,fork,reuseaddr TCP:127.0.0.1:1338 &
socat_pid=$!
sleep 1
[[ $(cat "/proc/$proxy_pid/comm") == ecsmeta-proxy && $(cat "/proc/$socat_pid/comm") == socat ]] || { echo "bench: proxy or socat did not start" >&2; exit 1; }
body=$(ip netns exec "$n" curl -s http://127.0.0.1:1338/v1/credentials | wc -c)
echo "### Forwarding a credential request ($body-byte JSON answer), new TCP connection per request, no retries, $DURATION per cell in $ROUNDS interleaved slices (p50/p99: median over the slices)"
echo
echo "| path | concurrency | requests/s | p50 ms | p99 ms | errors | ratio to direct (req/s) | forwarder CPU per request |"
echo "|---|---|---|---|---|---|---|---|"
# Interleaved: each cell is ROUNDS slices of DURATION/ROUNDS, the four paths
# taking turns, so that the machine's noise falls on all of them alike.
slice=$(awk -v d="${DURATION%s}" -v r="$ROUNDS" 'BEGIN{printf "%.3fs", d/r}')
paths=(direct dnat userspace socat)
declare -A url=([direct]=http://127.0.0.1:1338/v1/credentials [dnat]=http://169.254.170.2/v1/credentials
  [userspace]=http://127.0.0.1:15080/v1/credentials [socat]=http://127.0.0.1:15081/v1/credentials)
declare -A pid=([direct]="" [dnat]="" [userspace]=$proxy_pid [socat]=$socat_pid)
field() { sed "s/.*\"$1\":\([0-9.]*\).*/\1/" <<<"$2"; }
for c in 1 64; do
  declare -A reqs=() errs=() secs=() cpu=() p50s=() p99s=()
  for _ in $(seq "$ROUNDS"); do
    for path in "${paths[@]}"; do
      p=${pid[$path]} t0=0 t1=0
      [[ -n $p ]] && t0=$(ticks "$p")
      res=$(ip netns exec "$n" bin/ecsmeta-testkit load --url "${url[$path]}" --c "$c" --duration "$slice")
      [[ -n $p ]] && { sleep 0.2; t1=$(ticks "$p"); }
      reqs[$path]=$(( ${reqs[$path]:-0} + $(field requests "$res") ))
      errs[$path]=$(( ${errs[$path]:-0} + $(field errors "$res") ))
      secs[$path]=$(awk -v a="${secs[$path]:-0}" -v b="$(field seconds "$res")" 'BEGIN{print a+b}')
      cpu[$path]=$(( ${cpu[$path]:-0} + t1 - t0 ))
      p50s[$path]+="$(field p50ms "$res") " p99s[$path]+="$(field p99ms "$res") "
    done
  done
  direct_rps=$(awk -v r="${reqs[direct]}" -v s="${secs[direct]}" 'BEGIN{print r/s}')
  for path in "${paths[@]}"; do
    rps=$(awk -v r="${reqs[$path]}" -v s="${secs[$path]}" 'BEGIN{print r/s}')
    p50=$(tr ' ' '\n' <<<"${p50s[$path]}" | grep . | median)
    p99=$(tr ' ' '\n' <<<"${p99s[$path]}" | grep . | median)
    c_us="-"
    [[ -n ${pid[$path]} ]] && c_us=$(awk -v d="${cpu[$path]}" -v hz="$hz" -v r="${reqs[$path]}" 'BEGIN{printf "%.1f µs", d/hz/r*1e6}')
    printf '| %s | %d | %.0f | %s | %s | %s | %.2fx | %s |\n' "$path" "$c" "$rps" "$p50" "$p99" "${errs[$path]}" \
      "$(awk -v a="$rps" -v b="$direct_rps" 'BEGIN{print a/b}')" "$c_us"
  done
  unset reqs errs secs cpu p50s p99s
done
echo

# --- 3. idle connections: memory and fds -----------------------------------
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
fd0=$(fds "$proxy_pid"); rss0=$(rss "$proxy_pid")
t0=$(ticks "$proxy_pid")
sleep 10
t1=$(ticks "$proxy_pid")
idle_cpu=$(awk -v d=$((t1 - t0)) -v hz="$hz" 'BEGIN{printf "%.2f", d/hz/10*100}')
ip netns exec "$n" bin/ecsmeta-testkit hold --addr 127.0.0.1:15080 --n "$IDLE_CONNS" --for 30s >/dev/null &
holder=$!
sleep 10
fd1=$(fds "$proxy_pid"); rss1=$(rss "$proxy_pid")
kill "$holder" 2>/dev/null || true
echo "### ecsmeta-proxy with $IDLE_CONNS idle forwarded connections (measured 10 s after they were opened)"
echo
echo "| | before | with $IDLE_CONNS idle connections | per connection |"
echo "|---|---|---|---|"
printf '| VmRSS | %.1f MiB | %.1f MiB | %.1f KiB |\n' "$(awk -v a="$rss0" 'BEGIN{print a/1024}')" "$(awk -v a="$rss1" 'BEGIN{print a/1024}')" "$(awk -v a="$rss0" -v b="$rss1" -v n="$IDLE_CONNS" 'BEGIN{print (b-a)/n}')"
printf '| open fds | %d | %d | %.2f |\n' "$fd0" "$fd1" "$(awk -v a="$fd0" -v b="$fd1" -v n="$IDLE_CONNS" 'BEGIN{print (b-a)/n}')"
echo
echo "Idle CPU between probes (10 s, probing every 2 s): ${idle_cpu}% of one core."
}
