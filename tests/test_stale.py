"""Stale-statistics and fixed-interval schedules."""
import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest
from chainer import serializers
from chainer import training
from chainer.training import extensions

from chainerkfac import stale
from chainerkfac.optimizers import KFAC
import nets


def test_relative_change_definition(rng):
    a, b = rng.randn(3, 3), rng.randn(3, 3)
    expected = 0.5 * numpy.linalg.norm(a - b) / numpy.linalg.norm(b)
    change = stale.relative_change(a, b, 0.5)
    assert numpy.shape(change) == ()  # a device scalar: no host read
    assert float(change) == pytest.approx(expected)
    assert float(stale.relative_change(b, b)) == 0.0
    zero = numpy.zeros((3, 3))
    assert float(stale.relative_change(a, zero)) == float('inf')
    assert float(stale.relative_change(zero, zero)) == 0.0


def test_stale_rule_grows_and_shrinks():
    s = stale.StaleSchedule(threshold=0.1, max_interval=4, warmup=2)
    s.register(['k'])
    assert s.new_interval('k', 2, 0.0) == 1               # warm-up
    steps = []
    for step in (3, 4, 5, 6):
        s.set_interval('k', step, s.new_interval('k', step, 0.0))
        steps.append(s.interval['k'])
    assert steps == [2, 3, 4, 4]                          # +1, capped
    assert s.new_interval('k', 7, 0.5) == 2               # halved
    s2 = stale.StaleSchedule(growth='double', warmup=0, max_interval=64)
    s2.register(['k'])
    s2.set_interval('k', 1, 8)
    assert s2.new_interval('k', 9, 0.0) == 16


@pytest.mark.parametrize('kwargs', [dict(threshold=-1), dict(max_interval=0),
                                    dict(warmup=-1), dict(growth='triple')])
def test_stale_rule_arguments(kwargs):
    with pytest.raises(ValueError):
        stale.StaleSchedule(**kwargs)


def test_fixed_intervals_need_stale_false():
    with pytest.raises(ValueError, match='stale=False'):
        KFAC(factor_interval=2)
    with pytest.raises(ValueError, match='inverse_interval'):
        KFAC(stale=False, inverse_interval=0)


class Frozen(chainer.Chain):
    """l1 sees a frozen input x (its A is constant); l2 sees a fresh random
    input z every step (its A changes)."""

    def __init__(self):
        super(Frozen, self).__init__()
        with self.init_scope():
            self.l1 = L.Linear(4, 3)
            self.l2 = L.Linear(4, 3)

    def forward(self, x, z, t):
        return F.softmax_cross_entropy(self.l1(x) + self.l2(z), t)


def count_statistics(opt):
    """Counts, per schedule key, the steps that computed the statistic."""
    counts = {}
    for block in opt.fisher_blocks:
        original = block.accumulate

        def counting(name, value, block=block, original=original):
            key = block.name + '/' + name
            counts[key] = counts.get(key, 0) + 1
            original(name, value)
        block.accumulate = counting
    return counts


def test_frozen_statistic_goes_stale_and_changing_one_does_not(rng):
    model = Frozen()
    opt = KFAC(lr=0.05, damping=1e-2, cov_ema_decay=1.0, stale_warmup=3,
               stale_threshold=0.05, stale_max_interval=8)
    opt.setup(model)
    counts = count_statistics(opt)
    x = rng.randn(16, 4).astype(numpy.float32)          # the same input
    for step in range(30):
        z = rng.randn(16, 4).astype(numpy.float32)      # a new input
        t = rng.randint(0, 3, 16).astype(numpy.int32)
        opt.update(model, x, z, t)
    sched = opt.schedule
    # refreshed at steps 1, 2, 3 (warm-up), then 4, 6, 9, 13, 18, 24 (+1 each)
    assert counts['/l1/A'] == 9
    assert sched.interval['/l1/A'] == 7
    assert sched.next_due['/l1/A'] == 31
    assert sched.interval['/l2/A'] == 1           # changes every step
    assert counts['/l2/A'] == 30


def test_stale_skips_computation_in_the_hooks(rng):
    model = Frozen()
    opt = KFAC(lr=0.05, damping=1e-2, stale_warmup=0, stale_threshold=10.0)
    opt.setup(model)
    x, t = rng.randn(8, 4).astype('f'), numpy.zeros(8, numpy.int32)
    opt.update(model, x, x, t)   # step 1: everything, nothing to compare to
    opt.update(model, x, x, t)   # step 2: everything, compared: interval 2
    counts = count_statistics(opt)
    opt.update(model, x, x, t)   # step 3: nothing due
    assert counts == {}
    assert all(b.due == set() for b in opt.fisher_blocks)


def test_stale_false_refreshes_everything_every_step_like_cvpr(rng):
    """stale=False equals the every-step behaviour bit for bit: here the
    stale rule with a threshold nothing can pass refreshes every step too."""
    batches = [nets.conv_batch(rng) for _ in range(15)]
    a = nets.make(nets.ConvNet, use_bn=True)
    b = nets.make(nets.ConvNet, use_bn=True)
    opt_a = KFAC(lr=0.1, damping=1e-2, cov_ema_decay=0.5, stale=False)
    opt_a.setup(a)
    opt_b = KFAC(lr=0.1, damping=1e-2, cov_ema_decay=0.5, stale_warmup=0,
                 stale_threshold=0.0)
    opt_b.setup(b)
    counts = count_statistics(opt_a)
    for x, t in batches:
        opt_a.update(a, x, t)
        opt_b.update(b, x, t)
    nets.assert_params_equal(nets.params_of(a), nets.params_of(b))
    assert set(counts.values()) == {15}


def test_fixed_factor_and_inverse_intervals(rng):
    model = nets.make(nets.MLP)
    opt = KFAC(lr=0.1, damping=1e-2, stale=False, factor_interval=3,
               inverse_interval=2)
    opt.setup(model)
    counts = count_statistics(opt)
    inversions = []
    block = opt.fisher_blocks[0]
    original = block.compute_inverses

    def counting(*args, **kwargs):
        inversions.append(opt.t)
        return original(*args, **kwargs)
    block.compute_inverses = counting
    for _ in range(7):
        opt.update(model, *nets.mlp_batch(rng))
    assert counts['/l1/A'] == 3                   # steps 1, 4, 7
    assert inversions == [1, 3, 5, 7]


def test_resume_continues_the_same_schedule(rng, tmp_path):
    batches = [nets.conv_batch(rng) for _ in range(12)]
    kwargs = dict(lr=0.1, damping=1e-2, cov_ema_decay=0.3, stale_warmup=2,
                  stale_threshold=0.3)
    model = nets.make(nets.ConvNet, use_bn=True)
    opt = KFAC(**kwargs)
    opt.setup(model)
    for x, t in batches[:6]:
        opt.update(model, x, t)
    serializers.save_npz(str(tmp_path / 'model.npz'), model)
    serializers.save_npz(str(tmp_path / 'opt.npz'), opt)
    for x, t in batches[6:]:
        opt.update(model, x, t)
    assert max(opt.schedule.interval.values()) > 1   # something went stale

    model2 = nets.make(nets.ConvNet, seed=3, use_bn=True)
    opt2 = KFAC(**kwargs)
    opt2.setup(model2)
    serializers.load_npz(str(tmp_path / 'model.npz'), model2)
    serializers.load_npz(str(tmp_path / 'opt.npz'), opt2)
    for x, t in batches[6:]:
        opt2.update(model2, x, t)
    assert opt2.schedule.next_due == opt.schedule.next_due
    assert opt2.schedule.interval == opt.schedule.interval
    nets.assert_params_equal(nets.params_of(model2), nets.params_of(model))


def test_schedule_is_reported(rng, tmp_path):
    x, t = nets.conv_batch(rng, n=32, dtype=numpy.float32)
    model = nets.make(nets.ConvNet, use_bn=True, dtype=numpy.float32)
    opt = KFAC(lr=0.05, damping=1e-2, stale_warmup=1, stale_threshold=10.0)
    opt.setup(model)
    it = chainer.iterators.SerialIterator(
        chainer.datasets.TupleDataset(x, t), 8)
    trainer = training.Trainer(
        training.StandardUpdater(it, opt, loss_func=model), (3, 'iteration'),
        out=str(tmp_path))
    trainer.extend(extensions.LogReport(trigger=(1, 'iteration')))
    trainer.run()
    log = trainer.get_extension('LogReport').log
    # step 1 (warm-up), step 2 (first comparison: interval 2), nothing at 3
    assert [e['kfac/refresh_fraction'] for e in log] == [1.0, 1.0, 0.0]
    assert [e['kfac/mean_interval'] for e in log] == [1.0, 2.0, 2.0]
