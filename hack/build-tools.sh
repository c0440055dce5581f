#!/usr/bin/env bash
# Builds the local control plane and its tools from the Go module proxy into
# $QS_CACHE/bin (default ~/.cache/queuescaler/bin). Each tool is rebuilt only when
# its pinned version (hack/versions.env, hack/tools/*/go.{mod,sum}) changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${QS_CACHE:-$HOME/.cache/queuescaler}
bin=$cache/bin
stamps=$cache/stamps
mkdir -p "$bin" "$stamps"
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local CGO_ENABLED=0

# fresh NAME KEY: true when the tool NAME was already built for KEY.
fresh() { [ -x "$bin/$1" ] && [ "$(cat "$stamps/$1" 2>/dev/null)" = "$2" ]; }
stamp() { printf '%s' "$2" > "$stamps/$1"; }
key_of() { cat "$@" | sha256sum | cut -c1-16; }
log() { printf '[build-tools] %s\n' "$*" >&2; }
# shellcheck source=jobs.sh
. "$here/jobs.sh"

build_kube() {
  local key; key=$(key_of "$here/tools/kube/go.mod" "$here/tools/kube/go.sum")
  local tools=(kube-apiserver kube-controller-manager kube-scheduler kubectl) missing=0 t
  for t in "${tools[@]}"; do fresh "$t" "$key" || missing=1; done
  [ "$missing" = 0 ] && { log "kubernetes $KUBERNETES_VERSION: cached"; return; }
  log "kubernetes $KUBERNETES_VERSION: building ${tools[*]} (first time: about 12 minutes on 2 cores)"
  local v=${KUBERNETES_VERSION#v} pkg=k8s.io/component-base/version
  local ld="-s -w -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=${v%%.*}"
  ld+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$v") -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
  (cd "$here/tools/kube" && go build -trimpath -ldflags "$ld" -o "$bin/" \
    "${tools[@]/#/k8s.io/kubernetes/cmd/}")
  for t in "${tools[@]}"; do stamp "$t" "$key"; done
}

build_etcd() {
  local key; key=$(key_of "$here/tools/etcd/go.mod" "$here/tools/etcd/go.sum" "$here/tools/etcd/main.go")
  fresh etcd "$key" && { log "etcd $ETCD_VERSION: cached"; return; }
  log "etcd $ETCD_VERSION: building"
  (cd "$here/tools/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .)
  stamp etcd "$key"
}

# go_install NAME PACKAGE VERSION: a tool whose module builds as published.
go_install() {
  fresh "$1" "$3" && { log "$1 $3: cached"; return; }
  log "$1 $3: building"
  GOBIN=$bin go install -trimpath -ldflags "-s -w" "$2@$3"
  stamp "$1" "$3"
}

# The small tools build beside Kubernetes: its link steps leave a core idle for minutes
# (cold, on 2 cores: 11.7 min one after the other). A failure, Ctrl-C or SIGTERM stops the
# other (hack/jobs.sh).
small_tools() {
  build_etcd
  go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
  go_install kwokctl sigs.k8s.io/kwok/cmd/kwokctl "$KWOK_VERSION"
  go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
  go_install kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
}
jobs_traps
background small_tools; small=$last_job
build_kube
job_wait "$small"
log "all tools in $bin"
