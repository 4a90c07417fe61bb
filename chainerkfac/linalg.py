"""Dense linear algebra for Kronecker factors, backend-agnostic (NumPy or CuPy).

All factors are symmetric positive semi-definite matrices; their damped copies
``M + lambda I`` are inverted through a Cholesky factorization
``M + lambda I = L L^T``, ``(M + lambda I)^-1 = L^-T L^-1``.
"""
import math

import numpy
from chainer import backend


class NotPositiveDefiniteError(ArithmeticError):
    """A damped factor could not be made positive definite."""


def _solve_triangular(xp):
    if xp is numpy:
        from scipy.linalg import solve_triangular
    else:  # pragma: no cover - needs a GPU
        from cupyx.scipy.linalg import solve_triangular
    return solve_triangular


def add_diagonal(matrix, value):
    """Returns ``matrix + value * I`` as a new array (the input is untouched)."""
    out = matrix.copy()
    d = out.shape[0]
    out.reshape(-1)[::d + 1] += value
    return out


def trace_ratio(matrix):
    """``tr(M) / dim(M)``: the mean eigenvalue of a square matrix, as a float."""
    return float(matrix.trace()) / matrix.shape[0]


def pi_tracenorm(a_factor, g_factor):
    """Trace-norm rule of Martens & Grosse (2015, sec. 6.3).

    ``pi = sqrt((tr A / dim A) / (tr G / dim G))``. When either mean eigenvalue is
    zero or not finite (a dead layer, an all-zero input) the rule is undefined and
    ``pi = 1`` is returned, so the damping is split evenly between the factors.
    """
    ta, tg = trace_ratio(a_factor), trace_ratio(g_factor)
    if ta > 0 and tg > 0 and math.isfinite(ta) and math.isfinite(tg):
        return math.sqrt(ta / tg)
    return 1.0


def cholesky_inverse(matrix):
    """Inverse of a symmetric positive definite matrix via Cholesky.

    Raises:
        NotPositiveDefiniteError: the factorization failed or was not finite
            (CuPy returns NaN instead of raising; both are caught here).
    """
    xp = backend.get_array_module(matrix)
    try:
        lower = xp.linalg.cholesky(matrix)
    except numpy.linalg.LinAlgError as e:
        raise NotPositiveDefiniteError(str(e))
    if not bool(xp.isfinite(lower.diagonal()).all()):
        raise NotPositiveDefiniteError('Cholesky factor is not finite')
    eye = xp.eye(matrix.shape[0], dtype=matrix.dtype)
    lower_inv = _solve_triangular(xp)(lower, eye, lower=True)
    return lower_inv.T @ lower_inv


def damped_inverse(matrix, damping, max_tries=8):
    """``(M + damping I)^-1`` with a fallback for factors that are not PD.

    If the damped factor is not positive definite (zero damping on a singular
    factor, round-off on a nearly singular one), the added diagonal is raised
    to ``base * 10^k`` for ``k = 0, 1, ...`` with
    ``base = max(damping, 1e-6 * tr(M)/dim(M), tiny)`` until the factorization
    succeeds.

    Args:
        matrix: symmetric ``(d, d)`` factor (not modified).
        damping (float): the diagonal to add.

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
    scale = trace_ratio(matrix)
    if not math.isfinite(scale):
        raise NotPositiveDefiniteError('factor has non-finite entries')
    tiny = 100 * numpy.finfo(matrix.dtype).tiny
    base = max(damping, 1e-6 * abs(scale), tiny)
    for k in range(max_tries):
        added = base * 10.0 ** k
        try:
            return cholesky_inverse(add_diagonal(matrix, added)), added
        except NotPositiveDefiniteError:
            continue
    raise NotPositiveDefiniteError(
        'no damping up to {:g} made the factor positive definite'.format(
            added))


def symmetric_2x2_inverse(blocks, damping):
    """Closed-form inverses of damped symmetric 2x2 blocks.

    Args:
        blocks: ``(C, 2, 2)`` stack of symmetric PSD blocks ``[[a, b], [b, c]]``.
        damping (float): added to both diagonal entries.

    Returns:
        tuple: ``(inverses, ok)``; ``inverses`` is ``(C, 2, 2)`` with
        ``[[c', -b], [-b, a']] / (a' c' - b^2)`` where ``a' = a + damping``,
        ``c' = c + damping``; ``ok`` is a boolean ``(C,)`` mask of the blocks
        that were positive definite (the others hold garbage).
    """
    xp = backend.get_array_module(blocks)
    a = blocks[:, 0, 0] + damping
    b = blocks[:, 0, 1]
    c = blocks[:, 1, 1] + damping
    det = a * c - b * b
    ok = (a > 0) & (det > 0) & xp.isfinite(det)
    safe = xp.where(ok, det, 1)
    inv = xp.empty_like(blocks)
    inv[:, 0, 0] = c / safe
    inv[:, 1, 1] = a / safe
    inv[:, 0, 1] = inv[:, 1, 0] = -b / safe
    return inv, ok
