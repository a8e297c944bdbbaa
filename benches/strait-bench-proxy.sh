#!/usr/bin/env bash
# benches/strait-bench-proxy.sh - run strait as the "proxy under test" for
# shared/bench/l7.sh (called by benches/load.sh; usable alone with the same
# variables).
#
# Usage: strait-bench-proxy.sh STRAIT_BINARY
#
# Reads the variables l7.sh exports:
#   BENCH_LISTEN     HTTP/1.1 listen address, 127.x.y.z:PORT (e.g. 127.0.0.1:18120)
#   BENCH_BACKENDS   comma-separated HTTP/1.1 backend addresses (round robin)
#   BENCH_H2_LISTEN  optional h2c (prior knowledge) listen address; must differ
#                    from BENCH_LISTEN (see below)
#   BENCH_WORK       scratch dir (default /tmp/bench-work)
# and one of its own:
#   BENCH_H2_BACKENDS  h2c backends for BENCH_H2_LISTEN [127.0.0.1:18083, the
#                    h2c port of l7.sh's nginx backend, which l7.sh does not export]
#
# Writes $BENCH_WORK/strait/strait.yaml: Service `bench` whose clusterIP and
# port are BENCH_LISTEN (no appProtocol: the protocol is detected per
# connection) with one EndpointSlice per backend; per-service VIP listeners
# on, the transparent outbound listener off, admin on an ephemeral port,
# logging at `warn`, the access log off, metrics on (they always are),
# runtime.workerThreads 1 (a current_thread runtime). Validates it with
# `strait proxy --check-config`, then *execs* strait in the foreground, so
# the PID l7.sh recorded is strait's own.
#
# Why h2c has its own port: strait forwards a request upstream in the
# protocol it arrived in (src/proxy/http.rs), so h2c sent to `bench` would go
# to the HTTP/1.1-only backends as HTTP/2 and fail (502, "http2 error"). With
# BENCH_H2_LISTEN set, a second Service `bench-h2` (also detected) listens
# there and forwards to BENCH_H2_BACKENDS over h2c: h2c in, h2c out. haproxy
# and nginx in l7.sh do h2c in, HTTP/1.1 out, which is not the same work.
set -euo pipefail
bin=${1:?usage: strait-bench-proxy.sh STRAIT_BINARY}
[[ -x $bin ]] || { echo "strait-bench-proxy.sh: $bin is not an executable" >&2; exit 1; }
: "${BENCH_LISTEN:?set by l7.sh}" "${BENCH_BACKENDS:?set by l7.sh}"
h2_listen=${BENCH_H2_LISTEN:-}
if [[ $h2_listen == "$BENCH_LISTEN" ]]; then
  echo "strait-bench-proxy.sh: BENCH_H2_LISTEN must differ from BENCH_LISTEN: strait would" \
    "forward h2c to the HTTP/1.1 backends as HTTP/2 (see the header of this script)" >&2
  exit 1
fi

me=strait-bench-proxy.sh
# shellcheck source=bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

work=${BENCH_WORK:-/tmp/bench-work}/strait
mkdir -p "$work"
cfg=$work/strait.yaml
{
  cat <<EOF
# Written by benches/strait-bench-proxy.sh for shared/bench/l7.sh.
node: { cluster: cluster-1 }
listeners: { admin: "127.0.0.1:0", outbound: null, serviceVips: true }
runtime: { workerThreads: 1 }
log: { level: warn, accessLog: false }
mesh:
EOF
  service bench "$BENCH_LISTEN" "$BENCH_BACKENDS"
  [[ -z $h2_listen ]] || service bench-h2 "$h2_listen" "${BENCH_H2_BACKENDS:-127.0.0.1:18083}"
} >"$cfg"

# Fail here, with every problem and its field path, rather than at bind time.
"$bin" proxy --check-config "$cfg" >&2
exec "$bin" proxy --config "$cfg"
