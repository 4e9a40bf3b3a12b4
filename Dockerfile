# The hardened MLflow tracking server image.
#   docker build -t mlflow-server .
#   docker build --build-arg BASE_IMAGE=debian:trixie-slim .   (another base, e.g. a local one)
# Debian stable slim with Debian's Python, so security updates come from Debian. The base is
# pinned by digest on the FROM line below, where Dependabot's docker updates find and move it.
# BASE_IMAGE names the stage (or image) both stages start from; BuildKit skips an unused stage,
# so a build with another base never pulls the pinned one.
ARG BASE_IMAGE=debian-pinned
FROM debian:trixie-slim@sha256:d7e12182ce18b85b93007c1dedf31f2d29e01ccf3182cc4017c709b6259bc132 AS debian-pinned

# ---------------------------------------------------------------- build: a venv from the lock
FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# pip reads the system CA bundle (a TLS-inspecting proxy's CA, where the builder has one)
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY requirements.txt /tmp/requirements.txt
# Every package pinned and hashed; wheels only (no compiler in any stage); mlflow's own heavy
# dependencies are absent from the lock on purpose (see requirements.in).
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps --require-hashes --only-binary=:all: -r /tmp/requirements.txt \
 && /opt/venv/bin/pip uninstall --yes pip \
 && rm -rf /opt/venv/lib/python3*/site-packages/setuptools* \
 && find /opt/venv -depth -type d -name tests -path '*/site-packages/*/tests' -prune -exec rm -rf {} + \
 # botocore describes ~400 AWS services; the S3 artifact store needs S3 and STS
 && cd /opt/venv/lib/python3*/site-packages/botocore/data \
 && find . -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sts ! -name sso ! -name sso-oidc -exec rm -rf {} +
COPY server /app/server
COPY entry-point.sh /app/entry-point.sh
# Bytecode compiled now: the root filesystem is read-only at run time, and compiling MLflow on
# every start would slow the cold start.
RUN /opt/venv/bin/python -m compileall -q -j 0 /app/server /opt/venv/lib >/dev/null

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/example/mlflow-server
LABEL org.opencontainers.image.title="mlflow-server" \
      org.opencontainers.image.description="Hardened MLflow tracking server: Basic auth, secrets from files, gunicorn" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Python and CA certificates only: no pip, no compiler, no package caches.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 mlflow \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin mlflow
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# HOME and TMPDIR in /tmp: with --read-only and --tmpfs /tmp nothing else is writable.
# Telemetry off here too, whatever the entrypoint is replaced with.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHON=/opt/venv/bin/python \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    PORT=8080 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true
# The start-up check of what we borrow from MLflow, made here from the image's own files: a
# safety contract that no longer fits fails the build; at start the verdict is reused while
# those files are unchanged, which keeps ~0.1 s off every cold start (server/borrowed/verdict.py).
RUN PYTHONPATH=/app /opt/venv/bin/python -W ignore -m server.borrowed.verdict
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=4)"]
ENTRYPOINT ["/app/entry-point.sh"]
