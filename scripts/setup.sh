#!/usr/bin/env bash
# Installs everything vmcp-opt needs on a fresh machine: .venv with torch first (the local CPU wheel;
# any other resolution pulls gigabytes of CUDA), then the project, then the pinned npm backends.
# Usage: scripts/setup.sh [dev]   (dev adds the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="demo"
[ "${1:-}" = "dev" ] && extras="demo,dev"

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "==> installing torch 2.13.0 (CPU)"
  pip install torch==2.13.0
fi
stamp=".venv/.vmcp-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing vmcp-opt[$extras]"
  pip install -c constraints.txt -e ".[$extras]"
  touch "$stamp"
fi
if [ ! -d node_modules/@modelcontextprotocol/server-everything ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "==> installing npm backends (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
fi
# Prometheus, for the test that scrapes a real gateway (tests/test_telemetry_export.py): installed when
# missing and we may (CI runs as root on a fresh machine); elsewhere that test is skipped.
if ! command -v prometheus >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing prometheus (Debian package)"
  apt-get update -q
  apt-get install -y -q --no-install-recommends prometheus
fi
echo "==> set-up done"
