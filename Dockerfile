# The queuescaler operator image. Build it from the repository root:
#   docker build -t queuescaler:0.1.0 .
# and use it with the Helm chart (image.repository=queuescaler, image.tag=0.1.0).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package build reads: its metadata (README.md is its long description) and code.
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install . && rm -rf /src

# A numeric non-root user, so Kubernetes' runAsNonRoot can verify it (the chart runs as 10001).
RUN groupadd --system --gid 10001 queuescaler \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin queuescaler
USER 10001:10001
WORKDIR /

EXPOSE 8080
ENTRYPOINT ["queuescaler", "run"]
