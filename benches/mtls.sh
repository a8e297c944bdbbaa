#!/usr/bin/env bash
# benches/mtls.sh - loopback load benchmark of strait's mesh mTLS path beside
# plaintext proxying and the bare backend ("direct"), in ONE run of the
# shared harness (shared/bench/l7.sh), so machine noise hits all three alike.
#
# What it does:
#   1. builds `strait` in release (thin LTO, line-tables debug info) into
#      --target-dir [/work/target-bench], unless --bin PATH is given;
#   2. runs shared/bench/l7.sh (found at $(dirname $0)/../../shared/bench/l7.sh)
#      with two proxy entries, each pinned alone to the proxy core (1):
#        strait       benches/strait-bench-proxy.sh: one strait, plaintext,
#                     exactly as benches/load.sh runs it (h1 on --strait-listen,
#                     h2c -> h2c on --strait-h2-listen)
#        strait-mtls  benches/strait-bench-mtls.sh: TWO strait processes, a
#                     client proxy (the same Services on --mtls-listen /
#                     --mtls-h2-listen) that reaches every endpoint over TLS 1.3
#                     + HTTP/2 with mutual authentication (SPIFFE certificates
#                     from `strait certs`, client and server from different
#                     cluster intermediates), and a server proxy that
#                     terminates it on 127.0.0.1:18140 and forwards to the
#                     backend in the protocol the app spoke (HTTP/1.1 or h2c).
#                     Both are children of the wrapper, so the CPU and RSS
#                     columns of this entry are the sum of both proxies on the
#                     one proxy core: what a request pays in a mesh (a proxy on
#                     each side). The plaintext entry is one proxy.
#        strait-2hop  benches/strait-bench-2hop.sh: the same two-proxy path
#                     in plaintext (client proxy -> HTTP/1.1 or h2c -> server
#                     proxy -> backend), both processes on the proxy core: the
#                     mTLS path with TLS and the HTTP/2 mesh hop taken out
#                     (--no-2hop leaves it out)
#   3. prints l7.sh's Markdown tables, then the ratio the mTLS path is held
#      to (target <= 1.5): p99 at 1000 req/s of strait-mtls over the
#      plaintext path, against both plaintext entries (the same two hops, and
#      one proxy), for HTTP/1.1 and h2c, from the run's medians.tsv; appended
#      to summary.md;
#   4. then measures that ratio again with benches/mesh-p99.sh (into
#      OUT/interleaved/): the same four targets, all up at once, in ROUNDS
#      interleaved SLICE-second runs at 1000 req/s, percentiles over the
#      pooled requests. Step 2 runs each target for 10 s in turn, so a burst
#      of host noise (this VM's bare-backend p99 drifts between 300 and
#      1,300 µs from minute to minute) lands on one target and moves the
#      ratio by 0.3 or more between otherwise equal runs; interleaving spreads
#      it over all targets. Both tables are printed; the interleaved one is
#      the one the target is judged on (--no-interleaved skips step 4).
#
# Usage:
#   benches/mtls.sh [--bin PATH] [--target-dir DIR] [--out DIR]
#                   [--strait-listen ADDR] [--strait-h2-listen ADDR]
#                   [--mtls-listen ADDR] [--mtls-h2-listen ADDR]
#                   [any l7.sh option: --reps N --duration S --conns N
#                    --rates "R:C ..." --h2-conns N --h2-streams N --body-bytes N
#                    --proxy-cpu L --load-cpu L --backend-cpu L --no-h2]
#
# Options (defaults in brackets):
#   --bin PATH              use this strait binary; skip the build
#   --target-dir DIR [/work/target-bench]  CARGO_TARGET_DIR of the release build
#                           (kept apart from the shared debug target)
#   --out DIR [/tmp/bench-results/strait-mtls-<timestamp>]  l7.sh output directory
#   --strait-listen ADDR [127.0.0.1:18130]  --strait-h2-listen ADDR [127.0.0.1:18131]
#   --mtls-listen ADDR [127.0.0.1:18132]    --mtls-h2-listen ADDR [127.0.0.1:18133]
#   --2hop-listen ADDR [127.0.0.1:18134]    --2hop-h2-listen ADDR [127.0.0.1:18135]
#   --no-2hop               leave the plaintext two-proxy entry out (and step 4)
#   --no-interleaved        skip step 4
#   --rounds N [10]  --slice S [3]  step 4's rounds and seconds per slice
#   --reps N [3]  --duration S [10]  --rates "R:C ..." [1000:10]
#                           everything else is passed to l7.sh unchanged
#   The mTLS wrapper also uses 127.0.0.1:18140 (server proxy's mesh listener,
#   = inbound.meshPort), :18141 (client proxy's own mesh listener) and :18142
#   (server proxy's admin); override with BENCH_MTLS_MESH_PORT,
#   BENCH_MTLS_CLIENT_MESH, BENCH_MTLS_SERVER_ADMIN (see strait-bench-mtls.sh).
#
# Time: about 45 s per target (direct, strait, strait-mtls, strait-2hop) per
# repetition with the default 10 s runs and one rate, so about 3 min per
# repetition and 9-10 min for 3 reps, plus about 5.5 min for step 4, plus the
# build; `--reps 1 --duration 3 --rounds 2 --slice 1` is a 2.5 min smoke test.
# Step 4 uses the default ports of mesh-p99.sh (127.0.0.1:18081-18083,
# 18130-18135, 18140-18142, 18150-18152) whatever the --*-listen options say.
#
# Needs (Debian 12): apt-get install -y --no-install-recommends wrk \
#   nghttp2-client nginx-light curl procps iproute2 util-linux coreutils
# and a Rust toolchain (cargo) unless --bin is given. 2+ CPUs. Loopback only:
# every address is on 127.0.0.0/8; l7.sh stops what it starts by PID, and the
# mTLS wrapper stops its two proxies by PID.
#
# Examples:
#   benches/mtls.sh                                   # 3 reps x 10 s at 1000 req/s
#   benches/mtls.sh --reps 1 --duration 3             # smoke test
#   benches/mtls.sh --bin /work/target-bench/release/strait --rates "1000:10 5000:50"
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

log() { printf '[%s] mtls.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

# ----------------------------------------------------------------- options
ORIG_ARGS=("$@")
BIN="" TARGET_DIR=/work/target-bench OUT="" BUILT=0
STRAIT_LISTEN=127.0.0.1:18130 STRAIT_H2_LISTEN=127.0.0.1:18131
MTLS_LISTEN=127.0.0.1:18132 MTLS_H2_LISTEN=127.0.0.1:18133
TWOHOP_LISTEN=127.0.0.1:18134 TWOHOP_H2_LISTEN=127.0.0.1:18135 TWOHOP=1
INTERLEAVED=1 ROUNDS=10 SLICE=3
declare -a PASS=()
HAVE_REPS=0 HAVE_DURATION=0 HAVE_RATES=0 RATES="1000:10"
need_arg() { (($# >= 2)) || die "$1 needs a value"; }
while (($#)); do
  case $1 in
    --bin) need_arg "$@"; BIN=$2; shift 2 ;;
    --target-dir) need_arg "$@"; TARGET_DIR=$2; shift 2 ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    --strait-listen) need_arg "$@"; STRAIT_LISTEN=$2; shift 2 ;;
    --strait-h2-listen) need_arg "$@"; STRAIT_H2_LISTEN=$2; shift 2 ;;
    --mtls-listen) need_arg "$@"; MTLS_LISTEN=$2; shift 2 ;;
    --mtls-h2-listen) need_arg "$@"; MTLS_H2_LISTEN=$2; shift 2 ;;
    --2hop-listen) need_arg "$@"; TWOHOP_LISTEN=$2; shift 2 ;;
    --2hop-h2-listen) need_arg "$@"; TWOHOP_H2_LISTEN=$2; shift 2 ;;
    --no-2hop) TWOHOP=0; shift ;;
    --no-interleaved) INTERLEAVED=0; shift ;;
    --rounds) need_arg "$@"; ROUNDS=$2; shift 2 ;;
    --slice) need_arg "$@"; SLICE=$2; shift 2 ;;
    --no-h2) PASS+=("$1"); shift ;;
    --reps) need_arg "$@"; HAVE_REPS=1; PASS+=("$1" "$2"); shift 2 ;;
    --duration) need_arg "$@"; HAVE_DURATION=1; PASS+=("$1" "$2"); shift 2 ;;
    --rates) need_arg "$@"; HAVE_RATES=1; RATES=$2; PASS+=("$1" "$2"); shift 2 ;;
    --conns | --h2-conns | --h2-streams | --body-bytes | \
      --proxy-cpu | --load-cpu | --backend-cpu)
      need_arg "$@"; PASS+=("$1" "$2"); shift 2 ;;
    --proxy | --listen | --h2-listen | --name)
      die "$1 is set by mtls.sh (strait, strait-mtls, strait-2hop); run shared/bench/l7.sh directly for other proxies" ;;
    -h | --help) usage 0 ;;
    *) log "unknown option: $1"; usage 1 ;;
  esac
done
((HAVE_REPS)) || PASS+=(--reps 3)
((HAVE_DURATION)) || PASS+=(--duration 10)
((HAVE_RATES)) || PASS+=(--rates "$RATES")

# ----------------------------------------------------------- prerequisites
L7=$HERE/../../shared/bench/l7.sh
[[ -x $L7 ]] || die "the shared harness is missing: expected $L7 (a checkout of shared/bench beside the repository)"
L7=$(cd "$(dirname "$L7")" && pwd)/l7.sh
PLAIN=$HERE/strait-bench-proxy.sh
MTLS=$HERE/strait-bench-mtls.sh
TWOHOP_WRAPPER=$HERE/strait-bench-2hop.sh
INTERLEAVE=$HERE/mesh-p99.sh
for w in "$PLAIN" "$MTLS" "$TWOHOP_WRAPPER" "$INTERLEAVE"; do [[ -x $w ]] || die "missing or not executable: $w"; done

missing=()
for t in wrk h2load nginx curl taskset ss ps timeout find; do command -v "$t" >/dev/null || missing+=("$t"); done
if ((${#missing[@]})); then
  die "missing tools: ${missing[*]}
  install (Debian 12): apt-get install -y --no-install-recommends wrk nghttp2-client nginx-light curl procps iproute2 util-linux coreutils"
fi

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
"$BIN" certs --help >/dev/null 2>&1 || die "$BIN has no 'certs' command (built before mesh mTLS?)"

# --------------------------------------------------------------------- run
OUT=${OUT:-/tmp/bench-results/strait-mtls-$(date +%Y%m%d-%H%M%S)}
declare -a PROXIES=(
  --proxy "$(printf '%q %q' "$PLAIN" "$BIN")"
  --listen "$STRAIT_LISTEN" --h2-listen "$STRAIT_H2_LISTEN" --name strait
  --proxy "$(printf '%q %q' "$MTLS" "$BIN")"
  --listen "$MTLS_LISTEN" --h2-listen "$MTLS_H2_LISTEN" --name strait-mtls
)
if ((TWOHOP)); then
  PROXIES+=(
    --proxy "$(printf '%q %q' "$TWOHOP_WRAPPER" "$BIN")"
    --listen "$TWOHOP_LISTEN" --h2-listen "$TWOHOP_H2_LISTEN" --name strait-2hop
  )
fi
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
  echo "note: strait-mtls is two strait processes (client and server proxy, plus the wrapper bash asleep in 'wait') on the one proxy core; its CPU and RSS are their sum, what a request pays in a mesh. strait is one proxy, plaintext. strait-2hop is the two-proxy path in plaintext, counted like strait-mtls."
} >>"$OUT/env.txt"

# ------------------------------------------------- mTLS vs plaintext at 1000
# medians.tsv: target metric median min max n (written by l7.sh).
ratio_report() {
  local med=$OUT/medians.tsv
  echo
  echo "### mTLS vs plaintext: p99 at 1000 req/s, sequential runs (l7.sh medians)"
  echo
  if [[ ! -s $med ]] || ! grep -q $'\th1_at1000_p99_us\t' "$med"; then
    echo "No 1000 req/s rate in this run (--rates '$RATES'): compare the h1@R/h2@R rows of strait and strait-mtls in $OUT/summary.md."
    return 0
  fi
  echo "| protocol | plaintext path | plaintext p99 us | strait-mtls p99 us | mtls / plaintext | +p99 us | within 1.5 |"
  echo "|---|---|---|---|---|---|---|"
  awk -F'\t' '
    { M[$1 SUBSEP $2] = $3 }
    END {
      split("h1 h2", P, " ")
      split("strait-2hop strait", T, " ")
      for (i = 1; i <= 2; i++) {
        k = P[i] "_at1000_p99_us"
        proto = (P[i] == "h1") ? "HTTP/1.1" : "h2c"
        for (j = 1; j <= 2; j++) {
          if (!((T[j] SUBSEP k) in M)) continue
          path = (T[j] == "strait") ? "one proxy (strait)" : "same two hops (strait-2hop)"
          a = M[T[j] SUBSEP k]; b = M["strait-mtls" SUBSEP k]
          if (a == "" || b == "" || a + 0 == 0) { printf "| %s | %s | %s | %s | - | - | - |\n", proto, path, a, b; continue }
          r = b / a
          printf "| %s | %s | %.0f | %.0f | %.2f | %+.0f | %s |\n", proto, path, a, b, r, b - a, (r <= 1.5) ? "yes" : "NO"
        }
      }
    }' "$med"
  echo
  echo "strait-mtls = client proxy + server proxy (two strait processes) on the one proxy core;"
  echo "its CPU and RSS columns above are the sum of both: what a request pays in a mesh."
  echo "strait-2hop = the same two proxies in plaintext (HTTP/1.1 or h2c between them), counted alike."
}
ratio_report | tee -a "$OUT/summary.md"

# ------------------------------------------- the same ratio, interleaved
if ((INTERLEAVED && TWOHOP)); then
  log "step 4: interleaved latency at 1000 req/s ($ROUNDS rounds x ${SLICE}s per target and protocol)"
  "$INTERLEAVE" --bin "$BIN" --rounds "$ROUNDS" --slice "$SLICE" --rate 1000 --conns 10 \
    --out "$OUT/interleaved" >"$OUT/interleaved.log" 2>&1 ||
    die "mesh-p99.sh failed (exit $?); see $OUT/interleaved.log"
  {
    echo
    echo "### mTLS vs plaintext: p99 at 1000 req/s, interleaved (benches/mesh-p99.sh; target: ratio <= 1.5)"
    echo
    echo "All four targets up at once, $ROUNDS rounds of one ${SLICE}s slice each (rotating order);"
    echo "percentiles over the pooled requests of each target. This is the table the target is judged on."
    sed -n '/^###/,$p' "$OUT/interleaved/summary.md" | sed 's/^### /#### /'
  } | tee -a "$OUT/summary.md"
fi
log "results: $OUT/summary.md (tables and the ratio), $OUT/medians.tsv, $OUT/raw.tsv, logs in $OUT/logs/,"
log "  machine load during the run: $OUT/loadavg.log (1/5/15-min load average, runnable/total)"
log "re-print the l7.sh tables: $(dirname "$L7")/summarize.sh $OUT"
