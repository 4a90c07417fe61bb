#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI) before scripts/gpu_check.sh runs on a
# lent GPU machine, which has no internet: puts every wheel gpu_check.sh may
# install there into one folder (default .gpu_wheels/, kept out of git through
# .git/info/exclude) for the run tool's `carry`:
#   - Chainer 7.8.1 as a wheel (pure Python; taken from scripts/bootstrap.sh's
#     wheel cache when there is one, else built here from its sdist the way
#     bootstrap.sh builds it: no build isolation, setuptools with pkg_resources);
#   - for CPython 3.12 on manylinux x86-64 (the GPU image's Python): the MPICH
#     and mpi4py wheels, setuptools<70 (pkg_resources), pytest, pytest-timeout
#     and their needs, Pillow and threadpoolctl, at the versions pinned in
#     requirements.txt.
# gpu_check.sh installs only those the machine lacks. Re-running is cheap:
# wheels already in the folder are kept.
#   bash scripts/prepare_gpu_machine.sh [--cudnn] [DEST]
# --cudnn also puts into DEST_cudnn/ every wheel of the CuPy 13.6 + cuDNN 8.9
# stack (requirements-gpu-cudnn.txt with requirements.txt, Chainer's own
# requirements and setuptools<70; Chainer itself is DEST's wheel), for CPython
# 3.12 on manylinux x86-64, with their dependencies: what
#   GPU_CHECK_STACK=cudnn bash scripts/gpu_check.sh [STEP ...]
# installs into a venv there. That folder is over 1 GB (the cuDNN 8.9 wheel
# alone is about 700 MB), more than the run tool carries (64 MiB a call): copy
# it to a GPU machine that can receive it (to .gpu_wheels_cudnn, or point
# GPU_CHECK_CUDNN_WHEELS at it); the script ends by saying its size. (A folder
# beside DEST, not in it: DEST still travels through carry for the image's
# stack.) --print-requirements prints that
# stack's requirement list and stops (nothing is downloaded).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cudnn=0 print_only=0 positional=()
for arg in "$@"; do
  case "$arg" in
    --cudnn) cudnn=1 ;;
    --print-requirements) cudnn=1; print_only=1 ;;
    -*) echo "prepare_gpu_machine: unknown option $arg (options: --cudnn, --print-requirements)" >&2; exit 2 ;;
    *) positional+=("$arg") ;;
  esac
done
dest="${positional[0]:-$root/.gpu_wheels}"
cache="${CHAINERKFAC_WHEELS:-$root/.wheels}"   # bootstrap.sh's cache, if any

requirement_lines() {  # FILE: its requirement lines, those of -r files included
  local file="$1" dir line
  dir="$(cd "$(dirname "$file")" && pwd)"
  while read -r line || [ -n "$line" ]; do
    line="${line%%#*}"
    line="$(echo "$line" | tr -d '[:space:]')"
    case "$line" in
      '') ;;
      -r*) requirement_lines "$dir/${line#-r}" ;;
      *) echo "$line" ;;
    esac
  done < "$file"
}

cudnn_requirements() {  # the cudnn stack without Chainer (an sdist: DEST has its wheel)
  requirement_lines requirements-gpu-cudnn.txt | grep -v '^chainer=='
  # Chainer 7.8.1's own requirements (its wheel's Requires-Dist; numpy is pinned above)
  echo 'filelock'; echo 'protobuf>=3.0.0'; echo 'six>=1.9.0'; echo 'typing_extensions'
  echo 'setuptools<70'   # pkg_resources, which Chainer imports
}

if [ "$print_only" = 1 ]; then
  cudnn_requirements
  exit 0
fi
mkdir -p "$dest"

# keep the folder out of git (and so out of the tree that travels, except
# through carry)
rel="${dest#"$root"/}"
if [ "$rel" != "$dest" ]; then
  exclude="$(git rev-parse --git-path info/exclude)"
  mkdir -p "$(dirname "$exclude")"
  grep -qxF "/$rel/" "$exclude" 2>/dev/null || echo "/$rel/" >> "$exclude"
fi

pin() {  # pin NAME: the version requirements.txt pins
  local v
  v="$(sed -n "s/^$1==\([^ #]*\).*/\1/p" requirements.txt | head -n1)"
  [ -n "$v" ] || { echo "prepare_gpu_machine: no $1== pin in requirements.txt" >&2; exit 1; }
  echo "$v"
}

chainer_version="$(pin chainer)"
if ! ls "$dest"/chainer-"$chainer_version"-*.whl >/dev/null 2>&1; then
  cached="$(ls "$cache"/chainer-"$chainer_version"-*.whl 2>/dev/null | head -n1 || true)"
  if [ -n "$cached" ]; then
    cp "$cached" "$dest/"
  else
    bash scripts/bootstrap.sh   # .venv: a Python with setuptools<70 and wheel
    echo "prepare_gpu_machine: building the Chainer $chainer_version wheel" >&2
    .venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps \
      --no-build-isolation -w "$dest" "chainer==$chainer_version"
  fi
fi

pip_download() {  # pip_download FOLDER ARGS...: cp312 manylinux x86-64 wheels
  local folder="$1"; shift
  .venv/bin/python -m pip download -q --disable-pip-version-check \
    --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux1_x86_64 -d "$folder" "$@"
}
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
pip_download "$dest" --no-deps "mpich==$(pin mpich)" "mpi4py==$(pin mpi4py)" \
  "pillow==$(pin pillow)" "threadpoolctl==$(pin threadpoolctl)" "setuptools<70"
pip_download "$dest" "pytest==$(pin pytest)" "pytest-timeout==$(pin pytest-timeout)"

if [ "$cudnn" = 1 ]; then
  stack="${dest%/}_cudnn"
  mkdir -p "$stack"
  srel="${stack#"$root"/}"
  if [ "$srel" != "$stack" ]; then   # out of git, like DEST
    sexclude="$(git rev-parse --git-path info/exclude)"
    mkdir -p "$(dirname "$sexclude")"
    grep -qxF "/$srel/" "$sexclude" 2>/dev/null || echo "/$srel/" >> "$sexclude"
  fi
  reqs="$(mktemp)"
  cudnn_requirements > "$reqs"
  echo "prepare_gpu_machine: downloading the cudnn stack (CuPy 13.6, cuDNN 8.9, CUDA 12.4) into $stack" >&2
  pip_download "$stack" -r "$reqs"
  rm -f "$reqs"
  sdups="$(ls "$stack"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
  if [ -n "$sdups" ]; then
    echo "prepare_gpu_machine: several versions of: $sdups in $stack; remove the old ones" >&2
    exit 1
  fi
  mib="$(du -sm "$stack" | cut -f1)"
  echo "prepare_gpu_machine: $stack holds $mib MiB" >&2
  if [ "$mib" -gt 64 ]; then
    echo "prepare_gpu_machine: that is more than the run tool carries (64 MiB a call):" \
      "the cudnn stack runs only on a GPU machine this folder can be copied to" \
      "(as .gpu_wheels_cudnn beside .gpu_wheels, or GPU_CHECK_CUDNN_WHEELS=PATH), with:" \
      "GPU_CHECK_STACK=cudnn bash scripts/gpu_check.sh [STEP ...]" >&2
  fi
fi

# which tree these were prepared for (the GPU machine's copy has no .git)
{
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "uncommitted changes: $(git status --short 2>/dev/null | grep -vc '^??' || true)"
  echo "prepared (UTC): $(date -u '+%Y-%m-%d %H:%M:%S')"
} > "$dest/TREE"

# one version of each (a second one would stop the install there)
dups="$(ls "$dest"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
if [ -n "$dups" ]; then
  echo "prepare_gpu_machine: several versions of: $dups in $dest; remove the old ones" >&2
  exit 1
fi
du -sh "$dest" | sed 's/^/prepare_gpu_machine: /' >&2
ls "$dest" >&2
echo "prepare_gpu_machine: carry \"${rel}\" with: bash scripts/gpu_check.sh" >&2
