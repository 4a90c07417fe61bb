#!/usr/bin/env bash
# The clean-install leg of scripts/test.sh (issue 19): the package as a new
# user gets it from pip, not from this checkout's .venv.
#   1. builds the wheel as `pip install .` does (isolated build from
#      pyproject.toml), from a copy of the package's files, so that nothing
#      (build/, *.egg-info) is written into the checkout;
#   2. installs it into a fresh venv WITHOUT mpi4py: chainer from the wheel
#      scripts/bootstrap.sh built into .wheels/ (Chainer 7.8.1 is an sdist
#      that only builds with pkg_resources), everything else from the index;
#      then `install_check.py without-mpi`: import, a single-process K-FAC
#      step, the one-line errors of create_communicator and DistributedKFAC;
#   3. installs the `mpi` extra into the same venv and runs
#      `mpiexec -n 2 install_check.py with-mpi`: DistributedKFAC on 2 ranks.
# The checks run with the venv's interpreter, outside the checkout and without
# PYTHONPATH, so `import chainerkfac` can only find the installed wheel.
# About a minute on 2 cores with pip's cache warm. The venv is removed after.
#   PYTHON               the interpreter for the venv (default: the base
#                        interpreter of .venv, i.e. the project's Python 3.11)
#   CHAINERKFAC_WHEELS   the wheel cache (default .wheels)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wheels="${CHAINERKFAC_WHEELS:-$root/.wheels}"
python="${PYTHON:-$root/.venv/bin/python}"   # `-m venv` uses its base interpreter
if ! ls "$wheels"/chainer-7.8.1-*.whl >/dev/null 2>&1; then
  echo "wheel_check: no Chainer 7.8.1 wheel in $wheels; run scripts/bootstrap.sh" >&2
  exit 1
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/chainerkfac-wheel-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
step() { echo "wheel_check: $*" >&2; }

step "building the wheel (isolated, as pip install . does)"
mkdir "$work/src"
(cd "$root" && tar --exclude=__pycache__ -cf - pyproject.toml README.md LICENSE chainerkfac) \
  | tar -xf - -C "$work/src"
"$python" -m venv "$work/venv"
venv_python="$work/venv/bin/python"
pip=("$venv_python" -m pip -q --disable-pip-version-check)
"${pip[@]}" wheel --no-deps -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/chainerkfac-*.whl)"
step "installing $(basename "$wheel") into a fresh venv (chainer from $wheels)"
"${pip[@]}" install --find-links "$wheels" "$wheel"

run_check() {  # run_check COMMAND...: in $work, without PYTHONPATH, with a timeout
  (cd "$work" && env -u PYTHONPATH OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
     timeout 300 "$@")
}
step "checks without mpi4py: $("$venv_python" -m pip list --format=freeze 2>/dev/null | paste -sd' ' -)"
run_check "$venv_python" "$root/scripts/install_check.py" without-mpi

step "installing the mpi extra"
"${pip[@]}" install --find-links "$wheels" "$wheel[mpi]"
step "mpiexec -n 2 with DistributedKFAC"
run_check "$work/venv/bin/mpiexec" -n 2 "$venv_python" "$root/scripts/install_check.py" with-mpi
step "passed"
