#!/usr/bin/env bash
# make test: the unit tests (CPU, seconds each, niced) run beside the integration and e2e tests
# (one shared environment, waiting on servers most of the time), one pytest each; on 2 cores
# that hides the unit run's 2.7 minutes. Then one branch-coverage report over both, and the
# floor for what decides and what samples. Fails when a run fails, collects nothing (pytest's
# exit code 5; one run may be empty only when -k narrows the selection) or the
# floor is missed. Ctrl-C or SIGTERM stops both runs (hack/jobs.sh).
#   hack/test.sh [PYTEST_ARGS...]    both runs get them. With a marker expression of its own
#                                    (-m EXPR, also as in -qm EXPR) it is one pytest, with no
#                                    coverage floor: a narrowed run covers only part.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${QS_CACHE:-$HOME/.cache/queuescaler}
py=$cache/venv/bin/python
# The core, the sources and the elector must stay above this many percent.
COVERAGE_FLOOR=90
COVERED='*/queuescaler/core/*,*/queuescaler/sources/*,*/queuescaler/leader.py'
ALL='unit or integration or e2e'
# shellcheck source=jobs.sh
. "$here/jobs.sh"
cd "$repo"

narrowed=0
for arg in "$@"; do
  case $arg in
    # -m, --markexpr and short flags bundled with m (-qm): the user's expression comes last
    -m*|--markexpr*|-[a-z]*m) exec "$py" -m pytest tests -m "$ALL" --cov --cov-report=term "$@" ;;
    --junitxml*|--junit-xml*|--basetemp*)
      echo "hack/test.sh: $arg would be shared by two pytest runs; add -m \"$ALL\" to run one" >&2
      exit 2 ;;
    -k*) narrowed=1 ;;
  esac
done

out=$(mktemp -d "${TMPDIR:-/tmp}/queuescaler-test.XXXXXX")
jobs_traps 'rm -rf "$out"'

COVERAGE_FILE=$out/unit.coverage background nice -n 10 "$py" -m pytest tests -m unit -q --cov \
  --cov-report= "$@" >"$out/unit.log" 2>&1
unit=$last_job
echo "[test] unit tests running beside the integration and e2e tests; their output follows these"
servers=0
COVERAGE_FILE=$out/servers.coverage "$py" -m pytest tests -m "integration or e2e" --cov \
  --cov-report= "$@" || servers=$?
units=0
job_wait "$unit" || units=$?
echo "[test] the unit tests' output (exit code $units):"
cat "$out/unit.log"

data=()
for run in unit servers; do [ ! -f "$out/$run.coverage" ] || data+=("$out/$run.coverage"); done
export COVERAGE_FILE=$out/all.coverage
covered=1
if [ ${#data[@]} -gt 0 ]; then
  "$py" -m coverage combine -q "${data[@]}"
  "$py" -m coverage report
  covered=0
  "$py" -m coverage report --include="$COVERED" --fail-under="$COVERAGE_FLOOR" || covered=$?
fi
echo "[test] integration and e2e: exit $servers; unit: exit $units; coverage floor: exit $covered"
# Passed; or, in a narrowed run, nothing of that kind selected (but something of the other).
ran() { [ "$1" = 0 ] || { [ "$1" = 5 ] && [ "$narrowed" = 1 ]; }; }
ran "$servers" && ran "$units" && [ "$servers$units" != 55 ] && [ "$covered" = 0 ]
