#!/usr/bin/env python
"""Step time of momentum SGD, K-FAC (every step) and K-FAC (stale statistics).

CIFAR-style ResNet-20 on 1x28x28 Fashion-MNIST batches of 128 (``--model
resnet20``, the default), or the fidelity study's CNN at its batch sizes
(``--model issue-cnn --batchsize 2048``: ``benchmarks/convergence.py``'s
``IssueCNN`` with the study's K-FAC settings, lr 0.1, damping 1e-2,
``cov_ema_decay`` 0.1, ``bn_fisher='unit'``), one process, all measured in one
run (this machine is shared: only ratios measured together mean something).
Prints the time per step and per stage. The stale rule's intervals depend on
how far training has come: a short run from a fresh model refreshes more
than a long one does on average.

    .venv/bin/python benchmarks/step_time.py [--steps 60] [--gpu]
    .venv/bin/python benchmarks/step_time.py --model issue-cnn --batchsize 2048

With ``--gpu`` the models and batches live on GPU 0 and the device is
synchronised at the start and end of every step and of every timed stage (so
a stage's time is its own device work; the synchronisations themselves
remove overlap that an unsynchronised step could have). The GPU path has not
run on a GPU from this repository's machines yet. ``gpu_step_time.py`` is
the ResNet-50 / ImageNet-size version, reusing the pieces below.
"""
import argparse
import contextlib
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
from chainerkfac.profiling import STAGES, StageTimer  # NOQA: E402
from chainerkfac.training import allocator  # NOQA: E402
from chainerkfac.training import device as device_module  # NOQA: E402
from models import resnet  # NOQA: E402

KFAC_SETTINGS = dict(lr=0.02, momentum=0.9, damping=1e-3, cov_ema_decay=0.1,
                     bn_fisher='unit')


def batches(n_steps, batchsize):
    x, t = load_fashion_mnist('train', limit=min(60000, n_steps * batchsize))
    n = len(x) // batchsize * batchsize    # batches wrap around the images
    return [(x[i * batchsize % n:i * batchsize % n + batchsize],
             t[i * batchsize % n:i * batchsize % n + batchsize])
            for i in range(n_steps)]


class DeviceStageTimer(StageTimer):
    """A :class:`StageTimer` that synchronises ``device`` around each stage
    (a plain StageTimer for None or a CPU device)."""

    def __init__(self, device=None):
        super(DeviceStageTimer, self).__init__()
        self.device = device

    @contextlib.contextmanager
    def __call__(self, stage):
        device_module.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            device_module.synchronize(self.device)
            self.seconds[stage] += time.perf_counter() - start


class Runner(object):
    """One method: its model, optimizer and per-step records."""

    def __init__(self, name, model, optimizer, device=None):
        self.name, self.model, self.optimizer = name, model, optimizer
        self.device = device
        self.is_kfac = isinstance(optimizer, chainerkfac.KFAC)
        self.steps = []      # (seconds, {stage: seconds}, refreshed fraction)

    def step(self, x, t):
        model, opt = self.model, self.optimizer

        def lossfun(x, t):
            return F.softmax_cross_entropy(model(x), t)

        timer = DeviceStageTimer(self.device)
        device_module.synchronize(self.device)
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
        device_module.synchronize(self.device)
        self.steps.append((time.perf_counter() - start, dict(timer.seconds),
                           refreshed))

    def summary(self, first=0):
        """Mean (s/step, {stage: s/step}, refreshed fraction) of the steps
        from ``first`` on; None when there are none."""
        steps = self.steps[first:]
        if not steps:
            return None
        seconds = numpy.mean([s for s, _, _ in steps])
        stages = {k: numpy.mean([st.get(k, 0.0) for _, st, _ in steps])
                  for k in STAGES}
        fracs = [f for _, _, f in steps if f is not None]
        return seconds, stages, (numpy.mean(fracs) if fracs else None)


def make_runners(base, device=None, settings=KFAC_SETTINGS, sgd_lr=0.1):
    """SGD, every-step K-FAC and stale K-FAC, each on its own copy of
    ``base`` (moved to ``device`` before the optimizer's setup)."""
    def make(name, optimizer):
        model = copy.deepcopy(base)
        if device is not None:
            model.to_device(device)
        optimizer.setup(model)
        return Runner(name, model, optimizer, device)

    return (make('SGD', chainer.optimizers.MomentumSGD(lr=sgd_lr,
                                                        momentum=0.9)),
            make('K-FAC every step', chainerkfac.KFAC(stale=False,
                                                      **settings)),
            make('K-FAC stale', chainerkfac.KFAC(stale=True, **settings)))


def interleave(sgd, every, stale, data, every_n):
    """Steps the three runners over ``data`` in turn (every-step K-FAC on
    every ``every_n``-th batch only), so that load hits all alike."""
    for i, (x, t) in enumerate(data):
        sgd.step(x, t)
        stale.step(x, t)
        if i % every_n == 0:
            every.step(x, t)


def table(sgd, every, stale, skip):
    """The printed table's lines (SGD's time is the ratios' base)."""
    warmup = stale.optimizer.schedule.warmup
    rows = [('SGD', sgd.summary(skip)),
            ('K-FAC every step', every.summary(skip)),
            ('K-FAC stale, all steps', stale.summary(0)),
            ('K-FAC stale, after warm-up', stale.summary(warmup))]
    base_time = rows[0][1][0] if rows[0][1] else float('nan')
    lines = ['{:<27} {:>7} {:>7} {:>9}  {}'.format(
        'method', 's/step', 'vs SGD', 'refreshed', ' '.join(
            '{:>8}'.format(s[:8]) for s in STAGES))]
    for name, summary in rows:
        if summary is None:
            lines.append('{:<27} {:>7}  (no steps measured)'.format(name, '-'))
            continue
        seconds, stages, frac = summary
        lines.append('{:<27} {:>7.3f} {:>7.2f} {:>9}  {}'.format(
            name, seconds, seconds / base_time,
            '-' if frac is None else '{:.3f}'.format(frac),
            ' '.join('{:8.3f}'.format(stages[s]) for s in STAGES)))
    lines.append('stages in s/step; forward_backward includes statistics; '
                 'stale warm-up = {} steps; target: stale/SGD <= 1.3'
                 .format(warmup))
    return lines


MODELS = {
    'resnet20': (lambda: resnet.ResNetCIFAR(20, n_class=10, in_channels=1),
                 KFAC_SETTINGS, 0.1),
    'issue-cnn': (lambda: _issue_cnn(),
                  dict(lr=0.1, momentum=0.9, damping=1e-2, cov_ema_decay=0.1,
                       bn_fisher='unit'), 0.1),
}


def _issue_cnn():
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import convergence
    return convergence.IssueCNN()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', choices=sorted(MODELS), default='resnet20')
    parser.add_argument('--batchsize', type=int, default=128)
    parser.add_argument('--steps', type=int, default=60,
                        help='steps of SGD and of stale K-FAC')
    parser.add_argument('--every', type=int, default=4,
                        help='every-step K-FAC runs on every N-th step only')
    parser.add_argument('--skip', type=int, default=2,
                        help='untimed first steps of SGD and every-step K-FAC')
    parser.add_argument('--gpu', action='store_true',
                        help='on GPU 0 (CuPy); stops with one line without')
    args = parser.parse_args(argv)
    allocator.configure_allocator()   # reuse freed host memory (no-op on GPU)
    chainerkfac.use_float64_bn_statistics()   # CPU BN batch sums in float64
    device = None
    if args.gpu:
        device = device_module.select_gpu_or_exit('step_time.py')
        print(device_module.describe(device), flush=True)
    numpy.random.seed(0)
    build, settings, sgd_lr = MODELS[args.model]
    base = build()
    data = batches(args.steps, args.batchsize)
    if device is not None:
        data = [(device.send(x), device.send(t)) for x, t in data]
    sgd, every, stale = make_runners(base, device, settings, sgd_lr)
    interleave(sgd, every, stale, data, args.every)
    print('{}, 1x28x28, batch {}, one process ({}), {} steps; K-FAC {}'
          .format(args.model, args.batchsize,
                  'GPU' if device is not None else 'CPU', args.steps,
                  settings))
    print('\n'.join(table(sgd, every, stale, args.skip)))


if __name__ == '__main__':
    main()
