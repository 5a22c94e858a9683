#!/usr/bin/env bash
# Installs everything vmcp-opt needs on a fresh machine: .venv with torch==2.13.0 first, from pip's configured
# index (any other resolution pulls gigabytes of CUDA), then the project, then the pinned npm backends.
# Usage: scripts/setup.sh [dev]   (dev adds the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="demo"
[ "${1:-}" = "dev" ] && extras="demo,dev"

WANTED="${PYTHON:-python3.11}"
PYTHON="$WANTED"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# pyproject.toml's requires-python: another minor version fails late (pip refuses the project after torch's
# download) or not at all (a .venv made before, with whatever python3 was then).
REQUIRES=">=3.11,<3.12"
version_of() { "$1" -c 'import sys; print("Python %d.%d.%d" % sys.version_info[:3])' 2>/dev/null || echo "not a Python that runs (a shim with no version selected?)"; }
supported() { "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 12))' 2>/dev/null; }
refuse() { echo "scripts/setup.sh: $1; vmcp-opt needs Python 3.11 (pyproject.toml: requires-python \"$REQUIRES\"). $2" >&2; exit 1; }
USE_311="Install Python 3.11, then run it again (PYTHON=/path/to/python3.11 scripts/setup.sh if it is not python3.11 on PATH)"

if [ -e .venv/bin/python ] || [ -L .venv/bin/python ]; then
  supported .venv/bin/python || refuse ".venv/bin/python is $(version_of .venv/bin/python)" "Remove it (rm -rf .venv). $USE_311."
else
  command -v "$PYTHON" >/dev/null 2>&1 || refuse "found neither $WANTED nor python3" "$USE_311."
  supported "$PYTHON" || refuse "$PYTHON is $(version_of "$PYTHON")" "$USE_311."
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "==> installing torch 2.13.0 from pip's configured index (on Linux, PyPI's default wheel pulls the CUDA libraries; README says how to get the CPU one)"
  # Not quiet: the one big download (~200 MB for the CPU wheel, gigabytes with CUDA) shows its progress.
  .venv/bin/python -m pip --disable-pip-version-check install torch==2.13.0
fi
stamp=".venv/.vmcp-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing vmcp-opt[$extras]"
  pip install -c constraints.txt -e ".[$extras]"
  touch "$stamp"
fi
# Bytecode for the project's own modules. The editable install writes none, and where PYTHONDONTWRITEBYTECODE
# is set (containers, CI, this project's own machines) Python never does either: every start of the gateway,
# of its bulk-embedding child and of a demo backend compiled ~130 modules again (bench/README.md, thirteenth
# session). compileall writes the files whatever that variable says, and only for sources that changed.
echo "==> compiling the project's Python modules (only what changed)"
.venv/bin/python -m compileall -q -j 0 vmcp_opt examples eval >/dev/null
if [ ! -d node_modules/@modelcontextprotocol/server-everything ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "==> installing npm backends (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
fi
# The optimizer's default encoder runs the model's ONNX export (optimizer/onnx_export.py): made here once per
# model content (torch runs in a child process; ~10 s idle), so `make serve` and the tests start without it.
# A failure is not fatal: the gateway then serves with the torch encoder.
echo "==> exporting the embedding model to ONNX (kept if already cached)"
.venv/bin/vmcp models export || echo "   ONNX export failed; the gateway will use the torch encoder"
# Real servers the tests start on loopback: redis-server (state shared by replicas), nginx (a reverse proxy
# in front of one gateway or round-robin in front of replicas) and prometheus (it scrapes a real gateway);
# hey, the load generator `bench/load.py --peer` drives both gateways with; systemd-analyze, which checks
# the shipped systemd unit; tini and busybox, which the deploy tests run as the image's PID 1 and the Redis
# pod's shell.
# CI runs as root on a fresh Debian machine, so the test set-up installs what is
# missing there; elsewhere those tests are skipped, and under CI=true they fail.
if [ "${1:-}" = "dev" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
  command -v prometheus >/dev/null 2>&1 || missing="$missing prometheus"
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
  command -v hey >/dev/null 2>&1 || missing="$missing hey"
  command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"  # verifies deploy/systemd's unit
  command -v tini >/dev/null 2>&1 || missing="$missing tini"  # the image's PID 1 (deploy/Dockerfile)
  command -v busybox >/dev/null 2>&1 || missing="$missing busybox"  # the Redis pod's shell (deploy/kubernetes)
  if [ -n "$missing" ]; then
    echo "==> installing$missing (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi
echo "==> set-up done"
