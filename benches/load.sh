#!/usr/bin/env bash
# benches/load.sh - loopback load benchmark: strait beside haproxy and the
# bare backend ("direct"), in ONE run of the shared harness
# (shared/bench/l7.sh), so machine noise hits all three alike.
#
# What it does:
#   1. builds `strait` in release (thin LTO, line-tables debug info) into
#      --target-dir [/work/target-bench], unless --bin PATH is given;
#   2. runs shared/bench/l7.sh (found at $(dirname $0)/../../shared/bench/l7.sh)
#      with two proxies, each pinned alone to the proxy core (1):
#        strait   benches/strait-bench-proxy.sh writes its config from the
#                 BENCH_* variables and execs strait (so the PID is strait's):
#                 a Service on --strait-listen with one EndpointSlice per
#                 HTTP/1.1 backend, protocol detected; metrics on,
#                 runtime.workerThreads 1 (current_thread). h2c goes to a
#                 second Service on --strait-h2-listen whose endpoint is the
#                 backend's h2c port (127.0.0.1:18083): strait forwards in the
#                 protocol a request arrived in, so its h2 runs are h2c->h2c,
#                 while haproxy's are h2c->HTTP/1.1
#        haproxy  shared/bench/proxies/haproxy.sh (1 thread, round robin,
#                 HTTP/1.1 and h2c on one port)
#   3. prints l7.sh's Markdown tables and where the results are.
#
# Usage:
#   benches/load.sh [--bin PATH] [--target-dir DIR] [--out DIR]
#                   [--strait-listen ADDR] [--strait-h2-listen ADDR]
#                   [--haproxy-listen ADDR] [--no-haproxy]
#                   [any l7.sh option: --reps N --duration S --conns N
#                    --rates "R:C ..." --h2-conns N --h2-streams N --body-bytes N
#                    --proxy-cpu L --load-cpu L --backend-cpu L --no-h2]
#
# Options (defaults in brackets):
#   --bin PATH              use this strait binary; skip the build
#   --target-dir DIR [/work/target-bench]  CARGO_TARGET_DIR of the release build
#                           (kept apart from the shared debug target)
#   --out DIR [/tmp/bench-results/strait-<timestamp>]  l7.sh output directory
#   --strait-listen ADDR [127.0.0.1:18120]  --strait-h2-listen ADDR [127.0.0.1:18121]
#   --haproxy-listen ADDR [127.0.0.1:18100]
#   --no-haproxy            strait and direct only
#   --reps N [3]            everything else is passed to l7.sh unchanged
#
# Time: about 4 min per repetition with the default 10 s runs (about 12-15 min
# for 3 reps, plus the build); `--reps 1 --duration 3` is a 1.5 min smoke test.
#
# Needs (Debian 12): apt-get install -y --no-install-recommends wrk \
#   nghttp2-client haproxy nginx-light curl procps iproute2 util-linux coreutils
# and a Rust toolchain (cargo) unless --bin is given. 2+ CPUs. Loopback only:
# every address is on 127.0.0.0/8; l7.sh stops what it starts by PID.
#
# Examples:
#   benches/load.sh                                   # 3 reps x 10 s
#   benches/load.sh --reps 1 --duration 3             # smoke test
#   benches/load.sh --bin /work/target-bench/release/strait --no-h2
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

log() { printf '[%s] load.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

# ----------------------------------------------------------------- options
ORIG_ARGS=("$@")
BIN="" TARGET_DIR=/work/target-bench OUT="" NO_HAPROXY=0 BUILT=0
STRAIT_LISTEN=127.0.0.1:18120 STRAIT_H2_LISTEN=127.0.0.1:18121 HAPROXY_LISTEN=127.0.0.1:18100
declare -a PASS=()
HAVE_REPS=0
need_arg() { (($# >= 2)) || die "$1 needs a value"; }
while (($#)); do
  case $1 in
    --bin) need_arg "$@"; BIN=$2; shift 2 ;;
    --target-dir) need_arg "$@"; TARGET_DIR=$2; shift 2 ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    --strait-listen) need_arg "$@"; STRAIT_LISTEN=$2; shift 2 ;;
    --strait-h2-listen) need_arg "$@"; STRAIT_H2_LISTEN=$2; shift 2 ;;
    --haproxy-listen) need_arg "$@"; HAPROXY_LISTEN=$2; shift 2 ;;
    --no-haproxy) NO_HAPROXY=1; shift ;;
    --no-h2) PASS+=("$1"); shift ;;
    --reps) need_arg "$@"; HAVE_REPS=1; PASS+=("$1" "$2"); shift 2 ;;
    --duration | --conns | --rates | --h2-conns | --h2-streams | --body-bytes | \
      --proxy-cpu | --load-cpu | --backend-cpu)
      need_arg "$@"; PASS+=("$1" "$2"); shift 2 ;;
    --proxy | --listen | --h2-listen | --name)
      die "$1 is set by load.sh (strait and haproxy); run shared/bench/l7.sh directly for other proxies" ;;
    -h | --help) usage 0 ;;
    *) log "unknown option: $1"; usage 1 ;;
  esac
done
((HAVE_REPS)) || PASS+=(--reps 3)

# ----------------------------------------------------------- prerequisites
L7=$HERE/../../shared/bench/l7.sh
[[ -x $L7 ]] || die "the shared harness is missing: expected $L7 (a checkout of shared/bench beside the repository)"
L7=$(cd "$(dirname "$L7")" && pwd)/l7.sh
HAPROXY_PRESET=$(dirname "$L7")/proxies/haproxy.sh
WRAPPER=$HERE/strait-bench-proxy.sh
[[ -x $WRAPPER ]] || die "missing or not executable: $WRAPPER"

missing=()
tools=(wrk h2load nginx curl taskset ss ps timeout)
((NO_HAPROXY)) || tools+=(haproxy)
for t in "${tools[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
if ((${#missing[@]})); then
  die "missing tools: ${missing[*]}
  install (Debian 12): apt-get install -y --no-install-recommends wrk nghttp2-client haproxy nginx-light curl procps iproute2 util-linux coreutils"
fi
((NO_HAPROXY)) || [[ -x $HAPROXY_PRESET ]] || die "missing haproxy preset: $HAPROXY_PRESET"

# ------------------------------------------------------------------- build
# What is measured: the commit, and whether the tree differed from it when built.
REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || REV+=" + uncommitted changes in src/Cargo.*"
if [[ -z $BIN ]]; then
  command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain or pass --bin PATH"
  log "building strait (release, thin LTO) into $TARGET_DIR"
  (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --bin strait) \
    || die "cargo build failed"
  BIN=$TARGET_DIR/release/strait
  BUILT=1
fi
[[ -x $BIN ]] || die "strait binary not found or not executable: $BIN"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

# --------------------------------------------------------------------- run
OUT=${OUT:-/tmp/bench-results/strait-$(date +%Y%m%d-%H%M%S)}
declare -a PROXIES=(
  --proxy "$(printf '%q %q' "$WRAPPER" "$BIN")"
  --listen "$STRAIT_LISTEN" --h2-listen "$STRAIT_H2_LISTEN" --name strait
)
((NO_HAPROXY)) || PROXIES+=(
  --proxy "$(printf '%q' "$HAPROXY_PRESET")"
  --listen "$HAPROXY_LISTEN" --h2-listen "$HAPROXY_LISTEN" --name haproxy
)
log "binary: $BIN ($(stat -c %s "$BIN") bytes), tree at $REV"
log "harness: $L7 ${PASS[*]} --out $OUT"
# The machine may be shared: sample the load average every 10 s while the
# harness runs (the benchmark itself accounts for about 2-3), so a noisy run
# can be recognised afterwards. Bounded (2 h) and stopped by PID.
mkdir -p "$OUT"
(for ((i = 0; i < 720; i++)); do
  echo "$(date +%H:%M:%S) $(cut -d' ' -f1-4 /proc/loadavg)"; sleep 10
done) >"$OUT/loadavg.log" 2>/dev/null &
SAMPLER=$!
trap 'kill "$SAMPLER" 2>/dev/null || true' EXIT
rc=0
"$L7" "${PASS[@]}" --out "$OUT" "${PROXIES[@]}" || rc=$?
kill "$SAMPLER" 2>/dev/null || true
((rc == 0)) || die "l7.sh failed (exit $rc); logs in $OUT/logs/"

{
  if [[ $BUILT == 1 ]]; then echo "strait: $BIN, built from $REV"; else echo "strait: $BIN (given with --bin; tree at $REV)"; fi
  echo "command: $0 ${ORIG_ARGS[*]}"
} >>"$OUT/env.txt"
log "results: $OUT/summary.md (tables), $OUT/medians.tsv, $OUT/raw.tsv, logs in $OUT/logs/,"
log "  machine load during the run: $OUT/loadavg.log (1/5/15-min load average, runnable/total)"
log "re-print the tables: $(dirname "$L7")/summarize.sh $OUT"
