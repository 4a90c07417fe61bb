"""The Cholesky solver adapter's CPU implementation (LAPACK potrf/potri).

The GPU adapter (cuSOLVER) implements the same interface; everything above
it (statuses, recovery, fallbacks) is tested here through this one.
"""
import numpy
import pytest

from chainerkfac import cholesky


def spd(rng, d, dtype):
    x = rng.randn(d, d)
    return (x @ x.T / d + 0.1 * numpy.eye(d)).astype(dtype)


@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
@pytest.mark.parametrize('d', [1, 2, 7, 64])
def test_lapack_inverse_matches_numpy(rng, dtype, d):
    m = spd(rng, d, dtype)
    status = numpy.zeros(2, numpy.int32)
    inv = cholesky.LapackCholesky().inverse(m.copy(), status, 1)
    assert inv.dtype == dtype and inv.flags.c_contiguous
    assert list(status) == [0, 0]
    tol = 2e-3 if dtype == numpy.float32 else 1e-9
    numpy.testing.assert_allclose(
        inv, numpy.linalg.inv(m.astype(numpy.float64)), rtol=tol, atol=tol)
    numpy.testing.assert_array_equal(inv, inv.T)


def test_lapack_reports_the_failing_minor(rng):
    m = numpy.diag([2.0, 3.0, -1.0, 4.0])
    status = numpy.zeros(1, numpy.int32)
    cholesky.LapackCholesky().inverse(m, status, 0)
    assert status[0] == 3  # LAPACK's info: the order of the failing minor


def test_solver_for_numpy_is_lapack(rng):
    assert isinstance(cholesky.solver_for(numpy.eye(2)),
                      cholesky.LapackCholesky)


@pytest.mark.gpu
def test_cusolver_matches_lapack(rng):  # pragma: no cover - needs a GPU
    import cupy
    m = spd(rng, 33, numpy.float32)
    status = cupy.zeros(2, numpy.int32)
    inv = cholesky.solver_for(cupy.asarray(m)).inverse(
        cupy.asarray(m), status, 1)
    assert list(status.get()) == [0, 0]
    numpy.testing.assert_allclose(inv.get(), numpy.linalg.inv(
        m.astype(numpy.float64)), rtol=2e-3, atol=2e-3)
    bad = cupy.asarray(numpy.diag([1.0, -1.0, 1.0]).astype(numpy.float32))
    cholesky.solver_for(bad).inverse(bad, status, 0)
    assert int(status[0]) == 2
