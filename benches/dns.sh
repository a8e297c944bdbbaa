#!/usr/bin/env bash
# benches/dns.sh - the DNS shim against dnsmasq, on loopback, with dnsperf.
#
# Four targets per repetition, each DNS server pinned alone to --server-cpu,
# dnsperf pinned to --load-cpu (the layout of shared/bench/dns.sh):
#   strait-mesh     strait answers web.bench.svc.cluster.local from its snapshot
#   dnsmasq-mesh    dnsmasq answers the same name from a hosts file
#   strait-cached   strait answers fwd.bench.example from its cache (forwarded
#                   once to an upstream dnsmasq on --load-cpu, TTL 3600)
#   dnsmasq-cached  dnsmasq answers fwd.bench.example from the hosts file
# Per target: closed-loop max rate (dnsperf -c 1 -q 100 -l DURATION), then
# latency at each fixed rate in --qps (dnsperf -v: every query's latency ->
# p50/p99/max), plus the server's CPU time per query (/proc schedstat).
# Tables report medians over repetitions (max rate: median and min-max).
#
# Usage:
#   CARGO_TARGET_DIR=/work/target-bench benches/dns.sh [--reps 3] [--duration 10]
#       [--qps "10000 50000"] [--server-cpu 1] [--load-cpu 0] [--out DIR] [--no-build]
# Needs: dnsperf, dnsmasq (Debian: dnsperf, dnsmasq-base), taskset, ss.
# Only 127.0.0.1 is used; every process started is stopped by PID.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

REPS=3 DURATION=10 QPS="10000 50000" SERVER_CPU=1 LOAD_CPU=0 OUT="" BUILD=1
while (($#)); do
  case $1 in
    --reps) REPS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --qps) QPS=$2; shift 2 ;;
    --server-cpu) SERVER_CPU=$2; shift 2 ;;
    --load-cpu) LOAD_CPU=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage 0 ;;
    *) log "unknown option: $1"; usage 1 ;;
  esac
done
[[ $REPS =~ ^[0-9]+$ ]] && ((REPS >= 1 && REPS <= 10)) || die "--reps must be 1..10"
[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 2 && DURATION <= 60)) || die "--duration must be 2..60"
for q in $QPS; do [[ $q =~ ^[0-9]+$ ]] || die "bad --qps entry $q"; done
for t in dnsperf dnsmasq taskset ss; do command -v "$t" >/dev/null || die "missing $t (apt-get install dnsperf dnsmasq-base)"; done

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
STRAIT=$TARGET_DIR/release/strait
if ((BUILD)); then
  log "building strait (release) in $TARGET_DIR"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --bin strait >&2)
fi
[[ -x $STRAIT ]] || die "no $STRAIT (build it, or drop --no-build)"

MESH_NAME=web.bench.svc.cluster.local
FWD_NAME=fwd.bench.example
ANSWER=127.0.0.10
PORT=25353          # the server under test
UPSTREAM_PORT=25354 # strait's upstream for the cached target
OUT=${OUT:-/tmp/bench-results/dns-shim-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/logs"
RAW=$OUT/raw.tsv
printf 'rep\ttarget\tmetric\tvalue\n' >"$RAW"
printf '%s A\n' "$MESH_NAME" >"$OUT/mesh.txt"
printf '%s A\n' "$FWD_NAME" >"$OUT/fwd.txt"
printf '%s %s\n%s %s\n' "$ANSWER" "$MESH_NAME" "$ANSWER" "$FWD_NAME" >"$OUT/hosts"

cat >"$OUT/strait.yaml" <<EOF
listeners: {admin: "127.0.0.1:0", outbound: null}
node: {namespace: bench}
log: {level: warn}
runtime: {workerThreads: 1}
dns: {enabled: true, listen: "127.0.0.1:$PORT", upstreams: ["127.0.0.1:$UPSTREAM_PORT"]}
mesh:
  - apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: bench}
    spec: {clusterIP: $ANSWER, ports: [{port: 80}]}
EOF

# dnsmasq answering from $OUT/hosts only: no upstreams, no /etc/hosts, no DHCP.
dnsmasq_cmd() {
  echo dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
    --addn-hosts="$OUT/hosts" --no-poll --pid-file= --user=nobody --bind-interfaces \
    --listen-address=127.0.0.1 --port="$1" --local-ttl="$2" --cache-size=1000 \
    --dns-forward-max=1000 --log-facility=-
}

declare -a PIDS=()
# start CPU LOGFILE CMD... -> sets SPID (the command itself: taskset execs in place).
start() {
  local cpu=$1 logf=$2; shift 2
  taskset -c "$cpu" "$@" >"$logf" 2>&1 &
  SPID=$!
  PIDS+=("$SPID")
}
stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() { local p; for p in "${PIDS[@]}"; do stop_pid "$p"; done; }
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# Total CPU time (ns) of a process's threads.
cpu_ns() { awk '{s += $1} END {printf "%.0f\n", s}' /proc/"$1"/task/*/schedstat 2>/dev/null || echo 0; }
record() { printf '%s\t%s\t%s\t%s\n' "$REP" "$TARGET" "$1" "$2" >>"$RAW"; }

# wait_answers FILE -> bounded wait (50 x 0.1 s) until the server answers NOERROR.
wait_answers() {
  local k
  for ((k = 0; k < 50; k++)); do
    if timeout 5 dnsperf -s 127.0.0.1 -p "$PORT" -d "$1" -n 1 -t 1 2>/dev/null | grep -q 'NOERROR 1 '; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# measure QUERIES -> max rate, then latency percentiles at each fixed rate.
measure() {
  local queries=$1 f c0 c1 t0 t1 qps q
  f=$OUT/logs/${TARGET}_r${REP}_max.txt
  c0=$(cpu_ns "$SPID"); t0=$(date +%s%N)
  timeout $((DURATION + 30)) taskset -c "$LOAD_CPU" dnsperf -s 127.0.0.1 -p "$PORT" -d "$queries" \
    -c 1 -q 100 -l "$DURATION" >"$f" 2>&1 || log "dnsperf non-zero (see $f)"
  t1=$(date +%s%N); c1=$(cpu_ns "$SPID")
  qps=$(awk '/Queries per second:/ {print $4}' "$f")
  record max_qps "${qps:-nan}"
  record max_lost "$(awk '/Queries lost:/ {print $3}' "$f")"
  record cpu_us_per_q "$(awk -v c=$((c1 - c0)) -v t=$((t1 - t0)) -v r="${qps:-0}" \
    'BEGIN { if (r > 0) printf "%.2f", (c / t) / r * 1e6; else print "nan" }')"
  for q in $QPS; do
    f=$OUT/logs/${TARGET}_r${REP}_at$q.txt
    timeout $((DURATION + 30)) taskset -c "$LOAD_CPU" dnsperf -s 127.0.0.1 -p "$PORT" -d "$queries" \
      -c 1 -q 100 -Q "$q" -l "$DURATION" -v >"$f" 2>&1 || log "dnsperf non-zero (see $f)"
    awk '/^> / {print $NF}' "$f" | sort -g >"$f.lat"
    record "at${q}_qps" "$(awk '/Queries per second:/ {print $4}' "$f")"
    record "at${q}_p50_us" "$(awk '{a[NR] = $1} END {if (NR) printf "%.1f", a[int(NR * 0.50 + 0.5)] * 1e6; else print "nan"}' "$f.lat")"
    record "at${q}_p99_us" "$(awk '{a[NR] = $1} END {if (NR) printf "%.1f", a[int(NR * 0.99 + 0.5)] * 1e6; else print "nan"}' "$f.lat")"
    record "at${q}_max_us" "$(awk 'END {if (NR) printf "%.1f", $1 * 1e6; else print "nan"}' "$f.lat")"
    rm -f "$f.lat"
  done
}

! ss -Hlun "( sport = :$PORT )" | grep -q . || die "udp port $PORT busy"
! ss -Hlun "( sport = :$UPSTREAM_PORT )" | grep -q . || die "udp port $UPSTREAM_PORT busy"
log "output: $OUT"
# strait's upstream for the cached target, beside the load generator; it
# answers once per repetition (strait caches for the TTL, 3600 s).
# shellcheck disable=SC2046
start "$LOAD_CPU" "$OUT/logs/upstream.log" $(dnsmasq_cmd "$UPSTREAM_PORT" 3600)
UPSTREAM_PID=$SPID

for ((REP = 1; REP <= REPS; REP++)); do
  for TARGET in strait-mesh dnsmasq-mesh strait-cached dnsmasq-cached; do
    case $TARGET in
      strait-*) start "$SERVER_CPU" "$OUT/logs/${TARGET}_r$REP.log" "$STRAIT" proxy --config "$OUT/strait.yaml" ;;
      # shellcheck disable=SC2046
      dnsmasq-*) start "$SERVER_CPU" "$OUT/logs/${TARGET}_r$REP.log" $(dnsmasq_cmd "$PORT" 30) ;;
    esac
    case $TARGET in *-mesh) queries=$OUT/mesh.txt ;; *) queries=$OUT/fwd.txt ;; esac
    wait_answers "$queries" || die "$TARGET does not answer (see $OUT/logs)"
    log "rep $REP/$REPS: $TARGET (pid $SPID)"
    measure "$queries"
    record peak_rss_kb "$(awk '/VmHWM/ {print $2}' /proc/"$SPID"/status 2>/dev/null || echo nan)"
    stop_pid "$SPID"
  done
done
stop_pid "$UPSTREAM_PID"

# Medians over repetitions.
{
  awk -F'\t' 'NR > 1 && $4 != "" && $4 != "nan" {k = $2 "\t" $3; v[k] = v[k] " " $4}
    END {for (k in v) {m = split(v[k], a, " ")
      for (x = 1; x <= m; x++) for (y = x + 1; y <= m; y++) if (a[y] + 0 < a[x] + 0) {t = a[x]; a[x] = a[y]; a[y] = t}
      med = (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
      print k "\t" med "\t" a[1] "\t" a[m]}}' "$RAW" | sort >"$OUT/medians.tsv"
  printf '| target | max qps, median (min-max) | CPU us/query | lost |'
  for q in $QPS; do printf ' p50 / p99 us at %s qps |' "$q"; done
  printf ' peak RSS MiB |\n|---|---|---|---|'
  for q in $QPS; do printf '%s' '---|'; done
  printf '%s\n' '---|'
  for t in strait-mesh dnsmasq-mesh strait-cached dnsmasq-cached; do
    awk -F'\t' -v t="$t" -v qps="$QPS" '$1 == t {m[$2] = $3; lo[$2] = $4; hi[$2] = $5}
      END {printf "| %s | %.0f (%.0f-%.0f) | %.2f | %s |", t, m["max_qps"], lo["max_qps"], hi["max_qps"], m["cpu_us_per_q"], m["max_lost"]
        n = split(qps, Q, " "); for (i = 1; i <= n; i++) printf " %.0f / %.0f |", m["at" Q[i] "_p50_us"], m["at" Q[i] "_p99_us"]
        printf " %.1f |\n", m["peak_rss_kb"] / 1024}' "$OUT/medians.tsv"
  done
} | tee "$OUT/summary.md"
log "raw: $RAW  summary: $OUT/summary.md"
