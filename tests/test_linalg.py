import warnings

import numpy
import pytest

from chainerkfac import linalg


def random_psd(rng, d, rank=None):
    x = rng.randn(d, rank or d)
    return x @ x.T / (rank or d)


def test_add_diagonal_copies(rng):
    m = random_psd(rng, 4)
    before = m.copy()
    out = linalg.add_diagonal(m, 0.5)
    numpy.testing.assert_array_equal(m, before)
    numpy.testing.assert_allclose(out, before + 0.5 * numpy.eye(4))


def test_pi_tracenorm_matches_definition(rng):
    a, g = random_psd(rng, 5), random_psd(rng, 3) * 7
    expected = numpy.sqrt((numpy.trace(a) / 5) / (numpy.trace(g) / 3))
    assert linalg.pi_tracenorm(a, g) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize('degenerate', ['zero', 'nan'])
def test_pi_tracenorm_degenerate_is_one(rng, degenerate):
    a = numpy.zeros((3, 3)) if degenerate == 'zero' else numpy.full((3, 3), numpy.nan)
    assert linalg.pi_tracenorm(a, random_psd(rng, 2)) == 1.0
    assert linalg.pi_tracenorm(random_psd(rng, 2), a) == 1.0


@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
def test_cholesky_inverse_matches_inv(rng, dtype):
    m = (random_psd(rng, 6) + 0.1 * numpy.eye(6)).astype(dtype)
    inv = linalg.cholesky_inverse(m)
    assert inv.dtype == dtype
    tol = 1e-4 if dtype == numpy.float32 else 1e-10
    numpy.testing.assert_allclose(inv, numpy.linalg.inv(m.astype(numpy.float64)),
                                  rtol=tol, atol=tol)


def test_cholesky_inverse_rejects_indefinite():
    with pytest.raises(linalg.NotPositiveDefiniteError):
        linalg.cholesky_inverse(numpy.diag([1.0, -1.0]))


def test_damped_inverse_exact_when_pd(rng):
    m = random_psd(rng, 4)
    inv, added = linalg.damped_inverse(m, 0.3)
    assert added == 0.3
    numpy.testing.assert_allclose(inv, numpy.linalg.inv(m + 0.3 * numpy.eye(4)),
                                  rtol=1e-10)


def test_damped_inverse_raises_damping_for_singular(rng):
    m = random_psd(rng, 5, rank=2)  # singular
    inv, added = linalg.damped_inverse(m, 0.0)
    assert added > 0
    assert numpy.isfinite(inv).all()
    numpy.testing.assert_allclose(inv @ (m + added * numpy.eye(5)), numpy.eye(5),
                                  atol=1e-6)


def test_damped_inverse_zero_matrix():
    inv, added = linalg.damped_inverse(numpy.zeros((3, 3)), 0.0)
    assert added > 0 and numpy.isfinite(inv).all()


def test_damped_inverse_non_finite_raises():
    m = numpy.eye(3)
    m[0, 1] = m[1, 0] = numpy.inf
    with pytest.raises(linalg.NotPositiveDefiniteError):
        linalg.damped_inverse(m, 1e-3)


def test_symmetric_2x2_inverse_matches_inv(rng):
    blocks = numpy.stack([random_psd(rng, 2, rank=1) for _ in range(5)])
    inv, ok = linalg.symmetric_2x2_inverse(blocks, 0.2)
    assert ok.all()
    for b, i in zip(blocks, inv):
        numpy.testing.assert_allclose(i, numpy.linalg.inv(b + 0.2 * numpy.eye(2)),
                                      rtol=1e-10)


def test_symmetric_2x2_inverse_flags_singular(rng):
    blocks = numpy.stack([numpy.ones((2, 2)), numpy.eye(2)])  # det 0, det 1
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no division warnings either
        inv, ok = linalg.symmetric_2x2_inverse(blocks, 0.0)
    assert not ok[0] and ok[1]
    numpy.testing.assert_allclose(inv[1], numpy.eye(2))
