#!/usr/bin/env bash
# The README's demo: sets up .venv and Debian's Fashion-MNIST if needed, exports
# Fashion-MNIST once into an ImageNet-layout folder (data/fashion_mnist: PNGs and
# train/val list files), then trains a small ResNet with distributed K-FAC on 2
# CPU processes: mpiexec -n 2 python train_imagenet.py ... Extra arguments go to
# train_imagenet.py (e.g. --epoch 2); the output goes to result/demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
.venv/bin/python scripts/export_fashion_mnist.py data/fashion_mnist
# train_imagenet.py's main() configures glibc's allocator itself (freed memory is
# reused, not returned and faulted in again: chainerkfac/training/allocator.py)
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
exec .venv/bin/mpiexec -n 2 .venv/bin/python -W ignore::DeprecationWarning \
  train_imagenet.py data/fashion_mnist/train.txt data/fashion_mnist/val.txt \
  --train_root data/fashion_mnist/train --val_root data/fashion_mnist/val \
  --config configs/demo_fashion_mnist.json --channels 1 --n_class 10 \
  --out result/demo --log_interval 50 "$@"
