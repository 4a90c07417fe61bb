#!/usr/bin/env python
"""Test accuracy of K-FAC with stale statistics vs every-step statistics.

Fashion-MNIST (60k train / 10k test), mini-batch 2048, the same fixed number
of steps, same seed, same initial weights and batches for both runs;
reports test accuracy, the fraction of statistics refreshed over the run
and the wall time of each. Target: |difference| <= 0.5 percentage points.

    .venv/bin/python benchmarks/stale_accuracy.py [--steps 90] [--arch demo]

``--gpu`` trains and evaluates on GPU 0 (the data stay on the CPU; each
batch is sent); it has not run on a GPU from this repository's machines yet.
"""
import argparse
import copy
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2 (the
# CuPy 14 stack; chainerkfac/_compat.py)
import chainerkfac  # NOQA: E402
import chainer  # NOQA: E402
import chainer.functions as F  # NOQA: E402
import numpy  # NOQA: E402
from chainerkfac.datasets import load_fashion_mnist  # NOQA: E402
from chainerkfac.training import allocator  # NOQA: E402
from chainerkfac.training import device as device_module  # NOQA: E402
from models import small_cnn  # NOQA: E402

ARCHS = {'demo': small_cnn.DemoCNN, 'small': small_cnn.SmallCNN}


def to(device, array):
    return array if device is None else device.send(array)


def accuracy(model, x, t, batchsize=2000, device=None):
    correct = 0
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        for i in range(0, len(x), batchsize):
            y = chainer.backends.cuda.to_cpu(
                model(to(device, x[i:i + batchsize])).array)
            correct += int((y.argmax(axis=1) == t[i:i + batchsize]).sum())
    return correct / len(x)


def train(base, settings, x, t, steps, batchsize, seed, device=None):
    model = copy.deepcopy(base)
    if device is not None:
        model.to_device(device)
    opt = chainerkfac.KFAC(**settings)
    opt.setup(model)
    order = numpy.random.RandomState(seed)
    perm = order.permutation(len(x))
    refreshed, start = [], time.perf_counter()
    for step in range(steps):
        lo = (step * batchsize) % len(x)
        if lo + batchsize > len(x):
            perm = order.permutation(len(x))
            lo = 0
        idx = perm[lo:lo + batchsize]

        def lossfun(xb, tb):
            return F.softmax_cross_entropy(model(xb), tb)
        opt.update(lossfun, to(device, x[idx]), to(device, t[idx]))
        refreshed.append(sum(len(b.due) for b in opt.fisher_blocks) / sum(
            len(b.statistic_names) for b in opt.fisher_blocks))
    device_module.synchronize(device)
    return model, time.perf_counter() - start, float(numpy.mean(refreshed))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=90)
    parser.add_argument('--batchsize', type=int, default=2048)
    parser.add_argument('--arch', choices=sorted(ARCHS), default='demo')
    parser.add_argument('--lr', type=float, default=0.05)
    parser.add_argument('--damping', type=float, default=3e-3)
    parser.add_argument('--cov-ema-decay', type=float, default=0.1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--gpu', action='store_true',
                        help='on GPU 0 (CuPy); stops with one line without')
    args = parser.parse_args()
    allocator.configure_allocator()   # reuse freed host memory (no-op on GPU)
    chainerkfac.use_float64_bn_statistics()   # CPU BN batch sums in float64
    device = None
    if args.gpu:
        device = device_module.select_gpu_or_exit('stale_accuracy.py')
        print(device_module.describe(device), flush=True)
    x, t = load_fashion_mnist('train')
    xt, tt = load_fashion_mnist('test')
    numpy.random.seed(args.seed)
    base = ARCHS[args.arch]()
    common = dict(lr=args.lr, momentum=0.9, damping=args.damping,
                  cov_ema_decay=args.cov_ema_decay, bn_fisher='unit')
    rows = []
    for name, extra in (('every step', dict(stale=False)),
                        ('stale', dict(stale=True))):
        model, seconds, frac = train(base, dict(common, **extra), x, t,
                                     args.steps, args.batchsize, args.seed,
                                     device)
        rows.append((name, accuracy(model, xt, tt, device=device), frac,
                     seconds))
        print('{:<11} test accuracy {:.4f}  refreshed {:.3f}  wall {:.0f} s'
              .format(*rows[-1]), flush=True)
    diff = 100 * (rows[1][1] - rows[0][1])
    print('{} {} steps of {} ({:.1f} epochs), settings {}'.format(
        args.arch, args.steps, args.batchsize,
        args.steps * args.batchsize / len(x), common))
    print('stale - every step: {:+.2f} percentage points (target |.| <= 0.5);'
          ' wall time ratio {:.2f}'.format(diff, rows[1][3] / rows[0][3]))


if __name__ == '__main__':
    main()
