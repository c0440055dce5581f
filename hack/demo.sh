#!/usr/bin/env bash
# `make demo`: bring up the local cluster, RabbitMQ and Prometheus, install the CRD and
# show what is running. (The operator's live scaling demo grows here with the operator.)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
bash "$here/testenv.sh" up
cache=${QS_CACHE:-$HOME/.cache/queuescaler}
# shellcheck disable=SC1091
. "$cache/run/env"
kubectl() { "$QS_BIN/kubectl" --kubeconfig "$QS_KUBECONFIG" "$@"; }
kubectl apply --server-side -f "$repo/crds/queuescaler.yaml" >/dev/null
kubectl wait --for=condition=Established crd/queuescalers.queuescaler.io --timeout=60s >/dev/null
echo
echo "== the local cluster (kwok fake nodes)"
kubectl get nodes
echo
echo "== the QueueScaler API is installed: kubectl explain qs.spec"
kubectl explain qs.spec | sed -n 1,25p
echo
bash "$here/testenv.sh" status
cat <<EOT

The environment keeps running; stop it with: make testenv-down
  kubectl:    $QS_BIN/kubectl --kubeconfig $QS_KUBECONFIG
  RabbitMQ:   management UI at ${QS_MANAGEMENT_URL#*@} (user and password in $cache/run/env)
  Prometheus: $QS_PROMETHEUS_URL
EOT
