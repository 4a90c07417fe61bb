"""Dense linear algebra for Kronecker factors, backend-agnostic (NumPy or
CuPy).

All factors are symmetric positive semi-definite matrices; their damped copies
``M + lambda I`` are inverted through a Cholesky factorization
(:mod:`chainerkfac.cholesky`: LAPACK on the CPU, cuSOLVER on the GPU). The
routines a training step calls keep their results and failure statuses on the
device; only :func:`damped_inverse`, the recovery path, reads values back.
"""
import math

import numpy
from chainer import backend

from chainerkfac import cholesky


class NotPositiveDefiniteError(ArithmeticError):
    """A damped factor could not be made positive definite."""


# The recovery of a damped factor (or BN channel) that is not positive
# definite, the same in every block: its diagonal is raised to
# base * 10^k for k = 0 .. RECOVERY_TRIES - 1, with
# base = max(damping, RECOVERY_RELATIVE * mean eigenvalue, RECOVERY_TINY)
# (mean eigenvalue: tr/dim; for one value or a 2x2 block, its own); if none
# works, the block (or channel) takes the plain gradient.
RECOVERY_RELATIVE = 1e-6
RECOVERY_TINY = 1e-30
RECOVERY_TRIES = 8


def add_diagonal(matrix, value):
    """Returns ``matrix + value * I`` as a new array (the input is untouched).

    ``value`` may be a float or a 0-d array on the matrix's device.
    """
    out = matrix.copy()
    d = out.shape[0]
    out.reshape(-1)[::d + 1] += value
    return out


def trace_ratio(matrix):
    """``tr(M) / dim(M)``: the mean eigenvalue, as a 0-d array on M's
    device."""
    return matrix.trace() / matrix.shape[0]


def pi_tracenorm(a_factor, g_factor):
    """Trace-norm rule of Martens & Grosse (2015, sec. 6.3), on the device.

    ``pi = sqrt((tr A / dim A) / (tr G / dim G))``. When either mean eigenvalue
    is zero or not finite (a dead layer, an all-zero input) the rule is
    undefined and ``pi = 1``, so the damping is split evenly.

    Returns:
        a 0-d array of A's dtype on A's device (no host synchronisation).
    """
    xp = backend.get_array_module(a_factor)
    ta, tg = trace_ratio(a_factor), trace_ratio(g_factor)
    valid = (ta > 0) & (tg > 0) & xp.isfinite(ta) & xp.isfinite(tg)
    ratio = ta / xp.where(valid, tg, 1)
    return xp.where(valid, xp.sqrt(xp.where(valid, ratio, 1)), 1).astype(
        a_factor.dtype)


def cholesky_inverse(matrix, status=None, slot=0, overwrite=False):
    """Inverse of a symmetric positive definite matrix via Cholesky.

    Args:
        matrix: symmetric ``(d, d)`` array (not modified unless
            ``overwrite``: then, if C-contiguous, it is the solver's work
            space and its content is lost; saves a copy of a fresh array).
        status: optional 1-D int32 array on the matrix's device. When given,
            nothing is raised and nothing is read back to the host:
            ``status[slot]`` becomes non-zero when the factorization failed
            or the inverse's diagonal is not finite and positive (the
            returned array is then meaningless).
        slot (int): index into ``status``.

    Raises:
        NotPositiveDefiniteError: without ``status``, on failure.
    """
    xp = backend.get_array_module(matrix)
    own_status = status is None
    if own_status:
        status, slot = numpy.zeros(1, numpy.int32), 0
        if xp is not numpy:  # pragma: no cover - needs a GPU
            status = xp.asarray(status)
    work = xp.ascontiguousarray(matrix)
    if work is matrix and not overwrite:
        work = work.copy()
    inverse = cholesky.solver_for(work).inverse(work, status, slot)
    diagonal = inverse.diagonal()
    bad = ~(xp.isfinite(diagonal) & (diagonal > 0)).all()
    status[slot] = xp.maximum(status[slot], bad.astype(numpy.int32))
    if own_status and int(status[0]) != 0:
        raise NotPositiveDefiniteError(
            'Cholesky factorization failed (status {})'.format(int(status[0])))
    return inverse


def damped_inverse(matrix, damping, max_tries=RECOVERY_TRIES):
    """``(M + damping I)^-1``, raising the damping until M is invertible.

    The recovery path for a factor whose damped copy proved not positive
    definite (zero damping on a singular factor, round-off on a nearly
    singular one): the diagonal is raised to ``base * 10^k`` for
    ``k = 0, 1, ...`` with ``base = max(damping, RECOVERY_RELATIVE *
    tr(M)/dim(M), tiny)`` (:data:`RECOVERY_RELATIVE`, the rule every block
    follows)
    until the factorization succeeds. It reads values on the host, so the
    training step calls it only after a failure was seen.

    Args:
        matrix: symmetric ``(d, d)`` factor (not modified).
        damping (float): the diagonal to try first.

    Returns:
        tuple: ``(inverse, added)``, ``added`` being the diagonal actually used
        (equal to ``damping`` unless the fallback was needed).

    Raises:
        NotPositiveDefiniteError: the factor has non-finite entries, or no
            tried diagonal made it positive definite.
    """
    try:
        return cholesky_inverse(add_diagonal(matrix, damping)), damping
    except NotPositiveDefiniteError:
        pass
    scale = float(trace_ratio(matrix))
    if not math.isfinite(scale):
        raise NotPositiveDefiniteError('factor has non-finite entries')
    tiny = max(100 * numpy.finfo(matrix.dtype).tiny, RECOVERY_TINY)
    base = max(damping, RECOVERY_RELATIVE * abs(scale), tiny)
    for k in range(max_tries):
        added = base * 10.0 ** k
        try:
            return cholesky_inverse(add_diagonal(matrix, added)), added
        except NotPositiveDefiniteError:
            continue
    raise NotPositiveDefiniteError(
        'no damping up to {:g} made the factor positive definite'.format(
            added))


def symmetric_eigh(matrix, status, slot):
    """Eigendecomposition ``M = Q diag(l) Q^T`` of a symmetric positive
    semi-definite factor (LAPACK ``syevd`` through NumPy on the CPU, cuSOLVER
    ``syevd`` through CuPy on the GPU), never reading back to the host.

    Args:
        matrix: symmetric ``(d, d)`` array (not modified).
        status: 1-D int32 array on the matrix's device; ``status[slot]``
            becomes non-zero when the decomposition failed or is not finite
            (the returned arrays are then meaningless).

    Returns:
        tuple: ``(values, vectors)``: ``(d,)`` eigenvalues clamped at 0 (a
        factor is PSD; round-off can make small ones negative) and the
        ``(d, d)`` orthonormal eigenvectors (columns), in the matrix's dtype.
    """
    xp = backend.get_array_module(matrix)
    try:
        values, vectors = xp.linalg.eigh(matrix)
    except numpy.linalg.LinAlgError:   # LAPACK did not converge (non-finite)
        d = matrix.shape[0]
        status[slot] = max(int(status[slot]), 1)
        return (xp.zeros(d, matrix.dtype), xp.eye(d, dtype=matrix.dtype))
    bad = ~(xp.isfinite(values).all() & xp.isfinite(vectors).all())
    status[slot] = xp.maximum(status[slot], bad.astype(numpy.int32))
    return xp.maximum(values, 0).astype(matrix.dtype, copy=False), vectors
