#!/usr/bin/env python
"""The P2 protocol of the peer measurements: steps to 90 % test accuracy.

The protocol the other K-FAC libraries were measured on, built here as the
protocol states it (their code does not carry over):

- model: conv3x3(1->32, pad 1) + BN + ReLU + max-pool 2, conv3x3(32->64, pad 1)
  + BN + ReLU + max-pool 2, flatten, Linear(3136->128) + ReLU, Linear(128->10);
  BN eps 1e-5 (``P2CNN``; the convolutions have no bias, which the BN that
  follows each would cancel);
- data: Fashion-MNIST, pixels / 255 then (x - 0.2860) / 0.3530; one shuffled
  index stream over the 60k training images (a new permutation per epoch,
  from the run's seed; the protocol's figures are seed 0); step s takes the
  next 4,096;
- schedule: linear warm-up over 5 steps, then cosine decay to 0 at step 440;
  momentum 0.9; weight decay 5e-4 (coupled L2:
  ``chainer.optimizer_hooks.WeightDecay``, added to the gradient before
  preconditioning);
- evaluation: all 10k test images every 10 steps, BN in inference mode; not
  counted in the wall time. A run stops at its first evaluation at or above
  90 % (``--target``) or after ``--max-steps``.

Each variant is ``chainerkfac.KFAC`` with the protocol's settings for this
package (lr 0.03, damping 1e-3, the package's defaults otherwise) updated by
the variant's keywords; ``sgd`` variants are momentum SGD. Every run is
appended to ``OUT/runs.jsonl`` when it ends; a rerun skips the runs found
there. ``OUT/report.md`` is rewritten after every run: per variant, steps to
90 % for each seed, seconds per step after the stale warm-up (training only,
on a shared machine), and the fraction of the statistics refreshed after the
stale rule's warm-up.

    .venv/bin/python benchmarks/p2_protocol.py --seeds 0,1 \\
        --variant default='{}' --variant every_step='{"stale": false}'

The peers' figures, measured on this kind of machine with their own code:
steps to 90 % momentum SGD 300 (best lr), ASDL K-FAC 30, KAISA 140; this
package (before the stale rule of issue 17) 30, refreshing 69.5 % of its
statistics after the stale warm-up.
"""
import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2
import chainerkfac  # NOQA: E402
import chainer  # NOQA: E402
import chainer.functions as F  # NOQA: E402
import chainer.links as L  # NOQA: E402
import numpy  # NOQA: E402
from chainer.optimizer_hooks import WeightDecay  # NOQA: E402
from chainerkfac.datasets import load_fashion_mnist  # NOQA: E402
from chainerkfac.training import allocator  # NOQA: E402
from convergence import accuracy, index_stream, lr_at  # NOQA: E402

DEFAULT_OUT = os.path.join(ROOT, 'benchmarks', 'results', 'p2')
BATCH, WARMUP, TOTAL, EVERY = 4096, 5, 440, 10
MEAN, STD = 0.2860, 0.3530
#: the protocol's settings for this package
BASE = dict(lr=0.03, damping=1e-3)


class P2CNN(chainer.Chain):
    """The P2 protocol's CNN for 1x28x28 inputs (6 Fisher blocks)."""

    def __init__(self, n_class=10):
        super(P2CNN, self).__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(1, 32, 3, pad=1, nobias=True)
            self.bn1 = L.BatchNormalization(32, eps=1e-5)
            self.conv2 = L.Convolution2D(32, 64, 3, pad=1, nobias=True)
            self.bn2 = L.BatchNormalization(64, eps=1e-5)
            self.fc1 = L.Linear(64 * 7 * 7, 128)
            self.fc2 = L.Linear(128, n_class)

    def forward(self, x):
        h = F.max_pooling_2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pooling_2d(F.relu(self.bn2(self.conv2(h))), 2)
        return self.fc2(F.relu(self.fc1(h)))


def load_data(train_limit=None, test_limit=None):
    x, t = load_fashion_mnist('train', limit=train_limit)
    xt, tt = load_fashion_mnist('test', limit=test_limit)
    return (x - MEAN) / STD, t, (xt - MEAN) / STD, tt


def run_key(spec):
    return json.dumps([spec['variant'], spec['settings'], spec['seed'],
                       spec['max_steps'], spec['target'], spec['batch'],
                       spec['train_limit'], spec['test_limit']],
                      sort_keys=True)


def make_optimizer(settings):
    settings = dict(settings)
    if settings.pop('method', 'kfac') == 'sgd':
        return chainer.optimizers.MomentumSGD(
            lr=settings.get('lr', 0.1), momentum=0.9), settings.get('lr', 0.1)
    kwargs = dict(BASE, momentum=0.9)
    kwargs.update(settings)
    return chainerkfac.KFAC(**kwargs), kwargs['lr']


def train_run(spec, data, log=print):
    """One run of the protocol; returns its record."""
    x, t, xt, tt = data
    batch = spec['batch']
    numpy.random.seed(spec['seed'])
    model = P2CNN()
    opt, peak = make_optimizer(spec['settings'])
    opt.setup(model)
    opt.add_hook(WeightDecay(5e-4))
    kfac = isinstance(opt, chainerkfac.KFAC)
    warmup_stale = getattr(opt.schedule, 'warmup', 0) if kfac else 0
    stream = index_stream(len(x), spec['seed'])
    curve, refreshed, seconds, losses = [], [], [], []
    diverged, steps_to_target = False, None
    for step in range(spec['max_steps']):
        opt.lr = lr_at(step, TOTAL, peak, WARMUP)
        idx = numpy.fromiter((next(stream) for _ in range(batch)),
                             numpy.int64, batch)
        xb, tb = x[idx], t[idx]
        start = time.perf_counter()
        if kfac:
            holder = []

            def lossfun(xb, tb):
                loss = F.softmax_cross_entropy(model(xb), tb)
                holder.append(loss)
                return loss
            opt.update(lossfun, xb, tb)
            loss = float(holder[0].array)
        else:
            model.cleargrads()
            loss_var = F.softmax_cross_entropy(model(xb), tb)
            loss_var.backward()
            opt.update()
            loss = float(loss_var.array)
        seconds.append(time.perf_counter() - start)
        losses.append(loss)
        if kfac:
            blocks = opt.fisher_blocks
            refreshed.append(sum(len(b.due) for b in blocks) / sum(
                len(b.statistic_names) for b in blocks))
        if not numpy.isfinite(loss) or loss > 10 * max(losses[0], 1.0):
            diverged = True
        if diverged or (step + 1) % EVERY == 0:
            acc = 0.1 if diverged else accuracy(model, xt, tt)
            curve.append([step + 1, float(sum(seconds)), acc])
            log('  {} seed {}: step {} loss {:.4f} test acc {:.4f} ({:.1f} s/'
                'step){}'.format(spec['variant'], spec['seed'], step + 1,
                                 loss, acc, seconds[-1],
                                 ' DIVERGED' if diverged else ''))
            if step + 1 > 10 and acc <= 0.15:
                diverged = True               # at chance: as bad as NaN
            if acc >= spec['target'] and steps_to_target is None:
                steps_to_target = step + 1
                break
        if diverged:
            break
    after = refreshed[warmup_stale:]
    timed = seconds[max(warmup_stale, WARMUP):] or seconds
    return dict(spec, key=run_key(spec), curve=curve,
                steps_run=len(seconds), steps_to_target=steps_to_target,
                diverged=diverged, final_acc=curve[-1][2] if curve else None,
                train_seconds=float(sum(seconds)),
                seconds_per_step=float(numpy.mean(timed)),
                refresh_fraction=(float(numpy.mean(refreshed))
                                  if refreshed else None),
                refresh_fraction_after_warmup=(float(numpy.mean(after))
                                               if after else None),
                stale_warmup=warmup_stale, losses=losses,
                finished=time.strftime('%Y-%m-%dT%H:%M:%S'),
                host=platform.node())


def load_records(path):
    records = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    records[r['key']] = r
    return records


def report(records, variants):
    """Markdown: per variant, steps to the target per seed and their mean,
    s/step, refreshed fraction after the stale warm-up."""
    lines = ['| variant | settings | seeds | steps to 90 % (per seed) | mean '
             '| diverged | s/step | refreshed after warm-up | refreshed |',
             '|---|---|---|---|---|---|---|---|---|']
    for name, settings in variants:
        runs = sorted((r for r in records.values() if r['variant'] == name
                       and r['settings'] == settings),
                      key=lambda r: r['seed'])
        if not runs:
            continue
        steps = [r['steps_to_target'] for r in runs]
        known = [s for s in steps if s is not None]
        mean = ('{:.1f}'.format(numpy.mean(known)) if len(known) == len(steps)
                else 'not reached')

        def avg(field, fmt):
            values = [r[field] for r in runs if r[field] is not None]
            return fmt.format(numpy.mean(values)) if values else '-'
        lines.append('| {} | `{}` | {} | {} | {} | {} | {} | {} | {} |'.format(
            name, json.dumps(settings, sort_keys=True),
            ','.join(str(r['seed']) for r in runs),
            ' / '.join('-' if s is None else str(s) for s in steps), mean,
            sum(r['diverged'] for r in runs),
            avg('seconds_per_step', '{:.2f}'),
            avg('refresh_fraction_after_warmup', '{:.3f}'),
            avg('refresh_fraction', '{:.3f}')))
    return '\n'.join(lines) + '\n'


_DATA = None


def _init_worker(train_limit, test_limit):
    global _DATA
    allocator.configure_allocator()
    chainerkfac.use_float64_bn_statistics()   # as in the first study
    _DATA = load_data(train_limit, test_limit)


def _train_in_worker(spec):
    return train_run(spec, _DATA, log=lambda s: print(s, flush=True))


def parse_variant(text):
    name, sep, settings = text.partition('=')
    if not sep or not name:
        raise SystemExit('--variant: expected NAME=JSON, got {!r}'.format(
            text))
    try:
        settings = json.loads(settings)
    except ValueError as e:
        raise SystemExit('--variant {}: not JSON ({})'.format(name, e))
    if not isinstance(settings, dict):
        raise SystemExit('--variant {}: expected a JSON object'.format(name))
    return name, settings


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--variant', action='append', type=parse_variant,
                   help='NAME=JSON: KFAC keywords over lr 0.03, damping '
                   '1e-3 (or {"method": "sgd", "lr": ...}); repeatable '
                   '(default: the package\'s defaults)')
    p.add_argument('--seeds', default='0')
    p.add_argument('--max-steps', type=int, default=60)
    p.add_argument('--target', type=float, default=0.90)
    p.add_argument('--batch', type=int, default=BATCH,
                   help='4096 (the protocol); less for a quick check')
    p.add_argument('--train-limit', type=int)
    p.add_argument('--test-limit', type=int)
    p.add_argument('--workers', type=int, default=1,
                   help='runs at once, each in a spawned process with one '
                   'BLAS thread')
    p.add_argument('--out', default=DEFAULT_OUT)
    args = p.parse_args(argv)
    args.variant = args.variant or [('default', {})]
    args.seeds = [int(s) for s in args.seeds.split(',') if s]
    if args.workers < 1:
        p.error('--workers must be at least 1')
    return args


def main(argv=None):
    args = parse(argv)
    allocator.configure_allocator()
    chainerkfac.use_float64_bn_statistics()   # as in the first study
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, 'runs.jsonl')
    records = load_records(path)
    specs = [dict(variant=name, settings=settings, seed=seed,
                  max_steps=args.max_steps, target=args.target,
                  batch=args.batch, train_limit=args.train_limit,
                  test_limit=args.test_limit)
             for name, settings in args.variant for seed in args.seeds]
    todo = [s for s in specs if run_key(s) not in records]
    print('p2_protocol: {} runs, {} done before; records in {}'.format(
        len(specs), len(specs) - len(todo), args.out), flush=True)

    def finish(record):
        with open(path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        records[record['key']] = record
        with open(os.path.join(args.out, 'report.md'), 'w') as f:
            f.write(report(records, args.variant))
        print('finished {} seed {}: steps to {:.0%} {}, {:.2f} s/step, '
              'refreshed after warm-up {}'.format(
                  record['variant'], record['seed'], record['target'],
                  record['steps_to_target'], record['seconds_per_step'],
                  record['refresh_fraction_after_warmup']), flush=True)

    if args.workers == 1:
        data = load_data(args.train_limit, args.test_limit)
        for spec in todo:
            finish(train_run(spec, data, log=lambda s: print(s, flush=True)))
    else:
        saved = {k: os.environ.get(k) for k in ('OPENBLAS_NUM_THREADS',
                                                'OMP_NUM_THREADS')}
        os.environ.update({k: '1' for k in saved})
        try:
            pool = concurrent.futures.ProcessPoolExecutor(
                args.workers, mp_context=multiprocessing.get_context('spawn'),
                initializer=_init_worker,
                initargs=(args.train_limit, args.test_limit))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        with pool:
            futures = [pool.submit(_train_in_worker, s) for s in todo]
            for future in concurrent.futures.as_completed(futures):
                finish(future.result())
    text = report(records, args.variant)
    with open(os.path.join(args.out, 'report.md'), 'w') as f:
        f.write(text)
    print(text)
    return records


if __name__ == '__main__':
    main()
