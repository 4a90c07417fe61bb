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
#     and their needs, and Pillow, at the versions pinned in requirements.txt.
# gpu_check.sh installs only those the machine lacks. Re-running is cheap:
# wheels already in the folder are kept.
#   bash scripts/prepare_gpu_machine.sh [DEST]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dest="${1:-$root/.gpu_wheels}"
cache="${CHAINERKFAC_WHEELS:-$root/.wheels}"   # bootstrap.sh's cache, if any
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

pip_download=(.venv/bin/python -m pip download -q --disable-pip-version-check
  --only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64
  --platform manylinux1_x86_64 -d "$dest")
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
"${pip_download[@]}" --no-deps "mpich==$(pin mpich)" "mpi4py==$(pin mpi4py)" \
  "pillow==$(pin pillow)" "setuptools<70"
"${pip_download[@]}" "pytest==$(pin pytest)" "pytest-timeout==$(pin pytest-timeout)"

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
