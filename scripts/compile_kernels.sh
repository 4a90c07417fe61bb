#!/usr/bin/env bash
# Compiles every chainerkfac/cuda/kernels/*.cu with nvcc for sm_80 and sm_90
# (C++17, warnings are errors, no multiply-add contraction as at run time),
# keeps ptxas's register/spill report in build/ptxas/<file>.<arch>.txt and
# prints one line per kernel and arch:
#   <file> <arch> <kernel> registers=<n> spill_stores=<bytes> spill_loads=<bytes>
# Exits non-zero if any compilation fails. NVCC overrides the compiler;
# KERNEL_DIR and BUILD_DIR the folders (default: the package's, build/).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
nvcc_bin=${NVCC:-nvcc}
if ! command -v "$nvcc_bin" > /dev/null 2>&1; then
  echo "compile_kernels.sh: $nvcc_bin not found" >&2
  exit 2
fi
kernel_dir=${KERNEL_DIR:-chainerkfac/cuda/kernels}
build=${BUILD_DIR:-build}
mkdir -p "$build/ptxas" "$build/obj" || exit 1
status=0
shopt -s nullglob
files=("$kernel_dir"/*.cu)
if [ ${#files[@]} -eq 0 ]; then
  echo "compile_kernels.sh: no .cu files" >&2
  exit 1
fi
summary="$build/ptxas/summary.txt"
: > "$summary"
for cu in "${files[@]}"; do
  name=$(basename "$cu" .cu)
  for arch in sm_80 sm_90; do
    report="$build/ptxas/$name.$arch.txt"
    if "$nvcc_bin" -std=c++17 -arch="$arch" -fmad=false \
        -Werror all-warnings -Xptxas -v \
        -c "$cu" -o "$build/obj/$name.$arch.o" > "$report" 2>&1; then
      # ptxas prints, per kernel: "Compiling entry function 'k' for 'sm_80'",
      # "... N bytes spill stores, M bytes spill loads", "Used R registers".
      awk -v file="$name.cu" -v arch="$arch" '
        /Compiling entry function/ {
          match($0, /function \047[^\047]+\047/)
          kernel = substr($0, RSTART + 10, RLENGTH - 11)
        }
        /bytes spill stores/ {
          for (i = 1; i <= NF; i++) {
            if ($(i + 1) == "bytes" && $(i + 2) == "spill" && $(i + 3) == "stores,") stores = $i
            if ($(i + 1) == "bytes" && $(i + 2) == "spill" && $(i + 3) == "loads") loads = $i
          }
        }
        /Used [0-9]+ registers/ {
          for (i = 1; i <= NF; i++) if ($i == "Used") regs = $(i + 1)
          printf "%s %s %s registers=%s spill_stores=%s spill_loads=%s\n", \
            file, arch, kernel, regs, stores, loads
        }' "$report" | tee -a "$summary"
    else
      echo "FAILED: $cu for $arch:" >&2
      cat "$report" >&2
      status=1
    fi
  done
done
exit $status
