# benches/bench-lib.sh - pieces the benchmark scripts share; sourced, not run.
#
#   check_addr WHAT VALUE     127.x.y.z:PORT only (loopback, as l7.sh insists);
#                             otherwise prints "$me: WHAT 'VALUE' is not ..." and exits 1
#   service NAME LISTEN BACKENDS
#                             YAML list items: a Service on LISTEN and one
#                             EndpointSlice per comma-separated backend (a slice
#                             has one port list, so backends on different ports
#                             each need their own slice)
#   nginx_conf WORK [H2C]     an nginx.conf (1 worker, `return 200` with 64 B on
#                             127.0.0.1:18081 and :18082, and h2c with prior
#                             knowledge on 127.0.0.1:18083 when H2C is "h2c";
#                             keep-alive without limit) with its temp paths
#                             under WORK, on stdout
#   wait_port HOST PORT       until HOST:PORT accepts a connection; at most 10 s
#   ports_free PORT...        none of 127.0.0.1:PORT accepts; else names the first taken one
#   kill_pids PID...          TERM each (for EXIT traps; no waiting)
#   alive PID                 running and not a zombie (an exited child stays
#                             visible to `kill -0` until reaped)
#   stop_pids PID...          TERM each, KILL what still runs after 4 s, reap
#
# The caller sets `me` (its name, for messages) before sourcing.

check_addr() {
  [[ $2 =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}:[0-9]+$ ]] ||
    { printf '%s: %s %s is not 127.x.y.z:PORT\n' "${me:-bench}" "$1" "'$2'" >&2; exit 1; }
}

service() {
  local name=$1 listen=$2 b i=0
  local -a backends
  check_addr "$name listen address" "$listen"
  cat <<EOF
  - apiVersion: v1
    kind: Service
    metadata: { name: $name, namespace: bench }
    spec: { clusterIP: ${listen%:*}, ports: [{ name: web, port: ${listen##*:} }] }
EOF
  IFS=, read -ra backends <<<"$3"
  for b in "${backends[@]}"; do
    check_addr "$name backend" "$b"
    i=$((i + 1))
    cat <<EOF
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: { name: $name-$i, namespace: bench, labels: { kubernetes.io/service-name: $name } }
    addressType: IPv4
    endpoints: [{ addresses: ["${b%:*}"] }]
    ports: [{ name: web, port: ${b##*:} }]
EOF
  done
}

nginx_conf() {
  local work=$1 body h2c=""
  body=$(head -c 64 /dev/zero | tr '\0' 'x')
  [[ ${2:-} == h2c ]] && h2c="server { listen 127.0.0.1:18083 http2; location / { return 200 \"$body\"; } }"
  cat <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $work/nginx.pid;
error_log stderr warn;
events { worker_connections 10000; }
http {
    access_log off;
    client_body_temp_path $work/body; proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi; uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server { listen 127.0.0.1:18081 backlog=4096; listen 127.0.0.1:18082 backlog=4096;
             location / { return 200 "$body"; } }
    $h2c
}
EOF
}

alive() {
  local st
  [[ -n $1 ]] || return 1
  read -r st 2>/dev/null <"/proc/$1/stat" || return 1
  st=${st##*) }
  [[ ${st%% *} != Z ]]
}

stop_pids() {
  local p i any
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for ((i = 0; i < 40; i++)); do
    any=0
    for p in "$@"; do alive "$p" && any=1; done
    ((any)) || break
    sleep 0.1
  done
  for p in "$@"; do
    if alive "$p"; then
      printf '%s: pid %s did not stop within 4 s; KILL\n' "${me:-bench}" "$p" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

wait_port() {
  local i
  for ((i = 0; i < 100; i++)); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done
  return 1
}

ports_free() {
  local p
  for p in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      printf '%s: port %s is in use (another benchmark running?)\n' "${me:-bench}" "$p" >&2
      return 1
    fi
  done
}

kill_pids() {
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
}
