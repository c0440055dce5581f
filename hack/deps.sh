#!/usr/bin/env bash
# Installs what the demo and the tests need, idempotently: Debian packages, the Python
# virtualenv (in the cache, outside the repo), the Go-built control plane, Kafka's jars, the
# ActiveMQ brokers (Classic from Debian, Artemis from Maven Central) and, with `all`, the
# operator image (hack/image.sh).
#   hack/deps.sh [apt|python|tools|image|kafka|activemq|all]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${QS_CACHE:-$HOME/.cache/queuescaler}
venv=$cache/venv
log() { printf '[deps] %s\n' "$*" >&2; }
# shellcheck source=jobs.sh
. "$here/jobs.sh"

# Debian's packages: RabbitMQ, Redis (redis-server: the redis source's tests) and Prometheus
# (promtool comes with it), curl for probes, Python 3.11 with venv when the machine has no
# python3.11 of its own.
apt_packages() {
  local wanted=(rabbitmq-server redis-server prometheus curl ca-certificates util-linux iproute2) missing=() p
  command -v python3.11 >/dev/null || wanted+=(python3.11 python3.11-venv)
  for p in "${wanted[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && { log "apt: nothing to install"; return; }
  local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  log "apt: installing ${missing[*]}"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts no broker here (no init system), but make sure the default node is not
  # ours to worry about: the project only ever runs its own private node (and its own
  # private redis-server, tests/queuescaler_testkit/redis_server.py).
}

# The virtualenv, reinstalled only when pyproject.toml changes.
python_env() {
  local key; key=$(sha256sum "$repo/pyproject.toml" | cut -c1-16)
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.qs-stamp" 2>/dev/null)" = "$key:$repo" ]; then
    log "python: virtualenv up to date"; return
  fi
  log "python: installing the package and its dev extras into $venv"
  [ -x "$venv/bin/python" ] || python3.11 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$repo[dev]"
  echo "$key:$repo" >"$venv/.qs-stamp"
}

need_go() {
  command -v go >/dev/null || { log "ERROR: Go 1.26 is needed to build the control plane (go not on PATH)"; exit 1; }
}

tools() {
  need_go
  bash "$here/build-tools.sh"
}

# The operator image (the demo and the e2e tests run it), built ahead so neither waits for
# it. A machine that cannot build one is told so here and again, with the build's own words,
# by the demo (which then runs the operator as a local process) and by the tests.
operator_image() {
  bash "$here/image.sh" build >/dev/null || log "image: not built here (the lines marked [image] say why)"
}

# Apache Kafka's broker for the kafka source's tests: its jars from Maven Central
# (hack/tools/kafka/pom.xml, KAFKA_VERSION in versions.env) copied into
# $cache/kafka/<version>/libs, where tests/queuescaler_testkit/kafka_server.py runs them with
# `java -cp 'libs/*'`. Resolved again only when the POM or the version changes (a stamp holds
# their hash). Maven and a Java 17 runtime come from Debian when the machine has none.
kafka_jars() {
  local KAFKA_VERSION; KAFKA_VERSION=$(sed -n 's/^KAFKA_VERSION=\([^ #]*\).*/\1/p' "$here/versions.env")
  local pom=$here/tools/kafka/pom.xml dir=$cache/kafka/$KAFKA_VERSION key
  key=$({ cat "$pom"; echo "$KAFKA_VERSION"; } | sha256sum | cut -c1-16)
  if [ "$(cat "$dir/libs.stamp" 2>/dev/null)" = "$key" ] && [ -f "$dir/libs/kafka_2.13-$KAFKA_VERSION.jar" ]; then
    log "kafka $KAFKA_VERSION: jars cached"; return
  fi
  local missing=() sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  if [ ${#missing[@]} -gt 0 ]; then
    log "kafka: installing ${missing[*]}"
    # A slim Debian has no man directories, and the JRE's postinst links a man page there.
    $sudo mkdir -p /usr/share/man/man1
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  log "kafka $KAFKA_VERSION: resolving the broker's jars from Maven Central into $dir/libs"
  rm -rf "$dir/libs.new"
  mvn -B -q --no-transfer-progress -f "$pom" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dir/libs.new" </dev/null
  rm -rf "$dir/libs" && mv "$dir/libs.new" "$dir/libs"
  echo "$key" >"$dir/libs.stamp"
}

# ActiveMQ for the activemq source's tests (tests/queuescaler_testkit/activemq_server.py runs
# private instances of both; nothing here starts a broker):
# - Classic from Debian's `activemq` package (5.17, in /usr/share/activemq). The package is
#   "+dfsg" and ships no web console, so no Jolokia: its JVM agent comes from Maven Central
#   (JOLOKIA_AGENT_VERSION) and is loaded with -javaagent. The package's own service runs the
#   instances linked into /etc/activemq/instances-enabled (none); it is disabled all the same.
# - Artemis' binary distribution (ARTEMIS_VERSION), unpacked by Maven into
#   $cache/artemis/<version>/apache-artemis-<version>; the agent jar goes to
#   $cache/jolokia/<version>. Both resolved again only when the POM or a version changes (a stamp
#   holds their hash). Java 17 and Maven come from Debian when the machine has none.
activemq() {
  local ARTEMIS_VERSION JOLOKIA_AGENT_VERSION
  ARTEMIS_VERSION=$(sed -n 's/^ARTEMIS_VERSION=\([^ #]*\).*/\1/p' "$here/versions.env")
  JOLOKIA_AGENT_VERSION=$(sed -n 's/^JOLOKIA_AGENT_VERSION=\([^ #]*\).*/\1/p' "$here/versions.env")
  local pom=$here/tools/artemis/pom.xml dir=$cache/artemis/$ARTEMIS_VERSION
  local agent=$cache/jolokia/$JOLOKIA_AGENT_VERSION/jolokia-jvm-$JOLOKIA_AGENT_VERSION.jar
  local missing=() sudo= key p; [ "$(id -u)" = 0 ] || sudo=sudo
  for p in activemq; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  if [ ${#missing[@]} -gt 0 ]; then
    log "activemq: installing ${missing[*]}"
    $sudo mkdir -p /usr/share/man/man1  # a slim Debian has none; the JRE's postinst links a man page there
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ls /etc/rc[2-5].d/S[0-9][0-9]activemq >/dev/null 2>&1; then
    log "activemq: disabling the package's own service (the tests run private instances)"
    $sudo invoke-rc.d activemq stop >/dev/null 2>&1 || true
    $sudo update-rc.d activemq disable >/dev/null 2>&1
  fi
  key=$({ cat "$pom"; echo "$ARTEMIS_VERSION $JOLOKIA_AGENT_VERSION"; } | sha256sum | cut -c1-16)
  if [ "$(cat "$dir/.qs-stamp" 2>/dev/null)" = "$key" ] && [ -x "$dir/apache-artemis-$ARTEMIS_VERSION/bin/artemis" ] \
     && [ -f "$agent" ]; then
    log "activemq: Artemis $ARTEMIS_VERSION and the Jolokia agent $JOLOKIA_AGENT_VERSION cached"; return
  fi
  log "activemq: resolving Artemis $ARTEMIS_VERSION and the Jolokia agent $JOLOKIA_AGENT_VERSION from Maven Central"
  rm -rf "$dir.new" "$(dirname "$agent").new"
  mvn -B -q --no-transfer-progress -f "$pom" -Dartemis.version="$ARTEMIS_VERSION" \
    -Djolokia.version="$JOLOKIA_AGENT_VERSION" -Dartemis.home="$dir.new" \
    -Djolokia.dir="$(dirname "$agent").new" dependency:unpack@artemis dependency:copy@jolokia </dev/null
  rm -rf "$dir" "$(dirname "$agent")"
  mv "$dir.new" "$dir" && mv "$(dirname "$agent").new" "$(dirname "$agent")"
  echo "$key" >"$dir/.qs-stamp"
}

case ${1:-all} in
  apt) apt_packages ;;
  python) python_env ;;
  tools) tools ;;
  image) bash "$here/image.sh" tools ;;
  kafka) kafka_jars ;;
  activemq) activemq ;;
  # The Go builds (CPU) and the image run beside the downloads and the other installs
  # (network, dpkg). A failure, Ctrl-C or SIGTERM stops the jobs still running (hack/jobs.sh).
  all) jobs_traps
       apt_packages; need_go; background tools; go_tools=$last_job
       python_env; bash "$here/image.sh" tools; background operator_image; image=$last_job
       kafka_jars; activemq; job_wait "$go_tools"; job_wait "$image" ;;
  *) echo "usage: $0 [apt|python|tools|image|kafka|activemq|all]" >&2; exit 2 ;;
esac
