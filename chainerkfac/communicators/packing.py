"""Packing lists of arrays into flat communication buffers.

A symmetric ``(d, d)`` matrix travels as its upper triangle, row-major,
``d (d + 1) / 2`` values; every other array travels whole. All arrays of a
buffer are packed (and unpacked) by one kernel launch
(:mod:`chainerkfac.cuda.ops`; NumPy arrays take its NumPy reference). With
``comm_dtype=float16`` each array is multiplied by a power of two before the
cast (see :func:`fp16_exponents`) and divided by it after.
"""
import math

import numpy
from chainer import backend

from chainerkfac.cuda import ops

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
        symmetric (list of bool): which arrays travel as upper triangles.

    A plan holds no index arrays (the kernels compute triangle positions),
    so it costs a few bytes per array whatever the factors' sizes.
    """

    def __init__(self, items):
        self.items = [(tuple(shape), bool(sym)) for shape, sym in items]
        for shape, sym in self.items:
            if sym and (len(shape) != 2 or shape[0] != shape[1]):
                raise ValueError('a symmetric array must be square, got '
                                 'shape {}'.format(shape))
        self.symmetric = [sym for _, sym in self.items]
        self.sizes = [packed_size(s, sym) for s, sym in self.items]
        self.offsets = [0]
        for n in self.sizes:
            self.offsets.append(self.offsets[-1] + n)
        self.size = self.offsets.pop()

    def __len__(self):
        return len(self.items)

    def bounds(self, start, stop):
        """``(first, last)`` buffer positions of arrays ``start:stop``."""
        first = self.offsets[start] if start < len(self) else self.size
        last = self.offsets[stop] if stop < len(self) else self.size
        return first, last

    def check_shapes(self, arrays, start=0, stop=None):
        """Raises ValueError unless ``arrays`` have the shapes of plan
        positions ``start:stop``."""
        items = self.items[start:stop]
        if len(arrays) != len(items):
            raise ValueError('{} arrays for {} places in the plan'.format(
                len(arrays), len(items)))
        for i, (array, (shape, _)) in enumerate(zip(arrays, items), start):
            if tuple(array.shape) != shape:
                raise ValueError('array {} has shape {}, the plan says {}'
                                 .format(i, array.shape, shape))

    def pack(self, arrays, buffer, scales=None, start=0, stop=None):
        """Writes ``arrays`` (plan positions ``start:stop``), each multiplied
        by ``scales[i]`` if given (float32 array on the buffer's device), into
        ``buffer`` (exactly those arrays' packed length), casting to its
        dtype: one kernel launch (:func:`chainerkfac.cuda.ops.pack`)."""
        stop = len(self) if stop is None else stop
        self.check_shapes(arrays, start, stop)
        ops.pack(arrays, self.symmetric[start:stop], buffer, scales)

    def unpack(self, buffer, outs, divisors=None, start=0, stop=None):
        """Writes the values of ``buffer`` into ``outs`` (plan positions
        ``start:stop``), each divided by ``divisors[i]`` if given (float32
        array on the buffer's device); symmetric ones mirrored. One kernel
        launch (:func:`chainerkfac.cuda.ops.unpack`)."""
        stop = len(self) if stop is None else stop
        self.check_shapes(outs, start, stop)
        ops.unpack(buffer, outs, self.symmetric[start:stop], divisors)


def max_abs(arrays):
    """Max |value| of each array, as a float64 NumPy vector (0 for empty).

    Device arrays are reduced on the device and read back in one transfer.
    """
    out = numpy.zeros(len(arrays))
    device = []
    for i, a in enumerate(arrays):
        if not a.size:
            continue
        if isinstance(a, numpy.ndarray):
            out[i] = float(abs(a).max())
        else:
            device.append((i, abs(a).max()))
    if device:
        xp = backend.get_array_module(device[0][1])
        values = xp.stack([v.astype(numpy.float64) for _, v in device])
        values = values.get() if xp is not numpy else values
        out[[i for i, _ in device]] = values
    return out


def max_abs_vector(arrays, xp):
    """Max |value| of each array as a float64 vector of ``xp`` (0 for an
    empty array), computed where the arrays are, without a read-back: the
    values of :func:`max_abs`."""
    if xp is numpy:
        return max_abs(arrays)
    out = xp.zeros(len(arrays), numpy.float64)  # pragma: no cover - GPU
    for i, a in enumerate(arrays):  # pragma: no cover - needs a GPU
        if a.size:
            out[i] = abs(a).max().astype(numpy.float64)
    return out  # pragma: no cover - needs a GPU


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
