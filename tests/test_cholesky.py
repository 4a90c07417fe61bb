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


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
def test_cusolver_both_dtypes_status_and_workspaces(
        rng, dtype):  # pragma: no cover - needs a GPU
    """spotrf/spotrs and dpotrf/dpotrs: the inverse, potrf's devInfo in the
    caller's status slot (the failing minor's order), one workspace per
    (device, dtype, order), reused."""
    import cupy
    solver = cholesky.solver_for(cupy.zeros((2, 2), dtype))
    assert isinstance(solver, cholesky.CusolverCholesky)
    assert cholesky.solver_for(cupy.zeros((3, 3), dtype)) is solver
    tol = 2e-3 if dtype == numpy.float32 else 1e-9
    status = cupy.zeros(3, numpy.int32)
    kept = {}
    for d in (1, 7, 64, 7):
        m = spd(rng, d, dtype)
        inv = solver.inverse(cupy.asarray(m), status, 2)
        assert inv.dtype == dtype and inv.shape == (d, d)
        numpy.testing.assert_allclose(
            inv.get(), numpy.linalg.inv(m.astype(numpy.float64)), rtol=tol,
            atol=tol)
        if d == 64:
            kept = dict(solver._workspaces)
    key = (cupy.cuda.Device().id, numpy.dtype(dtype).str)
    assert {key + (d,) for d in (1, 7, 64)} <= set(kept)
    assert solver._workspaces.keys() == kept.keys()     # the second 7: reused
    assert all(solver._workspaces[k] is v for k, v in kept.items())
    assert status.get().tolist() == [0, 0, 0]
    bad = cupy.asarray(numpy.diag([2.0, 3.0, -1.0, 4.0]).astype(dtype))
    solver.inverse(bad, status, 1)
    assert status.get().tolist() == [0, 3, 0]   # LAPACK's info, as on the CPU


@pytest.mark.gpu
def test_cusolver_refuses_float16():  # pragma: no cover - needs a GPU
    import cupy
    matrix = cupy.eye(3, dtype=numpy.float16)
    with pytest.raises(TypeError, match='Cholesky of float16 matrices'):
        cholesky.solver_for(matrix).inverse(
            matrix, cupy.zeros(1, numpy.int32), 0)


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
def test_cholesky_inverse_on_the_gpu_without_a_status(
        rng, dtype):  # pragma: no cover - needs a GPU
    """linalg.cholesky_inverse makes its own status on the device and raises
    on failure (the one read-back of that path)."""
    import cupy

    from chainerkfac import linalg
    m = spd(rng, 9, dtype)
    inv = linalg.cholesky_inverse(cupy.asarray(m))
    assert isinstance(inv, cupy.ndarray)
    tol = 2e-3 if dtype == numpy.float32 else 1e-9
    numpy.testing.assert_allclose(inv.get(), numpy.linalg.inv(
        m.astype(numpy.float64)), rtol=tol, atol=tol)
    with pytest.raises(linalg.NotPositiveDefiniteError):
        linalg.cholesky_inverse(cupy.asarray(-m))
