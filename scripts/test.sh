#!/usr/bin/env bash
# The project's test command (README, .ci/run). Sets up .venv if needed, lints
# the repository (scripts/lint.sh: ruff, pinned in requirements.txt, with
# pyproject.toml's [tool.ruff]; any finding fails the run, after the tests) and
# runs the whole suite on the supported CPU stack (Python 3.11, NumPy 1.26). Then,
# unless arguments select tests, the other legs of the import matrix, each venv
# built once by scripts/bootstrap.sh:
#   NumPy 2  (.venv-numpy2: NumPy 2 and CuPy 14 without a GPU, the CPU stand-in
#            for the GPU stack): the compatibility layer and the optimizer's
#            numerics, then every GPU-marked test, which must skip (no device);
#            CHAINERKFAC_SKIP_NUMPY2=1 leaves this leg out;
#   Python 3.12 (.venv-py312: NumPy 1.26, no numpy.distutils; .venv-py312-numpy2):
#            tests/test_compat.py; skipped, with a message naming the missing
#            interpreter, where no Python 3.12 is found (CHAINERKFAC_PYTHON312
#            names one); CHAINERKFAC_SKIP_PY312=1 leaves these legs out.
#   clean install (scripts/wheel_check.sh, about a minute): the wheel built from
#            pyproject.toml, installed into a fresh venv without mpi4py (import,
#            a K-FAC step, the one-line error of create_communicator), then with
#            the mpi extra (mpiexec -n 2, DistributedKFAC);
#            CHAINERKFAC_SKIP_WHEEL=1 leaves this leg out.
# Fails when a test fails, when ruff reports a finding, when a venv cannot be
# built, or when a pytest run ran no test. Arguments (pytest's) select tests:
# then only the lint step and that run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
# .venv is up to date for this run (tests/test_lint.py then runs test.sh again)
export CHAINERKFAC_BOOTSTRAPPED=1

run_pytest() {  # run_pytest PYTHON ARGS...: pytest, treating "no tests" as failure
  local python="$1"; shift
  set +e
  "$python" -m pytest -q -p no:cacheprovider "$@"
  local rc=$?
  set -e
  if [ "$rc" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests; failing" >&2
    rc=1
  fi
  return "$rc"
}

rc=0
echo "== lint (scripts/lint.sh: ruff check) ==" >&2
if ! bash scripts/lint.sh; then
  echo "scripts/test.sh: ruff found lint findings (listed above); failing" >&2
  rc=1
fi
run_pytest .venv/bin/python "$@" || rc=$?
[ "$#" -eq 0 ] || exit "$rc"
if [ -s build/ptxas/summary.txt ]; then  # written by tests/test_cuda_compile.py
  echo "== ptxas: registers and spills per kernel (nvcc, sm_80/sm_90; reports in build/ptxas/) ==" >&2
  cat build/ptxas/summary.txt >&2
fi

if [ "${CHAINERKFAC_SKIP_WHEEL:-0}" != 1 ]; then
  echo "== clean-install leg (scripts/wheel_check.sh: the wheel in a fresh venv, then its mpi extra) ==" >&2
  bash scripts/wheel_check.sh || rc=1
fi

if [ "${CHAINERKFAC_SKIP_NUMPY2:-0}" != 1 ]; then
  echo "== NumPy 2 leg (.venv-numpy2: NumPy 2, CuPy 14, no GPU) ==" >&2
  if bash scripts/numpy2_env.sh; then
    # numerics under NumPy 2's casting rules, the kernels against their
    # references, every .cu compiled by CuPy 14's own NVRTC with the
    # launcher's include folders and options (no GPU needed), and the CUDA
    # library checks against real CuPy without a driver (no cuSOLVER here)
    run_pytest .venv-numpy2/bin/python tests/test_compat.py \
      tests/test_linalg.py tests/test_step_bruteforce.py \
      tests/test_kfac_optimizer.py tests/test_non_positive_definite.py \
      tests/test_cholesky.py tests/test_step_status.py tests/test_packing.py \
      tests/test_cuda_launcher.py tests/test_cuda_kernels.py \
      tests/test_cuda_compile.py tests/test_emulated_training.py \
      tests/test_nccl_communicator.py tests/test_nccl_backend.py \
      tests/test_cuda_availability.py \
      tests/test_gpu_entry_points.py::test_a_missing_cuda_library_stops_before_training \
      || rc=$?
    echo "== GPU-marked tests with CuPy and no device: they must skip ==" >&2
    run_pytest .venv-numpy2/bin/python -m gpu -rs tests || rc=$?
  else
    echo "scripts/test.sh: could not build .venv-numpy2" >&2
    rc=1
  fi
fi

if [ "${CHAINERKFAC_SKIP_PY312:-0}" != 1 ]; then
  for leg in py312 py312-numpy2; do
    echo "== Python 3.12 leg (.venv-$leg) ==" >&2
    status=0
    CHAINERKFAC_VENV="$root/.venv-$leg" CHAINERKFAC_REQUIREMENTS="$root/requirements-$leg.txt" \
      CHAINERKFAC_PYTHON_VERSION=3.12 PYTHON="${CHAINERKFAC_PYTHON312:-}" \
      bash scripts/bootstrap.sh || status=$?
    if [ "$status" -eq 3 ]; then
      echo "scripts/test.sh: SKIPPED the Python 3.12 legs: no Python 3.12 interpreter" \
        "(bootstrap.sh says where it looked; CHAINERKFAC_PYTHON312=/path/to/python3.12 names one)" >&2
      break
    elif [ "$status" -ne 0 ]; then
      echo "scripts/test.sh: could not build .venv-$leg" >&2
      rc=1
      continue
    fi
    run_pytest ".venv-$leg/bin/python" tests/test_compat.py || rc=$?
  done
fi
exit "$rc"
