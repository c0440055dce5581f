#!/usr/bin/env bash
# KEDA beside queuescaler, for the peer benchmark only (issue 20): never run by
# `make test`, `make deps` or CI.
#   hack/keda.sh build   build keda-operator and keda-adapter from the Go module proxy
#                        (hack/tools/keda) into $QS_CACHE/bin, and copy KEDA's CRDs and
#                        manifests out of the module into $QS_CACHE/keda/$KEDA_VERSION
#   hack/keda.sh paths   print where the binaries and CRDs are
#   hack/keda.sh up [KUBECONFIG]    build if needed, install KEDA's CRDs and its APIService,
#                        start keda-operator and keda-adapter as local processes (PIDs, logs
#                        and certificates in $KEDA_RUN, default $QS_CACHE/keda/run)
#   hack/keda.sh down [KUBECONFIG]  remove the APIService, stop both processes by PID
#   hack/keda.sh status  one line per process
# KUBECONFIG defaults to $QS_KUBECONFIG, else the test environment's ($QS_CACHE/run/kubeconfig,
# or run-$QS_ENV/ for a separate one). QS_CACHE defaults to ~/.cache/queuescaler. The first build
# downloads about 0.3 GB of modules and compiles for a long while on 2 cores.
#
# How the apiserver reaches the adapter without leaving loopback: the APIService names the
# Service keda/keda-metrics-apiserver, of type ExternalName with externalName 127.0.0.1, and
# the adapter's port as its port. With --enable-aggregator-routing off (kwokctl's default)
# the aggregator dials externalName:port, i.e. 127.0.0.1:$KEDA_ADAPTER_PORT, and checks the
# adapter's certificate against the APIService's caBundle for keda-metrics-apiserver.keda.svc
# (kwokctl's own metrics-server add-on uses the same ExternalName trick). Endpoints and
# EndpointSlices refuse 127.0.0.0/8, so --enable-aggregator-routing=true cannot stay on
# loopback. The cluster should run kube-apiserver with --requestheader-client-ca-file (the
# cluster CA), --requestheader-allowed-names=kwok-admin and the X-Remote-* header flags, so
# that the adapter sees the real user; without them `up` makes the adapter trust the cluster
# CA directly (requests are then authorized as the apiserver's proxy identity).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${QS_CACHE:-$HOME/.cache/queuescaler}
bin=$cache/bin
stamps=$cache/stamps
kdir=$cache/keda/$KEDA_VERSION
mod=$here/tools/keda
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local CGO_ENABLED=0
# QS_ENV=NAME (QS_PORT_OFFSET, default 100) pairs KEDA with that separate test environment,
# as hack/testenv.sh names them: its kubeconfig, a run directory and ports of its own.
instance=${QS_ENV:-}
offset=0
[ -z "$instance" ] || offset=${QS_PORT_OFFSET:-100}
suffix=${instance:+-$instance}
krun=${KEDA_RUN:-$cache/keda/run$suffix}
ns=keda
# Loopback ports, below the ephemeral range and apart from hack/testenv.sh's (244xx, 240xx,
# 246xx, +100 per QS_ENV): the adapter's HTTPS (the APIService), the operator's gRPC metrics
# service, the operator's Prometheus metrics and health probes, the adapter's Prometheus.
adapter_port=${KEDA_ADAPTER_PORT:-$((24480 + offset))}
grpc_port=${KEDA_GRPC_PORT:-$((24481 + offset))}
operator_metrics_port=${KEDA_OPERATOR_METRICS_PORT:-$((24482 + offset))}
probe_port=${KEDA_PROBE_PORT:-$((24483 + offset))}
adapter_metrics_port=${KEDA_ADAPTER_METRICS_PORT:-$((24484 + offset))}

# Same stamp scheme as hack/build-tools.sh (copied, not sourced).
fresh() { [ -x "$bin/$1" ] && [ "$(cat "$stamps/$1" 2>/dev/null)" = "$2" ]; }
stamp() { printf '%s' "$2" > "$stamps/$1"; }
key_of() { cat "$@" | sha256sum | cut -c1-16; }
log() { printf '[keda] %s\n' "$*" >&2; }

# The tool module must require the version pinned in versions.env.
check_pin() {
  local required
  required=$(cd "$mod" && go list -m -f '{{.Version}}' github.com/kedacore/keda/v2)
  [ "$required" = "$KEDA_VERSION" ] || {
    log "ERROR: hack/tools/keda requires KEDA $required but hack/versions.env pins $KEDA_VERSION"
    log "  (cd hack/tools/keda && go get github.com/kedacore/keda/v2@$KEDA_VERSION && go mod tidy),"
    log "  and copy the replace/exclude lines of the new KEDA go.mod into hack/tools/keda/go.mod"
    exit 1
  }
}

# KEDA's module source, downloaded (or found) in the module cache, and its commit.
keda_download() { (cd "$mod" && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION"); }
keda_dir() { keda_download | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'; }
keda_commit() { keda_download | sed -n 's/^\t\t"Hash": "\(.*\)",\{0,1\}$/\1/p'; }

# CRDs and the upstream manifests (APIService, RBAC) copied out of the module source:
# read by `up`, never committed.
copy_manifests() {
  local key=$1 src
  [ -f "$kdir/.stamp" ] && [ "$(cat "$kdir/.stamp")" = "$key" ] && return
  src=$(keda_dir)
  [ -d "$src/config/crd/bases" ] || { log "ERROR: no config/crd/bases in $src"; exit 1; }
  rm -rf "$kdir"; mkdir -p "$kdir/crds" "$kdir/config"
  cp "$src"/config/crd/bases/*.yaml "$kdir/crds/"
  cp -r "$src/config/metrics-server" "$src/config/rbac" "$kdir/config/"
  chmod -R u+w "$kdir"
  printf '%s' "$key" > "$kdir/.stamp"
  log "CRDs in $kdir/crds ($(find "$kdir/crds" -name '*.yaml' | wc -l) files)"
}

build() {
  mkdir -p "$bin" "$stamps"
  check_pin
  local key tools=(keda-operator keda-adapter) missing=0 t
  key=$(key_of "$mod/go.mod" "$mod/go.sum")
  for t in "${tools[@]}"; do fresh "$t" "$key" || missing=1; done
  if [ "$missing" = 0 ]; then
    log "keda $KEDA_VERSION: cached"
  else
    log "keda $KEDA_VERSION: building ${tools[*]} (first time: about 0.3 GB of modules, long)"
    local out ld pkg=github.com/kedacore/keda/v2/version
    ld="-s -w -X $pkg.Version=$KEDA_VERSION -X $pkg.GitCommit=$(keda_commit)"
    out=$(mktemp -d "$cache/keda-build.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$out'" EXIT
    # One go build for both commands: their shared packages compile once.
    (cd "$mod" && go build -trimpath -ldflags "$ld" -o "$out/" \
      github.com/kedacore/keda/v2/cmd/operator github.com/kedacore/keda/v2/cmd/adapter)
    mv -f "$out/operator" "$bin/keda-operator"
    mv -f "$out/adapter" "$bin/keda-adapter"
    for t in "${tools[@]}"; do stamp "$t" "$key"; done
  fi
  copy_manifests "$key"
}

paths() {
  printf 'operator %s\nadapter  %s\ncrds     %s\nconfig   %s\nrun      %s\n' \
    "$bin/keda-operator" "$bin/keda-adapter" "$kdir/crds" "$kdir/config" "$krun"
}

# --- up / down: KEDA as two local processes against a cluster ---

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid FILE NAME: TERM the PID in FILE, wait up to 30 s, then KILL; remove FILE.
stop_pid() {
  local file=$1 name=$2 pid
  if pid_alive "$file"; then
    pid=$(cat "$file")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "$name did not stop in 30 s: KILL"; kill -KILL "$pid" || true; }
  fi
  rm -f "$file"
}

# port_free PORT...: nothing else listens there (a server we did not start is not ours).
port_free() {
  local port
  for port in "$@"; do
    if ss -Hltn "sport = :$port" | grep -q .; then
      log "ERROR: port $port is taken by a process this script did not start"; exit 1
    fi
  done
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every half second.
wait_for() {
  local seconds=$1 what=$2; shift 2
  for _ in $(seq 1 $((seconds * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "ERROR: $what not ready after ${seconds}s"; return 1
}

kc() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

# One CA and one key pair for both processes, like the ones KEDA's own cert rotation makes
# (server and client use; the operator's and the adapter's service names, and 127.0.0.1):
# the operator's gRPC server and the adapter's client do mutual TLS with them, and the
# aggregator checks the adapter's serving certificate with the CA as the caBundle.
make_certs() {
  local d=$krun/certs san
  [ -s "$d/tls.crt" ] && openssl x509 -checkend 86400 -noout -in "$d/tls.crt" >/dev/null 2>&1 && return
  log "certificates: new CA and key pair in $d"
  rm -rf "$d"; mkdir -p "$d"; chmod 700 "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/O=KEDAORG/CN=KEDA" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=keda-operator.$ns.svc" \
    -keyout "$d/tls.key" -out "$d/tls.csr" 2>/dev/null
  san="DNS:keda-operator,DNS:keda-operator.$ns,DNS:keda-operator.$ns.svc"
  san+=",DNS:keda-operator.$ns.svc.cluster.local,DNS:keda-metrics-apiserver"
  san+=",DNS:keda-metrics-apiserver.$ns,DNS:keda-metrics-apiserver.$ns.svc"
  san+=",DNS:keda-metrics-apiserver.$ns.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' \
    "$san" > "$d/ext"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 365 -extfile "$d/ext" -out "$d/tls.crt" 2>/dev/null
  rm -f "$d/tls.csr" "$d/ext"
}

apply_apiservice() {
  local ca; ca=$(base64 -w0 < "$krun/certs/ca.crt")
  kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: $ns}
---
apiVersion: v1
kind: Service
metadata: {name: keda-metrics-apiserver, namespace: $ns, labels: {app.kubernetes.io/part-of: keda-operator}}
spec:
  type: ExternalName
  externalName: 127.0.0.1
  ports: [{name: https, port: $adapter_port, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.external.metrics.k8s.io, labels: {app.kubernetes.io/part-of: keda-operator}}
spec:
  service: {name: keda-metrics-apiserver, namespace: $ns, port: $adapter_port}
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: $ca
YAML
}

apiservice_available() {
  [ "$(kc get apiservice v1beta1.external.metrics.k8s.io \
    -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ]
}

# start NAME ARGS...: one KEDA process in the background, its PID and log in $krun.
start() {
  local name=$1; shift
  pid_alive "$krun/$name.pid" && { log "$name: running (pid $(cat "$krun/$name.pid"))"; return; }
  log "$name: starting (log $krun/$name.log)"
  env KUBECONFIG="$kubeconfig" POD_NAMESPACE=$ns KEDA_CLUSTER_OBJECT_NAMESPACE=$ns WATCH_NAMESPACE= \
    "$bin/$name" "$@" >>"$krun/$name.log" 2>&1 9>&- &
  echo $! >"$krun/$name.pid"
}

up() {
  build
  [ -s "$kubeconfig" ] || { log "ERROR: no kubeconfig at $kubeconfig"; exit 1; }
  kc get --raw /readyz >/dev/null || { log "ERROR: the cluster of $kubeconfig is not ready"; exit 1; }
  mkdir -p "$krun/custom-ca"
  local started=$SECONDS client_ca=$krun/certs/ca.crt
  pid_alive "$krun/keda-operator.pid" || port_free "$grpc_port" "$operator_metrics_port" "$probe_port"
  pid_alive "$krun/keda-adapter.pid" || port_free "$adapter_port" "$adapter_metrics_port"
  log "CRDs: applying $kdir/crds"
  kc apply --server-side --force-conflicts -f "$kdir/crds" >/dev/null
  kc wait --for condition=established --timeout=60s -f "$kdir/crds" >/dev/null
  make_certs
  apply_apiservice
  # The CA the adapter trusts for the aggregator's client certificate: KEDA's own (as in its
  # manifests) when the apiserver publishes a request-header CA, else the cluster's.
  if [ -z "$(kc get configmap -n kube-system extension-apiserver-authentication \
      -o jsonpath='{.data.requestheader-client-ca-file}')" ]; then
    log "WARNING: kube-apiserver has no --requestheader-client-ca-file: the adapter trusts the"
    log "  cluster CA instead and sees every request as the apiserver's proxy identity"
    kc get configmap -n kube-system extension-apiserver-authentication \
      -o jsonpath='{.data.client-ca-file}' >"$krun/cluster-ca.crt"
    client_ca=$krun/cluster-ca.crt
  fi
  start keda-operator --leader-elect=false --zap-log-level=info --zap-encoder=console \
    --zap-time-encoding=rfc3339 --enable-cert-rotation=false --cert-dir="$krun/certs" \
    --ca-dir="$krun/custom-ca" --enable-webhook-patching=false --enable-apiservice-patching=false \
    --metrics-service-bind-address="127.0.0.1:$grpc_port" \
    --metrics-bind-address="127.0.0.1:$operator_metrics_port" \
    --health-probe-bind-address="127.0.0.1:$probe_port"
  wait_for 120 keda-operator curl -fsS "http://127.0.0.1:$probe_port/readyz" || { down; exit 1; }
  # The adapter's own Prometheus endpoint (--port) listens on every address: KEDA has no
  # flag for its host. Everything else listens on 127.0.0.1 only.
  start keda-adapter --secure-port="$adapter_port" --bind-address=127.0.0.1 \
    --cert-dir="$krun/certs" --tls-cert-file="$krun/certs/tls.crt" \
    --tls-private-key-file="$krun/certs/tls.key" --client-ca-file="$client_ca" \
    --lister-kubeconfig="$kubeconfig" --authentication-kubeconfig="$kubeconfig" \
    --authorization-kubeconfig="$kubeconfig" --port="$adapter_metrics_port" \
    --metrics-service-address="127.0.0.1:$grpc_port" --zap-log-level=info
  wait_for 120 "APIService v1beta1.external.metrics.k8s.io" apiservice_available || { down; exit 1; }
  log "KEDA $KEDA_VERSION up in $((SECONDS - started))s: external metrics on 127.0.0.1:$adapter_port"
}

down() {
  # The APIService first: one left without its server breaks discovery (and so namespace
  # deletion) for every client of the cluster.
  if [ -s "$kubeconfig" ] && kc get --raw /readyz >/dev/null 2>&1; then
    kc delete apiservice v1beta1.external.metrics.k8s.io --ignore-not-found >/dev/null || true
    kc delete service -n $ns keda-metrics-apiserver --ignore-not-found >/dev/null || true
  fi
  stop_pid "$krun/keda-adapter.pid" keda-adapter
  stop_pid "$krun/keda-operator.pid" keda-operator
}

status() {
  local n
  for n in keda-operator keda-adapter; do
    if pid_alive "$krun/$n.pid"; then echo "$n: up (pid $(cat "$krun/$n.pid"))"; else echo "$n: down"; fi
  done
}

kubeconfig=${2:-${QS_KUBECONFIG:-$cache/run$suffix/kubeconfig}}
case ${1:-} in
  build) build ;;
  paths) paths ;;
  up) mkdir -p "$krun"; up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 build|paths|up [KUBECONFIG]|down [KUBECONFIG]|status" >&2; exit 2 ;;
esac
