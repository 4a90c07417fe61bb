"""Stale schedules are identical on every rank and equal single-process KFAC,
also through a loss spike (the loss, averaged over ranks in stage 2, calls
every statistic early on its owner; stage 4 tells every rank).

Usage: stale_schedule.py [--out OUT]. Each rank writes its schedule and its
largest error against KFAC to OUT/rank<r>.json (rank_record.py).
"""
import sys

import numpy

import chainerkfac
import rank_record
from chainerkfac.optimizers import KFAC
from equivalence import ConvNet

STEPS = 12
SPIKE = 100.0   # the loss of the last step, times this
KWARGS = dict(lr=0.02, damping=1e-2, cov_ema_decay=0.3, stale_warmup=2,
              stale_threshold=1.0, bn_fisher='unit')


def main():
    _, out = rank_record.split_out(sys.argv[1:])
    comm = chainerkfac.create_communicator('mpi')
    rank, size = comm.rank, comm.size
    rng = numpy.random.RandomState(5)
    local = 4
    data = [(rng.randn(local * size, 2, 6, 6).astype(numpy.float32),
             rng.randint(0, 3, local * size).astype(numpy.int32))
            for _ in range(STEPS)]
    numpy.random.seed(100 + rank)
    model = ConvNet(use_bn=False)
    opt = chainerkfac.DistributedKFAC(comm, **KWARGS)
    opt.setup(model)
    scale = [1.0]

    def scaled(model):
        return lambda x, t: scale[0] * model(x, t)
    for step, (x, t) in enumerate(data, 1):
        scale[0] = SPIKE if step == STEPS else 1.0
        opt.update(scaled(model), x[rank * local:(rank + 1) * local],
                   t[rank * local:(rank + 1) * local])
        if step == STEPS - 1:
            stale_before = [k for k in opt.schedule.interval
                            if opt.schedule.next_due[k] > STEPS + 1]
    assert stale_before, 'nothing was stale before the spike'
    assert all(opt.schedule.next_due[k] == STEPS + 1
               for k in opt.schedule.next_due), opt.schedule.next_due
    mine = (dict(opt.schedule.next_due), dict(opt.schedule.interval))
    for other in comm.mpi_comm.allgather(mine):
        assert other == mine, (other, mine)
    assert max(mine[1].values()) > 1, mine        # some statistic went stale

    numpy.random.seed(100)
    ref = ConvNet(use_bn=False)
    ref_opt = KFAC(**KWARGS)
    ref_opt.setup(ref)
    for step, (x, t) in enumerate(data, 1):
        scale[0] = SPIKE if step == STEPS else 1.0
        ref_opt.update(scaled(ref), x, t)
    assert ref_opt.schedule.next_due == mine[0], (ref_opt.schedule.next_due,
                                                  mine[0])
    worst = 0.0
    for (k, p), (_, q) in zip(sorted(ref.namedparams()),
                              sorted(model.namedparams())):
        worst = max(worst, float(abs(q.array - p.array).max()
                                 / abs(p.array).max()))
        numpy.testing.assert_allclose(q.array, p.array, rtol=1e-4,
                                      atol=1e-4 * abs(p.array).max(),
                                      err_msg=k)
    rank_record.write(out, comm, steps=STEPS, stale_before=stale_before,
                      next_due=mine[0], interval=mine[1],
                      kfac_next_due=ref_opt.schedule.next_due,
                      max_error=worst)
    print('OK rank {} intervals {}'.format(rank, sorted(mine[1].values())))


if __name__ == '__main__':
    main()
