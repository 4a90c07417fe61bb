#!/usr/bin/env bash
# Builds (once, through scripts/bootstrap.sh) the NumPy-2 venv .venv-numpy2 from
# requirements-gpu-ci.txt (requirements-numpy2.txt plus CuPy 14, which imports
# without a GPU), and runs pytest in it on the tests given as arguments, e.g.
#   bash scripts/numpy2_env.sh tests/test_compat.py
# This is the CPU stand-in for the GPU stack (CuPy 14 needs NumPy 2): Chainer
# 7.8.1 only runs there through chainerkfac/_compat.py, and the GPU-marked tests
# must skip there (CuPy, no device). No arguments: only build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CHAINERKFAC_VENV="${CHAINERKFAC_NUMPY2_VENV:-$root/.venv-numpy2}"
export CHAINERKFAC_REQUIREMENTS="$root/requirements-gpu-ci.txt"
bash "$root/scripts/bootstrap.sh"
[ "$#" -gt 0 ] || exit 0
cd "$root"
exec "$CHAINERKFAC_VENV/bin/python" -m pytest "$@"
