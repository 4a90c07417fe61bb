#!/usr/bin/env python
"""Step time of momentum SGD, K-FAC (every step) and K-FAC (stale statistics).

CIFAR-style ResNet-20 on 1x28x28 Fashion-MNIST batches of 128, one process,
all measured in one run (this machine is shared: only ratios measured
together mean something). Prints the time per step and per stage.

    .venv/bin/python benchmarks/step_time.py [--steps 60]
"""
import argparse
import copy
import os
import sys
import time

import chainer
import chainer.functions as F
import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import chainerkfac  # NOQA: E402
from chainerkfac.datasets import load_fashion_mnist  # NOQA: E402
from chainerkfac.profiling import STAGES, StageTimer  # NOQA: E402
from models import resnet  # NOQA: E402

KFAC_SETTINGS = dict(lr=0.02, momentum=0.9, damping=1e-3, cov_ema_decay=0.1,
                     bn_fisher='unit')


def batches(n_steps, batchsize):
    x, t = load_fashion_mnist('train', limit=n_steps * batchsize)
    return [(x[i * batchsize:(i + 1) * batchsize],
             t[i * batchsize:(i + 1) * batchsize]) for i in range(n_steps)]


class Runner(object):
    """One method: its model, optimizer and per-step records."""

    def __init__(self, name, model, optimizer):
        self.name, self.model, self.optimizer = name, model, optimizer
        self.is_kfac = isinstance(optimizer, chainerkfac.KFAC)
        self.steps = []      # (seconds, {stage: seconds}, refreshed fraction)

    def step(self, x, t):
        model, opt = self.model, self.optimizer

        def lossfun(x, t):
            return F.softmax_cross_entropy(model(x), t)

        timer = StageTimer()
        start = time.perf_counter()
        if self.is_kfac:
            opt.timer = timer
            opt.update(lossfun, x, t)
            blocks = opt.fisher_blocks
            refreshed = (sum(len(b.due) for b in blocks)
                         / sum(len(b.statistic_names) for b in blocks))
        else:
            with timer('forward_backward'):
                loss = lossfun(x, t)
                model.cleargrads()
                loss.backward()
            with timer('update'):
                opt.update()
            refreshed = None
        self.steps.append((time.perf_counter() - start, dict(timer.seconds),
                           refreshed))

    def summary(self, first=0):
        steps = self.steps[first:]
        seconds = numpy.mean([s for s, _, _ in steps])
        stages = {k: numpy.mean([st.get(k, 0.0) for _, st, _ in steps])
                  for k in STAGES}
        fracs = [f for _, _, f in steps if f is not None]
        return seconds, stages, (numpy.mean(fracs) if fracs else None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batchsize', type=int, default=128)
    parser.add_argument('--steps', type=int, default=60,
                        help='steps of SGD and of stale K-FAC')
    parser.add_argument('--every', type=int, default=4,
                        help='every-step K-FAC runs on every N-th step only')
    parser.add_argument('--skip', type=int, default=2,
                        help='untimed first steps of SGD and every-step K-FAC')
    args = parser.parse_args()
    numpy.random.seed(0)
    base = resnet.ResNetCIFAR(20, n_class=10, in_channels=1)
    data = batches(args.steps, args.batchsize)

    def make(name, optimizer):
        model = copy.deepcopy(base)
        optimizer.setup(model)
        return Runner(name, model, optimizer)

    sgd = make('SGD', chainer.optimizers.MomentumSGD(lr=0.1, momentum=0.9))
    every = make('K-FAC every step', chainerkfac.KFAC(stale=False,
                                                      **KFAC_SETTINGS))
    stale = make('K-FAC stale', chainerkfac.KFAC(stale=True, **KFAC_SETTINGS))
    # interleaved, so that the load of this shared machine hits all alike
    for i, (x, t) in enumerate(data):
        sgd.step(x, t)
        stale.step(x, t)
        if i % args.every == 0:
            every.step(x, t)

    warmup = stale.optimizer.schedule.warmup
    rows = [('SGD', sgd.summary(args.skip)),
            ('K-FAC every step', every.summary(args.skip)),
            ('K-FAC stale, all steps', stale.summary(0)),
            ('K-FAC stale, after warm-up', stale.summary(warmup))]
    base_time = rows[0][1][0]
    print('ResNet-20, 1x28x28, batch {}, one process, {} steps; K-FAC {}'
          .format(args.batchsize, args.steps, KFAC_SETTINGS))
    print('{:<27} {:>7} {:>7} {:>9}  {}'.format(
        'method', 's/step', 'vs SGD', 'refreshed', ' '.join(
            '{:>8}'.format(s[:8]) for s in STAGES)))
    for name, (seconds, stages, frac) in rows:
        print('{:<27} {:>7.3f} {:>7.2f} {:>9}  {}'.format(
            name, seconds, seconds / base_time,
            '-' if frac is None else '{:.3f}'.format(frac),
            ' '.join('{:8.3f}'.format(stages[s]) for s in STAGES)))
    print('stages in s/step; forward_backward includes statistics; stale '
          'warm-up = {} steps; target: stale/SGD <= 1.3'.format(warmup))


if __name__ == '__main__':
    main()
