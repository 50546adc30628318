#!/usr/bin/env bash
# Runs every test tier (unit, MXNet compatibility, pipeline, containers) with the project venv.
# Services the tiers need (S3 server, MLflow server, dockerd, registry) are started by the tests'
# fixtures and stopped by PID; system packages are installed by scripts/install-system-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/mxnet-venv.sh
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest "$@"
