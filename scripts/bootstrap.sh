#!/usr/bin/env bash
# Creates (once) the project's virtual environment in .venv and installs what the
# project needs from its own files: Debian's Fashion-MNIST package and the pinned PyPI
# requirements. Re-running is cheap: it only re-installs when requirements.txt changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CHAINERKFAC_VENV:-$root/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian package dataset-fashion-mnist" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null
  else
    echo "bootstrap: Fashion-MNIST missing; run 'sudo apt-get install dataset-fashion-mnist'" >&2
  fi
fi

stamp="$venv/.requirements.sha256"
want="$(sha256sum "$root/requirements.txt" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

echo "bootstrap: building $venv (first run takes a few minutes)" >&2
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# Chainer 7.8.1's setup.py imports pkg_resources (gone from new setuptools), so build it
# without isolation against a setuptools that still ships it.
"${pip[@]}" "setuptools<70" wheel
"${pip[@]}" "numpy==1.26.4"
"${pip[@]}" --no-build-isolation "chainer==7.8.1"
"${pip[@]}" -r "$root/requirements.txt"
"${pip[@]}" --no-deps -e "$root"
echo "$want" > "$stamp"
