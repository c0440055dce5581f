#!/usr/bin/env bash
# `make demo` (after `make deps`): queuescaler sizing a real Celery pool on the local cluster.
#
# Brings up (or reuses) the local environment, installs the CRD and the Helm chart, runs the
# operator from its image (hack/image.sh) under the chart's hardening and ServiceAccount (a
# local process under that account where containers cannot run), applies the Celery example,
# publishes a burst of tasks and shows the pool scaling up and back down, then draws the run
# as a PNG. The Python part is hack/demo.py. No prompts; the environment keeps running.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${QS_CACHE:-$HOME/.cache/queuescaler}
started=$SECONDS
bash "$here/testenv.sh" up
# pods are kwok's fakes: hack/demo.py runs the operator beside the cluster and the workers as
# local processes.
PYTHONPATH="$repo/operator:$repo/tests" "$cache/venv/bin/python" "$here/demo.py"
echo "make demo took $((SECONDS - started))s (environment included)."
