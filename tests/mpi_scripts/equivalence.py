"""DistributedKFAC under mpiexec against single-process KFAC.

Usage: equivalence.py SCENARIO [--out OUT]   (see SCENARIOS). Each rank
writes its record to OUT/rank<r>.json (rank_record.py: the blocks it owns,
its traffic, the largest error against KFAC) and prints 'OK rank R'.
"""
import sys

import chainerkfac  # NOQA: I100 (first: makes Chainer importable on NumPy 2)
import chainer
import chainer.functions as F
import chainer.links as L
import numpy

from chainerkfac.optimizers import DistributedKFAC
from chainerkfac.optimizers import KFAC
from chainerkfac.optimizers.distributed_kfac import named_persistents

import rank_record

STEPS = 3
KWARGS = dict(lr=0.2, momentum=0.9, damping=1e-2, cov_ema_decay=0.5,
              bn_fisher='full')


class ConvNet(chainer.Chain):
    def __init__(self, use_bn):
        super(ConvNet, self).__init__()
        with self.init_scope():
            self.c1 = L.Convolution2D(2, 4, 3, pad=1)
            self.bn = L.BatchNormalization(4) if use_bn else None
            self.c2 = L.Convolution2D(4, 5, 3, stride=2, nobias=True)
            self.emb = L.Bias(shape=(3,))  # a link without a Fisher block
            self.fc = L.Linear(20, 3)

    def forward(self, x, t):
        h = self.c1(x)
        if self.bn is not None:
            h = self.bn(h)
        h = F.relu(self.c2(F.relu(h)))
        return F.softmax_cross_entropy(self.emb(self.fc(h)), t)


class TwoLayer(chainer.Chain):
    def __init__(self, use_bn):
        super(TwoLayer, self).__init__()
        with self.init_scope():
            self.l1 = L.Linear(6, 5)
            self.l2 = L.Linear(5, 3)

    def forward(self, x, t):
        return F.softmax_cross_entropy(self.l2(F.tanh(self.l1(x))), t)


# name: (model, use_bn, same batch on every rank, DistributedKFAC kwargs, rtol)
SCENARIOS = {
    'global_batch': (ConvNet, False, False, {}, 1e-5),
    'batch_norm': (ConvNet, True, True, {}, 3e-5),
    'overlap': (ConvNet, False, False,
                dict(communicate_after_forward=True), 1e-5),
    'count_assignment': (ConvNet, True, True, dict(assignment='count'), 1e-5),
    'accumulate': (ConvNet, False, False, dict(acc_iters=2), 1e-5),
    # fp16 keeps ~11 significant bits of each gradient, factor and step;
    # three steps of a well-damped problem stay within 2% (measured ~3e-3).
    'fp16': (ConvNet, False, False, dict(comm_dtype='float16'), 2e-2),
    'two_blocks': (TwoLayer, False, False, {}, 1e-5),
}


def batches(model_cls, n_global, seed=1):
    rng = numpy.random.RandomState(seed)
    out = []
    for _ in range(STEPS):
        shape = (n_global, 6) if model_cls is TwoLayer else (n_global, 2, 6, 6)
        out.append((rng.randn(*shape).astype(numpy.float32),
                    rng.randint(0, 3, n_global).astype(numpy.int32)))
    return out


def main():
    argv, out = rank_record.split_out(sys.argv[1:])
    name = argv[0]
    model_cls, use_bn, same_batch, dist_kwargs, rtol = SCENARIOS[name]
    comm = chainerkfac.create_communicator('mpi')
    rank, size = comm.rank, comm.size
    acc = dist_kwargs.get('acc_iters', 1)
    local_n = 4
    global_n = local_n if same_batch else local_n * size

    numpy.random.seed(100 + rank)  # different initial weights per rank
    model = model_cls(use_bn)
    kwargs = dict(KWARGS, **dist_kwargs)
    opt = DistributedKFAC(comm, **kwargs)
    opt.setup(model)
    data = batches(model_cls, global_n * acc)
    for x, t in data:
        for micro in range(acc):
            xs = x[micro * global_n:(micro + 1) * global_n]
            ts = t[micro * global_n:(micro + 1) * global_n]
            if not same_batch:
                xs = xs[rank * local_n:(rank + 1) * local_n]
                ts = ts[rank * local_n:(rank + 1) * local_n]
            opt.update(model, xs, ts)
    assert opt.t == STEPS, opt.t

    # every rank holds the same parameters and BN statistics
    mine = {k: v.array for k, v in model.namedparams()}
    mine.update({k: numpy.asarray(v) for k, v in named_persistents(model)})
    for other in comm.mpi_comm.allgather(mine):
        for k in mine:
            numpy.testing.assert_array_equal(other[k], mine[k], err_msg=k)

    # ... equal to single-process KFAC on the whole batch from rank 0's init
    numpy.random.seed(100)
    ref = model_cls(use_bn)
    ref_kwargs = {k: v for k, v in kwargs.items()
                  if k not in ('comm_dtype', 'assignment',
                               'communicate_after_forward', 'acc_iters')}
    ref_opt = KFAC(**ref_kwargs)
    ref_opt.setup(ref)
    for x, t in data:
        ref_opt.update(ref, x, t)
    worst = 0.0
    for (k, p), q in zip(sorted(ref.namedparams()),
                         [p for _, p in sorted(model.namedparams())]):
        worst = max(worst, float(abs(q.array - p.array).max()
                                 / abs(p.array).max()))
        # rtol relative to each parameter's largest entry: fp32 round-off
        # of differently ordered sums is ~1e-7 of the scale, not of each entry
        numpy.testing.assert_allclose(q.array, p.array, rtol=rtol,
                                      atol=rtol * abs(p.array).max(),
                                      err_msg=k)
    if use_bn:
        numpy.testing.assert_allclose(model.bn.avg_mean, ref.bn.avg_mean,
                                      rtol=1e-5)
    owned = [b.name for b in opt.owned_blocks]
    rank_record.write(
        out, comm, scenario=name, steps=opt.t, owned=owned,
        blocks=[b.name for b in opt.fisher_blocks],
        bytes_sent=comm.bytes_sent, bytes_received=comm.bytes_received,
        max_error=worst, rtol=rtol,
        checks=['same parameters and persistents on every rank',
                'parameters equal KFAC within rtol']
        + (['BN running mean equals KFAC'] if use_bn else []))
    print('OK rank {} owns {} sent {} received {} max-error {:.2e}'.format(
        rank, owned, comm.bytes_sent, comm.bytes_received, worst))


if __name__ == '__main__':
    main()
