#!/usr/bin/env python
"""CPU step time before and after the allocator configuration and the BN patch.

One run, one table: momentum SGD and K-FAC (every step) on ResNet-20 at batch
128 and on the Fashion-MNIST CNN (``models.small_cnn.DemoCNN``, the example's
default) at batch 4096, real Fashion-MNIST batches, one process each, with the
per-stage breakdown, minor page faults and system time per step. Three
configurations:

- ``before``: glibc's default allocator, Chainer's float32 BN reductions;
- ``+alloc``: :func:`chainerkfac.training.allocator.configure_allocator`;
- ``+alloc+BN``: that and float64 BN batch statistics
  (``chainerkfac.use_float64_bn_statistics()``, ``_compat.py`` patch 5).

The allocator setting cannot be undone inside a process, so each model runs in
two child processes of this script: one with glibc's defaults
(``CHAINERKFAC_DEFAULT_ALLOCATOR=1``: ``before``), one configured, in which the
BN patch is switched off and on between steps so that ``+alloc`` and
``+alloc+BN`` are measured interleaved. The first step of every method is a
warm-up and not timed.

    .venv/bin/python benchmarks/cpu_large_batch.py [--models resnet20,cnn]
        [--steps-resnet 5] [--steps-cnn 3] [--blas-threads N]

About 6 minutes on 2 shared cores; ratios measured in one run only mean
something on a shared machine.
"""
import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2
# (chainerkfac/_compat.py)
import chainerkfac  # NOQA: E402
from chainerkfac.training import allocator  # NOQA: E402
import chainer  # NOQA: E402
import numpy  # NOQA: E402
from chainerkfac.profiling import STAGES  # NOQA: E402
from models import resnet  # NOQA: E402
from models import small_cnn  # NOQA: E402
import step_time  # NOQA: E402

MODELS = {
    'resnet20': ('ResNet-20', 128,
                 lambda: resnet.ResNetCIFAR(20, n_class=10, in_channels=1)),
    'cnn': ('DemoCNN', 4096, lambda: small_cnn.DemoCNN()),
}
#: the inversion stage of every-step K-FAC on ResNet-20 before LAPACK
#: potrf/potri (README, ``step_time.py --steps 30``, default allocator)
INVERSION_BEFORE_LAPACK = 0.70
RESULT = 'RESULT '


@contextlib.contextmanager
def chainer_bn_patch(enabled):
    """Chainer's BN with (True) or without (False) float64 batch statistics
    (``chainerkfac.use_float64_bn_statistics``), for the block."""
    previous = chainerkfac.use_float64_bn_statistics(enabled)
    try:
        yield
    finally:
        chainerkfac.use_float64_bn_statistics(previous)


class MeasuredRunner(step_time.Runner):
    """A step_time Runner that also records page faults and system time and
    steps with the BN patch on or off."""

    def __init__(self, name, model, optimizer, bn_patch):
        super(MeasuredRunner, self).__init__(name, model, optimizer)
        self.bn_patch = bn_patch
        self.usage = []     # (minor faults, system seconds) per step

    def step(self, x, t):
        with chainer_bn_patch(self.bn_patch):
            before = resource.getrusage(resource.RUSAGE_SELF)
            super(MeasuredRunner, self).step(x, t)
            after = resource.getrusage(resource.RUSAGE_SELF)
        self.usage.append((after.ru_minflt - before.ru_minflt,
                           after.ru_stime - before.ru_stime))

    def result(self, skip=1):
        seconds, stages, _ = self.summary(skip)
        usage = self.usage[skip:]
        return dict(method=self.name, bn=self.bn_patch, seconds=seconds,
                    stages=stages, steps=len(usage),
                    faults=float(numpy.mean([u[0] for u in usage])),
                    system=float(numpy.mean([u[1] for u in usage])))


def child(model_key, steps, bn_modes, batchsize):
    """One process: every (method, BN mode) interleaved; prints a RESULT
    line."""
    import copy
    build = MODELS[model_key][2]
    numpy.random.seed(0)
    base = build()
    data = step_time.batches(steps + 1, batchsize)
    runners = []
    for bn_patch in bn_modes:
        for method in ('SGD', 'K-FAC'):
            model = copy.deepcopy(base)
            if method == 'SGD':
                opt = chainer.optimizers.MomentumSGD(lr=0.1, momentum=0.9)
            else:
                opt = chainerkfac.KFAC(stale=False, **step_time.KFAC_SETTINGS)
            opt.setup(model)
            runners.append(MeasuredRunner(method, model, opt, bn_patch))
    for i, (x, t) in enumerate(data):
        for r in runners:
            start = time.perf_counter()
            r.step(x, t)
            print('  {} {} step {}/{}: {:.2f} s'.format(
                model_key, r.name, i + 1, len(data),
                time.perf_counter() - start), file=sys.stderr, flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(RESULT + json.dumps(dict(
        model=model_key, batchsize=batchsize,
        allocator=allocator.is_configured(), max_rss_mb=rss,
        rows=[r.result() for r in runners])), flush=True)


def run_child(model_key, steps, batchsize, default_allocator,
              blas_threads=None):
    env = dict(os.environ)
    env.pop(allocator.OPT_OUT, None)
    if blas_threads:
        env['OPENBLAS_NUM_THREADS'] = env['OMP_NUM_THREADS'] = str(
            blas_threads)
    if default_allocator:
        env[allocator.OPT_OUT] = '1'
    command = [sys.executable, os.path.abspath(__file__), '--child', model_key,
               '--steps', str(steps), '--batchsize', str(batchsize),
               '--bn', 'off' if default_allocator else 'off,on']
    print('{} ({} allocator) ...'.format(
        model_key, 'default' if default_allocator else 'configured'),
        file=sys.stderr, flush=True)
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit('child {} failed with status {}'.format(
            command, proc.returncode))
    line, = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    return json.loads(line[len(RESULT):])


def label(allocator_configured, bn_patch):
    if not allocator_configured:
        return 'before' if not bn_patch else 'BN only'
    return '+alloc+BN' if bn_patch else '+alloc'


def report(results):
    """The table's lines and the acceptance lines."""
    head = '{:<10} {:>5} {:<10} {:<6} {:>7} {:>6} {:>9} {:>6}  {}'.format(
        'model', 'batch', 'config', 'method', 's/step', 'before/', 'faults',
        'sys s',
        ' '.join('{:>8}'.format(s[:8]) for s in STAGES))
    lines = [head]
    found = {}
    for res in results:
        for row in res['rows']:
            key = (res['model'], label(res['allocator'], row['bn']),
                   row['method'])
            found[key] = dict(row, batchsize=res['batchsize'])
    for res in results:
        name, batchsize = MODELS[res['model']][0], res['batchsize']
        for row in res['rows']:
            config = label(res['allocator'], row['bn'])
            before = found.get((res['model'], 'before', row['method']))
            speedup = (before['seconds'] / row['seconds'] if before
                       else float('nan'))
            lines.append('{:<10} {:>5} {:<10} {:<6} {:7.3f} {:6.2f}x {:9.0f} '
                         '{:6.3f}  {}'
                         .format(name, batchsize, config, row['method'],
                                 row['seconds'], speedup, row['faults'],
                                 row['system'],
                                 ' '.join('{:8.3f}'.format(row['stages'][s])
                                          for s in STAGES)))
    lines.append('s/step over the timed steps (first step of each untimed); '
                 '"before/": the before row\'s s/step over this row\'s; '
                 'faults: minor page faults per step; stages in s/step.')
    lines.append('peak RSS: ' + ', '.join(
        '{} {} {:.0f} MB'.format(MODELS[r['model']][0],
                                 'configured' if r['allocator'] else 'default',
                                 r['max_rss_mb']) for r in results))
    lines.append('')
    lines.extend(acceptance(found))
    return lines


def acceptance(found):
    lines = []

    def get(model, config, method):
        return found.get((model, config, method))

    for method in ('SGD', 'K-FAC'):
        b, a = get('cnn', 'before', method), get('cnn', '+alloc+BN', method)
        if b and a:
            ratio = b['seconds'] / a['seconds']
            lines.append('DemoCNN batch {} {}: {:.2f} -> {:.2f} s/step, '
                         '{:.2f}x (target >= 1.3x: {})'.format(
                             a['batchsize'], method, b['seconds'],
                             a['seconds'], ratio,
                             'met' if ratio >= 1.3 else 'NOT met'))
    b = get('resnet20', 'before', 'K-FAC')
    a = get('resnet20', '+alloc+BN', 'K-FAC')
    if b and a:
        inv_b, inv_a = b['stages']['inversion'], a['stages']['inversion']
        ratio = INVERSION_BEFORE_LAPACK / inv_a
        lines.append('ResNet-20 inversion stage: {:.3f} s/step before LAPACK '
                     '(README) -> {:.3f} now: {:.1f}x (target >= 3x: {}); '
                     'default allocator today {:.3f} -> {:.3f}: {:.2f}x'
                     .format(
                         INVERSION_BEFORE_LAPACK, inv_a, ratio,
                         'met' if ratio >= 3 else 'NOT met', inv_b, inv_a,
                         inv_b / inv_a))
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', default='resnet20,cnn',
                   help='comma-separated, from: ' + ', '.join(MODELS))
    p.add_argument('--steps-resnet', type=int, default=5,
                   help='timed steps per method on ResNet-20')
    p.add_argument('--steps-cnn', type=int, default=3,
                   help='timed steps per method on the CNN')
    p.add_argument('--batch-cnn', type=int, default=MODELS['cnn'][1],
                   help='the CNN\'s batch size (4096; less for a quick check)')
    p.add_argument('--blas-threads', type=int, default=None,
                   help='OPENBLAS_NUM_THREADS and OMP_NUM_THREADS of the '
                   'children (default: inherited). On a loaded machine, stage '
                   'times with multi-threaded BLAS vary up to 10x between '
                   'runs')
    p.add_argument('--child', choices=sorted(MODELS), help=argparse.SUPPRESS)
    p.add_argument('--steps', type=int, help=argparse.SUPPRESS)
    p.add_argument('--bn', default='off,on', help=argparse.SUPPRESS)
    p.add_argument('--batchsize', type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        # unless CHAINERKFAC_DEFAULT_ALLOCATOR=1
        allocator.configure_allocator()
        child(args.child, args.steps,
              [mode == 'on' for mode in args.bn.split(',')], args.batchsize)
        return
    results = []
    for key in args.models.split(','):
        steps = args.steps_resnet if key == 'resnet20' else args.steps_cnn
        batchsize = MODELS[key][1] if key == 'resnet20' else args.batch_cnn
        for default_allocator in (True, False):
            results.append(run_child(key, steps, batchsize, default_allocator,
                                     args.blas_threads))
    print('CPU, one process per child, glibc {}, BLAS threads: {}; K-FAC '
          'every step {}'.format(allocator.glibc_version(),
                           args.blas_threads or os.environ.get(
                               'OPENBLAS_NUM_THREADS', 'default'),
                           step_time.KFAC_SETTINGS))
    print('\n'.join(report(results)))


if __name__ == '__main__':
    main()
