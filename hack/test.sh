#!/usr/bin/env bash
# make test: the unit tests (CPU, seconds each) run beside the integration and e2e tests (one
# shared environment, waiting on servers most of the time), one pytest each; on 2 cores that
# hides the unit run's 2.7 minutes. Then one branch-coverage report over both, and the floor
# for what decides and what samples. Fails when a run fails, when nothing at all is collected
# (pytest's exit code 5 from both; `-k` may leave one of them empty) or the floor is missed.
#   hack/test.sh [PYTEST_ARGS...]    both runs get them; with a marker expression of its own
#                                    (-m EXPR) the run is one pytest with it
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${QS_CACHE:-$HOME/.cache/queuescaler}
py=$cache/venv/bin/python
# The core, the sources and the elector must stay above this many percent.
COVERAGE_FLOOR=90
COVERED='*/queuescaler/core/*,*/queuescaler/sources/*,*/queuescaler/leader.py'
cd "$repo"
for arg in "$@"; do
  case $arg in -m|-m*|--markexpr*) exec "$py" -m pytest tests --cov --cov-report=term "$@" ;; esac
done

out=$(mktemp -d "${TMPDIR:-/tmp}/queuescaler-test.XXXXXX")
unit=
# An interrupted run stops the unit tests it started, and leaves no files behind.
trap '[ -z "$unit" ] || kill "$unit" 2>/dev/null || true; wait; rm -rf "$out"' EXIT

COVERAGE_FILE=$out/unit.coverage "$py" -m pytest tests -m unit -q --cov --cov-report= "$@" \
  >"$out/unit.log" 2>&1 &
unit=$!
echo "[test] unit tests running beside the integration and e2e tests; their output follows these"
servers=0
COVERAGE_FILE=$out/servers.coverage "$py" -m pytest tests -m "integration or e2e" --cov \
  --cov-report= "$@" || servers=$?
units=0
wait "$unit" || units=$?
unit=
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
ran() { [ "$1" = 0 ] || [ "$1" = 5 ]; }  # passed, or nothing of that kind was selected
ran "$servers" && ran "$units" && [ "$servers$units" != 55 ] && [ "$covered" = 0 ]
