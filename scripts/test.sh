#!/usr/bin/env bash
# The project's test command (README, .ci/run). Sets up .venv if needed and runs
# the whole suite on the supported CPU stack (Python 3.11, NumPy 1.26); then,
# unless arguments select tests or CHAINERKFAC_SKIP_NUMPY2=1, runs the NumPy-2
# leg (.venv-numpy2, the stack CuPy 14 needs) on the compatibility layer and
# the optimizer's numerics. Fails when a test fails or when no test ran.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh

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
run_pytest .venv/bin/python "$@" || rc=$?
if [ "$#" -eq 0 ] && [ "${CHAINERKFAC_SKIP_NUMPY2:-0}" != 1 ]; then
  echo "== NumPy 2 leg ==" >&2
  bash scripts/numpy2_env.sh
  run_pytest .venv-numpy2/bin/python tests/test_compat.py \
    tests/test_linalg.py tests/test_step_bruteforce.py \
    tests/test_kfac_optimizer.py tests/test_non_positive_definite.py || rc=$?
fi
exit "$rc"
