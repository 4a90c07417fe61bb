#!/usr/bin/env python
"""Bytes moved per rank per step: DistributedKFAC (fp32, fp16) vs the original.

Without arguments: prints the planned volumes for ResNet-50 (ImageNet) and a
CIFAR-style ResNet-20 for 2..64 ranks, then runs real DistributedKFAC steps
of the ResNet-20 under ``mpiexec -n 2, 3, 4`` and checks that the
communicator's byte counters equal the plan. Targets: ours fp32 <= 50 % of
the original, fp16 <= 25 %.

    .venv/bin/python benchmarks/comm_volume.py
"""
import argparse
import os
import subprocess
import sys

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import chainerkfac  # NOQA: E402
from chainerkfac.optimizers.traffic import planned_step_traffic  # NOQA: E402
from models import resnet  # NOQA: E402

RANKS = (2, 4, 8, 16, 32, 64)


def small_model():
    numpy.random.seed(0)
    return resnet.ResNetCIFAR(20, n_class=10, in_channels=1)


def table(name, model, bn_fisher):
    print('\n{} (bn_fisher={}): MB sent per rank per step (mean over ranks);'
          ' ratios to the original: stages 2+4 alone / everything'
          .format(name, bn_fisher))
    print('{:>5} {:>9} {:>9} {:>9} {:>15} {:>15}'.format(
        'ranks', 'original', 'ours fp32', 'ours fp16', 'fp32/orig',
        'fp16/orig'))
    worst = numpy.zeros(4)
    for size in RANKS:
        f32 = planned_step_traffic(model, size, 'float32', bn_fisher)
        f16 = planned_step_traffic(model, size, 'float16', bn_fisher)
        orig = numpy.mean(f32['original'])
        ratios = numpy.array([numpy.mean(f32['pipeline']), numpy.mean(
            f32['ours']), numpy.mean(f16['pipeline']), numpy.mean(
                f16['ours'])]) / orig
        worst = numpy.maximum(worst, ratios)
        print('{:>5} {:>9.2f} {:>9.2f} {:>9.2f} {:>7.4f}/{:<7.4f} '
              '{:>7.4f}/{:<7.4f}'.format(
                  size, orig / 2 ** 20, numpy.mean(f32['ours']) / 2 ** 20,
                  numpy.mean(f16['ours']) / 2 ** 20, *ratios))
    return worst


def verify(comm_dtype):
    """One real step under mpiexec; counters must equal the plan."""
    import chainer.functions as F
    comm = chainerkfac.create_communicator('mpi')
    model = small_model()
    opt = chainerkfac.DistributedKFAC(comm, lr=0.01, comm_dtype=comm_dtype)
    opt.setup(model)
    rng = numpy.random.RandomState(comm.rank)
    x = rng.rand(2, 1, 28, 28).astype(numpy.float32)
    t = rng.randint(0, 10, 2).astype(numpy.int32)

    def loss(x, t):
        return F.softmax_cross_entropy(model(x), t)

    opt.update(loss, x, t)      # first step (also synchronises)
    comm.reset_traffic()
    opt.update(loss, x, t)
    plan = planned_step_traffic(small_model(), comm.size, comm_dtype)
    planned = plan['ours'][comm.rank]
    status = 'match' if comm.bytes_sent == planned else 'MISMATCH'
    print('verify {} ranks={} rank={} measured={} planned={} {}'.format(
        comm_dtype, comm.size, comm.rank, comm.bytes_sent, planned, status))
    return comm.bytes_sent == planned


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--verify', choices=('float32', 'float16'))
    args = parser.parse_args()
    if args.verify:
        sys.exit(0 if verify(args.verify) else 1)
    worst = table('ResNet-50', resnet.ResNet50(), 'full')
    table('ResNet-50', resnet.ResNet50(), 'unit')
    small = table('ResNet-20 (1x28x28)', small_model(), 'full')
    for name, w in (('ResNet-50', worst), ('ResNet-20', small)):
        print('{}: worst over ranks, stages 2+4 / everything: fp32 '
              '{:.4f}/{:.4f} (target <= 0.50), fp16 {:.4f}/{:.4f} (target '
              '<= 0.25)'.format(name, *w))
    mpiexec = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    ok = True
    for n in (2, 3, 4):
        for dtype in ('float32', 'float16'):
            out = subprocess.run(
                [mpiexec, '-n', str(n), sys.executable, __file__, '--verify',
                 dtype], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                universal_newlines=True, timeout=600)
            lines = [line for line in out.stdout.splitlines()
                     if line.startswith('verify')]
            print('\n'.join(lines))
            ok = ok and out.returncode == 0 and len(lines) == n
    print('real steps match the plan: {}'.format('yes' if ok else 'NO'))
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
