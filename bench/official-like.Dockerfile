# Benchmark only: a stand-in for MLflow's official image, to size ours against it.
# The official ghcr.io/mlflow/mlflow:vX is `FROM python:3.11-slim-trixie` + `pip install
# mlflow==X` (mlflow/mlflow, docker/Dockerfile); that base cannot be pulled here, so this uses
# the same Debian release with Debian's Python, as our own image does. Built by bench/run.py
# from an empty context: docker build -t mlflow-official-like - < bench/official-like.Dockerfile
FROM debian:trixie-slim
ARG MLFLOW_VERSION=3.17.2
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/venv/bin/pip install --no-cache-dir mlflow==${MLFLOW_VERSION}
