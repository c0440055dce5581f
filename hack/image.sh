#!/usr/bin/env bash
# The operator image, built and run without a Docker engine (rootful podman).
#   hack/image.sh build   make the Debian 12 base if needed, build the Dockerfile on it, print
#                         its facts (size, versions, what is left in it, an SBOM) on stderr and
#                         its name on stdout: localhost/queuescaler:<appVersion>, the chart's
#                         default image
#   hack/image.sh facts   the facts of the image built last
#   hack/image.sh name    the image's name, nothing built
#   hack/image.sh podman ARGS...
#                         podman on this project's store (as root: sudo for other users)
#   hack/image.sh sweep   remove containers the test kit started whose owner has exited
#   hack/image.sh check   exit 0 when this machine can run a container (namespaces, runtime)
#   hack/image.sh env     the environment podman needs to use this project's image store
#   hack/image.sh tools   install podman, mmdebstrap and runc (Debian's packages)
#
# No registry this machine reaches serves base images, so the base is made here from
# Debian's packages (mmdebstrap: bookworm, python3 3.11, python3-venv) and imported as
# localhost/queuescaler-base:bookworm. The Dockerfile's default base, python:3.11-slim-bookworm,
# is the same Debian release and Python minor version. Everything lives under
# $QS_CACHE/image (the base tarball, podman's store and its settings) and is rebuilt only
# when its inputs change: the base when the package list does, the layers when the
# Dockerfile, pyproject.toml, README.md or operator/ do (podman's layer cache).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${QS_CACHE:-$HOME/.cache/queuescaler}
dir=$cache/image
BASE_IMAGE=localhost/queuescaler-base:bookworm
BUILD_STAGE=localhost/queuescaler-build:latest  # the Dockerfile's build stage, kept as a cache
IMAGE=localhost/queuescaler:$(sed -n 's/^appVersion: *"*\([^"]*\)"*$/\1/p' "$repo/charts/queuescaler/Chart.yaml")
log() { printf '[image] %s\n' "$*" >&2; }
sudo=; [ "$(id -u)" = 0 ] || sudo="sudo -n"  # rootful podman: the chart's uid is a real uid
# (days) a base older than this is made again, so Debian's security updates reach the image
BASE_MAX_AGE_DAYS=${QS_IMAGE_BASE_MAX_AGE_DAYS:-7}

# podman's settings for this project only, so nothing touches the machine's own store.
# runc, not crun: crun refuses cgroup v1/v2 hybrid hosts, which some VMs are. The ulimits are
# the host's hard limits: podman's defaults are higher, and not even root may raise them.
# Each file is replaced only when its text changes, so a podman already running never reads
# one half written.
configure() {
  mkdir -p "$dir/tmp"
  local nofile nproc
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
  nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] && nproc=32768
  [ "$nproc" -gt 32768 ] && nproc=32768
  settle "$dir/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "$dir/run"
EOF
  settle "$dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$dir/run/libpod"
image_copy_tmp_dir = "$dir/tmp"
EOF
}

settle() {
  local text; text=$(cat)
  [ -f "$1" ] && [ "$(cat "$1")" = "$text" ] && return
  printf '%s\n' "$text" >"$1.new" && mv "$1.new" "$1"
}

print_env() {
  echo "CONTAINERS_STORAGE_CONF=$dir/storage.conf"
  echo "CONTAINERS_CONF=$dir/containers.conf"
}

tools() {
  local missing=() p
  for p in podman mmdebstrap runc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "apt: installing ${missing[*]}"
  $sudo apt-get update -qq
  # With podman's recommends (catatonit, slirp4netns, fuse-overlayfs, uidmap, buildah): what
  # its runtime expects, and the set the tested builds ran with.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# sudo drops the environment, so the settings go through env(1) on its far side.
# shellcheck disable=SC2206  # $sudo is zero or two words
PODMAN=($sudo env CONTAINERS_STORAGE_CONF="$dir/storage.conf" CONTAINERS_CONF="$dir/containers.conf" podman)
podman_() { "${PODMAN[@]}" "$@"; }

# The base: Debian 12 with python3 and its venv module, nothing recommended, no docs. The
# merged-/usr hook keeps usrmerge (and perl with it) out.
MMDEBSTRAP=(
  --variant=apt --mode=root --format=tar
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --include=python3,python3-venv,passwd,ca-certificates
  --aptopt='APT::Install-Recommends "false"'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  # the build host's name and resolver stay out of the image (podman mounts its own)
  --customize-hook='rm -f "$1/etc/hostname" "$1/etc/resolv.conf"'
)
SUITES=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)

base() {
  local key; key=$(printf '%s\n' "${MMDEBSTRAP[@]}" "${SUITES[@]}" | sha256sum | cut -c1-16)
  if [ -s "$dir/base.tar" ] && [ "$(cat "$dir/base.key" 2>/dev/null)" = "$key" ] \
    && [ -z "$(find "$dir/base.tar" -mtime "+$BASE_MAX_AGE_DAYS")" ]; then
    log "base: $dir/base.tar is current (made again after $BASE_MAX_AGE_DAYS days, for security updates)"
  else
    log "base: mmdebstrap bookworm (python3, python3-venv) -> $dir/base.tar"
    rm -f "$dir/base.new.tar"
    $sudo mmdebstrap -q "${MMDEBSTRAP[@]}" bookworm "$dir/base.new.tar" "${SUITES[@]}" \
      >"$dir/mmdebstrap.log" 2>&1 || { tail -20 "$dir/mmdebstrap.log" >&2; exit 1; }
    mv "$dir/base.new.tar" "$dir/base.tar"
    echo "$key" >"$dir/base.key"
  fi
  # Imported again only when the tarball changed: each import is a new image ID, which would
  # throw away the layer cache of every build on it.
  local sum; sum=$(sha256sum "$dir/base.tar" | cut -c1-64)
  if [ "$(podman_ image inspect --format '{{index .Labels "base.tar.sha256"}}' "$BASE_IMAGE" 2>/dev/null)" != "$sum" ]; then
    log "base: importing as $BASE_IMAGE"
    podman_ import -q --change 'ENV LANG=C.UTF-8' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change "LABEL base.tar.sha256=$sum" "$dir/base.tar" "$BASE_IMAGE" >/dev/null
  fi
}

# A machine whose outbound TLS is re-signed by a local CA (pip's own bundle does not know it)
# lends its bundle to the build's RUN steps: the one pip or Python is told to use, else the
# system's when local CAs were added to it. It is mounted, never copied: one directory where
# pip looks for root's settings, which leaves only that empty directory behind.
CA_MOUNTS=()
ca_mounts() {
  local bundle=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}
  if [ -z "$bundle" ] && compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    bundle=/etc/ssl/certs/ca-certificates.crt
  fi
  [ -n "$bundle" ] && [ -r "$bundle" ] || return 0
  mkdir -p "$dir/build-ca"
  cp "$bundle" "$dir/build-ca/ca.crt"
  printf '[global]\ncert = /root/.config/pip/ca.crt\n' >"$dir/build-ca/pip.conf"
  CA_MOUNTS=(-v "$dir/build-ca:/root/.config/pip:ro")
}

build() {
  tools
  configure
  base
  local started=$SECONDS revision
  ca_mounts
  revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
  [ -z "$(git -C "$repo" status --porcelain -- Dockerfile pyproject.toml README.md operator \
    2>/dev/null)" ] || revision="$revision-dirty"
  log "build: $IMAGE from $repo/Dockerfile on $BASE_IMAGE"
  local build=(build -q --layers -f "$repo/Dockerfile" --build-arg "BASE=$BASE_IMAGE"
    ${CA_MOUNTS[@]+"${CA_MOUNTS[@]}"})
  : >"$dir/build.log"
  # The build stage is named, so the prune below keeps its layers (the pip install) for the
  # next build: untagged, it would be removed, and every build would install again.
  # Labels go on the image's configuration only: a new revision reuses every cached layer.
  { podman_ "${build[@]}" --target build -t "$BUILD_STAGE" "$repo" \
    && podman_ "${build[@]}" \
      --label "org.opencontainers.image.revision=$revision" \
      --label "org.opencontainers.image.version=${IMAGE##*:}" \
      --label "org.opencontainers.image.title=queuescaler" \
      --label "org.opencontainers.image.base.name=$BASE_IMAGE" \
      -t "$IMAGE" "$repo"; } >>"$dir/build.log" 2>&1 || { tail -30 "$dir/build.log" >&2; exit 1; }
  log "build: done in $((SECONDS - started))s"
  podman_ image prune --force >/dev/null  # earlier builds' layers, in this store only
  facts >&2
  echo "$IMAGE"
}

# What a platform team checks before running an image: its size and labels, the Python and
# package versions inside, that no compiler and no package manager but dpkg is left, and an
# SBOM in a file (hack/image_facts.py, run inside the image, without network or privileges).
inside() {
  podman_ run --rm -i --network none --read-only --user 10001:10001 --cap-drop ALL \
    --entrypoint python3 "$IMAGE" - "$1" <"$here/image_facts.py"
}

facts() {
  local sbom=$dir/queuescaler-${IMAGE##*:}.sbom.txt size revision
  inside sbom >"$sbom.new" && mv "$sbom.new" "$sbom"
  size=$(podman_ image inspect --format '{{.Size}}' "$IMAGE")
  revision=$(podman_ image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' "$IMAGE")
  echo "image     $IMAGE, $(numfmt --to=iec --suffix=B "$size"), revision $revision"
  echo "inside    $(inside facts)"
  echo "base      $BASE_IMAGE: Debian 12 made here (the Dockerfile's default: python:3.11-slim-bookworm)"
  echo "SBOM      $(grep -c '^deb ' "$sbom") Debian packages, $(grep -c '^python ' "$sbom") Python distributions: $sbom"
}

# Whether containers can run here at all: a machine without user or mount namespaces (or a
# runtime that cannot start) cannot, and the demo then falls back to a local process.
check() {
  command -v podman >/dev/null || return 1
  configure
  podman_ image exists "$BASE_IMAGE" || return 1
  podman_ run --rm --network host --entrypoint /bin/true "$BASE_IMAGE" >/dev/null 2>&1
}

# Containers of the test kit carry the PID of the process that started them; one whose
# starter is gone (a test run killed before its teardown) is removed.
sweep() {
  local name pid
  podman_ ps --all --filter label=io.queuescaler.test-owner \
    --format '{{.Names}} {{index .Labels "io.queuescaler.test-owner"}}' 2>/dev/null |
  while read -r name pid; do
    [ -n "$name" ] && ! kill -0 "$pid" 2>/dev/null || continue
    log "sweep: removing $name (its test run, pid $pid, has exited)"
    podman_ rm --force --time 5 "$name" >/dev/null || true
  done
}

case ${1:-build} in
  tools) tools ;;
  build) build ;;
  check) check ;;
  env) configure; print_env ;;
  facts) configure; facts ;;
  name) echo "$IMAGE" ;;
  podman) shift; configure; exec "${PODMAN[@]}" "$@" ;;  # exec: signals reach podman itself
  sweep) configure; sweep ;;
  *) echo "usage: $0 [build|check|env|tools|facts|name|podman ARGS|sweep]" >&2; exit 2 ;;
esac
