# Background jobs for the hack/ scripts (sourced). A job started with & ignores Ctrl-C, and
# killing its PID alone leaves its children (a go build) running; so each job gets a process
# group of its own, and an interrupt, CI's SIGTERM or a failure stops every group still running.
#   background CMD...   start CMD as a job (redirections on the call apply to it); $last_job
#   job_wait PID        wait for that job: its exit code (a failure under set -e stops the rest)
#   jobs_traps          INT/TERM exit 130/143; on any exit the jobs left are stopped
running_jobs=()

background() {
  set -m
  "$@" &
  last_job=$!
  set +m
  running_jobs+=("$last_job")
}

job_wait() {
  local status=0 pid kept=()
  wait "$1" || status=$?
  for pid in ${running_jobs[@]+"${running_jobs[@]}"}; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  running_jobs=(${kept[@]+"${kept[@]}"})
  return "$status"
}

stop_jobs() {
  local pid
  for pid in ${running_jobs[@]+"${running_jobs[@]}"}; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  running_jobs=()
  wait 2>/dev/null || true
}

jobs_traps() {
  trap stop_jobs EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
