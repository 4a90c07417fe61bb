"""What drop-in users do, under mpiexec, against one process on the global
batch (each rank writes OUT/rank<r>.json, rank_record.py: its checks and its
parameters' largest difference from the one-process run).

    dropin.py MODE --out OUT     MODE: clipping, skip_all, indices
"""
import sys

import chainerkfac  # NOQA: I100 (first: makes Chainer importable on NumPy 2)
import chainer.functions as F
import numpy
from chainer import optimizer_hooks

import nets
import rank_record

STEPS = 6
KWARGS = dict(lr=0.05, momentum=0.9, damping=1e-2, cov_ema_decay=0.5,
              stale_warmup=2, stale_threshold=1.0)


class Branchy(nets.ConvNet):
    """ConvNet whose second convolution every rank skips every third step
    (a data-independent branch: the same on all ranks)."""

    def forward(self, x, t, skip=False):
        h = F.relu(self.c1(x))
        if skip:
            h = F.max_pooling_2d(h, 2, 2)[:, :, :2, :2]
            h = F.concat([h, h[:, :1]], axis=1)
        else:
            h = F.relu(self.c2(h))
        return F.softmax_cross_entropy(self.fc(h), t)


def run(opt, model, data, slicer, skip_every=0):
    for step, (x, t) in enumerate(data, 1):
        xs, ts = slicer(x), slicer(t)
        skip = bool(skip_every) and step % skip_every == 0
        opt.update(model, xs, ts, skip) if skip_every else opt.update(
            model, xs, ts)


def main():
    argv, out = rank_record.split_out(sys.argv[1:])
    mode = argv[0]
    comm = chainerkfac.create_communicator('mpi')
    rank, size = comm.rank, comm.size
    rng = numpy.random.RandomState(3)
    local = 4
    data = [(rng.randn(local * size, 2, 6, 6),
             rng.randint(0, 3, local * size).astype(numpy.int32))
            for _ in range(STEPS)]
    record = {}
    cls = Branchy if mode == 'skip_all' else nets.ConvNet
    model = nets.make(cls, seed=100 + rank)    # rank 0's are broadcast
    ref = nets.make(cls, seed=100)
    opt = chainerkfac.DistributedKFAC(comm, **KWARGS)
    ref_opt = chainerkfac.KFAC(**KWARGS)
    opt.setup(model)
    ref_opt.setup(ref)
    if mode == 'indices':
        record['indices'] = opt.indices     # after setup, as the original
    if mode == 'clipping':
        for o in (opt, ref_opt):
            o.add_hook(optimizer_hooks.GradientClipping(0.3))
    skip_every = 3 if mode == 'skip_all' else 0
    run(opt, model, data, lambda a: a[rank * local:(rank + 1) * local],
        skip_every)
    run(ref_opt, ref, data, lambda a: a, skip_every)
    if mode == 'indices':
        record['indices_after'] = opt.indices
        record['owned'] = [opt.fisher_blocks.index(b)
                           for b in opt.owned_blocks]
    record['max_difference'] = max(
        float(abs(p.array - q.array).max() / max(abs(q.array).max(), 1e-12))
        for (_, p), (_, q) in zip(sorted(model.namedparams()),
                                  sorted(ref.namedparams())))
    record['next_due_equal'] = opt.schedule.next_due == \
        ref_opt.schedule.next_due
    rank_record.write(out, comm, **record)


if __name__ == '__main__':
    main()
