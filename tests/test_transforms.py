import numpy
import pytest

import chainerkfac  # noqa: F401  (NumPy-2 patch, before chainer)
from chainerkfac.datasets.transforms import mixup
from chainerkfac.datasets.transforms import random_erasing
from chainerkfac.datasets.transforms import RunningMixup
from chainerkfac.datasets.transforms import soft_cross_entropy

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402


def _lam(rng, alpha, n):
    lam = rng.beta(alpha, alpha, n)
    return numpy.maximum(lam, 1 - lam)


# --- mixup ------------------------------------------------------------------

def test_mixup_no_prev_is_identity(rng):
    x = rng.rand(4, 3, 5, 5).astype(numpy.float32)
    t = numpy.eye(10, dtype=numpy.float32)[[1, 2, 3, 4]]
    state = numpy.random.RandomState(1)
    before = state.get_state()[1].copy()
    x2, t2 = mixup(x, t, None, None, 0.4, state)
    assert x2 is x and t2 is t
    assert (state.get_state()[1] == before).all()  # nothing drawn


def test_mixup_definition(rng):
    x, px = rng.rand(2, 6, 3, 4, 4).astype(numpy.float32)
    t = numpy.eye(5, dtype=numpy.float32)[[0, 1, 2, 3, 4, 0]]
    pt = numpy.eye(5, dtype=numpy.float32)[[4, 4, 3, 2, 1, 0]]
    xm, tm = mixup(x, t, px, pt, 0.4, numpy.random.RandomState(7))
    lam = _lam(numpy.random.RandomState(7), 0.4, 6)
    assert (lam >= 0.5).all()
    assert xm.dtype == numpy.float32 and tm.dtype == numpy.float32
    numpy.testing.assert_allclose(
        xm, lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) *
        px, rtol=1e-6, atol=1e-6)
    numpy.testing.assert_allclose(tm, lam[:, None] * t + (1 - lam[:, None]) *
                                  pt, rtol=1e-6, atol=1e-6)
    numpy.testing.assert_allclose(tm.sum(axis=1), 1, rtol=1e-6, atol=1e-6)


def test_mixup_prev_sizes(rng):
    x = rng.rand(3, 2).astype(numpy.float32)
    t = numpy.eye(3, dtype=numpy.float32)
    big, small = rng.rand(5, 2).astype(numpy.float32), x[:2] + 1
    lam = _lam(numpy.random.RandomState(0), 1.0, 3)[:, None]
    xm, _ = mixup(x, t, big, numpy.eye(5, 3, dtype=numpy.float32), 1.0,
                  numpy.random.RandomState(0))
    numpy.testing.assert_allclose(xm, lam * x + (1 - lam) * big[:3],
                                  rtol=1e-6, atol=1e-6)
    xm, _ = mixup(x, t, small, t[:2], 1.0, numpy.random.RandomState(0))
    numpy.testing.assert_allclose(xm, lam * x + (1 - lam) * small[[0, 1, 0]],
                                  rtol=1e-6, atol=1e-6)


def test_running_mixup_three_batches(rng):
    n_class, alpha = 7, 0.4
    xs = [rng.rand(n, 3, 4, 4).astype(numpy.float32) for n in (4, 4, 3)]
    ts = [rng.randint(0, n_class, len(x)).astype(numpy.int32) for x in xs]
    mix = RunningMixup(alpha, n_class, seed=11)
    ref_rng = numpy.random.RandomState(11)
    eye = numpy.eye(n_class, dtype=numpy.float32)

    x1, s1 = mix(xs[0], ts[0])  # first batch: unmixed, one-hot
    numpy.testing.assert_array_equal(x1, xs[0])
    numpy.testing.assert_array_equal(s1, eye[ts[0]])
    assert s1.dtype == numpy.float32 and s1.shape == (4, n_class)

    x2, s2 = mix(xs[1], ts[1])  # mixed with the first batch
    lam = _lam(ref_rng, alpha, 4)
    numpy.testing.assert_allclose(
        x2, lam[:, None, None, None] * xs[1] +
        (1 - lam[:, None, None, None]) * x1, rtol=1e-6, atol=1e-6)
    numpy.testing.assert_allclose(
        s2, lam[:, None] * eye[ts[1]] + (1 - lam[:, None]) * s1,
        rtol=1e-6, atol=1e-6)

    x3, s3 = mix(xs[2], ts[2])  # smaller: first 3 rows of the MIXED batch 2
    lam = _lam(ref_rng, alpha, 3)
    numpy.testing.assert_allclose(
        x3, lam[:, None, None, None] * xs[2] +
        (1 - lam[:, None, None, None]) * x2[:3], rtol=1e-6, atol=1e-6)
    numpy.testing.assert_allclose(
        s3, lam[:, None] * eye[ts[2]] + (1 - lam[:, None]) * s2[:3],
        rtol=1e-6, atol=1e-6)
    for s in (s1, s2, s3):
        numpy.testing.assert_allclose(s.sum(axis=1), 1, rtol=1e-6, atol=1e-6)
        assert (s >= 0).all()
    # three labels can be present in a row of s3 (running behaviour)
    assert ((s3 > 0).sum(axis=1) <= 3).all()
    assert mix.prev_x is x3 and mix.prev_t is s3

    mix.reset()
    x4, s4 = mix(xs[0], ts[0])
    assert x4 is xs[0]
    numpy.testing.assert_array_equal(s4, eye[ts[0]])


def test_running_mixup_bad_alpha():
    with pytest.raises(ValueError):
        RunningMixup(0, 10)


# --- random erasing ---------------------------------------------------------

def _box(img):
    """Bounding box of the zeros of a (C, H, W) image; check it is solid."""
    zero = (img == 0)
    assert (zero == zero[0]).all()  # every channel erased alike
    rows = numpy.where(zero[0].any(axis=1))[0]
    cols = numpy.where(zero[0].any(axis=0))[0]
    if len(rows) == 0:
        return None
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    assert zero[0].sum() == (bottom - top) * (right - left)
    return top, bottom, left, right


def _reference_erasing(x, rng, p, area, aspect):
    """Loop version of the documented algorithm and RNG order."""
    x = x.copy()
    n, _, h, w = x.shape
    for i in range(n):
        if not rng.uniform() < p:
            continue
        s = rng.uniform(*area) * h * w
        r = rng.uniform(*aspect)
        eh, ew = int(round(numpy.sqrt(s * r))), int(round(numpy.sqrt(s / r)))
        if rng.randint(2):
            eh, ew = ew, eh
        eh, ew = min(max(eh, 1), h), min(max(ew, 1), w)
        top, left = rng.randint(0, h - eh + 1), rng.randint(0, w - ew + 1)
        x[i, :, top:top + eh, left:left + ew] = 0
    return x


def test_random_erasing_p0(rng):
    x = rng.rand(8, 3, 10, 12).astype(numpy.float32)
    y = random_erasing(x, numpy.random.RandomState(0), p=0)
    assert y is not x and y.dtype == x.dtype
    numpy.testing.assert_array_equal(y, x)


def test_random_erasing_p1_boxes(rng):
    h, w = 32, 40
    x = (rng.rand(300, 2, h, w) + 0.5).astype(numpy.float32)
    x0 = x.copy()
    y = random_erasing(x, numpy.random.RandomState(1), p=1)
    numpy.testing.assert_array_equal(x, x0)  # input untouched
    assert y.shape == x.shape and y.dtype == x.dtype
    fracs, transposed, at_edge = [], 0, 0
    for i in range(len(y)):
        top, bottom, left, right = _box(y[i])
        eh, ew = bottom - top, right - left
        # rounding: the drawn area / aspect lies within half a pixel
        lo, hi = (eh - .5) * (ew - .5) / (h * w), (eh + .5) * (ew + .5) / (
            h * w)
        assert lo <= 0.25 and hi >= 0.02
        short, long_ = min(eh, ew), max(eh, ew)
        assert (short - .5) / (long_ + .5) <= 1
        assert (short + .5) / (long_ - .5) >= 0.3
        fracs.append(eh * ew / (h * w))
        transposed += eh > ew
        at_edge += bottom == h or right == w
        unerased = numpy.ones((h, w), bool)
        unerased[top:bottom, left:right] = False
        numpy.testing.assert_array_equal(y[i][:, unerased],
                                         x[i][:, unerased])
    assert abs(numpy.mean(fracs) - 0.135) < 0.015  # E[U(0.02, 0.25)]
    assert 0.35 < transposed / len(y) < 0.65
    assert at_edge > 0
    numpy.testing.assert_array_equal(
        y, _reference_erasing(x, numpy.random.RandomState(1), 1,
                              (0.02, 0.25), (0.3, 1.0)))


def test_random_erasing_rate_and_reference(rng):
    x = (rng.rand(1000, 1, 8, 8) + 0.5).astype(numpy.float32)
    y = random_erasing(x, numpy.random.RandomState(2), p=0.5,
                       area=(0.1, 0.2), aspect=(0.5, 1.0), value=0)
    erased = (y == 0).reshape(len(y), -1).any(axis=1)
    assert abs(erased.mean() - 0.5) < 0.06
    numpy.testing.assert_array_equal(
        y, _reference_erasing(x, numpy.random.RandomState(2), 0.5,
                              (0.1, 0.2), (0.5, 1.0)))


def test_random_erasing_value_and_float64(rng):
    x = rng.rand(4, 3, 6, 6)
    y = random_erasing(x, numpy.random.RandomState(0), p=1, value=-1.0)
    assert y.dtype == numpy.float64
    assert ((y == -1).reshape(4, -1).any(axis=1)).all()


# --- soft cross-entropy -----------------------------------------------------

def test_soft_cross_entropy_brute_force(rng):
    y = rng.randn(5, 4).astype(numpy.float32) * 3
    t = rng.rand(5, 4).astype(numpy.float32)
    t /= t.sum(axis=1, keepdims=True)
    loss = soft_cross_entropy(y, t)
    assert isinstance(loss, chainer.Variable) and loss.shape == ()
    expected = 0.0
    for i in range(5):
        z = y[i].astype(numpy.float64)
        log_p = z - numpy.log(numpy.exp(z).sum())
        expected -= (t[i] * log_p).sum()
    numpy.testing.assert_allclose(loss.array, expected / 5, rtol=1e-5)


def test_soft_cross_entropy_one_hot_and_grad(rng):
    y = chainer.Variable(rng.randn(6, 10).astype(numpy.float32))
    t = rng.randint(0, 10, 6).astype(numpy.int32)
    onehot = numpy.eye(10, dtype=numpy.float32)[t]
    loss = soft_cross_entropy(y, chainer.Variable(onehot))
    numpy.testing.assert_allclose(
        loss.array, F.softmax_cross_entropy(y, t).array, rtol=1e-6, atol=1e-6)
    loss.backward()
    p = numpy.exp(y.array) / numpy.exp(y.array).sum(axis=1, keepdims=True)
    numpy.testing.assert_allclose(y.grad, (p - onehot) / 6, rtol=1e-5,
                                  atol=1e-7)


# --- GPU --------------------------------------------------------------------

@pytest.mark.gpu  # skipped by tests/conftest.py unless CuPy has a device
def test_gpu_matches_cpu(rng):
    import cupy
    x = rng.rand(6, 3, 8, 8).astype(numpy.float32)
    t = rng.randint(0, 5, 6).astype(numpy.int32)
    mix_c, mix_g = RunningMixup(0.6, 5, seed=0), RunningMixup(0.6, 5, seed=0)
    for k in range(3):
        xc, sc = mix_c(x[:6 - k], t[:6 - k])
        xg, sg = mix_g(cupy.asarray(x[:6 - k]), cupy.asarray(t[:6 - k]))
        assert isinstance(xg, cupy.ndarray) and isinstance(sg, cupy.ndarray)
        numpy.testing.assert_allclose(cupy.asnumpy(xg), xc, atol=1e-6)
        numpy.testing.assert_allclose(cupy.asnumpy(sg), sc, atol=1e-6)
    yc = random_erasing(x, numpy.random.RandomState(3), p=0.5)
    yg = random_erasing(cupy.asarray(x), numpy.random.RandomState(3), p=0.5)
    numpy.testing.assert_array_equal(cupy.asnumpy(yg), yc)
    lc = soft_cross_entropy(x.reshape(6, -1)[:, :5], sc[:1].repeat(6, 0))
    lg = soft_cross_entropy(cupy.asarray(x.reshape(6, -1)[:, :5]),
                            cupy.asarray(sc[:1].repeat(6, 0)))
    numpy.testing.assert_allclose(float(lg.array), float(lc.array),
                                  rtol=1e-5)
