"""NumPy references of the CUDA kernels: the production CPU path.

Each function mirrors its kernel's arithmetic (precision, order of the
operations, where results are rounded), so that the emulated kernel gives the
same bits. Vectorised; no index arrays: a triangle is walked row by row
(each row of the upper triangle is contiguous in the buffer). Arguments are
assumed checked by :mod:`chainerkfac.cuda.ops`.
"""
import functools

import numpy

from chainerkfac import linalg

#: Rows per block when the lower triangle is mirrored from the upper one.
MIRROR_BLOCK = 64


def _quiet(function):
    """Runs ``function`` without NumPy floating-point warnings: overflow to
    inf (float16 casts) and NaN are results here, as on the GPU."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with numpy.errstate(all='ignore'):
            return function(*args, **kwargs)
    return wrapper


def packed_size(shape, symmetric):
    """Values an array takes in a buffer: ``d (d + 1) / 2`` for a symmetric
    ``(d, d)`` one, its size otherwise."""
    if symmetric:
        d = shape[0]
        return d * (d + 1) // 2
    size = 1
    for s in shape:
        size *= int(s)
    return size


def _scaled(values, scale):
    """``scale * values``, in float64 for float64 values and in float32
    otherwise; ``values`` unchanged if ``scale`` is None."""
    if scale is None:
        return values
    if values.dtype == numpy.float64:
        return values * numpy.float64(scale)
    return numpy.multiply(values, numpy.float32(scale), dtype=numpy.float32)


@_quiet
def pack(arrays, symmetric, buffer, scales=None):
    """``buffer[o_i : o_i + n_i] = cast(scale_i * packed(x_i))``.

    Args:
        arrays: NumPy arrays (float16/32/64, any shape).
        symmetric: bools; a symmetric ``(d, d)`` array is packed as its upper
            triangle, row-major; the others whole, in C order.
        buffer: 1-D float32/float16 array of the total packed size.
        scales: None or float32 vector, one per array; the product is in
            float32 (float64 for float64 arrays), then cast to the buffer.
    """
    offset = 0
    for i, (x, sym) in enumerate(zip(arrays, symmetric)):
        scale = None if scales is None else scales[i]
        if sym:
            d = x.shape[0]
            for r in range(d):
                numpy.copyto(buffer[offset:offset + d - r],
                             _scaled(x[r, r:], scale), casting='unsafe')
                offset += d - r
        else:
            n = x.size
            numpy.copyto(buffer[offset:offset + n],
                         _scaled(x.reshape(-1), scale), casting='unsafe')
            offset += n


def _mirror_lower(out):
    """Copies the upper triangle of square ``out`` onto its lower one, in
    blocks of rows (transposed block copies, no index arrays)."""
    d = out.shape[0]
    for r0 in range(0, d, MIRROR_BLOCK):
        r1 = min(r0 + MIRROR_BLOCK, d)
        out[r0:r1, :r0] = out[:r0, r0:r1].T
        for r in range(r0 + 1, r1):
            out[r, r0:r] = out[r0:r, r]


@_quiet
def unpack(buffer, outs, symmetric, divisors=None):
    """``packed(out_i) = cast(buffer[o_i : o_i + n_i] / divisor_i)``.

    The division is in float64 for float64 outputs and in float32 for
    float16/float32 ones, then rounded to the output; symmetric outputs get
    the upper triangle and its mirror.
    """
    offset = 0
    for i, (out, sym) in enumerate(zip(outs, symmetric)):
        n = packed_size(out.shape, sym)
        work = (numpy.float64 if out.dtype == numpy.float64
                else numpy.float32)
        values = buffer[offset:offset + n].astype(work)
        if divisors is not None:
            values /= work(divisors[i])
        values = values.astype(out.dtype, copy=False)
        if sym:
            d = out.shape[0]
            start = 0
            for r in range(d):
                out[r, r:] = values[start:start + d - r]
                start += d - r
            _mirror_lower(out)
        else:
            out[...] = values.reshape(out.shape)
        offset += n


@_quiet
def flag_nonfinite(array, flags, slot):
    """``flags[slot] = 1`` if any element is inf or NaN (NaN propagates
    through max/min, inf shows in one of them)."""
    if array.size and not (numpy.isfinite(array.max())
                           and numpy.isfinite(array.min())):
        flags[slot] = 1


@_quiet
def momentum_update(param, velocity, direction, fallback, flags, slot, lr,
                    momentum):
    """``d = fallback if flags[slot] else direction``;
    ``v = (momentum v) - (lr d)``; ``param = param + v``, in place.

    float32/float64: in that dtype, ``lr`` and ``momentum`` rounded to it.
    float16: in float32 (param gets the unrounded float32 ``v``), each
    result rounded to float16 when stored.
    """
    d = fallback if flags[slot] else direction
    if param.dtype == numpy.float16:
        f32 = numpy.float32
        v = numpy.multiply(velocity, f32(momentum), dtype=f32)
        v -= numpy.multiply(d, f32(lr), dtype=f32)
        velocity[...] = v
        param[...] = numpy.add(param, v, dtype=f32)
        return
    t = param.dtype.type
    numpy.multiply(velocity, t(momentum), out=velocity)
    velocity -= d * t(lr)
    param += velocity


def _damped_inverse(a, b, c, lam, pending, inverse):
    """Tries ``[[a + lam, b], [b, c + lam]]`` on the ``pending`` channels;
    writes the inverse of the positive definite ones; returns their mask."""
    ap = a + lam
    cp = c + lam
    det = ap * cp - b * b
    ok = pending & (ap > 0) & (det > 0) & numpy.isfinite(det)
    off = -b / det
    inverse[ok, 0, 0] = (cp / det)[ok]
    inverse[ok, 0, 1] = off[ok]
    inverse[ok, 1, 0] = off[ok]
    inverse[ok, 1, 1] = (ap / det)[ok]
    return ok


@_quiet
def unit_fisher_inverse(fisher, damping, status, slot):
    """Damped inverses of symmetric 2x2 blocks ``[[a, b], [b, c]]``.

    ``fisher``: ``(C, 2, 2)`` float32/float64 (``fisher[:, 1, 0]`` is not
    read). Per channel, in the dtype: level 0 ``lam = damping``; level 1
    ``lam = base * 10^k``, ``k = 0 .. RECOVERY_TRIES - 1``, ``base =
    max(damping, RECOVERY_RELATIVE |a + c| / 2, RECOVERY_TINY)``
    (:mod:`chainerkfac.linalg`); level 2 identity. Positive definite iff
    ``a + lam > 0`` and ``det > 0`` finite; inverse
    ``[[c', -b], [-b, a']] / det``. ``status[slot] = max(status[slot], level)``
    for the highest level above
    0. Returns a new ``(C, 2, 2)`` array.
    """
    t = fisher.dtype.type
    a = fisher[:, 0, 0]
    b = fisher[:, 0, 1]
    c = fisher[:, 1, 1]
    inverse = numpy.empty(fisher.shape, fisher.dtype)
    level = numpy.zeros(len(fisher), numpy.int32)
    pending = numpy.ones(len(fisher), bool)
    pending &= ~_damped_inverse(a, b, c, t(damping), pending, inverse)
    if pending.any():
        total = a + c
        base = numpy.maximum(
            numpy.maximum(t(damping), t(linalg.RECOVERY_RELATIVE) *
                          numpy.abs(total) / t(2)),
            t(linalg.RECOVERY_TINY))
        trying = pending & numpy.isfinite(total)
        power = t(1)
        for _ in range(linalg.RECOVERY_TRIES):
            if not trying.any():
                break
            ok = _damped_inverse(a, b, c, base * power, trying, inverse)
            level[ok] = 1
            trying &= ~ok
            pending &= ~ok
            power = power * t(10)
        inverse[pending] = numpy.eye(2, dtype=fisher.dtype)
        level[pending] = 2
    top = int(level.max()) if len(level) else 0
    if top > 0:
        status[slot] = max(int(status[slot]), top)
    return inverse
