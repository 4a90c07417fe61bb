#!/usr/bin/env bash
# Creates (once) a second virtual environment, .venv-numpy2, with NumPy 2 instead of the
# project's NumPy 1.26, and runs pytest in it on the tests given as arguments, e.g.
#   bash scripts/numpy2_env.sh tests/test_compat.py
# This is the CPU stand-in for the GPU stack (CuPy 14 needs NumPy 2): Chainer 7.8.1 only
# runs there through chainerkfac/_compat.py. Re-running is cheap: the venv is rebuilt only
# when the pins below (or this file) change. No arguments: only build the venv.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CHAINERKFAC_NUMPY2_VENV:-$root/.venv-numpy2}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

# numpy 2.4 is the newest NumPy 2 (most removed aliases); scipy 1.17 supports it.
# mpich/mpi4py as in requirements.txt, for ChainerMN. setuptools<70 builds Chainer's sdist
# (its setup.py imports pkg_resources, as in scripts/bootstrap.sh) and stays installed:
# `import chainer` needs pkg_resources at run time too, which setuptools 82 removed.
pins=("numpy==2.4.6" "scipy==1.17.1" "mpich==4.3.2" "mpi4py==4.1.1"
      "pytest==8.3.3" "pytest-timeout==2.3.1")

stamp="$venv/.numpy2-env.sha256"
want="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
  echo "numpy2_env: building $venv (first run takes a few minutes)" >&2
  "$python" -m venv --clear "$venv"
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" "setuptools<70" wheel
  "${pip[@]}" "${pins[@]}"
  # Chainer asks for numpy>=1.9.0 only, so the NumPy 2 pinned above stays.
  "${pip[@]}" --no-build-isolation "chainer==7.8.1"
  "${pip[@]}" --no-deps -e "$root"
  echo "$want" > "$stamp"
fi

[ "$#" -gt 0 ] || exit 0
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
