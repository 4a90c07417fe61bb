"""What drop-in users do, under mpiexec, against one process on the global
batch (each rank writes OUT/rank<r>.json, rank_record.py: its checks and its
parameters' largest difference from the one-process run).

    dropin.py MODE [COMM_DTYPE] --out OUT     MODE: clipping, skip_all,
        indices, and the curvature options eigen, kl_clip, mc, lm
"""
import sys

import chainerkfac  # NOQA: I100 (first: makes Chainer importable on NumPy 2)
import chainer
import chainer.functions as F
import numpy
from chainer import optimizer_hooks
from chainerkfac.optimizers.kfac import inverse_cdf_sample

import nets
import rank_record

STEPS = 6
#: the curvature options run longer: 20 stale steps, well past the warm-up,
#: at a learning rate that keeps this random-label problem from diverging
#: (at 0.05 its loss grows 1.1 -> 34 in 20 steps and amplifies the fp32
#: wire's rounding 1e-7 -> 1e-3 between ranks and one process)
OPTION_LR = 0.005
OPTION_STEPS = 20
#: the curvature options of issue 18, each a run of its own
OPTIONS = {'eigen': dict(inverse='eigen'), 'kl_clip': dict(kl_clip=1e-4),
           'mc': dict(fisher='mc', mc_samples=2),
           'lm': dict(damping_adaptation=True, damping_adaptation_interval=1)}


def shared_sampler(opt, uniforms, rows):
    """Makes ``opt`` draw its Monte-Carlo targets from ``uniforms`` (one row
    per call, one value per example of the global batch), taking ``rows``:
    the same example gets the same target in the distributed run and in the
    one-process one."""
    calls = iter(uniforms)

    def sample_targets(probabilities):
        return inverse_cdf_sample(probabilities, next(calls)[rows])
    opt.sample_targets = sample_targets


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
    """Trains; returns each step's report (``chainer.report``)."""
    reports = []
    for step, (x, t) in enumerate(data, 1):
        xs, ts = slicer(x), slicer(t)
        skip = bool(skip_every) and step % skip_every == 0
        reports.append({})
        with chainer.Reporter().scope(reports[-1]):
            if skip_every:
                opt.update(model, xs, ts, skip)
            else:
                opt.update(model, xs, ts)
    return reports


def main():
    argv, out = rank_record.split_out(sys.argv[1:])
    mode = argv[0]
    comm_dtype = argv[1] if len(argv) > 1 else 'float32'
    steps = OPTION_STEPS if mode in OPTIONS else STEPS
    comm = chainerkfac.create_communicator('mpi')
    rank, size = comm.rank, comm.size
    rng = numpy.random.RandomState(3)
    local = 4
    data = [(rng.randn(local * size, 2, 6, 6),
             rng.randint(0, 3, local * size).astype(numpy.int32))
            for _ in range(steps)]
    record = {}
    cls = Branchy if mode == 'skip_all' else nets.ConvNet
    model = nets.make(cls, seed=100 + rank)    # rank 0's are broadcast
    ref = nets.make(cls, seed=100)
    kwargs = dict(KWARGS, **OPTIONS.get(mode, {}))
    if mode in OPTIONS:
        kwargs['lr'] = OPTION_LR
    opt = chainerkfac.DistributedKFAC(comm, comm_dtype=comm_dtype, **kwargs)
    ref_opt = chainerkfac.KFAC(**kwargs)
    opt.setup(model)
    ref_opt.setup(ref)
    if mode == 'indices':
        record['indices'] = opt.indices     # after setup, as the original
    if mode == 'mc':
        uniforms = numpy.random.RandomState(9).uniform(
            size=(2 * steps, local * size))
        shared_sampler(opt, uniforms, slice(rank * local, (rank + 1) * local))
        shared_sampler(ref_opt, uniforms, slice(None))
    if mode == 'clipping':
        for o in (opt, ref_opt):
            o.add_hook(optimizer_hooks.GradientClipping(0.3))
    skip_every = 3 if mode == 'skip_all' else 0
    reports = run(opt, model, data,
                  lambda a: a[rank * local:(rank + 1) * local], skip_every)
    ref_reports = run(ref_opt, ref, data, lambda a: a, skip_every)
    if mode == 'kl_clip':
        record['kl_scales'] = [float(r['kfac/kl_scale']) for r in reports]
    if mode == 'lm':
        record['damping'] = [float(opt.damping), float(ref_opt.damping)]
        record['ratios'] = [[float(r['kfac/reduction_ratio']) for r in rs]
                            for rs in (reports, ref_reports)]
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
