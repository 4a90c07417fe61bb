"""40 stale steps of DistributedKFAC against KFAC, past the warm-up.

Usage: long_run.py STEPS [--out OUT]. Each rank takes its slice of one fixed
global batch, repeated every step: the statistics settle, so the stale
schedule lengthens intervals (a meaningful comparison; fresh random batches
at a large learning rate are chaotic and amplify round-off). Checks, on
every rank: parameters within 1e-5 (of each parameter's scale) of
single-process KFAC on the whole batch, and the refresh schedule identical
to KFAC's. Each rank writes its schedule, mean interval and largest error to
OUT/rank<r>.json (rank_record.py) and prints
'OK rank R mean-interval I max-error E'.
"""
import sys

import chainerkfac  # NOQA: I100 (first: makes Chainer importable on NumPy 2)
import chainer
import chainer.functions as F
import chainer.links as L
import numpy

import rank_record

GLOBAL_BATCH = 12  # divisible by 1, 2, 3, 4 ranks
KWARGS = dict(lr=0.05, momentum=0.9, damping=1e-2, cov_ema_decay=0.5,
              stale=True, stale_warmup=10)


class Net(chainer.Chain):
    def __init__(self):
        super(Net, self).__init__()
        with self.init_scope():
            self.c1 = L.Convolution2D(2, 4, 3, pad=1)
            self.c2 = L.Convolution2D(4, 5, 3, stride=2, nobias=True)
            self.fc = L.Linear(20, 3)

    def forward(self, x, t):
        h = F.relu(self.c2(F.relu(self.c1(x))))
        return F.softmax_cross_entropy(self.fc(h), t)


def main():
    argv, out = rank_record.split_out(sys.argv[1:])
    steps = int(argv[0])
    comm = chainerkfac.create_communicator('mpi')
    rng = numpy.random.RandomState(0)
    x = rng.randn(GLOBAL_BATCH, 2, 6, 6).astype(numpy.float32)
    t = rng.randint(0, 3, GLOBAL_BATCH).astype(numpy.int32)
    local = GLOBAL_BATCH // comm.size
    xs = x[comm.rank * local:(comm.rank + 1) * local]
    ts = t[comm.rank * local:(comm.rank + 1) * local]

    numpy.random.seed(5)
    model = Net()
    opt = chainerkfac.DistributedKFAC(comm, **KWARGS)
    opt.setup(model)
    numpy.random.seed(5)
    ref = Net()
    ref_opt = chainerkfac.KFAC(**KWARGS)
    ref_opt.setup(ref)
    for _ in range(steps):
        opt.update(model, xs, ts)
        ref_opt.update(ref, x, t)

    assert opt.schedule.interval == ref_opt.schedule.interval, (
        opt.schedule.interval, ref_opt.schedule.interval)
    assert opt.schedule.next_due == ref_opt.schedule.next_due
    mean_interval = opt.schedule.summary()
    assert mean_interval > 1.5, mean_interval  # the run went stale for real
    worst = 0.0
    for (name, p), (_, q) in zip(sorted(model.namedparams()),
                                 sorted(ref.namedparams())):
        scale = float(abs(q.array).max())
        worst = max(worst, float(abs(p.array - q.array).max()) / scale)
        numpy.testing.assert_allclose(p.array, q.array, rtol=1e-5,
                                      atol=1e-5 * scale, err_msg=name)
    rank_record.write(out, comm, steps=opt.t, mean_interval=mean_interval,
                      max_error=worst, interval=opt.schedule.interval,
                      next_due=opt.schedule.next_due,
                      kfac_interval=ref_opt.schedule.interval,
                      kfac_next_due=ref_opt.schedule.next_due)
    print('OK rank {} mean-interval {:.2f} max-error {:.1e}'.format(
        comm.rank, mean_interval, worst))


if __name__ == '__main__':
    main()
