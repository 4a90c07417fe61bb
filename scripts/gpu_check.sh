#!/usr/bin/env bash
# The one command a lent GPU machine runs (one GPU; its image's Python 3.12 with
# NumPy 2, CuPy 14 for CUDA 13; no internet). First, HERE:
#   bash scripts/prepare_gpu_machine.sh      # the wheels, into .gpu_wheels/
# then on the GPU machine (the run tool, carrying .gpu_wheels):
#   bash scripts/gpu_check.sh [STEP ...]     # default: every step, in order
# Steps, each under its own timeout and all within GPU_CHECK_BUDGET seconds:
#   setup        install the carried wheels the machine lacks (Chainer 7.8.1,
#                MPICH + mpi4py, ...) from .gpu_wheels only, never the network
#   device       print the GPU (nvidia-smi; chainerkfac's device selection)
#   tests        pytest -m gpu (the GPU-marked tests; skips are skips, an
#                unusable GPU fails the step)
#   equivalence  mpiexec -n 2 on the one GPU through the 'mpi' communicator
#                vs one process (tests/mpi_scripts/gpu_equivalence.py)
#   smoke        train_imagenet.py --gpu: ResNet-50 (configs/bs4k_resnet50.json)
#                on generated 256x256 JPEGs, batch 16, 4 iterations
#   pack         benchmarks/pack_bandwidth.py (pack kernel vs a copy)
#   step_time    benchmarks/gpu_step_time.py (ResNet-50, 224, batch 32)
#   smoke_fp16   the smoke run with fp16 training (3 iterations)
#   comm_time    one step's collectives of ResNet-50 through 'mpi' (2 ranks
#                on the one GPU, pinned staging) and 'pure_nccl' (1 rank)
# It goes on past a failing step, writes every step's status and output, the
# figures, the device and the date to benchmarks/results/gpu_check_<UTC>.md
# (the whole output to .log beside it) and copies both into $OUT when set (the
# run tool's folder that comes back). Exit status 1 if any step failed, timed
# out or was not run, else 0.
# Stacks (GPU_CHECK_STACK):
#   image   the default: the machine's own Python 3.12, NumPy 2 and CuPy 14,
#           plus the carried wheels;
#   cudnn   the CuPy 13.6 + cuDNN 8.9 + CUDA 12.4 stack of
#           requirements-gpu-cudnn.txt (NumPy 1.26), the one whose
#           convolutions run through cuDNN: setup makes a venv of the image's
#           Python 3.12 from the wheels `scripts/prepare_gpu_machine.sh
#           --cudnn` puts into .gpu_wheels_cudnn (GPU_CHECK_CUDNN_WHEELS), no
#           network, and every later step runs on that venv's Python with its
#           NVIDIA libraries on LD_LIBRARY_PATH (CuPy 13 finds them only
#           there). Those wheels are over 1 GB (cuDNN 8.9's alone is about
#           700 MB): more than the run tool carries (64 MiB a call), so this
#           stack runs where the folder can be copied to the GPU machine;
#           the prepare script says so. One
#           run takes about as long as the image's, so name fewer steps, e.g.
#             GPU_CHECK_STACK=cudnn bash scripts/gpu_check.sh tests step_time
# Env: GPU_CHECK_WHEELS (.gpu_wheels), GPU_CHECK_PYTHON (python3),
#      GPU_CHECK_STACK (image), GPU_CHECK_CUDNN_WHEELS (.gpu_wheels_cudnn),
#      GPU_CHECK_TEST_PATHS (tests: what the tests step collects),
#      GPU_CHECK_BUDGET (570: the run tool ends a command at 600 s),
#      GPU_CHECK_RESULTS (benchmarks/results).
# Written on a machine without a GPU: this script has not run on one yet.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
self="$root/scripts/gpu_check.sh"
cd "$root"

ALL_STEPS=(setup device tests equivalence smoke pack step_time smoke_fp16 comm_time)
declare -A LIMIT=([setup]=150 [device]=60 [tests]=200 [equivalence]=120
                  [smoke]=180 [pack]=90 [step_time]=240 [smoke_fp16]=150
                  [comm_time]=180)

export GPU_CHECK_PYTHON="${GPU_CHECK_PYTHON:-python3}"
export GPU_CHECK_WHEELS="${GPU_CHECK_WHEELS:-$root/.gpu_wheels}"
export GPU_CHECK_STACK="${GPU_CHECK_STACK:-image}"
export GPU_CHECK_CUDNN_WHEELS="${GPU_CHECK_CUDNN_WHEELS:-${GPU_CHECK_WHEELS%/}_cudnn}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
py="$GPU_CHECK_PYTHON"

# ---------------------------------------------------------------- the steps
# Each runs as `bash gpu_check.sh __step NAME` under `timeout`; $GPU_CHECK_WORK
# is the run's scratch folder.

mpiexec_path() {  # the mpiexec next to the interpreter (as tests/mpi_helpers.py)
  echo "$(dirname "$("$py" -c 'import sys; print(sys.executable)')")/mpiexec"
}

cudnn_venv() { echo "$GPU_CHECK_WORK/venv-cudnn"; }

cudnn_library_path() {  # the nvidia/*/lib folders of the cudnn venv, joined by ':'
  ls -d "$(cudnn_venv)"/lib/python3.*/site-packages/nvidia/*/lib 2>/dev/null | paste -sd: -
}

step_setup() {
  if [ "$GPU_CHECK_STACK" = cudnn ] && [ ! -d "$GPU_CHECK_CUDNN_WHEELS" ]; then
    echo "gpu_check: no wheel folder $GPU_CHECK_CUDNN_WHEELS for the cudnn stack: run scripts/prepare_gpu_machine.sh --cudnn where PyPI is reachable and copy the .gpu_wheels_cudnn it fills here"
    return 1
  fi
  "$py" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' ||
    { echo "gpu_check: $py is not Python 3.12, the carried wheels are cp312"; return 1; }
  [ -d "$GPU_CHECK_WHEELS" ] || {
    echo "gpu_check: no wheel folder $GPU_CHECK_WHEELS: run scripts/prepare_gpu_machine.sh where PyPI is reachable and carry it"
    return 1; }
  if [ "$GPU_CHECK_STACK" = cudnn ]; then
    setup_cudnn
    return $?
  fi
  local want=(chainer mpich mpi4py) files=() name f
  "$py" -c 'import pkg_resources' 2>/dev/null || want+=(setuptools)
  "$py" -c 'import pytest, pytest_timeout' 2>/dev/null ||
    want+=(pytest pytest_timeout pluggy iniconfig packaging)
  "$py" -c 'import PIL' 2>/dev/null || want+=(pillow)
  "$py" -c 'import threadpoolctl' 2>/dev/null || want+=(threadpoolctl)
  for name in "${want[@]}"; do
    f="$(ls "$GPU_CHECK_WHEELS"/"$name"-[0-9]*.whl 2>/dev/null | head -n1)"
    [ -n "$f" ] || { echo "gpu_check: no $name wheel in $GPU_CHECK_WHEELS"; return 1; }
    files+=("$f")
  done
  echo "installing (no index, no dependencies): ${files[*]##*/}"
  "$py" -m pip install --no-index --no-deps --no-compile \
    --disable-pip-version-check -q "${files[@]}" || return 1
  [ -x "$(mpiexec_path)" ] || { echo "gpu_check: no mpiexec next to $py after installing MPICH"; return 1; }
  print_versions
}

setup_cudnn() {  # a venv of the CuPy 13.6 stack, from the prepared wheels only
  local venv; venv="$(cudnn_venv)"
  echo "making $venv: requirements-gpu-cudnn.txt from $GPU_CHECK_CUDNN_WHEELS and $GPU_CHECK_WHEELS (no index)"
  "$py" -m venv "$venv" || return 1
  "$venv/bin/python" -m pip install --no-index --no-compile -q \
    --disable-pip-version-check --find-links "$GPU_CHECK_CUDNN_WHEELS" \
    --find-links "$GPU_CHECK_WHEELS" -r requirements-gpu-cudnn.txt \
    'setuptools<70' || return 1
  py="$venv/bin/python"
  [ -x "$(mpiexec_path)" ] || { echo "gpu_check: no mpiexec in $venv after installing MPICH"; return 1; }
  LD_LIBRARY_PATH="$(cudnn_library_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" print_versions
}

print_versions() {
  "$py" - <<'EOF'
import sys
import chainerkfac  # first: makes Chainer 7.8.1 import on NumPy 2
import numpy, chainer, chainermn, mpi4py, PIL, pytest
from mpi4py import MPI
try:  # the device step says whether it is usable
    import cupy
    cupy_version = cupy.__version__
except Exception as e:
    cupy_version = 'not importable ({}: {})'.format(type(e).__name__, e)
print('Python {} NumPy {} CuPy {} Chainer {} mpi4py {} ({}) Pillow {} '
      'pytest {}'.format(sys.version.split()[0], numpy.__version__,
                         cupy_version, chainer.__version__,
                         mpi4py.__version__,
                         MPI.Get_library_version().splitlines()[0].strip(),
                         PIL.__version__, pytest.__version__))
EOF
}

step_device() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    2>&1 | sed 's/^/nvidia-smi: /'
  "$py" - <<'EOF' | tee "$GPU_CHECK_WORK/device.txt"
from chainerkfac.training import device
print(device.describe(device.select_gpu_or_exit('gpu_check')))
EOF
}

step_tests() {
  # the equivalence step runs the two-rank GPU run itself; plugins of the
  # image (xdist, cov, ...) stay off. pytest's exit status is the verdict:
  # a skip is a skip, whatever its reason says (an image without NCCL skips
  # the NCCL adapter's tests, naming why; -rs lists every reason). Only a
  # GPU that is not usable at all fails the step, and it does so before any
  # test runs: CHAINERKFAC_REQUIRE_GPU=1 makes tests/conftest.py end the run
  # with one line (exit status 4) instead of skipping every gpu test.
  # GPU_CHECK_TEST_PATHS (default: tests) narrows what is collected.
  local out="$GPU_CHECK_WORK/pytest.out"
  # shellcheck disable=SC2086  # the paths are words
  CHAINERKFAC_REQUIRE_GPU=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 \
    "$py" -m pytest -m gpu -q -rs -p no:cacheprovider -p pytest_timeout \
    --timeout 240 \
    --deselect tests/test_gpu_entry_points.py::test_gpu_equivalence_two_ranks_one_gpu \
    ${GPU_CHECK_TEST_PATHS:-tests} 2>&1 | tee "$out"
  return "${PIPESTATUS[0]}"
}

step_equivalence() {
  local out="$GPU_CHECK_WORK/equivalence.out"
  PYTHONPATH="$root:$root/tests:$PYTHONPATH" OMP_NUM_THREADS=2 \
    "$(mpiexec_path)" -n 2 "$py" tests/mpi_scripts/gpu_equivalence.py \
    2>&1 | tee "$out"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] && [ "$(grep -o 'OK rank' "$out" | wc -l)" -eq 2 ]
}

make_images() {
  local d="$GPU_CHECK_WORK/imagenet"
  [ -f "$d/val.txt" ] || "$py" scripts/gpu_check/make_imagenet_like.py "$d" >&2
  echo "$d"
}

smoke_run() {  # smoke_run NAME CONFIG ITERATIONS
  local d out="$GPU_CHECK_WORK/$1"
  d="$(make_images)" || return 1
  "$py" train_imagenet.py "$d/train.txt" "$d/val.txt" --train_root "$d/train" \
    --val_root "$d/val" --config "$2" --gpu --batchsize 16 --val_batchsize 16 \
    --iterations "$3" --log_interval 1 --loaderjob 4 --no_progress \
    --out "$out" 2>&1 | tee "$out.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
  grep -q "final: iteration $3 validation accuracy" "$out.txt" ||
    { echo "gpu_check: no final validation line"; return 1; }
  "$py" - "$out" "$3" <<'EOF'
import json, math, sys
import numpy
out, n = sys.argv[1], int(sys.argv[2])
log = json.load(open(out + '/log'))
losses = [e['main/loss'] for e in log]
assert len(losses) == n and all(math.isfinite(v) for v in losses), losses
with numpy.load('{}/snapshot_iter_{}/shared.npz'.format(out, n)) as f:
    ws = {k: f[k] for k in f.files if k.startswith('updater/model:main/')}
assert ws and all(numpy.isfinite(w).all() for w in ws.values())
print('checked: losses {} finite; {} arrays in the snapshot, dtypes {}, '
      'all finite'.format(['%.4f' % v for v in losses], len(ws),
                          sorted(set(str(w.dtype) for w in ws.values()))))
EOF
}

step_smoke() { smoke_run smoke configs/bs4k_resnet50.json 4; }
step_smoke_fp16() {
  local d
  d="$(make_images)" || return 1
  smoke_run smoke_fp16 "$d/fp16.json" 3 || return 1
  "$py" - "$GPU_CHECK_WORK/smoke_fp16/snapshot_iter_3/shared.npz" <<'EOF'
import sys
import numpy
with numpy.load(sys.argv[1]) as f:
    w = f['updater/model:main/predictor/fc/W']
assert w.dtype == numpy.float16, w.dtype
print('checked: fc/W is float16')
EOF
}
step_pack() { "$py" benchmarks/pack_bandwidth.py; }
step_step_time() { "$py" benchmarks/gpu_step_time.py; }
step_comm_time() {
  "$(mpiexec_path)" -n 2 "$py" benchmarks/comm_volume.py --time mpi --gpu --repeat 3 &&
    "$py" benchmarks/comm_volume.py --time pure_nccl --gpu --repeat 3
}

if [ "${1:-}" = __step ]; then
  "step_$2"
  exit $?
fi

# ------------------------------------------------------------------ driver
case "$GPU_CHECK_STACK" in
  image|cudnn) ;;
  *) echo "gpu_check: unknown GPU_CHECK_STACK '$GPU_CHECK_STACK'; stacks: image cudnn" >&2; exit 2 ;;
esac
steps=("$@")
[ "${#steps[@]}" -gt 0 ] || steps=("${ALL_STEPS[@]}")
for s in "${steps[@]}"; do
  [ -n "${LIMIT[$s]:-}" ] || { echo "gpu_check: unknown step '$s'; steps: ${ALL_STEPS[*]}" >&2; exit 2; }
done
# setup first whenever it is asked for or anything needs it (a fresh machine
# is bare)
if [ "${steps[0]}" != setup ]; then
  steps=(setup "${steps[@]/setup/}")
fi

start=$(date +%s)
deadline=$((start + ${GPU_CHECK_BUDGET:-570}))
stamp="$(date -u +%Y-%m-%dT%H%M%SZ)"
results_dir="${GPU_CHECK_RESULTS:-benchmarks/results}"
mkdir -p "$results_dir"
suffix=""
[ "$GPU_CHECK_STACK" = image ] || suffix="_$GPU_CHECK_STACK"
results="$results_dir/gpu_check_$stamp$suffix.md"
log="$results_dir/gpu_check_$stamp$suffix.log"
GPU_CHECK_WORK="$(mktemp -d /tmp/gpu_check.XXXXXX)"
export GPU_CHECK_WORK
exec > >(tee -a "$log") 2>&1
tee_pid=$!

if git rev-parse HEAD >/dev/null 2>&1; then
  tree="commit $(git rev-parse HEAD)"
elif [ -f "$GPU_CHECK_WHEELS/TREE" ]; then   # written by prepare_gpu_machine.sh
  tree="no git metadata here; wheels prepared at $(tr '\n' ';' < "$GPU_CHECK_WHEELS/TREE")"
else
  tree="no git metadata on this machine"
fi
names=() statuses=() seconds=()
failed=0
: > "$GPU_CHECK_WORK/sections.md"

write_results() {
  {
    echo "# gpu_check $stamp"
    echo
    echo "- date (UTC): $(date -u '+%Y-%m-%d %H:%M:%S')"
    if [ -s "$GPU_CHECK_WORK/device.txt" ]; then
      echo "- device: $(cat "$GPU_CHECK_WORK/device.txt")"
    else
      echo "- device: not read (the device step did not run or failed)"
    fi
    echo "- nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n1 || true)"
    echo "- host: $(hostname), $(nproc) cores; Python: $("$py" --version 2>&1)"
    echo "- tree: $tree"
    if [ "$GPU_CHECK_STACK" = cudnn ]; then
      echo "- stack: cudnn (requirements-gpu-cudnn.txt: CuPy 13.6, cuDNN 8.9, CUDA 12.4, NumPy 1.26, in a venv from $GPU_CHECK_CUDNN_WHEELS)"
    else
      echo "- stack: image (its Python, NumPy and CuPy, plus the carried wheels)$( [ -d "$GPU_CHECK_CUDNN_WHEELS" ] && echo "; the cudnn stack's wheels are here: GPU_CHECK_STACK=cudnn runs it" )"
    fi
    echo "- budget ${GPU_CHECK_BUDGET:-570} s; elapsed $(( $(date +%s) - start )) s; steps asked: ${steps[*]}"
    echo
    echo "| step | status | seconds |"
    echo "| --- | --- | --- |"
    local i
    for i in "${!names[@]}"; do
      echo "| ${names[$i]} | ${statuses[$i]} | ${seconds[$i]} |"
    done
    echo
    cat "$GPU_CHECK_WORK/sections.md"
  } > "$results"
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$results" "$log" "$OUT/" 2>/dev/null || true
  fi
}

record() {  # record NAME STATUS SECONDS [OUTPUT_FILE]
  names+=("$1"); statuses+=("$2"); seconds+=("$3")
  {
    echo "## $1: $2 (${3} s)"
    echo
    if [ -n "${4:-}" ] && [ -s "$4" ]; then
      echo '```'
      local n; n=$(wc -l < "$4")
      if [ "$n" -gt 150 ]; then echo "[... first $((n - 150)) lines in the .log ...]"; fi
      tail -n 150 "$4"
      echo '```'
      echo
    fi
  } >> "$GPU_CHECK_WORK/sections.md"
  write_results
}

setup_ok=1
for s in "${steps[@]}"; do
  [ -n "$s" ] || continue
  if [ "$s" != setup ] && [ "$setup_ok" = 0 ]; then
    record "$s" "NOT RUN (setup failed)" 0; failed=1; continue
  fi
  left=$((deadline - $(date +%s) - 5))
  limit=${LIMIT[$s]}
  if [ "$left" -lt 20 ]; then
    record "$s" "NOT RUN (budget spent)" 0; failed=1; continue
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo
  echo "=== gpu_check: $s (timeout ${limit} s) ==="
  t0=$(date +%s)
  timeout -k 10 "$limit" bash "$self" __step "$s" 2>&1 | tee "$GPU_CHECK_WORK/$s.out"
  rc=${PIPESTATUS[0]}
  dt=$(( $(date +%s) - t0 ))
  case "$rc" in
    0) status=PASS ;;
    124|137) status="TIMEOUT after ${limit} s"; failed=1 ;;
    *) status="FAIL (exit $rc)"; failed=1 ;;
  esac
  [ "$s" != setup ] || [ "$rc" = 0 ] || setup_ok=0
  if [ "$s" = setup ] && [ "$rc" = 0 ] && [ "$GPU_CHECK_STACK" = cudnn ]; then
    # every later step on the venv's Python, CuPy 13 finding its libraries
    GPU_CHECK_PYTHON="$(cudnn_venv)/bin/python"; py="$GPU_CHECK_PYTHON"
    LD_LIBRARY_PATH="$(cudnn_library_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export GPU_CHECK_PYTHON LD_LIBRARY_PATH
  fi
  echo "=== gpu_check: $s: $status (${dt} s) ==="
  record "$s" "$status" "$dt" "$GPU_CHECK_WORK/$s.out"
done

echo
echo "=== gpu_check summary ($(( $(date +%s) - start )) s; results: $results) ==="
for i in "${!names[@]}"; do
  printf '%-12s %s (%s s)\n' "${names[$i]}" "${statuses[$i]}" "${seconds[$i]}"
done
write_results
# let tee finish the log before the last copy
exec >&- 2>&-
wait "$tee_pid" 2>/dev/null || true
write_results
exit "$failed"
