#!/usr/bin/env bash
# benches/ab.sh - A/B two strait binaries under the same HTTP/1.1 keep-alive
# load: the before-and-after check for a hot-path change.
#
# Layout as shared/bench/l7.sh: the proxy under test alone on CPU 1, wrk and
# the nginx backend (1 worker, `return 200` 64 B on 127.0.0.1:18081/18082)
# on CPU 0, loopback only. Each round runs A then B (then B then A in the
# next round, so neither always goes first): start the binary through
# benches/strait-bench-proxy.sh on 127.0.0.1:18140, warm up 1 s, then
# `wrk -t1 -c50 -d${SECONDS_PER_RUN}s` while reading the process's CPU time
# (utime + stime from /proc/PID/stat). Prints, per run and as medians over
# the rounds: req/s and CPU µs per request. CPU per request is the steadier
# number on a machine whose speed drifts by ±15 % between runs.
#
# Usage: benches/ab.sh A_BINARY B_BINARY [--rounds N] [--seconds S] [--out DIR]
#   --rounds N    [5]      rounds (each runs A and B once)
#   --seconds S   [8]      wrk duration per run
#   --out DIR     [/tmp/bench-results/ab-<timestamp>]
#
# Needs (Debian 12): wrk nginx-light curl util-linux.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[%s] ab.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
me=ab.sh
# shellcheck source=bench-lib.sh
source "$HERE/bench-lib.sh"

A=${1:-} B=${2:-}
[[ -x $A && -x $B ]] || die "usage: ab.sh A_BINARY B_BINARY [--rounds N] [--seconds S] [--out DIR]"
shift 2
ROUNDS=5 SECS=8 OUT=""
while (($#)); do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) die "unknown option: $1" ;;
  esac
done
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 20 ]] || die "--rounds must be 1..20"
[[ $SECS =~ ^[0-9]+$ && $SECS -ge 2 && $SECS -le 60 ]] || die "--seconds must be 2..60"
for t in wrk nginx curl taskset timeout; do
  command -v "$t" >/dev/null || die "missing tool: $t"
done
OUT=${OUT:-/tmp/bench-results/ab-$(date +%Y%m%d-%H%M%S)}
WORK=$OUT/work
mkdir -p "$WORK"

PIDS=()
cleanup() { kill_pids "${PIDS[@]}"; }
trap cleanup EXIT
ports_free 18081 18082 18140 || exit 1

nginx_conf "$WORK" >"$WORK/nginx.conf"
taskset -c 0 nginx -p "$WORK/" -e stderr -c "$WORK/nginx.conf" >"$OUT/nginx.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 18081 || die "nginx did not start (see $OUT/nginx.log)"

TICKS=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME BINARY ROUND: one measured run; appends "NAME ROUND req/s cpu_us" to results.
run() {
  local name=$1 bin=$2 round=$3 pid t0 t1 rps
  BENCH_LISTEN=127.0.0.1:18140 BENCH_BACKENDS=127.0.0.1:18081,127.0.0.1:18082 BENCH_WORK=$WORK/$name \
    taskset -c 1 "$HERE/strait-bench-proxy.sh" "$bin" >"$OUT/$name-$round.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port 127.0.0.1 18140 || die "$name did not listen (see $OUT/$name-$round.log)"
  [[ $(curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:18140/) == 200 ]] ||
    die "$name sanity check failed"
  timeout 15 taskset -c 0 wrk -t1 -c50 -d1s http://127.0.0.1:18140/ >/dev/null 2>&1 || true
  t0=$(cpu_ticks "$pid")
  timeout $((SECS + 20)) taskset -c 0 wrk -t1 -c50 -d"${SECS}s" http://127.0.0.1:18140/ \
    >"$OUT/wrk-$name-$round.txt" 2>&1 || true
  t1=$(cpu_ticks "$pid")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$OUT/wrk-$name-$round.txt")
  [[ -n $rps ]] || die "no wrk result for $name round $round (see $OUT/wrk-$name-$round.txt)"
  awk -v n="$name" -v r="$round" -v rps="$rps" -v d=$((t1 - t0)) -v hz="$TICKS" -v s="$SECS" \
    'BEGIN { printf "%s %d %.0f %.2f\n", n, r, rps, (d / hz) * 1e6 / (rps * s) }' >>"$OUT/results.txt"
  tail -1 "$OUT/results.txt" >&2
}

: >"$OUT/results.txt"
log "A=$A B=$B, $ROUNDS rounds x ${SECS}s; output $OUT"
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then run A "$A" "$r"; run B "$B" "$r"; else run B "$B" "$r"; run A "$A" "$r"; fi
done

# Medians per binary, and B over A.
awk '
  { rps[$1] = rps[$1] " " $3; cpu[$1] = cpu[$1] " " $4 }
  function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    ra = median(rps["A"]); rb = median(rps["B"]); ca = median(cpu["A"]); cb = median(cpu["B"])
    printf "A  median %8.0f req/s  %6.2f CPU us/req\n", ra, ca
    printf "B  median %8.0f req/s  %6.2f CPU us/req\n", rb, cb
    printf "B/A        %6.3fx req/s  %6.3fx CPU us/req\n", rb / ra, cb / ca
  }' "$OUT/results.txt" | tee "$OUT/summary.txt"
