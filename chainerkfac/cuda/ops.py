"""The operations the package runs through the CUDA kernels.

On CuPy arrays each op launches its kernel (one launch); on NumPy arrays it
runs the NumPy reference of :mod:`chainerkfac.cuda.reference`, unless inside
:func:`chainerkfac.cuda.emulate`, where NumPy inputs go through the emulated
kernel. The kernel argument list is built once, by the ``*_call`` function
of the op, for the GPU and the emulated launch alike. Arguments are checked
here the same way for all three paths.

Every op takes ``grid=None``: the number of blocks, by default
``min(ceil(n / BLOCK), MAX_GRID)`` (``n`` the elements the kernel loops
over); tests pass a small one to exercise the grid-stride loops.
"""
import numpy

from chainerkfac import linalg as linalg_recovery
from chainerkfac.cuda import launcher
from chainerkfac.cuda import reference

BLOCK = 256
#: 4096 blocks of 256 threads: several waves on an H100 (132 SMs x 2048
#: threads); the grid-stride loop covers the rest.
MAX_GRID = 4096

_FLOATS = (numpy.dtype(numpy.float16), numpy.dtype(numpy.float32),
           numpy.dtype(numpy.float64))
#: dtype code of the pack/unpack descriptor table.
DTYPE_CODES = {numpy.dtype(numpy.float32): 0, numpy.dtype(numpy.float64): 1,
               numpy.dtype(numpy.float16): 2}
_SUFFIX = {numpy.dtype(numpy.float16): 'f16',
           numpy.dtype(numpy.float32): 'f32',
           numpy.dtype(numpy.float64): 'f64'}


class KernelCall(object):
    """A prepared launch: ``kernel(grid, block, args)``.

    Attributes:
        kernel (launcher.Kernel), grid (int), block (int), args (tuple),
        n (int): the elements the kernel loops over (no launch if 0),
        keep (list): arrays that the launch reads through the table's raw
            addresses (kept alive until the launch).
    """

    def __init__(self, kernel, grid, block, args, n, keep=()):
        self.kernel = kernel
        self.grid = grid
        self.block = block
        self.args = tuple(args)
        self.n = n
        self.keep = list(keep)

    def run(self):
        if self.n > 0:
            self.kernel(self.grid, self.block, self.args)


def grid_size(n, grid=None):
    """Blocks of a launch over ``n`` elements: ``grid`` if given (a positive
    int), else ``min(ceil(n / BLOCK), MAX_GRID)`` (at least 1)."""
    if grid is not None:
        if (not isinstance(grid, (int, numpy.integer))
                or isinstance(grid, bool) or grid < 1):
            raise ValueError('grid must be a positive int, got {!r}'.format(
                grid))
        return int(grid)
    return int(max(1, min(-(-n // BLOCK), MAX_GRID)))


def _array_module(op, arrays):
    kinds = set()
    for a in arrays:
        kind = launcher._array_kind(a)
        if kind is None:
            raise TypeError('{}: expected NumPy or CuPy arrays, got {}'
                            .format(op, type(a).__name__))
        kinds.add(kind)
    if len(kinds) > 1:
        raise TypeError('{}: NumPy and CuPy arrays mixed'.format(op))
    return launcher.cupy if kinds == {'gpu'} else numpy


def _use_kernel(xp):
    return xp is not numpy or launcher.emulating()


def _address(array):
    """Address of the first element of a C-contiguous array."""
    if isinstance(array, numpy.ndarray):
        return array.ctypes.data
    return array.data.ptr  # pragma: no cover - needs a GPU


def _pointer(array):
    """A kernel's optional pointer argument: ``array``, or
    :data:`launcher.NULL` for None (never ``None``: see there)."""
    return launcher.NULL if array is None else array


def _check_float(op, what, array, dtypes=_FLOATS):
    if array.dtype not in dtypes:
        raise TypeError('{}: {} has dtype {}; expected one of {}'.format(
            op, what, array.dtype, ', '.join(d.name for d in dtypes)))


def _check_vector(op, what, array, dtype, length):
    """A 1-D contiguous array of ``dtype`` (and ``length`` unless None)."""
    if array.dtype != dtype:
        raise TypeError('{}: {} must be {}, got {}'.format(
            op, what, numpy.dtype(dtype).name, array.dtype))
    if array.ndim != 1 or (length is not None and array.shape[0] != length):
        raise ValueError('{}: {} must be 1-D{}, got shape {}'.format(
            op, what, '' if length is None else ' of length {}'.format(length),
            array.shape))
    if not array.flags.c_contiguous:
        raise ValueError('{}: {} must be contiguous'.format(op, what))


def _check_writable(op, what, array):
    if not array.flags.c_contiguous:
        raise ValueError('{}: {} is written in place and must be '
                         'C-contiguous'.format(op, what))
    if isinstance(array, numpy.ndarray) and not array.flags.writeable:
        raise ValueError('{}: {} is read-only'.format(op, what))


def _check_slot(op, slot, vector, what):
    if (not isinstance(slot, (int, numpy.integer))
            or isinstance(slot, bool)):
        raise TypeError('{}: slot must be an int, got {}'.format(
            op, type(slot).__name__))
    if not 0 <= slot < vector.shape[0]:
        raise IndexError('{}: slot {} is outside {} of length {}'.format(
            op, slot, what, vector.shape[0]))
    return numpy.int32(slot)


def _int32(op, what, value):
    if value >= 2 ** 31:
        raise ValueError('{}: {} = {} does not fit an int'.format(
            op, what, value))
    return numpy.int32(value)


# --------------------------------------------------------------------------
# pack / unpack


def _check_layout(op, arrays, symmetric, per_array, per_array_name):
    if len(symmetric) != len(arrays):
        raise ValueError('{}: {} arrays but {} symmetric flags'.format(
            op, len(arrays), len(symmetric)))
    sizes = []
    for i, (a, sym) in enumerate(zip(arrays, symmetric)):
        _check_float(op, 'array {}'.format(i), a)
        if sym and (a.ndim != 2 or a.shape[0] != a.shape[1]):
            raise ValueError('{}: symmetric array {} must be square, got '
                             'shape {}'.format(op, i, a.shape))
        sizes.append(reference.packed_size(a.shape, sym))
    if per_array is not None:
        _check_vector(op, per_array_name, per_array, numpy.float32,
                      len(arrays))
    return sizes


def _check_buffer(op, buffer, total):
    _check_float(op, 'buffer', buffer, (numpy.dtype(numpy.float32),
                                        numpy.dtype(numpy.float16)))
    if buffer.ndim != 1 or buffer.shape[0] != total:
        raise ValueError('{}: buffer must have shape ({},) (the packed '
                         'sizes), got {}'.format(op, total, buffer.shape))
    if not buffer.flags.c_contiguous:
        raise ValueError('{}: buffer must be contiguous'.format(op))


def _table(xp, arrays, symmetric, sizes):
    """Descriptor table, 4 int64 per array: address, buffer offset, d of a
    symmetric array or 0, dtype code (see kernels/pack.cu)."""
    table = numpy.zeros((len(arrays), 4), numpy.int64)
    offset = 0
    for i, (a, sym, n) in enumerate(zip(arrays, symmetric, sizes)):
        table[i] = (_address(a), offset, a.shape[0] if sym else 0,
                    DTYPE_CODES[a.dtype])
        offset += n
    return xp.asarray(table.reshape(-1))


def pack_call(xp, arrays, symmetric, buffer, scales, sizes, grid=None):
    """The launch of ``pack_<buffer dtype>`` (arguments already checked;
    ``scales`` None is passed as :data:`launcher.NULL`)."""
    arrays = [xp.ascontiguousarray(a) for a in arrays]
    total = sum(sizes)
    table = _table(xp, arrays, symmetric, sizes)
    kernel = launcher.kernel('pack', 'pack_' + _SUFFIX[buffer.dtype])
    args = (table, _int32('pack', 'the number of arrays', len(arrays)),
            _pointer(scales), buffer, numpy.int64(total))
    return KernelCall(kernel, grid_size(total, grid), BLOCK, args, total,
                      keep=arrays)


def pack(arrays, symmetric, buffer, scales=None, grid=None):
    """Packs arrays into one buffer, with one launch.

    Args:
        arrays: list of arrays (float16/32/64, any shape, mixed dtypes).
        symmetric: list of bools; a symmetric ``(d, d)`` array travels as
            its upper triangle, row-major, ``d (d + 1) / 2`` values; the
            others whole, in C order, one after the other.
        buffer: 1-D float32 or float16 array of exactly the total size;
            written.
        scales: None or float32 vector, ``len(arrays)``:
            ``buffer value = cast(scale_i * x)``, the product in float32
            (float64 for float64 arrays).
    """
    arrays = list(arrays)
    symmetric = [bool(s) for s in symmetric]
    extra = [buffer] + ([] if scales is None else [scales])
    xp = _array_module('pack', arrays + extra)
    sizes = _check_layout('pack', arrays, symmetric, scales, 'scales')
    _check_buffer('pack', buffer, sum(sizes))
    _check_writable('pack', 'buffer', buffer)
    if not _use_kernel(xp):
        reference.pack(arrays, symmetric, buffer, scales)
        return
    pack_call(xp, arrays, symmetric, buffer, scales, sizes, grid).run()


def unpack_call(xp, buffer, outs, symmetric, divisors, sizes, grid=None):
    """The launch of ``unpack_<buffer dtype>`` (arguments already checked;
    ``divisors`` None is passed as :data:`launcher.NULL`)."""
    total = sum(sizes)
    table = _table(xp, outs, symmetric, sizes)
    kernel = launcher.kernel('pack', 'unpack_' + _SUFFIX[buffer.dtype])
    args = (buffer, numpy.int64(total), table,
            _int32('unpack', 'the number of arrays', len(outs)),
            _pointer(divisors))
    return KernelCall(kernel, grid_size(total, grid), BLOCK, args, total)


def unpack(buffer, outs, symmetric, divisors=None, grid=None):
    """Unpacks a buffer into preallocated arrays, in place, with one launch.

    Args:
        buffer: 1-D float32/float16 array of exactly the total packed size.
        outs: list of C-contiguous arrays (float16/32/64, any shape);
            symmetric ones get the upper triangle and its mirror.
        symmetric: list of bools, as for :func:`pack`.
        divisors: None or float32 vector, ``len(outs)``:
            ``out = value / divisor_i``, in float32 for float16/float32
            outputs and in float64 for float64 outputs.
    """
    outs = list(outs)
    symmetric = [bool(s) for s in symmetric]
    extra = [buffer] + ([] if divisors is None else [divisors])
    xp = _array_module('unpack', outs + extra)
    sizes = _check_layout('unpack', outs, symmetric, divisors, 'divisors')
    _check_buffer('unpack', buffer, sum(sizes))
    for i, out in enumerate(outs):
        _check_writable('unpack', 'output {}'.format(i), out)
    if not _use_kernel(xp):
        reference.unpack(buffer, outs, symmetric, divisors)
        return
    unpack_call(xp, buffer, outs, symmetric, divisors, sizes, grid).run()


# --------------------------------------------------------------------------
# flag_nonfinite


def flag_nonfinite_call(xp, array, flags, slot, grid=None):
    """The launch of ``flag_nonfinite_<dtype>`` (arguments checked)."""
    array = xp.ascontiguousarray(array)
    kernel = launcher.kernel('nonfinite',
                             'flag_nonfinite_' + _SUFFIX[array.dtype])
    args = (array, numpy.int64(array.size), flags,
            _int32('flag_nonfinite', 'len(flags)', flags.shape[0]), slot)
    return KernelCall(kernel, grid_size(array.size, grid), BLOCK, args,
                      array.size)


def flag_nonfinite(array, flags, slot, grid=None):
    """Sets ``flags[slot] = 1`` if any element of ``array`` (float16/32/64)
    is inf or NaN; never clears it.

    Args:
        flags: 1-D int32 array. slot (int): index into it.
    """
    xp = _array_module('flag_nonfinite', [array, flags])
    _check_float('flag_nonfinite', 'array', array)
    _check_vector('flag_nonfinite', 'flags', flags, numpy.int32, None)
    _check_writable('flag_nonfinite', 'flags', flags)
    slot = _check_slot('flag_nonfinite', slot, flags, 'flags')
    if not _use_kernel(xp):
        reference.flag_nonfinite(array, flags, int(slot))
        return
    flag_nonfinite_call(xp, array, flags, slot, grid).run()


# --------------------------------------------------------------------------
# momentum_update


def momentum_update_call(xp, param, velocity, direction, fallback, flags,
                         slot, lr, momentum, grid=None):
    """The launch of ``momentum_update_<dtype>`` (arguments checked)."""
    direction = xp.ascontiguousarray(direction)
    fallback = xp.ascontiguousarray(fallback)
    scalar = (numpy.float32 if param.dtype == numpy.float16
              else param.dtype.type)
    kernel = launcher.kernel('momentum',
                             'momentum_update_' + _SUFFIX[param.dtype])
    args = (param, velocity, direction, fallback, flags,
            numpy.int64(param.size),
            _int32('momentum_update', 'len(flags)', flags.shape[0]), slot,
            scalar(lr), scalar(momentum))
    return KernelCall(kernel, grid_size(param.size, grid), BLOCK, args,
                      param.size)


def momentum_update(param, velocity, direction, fallback, flags, slot, lr,
                    momentum, grid=None):
    """Fused heavy-ball step, in place, one launch::

        d = fallback if flags[slot] else direction
        velocity = (momentum * velocity) - (lr * d)
        param = param + velocity

    All four arrays have one shape and dtype (float16/32/64); ``param`` and
    ``velocity`` are C-contiguous. float32/float64: arithmetic in the dtype,
    ``lr`` and ``momentum`` rounded to it first; float16: in float32, each
    result rounded to float16 on store.
    """
    op = 'momentum_update'
    arrays = [param, velocity, direction, fallback]
    xp = _array_module(op, arrays + [flags])
    _check_float(op, 'param', param)
    for what, a in zip(('velocity', 'direction', 'fallback'), arrays[1:]):
        if a.dtype != param.dtype:
            raise TypeError('{}: {} has dtype {}, param {}'.format(
                op, what, a.dtype, param.dtype))
        if a.shape != param.shape:
            raise ValueError('{}: {} has shape {}, param {}'.format(
                op, what, a.shape, param.shape))
    _check_writable(op, 'param', param)
    _check_writable(op, 'velocity', velocity)
    _check_vector(op, 'flags', flags, numpy.int32, None)
    slot = _check_slot(op, slot, flags, 'flags')
    if not _use_kernel(xp):
        reference.momentum_update(param, velocity, direction, fallback,
                                  flags, int(slot), lr, momentum)
        return
    momentum_update_call(xp, param, velocity, direction, fallback, flags,
                         slot, lr, momentum, grid).run()


# --------------------------------------------------------------------------
# unit_fisher_inverse


def unit_fisher_inverse_call(xp, fisher, inverse, damping, status, slot,
                             grid=None):
    """The launch of ``unit_fisher_inverse_<dtype>`` (arguments checked)."""
    fisher = xp.ascontiguousarray(fisher)
    n = fisher.shape[0]
    kernel = launcher.kernel('unit_fisher',
                             'unit_fisher_inverse_' + _SUFFIX[fisher.dtype])
    t = fisher.dtype.type
    args = (fisher, inverse, numpy.int64(n), t(damping),
            t(linalg_recovery.RECOVERY_RELATIVE),
            t(linalg_recovery.RECOVERY_TINY),
            numpy.int32(linalg_recovery.RECOVERY_TRIES),
            status, _int32('unit_fisher_inverse', 'len(status)',
                           status.shape[0]), slot)
    return KernelCall(kernel, grid_size(n, grid), BLOCK, args, n)


def unit_fisher_inverse(fisher, damping, status, slot, grid=None):
    """Damped inverses of symmetric 2x2 blocks, one launch.

    Args:
        fisher: ``(C, 2, 2)`` float32/float64 array of blocks
            ``[[a, b], [b, c]]`` (``fisher[:, 1, 0]`` is not read).
        damping (float): finite.
        status: 1-D int32 array; ``status[slot] = max(status[slot], level)``
            with the highest fallback level of any channel when above 0
            (0: ``damping`` was enough; 1: ``lam = base * 10^k`` with
            ``base = max(damping, relative |a + c| / 2, tiny)``, ``k = 0 ..
            tries - 1``, the constants of :mod:`chainerkfac.linalg`'s
            recovery rule; 2: none was, or ``a + c`` is not finite, so the
            identity).

    Returns:
        a new ``(C, 2, 2)`` array of ``fisher``'s dtype: per channel
        ``[[c', -b], [-b, a']] / (a' c' - b^2)``, ``a' = a + lam``,
        ``c' = c + lam``, computed in that dtype.
    """
    op = 'unit_fisher_inverse'
    xp = _array_module(op, [fisher, status])
    _check_float(op, 'fisher', fisher, _FLOATS[1:])
    if fisher.ndim != 3 or fisher.shape[1:] != (2, 2):
        raise ValueError('{}: fisher must have shape (C, 2, 2), got {}'
                         .format(op, fisher.shape))
    damping = float(damping)
    if not numpy.isfinite(damping):
        raise ValueError('{}: damping must be finite, got {}'.format(
            op, damping))
    _check_vector(op, 'status', status, numpy.int32, None)
    _check_writable(op, 'status', status)
    slot = _check_slot(op, slot, status, 'status')
    if not _use_kernel(xp):
        return reference.unit_fisher_inverse(fisher, damping, status,
                                             int(slot))
    inverse = xp.empty(fisher.shape, fisher.dtype)
    unit_fisher_inverse_call(xp, fisher, inverse, damping, status, slot,
                             grid).run()
    return inverse
