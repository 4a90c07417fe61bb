"""Sharded snapshot written on N processes, resumed on M (any N, M).

    checkpoint_resume.py save DIR [OPTIONS] [--out OUT]   (on N processes)
    checkpoint_resume.py load DIR [OPTIONS] [--out OUT]   (on M, after save)

OPTIONS: a JSON object of further DistributedKFAC keywords (issue 18's
curvature options), the same for both.

``save`` takes STEPS steps of DistributedKFAC, saves a sharded snapshot, and
writes, independently of the snapshot code, what each rank holds: its owned
blocks' state (``DIR/ref/rank<r>.npz``) and the shared state
(``DIR/ref/shared.npz``); then it takes MORE steps and writes the final
parameters. ``load`` builds the model from another seed, loads the snapshot
and checks that every block's momentum and curvature are on its new owner,
equal to what its old owner held, and nowhere else; that the shared state is
everywhere; then takes the MORE steps (same batches: every rank sees the
whole batch, so the result does not depend on the process count) and
compares the parameters with the uninterrupted run. Each rank writes what
it owned or checked to OUT/rank<r>.json (rank_record.py) and prints
'OK rank R'.
"""
import json
import os
import sys

import chainerkfac  # NOQA: I100 (first: makes Chainer importable on NumPy 2)
import chainer
import chainer.functions as F
import chainer.links as L
import numpy

from chainerkfac.optimizers import DistributedKFAC
from chainerkfac.optimizers.distributed_kfac import named_persistents
from chainerkfac.training import checkpoint

import rank_record

STEPS, MORE = 5, 3
# Every rank trains on the whole batch, so a P-process run sees P copies of
# each example: the stale rule's sampling-noise estimate (which divides by
# the number of examples) would then differ with P. A threshold no drift
# reaches makes the intervals grow whatever the noise, so the schedule
# (still stale, with intervals > 1) does not depend on the process count.
KWARGS = dict(lr=0.05, momentum=0.9, damping=1e-2, cov_ema_decay=0.5,
              bn_fisher='full', stale_warmup=2, stale_threshold=1e3)


class ConvNet(chainer.Chain):
    def __init__(self):
        super(ConvNet, self).__init__()
        with self.init_scope():
            self.c1 = L.Convolution2D(2, 4, 3, pad=1)
            self.bn = L.BatchNormalization(4)
            self.c2 = L.Convolution2D(4, 5, 3, stride=2, nobias=True)
            self.emb = L.Bias(shape=(3,))  # no Fisher block: plain momentum
            self.fc = L.Linear(20, 3)

    def forward(self, x, t):
        h = F.relu(self.bn(self.c1(x)))
        h = F.relu(self.c2(h))
        return F.softmax_cross_entropy(self.emb(self.fc(h)), t)


class State(object):
    """Model and optimizer under one ``serialize`` (as a trainer holds
    them)."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def serialize(self, serializer):
        self.model.serialize(serializer['model'])
        self.optimizer.serialize(serializer['optimizer'])


def batches():
    rng = numpy.random.RandomState(1)
    return [(rng.randn(6, 2, 6, 6).astype(numpy.float32),
             rng.randint(0, 3, 6).astype(numpy.int32))
            for _ in range(STEPS + MORE)]


def setup(comm, seed, options):
    numpy.random.seed(seed)
    model = ConvNet()
    opt = DistributedKFAC(comm, **dict(KWARGS, **options))
    opt.setup(model)
    return model, opt


def owned_state(opt, blocks):
    """{key: array} of the blocks' state, read from the objects."""
    out = {}
    for block in blocks:
        for name in block.statistic_names:
            for table, kind in ((block.ema, 'ema'), (block.inverse, 'inv')):
                value = table[name]
                if isinstance(value, tuple):    # inverse='eigen'
                    out['{}|eigval|{}'.format(block.name, name)] = \
                        numpy.asarray(value[0])
                    value = value[1]
                if value is not None:
                    out['{}|{}|{}'.format(block.name, kind, name)] = \
                        numpy.asarray(value)
            out['{}|floor|{}'.format(block.name, name)] = numpy.asarray(
                block.damping_floor[name])
        for pname, param in zip(block.param_names, block.params):
            rule = param.update_rule
            if rule.state is not None:
                out['{}|v|{}'.format(block.name, pname)] = rule.state['v']
            out['{}|t|{}'.format(block.name, pname)] = numpy.asarray(rule.t)
            out['{}|lr_prev|{}'.format(block.name, pname)] = numpy.asarray(
                rule.lr_prev)
    return out


def shared_state(model, opt):
    out = {'param' + k: p.array for k, p in model.namedparams()}
    out.update(('persistent' + k, numpy.asarray(v))
               for k, v in named_persistents(model))
    for p in opt.plain_params:
        out['plain_v' + p.name] = p.update_rule.state['v']
    out['t'] = numpy.asarray(opt.t)
    out['damping'] = numpy.asarray(opt.damping)   # damping_adaptation's
    for key in opt.schedule.next_due:
        out['next_due' + key] = numpy.asarray(opt.schedule.next_due[key])
        out['interval' + key] = numpy.asarray(opt.schedule.interval[key])
    return out


def save(comm, directory, out, options):
    model, opt = setup(comm, 100, options)
    data = batches()
    for x, t in data[:STEPS]:
        opt.update(model, x, t)
    checkpoint.save(directory, State(model, opt), opt, comm,
                    optimizer_path='optimizer')
    ref = os.path.join(directory + '_ref')
    os.makedirs(ref, exist_ok=True)
    numpy.savez(os.path.join(ref, 'rank{}.npz'.format(comm.rank)),
                **owned_state(opt, opt.owned_blocks))
    if comm.rank == 0:
        numpy.savez(os.path.join(ref, 'shared.npz'),
                    **shared_state(model, opt))
        # fisher='mc' samples from NumPy's global generator, the same on
        # every rank here (one seed, the same draws): what a trainer's
        # random-state snapshot restores
        _, keys, pos, has_gauss, cached = numpy.random.get_state()
        numpy.savez(os.path.join(ref, 'random_state.npz'), keys=keys,
                    pos=pos, has_gauss=has_gauss, cached=cached)
    for x, t in data[STEPS:]:
        opt.update(model, x, t)
    if comm.rank == 0:
        numpy.savez(os.path.join(ref, 'final.npz'),
                    **{k: p.array for k, p in model.namedparams()})
    owned = [b.name for b in opt.owned_blocks]
    rank_record.write(out, comm, steps=opt.t, owned=owned,
                      blocks=[b.name for b in opt.fisher_blocks])
    print('OK rank {} owns {}'.format(comm.rank, owned))


def load(comm, directory, out, options):
    rank, size = comm.rank, comm.size
    # other weights: the load sets them
    model, opt = setup(comm, 7 + rank, options)
    info = checkpoint.load(directory, State(model, opt), opt, comm,
                           optimizer_path='optimizer')
    ref = directory + '_ref'
    assert info.iteration == STEPS and info.size == size, vars(info)
    old_size = info.old_size
    refs = [dict(numpy.load(os.path.join(ref, 'rank{}.npz'.format(r))))
            for r in range(old_size)]

    # shared state on every rank, exactly
    with numpy.load(os.path.join(ref, 'shared.npz')) as f:
        expected = dict(f)
    mine = shared_state(model, opt)
    assert mine.keys() == expected.keys(), sorted(
        set(mine) ^ set(expected))
    for k in expected:
        numpy.testing.assert_array_equal(mine[k], expected[k], err_msg=k)

    # every block's state on its new owner only, equal to its old owner's
    owners = checkpoint.block_owners(opt, size)
    checked = []
    for block, owner in zip(opt.fisher_blocks, owners):
        state = owned_state(opt, [block])
        if owner != rank:
            assert all(v is None for v in block.ema.values()), block.name
            assert all(v is None for v in block.inverse.values()), block.name
            assert all(p.update_rule.state is None for p in block.params), \
                block.name
            continue
        old = [r for r in range(old_size)
               if any(k.startswith(block.name + '|ema') for k in refs[r])]
        assert len(old) == 1, (block.name, old)
        saved = {k: v for k, v in refs[old[0]].items()
                 if k.split('|')[0] == block.name}
        assert any('|ema|' in k for k in saved) and \
            any('|v|' in k for k in saved), (block.name, sorted(saved))
        assert state.keys() == saved.keys(), (block.name, sorted(state),
                                              sorted(saved))
        for k in saved:
            numpy.testing.assert_array_equal(state[k], saved[k], err_msg=k)
        checked.append(block.name)
    everywhere = comm.mpi_comm.allgather(checked)
    flat = sorted(n for names in everywhere for n in names)
    assert flat == sorted(b.name for b in opt.fisher_blocks), flat

    # the next steps run, on the owners the load assumed, and continue the
    # uninterrupted run (from the generator state the save run had)
    with numpy.load(os.path.join(ref, 'random_state.npz')) as f:
        numpy.random.set_state(('MT19937', f['keys'], int(f['pos']),
                                int(f['has_gauss']), float(f['cached'])))
    data = batches()
    for i, (x, t) in enumerate(data[STEPS:]):
        opt.update(model, x, t)
        if i == 0:
            assert [b.name for b in opt.owned_blocks] == checked, (
                [b.name for b in opt.owned_blocks], checked)
    assert opt.t == STEPS + MORE
    worst = 0.0
    with numpy.load(os.path.join(ref, 'final.npz')) as f:
        for k, p in model.namedparams():
            scale = float(abs(f[k]).max())
            worst = max(worst, float(abs(p.array - f[k]).max()) / scale)
            numpy.testing.assert_allclose(p.array, f[k], rtol=1e-5,
                                          atol=1e-5 * scale, err_msg=k)
    rank_record.write(out, comm, iteration=info.iteration,
                      snapshot_size=old_size, checked=checked,
                      blocks=[b.name for b in opt.fisher_blocks],
                      shared_keys=len(expected), steps=opt.t,
                      max_error=worst)
    print('OK rank {} of {} (snapshot of {} processes) checked {}'.format(
        rank, size, old_size, checked))


def main():
    argv, out = rank_record.split_out(sys.argv[1:])
    mode, directory = argv[0], argv[1]
    options = json.loads(argv[2]) if len(argv) > 2 else {}
    comm = chainerkfac.create_communicator('mpi')
    try:
        {'save': save, 'load': load}[mode](comm, directory, out, options)
    except checkpoint.CheckpointError as e:
        if comm.rank == 0:
            print('CheckpointError: {}'.format(e), flush=True)
        sys.exit(3)


if __name__ == '__main__':
    main()
