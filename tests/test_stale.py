"""Stale-statistics and fixed-interval schedules, and the stale rule's
measures (sampling noise, drift), each against an independent reference."""
import math

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest
from chainer import serializers
from chainer import training
from chainer.training import extensions

from chainerkfac import stale
from chainerkfac.fisher_blocks import base as block_base
from chainerkfac.fisher_blocks.batch_normalization import \
    BatchNormalizationBlock
from chainerkfac.fisher_blocks.batch_normalization import per_example_gradients
from chainerkfac.fisher_blocks.convolution_2d import patches_matrix
from chainerkfac.optimizers import KFAC
import nets


# --- the measures ----------------------------------------------------------
def per_example_matrices(columns, n, scale, with_bias):
    """x_n = scale * sum_{t in n} cbar cbar^T, formed explicitly."""
    d, m = columns.shape
    per = m // n
    cols = columns
    if with_bias:
        cols = numpy.concatenate([columns, numpy.ones((1, m))], 0)
    return numpy.stack([scale * cols[:, i * per:(i + 1) * per]
                        @ cols[:, i * per:(i + 1) * per].T
                        for i in range(n)])


@pytest.mark.parametrize('with_bias', [False, True])
def test_example_moment_is_exact_for_one_column_per_example(rng, with_bias):
    columns = rng.randn(5, 7)
    xs = per_example_matrices(columns, 7, 0.3, with_bias)
    expected = (xs ** 2).sum(axis=(1, 2)).mean()
    got = block_base.example_moment(columns, 7, 0.3, with_bias)
    assert float(got) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize('with_bias', [False, True])
def test_example_moment_probes_are_unbiased_and_centre_exactly(rng,
                                                               with_bias):
    """With T > 1 columns per example: (1) for any probes Z, the moment minus
    the owner's (1/K)||X Z||^2 equals (1/(K N)) sum_k sum_n ||(x_n - X) z_k||^2
    exactly; (2) over many Rademacher probes, the mean is the exact
    (1/N) sum_n ||x_n||_F^2."""
    n, per, d = 6, 4, 5
    columns = rng.randn(d, n * per) + 1.0
    xs = per_example_matrices(columns, n, 0.5, with_bias)
    mean = xs.mean(0)
    size = d + 1 if with_bias else d
    z = rng.choice([-1.0, 1.0], (size, 3))
    moment = float(block_base.example_moment(columns, n, 0.5, with_bias, z))
    centred = sum(float((((x - mean) @ z) ** 2).sum()) for x in xs) / (3 * n)
    owner = float(block_base.statistic_square_norm(mean, z))
    assert moment - owner == pytest.approx(centred, rel=1e-10)
    estimates = [float(block_base.example_moment(
        columns, n, 0.5, with_bias, rng.choice([-1.0, 1.0], (size, 4))))
        for _ in range(3000)]
    exact = (xs ** 2).sum(axis=(1, 2)).mean()
    assert numpy.mean(estimates) == pytest.approx(exact, rel=0.02)


def test_example_moment_needs_probes_for_several_columns(rng):
    with pytest.raises(ValueError, match='probes'):
        block_base.example_moment(rng.randn(3, 8), 4, 1.0)


def test_sampling_noise_estimates_the_variance_of_the_batch_mean(rng):
    """E V = E||X - E X||^2, measured over many batches from one
    distribution of per-example contributions x = a a^T."""
    d, n, trials = 4, 16, 4000
    mu = numpy.array([1.0, -0.5, 0.2, 0.0])
    true_mean = numpy.outer(mu, mu) + numpy.eye(d)   # E[a a^T], a ~ N(mu, I)
    estimates, errors = [], []
    for _ in range(trials):
        a = rng.randn(n, d) + mu
        x = a.T @ a / n
        moment = block_base.example_moment(a.T, n, 1.0)
        v = stale.sampling_noise(moment, (x * x).sum(), n)
        estimates.append(float(v))
        errors.append(((x - true_mean) ** 2).sum())
    assert numpy.mean(estimates) == pytest.approx(numpy.mean(errors),
                                                  rel=0.05)
    assert stale.sampling_noise(None, 1.0, 10) == 0.0
    assert stale.sampling_noise(numpy.float64(3.0), 1.0, 1) == 0.0
    assert float(stale.sampling_noise(numpy.float64(0.5), 1.0, 5)) == 0.0


def test_drift_removes_the_noise_of_both_batches():
    ref, new = numpy.eye(3), 1.5 * numpy.eye(3)
    raw = ((new - ref) ** 2).sum() / 3.0           # 0.25
    assert float(stale.drift(new, 0.0, ref, 0.0)) == pytest.approx(raw)
    assert float(stale.drift(new, 0.3, ref, 0.15)) == pytest.approx(
        raw - 0.45 / 3.0)
    assert float(stale.drift(new, 1.0, ref, 1.0)) < 0      # all noise
    zero = numpy.zeros((3, 3))
    assert float(stale.drift(zero, 0.0, zero, 0.0)) == 0.0
    assert float(stale.drift(new, 0.0, zero, 0.0)) == float('inf')
    assert numpy.isnan(float(stale.drift(new * numpy.nan, 0.0, ref, 0.0)))


def test_bn_moments_equal_the_explicit_per_example_fisher(rng):
    link = L.BatchNormalization(3)
    x = rng.randn(5, 3, 2, 2).astype(numpy.float64)
    gy = rng.randn(5, 3, 2, 2).astype(numpy.float64)
    link.gamma.array = link.gamma.array.astype(numpy.float64)
    link.beta.array = link.beta.array.astype(numpy.float64)

    class Function(object):
        axis, eps = (0, 2, 3), 2e-5
    g, b = per_example_gradients(x, gy, Function.axis, Function.eps, 1.0)
    for mode in ('full', 'unit', 'diag'):
        block = BatchNormalizationBlock('/bn', link, mode)
        block._x = x
        block.backward(Function(), (x,), gy, 1.0)
        stats, moments = block.take_statistics(with_moments=True)
        f = numpy.concatenate([g, b], 1)
        if mode == 'full':
            xs = numpy.einsum('ni,nj->nij', f, f)
        elif mode == 'unit':
            pair = numpy.stack([g, b], 2)                   # (N, C, 2)
            xs = numpy.einsum('nci,ncj->ncij', pair, pair)
        else:
            xs = f * f
        numpy.testing.assert_allclose(stats['F'], xs.mean(0), rtol=1e-12)
        mu2, examples = moments['F']
        assert examples == 5
        assert float(mu2) == pytest.approx(
            (xs.reshape(5, -1) ** 2).sum(1).mean(), rel=1e-12)


def test_conv_block_moments_use_probes_and_linear_blocks_do_not(rng):
    model = nets.make(nets.ConvNet)
    opt = KFAC(lr=0.01)
    opt.setup(model)
    opt.update(model, *nets.conv_batch(rng))
    probed = {b.name: dict(b.probed) for b in opt.fisher_blocks}
    assert probed == {'/c1': {'A': True, 'G': True},
                      '/c2': {'A': True, 'G': True},
                      '/fc': {'A': False, 'G': False}}


def test_conv_moment_matches_the_explicit_per_example_statistic(rng):
    """The moment a Convolution2D block records equals, averaged over its
    probe sets, the exact mean of ||x_n||^2 over the batch's examples."""
    link = L.Convolution2D(2, 3, 3, pad=1)
    link.W.array = link.W.array.astype(numpy.float64)
    link.b.array = link.b.array.astype(numpy.float64)
    x = rng.randn(4, 2, 5, 5) + 0.5
    y = F.convolution_2d(x, link.W, link.b, pad=1)
    function = y.creator
    from chainerkfac.fisher_blocks.convolution_2d import Convolution2DBlock
    block = Convolution2DBlock('/c', link)
    patches = patches_matrix(x, 3, 3, function)
    xs = per_example_matrices(patches, 4, 1.0, True)
    exact = (xs ** 2).sum(axis=(1, 2)).mean()
    got = []
    for step in range(1, 9):                  # every probe set once
        block.capture_step = step
        block.forward(function, (x, link.W.array, link.b.array))
        stats, moments = block.take_statistics(with_moments=True)
        got.append(float(moments['A'][0]))
        numpy.testing.assert_allclose(stats['A'], xs.mean(0), rtol=1e-10)
    assert numpy.mean(got) == pytest.approx(exact, rel=0.3)
    assert len(set(got)) > 1                  # the probe sets take turns


# --- the interval rule -------------------------------------------------------
def test_proportional_rule_targets_the_threshold():
    s = stale.StaleSchedule(threshold=0.2, max_interval=16, warmup=2)
    s.register(['k'])
    s.begin_step(1, 0.1)
    assert s.new_interval('k', 2, 0.0) == 1               # warm-up
    s.refreshed('k', 3, 4)
    # 4 steps later: drift 0.1 -> 4 * 0.2/0.1 = 8; 0 -> doubling
    assert s.new_interval('k', 7, 0.1 ** 2) == 8
    assert s.new_interval('k', 7, 0.0) == 8
    assert s.new_interval('k', 7, 0.19 ** 2) == 5         # at least k + 1
    assert s.new_interval('k', 7, 0.4 ** 2) == 2          # 4 * 0.5
    assert s.new_interval('k', 7, 5.0 ** 2) == 1
    assert s.new_interval('k', 7, -0.3) == 8              # noise: no drift
    assert s.new_interval('k', 7, float('inf')) == 1
    assert s.new_interval('k', 7, float('nan')) == 1
    s.refreshed('k', 3, 12)
    assert s.new_interval('k', 15, 0.0) == 16             # capped


def test_increment_and_double_growth():
    s = stale.StaleSchedule(threshold=0.1, max_interval=4, warmup=2,
                            growth='increment')
    s.register(['k'])
    s.begin_step(3, 1.0)
    steps = []
    step = 3
    for _ in range(4):
        interval = s.new_interval('k', step, 0.0)
        s.refreshed('k', step, interval)
        steps.append(interval)
        step += interval
    assert steps == [2, 3, 4, 4]                          # +1, capped
    assert s.new_interval('k', step, 0.5 ** 2) == 2       # halved
    s2 = stale.StaleSchedule(growth='double', warmup=0, max_interval=64)
    s2.register(['k'])
    s2.refreshed('k', 1, 8)
    assert s2.new_interval('k', 9, 0.0) == 16


def test_intervals_are_in_learning_rate_weighted_steps():
    """Interval 4 decided at lr 0.1: due once the learning rates sum to
    0.4 (4 steps at 0.1, 2 at 0.2), or after max_interval steps when the
    learning rate is 0."""
    def due_after(lrs, interval=4, max_interval=20):
        s = stale.StaleSchedule(max_interval=max_interval)
        s.register(['k'])
        s.begin_step(1, 0.1)
        s.refreshed('k', 1, interval)
        for step, lr in enumerate(lrs, 2):
            s.begin_step(step, lr)
            if s.is_due('k', step):
                return step - 1
        return None
    assert due_after([0.1] * 10) == 4
    assert due_after([0.2] * 10) == 2                     # warm-up: sooner
    assert due_after([0.05] * 10) == 8                    # decay: later
    assert due_after([0.0] * 30, max_interval=20) == 20
    s = stale.StaleSchedule()
    s.register(['k'])
    s.begin_step(1, 0.0)
    s.refreshed('k', 1, 3)                    # lr 0: steps only
    for step in range(2, 21):
        s.begin_step(step, 1.0)
        assert not s.is_due('k', step)
    s.begin_step(21, 1.0)
    assert s.is_due('k', 21)


def test_call_early_and_elapsed():
    s = stale.StaleSchedule()
    s.register(['k'])
    assert s.elapsed('k', 5) == 1                         # never refreshed
    s.begin_step(1, 0.1)
    s.refreshed('k', 1, 10)
    s.begin_step(2, 0.1)
    assert not s.is_due('k', 2)
    s.call_early('k', 2)
    s.begin_step(3, 0.1)
    assert s.is_due('k', 3) and s.elapsed('k', 3) == 2


def test_loss_spike_signal():
    s = stale.StaleSchedule(loss_ratio=1.5)
    assert not s.observe_loss(2.0)                        # no average yet
    assert not any(s.observe_loss(v) for v in (1.9, 2.1, 1.8, 2.0))
    assert s.observe_loss(3.5)                            # 3.5 > 1.5 * ~2
    assert s.observe_loss(float('nan'))
    quiet = stale.StaleSchedule(loss_ratio=None)
    assert not quiet.observe_loss(1.0) and not quiet.observe_loss(100.0)
    negative = stale.StaleSchedule()
    assert not negative.observe_loss(-1.0) and not negative.observe_loss(5.0)


@pytest.mark.parametrize('kwargs', [
    dict(threshold=0), dict(threshold=-1), dict(max_interval=0),
    dict(max_interval=2.5), dict(warmup=-1), dict(growth='triple'),
    dict(loss_ratio=1.0)])
def test_stale_rule_arguments(kwargs):
    with pytest.raises(ValueError):
        stale.StaleSchedule(**kwargs)


def test_fixed_intervals_need_stale_false():
    with pytest.raises(ValueError, match='stale=False'):
        KFAC(factor_interval=2)
    with pytest.raises(ValueError, match='inverse_interval'):
        KFAC(stale=False, inverse_interval=0)
    with pytest.raises(ValueError, match='stale_loss_ratio'):
        KFAC(stale_loss_ratio=0.5)


# --- the EMA -----------------------------------------------------------------
@pytest.mark.parametrize('decay', [0.05, 0.3, 1.0])
@pytest.mark.parametrize('k', [1, 2, 7])
def test_ema_after_k_steps_equals_k_every_step_updates(rng, decay, k):
    block = block_base.FisherBlock.__new__(block_base.FisherBlock)
    block.ema = {'A': rng.randn(3, 3)}
    start, new = block.ema['A'].copy(), rng.randn(3, 3)
    block.update_ema({'A': new}, decay, {'A': k})
    expected = start
    for _ in range(k):
        expected = decay * new + (1 - decay) * expected
    numpy.testing.assert_allclose(block.ema['A'], expected, rtol=1e-12)


# --- in the optimizer --------------------------------------------------------
class Frozen(chainer.Chain):
    """Two linear layers on two inputs, ``x`` and ``z``, summed."""

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

        def counting(name, *args, block=block, original=original):
            key = block.name + '/' + name
            counts[key] = counts.get(key, 0) + 1
            original(name, *args)
        block.accumulate = counting
    return counts


def test_constant_statistic_goes_stale_and_drifting_one_does_not(rng):
    model = Frozen()
    opt = KFAC(lr=0.01, damping=1e-2, cov_ema_decay=1.0, stale_warmup=3,
               stale_threshold=0.05, stale_max_interval=8,
               stale_loss_ratio=None)
    opt.setup(model)
    counts = count_statistics(opt)
    x = rng.randn(512, 4).astype(numpy.float32)         # the same input
    for step in range(30):
        z = rng.randn(512, 4).astype(numpy.float32) * 1.2 ** step
        t = rng.randint(0, 3, 512).astype(numpy.int32)
        opt.update(model, x, z, t)                      # A of l2: +44 %/step
    sched = opt.schedule
    # refreshed at steps 1-3 (warm-up), then 4 (k 1 -> 2), 6 (-> 4),
    # 10 (-> 8, the cap), 18, 26
    assert counts['/l1/A'] == 8
    assert sched.interval['/l1/A'] == 8
    assert sched.interval['/l2/A'] == 1
    assert counts['/l2/A'] == 30


def test_sampling_noise_alone_does_not_keep_a_statistic_fresh(rng):
    """A statistic drawn afresh each step from one distribution changes by
    ~40 % from batch to batch at N = 32 (noise), yet does not drift: its
    interval grows to the maximum. The same statistic with the noise
    estimate taken away (the raw change, as a rule without it sees) stays
    at interval 1."""
    def run(drop_noise):
        model = Frozen()
        opt = KFAC(lr=1e-4, damping=1e-2, stale_warmup=2,
                   stale_threshold=0.2, stale_max_interval=16,
                   stale_loss_ratio=None)
        opt.setup(model)
        if drop_noise:
            for block in opt.fisher_blocks:
                original = block.accumulate

                def no_moment(name, value, moment=None, examples=0,
                              original=original):
                    original(name, value)
                block.accumulate = no_moment
        local = numpy.random.RandomState(3)
        raw = []
        previous = None
        for step in range(60):
            z = local.standard_t(3, (32, 4)).astype(numpy.float32) + 1
            x = local.randn(32, 4).astype(numpy.float32)
            t = local.randint(0, 3, 32).astype(numpy.int32)
            opt.update(model, x, z, t)
            a = z.T.astype(numpy.float64) @ z / 32
            if previous is not None:
                raw.append(numpy.linalg.norm(a - previous) /
                           numpy.linalg.norm(previous))
            previous = a
        return opt.schedule.interval['/l2/A'], numpy.median(raw)
    interval, raw_change = run(False)
    assert raw_change > 0.2                      # batch-to-batch: noise
    assert interval >= 8
    interval_without, _ = run(True)
    assert interval_without <= 2


@pytest.mark.parametrize('decay', [0.05, 0.1, 1.0])
def test_a_jump_of_the_loss_gradient_is_refreshed_within_two_steps(rng,
                                                                   decay):
    """Acceptance: after a calm start (intervals > 2), the loss, hence its
    gradient, grows 100x: every statistic of every block is refreshed
    within two steps, whatever cov_ema_decay. (The rule of earlier versions
    kept G stale for its whole interval here.)"""
    model = nets.make(nets.MLP, dtype=numpy.float32)
    opt = KFAC(lr=0.01, damping=1e-2, cov_ema_decay=decay, stale_warmup=3)
    opt.setup(model)
    x, t = nets.mlp_batch(rng, n=256, dtype=numpy.float32)
    scale = [1.0]

    def lossfun(x, t):
        return scale[0] * model(x, t)
    refreshed = []
    for step in range(1, 31):
        if step == 25:
            keys = sorted(opt.schedule.interval)
            assert min(opt.schedule.interval[k] for k in keys) > 2, \
                opt.schedule.interval
            scale[0] = 100.0
        opt.update(lossfun, x, t)
        refreshed.append(set(b.schedule_keys[n] for b in opt.fisher_blocks
                             for n in b.due))
    after = refreshed[24] | refreshed[25]           # steps 25 and 26
    assert after == set(opt.schedule.interval), after


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
    stale rule with warm-up over the whole run refreshes every step too."""
    batches = [nets.conv_batch(rng) for _ in range(15)]
    a = nets.make(nets.ConvNet, use_bn=True)
    b = nets.make(nets.ConvNet, use_bn=True)
    opt_a = KFAC(lr=0.1, damping=1e-2, cov_ema_decay=0.5, stale=False)
    opt_a.setup(a)
    opt_b = KFAC(lr=0.1, damping=1e-2, cov_ema_decay=0.5, stale_warmup=15)
    opt_b.setup(b)
    counts = count_statistics(opt_a)
    for x, t in batches:
        opt_a.update(a, x, t)
        opt_b.update(b, x, t)
    nets.assert_params_equal(nets.params_of(a), nets.params_of(b))
    assert set(counts.values()) == {15}


def test_fixed_factor_and_inverse_intervals(rng):
    model = nets.make(nets.MLP)
    opt = KFAC(lr=0.1, damping=1e-2, stale=False, factor_interval=2,
               inverse_interval=3)
    opt.setup(model)
    counts = count_statistics(opt)
    inversions = []
    block = opt.fisher_blocks[0]
    original = block.compute_inverses

    def counting(*args, **kwargs):
        inversions.append(opt.t)
        return original(*args, **kwargs)
    block.compute_inverses = counting
    emas = []
    original_ema = block.update_ema

    def recording(stats, decay, elapsed=None, present=None):
        emas.append(dict(elapsed or {}))
        return original_ema(stats, decay, elapsed, present)
    block.update_ema = recording
    for _ in range(7):
        opt.update(model, *nets.mlp_batch(rng))
    assert counts['/l1/A'] == 4                   # steps 1, 3, 5, 7
    assert inversions == [1, 4, 7]
    assert emas == [{'A': 1, 'G': 1}] + [{'A': 2, 'G': 2}] * 3


def test_a_fixed_schedule_that_inverts_more_often_than_it_refreshes():
    with pytest.raises(ValueError, match='inverse_interval 2 < factor_inte'):
        KFAC(stale=False, factor_interval=3, inverse_interval=2)


def test_schedule_objects_and_the_keywords(rng):
    """``schedule=`` takes a schedule object; the keywords build the same
    one (equal training); both at once is an error."""
    model_a, model_b = nets.make(nets.MLP), nets.make(nets.MLP)
    a = KFAC(lr=0.05, damping=1e-2, stale_threshold=0.3, stale_warmup=2)
    b = KFAC(lr=0.05, damping=1e-2, schedule=stale.StaleSchedule(
        threshold=0.3, warmup=2))
    a.setup(model_a)
    b.setup(model_b)
    for _ in range(8):
        x, t = nets.mlp_batch(rng)
        a.update(model_a, x, t)
        b.update(model_b, x, t)
    nets.assert_params_equal(nets.params_of(model_a), nets.params_of(model_b))
    assert a.schedule.next_due == b.schedule.next_due
    fixed = KFAC(schedule=stale.FixedSchedule(2, 4))
    assert fixed.schedule.inverse_interval == 4
    with pytest.raises(ValueError, match='either schedule='):
        KFAC(schedule=stale.FixedSchedule(), stale_warmup=3)
    with pytest.raises(ValueError, match='either schedule='):
        KFAC(schedule=stale.FixedSchedule(), stale=False)
    with pytest.raises(ValueError, match='chainerkfac.stale.Schedule'):
        KFAC(schedule='stale')


def test_resume_continues_the_same_schedule(rng, tmp_path):
    batches = [nets.conv_batch(rng) for _ in range(14)]
    kwargs = dict(lr=0.02, damping=1e-2, cov_ema_decay=0.3, stale_warmup=2,
                  stale_threshold=1.0)
    model, opt, model2, opt2 = nets.interrupted_and_uninterrupted(
        kwargs, batches, 7, tmp_path)
    assert max(opt.schedule.interval.values()) > 1   # something went stale
    for table in ('next_due', 'interval', 'last_refresh', 'last_time',
                  'budget'):
        assert getattr(opt2.schedule, table) == getattr(opt.schedule, table)
    assert opt2.schedule.loss_average == opt.schedule.loss_average
    nets.assert_params_equal(nets.params_of(model2), nets.params_of(model))


def test_snapshot_of_an_older_version_resumes_with_a_warning(rng, tmp_path):
    model = nets.make(nets.MLP)
    opt = KFAC(lr=0.02, damping=1e-2, stale_warmup=1)
    opt.setup(model)
    for _ in range(3):
        opt.update(model, *nets.mlp_batch(rng))
    serializers.save_npz(str(tmp_path / 'opt.npz'), opt)
    with numpy.load(str(tmp_path / 'opt.npz')) as f:
        old = {k: v for k, v in f.items() if '/ref_' not in k}
    numpy.savez(str(tmp_path / 'old.npz'), **old)
    opt2 = KFAC(lr=0.02, damping=1e-2, stale_warmup=1)
    opt2.setup(nets.make(nets.MLP))
    with pytest.warns(RuntimeWarning, match='older version'):
        serializers.load_npz(str(tmp_path / 'old.npz'), opt2)
    block = opt2.fisher_blocks[0]
    assert block.reference['A'] is block.ema['A']


def test_schedule_is_reported(rng, tmp_path):
    x, t = nets.conv_batch(rng, n=32, dtype=numpy.float32)
    model = nets.make(nets.ConvNet, use_bn=True, dtype=numpy.float32)
    opt = KFAC(lr=0.05, damping=1e-2, stale_warmup=1, stale_threshold=10.0,
               stale_loss_ratio=None)
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
    assert all(e['kfac/early_refreshes'] == 0 for e in log)


def test_loss_spike_calls_every_statistic_early(rng):
    """A loss 3x its recent average: every statistic not refreshed at that
    step is due at the next, and the step reports how many were called."""
    model = nets.make(nets.MLP, dtype=numpy.float32)
    opt = KFAC(lr=0.01, damping=1e-2, stale_warmup=2)
    opt.setup(model)
    x, t = nets.mlp_batch(rng, n=128, dtype=numpy.float32)
    scale = [1.0]

    def lossfun(x, t):
        return scale[0] * model(x, t)
    for _ in range(12):
        opt.update(lossfun, x, t)
    step = opt.t + 1
    waiting = [k for k in opt.schedule.interval
               if not opt.schedule.is_due(k, step)]
    assert waiting                                  # stale before the spike
    scale[0] = 3.0
    summary = {}
    reporter = chainer.Reporter()
    with reporter.scope(summary):
        opt.update(lossfun, x, t)
    assert summary['kfac/early_refreshes'] >= len(waiting) - 1
    opt.schedule.begin_step(opt.t + 1, opt.lr)
    for key in opt.schedule.interval:
        assert opt.schedule.is_due(key, opt.t + 1), key


def test_a_partial_refresh_keeps_the_damping_product(rng):
    """A refreshed alone is re-inverted with gamma / d_G, d_G being the
    diagonal G's kept inverse was made with: d_A d_G stays gamma although
    the traces (hence pi) moved; both refreshed: pi from the new traces."""
    from chainerkfac import step_status
    from chainerkfac.fisher_blocks.linear import LinearBlock
    link = L.Linear(3, 2)
    block = LinearBlock('/l', link)
    a = rng.randn(4, 4)
    g = rng.randn(2, 2)
    block.ema = {'A': a @ a.T + numpy.eye(4), 'G': g @ g.T + numpy.eye(2)}
    status = step_status.StepStatus(numpy, 1)
    gamma = 1e-2
    block.compute_inverses(gamma, 1.0, 'tracenorm', ['A', 'G'], status, 0)
    d_a, d_g = float(block._diagonal['A']), float(block._diagonal['G'])
    assert d_a * d_g == pytest.approx(gamma)
    pi = math.sqrt((numpy.trace(block.ema['A']) / 4) /
                   (numpy.trace(block.ema['G']) / 2))
    assert d_a == pytest.approx(pi * math.sqrt(gamma))
    g_inverse = block.inverse['G']
    block.ema['A'] = 9 * block.ema['A']                  # tr A, pi: x9, x3
    block.compute_inverses(gamma, 1.0, 'tracenorm', ['A'], status, 0)
    assert block.inverse['G'] is g_inverse
    assert float(block._diagonal['A']) * d_g == pytest.approx(gamma)
    numpy.testing.assert_allclose(
        block.inverse['A'],
        numpy.linalg.inv(block.ema['A'] + gamma / d_g * numpy.eye(4)),
        rtol=1e-10)
    block.compute_inverses(gamma, 1.0, 'tracenorm', ['A', 'G'], status, 0)
    assert float(block._diagonal['A']) == pytest.approx(3 * pi *
                                                        math.sqrt(gamma))
