#!/usr/bin/env bash
# benches/profile.sh - CPU profile of strait under HTTP/1.1 keep-alive load,
# laid out like shared/bench/l7.sh: strait alone on CPU 1, wrk and the nginx
# backend on CPU 0, loopback only.
#
# Steps: start nginx (1 worker, `return 200` 64 B on 127.0.0.1:18081/18082),
# start strait through benches/strait-bench-proxy.sh on 127.0.0.1:18120,
# warm up 1 s, run `wrk -t1 -c50 -d10s`, and 1 s into it
# `perf record -e cpu-clock -g -p STRAIT_PID -- sleep 8`. Then writes perf
# reports and a breakdown of samples by where they land (kernel, strait,
# hyper, h2, tokio, prometheus, allocator, ...) into --out.
# Last, the same wrk load once more for strait and then for haproxy
# (shared/bench/proxies/haproxy.sh, if haproxy is installed), counting each
# one's system calls by type with `perf stat -e syscalls:sys_enter_*` over
# 8 s: syscalls per request, side by side (syscalls.txt).
#
# Usage: benches/profile.sh [--bin PATH] [--out DIR] [--dwarf]
#   --bin PATH   strait binary [/work/target-bench/release/strait; built if missing]
#   --out DIR    [/tmp/bench-results/profile-<timestamp>]
#   --dwarf      also record with --call-graph dwarf (callers of inlined code;
#                larger, slower to report)
#
# Needs (Debian 12): apt-get install -y --no-install-recommends linux-perf wrk
#   nginx-light curl util-linux procps [haproxy]; perf_event_paranoid <= 1 or
#   root (tracepoints for the syscall counts need root or paranoid -1).
# Hardware counters are not available on these VMs, hence -e cpu-clock.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
log() { printf '[%s] profile.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
me=profile.sh
# shellcheck source=bench-lib.sh
source "$HERE/bench-lib.sh"

BIN=/work/target-bench/release/strait OUT="" DWARF=0
while (($#)); do
  case $1 in
    --bin) BIN=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --dwarf) DWARF=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option: $1" ;;
  esac
done
for t in perf wrk nginx curl taskset timeout; do
  command -v "$t" >/dev/null || die "missing tool: $t (apt-get install -y --no-install-recommends linux-perf wrk nginx-light curl util-linux coreutils)"
done
if [[ ! -x $BIN ]]; then
  log "building $BIN"
  (cd "$REPO" && CARGO_TARGET_DIR=/work/target-bench cargo build --release --bin strait) || die "build failed"
fi
OUT=${OUT:-/tmp/bench-results/profile-$(date +%Y%m%d-%H%M%S)}
WORK=$OUT/work
mkdir -p "$WORK"

PIDS=()
cleanup() {
  local p
  kill_pids "${PIDS[@]}"
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
ports_free 18081 18082 18100 18120 || exit 1

nginx_conf "$WORK" >"$WORK/nginx.conf"
taskset -c 0 nginx -p "$WORK/" -e stderr -c "$WORK/nginx.conf" >"$OUT/nginx.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 18081 || die "nginx did not start (see $OUT/nginx.log)"

BENCH_LISTEN=127.0.0.1:18120 BENCH_BACKENDS=127.0.0.1:18081,127.0.0.1:18082 BENCH_WORK=$WORK \
  taskset -c 1 "$HERE/strait-bench-proxy.sh" "$BIN" >"$OUT/strait.log" 2>&1 &
SPID=$!
PIDS+=("$SPID")
wait_port 127.0.0.1 18120 || die "strait did not listen (see $OUT/strait.log)"
[[ $(curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:18120/) == 200 ]] || die "strait sanity check failed"
log "strait pid $SPID on CPU 1; warming up"
timeout 15 taskset -c 0 wrk -t1 -c50 -d1s http://127.0.0.1:18120/ >/dev/null 2>&1 || true

record() { # NAME PID URL PERF-RECORD-ARGS...
  local name=$1 pid=$2 url=$3; shift 3
  log "wrk -t1 -c50 -d10s $url; perf record $* -p $pid -- sleep 8"
  timeout 40 taskset -c 0 wrk -t1 -c50 -d10s --latency "$url" >"$OUT/wrk-$name.txt" 2>&1 &
  local wpid=$!
  sleep 1
  timeout 30 perf record -o "$OUT/perf-$name.data" "$@" -p "$pid" -- sleep 8 2>"$OUT/perf-record-$name.log" || true
  wait "$wpid" || true
  grep -E 'Requests/sec|Latency ' "$OUT/wrk-$name.txt" >&2 || true
}
record fp "$SPID" http://127.0.0.1:18120/ -e cpu-clock -g
((DWARF == 0)) || record dwarf "$SPID" http://127.0.0.1:18120/ -e cpu-clock --call-graph dwarf,16384

# syscalls NAME PID URL: system calls of PID by type over 8 s of wrk load,
# per request (requests = wrk's req/s x 8 s; the run is steady by then).
EVENTS=(read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait
  epoll_ctl futex accept4 close)
syscalls() {
  local name=$1 pid=$2 url=$3 ev="" e
  for e in "${EVENTS[@]}"; do ev+="syscalls:sys_enter_$e,"; done
  ev+="raw_syscalls:sys_enter"
  timeout 15 taskset -c 0 wrk -t1 -c50 -d1s "$url" >/dev/null 2>&1 || true
  timeout 40 taskset -c 0 wrk -t1 -c50 -d10s "$url" >"$OUT/wrk-syscalls-$name.txt" 2>&1 &
  local wpid=$!
  sleep 1
  timeout 30 perf stat -x, -e "$ev" -p "$pid" -o "$OUT/perf-stat-$name.csv" -- sleep 8 2>/dev/null || true
  wait "$wpid" || true
  local rps
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$OUT/wrk-syscalls-$name.txt")
  awk -F, -v name="$name" -v rps="${rps:-0}" '
    $3 ~ /sys_enter/ && rps > 0 {
      ev = $3; sub(/.*sys_enter_?/, "", ev); if (ev == "") ev = "all syscalls"
      if ($1 + 0 > 0) printf "%-8s %-14s %8.2f per request\n", name, ev, $1 / (rps * 8)
    }
    END { printf "%-8s %-14s %8.0f req/s (wrk, perf attached)\n", name, "throughput", rps }' \
    "$OUT/perf-stat-$name.csv" >>"$OUT/syscalls.txt"
}
: >"$OUT/syscalls.txt"
log "counting strait's system calls"
syscalls strait "$SPID" http://127.0.0.1:18120/
kill "$SPID" 2>/dev/null || true
for ((i = 0; i < 50; i++)); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
HAPROXY_PRESET=$HERE/../../shared/bench/proxies/haproxy.sh
if command -v haproxy >/dev/null && [[ -x $HAPROXY_PRESET ]]; then
  BENCH_LISTEN=127.0.0.1:18100 BENCH_BACKENDS=127.0.0.1:18081,127.0.0.1:18082 BENCH_WORK=$WORK \
    taskset -c 1 "$HAPROXY_PRESET" >"$OUT/haproxy.log" 2>&1 &
  HPID=$!
  PIDS+=("$HPID")
  wait_port 127.0.0.1 18100 || die "haproxy did not listen (see $OUT/haproxy.log)"
  log "counting haproxy's system calls"
  syscalls haproxy "$HPID" http://127.0.0.1:18100/
  # haproxy's own kernel/user split, for comparison with strait's
  record haproxy "$HPID" http://127.0.0.1:18100/ -e cpu-clock
else
  log "haproxy (or shared/bench/proxies/haproxy.sh) not found: strait's syscall counts only"
fi
log "system calls per request:"
cat "$OUT/syscalls.txt" >&2

cleanup
trap - EXIT

log "reports"
perf report -i "$OUT/perf-fp.data" --no-children --sort dso --stdio 2>/dev/null >"$OUT/report-dso.txt"
perf report -i "$OUT/perf-fp.data" --no-children --sort sym --stdio -g none --percent-limit 0.3 2>/dev/null \
  >"$OUT/report-sym.txt"
perf report -i "$OUT/perf-fp.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null >"$OUT/report-all.txt"
if [[ -s $OUT/perf-haproxy.data ]]; then
  perf report -i "$OUT/perf-haproxy.data" --no-children --sort dso --stdio 2>/dev/null >"$OUT/report-haproxy-dso.txt"
  perf report -i "$OUT/perf-haproxy.data" --no-children --sort dso,sym --stdio --percent-limit 0.5 2>/dev/null \
    >"$OUT/report-haproxy-sym.txt"
fi
if ((DWARF)); then
  perf report -i "$OUT/perf-dwarf.data" --children --sort sym --stdio -g none --percent-limit 1 2>/dev/null \
    >"$OUT/report-dwarf-children.txt"
fi

# Self-time by where it lands: kernel ([k]) first, then user symbols by crate.
awk '
  /^#/ || NF < 4 { next }
  {
    pct = $1; sub(/%/, "", pct); pct += 0
    dso = $2; kind = $3
    sym = $0; sub(/^[^]]*\] /, "", sym)
    if (kind == "[k]") c = "kernel"
    else if (sym ~ /prometheus::/) c = "prometheus"
    else if (sym ~ /(^|[^a-z_])h2::/) c = "h2"
    else if (sym ~ /hyper_util::/) c = "hyper-util"
    else if (sym ~ /hyper::/) c = "hyper"
    else if (sym ~ /tokio_util::/) c = "tokio-util"
    else if (sym ~ /tokio::/) c = "tokio"
    else if (sym ~ /tracing/) c = "tracing"
    else if (sym ~ /strait::/) c = "strait"
    else if (sym ~ /(^|[^a-z])(malloc|free|realloc|calloc|cfree)|_int_malloc|_int_free|malloc_consolidate|__rust_(alloc|dealloc|realloc)|alloc::raw_vec/) c = "allocator"
    else if (sym ~ /^(http|bytes|httparse|http_body|http_body_util)::/ || sym ~ /<(http|bytes|httparse)::/) c = "http/bytes/httparse"
    else if (sym ~ /arc_swap::/) c = "arc-swap"
    else if (sym ~ /^(mem(cpy|move|set|cmp)|__mem|__GI_mem|__nptl|pthread_|syscall|__libc|epoll_|__send|__recv|__write|__read|send|recv|write|read|writev|readv)/) c = "libc (syscall wrappers, mem*)"
    else if (dso ~ /libc/) c = "libc (other)"
    else if (sym ~ /^(core|alloc|std)::/ || sym ~ /<(core|alloc|std)::/) c = "std/core"
    else c = "other: " dso
    tot[c] += pct
  }
  END { for (c in tot) printf "%6.2f%%  %s\n", tot[c], c }' "$OUT/report-all.txt" | sort -rn >"$OUT/breakdown.txt"
log "breakdown of samples (self time):"
cat "$OUT/breakdown.txt" >&2
if [[ -s $OUT/report-haproxy-dso.txt ]]; then
  log "haproxy, samples by object:"
  grep -E '^ +[0-9.]+%' "$OUT/report-haproxy-dso.txt" | head -6 >&2
fi
log "results: $OUT/{breakdown,syscalls,report-sym,report-dso,report-all,report-haproxy-*}.txt, perf data $OUT/perf-fp.data"
log "browse: perf report -i $OUT/perf-fp.data --no-children"
