#!/usr/bin/env bash
# benches/strait-bench-2hop.sh - run a plaintext two-proxy path as the "proxy
# under test" for shared/bench/l7.sh (called by benches/mtls.sh; usable
# alone with the same variables): the mesh path of strait-bench-mtls.sh
# with the TLS taken out, so the two can be compared hop for hop.
#
# Usage: strait-bench-2hop.sh STRAIT_BINARY
#
#   load generator --HTTP/1.1 or h2c--> client proxy (Service VIP listener)
#     --HTTP/1.1 or h2c--> server proxy (Service VIP listener)
#     --HTTP/1.1 or h2c--> nginx backend
#
# Each proxy does a whole proxy's work per request (parse, route, balance,
# record, re-encode), as the client and server sides of the mTLS path do;
# what the mTLS path adds on top is TLS 1.3 and HTTP/2 framing on the hop
# between them.
#
# Reads the variables l7.sh exports:
#   BENCH_LISTEN     HTTP/1.1 listen address of the client proxy, 127.x.y.z:PORT
#   BENCH_BACKENDS   comma-separated HTTP/1.1 backend addresses
#   BENCH_H2_LISTEN  optional h2c listen address; must differ from BENCH_LISTEN
#   BENCH_WORK       scratch dir (default /tmp/bench-work)
# and of its own (defaults in brackets):
#   BENCH_H2_BACKENDS     h2c backends for BENCH_H2_LISTEN [127.0.0.1:18083]
#   BENCH_2HOP_SERVER     the server proxy's HTTP/1.1 VIP [127.0.0.1:18150];
#                         its h2c VIP is the next port
#   BENCH_2HOP_ADMIN      the server proxy's admin address, polled for /ready
#                         before the client starts [127.0.0.1:18152]
#
# Configs under $BENCH_WORK/strait-2hop/ (both checked with --check-config):
#   server.yaml  Services `bench` on BENCH_2HOP_SERVER and `bench-h2` on the
#                next port, one EndpointSlice per backend
#   client.yaml  Services `bench` on BENCH_LISTEN and `bench-h2` on
#                BENCH_H2_LISTEN whose endpoints are the server proxy's VIPs
# Both: VIP listeners, no transparent listener, log level warn, access log
# off, runtime.workerThreads 1, drainGracePeriod 2s.
#
# Processes: as strait-bench-mtls.sh. This script does not exec: it starts
# the server proxy, waits (at most 5 s) for its /ready, starts the client
# proxy, and waits. TERM/INT/EXIT stop exactly those two PIDs (TERM, then
# KILL after 4 s); if either exits, the other is stopped. Both are children
# of the PID l7.sh records, so its CPU and RSS columns are their sum (plus
# this bash asleep in `wait`), on the one proxy core.
set -euo pipefail
me=strait-bench-2hop.sh
say() { printf '%s: %s\n' "$me" "$*" >&2; }
fail() { say "ERROR: $*"; exit 1; }
# shellcheck source=bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

bin=${1:?usage: strait-bench-2hop.sh STRAIT_BINARY}
[[ -x $bin ]] || fail "$bin is not an executable"
: "${BENCH_LISTEN:?set by l7.sh}" "${BENCH_BACKENDS:?set by l7.sh}"
h2_listen=${BENCH_H2_LISTEN:-}
h2_backends=${BENCH_H2_BACKENDS:-127.0.0.1:18083}
server_h1=${BENCH_2HOP_SERVER:-127.0.0.1:18150}
server_admin=${BENCH_2HOP_ADMIN:-127.0.0.1:18152}
[[ $h2_listen != "$BENCH_LISTEN" ]] ||
  fail "BENCH_H2_LISTEN must differ from BENCH_LISTEN (see strait-bench-proxy.sh)"

check_addr "server proxy VIP (BENCH_2HOP_SERVER)" "$server_h1"
check_addr "server admin (BENCH_2HOP_ADMIN)" "$server_admin"
server_h2=${server_h1%:*}:$((${server_h1##*:} + 1))
for a in "$server_h1" "$server_h2" "$server_admin"; do
  if ss -Hltn "( sport = :${a##*:} )" 2>/dev/null | grep -q .; then
    fail "port ${a##*:} (for $a) is already in use"
  fi
done

# config ROLE ADMIN H1 H1_BACKENDS H2 H2_BACKENDS
config() {
  cat <<EOF
# Written by benches/strait-bench-2hop.sh for shared/bench/l7.sh: the $1 proxy.
node: { cluster: cluster-1 }
listeners: { admin: "$2", outbound: null, serviceVips: true }
runtime: { workerThreads: 1, drainGracePeriod: 2s }
log: { level: warn, accessLog: false }
mesh:
EOF
  service bench "$3" "$4"
  [[ -z $5 ]] || service bench-h2 "$5" "$6"
}

work=${BENCH_WORK:-/tmp/bench-work}/strait-2hop
mkdir -p "$work"
server_cfg=$work/server.yaml client_cfg=$work/client.yaml
config server "$server_admin" "$server_h1" "$BENCH_BACKENDS" "${h2_listen:+$server_h2}" "$h2_backends" >"$server_cfg"
config client 127.0.0.1:0 "$BENCH_LISTEN" "$server_h1" "$h2_listen" "$server_h2" >"$client_cfg"
"$bin" proxy --check-config "$server_cfg" >&2
"$bin" proxy --check-config "$client_cfg" >&2

server_pid="" client_pid=""
stop() {
  trap - TERM INT EXIT
  # Client first: it closes its connections to the server proxy.
  stop_pids $client_pid $server_pid
}
trap 'stop; exit 143' TERM
trap 'stop; exit 130' INT
trap 'rc=$?; stop; exit $rc' EXIT

"$bin" proxy --config "$server_cfg" &
server_pid=$!
ready=""
for ((i = 0; i < 50; i++)); do
  alive "$server_pid" || fail "the server proxy (pid $server_pid) exited before it was ready"
  ready=$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://$server_admin/ready" 2>/dev/null) || true
  [[ $ready == 200 ]] && break
  sleep 0.1
done
[[ $ready == 200 ]] || fail "the server proxy (pid $server_pid) was not ready within 5 s (last /ready: '${ready:-no answer}')"

"$bin" proxy --config "$client_cfg" &
client_pid=$!
say "server proxy pid $server_pid ($server_h1${h2_listen:+, $server_h2} -> backends);" \
  "client proxy pid $client_pid ($BENCH_LISTEN${h2_listen:+, $h2_listen} -> $server_h1)"

rc=0
wait -n "$server_pid" "$client_pid" || rc=$?
for p in $server_pid $client_pid; do alive "$p" || say "proxy pid $p exited (status of the first: $rc)"; done
exit "$rc"
