#!/usr/bin/env python
"""Trains a small CNN on Fashion-MNIST with K-FAC (or momentum SGD).

Data: Debian's ``dataset-fashion-mnist`` (60k train / 10k test, 28x28).
Example::

    python examples/train_fashion_mnist.py --epoch 3 --out result/fmnist

CPU by default; ``--gpu`` trains on GPU 0 (CuPy), or stops with one line saying
what is missing. The GPU path has not run on a GPU from this repository's
machines yet (``scripts/gpu_check.sh`` runs it on one).
"""
import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2 (the
# CuPy 14 stack; chainerkfac/_compat.py)
import chainerkfac  # NOQA: E402
import chainer  # NOQA: E402
import chainer.links as L  # NOQA: E402
import numpy  # NOQA: E402
from chainer import training  # NOQA: E402
from chainer.training import extensions  # NOQA: E402

from chainerkfac import threads  # NOQA: E402
from chainerkfac.datasets import get_fashion_mnist  # NOQA: E402
from chainerkfac.training import allocator  # NOQA: E402
from chainerkfac.training import device as device_module  # NOQA: E402
from chainerkfac.training import extensions as kfac_extensions  # NOQA: E402
from models import small_cnn  # NOQA: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--optimizer', choices=('kfac', 'sgd'), default='kfac')
    p.add_argument('--arch', choices=('demo', 'small'), default='demo')
    p.add_argument('--epoch', type=int, default=1)
    p.add_argument('--batchsize', type=int, default=256)
    p.add_argument('--lr', type=float, default=None,
                   help='default: 0.02 for kfac, 0.1 for sgd')
    p.add_argument('--momentum', type=float, default=0.9)
    p.add_argument('--damping', type=float, default=3e-3)
    p.add_argument('--cov-ema-decay', type=float, default=0.1)
    p.add_argument('--bn-fisher', choices=('full', 'unit', 'diag'),
                   default='unit')
    p.add_argument('--train-limit', type=int, default=None)
    p.add_argument('--test-limit', type=int, default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default='result/fashion_mnist')
    p.add_argument('--no-progress', action='store_true')
    p.add_argument('--gpu', action='store_true',
                   help='train on GPU 0 (CuPy); stops with one line without')
    return p.parse_args(argv)


def make_optimizer(args):
    if args.optimizer == 'sgd':
        return chainer.optimizers.MomentumSGD(lr=args.lr or 0.1,
                                              momentum=args.momentum)
    return chainerkfac.optimizers.KFAC(
        lr=args.lr or 0.02, momentum=args.momentum, damping=args.damping,
        cov_ema_decay=args.cov_ema_decay, bn_fisher=args.bn_fisher)


def main(argv=None):
    allocator.configure_allocator()   # reuse freed host memory (no-op on GPU)
    chainerkfac.use_float64_bn_statistics()   # CPU BN batch sums in float64
    args = parse_args(argv)
    device = None
    if args.gpu:
        device = device_module.select_gpu_or_exit('train_fashion_mnist.py')
        print(device_module.describe(device), flush=True)
    chainerkfac.configure_threads()   # its share of the cores
    threads.log_to_stderr()           # ... saying so in one line
    numpy.random.seed(args.seed)
    train = get_fashion_mnist('train', limit=args.train_limit)
    test = get_fashion_mnist('test', limit=args.test_limit)
    net = small_cnn.DemoCNN() if args.arch == 'demo' else small_cnn.SmallCNN()
    model = L.Classifier(net)
    if device is not None:
        model.to_device(device)   # before setup: the optimizer state too
    optimizer = make_optimizer(args)
    optimizer.setup(model)

    train_iter = chainer.iterators.SerialIterator(train, args.batchsize)
    test_iter = chainer.iterators.SerialIterator(test, 1000, repeat=False,
                                                 shuffle=False)
    updater = training.StandardUpdater(train_iter, optimizer,
                                       input_device=device)
    trainer = training.Trainer(updater, (args.epoch, 'epoch'), out=args.out)
    trainer.extend(extensions.Evaluator(test_iter, model, device=device))
    trainer.extend(extensions.LogReport())
    trainer.extend(extensions.observe_lr())
    trainer.extend(extensions.PrintReport(
        ['epoch', 'iteration', 'main/loss', 'main/accuracy',
         'validation/main/loss', 'validation/main/accuracy', 'lr',
         'elapsed_time']))
    kfac_extensions.add_plot_reports(trainer)   # loss.png, accuracy.png
    trainer.extend(extensions.snapshot(), trigger=(args.epoch, 'epoch'))
    if not args.no_progress:
        trainer.extend(extensions.ProgressBar(update_interval=10))
    start = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        trainer.run()
    log = trainer.get_extension('LogReport').log
    final = log[-1]
    print('final: optimizer={} test accuracy={:.4f} train loss={:.4f} '
          'wall time={:.0f}s'.format(args.optimizer,
                                     final['validation/main/accuracy'],
                                     final['main/loss'], time.time() - start))
    return final


if __name__ == '__main__':
    main()
