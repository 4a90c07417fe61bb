#!/usr/bin/env python
"""ResNet-50 step time on one GPU: momentum SGD vs K-FAC every step vs K-FAC
stale.

ImageNet size: 3x224x224 inputs, 1000 classes, mini-batch 32, one process on
GPU 0; synthetic batches (a few fixed random batches, cycled). The three
methods step in turn on the same batches (every-step K-FAC on every N-th only),
with the per-stage breakdown of :class:`chainerkfac.profiling.StageTimer`; the
device is synchronised around every step and every timed stage (see
``step_time.py``, whose runner and table this reuses). Before timing, each
method takes untimed steps on a throw-away copy so that CuPy's kernel
compilation is not counted.

    python benchmarks/gpu_step_time.py [--steps 30] [--every 3]
    python benchmarks/gpu_step_time.py --cpu-smoke   # tiny sizes, on the CPU

``--cpu-smoke`` (ResNet-8, 3x16x16, batch 4, a few steps) proves that the
script runs end to end without a GPU; its figures mean nothing. The GPU run
has not been made from this repository's machines yet: ``scripts/gpu_check.sh``
makes it on a lent GPU machine and writes the table to ``benchmarks/results/``.
"""
import argparse
import datetime
import os
import sys
import time

import numpy

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import step_time  # NOQA: E402
from chainerkfac.training import allocator  # NOQA: E402
from chainerkfac.training import device as device_module  # NOQA: E402
from models import resnet  # NOQA: E402

#: the smoke run's sizes (CPU, seconds)
SMOKE = dict(arch='resnet8', size=16, batchsize=4, n_class=10, steps=3,
             every=2, skip=1, n_batches=2, warmup_steps=1)


def synthetic_batches(n, batchsize, size, n_class, seed=0):
    """``n`` fixed batches of N(0, 1) images and uniform labels."""
    rng = numpy.random.RandomState(seed)
    return [(rng.standard_normal((batchsize, 3, size, size)).astype(
        numpy.float32), rng.randint(0, n_class, batchsize).astype(
            numpy.int32)) for _ in range(n)]


def build(arch, n_class):
    kwargs = {} if arch.startswith('resnet50') else {'in_channels': 3}
    return resnet.get_model(arch, n_class, **kwargs)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--arch', default='resnet50')
    p.add_argument('--size', type=int, default=224, help='image side')
    p.add_argument('--batchsize', type=int, default=32)
    p.add_argument('--n_class', type=int, default=1000)
    p.add_argument('--steps', type=int, default=30,
                   help='timed steps of SGD and of stale K-FAC')
    p.add_argument('--every', type=int, default=3,
                   help='every-step K-FAC runs on every N-th step only')
    p.add_argument('--skip', type=int, default=1,
                   help='first timed steps of SGD and every-step K-FAC left '
                   'out of their means')
    p.add_argument('--n_batches', type=int, default=4,
                   help='distinct synthetic batches (cycled)')
    p.add_argument('--warmup_steps', type=int, default=2,
                   help='untimed steps per method on a throw-away copy '
                   '(kernel compilation)')
    p.add_argument('--cpu-smoke', dest='cpu_smoke', action='store_true',
                   help='tiny sizes on the CPU: {}'.format(SMOKE))
    args = p.parse_args(argv)
    if args.cpu_smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    return args


def main(argv=None):
    # host malloc only: the CPU smoke run and the loaders
    allocator.configure_allocator()
    args = parse_args(argv)
    device = None
    if not args.cpu_smoke:
        device = device_module.select_gpu_or_exit(
            'gpu_step_time.py', option='GPU run (--cpu-smoke runs on the CPU)')
    where = (device_module.describe(device) if device is not None
             else 'CPU (--cpu-smoke: figures mean nothing)')
    print('{}  {}'.format(datetime.datetime.now().isoformat(
        timespec='seconds'), where), flush=True)
    numpy.random.seed(0)
    base = build(args.arch, args.n_class)
    data = synthetic_batches(args.n_batches, args.batchsize, args.size,
                             args.n_class)
    if device is not None:
        data = [(device.send(x), device.send(t)) for x, t in data]

    if args.warmup_steps:
        start = time.perf_counter()
        for runner in step_time.make_runners(base, device):
            for i in range(args.warmup_steps):
                runner.step(*data[i % len(data)])
        print('untimed warm-up ({} steps per method, kernel compilation): '
              '{:.1f} s'.format(args.warmup_steps,
                                time.perf_counter() - start), flush=True)

    sgd, every, stale = step_time.make_runners(base, device)
    start = time.perf_counter()
    step_time.interleave(sgd, every, stale,
                         [data[i % len(data)] for i in range(args.steps)],
                         args.every)
    print('{}, 3x{}x{}, {} classes, batch {}, one process, {} steps '
          '(every-step K-FAC on every {}); K-FAC {}; {:.1f} s in all'.format(
              args.arch, args.size, args.size, args.n_class, args.batchsize,
              args.steps, args.every, step_time.KFAC_SETTINGS,
              time.perf_counter() - start))
    print('\n'.join(step_time.table(sgd, every, stale, args.skip)))
    if device is not None:
        import cupy
        pool = cupy.get_default_memory_pool()
        print('GPU memory held by CuPy\'s pool: {:.2f} GiB'.format(
            pool.total_bytes() / 2 ** 30))


if __name__ == '__main__':
    main()
