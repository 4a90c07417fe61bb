#!/usr/bin/env python
"""What each curvature option of issue 18 costs per step and per stage.

The models and K-FAC settings of ``step_time.py`` (ResNet-20 on 1x28x28
Fashion-MNIST batches of 128 by default; ``--model issue-cnn`` for the
fidelity study's CNN), one process, every runner on the same batches and
stepped in turn so that the shared machine's load hits all alike; only the
ratios measured in one run mean something. Every K-FAC runner refreshes
every statistic at every step (``stale=False``), so an option's cost is its
worst case: with stale statistics ``fisher='mc'`` pays its extra backward
passes only on steps where some ``G``/``F`` is due, and the eigen
decompositions only when a factor is refreshed. ``damping_adaptation`` runs
here at every step (interval 1); its cost per step at interval ``k`` is
about ``1/k`` of the extra printed.

    .venv/bin/python benchmarks/curvature_options.py [--steps 12]
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import step_time  # NOQA: E402  (imports chainerkfac before chainer)
import chainer  # NOQA: E402
import chainerkfac  # NOQA: E402
import copy  # NOQA: E402
import numpy  # NOQA: E402
from chainerkfac.profiling import STAGES  # NOQA: E402
from chainerkfac.training import allocator  # NOQA: E402

#: (name, KFAC keywords over the model's settings), the baseline first
OPTIONS = (
    ('default (cholesky, empirical)', {}),
    ("inverse='eigen'", dict(inverse='eigen')),
    ('kl_clip=1e-3', dict(kl_clip=1e-3)),
    ("fisher='mc' (1 sample)", dict(fisher='mc')),
    ('damping_adaptation (k=1)', dict(damping_adaptation=True,
                                      damping_adaptation_interval=1)),
)


def runners(base, settings, sgd_lr):
    """Momentum SGD, then one every-step K-FAC runner per option."""
    def make(name, optimizer):
        model = copy.deepcopy(base)
        optimizer.setup(model)
        return step_time.Runner(name, model, optimizer)

    out = [make('SGD', chainer.optimizers.MomentumSGD(lr=sgd_lr,
                                                       momentum=0.9))]
    for name, extra in OPTIONS:
        kwargs = dict(settings, stale=False, **extra)
        out.append(make(name, chainerkfac.KFAC(**kwargs)))
    return out


def table(measured, skip):
    """Lines: s/step, the ratio to the default K-FAC and to SGD, stages."""
    rows = [(r.name, r.summary(skip)) for r in measured]
    sgd_time, base_time = rows[0][1][0], rows[1][1][0]
    lines = ['{:<31} {:>7} {:>8} {:>7}  {}'.format(
        'method', 's/step', 'vs K-FAC', 'vs SGD',
        ' '.join('{:>8}'.format(s[:8]) for s in STAGES))]
    for name, (seconds, stages, _) in rows:
        lines.append('{:<31} {:>7.3f} {:>8.2f} {:>7.2f}  {}'.format(
            name, seconds, seconds / base_time, seconds / sgd_time,
            ' '.join('{:8.3f}'.format(stages[s]) for s in STAGES)))
    lines.append('stages in s/step (forward_backward includes the '
                 'statistics and the mc passes; the adaptation\'s forward '
                 'pass is in no stage: s/step minus their sum); every K-FAC '
                 'runner refreshes every statistic at every step')
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', choices=sorted(step_time.MODELS),
                        default='resnet20')
    parser.add_argument('--batchsize', type=int, default=128)
    parser.add_argument('--steps', type=int, default=12)
    parser.add_argument('--skip', type=int, default=2,
                        help='untimed first steps of every runner')
    args = parser.parse_args(argv)
    if args.steps <= args.skip:
        parser.error('--steps must exceed --skip')
    allocator.configure_allocator()
    chainerkfac.use_float64_bn_statistics()
    numpy.random.seed(0)
    build, settings, sgd_lr = step_time.MODELS[args.model]
    measured = runners(build(), settings, sgd_lr)
    for x, t in step_time.batches(args.steps, args.batchsize):
        for runner in measured:
            runner.step(x, t)
    print('{}, 1x28x28, batch {}, one process (CPU), {} steps ({} untimed); '
          'K-FAC {}'.format(args.model, args.batchsize, args.steps,
                            args.skip, settings))
    print('\n'.join(table(measured, args.skip)))


if __name__ == '__main__':
    main()
