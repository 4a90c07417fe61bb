"""A 200-step stale run keeps a bounded number of packing plans and buffer
bytes.

Usage: bounded_memory.py STEPS COMM_DTYPE CAP [--out OUT]. The plan cache is
lowered to CAP so that eviction happens in a small model. Fresh random
batches make the set of due statistics change from step to step (so the
arrays of a collective change too); the overlap option adds a second
collective. Each rank writes its counts (and the largest seen over the run)
to OUT/rank<r>.json (rank_record.py) and prints
'OK rank R plans P (cap C) distinct-lists D buffer-bytes B'.
"""
import sys

import chainerkfac  # NOQA: I100 (first: makes Chainer importable on NumPy 2)
import chainer
import chainer.functions as F
import chainer.links as L
import numpy

import rank_record
from chainerkfac.communicators import base


class Net(chainer.Chain):
    def __init__(self):
        super(Net, self).__init__()
        with self.init_scope():
            self.c1 = L.Convolution2D(1, 3, 3, pad=1)
            self.bn = L.BatchNormalization(3)
            self.c2 = L.Convolution2D(3, 4, 3, stride=2)
            self.l1 = L.Linear(16, 6)
            self.l2 = L.Linear(6, 3)

    def forward(self, x, t):
        h = F.relu(self.c2(F.relu(self.bn(self.c1(x)))))
        return F.softmax_cross_entropy(self.l2(F.relu(self.l1(h))), t)


def buffer_bytes(comm):
    return sum(b.nbytes for b in comm._buffers.values())


def main():
    argv, out = rank_record.split_out(sys.argv[1:])
    steps, comm_dtype = int(argv[0]), argv[1]
    base.MAX_PLANS, base.PLANS_PER_RANK = int(argv[2]), 1
    comm = chainerkfac.create_communicator('mpi')
    numpy.random.seed(0)
    model = Net()
    opt = chainerkfac.DistributedKFAC(
        comm, lr=0.05, damping=1e-2, cov_ema_decay=0.2, stale_warmup=3,
        stale_threshold=0.3, comm_dtype=comm_dtype,
        communicate_after_forward=True)
    opt.setup(model)
    rng = numpy.random.RandomState(comm.rank)
    cap = max(base.MAX_PLANS, base.PLANS_PER_RANK * comm.size)
    seen_lists, first_bytes = set(), None
    most_plans = most_bytes = 0
    for step in range(steps):
        x = rng.randn(8, 1, 6, 6).astype(numpy.float32)
        t = rng.randint(0, 3, 8).astype(numpy.int32)
        opt.update(model, x, t)
        seen_lists.update(comm._plans)
        if step == 0:  # the first step refreshes every statistic
            first_bytes = buffer_bytes(comm)
        assert len(comm._plans) <= cap, (step, len(comm._plans), cap)
        assert buffer_bytes(comm) <= first_bytes, (step, buffer_bytes(comm))
        most_plans = max(most_plans, len(comm._plans))
        most_bytes = max(most_bytes, buffer_bytes(comm))
    # the schedule varied the collectives' arrays beyond the cap: plans were
    # evicted and rebuilt, and the run went on
    assert len(seen_lists) > cap, (len(seen_lists), cap)
    rank_record.write(out, comm, steps=steps, comm_dtype=comm_dtype,
                      plans=len(comm._plans), cap=cap,
                      most_plans=most_plans, distinct_lists=len(seen_lists),
                      first_buffer_bytes=first_bytes,
                      most_buffer_bytes=most_bytes,
                      buffer_bytes=buffer_bytes(comm))
    print('OK rank {} plans {} (cap {}) distinct-lists {} buffer-bytes {}'
          .format(comm.rank, len(comm._plans), cap, len(seen_lists),
                  buffer_bytes(comm)))


if __name__ == '__main__':
    main()
