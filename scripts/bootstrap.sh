#!/usr/bin/env bash
# Creates (once) a virtual environment and installs what the project needs
# from its own files: Debian's Fashion-MNIST package and the pinned PyPI
# requirements. Re-running is cheap: it only rebuilds when a requirements file
# it reads (with the files those include by -r), the interpreter or the recipe
# below changed. This is the one place that knows how Chainer 7.8.1 is
# installed, and the one place that installs.
#   CHAINERKFAC_VENV            where (default .venv)
#   CHAINERKFAC_REQUIREMENTS    which pins (default requirements.txt; the
#                               requirements-*.txt files say what each is for)
#   CHAINERKFAC_PYTHON_VERSION  e.g. 3.12: find that interpreter ($PYTHON, then
#                               pythonX.Y on PATH, then ~/.pyenv/versions/X.Y*,
#                               /usr/local/bin, /usr/bin); exit status 3, with
#                               a message naming it, when there is none
#   PYTHON                      the interpreter (default python3.11, else python3)
#   CHAINERKFAC_WHEELS          the wheel cache (default .wheels)
#
# The Chainer wheel: Chainer 7.8.1 exists only as an sdist, whose setup.py
# imports pkg_resources, which new setuptools lack (82 removed it; Chainer also
# imports it at run time). It is built ONCE, without build isolation against
# setuptools<70, into
#     .wheels/chainer-7.8.1-py3-none-any.whl      (pure Python: any 3.x venv)
# and every venv installs that file (pip --find-links .wheels), each keeping
# setuptools<82 installed. The path is stable: a machine without internet (the
# lent GPU machine) gets that file carried to it. .wheels/ is kept out of git
# by the .gitignore this script writes inside it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CHAINERKFAC_VENV:-$root/.venv}"
requirements="${CHAINERKFAC_REQUIREMENTS:-$root/requirements.txt}"
wheels="${CHAINERKFAC_WHEELS:-$root/.wheels}"
chainer_wheel="$wheels/chainer-7.8.1-py3-none-any.whl"
# Bump when the install steps below change (rebuilds every venv once).
recipe='3: chainer from .wheels; setuptools<70 kept'

runs_as() {  # runs_as PYTHON X.Y: the interpreter starts and is version X.Y
  "$1" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$2'.split('.'))))" \
    >/dev/null 2>&1
}

if [ -n "${CHAINERKFAC_PYTHON_VERSION:-}" ]; then
  want_version="$CHAINERKFAC_PYTHON_VERSION"
  python=""
  for candidate in ${PYTHON:-} "python$want_version" \
      $(ls -d "$HOME"/.pyenv/versions/"$want_version"*/bin/python"$want_version" 2>/dev/null | sort -rV) \
      "/usr/local/bin/python$want_version" "/usr/bin/python$want_version"; do
    if runs_as "$candidate" "$want_version"; then python="$candidate"; break; fi
  done
  if [ -z "$python" ]; then
    echo "bootstrap: no Python $want_version interpreter (looked for \$PYTHON, python$want_version" \
      "on PATH, ~/.pyenv/versions/$want_version*/bin, /usr/local/bin, /usr/bin)" >&2
    exit 3
  fi
else
  python="${PYTHON:-python3.11}"
  command -v "$python" >/dev/null 2>&1 || python=python3
fi

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian package dataset-fashion-mnist" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null
  else
    echo "bootstrap: Fashion-MNIST missing; run 'sudo apt-get install dataset-fashion-mnist'" >&2
  fi
fi

requirement_files() {  # FILE and, recursively, the files it includes with -r
  local file="$1" dir line
  dir="$(cd "$(dirname "$file")" && pwd)"
  echo "$file"
  while read -r line; do
    case "$line" in
      -r\ *|--requirement\ *) requirement_files "$dir/${line#* }" ;;
    esac
  done < "$file"
}

stamp="$venv/.requirements.sha256"
want="$( { for f in $(requirement_files "$requirements"); do cat "$f"; done
           echo "$recipe"; "$python" -VV; } | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

# One build at a time (test.sh legs, several shells): the others wait here,
# then find the stamp written.
if command -v flock >/dev/null 2>&1; then
  exec 9<"${BASH_SOURCE[0]}"
  flock 9
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
fi

echo "bootstrap: building $venv ($("$python" -V)) from $(basename "$requirements") (first run takes a few minutes)" >&2
"$python" -m venv --clear "$venv"
echo '*' > "$venv/.gitignore"  # as Python >= 3.13 does: git ignores the venv
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# setuptools<70 builds the Chainer wheel and provides pkg_resources at run time.
"${pip[@]}" "setuptools<70" wheel
if [ ! -f "$chainer_wheel" ]; then
  echo "bootstrap: building $chainer_wheel (once)" >&2
  mkdir -p "$wheels"
  echo '*' > "$wheels/.gitignore"
  tmp="$(mktemp -d "$wheels/.build.XXXXXX")"
  "$venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps \
    --no-build-isolation -w "$tmp" chainer==7.8.1
  mv "$tmp/$(basename "$chainer_wheel")" "$chainer_wheel"
  rm -rf "$tmp"
fi
# Chainer resolves to the wheel (--find-links); every other requirement is a
# wheel from the index.
"${pip[@]}" --no-build-isolation --find-links "$wheels" -r "$requirements"
"${pip[@]}" --no-build-isolation --no-deps -e "$root"
# CuPy 13 (requirements-gpu-cudnn.txt) finds the CUDA and cuDNN libraries of the
# nvidia-*-cu12 wheels only on LD_LIBRARY_PATH: the venv's bin/activate adds
# them. (CuPy 14 finds its own through cuda-pathfinder: nothing to add.)
# (A CPU venv has no nvidia/ folder: ls fails there, which must not end the
# script under `set -e -o pipefail`.)
nvidia_libs="$(cd "$venv" && { ls -d "$PWD"/lib/python3*/site-packages/nvidia/*/lib 2>/dev/null || true; } | paste -sd: -)"
if [ -d "$venv/lib/python3"*/site-packages/nvidia/cudnn/lib ] 2>/dev/null; then
  cat >> "$venv/bin/activate" <<EOF

# Added by scripts/bootstrap.sh: CuPy 13 finds these pip CUDA/cuDNN libraries
# only on LD_LIBRARY_PATH.
export LD_LIBRARY_PATH="$nvidia_libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF
fi
echo "$want" > "$stamp"
