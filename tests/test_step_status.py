"""One host transfer per step: device statuses, fallbacks decided on the
device, recovery of failed inversions on the host afterwards."""
import warnings

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest
from chainer import serializers

from chainerkfac import step_status
from chainerkfac.optimizers import KFAC


def test_fetch_is_one_transfer_and_keeps_order():
    before = step_status.fetch_count
    ints = numpy.array([0, 3, -2], numpy.int32)
    scalars = [numpy.float32(0.5), numpy.array(numpy.inf, numpy.float32)]
    out = step_status.fetch(ints, scalars, numpy.arange(4.0).reshape(2, 2))
    assert step_status.fetch_count == before + 1
    numpy.testing.assert_array_equal(out[0], [0, 3, -2])
    numpy.testing.assert_array_equal(out[1], [0.5, numpy.inf])
    numpy.testing.assert_array_equal(out[2], [0, 1, 2, 3])
    assert step_status.fetch(ints, [])[1].size == 0


def test_status_slots_are_distinct_per_block_and_statistic():
    status = step_status.StepStatus(numpy, 3)
    slots = [status.fallback_slot(i) for i in range(3)]
    slots += [status.statistic_slot(i, j) for i in range(3) for j in range(3)]
    assert len(set(slots)) == len(slots) == status.array.size
    with pytest.raises(ValueError):
        status.statistic_slot(0, 3)
    status.flag_fallback_if(1, numpy.bool_(True))
    status.flag_fallback_if(1, numpy.bool_(False))  # never clears
    assert status.array[status.fallback_slot(1)] == 1
    status.reset()
    assert not status.array.any()


def bn_net():
    return chainer.Sequential(
        L.Convolution2D(1, 3, 3, pad=1), L.BatchNormalization(3), F.relu,
        L.Linear(None, 4))


@pytest.mark.parametrize('stale', [True, False])
@pytest.mark.parametrize('bn_fisher', ['full', 'unit', 'diag'])
def test_each_step_fetches_from_the_device_once(rng, stale, bn_fisher):
    model = bn_net()
    opt = KFAC(lr=0.05, damping=1e-3, stale=stale, bn_fisher=bn_fisher,
               stale_warmup=2, cov_ema_decay=0.5)
    opt.setup(model)
    x = rng.randn(6, 1, 5, 5).astype(numpy.float32)
    t = rng.randint(0, 4, 6).astype(numpy.int32)

    def lossfun(x, t):
        return F.softmax_cross_entropy(model(x), t)
    for _ in range(5):
        before = step_status.fetch_count
        opt.update(lossfun, x, t)
        assert step_status.fetch_count == before + 1


def linear_model():
    model = L.Linear(4, 3, nobias=True)
    model.W.array[...] = numpy.random.RandomState(1).randn(3, 4)
    return model


def test_failed_inversion_takes_the_plain_gradient_then_recovers(rng):
    model = linear_model()
    opt = KFAC(lr=0.1, momentum=0.0, damping=1e-8, stale=False,
               cov_ema_decay=1e-6)  # the EMA keeps what we put in it
    opt.setup(model)
    x = rng.randn(8, 4).astype(numpy.float32)
    t = rng.randint(0, 3, 8).astype(numpy.int32)

    def lossfun(x, t):
        return F.softmax_cross_entropy(model(x), t)
    opt.update(lossfun, x, t)
    block = opt.fisher_blocks[0]
    block.ema['A'] = numpy.diag([1.0, -1.0, 1.0, 1.0]).astype(numpy.float32)
    before = model.W.array.copy()
    model.cleargrads()
    lossfun(x, t).backward()
    grad = model.W.grad.copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        opt.update(lossfun, x, t)
    # the failing step took the plain gradient, decided on the device
    numpy.testing.assert_allclose(model.W.array, before - 0.1 * grad,
                                  rtol=1e-6, atol=1e-7)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and 'damping was raised' in messages[0]
    floor = block.damping_floor['A']
    assert floor > 1.0  # enough to lift the -1 eigenvalue
    # the recovered inverse is (A + floor I)^-1
    numpy.testing.assert_allclose(
        block.inverse['A'], numpy.linalg.inv(
            block.ema['A'] + floor * numpy.eye(4)), rtol=1e-4, atol=1e-6)
    # next step: preconditioned again (not the plain gradient), no warning
    before = model.W.array.copy()
    model.cleargrads()
    lossfun(x, t).backward()
    grad = model.W.grad.copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        opt.update(lossfun, x, t)
    assert not [w for w in caught if 'chainerkfac' in str(w.message)]
    assert not numpy.allclose(model.W.array, before - 0.1 * grad, rtol=1e-3)
    assert numpy.isfinite(model.W.array).all()
    assert block.damping_floor['A'] == floor


def test_damping_floor_is_saved_and_loaded(tmp_path):
    model = linear_model()
    opt = KFAC(stale=False)
    opt.setup(model)
    opt.fisher_blocks[0].damping_floor['G'] = 0.125
    serializers.save_npz(str(tmp_path / 'opt.npz'), opt)
    other = KFAC(stale=False)
    other.setup(linear_model())
    serializers.load_npz(str(tmp_path / 'opt.npz'), other)
    assert other.fisher_blocks[0].damping_floor == {'A': 0.0, 'G': 0.125}


@pytest.mark.gpu
def test_a_gpu_step_synchronises_only_in_fetch(rng):  # pragma: no cover
    """cupyx.allow_synchronize(False) raises on any implicit device sync:
    a whole K-FAC update (forward, backward, every stage) may sync only in
    step_status.fetch."""
    import cupy
    import cupyx
    model = bn_net()
    model.to_device('@cupy:0')
    opt = KFAC(lr=0.05, damping=1e-3, stale=True, stale_warmup=1,
               bn_fisher='unit', cov_ema_decay=0.5)
    opt.setup(model)
    x = cupy.asarray(rng.randn(6, 1, 5, 5).astype(numpy.float32))

    def lossfun(x):  # no softmax cross-entropy: its label count syncs
        return F.mean(model(x) ** 2)
    opt.update(lossfun, x)  # first step: allocations, kernel compilation
    real_fetch = step_status.fetch

    def allowed_fetch(*parts):
        with cupyx.allow_synchronize(True):
            return real_fetch(*parts)
    step_status.fetch = allowed_fetch
    try:
        for _ in range(3):
            with cupyx.allow_synchronize(False):
                opt.update(lossfun, x)
    finally:
        step_status.fetch = real_fetch
    for p in model.params():
        assert bool(cupy.isfinite(p.array).all())
