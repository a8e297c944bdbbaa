#!/usr/bin/env bash
# benches/instructions.sh - user-space instructions per proxied HTTP/1.1
# request, counted by valgrind's callgrind: strait, and haproxy beside it.
#
# Why: on this 2-vCPU VM, time-based numbers (req/s, CPU µs per request)
# drift by ±15 % between runs, which hides a 3 % change. An instruction count
# is exact and repeatable, so it shows whether a hot-path change removed
# work. It says nothing about the kernel (about 60 % of a request's CPU
# here), cache misses or clock reads (vDSO calls are not counted); confirm a
# gain with benches/ab.sh and benches/load.sh.
#
# How: nginx (1 worker, `return 200` 64 B on 127.0.0.1:18081/18082) as the
# backend; the proxy under callgrind on 127.0.0.1:18160 (strait with the
# config benches/strait-bench-proxy.sh writes: metrics on, p2c, retries on);
# `h2load --h1 -c50 -m1 -n N` as the client. Each proxy runs twice, with
# N1 and N2 requests; (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one
# request, without start-up and shutdown.
#
# Usage: benches/instructions.sh [--bin PATH] [--no-haproxy] [--out DIR]
#                                [--requests N1:N2]
#   --bin PATH        strait binary [/work/target-bench/release/strait]
#   --requests N1:N2  [5000:25000]
#   --out DIR         [/tmp/bench-results/instructions-<timestamp>]
# Takes about 1 minute per proxy. Needs (Debian 12): valgrind nghttp2-client
# nginx-light curl [haproxy].
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[%s] instructions.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
me=instructions.sh
# shellcheck source=bench-lib.sh
source "$HERE/bench-lib.sh"

BIN=/work/target-bench/release/strait OUT="" HAPROXY=1 N1=5000 N2=25000
while (($#)); do
  case $1 in
    --bin) BIN=$2; shift 2 ;;
    --no-haproxy) HAPROXY=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    --requests) IFS=: read -r N1 N2 <<<"$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option: $1" ;;
  esac
done
[[ $N1 =~ ^[0-9]+$ && $N2 =~ ^[0-9]+$ && $N1 -ge 100 && $N2 -gt $N1 && $N2 -le 200000 ]] ||
  die "--requests N1:N2 needs 100 <= N1 < N2 <= 200000"
[[ -x $BIN ]] || die "no strait binary at $BIN (CARGO_TARGET_DIR=/work/target-bench cargo build --release)"
for t in valgrind h2load nginx curl timeout; do
  command -v "$t" >/dev/null || die "missing tool: $t (apt-get install -y --no-install-recommends valgrind nghttp2-client nginx-light curl)"
done
if ((HAPROXY)) && ! command -v haproxy >/dev/null; then
  log "haproxy not installed: strait only"
  HAPROXY=0
fi
OUT=${OUT:-/tmp/bench-results/instructions-$(date +%Y%m%d-%H%M%S)}
WORK=$OUT/work
mkdir -p "$WORK"

PIDS=()
cleanup() { kill_pids "${PIDS[@]}"; }
trap cleanup EXIT
ports_free 18081 18082 18160 || exit 1

nginx_conf "$WORK" >"$WORK/nginx.conf"
nginx -p "$WORK/" -e stderr -c "$WORK/nginx.conf" >"$OUT/nginx.log" 2>&1 &
PIDS+=($!)

# strait's config, as the load benchmark runs it (the script validates it
# with the binary and then execs it; /bin/true stands in for the exec).
BENCH_LISTEN=127.0.0.1:18160 BENCH_BACKENDS=127.0.0.1:18081,127.0.0.1:18082 BENCH_WORK=$WORK \
  "$HERE/strait-bench-proxy.sh" /bin/true >/dev/null 2>&1 || true
[[ -s $WORK/strait/strait.yaml ]] || die "strait-bench-proxy.sh wrote no config"
"$BIN" proxy --check-config "$WORK/strait/strait.yaml" >/dev/null || die "the bench config does not load"
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe_h1
    bind 127.0.0.1:18160
    default_backend be
backend be
    balance roundrobin
    http-reuse safe
    server s1 127.0.0.1:18081
    server s2 127.0.0.1:18082
EOF

# measure NAME STOP-SIGNAL COMMAND...: callgrind runs of N1 and N2 requests;
# prints "NAME instructions per request".
measure() {
  local name=$1 sig=$2 n pid i ir=()
  shift 2
  for n in "$N1" "$N2"; do
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$name.$n.out" "$@" \
      >"$OUT/$name.$n.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for ((i = 0; i < 300; i++)); do
      curl -s -m 2 -o /dev/null http://127.0.0.1:18160/ && break
      kill -0 "$pid" 2>/dev/null || die "$name exited (see $OUT/$name.$n.log)"
      sleep 0.2
    done
    timeout 600 h2load --h1 -n "$n" -c 50 -m 1 http://127.0.0.1:18160/ >"$OUT/h2load.$name.$n.txt" 2>&1 ||
      die "h2load failed against $name (see $OUT/h2load.$name.$n.txt)"
    grep -q "$n succeeded" "$OUT/h2load.$name.$n.txt" || die "not every request succeeded against $name"
    kill "-$sig" "$pid" 2>/dev/null || true
    # Bounded: callgrind writes its output as the process exits.
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    ir+=("$(awk '/^summary:/ {print $2; exit}' "$OUT/callgrind.$name.$n.out")")
  done
  [[ -n ${ir[0]} && -n ${ir[1]} ]] || die "no callgrind summary for $name"
  echo "$name $(((ir[1] - ir[0]) / (N2 - N1))) instructions per request" | tee -a "$OUT/summary.txt"
}

: >"$OUT/summary.txt"
log "strait ($BIN) under callgrind, $N1 and $N2 requests"
measure strait TERM "$BIN" proxy --config "$WORK/strait/strait.yaml"
if ((HAPROXY)); then
  log "haproxy under callgrind"
  # SIGUSR1: haproxy's soft stop, so it exits and callgrind writes its data.
  measure haproxy USR1 haproxy -db -f "$WORK/haproxy.cfg"
fi
log "results in $OUT (callgrind_annotate $OUT/callgrind.strait.$N2.out for where they go)"
