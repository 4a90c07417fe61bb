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


@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
def test_pi_tracenorm_matches_definition(rng, dtype):
    a, g = random_psd(rng, 5), random_psd(rng, 3) * 7
    expected = numpy.sqrt((numpy.trace(a) / 5) / (numpy.trace(g) / 3))
    pi = linalg.pi_tracenorm(a.astype(dtype), g.astype(dtype))
    assert pi.shape == () and pi.dtype == dtype  # stays an array: no host read
    rel = 1e-12 if dtype == numpy.float64 else 1e-6
    assert float(pi) == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize('degenerate', ['zero', 'nan', 'inf'])
def test_pi_tracenorm_degenerate_is_one(rng, degenerate):
    value = {'zero': 0.0, 'nan': numpy.nan, 'inf': numpy.inf}[degenerate]
    a = numpy.full((3, 3), value)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no invalid-value warnings either
        assert float(linalg.pi_tracenorm(a, random_psd(rng, 2))) == 1.0
        assert float(linalg.pi_tracenorm(random_psd(rng, 2), a)) == 1.0


@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
def test_cholesky_inverse_matches_inv(rng, dtype):
    m = (random_psd(rng, 6) + 0.1 * numpy.eye(6)).astype(dtype)
    inv = linalg.cholesky_inverse(m)
    assert inv.dtype == dtype
    tol = 1e-4 if dtype == numpy.float32 else 1e-10
    numpy.testing.assert_allclose(inv,
                                  numpy.linalg.inv(m.astype(numpy.float64)),
                                  rtol=tol, atol=tol)


def test_cholesky_inverse_rejects_indefinite():
    with pytest.raises(linalg.NotPositiveDefiniteError):
        linalg.cholesky_inverse(numpy.diag([1.0, -1.0]))


@pytest.mark.parametrize('bad', ['indefinite', 'nan', 'inf', 'zero'])
def test_cholesky_inverse_with_status_reports_instead_of_raising(rng, bad):
    m = random_psd(rng, 4) + numpy.eye(4)
    if bad == 'indefinite':
        m[2, 2] = -1.0
    elif bad == 'zero':
        m = numpy.zeros((4, 4))
    else:
        m[1, 3] = m[3, 1] = numpy.nan if bad == 'nan' else numpy.inf
    status = numpy.zeros(3, numpy.int32)
    before = m.copy()
    linalg.cholesky_inverse(m, status, 1)
    assert status[1] != 0 and status[0] == 0 and status[2] == 0
    numpy.testing.assert_array_equal(m, before)  # the input is never touched


def test_cholesky_inverse_status_stays_zero_on_success(rng):
    m = random_psd(rng, 5) + 0.5 * numpy.eye(5)
    status = numpy.zeros(2, numpy.int32)
    inv = linalg.cholesky_inverse(m, status, 0)
    assert list(status) == [0, 0]
    numpy.testing.assert_allclose(inv @ m, numpy.eye(5), atol=1e-10)
    numpy.testing.assert_array_equal(inv, inv.T)  # mirrored exactly


def test_add_diagonal_takes_a_device_scalar(rng):
    m = random_psd(rng, 3)
    out = linalg.add_diagonal(m, numpy.array(0.25))  # a 0-d array, like pi
    numpy.testing.assert_allclose(out, m + 0.25 * numpy.eye(3))


def test_damped_inverse_exact_when_pd(rng):
    m = random_psd(rng, 4)
    inv, added = linalg.damped_inverse(m, 0.3)
    assert added == 0.3
    numpy.testing.assert_allclose(inv,
                                  numpy.linalg.inv(m + 0.3 * numpy.eye(4)),
                                  rtol=1e-10)


def test_damped_inverse_raises_damping_for_singular(rng):
    m = random_psd(rng, 5, rank=2)  # singular
    inv, added = linalg.damped_inverse(m, 0.0)
    assert added > 0
    assert numpy.isfinite(inv).all()
    numpy.testing.assert_allclose(inv @ (m + added * numpy.eye(5)),
                                  numpy.eye(5), atol=1e-6)


def test_damped_inverse_zero_matrix():
    inv, added = linalg.damped_inverse(numpy.zeros((3, 3)), 0.0)
    assert added > 0 and numpy.isfinite(inv).all()


def test_damped_inverse_non_finite_raises():
    m = numpy.eye(3)
    m[0, 1] = m[1, 0] = numpy.inf
    with pytest.raises(linalg.NotPositiveDefiniteError):
        linalg.damped_inverse(m, 1e-3)


def test_cholesky_inverse_overwrite_uses_the_input_as_work_space(rng):
    m = random_psd(rng, 4) + numpy.eye(4)
    kept = m.copy()
    expected = numpy.linalg.inv(kept)
    numpy.testing.assert_allclose(linalg.cholesky_inverse(m.copy()), expected,
                                  rtol=1e-10)
    numpy.testing.assert_allclose(
        linalg.cholesky_inverse(m, overwrite=True), expected, rtol=1e-10)
    assert not numpy.array_equal(m, kept)  # no copy was made
    fortran = numpy.asfortranarray(kept)   # not C-contiguous: copied anyway
    linalg.cholesky_inverse(fortran, overwrite=True)
    numpy.testing.assert_array_equal(fortran, kept)
