#!/usr/bin/env bash
# The README's demo: sets up .venv and Debian's Fashion-MNIST if needed, then
# trains a small CNN with K-FAC on CPU. Extra arguments go to the script.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
exec .venv/bin/python examples/train_fashion_mnist.py --out result/demo "$@"
