"""Factors that are not positive definite never produce NaN parameters."""
import warnings

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest

from chainerkfac.optimizers import KFAC


def zero_input_model():
    model = chainer.Sequential(L.Linear(4, 3, nobias=True), F.tanh,
                               L.Linear(3, 2))
    return model


def loss_of(model):
    def lossfun(x, t):
        return F.softmax_cross_entropy(model(x), t)
    return lossfun


def run(model, opt, x, t, steps=3):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(steps):
            opt.update(loss_of(model), x, t)
    return [w for w in caught if 'chainerkfac' in str(w.message)]


def test_zero_input_without_damping_warns_once_and_stays_finite(rng):
    model = zero_input_model()
    opt = KFAC(lr=0.1, damping=0.0)
    opt.setup(model)
    x = numpy.zeros((5, 4), numpy.float32)
    t = rng.randint(0, 2, 5).astype(numpy.int32)
    caught = run(model, opt, x, t)
    assert len([w for w in caught if "/0" in str(w.message)]) == 1
    assert 'not positive definite' in str(caught[0].message)
    for p in model.params():
        assert numpy.isfinite(p.array).all()


def test_zero_input_with_damping_is_silent_and_finite(rng):
    model = zero_input_model()
    opt = KFAC(lr=0.1, damping=1e-3)
    opt.setup(model)
    x = numpy.zeros((5, 4), numpy.float32)
    t = rng.randint(0, 2, 5).astype(numpy.int32)
    assert run(model, opt, x, t) == []
    for p in model.params():
        assert numpy.isfinite(p.array).all()


@pytest.mark.parametrize('bn_fisher', ['full', 'unit', 'diag'])
def test_batch_norm_without_damping_stays_finite(rng, bn_fisher):
    model = chainer.Sequential(L.Linear(3, 4), L.BatchNormalization(4),
                               F.relu, L.Linear(4, 2))
    opt = KFAC(lr=0.1, damping=0.0, bn_fisher=bn_fisher)
    opt.setup(model)
    x = rng.randn(2, 3).astype(numpy.float32)  # F has rank <= 2
    t = numpy.array([0, 1], numpy.int32)
    run(model, opt, x, t)
    for p in model.params():
        assert numpy.isfinite(p.array).all()


def test_non_finite_factor_falls_back_to_plain_gradient(rng):
    model = chainer.Sequential(L.Linear(3, 2))
    opt = KFAC(lr=0.1, momentum=0.0, damping=1e-3)
    opt.setup(model)
    x = rng.randn(4, 3).astype(numpy.float32)
    t = numpy.array([0, 1, 0, 1], numpy.int32)
    opt.update(loss_of(model), x, t)
    block = opt.fisher_blocks[0]
    block.ema['A'][0, 0] = numpy.inf  # e.g. an overflowed statistic
    opt.cov_ema_decay = 0.5           # keeps the inf in the EMA
    before = model[0].W.array.copy()
    model.cleargrads()
    loss_of(model)(x, t).backward()
    grad = model[0].W.grad.copy()
    with pytest.warns(RuntimeWarning, match='plain gradient'):
        opt.update(loss_of(model), x, t)
    numpy.testing.assert_allclose(model[0].W.array, before - 0.1 * grad,
                                  rtol=1e-5)


def test_every_bn_mode_and_cholesky_recover_with_the_same_rule():
    """One recovery rule (chainerkfac.linalg.RECOVERY_*): an entry -5e-3
    with damping 1e-3 is raised to base 10^k with base = damping, and
    k = 1 (1e-2) is the first that works, in the full (Cholesky), unit
    (2x2 kernel) and diagonal modes alike, each over what it inverts: the
    whole matrix, the channel's 2x2 block, the one entry."""
    from chainerkfac import linalg
    from chainerkfac.cuda import ops
    from chainerkfac.fisher_blocks.batch_normalization import diagonal_inverse
    f = numpy.array([-5e-3, 1.0])
    expected = 1 / (f + 1e-2)
    full, added = linalg.damped_inverse(numpy.diag(f), 1e-3)
    assert added == pytest.approx(1e-2)
    numpy.testing.assert_allclose(numpy.diag(full), expected, rtol=1e-12)
    status = numpy.zeros(2, numpy.int32)
    unit = ops.unit_fisher_inverse(numpy.diag(f).reshape(1, 2, 2), 1e-3,
                                   status, 0)
    numpy.testing.assert_allclose(numpy.diag(unit[0]), expected, rtol=1e-12)
    diag = diagonal_inverse(f, 1e-3, status, 1)
    numpy.testing.assert_allclose(diag, [expected[0], 1 / (1 + 1e-3)],
                                  rtol=1e-12)
    assert list(status) == [1, 1]
    hopeless = diagonal_inverse(numpy.array([numpy.nan, 1.0]), 1e-3, status, 0)
    assert hopeless[0] == 1 and status[0] == 2     # the plain gradient
