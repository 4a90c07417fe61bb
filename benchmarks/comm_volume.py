#!/usr/bin/env python
"""Bytes moved per rank per step: DistributedKFAC (fp32, fp16) vs the original.

Without arguments: prints the planned volumes for ResNet-50 (ImageNet) and a
CIFAR-style ResNet-20 for 2..64 ranks, then the bytes of the two mappings of
the V collectives onto NCCL ('pure_nccl': grouped reduce/bcast per owner vs
reduceScatter/allGather padded to the largest segment) for ResNet-50, then
runs real DistributedKFAC steps of the ResNet-20 under ``mpiexec -n 2, 3, 4``
through 'mpi' and through 'pure_nccl' (its MPI emulation of NCCL, both
mappings) and checks that the communicators' byte counters equal the plans.
Targets: ours fp32 <= 50 % of the original, fp16 <= 25 %.

    .venv/bin/python benchmarks/comm_volume.py

``--time COMM`` times one step's collectives (stage 2 ReduceScatterV, its
after-forward A part on the side stream, the fp32 all-reduce of plain
parameters and BN statistics, stage 4 AllGatherV) of ResNet-50-shaped
arrays through COMM, fp32 and fp16, on this rank's GPU with ``--gpu``::

    mpiexec -n 2 python benchmarks/comm_volume.py --time mpi --gpu
    python benchmarks/comm_volume.py --time pure_nccl --gpu
"""
import argparse
import os
import re
import subprocess
import sys

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import chainerkfac  # NOQA: E402
from chainerkfac.communicators import nccl_mapping  # NOQA: E402
from chainerkfac.optimizers import traffic  # NOQA: E402
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


def nccl_table(name, model, bn_fisher):
    """MB each rank sends per step through 'pure_nccl' under the two
    mappings (mean over ranks; 'grouped' equals 'mpi')."""
    print('\n{} (bn_fisher={}) through pure_nccl: MB sent per rank per step '
          '(mean over ranks, all collectives); padded/grouped ratio'.format(
              name, bn_fisher))
    print('{:>5} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9}'.format(
        'ranks', 'grouped f32', 'padded f32', 'grouped f16', 'padded f16',
        'f32 ratio', 'f16 ratio'))
    worst = [0.0, 0.0]
    for size in RANKS:
        row = []
        for dtype in ('float32', 'float16'):
            for mapping in ('grouped', 'padded'):
                plan = traffic.planned_nccl_traffic(
                    model, size, dtype, mapping, bn_fisher)
                row.append(numpy.mean(plan['ours']))
        ratios = [row[1] / row[0], row[3] / row[2]]
        worst = [max(w, r) for w, r in zip(worst, ratios)]
        print('{:>5} {:>12.2f} {:>12.2f} {:>12.2f} {:>12.2f} {:>9.3f} '
              '{:>9.3f}'.format(size, *([v / 2 ** 20 for v in row]
                                        + ratios)))
    return worst


def make_communicator(name, mapping='auto'):
    if name == 'mpi':
        return chainerkfac.create_communicator('mpi')
    backend = 'nccl' if name == 'pure_nccl' else 'mpi_emulation'
    return chainerkfac.create_communicator('pure_nccl', nccl_backend=backend,
                                           mapping=mapping)


def verify(comm_dtype, communicator='mpi', mapping='auto'):
    """One real step under mpiexec; counters must equal the plan."""
    import chainer.functions as F
    comm = make_communicator(communicator, mapping)
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
    if communicator == 'mpi':
        plan = planned_step_traffic(small_model(), comm.size, comm_dtype)
    else:
        plan = traffic.planned_nccl_traffic(small_model(), comm.size,
                                                 comm_dtype, mapping)
    planned = plan['ours'][comm.rank]
    # The ranks' results travel to rank 0 through MPI, which alone prints:
    # parsing several ranks' interleaved output once read 'NO' where every
    # rank had printed 'match'.
    results = comm.mpi_comm.gather((comm.rank, comm.bytes_sent, planned))
    if comm.rank != 0:
        return True
    name = communicator if communicator == 'mpi' else 'pure_nccl/' + mapping
    for rank, measured, expected in results:
        print('verify {} {} ranks={} rank={} measured={} planned={} {}'.format(
            name, comm_dtype, comm.size, rank, measured, expected,
            'match' if measured == expected else 'MISMATCH'))
    all_match = all(measured == expected for _, measured, expected in results)
    print('verify-summary ranks={} all-match={}'.format(
        comm.size, 'yes' if all_match else 'no'), flush=True)
    return all_match


def step_arrays(model, size, rank, xp, seed=0):
    """One step's collective inputs for ``rank``: stage 2 segments (without
    the A factors), the A factors sent after the forward pass, the plain
    and BN arrays, stage 4 segments (this rank's values, others' shapes)."""
    import chainer.links as L
    from chainerkfac import assignment
    from chainerkfac import fisher_blocks
    blocks, _ = fisher_blocks.create_fisher_blocks(model, 'full')
    owners = assignment.block_owners(blocks, size, 'balanced')
    rng = numpy.random.RandomState(seed + rank)

    def array(shape):
        return xp.asarray(rng.standard_normal(shape).astype(numpy.float32))
    stage2 = [[] for _ in range(size)]
    forward_a = [[] for _ in range(size)]
    stage4 = [[] for _ in range(size)]
    for block, owner in zip(blocks, owners):
        stage2[owner] += [(array(p.shape), False) for p in block.params]
        for name, shape in sorted(block.statistic_shapes().items()):
            sym = len(shape) == 2 and shape[0] == shape[1]
            target = forward_a if name == 'A' else stage2
            target[owner].append((array(shape), sym))
        stage4[owner] += [array(p.shape) for p in block.params]
    covered = set(id(p) for b in blocks for p in b.params)
    plain = [array(p.shape) for p in model.params() if id(p) not in covered]
    plain += [array(lk.avg_mean.shape) for lk in model.links()
              for _ in range(2) if isinstance(lk, L.BatchNormalization)]
    return stage2, forward_a, plain, stage4


def time_collectives(communicator, gpu, model_name, repeat):
    """Seconds per call of each collective of a step (max over ranks,
    median of ``repeat`` calls), fp32 and fp16."""
    import time
    try:
        comm = make_communicator(communicator)
    except chainerkfac.communicators.CommunicatorUnavailable as e:
        sys.stderr.write('comm_volume.py: error: --time {}: {}\n'.format(
            communicator, e))
        sys.exit(2)
    xp, sync = numpy, (lambda: None)
    where = 'CPU'
    if gpu:  # pragma: no cover - needs a GPU
        from chainerkfac.training import device as device_module
        device = device_module.select_gpu_or_exit(
            'comm_volume.py', comm, allow_shared=communicator == 'mpi')
        import cupy
        xp, sync = cupy, device.device.synchronize
        where = device_module.describe(device)
    numpy.random.seed(0)
    model = resnet.ResNet50() if model_name == 'resnet50' else small_model()
    stage2, forward_a, plain, stage4 = step_arrays(model, comm.size,
                                                   comm.rank, xp)
    values = sum(int(a.size) for seg in stage2 for a, _ in seg)
    results = []
    for dtype in ('float32', 'float16'):
        calls = [
            ('stage 2 ReduceScatterV (grads, G)',
             lambda: comm.reduce_scatter_v(stage2, dtype)),
            ('stage 2 A after forward (side stream)',
             lambda: comm.start_reduce_scatter_v(
                 forward_a, dtype, purpose='rs_forward').wait()),
            ('all-reduce plain + BN (fp32)',
             lambda: comm.allreduce_mean(plain, 'float32')),
            ('stage 4 AllGatherV (steps)',
             lambda: comm.all_gather_v(stage4, dtype)),
        ]
        for name, call in calls:
            call()                       # buffers, plans, NCCL warm-up
            seconds = []
            for _ in range(repeat):
                sync()
                comm.mpi_comm.Barrier()
                start = time.perf_counter()
                call()
                sync()
                seconds.append(time.perf_counter() - start)
            worst = comm.mpi_comm.allreduce(float(numpy.median(seconds)),
                                            op=MPI_MAX())
            results.append((dtype, name, worst))
    if comm.rank == 0:
        label = communicator if communicator == 'mpi' else (
            '{} ({} mapping)'.format(communicator, comm.mapping))
        print('{} on {} rank(s), {}; {} model, {:.1f} M values in stage 2 '
              'without A'.format(label, comm.size, where, model_name,
                                 values / 1e6))
        print('{:>8} {:>40} {:>10}'.format('dtype', 'collective', 'ms'))
        for dtype, name, s in results:
            print('{:>8} {:>40} {:>10.2f}'.format(dtype, name, 1e3 * s))
        total = {d: sum(s for dd, _, s in results if dd == d)
                 for d in ('float32', 'float16')}
        print('step communication: fp32 {:.2f} ms, fp16 {:.2f} ms'.format(
            1e3 * total['float32'], 1e3 * total['float16']))


def MPI_MAX():
    from mpi4py import MPI
    return MPI.MAX


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--verify', choices=('float32', 'float16'))
    parser.add_argument('--communicator', default='mpi',
                        choices=('mpi', 'pure_nccl', 'pure_nccl_emulated'),
                        help='for --verify and --time')
    parser.add_argument('--mapping', default='auto',
                        choices=nccl_mapping.MAPPINGS)
    parser.add_argument('--time', metavar='COMM',
                        choices=('mpi', 'pure_nccl', 'pure_nccl_emulated'),
                        help='time one step\'s collectives through COMM')
    parser.add_argument('--gpu', action='store_true',
                        help='--time on this rank\'s GPU')
    parser.add_argument('--model', default='resnet50',
                        choices=('resnet50', 'resnet20'))
    parser.add_argument('--repeat', type=int, default=5)
    args = parser.parse_args()
    if args.verify:
        sys.exit(0 if verify(args.verify, args.communicator, args.mapping)
                 else 1)
    if args.time:
        time_collectives(args.time, args.gpu, args.model, args.repeat)
        return
    worst = table('ResNet-50', resnet.ResNet50(), 'full')
    table('ResNet-50', resnet.ResNet50(), 'unit')
    small = table('ResNet-20 (1x28x28)', small_model(), 'full')
    nccl_worst = nccl_table('ResNet-50', resnet.ResNet50(), 'full')
    for name, w in (('ResNet-50', worst), ('ResNet-20', small)):
        print('{}: worst over ranks, stages 2+4 / everything: fp32 '
              '{:.4f}/{:.4f} (target <= 0.50), fp16 {:.4f}/{:.4f} (target '
              '<= 0.25)'.format(name, *w))
    print('ResNet-50 through pure_nccl: the padded mapping moves up to '
          '{:.2f}x (fp32) / {:.2f}x (fp16) the bytes of the grouped one, '
          'which moves what mpi does: grouped is the default for unequal '
          'segments'.format(*nccl_worst))
    mpiexec = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    ok = True
    runs = [('mpi', 'auto'), ('pure_nccl_emulated', 'grouped'),
            ('pure_nccl_emulated', 'padded')]
    for n in (2, 3, 4):
        for dtype in ('float32', 'float16'):
            for communicator, mapping in runs:
                out = subprocess.run(
                    [mpiexec, '-n', str(n), sys.executable, __file__,
                     '--verify', dtype, '--communicator', communicator,
                     '--mapping', mapping], stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, universal_newlines=True,
                    timeout=600)
                # only rank 0 prints: its gathered lines and one summary
                print('\n'.join(line for line in out.stdout.splitlines()
                                 if line.startswith('verify ')))
                summary = re.findall(r'^verify-summary ranks=(\d+) '
                                     r'all-match=(yes|no)$', out.stdout,
                                     re.MULTILINE)
                ok = (ok and out.returncode == 0
                      and summary == [(str(n), 'yes')])
    print('real steps match the plan: {}'.format('yes' if ok else 'NO'))
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
