"""DistributedKFAC on a GPU under mpiexec against one process.

Usage: ``mpiexec -n N python gpu_equivalence.py [--cpu] [--out OUT]``;
each rank writes its device and errors to ``OUT/rank<r>.json``
(``rank_record.py``) and prints ``OK rank R ...``; a mismatch exits
non-zero.

Each rank takes GPU ``intra_rank % count``, so two ranks may share one GPU
(the 'mpi' communicator stages CuPy arrays through host memory). For two
scenarios of ``equivalence.py`` (a conv net on per-rank shards of a global
batch, and one with BatchNormalization on the same batch everywhere) it
checks after a few steps that

1. every rank holds the same parameters and BN statistics (bit for bit);
2. they equal single-process ``KFAC`` on the whole batch on the same device,
   from rank 0's initial weights (within ``rtol`` of each parameter's scale:
   the reductions run in other orders);
3. on a GPU, they are close to the same single-process run on the CPU
   (``rtol`` 1e-3 of each parameter's scale: CuPy's and NumPy's kernels
   round differently).

``--cpu`` runs the same on NumPy (what the CPU test suite runs). The GPU run
has not been made from this repository's machines yet (``scripts/gpu_check.sh``
makes it).
"""
import sys
import warnings

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2
import chainerkfac  # NOQA: I100
import chainer
import numpy

from chainerkfac.optimizers import DistributedKFAC
from chainerkfac.optimizers import KFAC
from chainerkfac.optimizers.distributed_kfac import named_persistents
from chainerkfac.training import device as device_module

import rank_record
from equivalence import batches, ConvNet, KWARGS, STEPS

# name: (use_bn, same batch on every rank, rtol against one process)
SCENARIOS = {'global_batch': (False, False, 1e-4),
             'batch_norm': (True, True, 1e-4)}
CPU_RTOL = 1e-3


def to_cpu(array):
    return chainer.backends.cuda.to_cpu(array)


def state(model):
    out = {k: to_cpu(v.array) for k, v in model.namedparams()}
    out.update({k: to_cpu(v) for k, v in named_persistents(model)
                if v is not None and not numpy.isscalar(v)})
    return out


def single_process(use_bn, data, device):
    numpy.random.seed(100)
    ref = ConvNet(use_bn)
    ref.to_device(device)
    opt = KFAC(**KWARGS)
    opt.setup(ref)
    for x, t in data:
        opt.update(ref, device.send(x), device.send(t))
    return ref


def worst_error(model, ref, rtol, what):
    worst = 0.0
    mine = dict((k, to_cpu(p.array)) for k, p in model.namedparams())
    for k, p in ref.namedparams():
        q, p = mine[k], to_cpu(p.array)
        scale = float(abs(p).max())
        worst = max(worst, float(abs(q - p).max()) / scale)
        numpy.testing.assert_allclose(q, p, rtol=rtol, atol=rtol * scale,
                                      err_msg='{}: {}'.format(what, k))
    return worst


def scenario(name, comm, device):
    use_bn, same_batch, rtol = SCENARIOS[name]
    rank, size = comm.rank, comm.size
    local_n = 4
    global_n = local_n if same_batch else local_n * size
    numpy.random.seed(100 + rank)  # different initial weights per rank
    model = ConvNet(use_bn)
    model.to_device(device)
    opt = DistributedKFAC(comm, **KWARGS)
    opt.setup(model)
    data = batches(ConvNet, global_n)
    for x, t in data:
        if not same_batch:
            x = x[rank * local_n:(rank + 1) * local_n]
            t = t[rank * local_n:(rank + 1) * local_n]
        opt.update(model, device.send(x), device.send(t))
    assert opt.t == STEPS, opt.t

    mine = state(model)
    for other in comm.mpi_comm.allgather(mine):
        for k in mine:
            numpy.testing.assert_array_equal(other[k], mine[k],
                                             err_msg='ranks differ: ' + k)
    ref = single_process(use_bn, data, device)
    errors = [worst_error(model, ref, rtol, 'vs one process')]
    if device.xp is not numpy:
        cpu_ref = single_process(use_bn, data, chainer.get_device('@numpy'))
        errors.append(worst_error(model, cpu_ref, CPU_RTOL, 'vs the CPU'))
    return errors


def main():
    warnings.filterwarnings('ignore', message='chainerkfac: no Fisher block')
    argv, out = rank_record.split_out(sys.argv[1:])
    comm = chainerkfac.create_communicator('mpi')
    if '--cpu' in argv:
        device = chainer.get_device('@numpy')
        where = 'CPU'
    else:
        device = device_module.select_gpu_or_exit(
            'gpu_equivalence.py', comm, allow_shared=True,
            option='GPU run (--cpu runs on the CPU)')
        where = device_module.describe(device)
    report, errors_of = [], {}
    for name in sorted(SCENARIOS):
        errors = errors_of[name] = scenario(name, comm, device)
        report.append('{} max-error {}'.format(name, '/'.join(
            '{:.2e}'.format(e) for e in errors)))
    # errors: [vs one process on the device] (+ [vs the CPU] on a GPU)
    rank_record.write(out, comm, device=where, gpu=device.xp is not numpy,
                      steps=STEPS, errors=errors_of,
                      rtol={k: v[2] for k, v in SCENARIOS.items()},
                      cpu_rtol=CPU_RTOL)
    # one write per line: ranks' output is interleaved by mpiexec
    sys.stdout.write('OK rank {} of {} on {}: {}\n'.format(
        comm.rank, comm.size, where, '; '.join(report)))
    sys.stdout.flush()


if __name__ == '__main__':
    main()
