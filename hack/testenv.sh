#!/usr/bin/env bash
# The local test environment: a kwok cluster (etcd, kube-apiserver, controller-manager,
# scheduler, kwok, fake nodes), a private RabbitMQ node and a private Prometheus.
#
#   hack/testenv.sh up [C]    start what is not running (idempotent); on failure, stop it all
#   hack/testenv.sh down [C]  stop everything this script started, by PID
#                             (C: one component only, cluster, rabbitmq or prometheus)
#   hack/testenv.sh down-all  stop the shared environment and every named one (QS_ENV)
#   hack/testenv.sh status   one line per component
#   hack/testenv.sh env      the connection settings, as shell assignments
#
# Everything lives under $QS_CACHE/run (default ~/.cache/queuescaler/run); ports are
# private (never RabbitMQ's 5672/15672) and bound to loopback.
#
# QS_ENV=NAME (with QS_PORT_OFFSET=N, default 100) runs a second, separate environment
# (its own run directory, cluster name, RabbitMQ node and ports): fault tests stop and
# restart servers there without disturbing the shared one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${QS_CACHE:-$HOME/.cache/queuescaler}
bin=$cache/bin
instance=${QS_ENV:-}
suffix=${instance:+-$instance}
run=$cache/run$suffix
# A named environment keeps the port offset it was started with (run/offset), so a later
# `down` or `down-all` without QS_PORT_OFFSET stops its processes at their own ports.
offset=0
[ -z "$instance" ] || offset=${QS_PORT_OFFSET:-$(cat "$run/offset" 2>/dev/null || echo 100)}
# RabbitMQ runs as Debian's `rabbitmq` user, which cannot enter /root: its files live apart.
rabbit_dir=${QS_RABBITMQ_DIR:-/var/tmp/queuescaler-rabbitmq$suffix}

cluster=queuescaler$suffix
rabbit_node=queuescaler$suffix@localhost
# Below the kernel's ephemeral range (32768-60999 here): a port in that range can be taken
# at any moment by the local end of some outgoing connection.
apiserver_port=$((24443 + offset))
# The control plane's other ports, pinned too: left to kwokctl they are picked free at create
# time from 32767 down, so a cluster created while another one is stopped (a fault test's
# apiserver restart) takes that one's ports, and the stopped cluster's apiserver comes back
# talking to the new cluster's etcd.
etcd_port=$((24450 + offset))
etcd_peer_port=$((24451 + offset))
controller_manager_port=$((24452 + offset))
scheduler_port=$((24453 + offset))
kwok_controller_port=$((24454 + offset))
amqp_port=$((24672 + offset))
management_port=$((24673 + offset))
dist_port=$((24674 + offset))
epmd_port=$((24675 + offset))
prometheus_port=$((24090 + offset))
rabbit_user=queuescaler
rabbit_pass=${QS_RABBITMQ_PASSWORD:-qs-test-secret}
rabbit_vhost=queuescaler-test
nodes=${QS_FAKE_NODES:-3}

export PATH=$bin:$PATH KWOK_WORKDIR=$run/kwok
kubeconfig=$run/kubeconfig

log() { printf '[testenv] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# pid_alive FILE: the PID in FILE is a live process.
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid FILE NAME: TERM the PID in FILE, wait up to 30 s, then KILL; remove FILE.
stop_pid() {
  local file=$1 name=$2 pid i
  if pid_alive "$file"; then
    pid=$(cat "$file")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "$name did not stop in 30 s: KILL"; kill -KILL "$pid" || true; }
  fi
  rm -f "$file"
}

# port_free PORT...: nothing else listens there (a server we did not start is not ours to use).
port_free() {
  local port
  for port in "$@"; do
    if ss -Hltn "sport = :$port" | grep -q .; then
      die "port $port is taken by a process this script did not start (ss -ltnp 'sport = :$port')"
    fi
  done
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every half second.
wait_for() {
  local seconds=$1 what=$2 i; shift 2
  for i in $(seq 1 $((seconds * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "$what not ready after ${seconds}s"
}

# --- Kubernetes (kwokctl, binary runtime, every binary named: nothing is downloaded) ---

kubectl_() { kubectl --kubeconfig "$kubeconfig" "$@"; }

# Every binary kwokctl may want is named in its configuration, so it never downloads one.
# Every component listens on 127.0.0.1 only (kwokctl's default bindAddress is 0.0.0.0).
# The apiserver serves aggregated APIs such as external metrics (hack/keda.sh): it passes
# the caller to an extension server in X-Remote-* headers, signed by its proxy client
# certificate (kwokctl's admin.crt, CN kwok-admin, from the cluster CA). The request-header
# CA is the cluster CA, which --client-ca-file also names, so the allowed names must be set
# (the apiserver refuses to start otherwise): only kwok-admin may assert a user that way.
write_kwokctl_config() {
  # shellcheck source=versions.env
  . "$here/versions.env"
  cat >"$run/kwokctl.yaml" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  kubeVersion: $KUBERNETES_VERSION
  kubeApiserverPort: $apiserver_port
  etcdPort: $etcd_port
  etcdPeerPort: $etcd_peer_port
  kubeControllerManagerPort: $controller_manager_port
  kubeSchedulerPort: $scheduler_port
  kwokControllerPort: $kwok_controller_port
  kubeAuthorization: true
  kubeAdmission: true
  kubeApiserverBinary: $bin/kube-apiserver
  kubeControllerManagerBinary: $bin/kube-controller-manager
  kubeSchedulerBinary: $bin/kube-scheduler
  kubectlBinary: $bin/kubectl
  kwokControllerBinary: $bin/kwok
  etcdBinary: $bin/etcd
  bindAddress: 127.0.0.1
componentsPatches:
- name: kube-apiserver
  extraArgs:
  - key: requestheader-client-ca-file
    value: $KWOK_WORKDIR/clusters/$cluster/pki/ca.crt
  - key: requestheader-allowed-names
    value: kwok-admin
  - key: requestheader-username-headers
    value: X-Remote-User
  - key: requestheader-group-headers
    value: X-Remote-Group
  - key: requestheader-extra-headers-prefix
    value: X-Remote-Extra-
EOF
}

kwokctl_() { kwokctl -c "$run/kwokctl.yaml" --name "$cluster" "$@"; }

cluster_up() {
  if [ -s "$kubeconfig" ] && kubectl_ get --raw /readyz >/dev/null 2>&1; then
    log "cluster: running"; return
  fi
  [ -x "$bin/kube-apiserver" ] || die "control plane not built: run hack/build-tools.sh"
  write_kwokctl_config
  # A cluster left half-created or stopped by a reboot: start it again from scratch.
  kwokctl_ delete cluster --kubeconfig "$kubeconfig" >/dev/null 2>&1 || true
  port_free "$apiserver_port" "$etcd_port" "$etcd_peer_port" "$controller_manager_port" \
    "$scheduler_port" "$kwok_controller_port"
  log "cluster: creating (kwokctl, binary runtime)"
  kwokctl_ create cluster --kubeconfig "$kubeconfig" --wait 3m >"$run/kwokctl-create.log" 2>&1 9>&- \
    || { tail -20 "$run/kwokctl-create.log" >&2; die "kwokctl create cluster failed"; }
  log "cluster: $nodes fake nodes"
  kwokctl_ scale node --replicas "$nodes" >"$run/kwokctl-nodes.log" 2>&1 \
    || { tail -20 "$run/kwokctl-nodes.log" >&2; die "kwokctl scale node failed"; }
  wait_for 60 "default service account" kubectl_ get serviceaccount default -n default
}

cluster_down() {
  [ -d "$KWOK_WORKDIR/clusters/$cluster" ] || return 0
  log "stopping cluster"
  kwokctl_ delete cluster --kubeconfig "$kubeconfig" >/dev/null 2>&1 || true
  rm -f "$kubeconfig"
}

# --- RabbitMQ: Debian's server as a private node, our own ports and directories ---

# The node's environment. RUNNING_UNDER_SYSTEMD makes the start script exec the VM, so the
# PID we record is the broker's own and SIGTERM stops it cleanly.
rabbit_vars() {
  rabbit_vars=(RUNNING_UNDER_SYSTEMD=1 HOME="$rabbit_dir" \
    RABBITMQ_NODENAME="$rabbit_node" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$amqp_port" \
    RABBITMQ_DIST_PORT="$dist_port" ERL_EPMD_PORT="$epmd_port" ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_MNESIA_BASE="$rabbit_dir/mnesia" RABBITMQ_LOG_BASE="$rabbit_dir/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$rabbit_dir/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$rabbit_dir/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$rabbit_dir/advanced.config" \
    RABBITMQ_CONF_ENV_FILE="$rabbit_dir/rabbitmq-env.conf"
    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}")
}

management_ok() {
  curl -fsS -u "$rabbit_user:$rabbit_pass" \
    "http://127.0.0.1:$management_port/api/vhosts/$rabbit_vhost" >/dev/null
}

rabbitmq_up() {
  if pid_alive "$run/rabbitmq.pid" && management_ok 2>/dev/null; then
    log "rabbitmq: running"; return
  fi
  stop_pid "$run/rabbitmq.pid" rabbitmq
  port_free "$amqp_port" "$management_port" "$dist_port"
  command -v /usr/lib/rabbitmq/bin/rabbitmq-server >/dev/null \
    || die "RabbitMQ is not installed: apt-get install rabbitmq-server (make deps does)"
  log "rabbitmq: starting private node on AMQP :$amqp_port, management :$management_port"
  mkdir -p "$rabbit_dir/log" "$rabbit_dir/mnesia"
  echo '[rabbitmq_management].' >"$rabbit_dir/enabled_plugins"
  echo '[].' >"$rabbit_dir/advanced.config"
  : >"$rabbit_dir/rabbitmq-env.conf"
  cat >"$rabbit_dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$amqp_port
management.tcp.ip = 127.0.0.1
management.tcp.port = $management_port
default_user = $rabbit_user
default_pass = $rabbit_pass
default_vhost = $rabbit_vhost
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
loopback_users = none
EOF
  # The node's cookie: private to this node, readable only by the rabbitmq user.
  [ -s "$rabbit_dir/.erlang.cookie" ] || head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$rabbit_dir/.erlang.cookie"
  chmod 400 "$rabbit_dir/.erlang.cookie"
  chown -R rabbitmq:rabbitmq "$rabbit_dir"
  rabbit_vars
  env "${rabbit_vars[@]}" setpriv --reuid rabbitmq --regid rabbitmq --init-groups \
    /usr/lib/rabbitmq/bin/rabbitmq-server >"$run/rabbitmq.log" 2>&1 9>&- &
  echo $! >"$run/rabbitmq.pid"
  wait_for 90 "rabbitmq management API" management_ok
  # The guest user is not needed and would be a known password: remove it.
  curl -fsS -u "$rabbit_user:$rabbit_pass" -X DELETE \
    "http://127.0.0.1:$management_port/api/users/guest" >/dev/null 2>&1 || true
}

rabbitmq_down() {
  stop_pid "$run/rabbitmq.pid" rabbitmq
  # epmd is started by the node and outlives it; ours listens on our private port only.
  if command -v epmd >/dev/null && ERL_EPMD_PORT=$epmd_port epmd -names >/dev/null 2>&1; then
    log "stopping epmd on :$epmd_port"
    ERL_EPMD_PORT=$epmd_port epmd -kill >/dev/null 2>&1 || true
  fi
}

# --- Prometheus: Debian's, a private port, file-based targets the tests can add to ---

prometheus_up() {
  if pid_alive "$run/prometheus.pid" && curl -fsS "http://127.0.0.1:$prometheus_port/-/ready" >/dev/null 2>&1; then
    log "prometheus: running"; return
  fi
  stop_pid "$run/prometheus.pid" prometheus
  port_free "$prometheus_port"
  command -v prometheus >/dev/null || die "Prometheus is not installed: apt-get install prometheus"
  log "prometheus: starting on :$prometheus_port"
  mkdir -p "$run/prometheus/targets"
  cat >"$run/prometheus/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  evaluation_interval: 2s
scrape_configs:
  - job_name: prometheus
    static_configs: [{targets: ["127.0.0.1:$prometheus_port"]}]
  # Tests and the demo drop target files here (the operator's /metrics, ...).
  - job_name: queuescaler
    file_sd_configs: [{files: ["$run/prometheus/targets/*.json"], refresh_interval: 2s}]
EOF
  prometheus --config.file="$run/prometheus/prometheus.yml" \
    --storage.tsdb.path="$run/prometheus/data" \
    --web.listen-address="127.0.0.1:$prometheus_port" --web.enable-lifecycle \
    >"$run/prometheus.log" 2>&1 9>&- &
  echo $! >"$run/prometheus.pid"
  wait_for 60 prometheus curl -fsS "http://127.0.0.1:$prometheus_port/-/ready"
}

prometheus_down() { stop_pid "$run/prometheus.pid" prometheus; }

# --- commands ---

print_env() {
  cat <<EOF
QS_KUBECONFIG=$kubeconfig
QS_AMQP_URL=amqp://$rabbit_user:$rabbit_pass@127.0.0.1:$amqp_port/$rabbit_vhost
QS_MANAGEMENT_URL=http://$rabbit_user:$rabbit_pass@127.0.0.1:$management_port
QS_RABBITMQ_VHOST=$rabbit_vhost
QS_PROMETHEUS_URL=http://127.0.0.1:$prometheus_port
QS_PROMETHEUS_TARGETS=$run/prometheus/targets
QS_BIN=$bin
EOF
}

down() { prometheus_down; rabbitmq_down; cluster_down; }

up() {
  mkdir -p "$run"
  echo "$offset" >"$run/offset"
  # A half-started environment is not left behind: any failure stops it all.
  trap 'log "start failed: stopping what was started"; down' ERR
  local started=$SECONDS
  cluster_up
  rabbitmq_up
  prometheus_up
  trap - ERR
  print_env >"$run/env"
  log "ready in $((SECONDS - started))s (settings in $run/env)"
}

status() {
  if [ -s "$kubeconfig" ] && kubectl_ get --raw /readyz >/dev/null 2>&1; then
    echo "cluster: up ($(kubectl_ get nodes --no-headers 2>/dev/null | wc -l) nodes)"
  else echo "cluster: down"; fi
  if pid_alive "$run/rabbitmq.pid"; then echo "rabbitmq: up (pid $(cat "$run/rabbitmq.pid"))"; else echo "rabbitmq: down"; fi
  if pid_alive "$run/prometheus.pid"; then echo "prometheus: up (pid $(cat "$run/prometheus.pid"))"; else echo "prometheus: down"; fi
}

# One up or down at a time: concurrent test sessions share this environment. Servers are
# started with fd 9 closed, or they would hold the lock for as long as they run.
lock() { mkdir -p "$run"; exec 9>"$run/.lock"; flock -w 600 9 || die "another testenv.sh holds $run/.lock"; }

# Single components, for fault tests and for showing that tests really use them.
component() {
  case ${2:-} in
    cluster|rabbitmq|prometheus) lock; "${2}_$1" ;;
    *) echo "usage: $0 $1 [cluster|rabbitmq|prometheus]" >&2; exit 2 ;;
  esac
}

# Every environment under the cache: the shared one and any named (QS_ENV) one.
down_all() {
  local dir name
  for dir in "$cache"/run-*/; do
    [ -d "$dir" ] || continue
    name=${dir%/}; name=${name##*/run-}
    QS_ENV=$name bash "$0" down
  done
  lock; down
}

case ${1:-} in
  down-all) down_all ;;
  up) if [ -n "${2:-}" ]; then component up "$2"; else lock; up; fi ;;
  down) if [ -n "${2:-}" ]; then component down "$2"; else lock; down; fi ;;
  status) status ;;
  env) print_env ;;
  *) echo "usage: $0 up|down|down-all|status|env" >&2; exit 2 ;;
esac
