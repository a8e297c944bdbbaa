#!/usr/bin/env bash
# benches/strait-bench-mtls.sh - run strait's full mesh mTLS path as the
# "proxy under test" for shared/bench/l7.sh (called by benches/mtls.sh;
# usable alone with the same variables).
#
# Usage: strait-bench-mtls.sh STRAIT_BINARY
#
# The path measured (two strait processes, as in a mesh: a sidecar on each side):
#
#   load generator --HTTP/1.1 or h2c--> client proxy (Service VIP listener)
#     --TLS 1.3 + HTTP/2, mutual auth--> server proxy (listeners.mesh)
#     --HTTP/1.1 or h2c, the protocol the app spoke--> nginx backend
#
# Reads the variables l7.sh exports:
#   BENCH_LISTEN     HTTP/1.1 listen address of the client proxy, 127.x.y.z:PORT
#   BENCH_BACKENDS   comma-separated HTTP/1.1 backend addresses (the endpoints)
#   BENCH_H2_LISTEN  optional h2c (prior knowledge) listen address; must differ
#                    from BENCH_LISTEN (as in strait-bench-proxy.sh)
#   BENCH_WORK       scratch dir (default /tmp/bench-work)
# and of its own (defaults in brackets):
#   BENCH_H2_BACKENDS         h2c endpoints for BENCH_H2_LISTEN [127.0.0.1:18083]
#   BENCH_MTLS_MESH_PORT      inbound.meshPort of both proxies: the server proxy
#                             listens on ENDPOINT_IP:PORT [18140]
#   BENCH_MTLS_CLIENT_MESH    the client proxy's own listeners.mesh, bound
#                             because it has an identity; unused [127.0.0.1:18141]
#   BENCH_MTLS_SERVER_ADMIN   the server proxy's admin address, polled for
#                             /ready before the client starts [127.0.0.1:18142]
#
# Certificates are made once, with `STRAIT_BINARY certs`, under
# $BENCH_WORK/strait-mtls/certs/ (remade when older than 12 h; the workload
# certificates are valid 24 h): a root, intermediates cluster-1 and
# cluster-2, the client workload spiffe://cluster.local/ns/bench/sa/client
# (cluster-2) and the server workload spiffe://cluster.local/ns/bench/sa/server
# (cluster-1), so the handshake verifies chains through two intermediates.
#
# Writes two configs under $BENCH_WORK/strait-mtls/:
#   client.yaml  identity = client; Service `bench` on BENCH_LISTEN and (with
#                BENCH_H2_LISTEN) `bench-h2`, one EndpointSlice per backend,
#                as strait-bench-proxy.sh does; inbound.meshPort = M;
#                listeners { admin 127.0.0.1:0, outbound null, serviceVips,
#                mesh BENCH_MTLS_CLIENT_MESH }
#   server.yaml  identity = server; the same Services and EndpointSlices (so
#                it knows the services and their target ports; no ServiceExport,
#                so any identity of the trust domain may call);
#                listeners { admin BENCH_MTLS_SERVER_ADMIN, outbound null,
#                mesh ENDPOINT_IP:M }, no VIP listeners; inbound.appHost =
#                ENDPOINT_IP (127.0.0.1)
# Both: log level warn, access log off, runtime.workerThreads 1 (a
# current_thread runtime), drainGracePeriod 2s (so they stop well within the
# 5 s l7.sh allows). Both are checked with `strait proxy --check-config`.
#
# Processes: this script does NOT exec. It starts the server proxy in the
# background, waits (at most 5 s) for its admin /ready to answer 200, starts
# the client proxy in the background, and waits. TERM/INT/EXIT stop exactly
# those two PIDs (TERM, then KILL after 4 s). If either proxy exits, the other
# is stopped and the script exits with that status. Both proxies are children
# of this script (the PID l7.sh records), so l7.sh's CPU and RSS of the
# process tree count both proxies (and this bash, ~4 MB RSS, asleep in
# `wait`), all on the one proxy core: the cost a request pays in a mesh.
# With BENCH_MTLS_SERVER_CPU=N the server proxy runs on core N instead (l7.sh
# puts the backend and the load generator on core 0 during proxied runs):
# the server pod's sidecar beside its app, as on a real node; the CPU and
# RSS columns still count both proxies.
set -euo pipefail
me=strait-bench-mtls.sh
say() { printf '%s: %s\n' "$me" "$*" >&2; }
fail() { say "ERROR: $*"; exit 1; }
# shellcheck source=bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

bin=${1:?usage: strait-bench-mtls.sh STRAIT_BINARY}
[[ -x $bin ]] || fail "$bin is not an executable"
: "${BENCH_LISTEN:?set by l7.sh}" "${BENCH_BACKENDS:?set by l7.sh}"
h2_listen=${BENCH_H2_LISTEN:-}
h2_backends=${BENCH_H2_BACKENDS:-127.0.0.1:18083}
mesh_port=${BENCH_MTLS_MESH_PORT:-18140}
client_mesh=${BENCH_MTLS_CLIENT_MESH:-127.0.0.1:18141}
server_admin=${BENCH_MTLS_SERVER_ADMIN:-127.0.0.1:18142}
if [[ $h2_listen == "$BENCH_LISTEN" ]]; then
  fail "BENCH_H2_LISTEN must differ from BENCH_LISTEN: strait would forward h2c to the" \
    "HTTP/1.1 backends as HTTP/2 (see strait-bench-proxy.sh)"
fi

check_addr "client mesh listener (BENCH_MTLS_CLIENT_MESH)" "$client_mesh"
check_addr "server admin (BENCH_MTLS_SERVER_ADMIN)" "$server_admin"
[[ $mesh_port =~ ^[0-9]+$ ]] && ((mesh_port >= 1 && mesh_port <= 65535)) ||
  fail "BENCH_MTLS_MESH_PORT '$mesh_port' is not a port"

# The server proxy serves the mesh port on the endpoints' address, so every
# endpoint must be on one loopback IP.
endpoint_ip=""
IFS=, read -ra all_backends <<<"$BENCH_BACKENDS${h2_listen:+,$h2_backends}"
for b in "${all_backends[@]}"; do
  check_addr backend "$b"
  [[ -z $endpoint_ip || $endpoint_ip == "${b%:*}" ]] ||
    fail "backends on different IPs ($endpoint_ip, ${b%:*}): one server proxy serves one IP's mesh port"
  endpoint_ip=${b%:*}
done
server_mesh=$endpoint_ip:$mesh_port

# Our own ports must be free (l7.sh checks only BENCH_LISTEN).
for a in "$server_mesh" "$client_mesh" "$server_admin"; do
  if ss -Hltn "( sport = :${a##*:} )" 2>/dev/null | grep -q .; then
    fail "port ${a##*:} (for $a) is already in use"
  fi
done

work=${BENCH_WORK:-/tmp/bench-work}/strait-mtls
certs=$work/certs
mkdir -p "$work"

# ------------------------------------------------------------ certificates
# Made once into a temporary directory, then renamed into place; remade when
# missing or older than 12 h (workload certificates are valid 24 h).
fresh=1
for f in client/cert-chain.pem client/key.pem client/root-cert.pem \
  server/cert-chain.pem server/key.pem server/root-cert.pem; do
  [[ -s $certs/$f ]] || fresh=0
done
if ((fresh)) && [[ -n $(find "$certs/client/cert-chain.pem" "$certs/server/cert-chain.pem" -mmin +720 2>/dev/null) ]]; then
  fresh=0
fi
if ((!fresh)); then
  tmp=$work/certs.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp"
  {
    "$bin" certs root --out "$tmp/root" &&
      "$bin" certs intermediate --cluster cluster-1 --root "$tmp/root" --out "$tmp/cluster-1" &&
      "$bin" certs intermediate --cluster cluster-2 --root "$tmp/root" --out "$tmp/cluster-2" &&
      "$bin" certs workload --spiffe-id spiffe://cluster.local/ns/bench/sa/client \
        --ca "$tmp/cluster-2" --out "$tmp/client" &&
      "$bin" certs workload --spiffe-id spiffe://cluster.local/ns/bench/sa/server \
        --ca "$tmp/cluster-1" --out "$tmp/server"
  } >/dev/null || { rm -rf "$tmp"; fail "strait certs failed"; }
  rm -rf "$certs"
  mv "$tmp" "$certs"
  say "made certificates under $certs"
fi

# ------------------------------------------------------------------ configs
# common ROLE CLUSTER: identity, inbound, runtime and log sections.
common() {
  cat <<EOF
# Written by benches/strait-bench-mtls.sh for shared/bench/l7.sh: the $1 proxy.
node: { cluster: $2, namespace: bench, serviceAccount: $1 }
identity:
  trustDomain: cluster.local
  certChain: $certs/$1/cert-chain.pem
  privateKey: $certs/$1/key.pem
  trustBundle: $certs/$1/root-cert.pem
inbound: { meshPort: $mesh_port, appHost: $endpoint_ip }
runtime: { workerThreads: 1, drainGracePeriod: 2s }
log: { level: warn, accessLog: false }
EOF
}

services() {
  echo "mesh:"
  service bench "$BENCH_LISTEN" "$BENCH_BACKENDS"
  [[ -z $h2_listen ]] || service bench-h2 "$h2_listen" "$h2_backends"
}

client_cfg=$work/client.yaml server_cfg=$work/server.yaml
{
  common client cluster-2
  echo "listeners: { admin: \"127.0.0.1:0\", outbound: null, serviceVips: true, mesh: \"$client_mesh\" }"
  services
} >"$client_cfg"
{
  common server cluster-1
  echo "listeners: { admin: \"$server_admin\", outbound: null, mesh: \"$server_mesh\" }"
  services
} >"$server_cfg"

# Fail here, with every problem and its field path, rather than at bind time.
"$bin" proxy --check-config "$server_cfg" >&2
"$bin" proxy --check-config "$client_cfg" >&2

# ---------------------------------------------------------------- processes
server_pid="" client_pid=""

# stop: TERM the client (it closes its mesh connections), then the server;
# KILL whichever of the two is still running after 4 s. Only these PIDs.
stop() {
  trap - TERM INT EXIT
  stop_pids $client_pid $server_pid
}
trap 'stop; exit 143' TERM
trap 'stop; exit 130' INT
trap 'rc=$?; stop; exit $rc' EXIT

if [[ -n ${BENCH_MTLS_SERVER_CPU:-} ]]; then
  # The server pod's sidecar beside the backend (its own node in a mesh),
  # instead of sharing the client proxy's core.
  taskset -c "$BENCH_MTLS_SERVER_CPU" "$bin" proxy --config "$server_cfg" &
else
  "$bin" proxy --config "$server_cfg" &
fi
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
say "server proxy pid $server_pid (mTLS on $server_mesh -> app $endpoint_ip, admin $server_admin);" \
  "client proxy pid $client_pid (h1 $BENCH_LISTEN${h2_listen:+, h2c $h2_listen} -> mTLS to $server_mesh)"

# Until either exits (or a signal: the traps stop both).
rc=0
wait -n "$server_pid" "$client_pid" || rc=$?
for p in $server_pid $client_pid; do alive "$p" || say "proxy pid $p exited (status of the first: $rc)"; done
exit "$rc"
