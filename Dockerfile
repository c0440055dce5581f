# The queuescaler operator image. Build it from the repository root:
#   docker build -t localhost/queuescaler:0.1.0 .      (or: podman build ..., or: make image)
# The chart's default image is localhost/queuescaler:<appVersion>, this very name.
#
# BASE is any Debian 12 (bookworm) image with Python 3.11 and its venv module. The default is
# the public python:3.11-slim-bookworm; `make image` (hack/image.sh) builds the same file
# on a Debian 12 base it makes from Debian's packages (python3 3.11, python3-venv), since
# the machines it is tested on reach no image registry. Same release, same Python minor
# version, and the package goes into its own virtualenv either way, so the two agree.
ARG BASE=python:3.11-slim-bookworm

# The virtualenv is made in a stage of its own: pip, setuptools and the build's caches stay
# there, and only the installed packages reach the image.
FROM ${BASE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the package build reads: its metadata (README.md is its long description) and code.
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python3 -m venv /opt/queuescaler \
    && /opt/queuescaler/bin/pip install . \
    && /opt/queuescaler/bin/pip uninstall --yes pip setuptools wheel

FROM ${BASE}
# A numeric non-root user, so Kubernetes' runAsNonRoot can verify it (the chart runs as 10001).
# No package manager stays but dpkg (Debian's essential package database, which an SBOM
# reads): apt goes, and so does the base's own pip where it has one (python:3.11-slim has it
# in /usr/local). This runs before PATH names the virtualenv, so `python3` is the base's; and
# the build fails if any pip is left.
RUN groupadd --system --gid 10001 queuescaler \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin queuescaler \
    && if python3 -m pip --version >/dev/null 2>&1; then \
         python3 -m pip uninstall --yes --quiet pip setuptools wheel; fi \
    && ! python3 -m pip --version >/dev/null 2>&1 \
    && dpkg --purge apt >/dev/null
COPY --from=build /opt/queuescaler /opt/queuescaler
RUN ! /opt/queuescaler/bin/python -m pip --version >/dev/null 2>&1
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/queuescaler/bin:$PATH
USER 10001:10001
WORKDIR /

EXPOSE 8080
ENTRYPOINT ["queuescaler", "run"]
