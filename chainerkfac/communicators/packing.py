"""Packing lists of arrays into flat communication buffers.

A symmetric ``(d, d)`` matrix travels as its upper triangle, row-major,
``d (d + 1) / 2`` values; every other array travels whole. With
``comm_dtype=float16`` each array is multiplied by a power of two before the
cast (see :func:`fp16_exponents`) and divided by it after.
"""
import math

import numpy
from chainer import backend

#: Largest |value| an fp16 sum may reach: 2**14 leaves a factor 4 below
#: fp16's maximum (65504) for round-off in the sum.
FP16_TARGET = 2.0 ** 14


def packed_size(shape, symmetric):
    """Number of values an array of ``shape`` takes in a buffer."""
    if symmetric:
        d = shape[0]
        return d * (d + 1) // 2
    return int(numpy.prod(shape, dtype=numpy.int64))


class PackingPlan(object):
    """Layout of a fixed list of arrays in one flat buffer.

    Args:
        items: list of ``(shape, symmetric)``.

    Attributes:
        offsets (list of int): start of each array in the buffer (int64-safe
            Python ints; no 2**31 limit).
        size (int): total number of values.
    """

    def __init__(self, items):
        self.items = [(tuple(shape), bool(sym)) for shape, sym in items]
        for shape, sym in self.items:
            if sym and (len(shape) != 2 or shape[0] != shape[1]):
                raise ValueError('a symmetric array must be square, got '
                                 'shape {}'.format(shape))
        self.sizes = [packed_size(s, sym) for s, sym in self.items]
        self.offsets = [0]
        for n in self.sizes:
            self.offsets.append(self.offsets[-1] + n)
        self.size = self.offsets.pop()
        self._triu = {}

    def __len__(self):
        return len(self.items)

    def _triu_indices(self, xp, d):
        key = (xp.__name__, d)
        if key not in self._triu:
            self._triu[key] = xp.triu_indices(d)
        return self._triu[key]

    def pack(self, arrays, buffer, scales=None):
        """Writes ``arrays`` (scaled by ``scales[i]`` if given) into
        ``buffer[:size]``, casting to the buffer's dtype."""
        xp = backend.get_array_module(buffer)
        for i, (array, (shape, sym)) in enumerate(zip(arrays, self.items)):
            if tuple(array.shape) != shape:
                raise ValueError('array {} has shape {}, the plan says {}'
                                 .format(i, array.shape, shape))
            out = buffer[self.offsets[i]:self.offsets[i] + self.sizes[i]]
            values = (array[self._triu_indices(xp, shape[0])] if sym
                      else array.reshape(-1))
            if scales is not None and scales[i] != 1:
                values = values * scales[i]
            out[...] = values

    def unpack(self, buffer, dtype, divisors=None):
        """Returns the arrays of ``buffer`` as new arrays of ``dtype``, each
        divided by ``divisors[i]`` if given; symmetric ones mirrored."""
        xp = backend.get_array_module(buffer)
        arrays = []
        for i, (shape, sym) in enumerate(self.items):
            values = buffer[self.offsets[i]:self.offsets[i] + self.sizes[i]]
            values = values.astype(dtype)  # always a copy
            if divisors is not None and divisors[i] != 1:
                values /= divisors[i]
            if sym:
                d = shape[0]
                out = xp.empty(shape, dtype=dtype)
                iu = self._triu_indices(xp, d)
                out[iu] = values
                out.T[iu] = values
                arrays.append(out)
            else:
                arrays.append(values.reshape(shape))
        return arrays


def max_abs(arrays):
    """Max |value| of each array, as a float64 NumPy vector (0 for empty)."""
    out = numpy.zeros(len(arrays))
    for i, a in enumerate(arrays):
        if a.size:
            out[i] = float(abs(a).max())
    return out


def fp16_exponents(max_values, n_terms=1):
    """Power-of-two scales that bring ``n_terms * max`` near ``FP16_TARGET``.

    ``scale_i = 2**k_i`` with ``k_i = floor(log2(FP16_TARGET / (n_terms *
    max_i)))``, clipped to [-100, 100]; an all-zero or non-finite array gets
    ``k = 0`` (non-finite values stay non-finite, so NaN is never hidden).
    Returned as integer exponents (exact in fp16 too).
    """
    ks = numpy.zeros(len(max_values))
    for i, m in enumerate(max_values):
        if m > 0 and math.isfinite(m):
            ks[i] = min(max(math.floor(math.log2(FP16_TARGET / (n_terms * m))),
                            -100), 100)
    return ks
