#!/usr/bin/env bash
# benches/mesh-p99.sh - latency at a fixed rate of the mesh mTLS path beside
# the plaintext paths, measured in interleaved slices so that the host's
# noise falls on every target alike.
#
# Why: on this VM the bare backend's own p99 at 1,000 req/s drifts between
# 300 and 1,300 µs from minute to minute, in bursts of a few hundred
# milliseconds. benches/mtls.sh (shared/bench/l7.sh) measures each target
# for 10 s in turn, so a burst that lands on one target's run moves that
# target's p99 and the mTLS/plaintext ratio by 1.5x or more. Here all four
# targets stay up for the whole run, and the run is ROUNDS rounds of one
# short SLICE per target (the order rotates every round); each target's
# percentiles are taken over all its requests from all its slices pooled,
# and beside them the median over rounds of the per-slice p99.
#
# Targets (the same wrappers mtls.sh runs, with the same configs):
#   direct       nginx itself, moved onto the proxy core for its slices
#   strait       one strait, plaintext (benches/strait-bench-proxy.sh)
#   strait-2hop  client proxy -> plaintext -> server proxy (strait-bench-2hop.sh)
#   strait-mtls  client proxy -> TLS 1.3 + HTTP/2 mTLS -> server proxy
#                (strait-bench-mtls.sh)
# Layout as l7.sh: every proxy process on CPU 1, the load generator and
# nginx on CPU 0 (nginx on CPU 1 for the direct slices).
#
# Load per slice: h2load [--h1] -t1 -cC -r1 --rate-period=1ms --rps=R/C
# -n R*SLICE, as l7.sh's fixed-rate runs (staggered connections, exact
# per-request latencies from --log-file); new connections every slice, after
# a 1 s warm-up of every target at the start.
#
# Usage: benches/mesh-p99.sh --bin PATH [--rounds N] [--slice S] [--rate R]
#                            [--conns C] [--proto h1|h2|both] [--out DIR]
#   --bin PATH     [required] the strait binary (a release build)
#   --rounds N     [10]   rounds; each runs one slice of every target
#   --slice S      [3]    seconds per slice
#   --rate R       [1000] requests/s;  --conns C [10] connections (R/C <= 100)
#   --proto P      [both] h1 (HTTP/1.1), h2 (h2c) or both
#   --out DIR      [/tmp/bench-results/mesh-p99-<timestamp>]
# Time: 4 targets x (SLICE + ~0.3 s) x ROUNDS per protocol: about 2.5 min per
# protocol with the defaults.
#
# Ports (loopback, all must be free): nginx 18081-18083; strait 18130/18131;
# mTLS 18132/18133 (+18140-18142); 2hop 18134/18135 (+18150-18152).
#
# Output: OUT/summary.md (also printed): per protocol, each target's
# samples, p50/p90/p99/p99.9/max over the pooled slices and the median of
# the slice p99s; then the p99 ratios, pooled and by slices: strait-mtls
# over strait-2hop (what mTLS adds to the same two-proxy path: the 1.5
# target of issue #4), strait-mtls over strait (one proxy), and strait-2hop
# over strait (what the second proxy alone adds). Raw h2load logs in OUT/logs/.
#
# Needs (Debian 12): nghttp2-client nginx-light curl util-linux procps.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[%s] mesh-p99.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
me=mesh-p99.sh
# shellcheck source=bench-lib.sh
source "$HERE/bench-lib.sh"

BIN="" ROUNDS=10 SLICE=3 RATE=1000 CONNS=10 PROTO=both OUT=""
while (($#)); do
  case $1 in
    --bin) BIN=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --slice) SLICE=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --proto) PROTO=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) die "unknown option: $1 (see the header of $0)" ;;
  esac
done
[[ -n $BIN && -x $BIN ]] || die "--bin PATH (an executable strait) is required"
BIN=$(realpath "$BIN")
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 100 ]] || die "--rounds must be 1..100"
[[ $SLICE =~ ^[0-9]+$ && $SLICE -ge 1 && $SLICE -le 60 ]] || die "--slice must be 1..60 seconds"
[[ $RATE =~ ^[0-9]+$ && $CONNS =~ ^[0-9]+$ && $CONNS -ge 1 ]] || die "--rate and --conns must be numbers"
((RATE % CONNS == 0 && RATE / CONNS >= 1 && RATE / CONNS <= 100)) ||
  die "--rate must be a multiple of --conns with rate/conns in 1..100 (h2load paces with a 10 ms timer)"
case $PROTO in h1) PROTOS=(h1) ;; h2) PROTOS=(h2) ;; both) PROTOS=(h1 h2) ;; *) die "--proto is h1, h2 or both" ;; esac
for t in h2load nginx curl taskset timeout; do
  command -v "$t" >/dev/null || die "missing tool: $t"
done
OUT=${OUT:-/tmp/bench-results/mesh-p99-$(date +%Y%m%d-%H%M%S)}
WORK=$OUT/work
mkdir -p "$WORK" "$OUT/logs"
ports_free 18081 18082 18083 18130 18131 18132 18133 18134 18135 18140 18141 18142 18150 18151 18152 || exit 1

PIDS=()
cleanup() { trap - EXIT INT TERM; stop_pids "${PIDS[@]}"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

nginx_conf "$WORK" h2c >"$WORK/nginx.conf"
taskset -c 0 nginx -p "$WORK/" -e stderr -c "$WORK/nginx.conf" >"$OUT/nginx.log" 2>&1 &
NGINX=$!
PIDS+=("$NGINX")
wait_port 127.0.0.1 18083 || die "nginx did not start (see $OUT/nginx.log)"

# Each wrapper in its own process group on CPU 1, with l7.sh's variables.
declare -A H1 H2
start() { # NAME WRAPPER H1_LISTEN H2_LISTEN
  BENCH_LISTEN=$3 BENCH_H2_LISTEN=$4 BENCH_BACKENDS=127.0.0.1:18081,127.0.0.1:18082 \
    BENCH_H2_BACKENDS=127.0.0.1:18083 BENCH_WORK=$WORK \
    taskset -c 1 bash "$HERE/$2" "$BIN" >"$OUT/$1.log" 2>&1 &
  PIDS+=($!)
  H1[$1]=$3 H2[$1]=$4
}
H1[direct]=127.0.0.1:18081 H2[direct]=127.0.0.1:18083
start strait strait-bench-proxy.sh 127.0.0.1:18130 127.0.0.1:18131
start strait-2hop strait-bench-2hop.sh 127.0.0.1:18134 127.0.0.1:18135
start strait-mtls strait-bench-mtls.sh 127.0.0.1:18132 127.0.0.1:18133
TARGETS=(direct strait strait-2hop strait-mtls)
for t in "${TARGETS[@]}"; do
  for a in "${H1[$t]}" "${H2[$t]}"; do
    wait_port "${a%:*}" "${a##*:}" || die "$t did not listen on $a (see $OUT/$t.log)"
  done
  for p in h1 h2; do
    if [[ $p == h1 ]]; then got=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://${H1[$t]}/") || true
    else got=$(curl -s -m 5 --http2-prior-knowledge -o /dev/null -w '%{http_code}' "http://${H2[$t]}/") || true; fi
    [[ $got == 200 ]] || die "$t: $p request answered '${got:-nothing}', not 200 (see $OUT/$t.log)"
  done
done
log "targets up: ${TARGETS[*]}; $ROUNDS rounds x ${SLICE}s slices at $RATE req/s over $CONNS connections"

# load PROTO TARGET LOGFILE SECONDS: one fixed-rate h2load run.
load() {
  local flag=() url
  if [[ $1 == h1 ]]; then flag=(--h1); url=http://${H1[$2]}/; else url=http://${H2[$2]}/; fi
  timeout $(($4 + 20)) taskset -c 0 h2load "${flag[@]}" -t1 -c"$CONNS" -r1 --rate-period=1ms \
    --rps=$((RATE / CONNS)) -n $((RATE * $4)) ${3:+--log-file="$3"} "$url" >/dev/null 2>&1 ||
    log "h2load against $2 ($1) exited non-zero"
}

# p50 p90 p99 p99.9 max count of the latencies (µs, 2xx only) in the files.
pctl() {
  cat "$@" | awk -F'\t' '$2 >= 200 && $2 < 300 {print $3}' | sort -n | awk '
    {v[NR]=$1}
    function at(q) { i = int(q * NR + 0.999999); return v[i < 1 ? 1 : i] }
    END { if (NR == 0) { print "nan nan nan nan nan 0"; exit }
          printf "%d %d %d %d %d %d\n", at(0.5), at(0.9), at(0.99), at(0.999), v[NR], NR }'
}
median() { sort -n | awk '{v[NR]=$1} END{ if (NR == 0) print "nan"; else print (NR % 2 ? v[(NR+1)/2] : int((v[NR/2] + v[NR/2+1]) / 2)) }'; }

for p in "${PROTOS[@]}"; do
  for t in "${TARGETS[@]}"; do load "$p" "$t" "" 1; done
  for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < ${#TARGETS[@]}; i++)); do
      t=${TARGETS[$(((i + r) % ${#TARGETS[@]}))]}
      # The bare backend is measured on the proxy core, as l7.sh does.
      if [[ $t == direct ]]; then taskset -pc 1 "$NGINX" >/dev/null; fi
      load "$p" "$t" "$OUT/logs/$p.$t.r$r.log" "$SLICE"
      if [[ $t == direct ]]; then taskset -pc 0 "$NGINX" >/dev/null; fi
    done
    log "$p round $((r + 1))/$ROUNDS done"
  done
done

{
  echo '```'
  echo "date: $(date -Is); host: $(nproc) CPUs, $(uname -r); binary: $BIN"
  echo "params: rounds=$ROUNDS slice=${SLICE}s rate=$RATE conns=$CONNS; proxies on CPU 1, h2load + nginx on CPU 0"
  echo '```'
  for p in "${PROTOS[@]}"; do
    declare -A P99=() P99S=()
    label=HTTP/1.1
    [[ $p == h2 ]] && label=h2c
    echo
    echo "### $label at $RATE req/s: pooled over $ROUNDS interleaved ${SLICE}s slices"
    echo
    echo "| target | requests | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | median of slice p99s µs |"
    echo "|---|---|---|---|---|---|---|---|"
    for t in "${TARGETS[@]}"; do
      read -r p50 p90 p99 p999 pmax n < <(pctl "$OUT"/logs/"$p.$t".r*.log)
      ms=$(for f in "$OUT"/logs/"$p.$t".r*.log; do pctl "$f" | cut -d' ' -f3; done | median)
      P99[$t]=$p99 P99S[$t]=$ms
      echo "| $t | $n | $p50 | $p90 | $p99 | $p999 | $pmax | $ms |"
    done
    echo
    echo "| p99 ratio | pooled | median of slices | within 1.5 (pooled) |"
    echo "|---|---|---|---|"
    for pair in strait-mtls:strait-2hop strait-mtls:strait strait-2hop:strait; do
      a=${pair%%:*} b=${pair##*:}
      pooled=$(awk -v x="${P99[$a]}" -v y="${P99[$b]}" 'BEGIN{printf "%.2f", x / y}')
      slices=$(awk -v x="${P99S[$a]}" -v y="${P99S[$b]}" 'BEGIN{printf "%.2f", x / y}')
      ok=$(awk -v x="$pooled" 'BEGIN{print (x <= 1.5 ? "yes" : "NO")}')
      echo "| $a / $b | $pooled | $slices | $ok |"
    done
    echo
    echo "strait-mtls / strait-2hop is the cost of mTLS on the mesh path (the target);"
    echo "strait-2hop / strait is what the second proxy alone adds, both on the one proxy core."
  done
} >"$OUT/summary.md"
cat "$OUT/summary.md"
log "results in $OUT"
