#!/usr/bin/env bash
# Creates (once) a virtual environment and installs what the project needs
# from its own files: Debian's Fashion-MNIST package and the pinned PyPI
# requirements. Re-running is cheap: it only rebuilds when the requirements
# file or this script changed. This is the one place that knows how Chainer
# 7.8.1 is installed.
#   CHAINERKFAC_VENV          where (default .venv)
#   CHAINERKFAC_REQUIREMENTS  which pins (default requirements.txt)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CHAINERKFAC_VENV:-$root/.venv}"
requirements="${CHAINERKFAC_REQUIREMENTS:-$root/requirements.txt}"
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
want="$(cat "$requirements" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

echo "bootstrap: building $venv from $(basename "$requirements") (first run takes a few minutes)" >&2
"$python" -m venv --clear "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# Chainer 7.8.1 is an sdist whose setup.py imports pkg_resources, which new
# setuptools lack (82 removed it; Chainer also imports it at run time): build
# it without isolation against a setuptools that still ships it, and keep
# that setuptools installed. Every other requirement is a wheel.
"${pip[@]}" "setuptools<70" wheel
"${pip[@]}" --no-build-isolation -r "$requirements"
"${pip[@]}" --no-build-isolation --no-deps -e "$root"
echo "$want" > "$stamp"
