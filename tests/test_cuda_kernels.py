"""The CUDA kernels, emulated on the CPU, equal their NumPy references bit
for bit; the references are checked against plain NumPy; and, with a GPU,
the CuPy runs equal the references."""
import math
import os

import numpy
import pytest

from chainerkfac import cuda
from chainerkfac.cuda import launcher
from chainerkfac.cuda import ops
from chainerkfac.cuda import reference
from cuda_helpers import emulated  # NOQA: I100


F16, F32, F64 = numpy.float16, numpy.float32, numpy.float64
FLOATS = [F16, F32, F64]


def assert_same(actual, expected):
    """Same dtype, shape and bits (any NaN matches any NaN)."""
    actual, expected = numpy.asarray(actual), numpy.asarray(expected)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    nan = numpy.isnan(expected)
    numpy.testing.assert_array_equal(numpy.isnan(actual), nan)
    bits = 'u{}'.format(actual.dtype.itemsize)
    a = actual[~nan].view(bits)
    e = expected[~nan].view(bits)
    mismatch = numpy.flatnonzero(a != e)
    assert mismatch.size == 0, 'differ at {} of {}: {} vs {}'.format(
        mismatch.size, a.size, actual[~nan][mismatch[:5]],
        expected[~nan][mismatch[:5]])


def copies(arrays):
    return [a.copy() for a in arrays]


def symmetric(rng, d, dtype, scale=1.0):
    m = rng.randn(d, d) * scale
    return (m + m.T).astype(dtype)


def spread(rng, shape, dtype):
    """Values of many magnitudes (2**-30 .. 2**30 before the cast)."""
    x = rng.randn(*shape) * 2.0 ** rng.randint(-30, 31, size=shape)
    with numpy.errstate(over='ignore'):
        return numpy.asarray(x, dtype)


def packed_total(arrays, sym):
    return sum(reference.packed_size(a.shape, s) for a, s in zip(arrays, sym))


def pow2_scales(rng, n):
    return (2.0 ** rng.randint(-20, 21, size=n)).astype(F32)


def rank_divisors(rng, n):
    return (rng.randint(1, 8, size=n) * 2.0 ** rng.randint(-6, 7, size=n)
            ).astype(F32)


def mixed_list(rng, seed_dtypes, with_special=False):
    """Symmetric and plain arrays of mixed dtypes and shapes, incl. d = 1,
    empty and 0-d arrays."""
    shapes = [((1, 1), True), ((5, 5), True), ((3, 4), False), ((0,), False),
              ((), False), ((17, 17), True), ((2, 3, 7), False),
              ((0, 4), False), ((64, 64), True), ((33,), False)]
    arrays, sym = [], []
    for i, (shape, s) in enumerate(shapes):
        dtype = seed_dtypes[i % len(seed_dtypes)]
        if s:
            x = symmetric(rng, shape[0], F64) * 2.0 ** rng.randint(-12, 13)
            x = x.astype(dtype)
        else:
            x = spread(rng, shape, dtype) if rng.rand() < 0.5 else (
                numpy.asarray(rng.randn(*shape), dtype))
        arrays.append(x)
        sym.append(s)
    if with_special:
        arrays[2][0, 0] = numpy.nan
        arrays[2][1, 1] = numpy.inf
        arrays[6][0, 1, 2] = -numpy.inf
        arrays[9][3] = numpy.nan
        arrays[1][0, 4] = arrays[1][4, 0] = numpy.inf
        # beyond float16 (but finite in float32/64 arrays)
        if arrays[9].dtype != F16:
            arrays[9][5] = 1e6
            arrays[9][6] = 65520.0
            arrays[9][7] = 65519.0
        arrays.append(DOUBLE_ROUNDING)
        sym.append(False)
    return arrays, sym


#: float64 values whose float16 (float32) rounding differs when taken via
#: float32 (float64 -> float32 -> float16 rounds twice), or that leave the
#: float32 range: a kernel must round them once, from float64.
DOUBLE_ROUNDING = numpy.concatenate([
    (1 + 2.0 ** -11 + 2.0 ** -40) * 2.0 ** numpy.arange(-14, 16),
    -(1 + 2.0 ** -11 + 2.0 ** -41) * 2.0 ** numpy.arange(-14, 16),
    (1 + 2.0 ** -24 + 2.0 ** -60) * 2.0 ** numpy.arange(-30, 30, 7),
    [1e39, -3e38 * 2 ** 8, 1e-46, 3e-39, 2.0 ** -150 * 1.5, 1e300],
])


def run_both(op, make_args, grid=None):
    """Runs ``op`` on two identical argument sets, by reference and
    emulated; returns both argument sets (and results) for comparison."""
    ref_args, emu_args = make_args(), make_args()
    ref_out = op(*ref_args)
    with cuda.emulate():
        emu_out = op(*emu_args, grid=grid)
    return ref_args, emu_args, ref_out, emu_out


# --------------------------------------------------------------------------
# Reference against plain NumPy


def test_reference_pack_is_triu_row_major(rng):
    a = symmetric(rng, 6, F32)
    b = rng.randn(2, 3).astype(F64)
    buffer = numpy.zeros(21 + 6, F32)
    reference.pack([a, b], [True, False], buffer)
    iu = numpy.triu_indices(6)
    numpy.testing.assert_array_equal(buffer[:21], a[iu])
    numpy.testing.assert_array_equal(buffer[21:], b.ravel().astype(F32))


def test_reference_pack_scales_and_casts(rng):
    a = rng.randn(3, 3).astype(F64)
    a = a + a.T
    b = rng.randn(4).astype(F16)
    scales = numpy.array([2.0 ** -3, 2.0 ** 5], F32)
    buffer = numpy.zeros(6 + 4, F16)
    reference.pack([a, b], [True, False], buffer, scales)
    numpy.testing.assert_array_equal(
        buffer[:6], (a[numpy.triu_indices(3)] * 2.0 ** -3).astype(F16))
    numpy.testing.assert_array_equal(
        buffer[6:], (b.astype(F32) * F32(32)).astype(F16))


def test_reference_unpack_mirrors_and_divides(rng):
    d = 130  # more than two mirror blocks
    full = symmetric(rng, d, F64)
    iu = numpy.triu_indices(d)
    plain = rng.randn(2, 5)
    buffer = numpy.concatenate([full[iu], plain.ravel()]).astype(F32)
    outs = [numpy.zeros((d, d), F64), numpy.zeros((2, 5), F16)]
    divisors = numpy.array([3.0, 6.0], F32)
    reference.unpack(buffer, outs, [True, False], divisors)
    numpy.testing.assert_array_equal(
        outs[0], full.astype(F32).astype(F64) / 3.0)
    numpy.testing.assert_array_equal(
        outs[1], (plain.astype(F32) / F32(6)).astype(F16))


def test_reference_flag_nonfinite():
    flags = numpy.zeros(3, numpy.int32)
    reference.flag_nonfinite(numpy.ones(4, F32), flags, 1)
    assert flags.tolist() == [0, 0, 0]
    x = numpy.ones(4, F16)
    x[2] = numpy.inf
    reference.flag_nonfinite(x, flags, 1)
    assert flags.tolist() == [0, 1, 0]
    y = numpy.ones((2, 2))
    y[1, 0] = numpy.nan
    reference.flag_nonfinite(y, flags, 2)
    assert flags.tolist() == [0, 1, 1]


@pytest.mark.parametrize('dtype', [F32, F64])
def test_reference_momentum_equals_the_numpy_update(rng, dtype):
    p, v, d = (rng.randn(50).astype(dtype) for _ in range(3))
    p2, v2 = p.copy(), v.copy()
    reference.momentum_update(p, v, d, None, numpy.zeros(1, numpy.int32), 0,
                              0.1, 0.9)
    v2 *= dtype(0.9)
    v2 -= dtype(0.1) * d
    p2 += v2
    assert_same(p, p2)
    assert_same(v, v2)


@pytest.mark.parametrize('dtype', [F32, F64])
def test_reference_unit_inverse_against_linalg_inv(rng, dtype):
    m = rng.randn(40, 2, 3)
    fisher = (m @ m.transpose(0, 2, 1)).astype(dtype)
    status = numpy.zeros(1, numpy.int32)
    inv = reference.unit_fisher_inverse(fisher, 1e-3, status, 0)
    expected = numpy.linalg.inv(fisher.astype(F64) + 1e-3 * numpy.eye(2))
    tol = 1e-4 if dtype == F32 else 1e-12
    numpy.testing.assert_allclose(inv, expected, rtol=tol, atol=tol)
    assert status[0] == 0 and inv.dtype == dtype


def test_reference_unit_inverse_fallback_levels():
    fisher = numpy.array([
        [[1.0, 0.0], [0.0, 1.0]],      # PD with the damping: level 0
        [[-1.0, 0.0], [0.0, 4.0]],     # a' < 0: needs more: level 1
        [[numpy.nan, 0.0], [0.0, 1.0]],  # a + c not finite: level 2
    ], F64)
    status = numpy.array([0, 0], numpy.int32)
    inv = reference.unit_fisher_inverse(fisher, 0.5, status, 1)
    assert status.tolist() == [0, 2]
    numpy.testing.assert_allclose(inv[0], numpy.eye(2) / 1.5)
    numpy.testing.assert_array_equal(inv[2], numpy.eye(2))
    # base = max(0.5, 1e-6 * 3 / 2, 1e-30) = 0.5; 0.5 * 10 = 5 is the first
    # lam with -1 + lam > 0
    numpy.testing.assert_allclose(inv[1], numpy.diag([1 / 4.0, 1 / 9.0]))
    only_one = reference.unit_fisher_inverse(fisher[:2], 0.5, status, 0)
    assert status.tolist() == [1, 2]
    numpy.testing.assert_array_equal(only_one, inv[:2])


# --------------------------------------------------------------------------
# Emulated kernels against the reference


@emulated
@pytest.mark.parametrize('buffer_dtype', [F32, F16])
@pytest.mark.parametrize('with_scales', [False, True])
@pytest.mark.parametrize('grid', [1, 3, None])
@pytest.mark.parametrize('dtypes', [(F32,), (F16,), (F64,), (F32, F16, F64)])
def test_pack(rng, buffer_dtype, with_scales, grid, dtypes):
    arrays, sym = mixed_list(rng, dtypes, with_special=True)
    total = packed_total(arrays, sym)
    scales = pow2_scales(rng, len(arrays)) if with_scales else None
    if with_scales:
        scales[2] = 2.0 ** 20  # float16 overflow of ordinary values
        scales[5] = 2.0 ** -20

    def make():
        return [copies(arrays), sym, numpy.full(total, 7, buffer_dtype),
                None if scales is None else scales.copy()]

    ref, emu, _, _ = run_both(ops.pack, make, grid)
    assert_same(emu[2], ref[2])
    assert not (ref[2] == 7).all()
    for a, b in zip(emu[0], arrays):  # inputs untouched
        assert_same(a, b)
    if buffer_dtype == F16 and with_scales:
        assert numpy.isinf(ref[2]).sum() > 3  # overflow happened


@emulated
@pytest.mark.parametrize('buffer_dtype', [F32, F16])
def test_pack_large_triangle(rng, buffer_dtype):
    d = 3000
    a = rng.randn(d, d).astype(F32)  # not symmetric: the lower half is unused
    small = rng.randn(3, 3).astype(F64)
    arrays, sym = [small, a, small[0]], [True, True, False]
    total = packed_total(arrays, sym)

    def make():
        return [arrays, sym, numpy.zeros(total, buffer_dtype), None]

    ref, emu, _, _ = run_both(ops.pack, make)
    assert_same(emu[2], ref[2])
    # spot check the row boundaries of the big triangle
    for r in (0, 1, 1000, d - 2, d - 1):
        start = 6 + r * d - r * (r - 1) // 2
        numpy.testing.assert_array_equal(
            ref[2][start:start + d - r], a[r, r:].astype(buffer_dtype))


@emulated
@pytest.mark.parametrize('buffer_dtype', [F32, F16])
@pytest.mark.parametrize('with_divisors', [False, True])
@pytest.mark.parametrize('grid', [1, 2, None])
@pytest.mark.parametrize('dtypes', [(F32,), (F16,), (F64,), (F16, F64, F32)])
def test_unpack(rng, buffer_dtype, with_divisors, grid, dtypes):
    like, sym = mixed_list(rng, dtypes)
    total = packed_total(like, sym)
    buffer = spread(rng, (total,), F64)
    buffer[::97] = rng.randn(len(buffer[::97])) * 1e5  # f16 overflow
    with numpy.errstate(over='ignore'):
        buffer = buffer.astype(buffer_dtype)
    buffer[5] = numpy.nan
    buffer[-2] = -numpy.inf
    divisors = rank_divisors(rng, len(like)) if with_divisors else None

    def make():
        return [buffer.copy(), [numpy.full(a.shape, 3, a.dtype) for a in like],
                sym, None if divisors is None else divisors.copy()]

    ref, emu, _, _ = run_both(ops.unpack, make, grid)
    for a, b, s in zip(emu[1], ref[1], sym):
        assert_same(a, b)
        if s:
            assert_same(b, b.T)


@emulated
@pytest.mark.parametrize('out_dtype', FLOATS)
def test_unpack_large_triangle(rng, out_dtype):
    d = 3000
    total = d * (d + 1) // 2
    buffer = rng.randn(total).astype(F32)
    divisors = numpy.array([3.0], F32)

    def make():
        return [buffer, [numpy.zeros((d, d), out_dtype)], [True], divisors]

    ref, emu, _, _ = run_both(ops.unpack, make)
    assert_same(emu[1][0], ref[1][0])
    out = ref[1][0]
    assert_same(out, out.T)
    assert_same(out[d - 1, d - 1:],
                (buffer[-1:] / F32(3)).astype(out_dtype)
                if out_dtype != F64 else buffer[-1:].astype(F64) / 3.0)


@emulated
@pytest.mark.parametrize('buffer_dtype', [F32, F16])
def test_pack_unpack_round_trip(rng, buffer_dtype):
    arrays, sym = mixed_list(rng, (F32, F64, F16))
    arrays = [numpy.asarray(rng.randn(*a.shape), a.dtype) if not s else a
              for a, s in zip(arrays, sym)]
    scales = numpy.full(len(arrays), 2.0 ** -4, F32)
    buffer = numpy.zeros(packed_total(arrays, sym), buffer_dtype)
    outs = [numpy.zeros(a.shape, F32) for a in arrays]
    with cuda.emulate():
        ops.pack(arrays, sym, buffer, scales, grid=2)
        ops.unpack(buffer, outs, sym, scales, grid=5)
    for a, o in zip(arrays, outs):
        if a.dtype == F16 or buffer_dtype == F16:
            tol = 1e-3 * max(1.0, float(numpy.abs(a).max(initial=0)))
        else:
            tol = 1e-6 * float(numpy.abs(a).max(initial=0))
        numpy.testing.assert_allclose(o, a.astype(F32), rtol=0, atol=tol)


ROW_KERNEL = r'''
extern "C" __global__ void triangle_rows(const long long* t /* [n] */,
                                         long long* rows /* [n] */,
                                         long long n, long long d) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    rows[i] = triangle_row(t[i], d);
  }
}
'''


def _row_start(r, d):
    return r * d - r * (r - 1) // 2


@emulated
def test_triangle_row_is_exact_up_to_huge_d(tmp_path, monkeypatch):
    """The row of a packed index (pack.cu's triangle_row) at every row
    boundary, for d up to 1e9 where the double square root alone is off."""
    monkeypatch.setenv('CHAINERKFAC_CACHE_DIR', str(tmp_path))
    with open(os.path.join(launcher.KERNEL_DIR, 'pack.cu')) as f:
        module = launcher.Module(f.read() + ROW_KERNEL, 'pack_rows.cu')
    rng = numpy.random.RandomState(3)
    checked = 0
    for d in [1, 2, 3, 7, 3000, 94906267, 10 ** 9]:
        rows = sorted(set([0, 1, d - 2, d - 1] + list(
            rng.randint(0, d, size=300)) + [d // 2 + i for i in range(-50, 50)]
            + [int(d - math.sqrt(d) * x) for x in (1.0, 1.5, 2.0)]))
        rows = [r for r in rows if 0 <= r < d]
        t, expected = [], []
        for r in rows:
            for delta, row in ((0, r), (-1, r - 1), (1, r),
                               (d - r - 1, r)):
                index = _row_start(r, d) + delta
                if row >= 0 and 0 <= index < d * (d + 1) // 2:
                    t.append(index)
                    expected.append(row)
        t = numpy.array(t, numpy.int64)
        out = numpy.full(len(t), -1, numpy.int64)
        with cuda.emulate():
            module['triangle_rows'](3, 32, (t, out, numpy.int64(len(t)),
                                            numpy.int64(d)))
        numpy.testing.assert_array_equal(out, expected)
        checked += len(t)
    assert checked > 3000


def _flag_inputs(rng, dtype, n, bad):
    x = rng.randn(n).astype(dtype)
    if bad is not None and n:
        where, value = bad
        x[where % n] = value
    return x


@emulated
@pytest.mark.parametrize('dtype', FLOATS)
@pytest.mark.parametrize('bad', [None, (0, numpy.inf), (-1, numpy.nan),
                                 (777, -numpy.inf), (5, numpy.nan)])
@pytest.mark.parametrize('grid', [1, 2, None])
@pytest.mark.parametrize('n', [0, 1, 1000])
def test_flag_nonfinite(rng, dtype, bad, grid, n):
    x = _flag_inputs(rng, dtype, n, bad)

    def make():
        return [x.reshape(-1, 1) if n % 2 == 0 else x,
                numpy.array([0, 0, 5], numpy.int32), 1]

    ref, emu, _, _ = run_both(ops.flag_nonfinite, make, grid)
    assert_same(emu[1], ref[1])
    expected = 1 if bad is not None and n else 0
    assert ref[1].tolist() == [0, expected, 5]


@emulated
@pytest.mark.parametrize('dtype', FLOATS)
def test_flag_nonfinite_never_clears_and_sees_fp16_overflow(rng, dtype):
    flags = numpy.array([1, 0], numpy.int32)
    with cuda.emulate():
        ops.flag_nonfinite(numpy.ones(10, dtype), flags, 0)
        assert flags.tolist() == [1, 0]
        with numpy.errstate(over='ignore'):  # inf in float16 only
            big = (numpy.ones(10) * 1e5).astype(dtype)
        ops.flag_nonfinite(big, flags, 1)
    assert flags.tolist() == [1, 1 if dtype == F16 else 0]


@emulated
@pytest.mark.parametrize('dtype', FLOATS)
@pytest.mark.parametrize('flag', [0, 1])
@pytest.mark.parametrize('grid', [1, 3, None])
@pytest.mark.parametrize('shape', [(1,), (7, 3), (1000,)])
def test_momentum_update(rng, dtype, flag, grid, shape):
    arrays = [spread(rng, shape, dtype) if i == 2 else
              rng.randn(*shape).astype(dtype) for i in range(4)]
    if dtype == F16:
        arrays[2].reshape(-1)[0] = 6e4  # lr * d overflows nothing in f32
    arrays[3].reshape(-1)[-1] = numpy.nan
    lr, momentum = 0.1 + 1e-9, 0.9 - 1e-9

    def make():
        return copies(arrays) + [numpy.array([0, flag], numpy.int32), 1, lr,
                                 momentum]

    ref, emu, _, _ = run_both(ops.momentum_update, make, grid)
    assert_same(emu[0], ref[0])
    assert_same(emu[1], ref[1])
    assert not numpy.array_equal(ref[0], arrays[0])
    assert bool(numpy.isnan(ref[0]).any()) == bool(flag)


@emulated
def test_momentum_update_float16_overflows_to_inf():
    p = numpy.full(4, 6e4, F16)
    v = numpy.full(4, 2e4, F16)
    d = numpy.full(4, -1e4, F16)

    def make():
        return [p.copy(), v.copy(), d.copy(), d.copy(),
                numpy.zeros(1, numpy.int32), 0, 1.0, 0.5]

    ref, emu, _, _ = run_both(ops.momentum_update, make, 1)
    assert_same(emu[0], ref[0])
    assert_same(emu[1], ref[1])
    assert numpy.isposinf(ref[0]).all()  # 6e4 + (1e4 + 1e4) > 65504
    assert (ref[1] == F16(2e4)).all()


def _fisher_cases(rng, dtype, c):
    m = rng.randn(c, 2, 3)
    fisher = m @ m.transpose(0, 2, 1)
    fisher *= 10.0 ** rng.randint(-8, 9, size=(c, 1, 1))
    k = c // 8
    fisher[:k, 0, 0] *= -1                          # indefinite
    fisher[k:2 * k] = 0                             # singular, zero damping
    fisher[2 * k, 0, 1] = numpy.nan                 # non-finite b
    fisher[2 * k + 1, 1, 1] = numpy.inf             # non-finite c
    fisher[2 * k + 2] = [[1e38, 1e38], [1e38, 1e38]]  # det overflows (f32)
    fisher[2 * k + 3] = [[1.0, 2.0], [2.0, 1.0]]    # indefinite
    fisher[2 * k + 4] = [[-1e30, 0.0], [0.0, 1.0]]  # needs lam ~ 1e30
    fisher[2 * k + 5] = [[1e-40, 0.0], [0.0, 1e-40]]  # subnormal in f32
    # tiny indefinite blocks: with zero damping, lam comes from 1e-6 |a + c|
    tiny = 10.0 ** rng.uniform(-30, -8, size=k)
    start = 2 * k + 6
    fisher[start:start + k, 0, 0] = -tiny
    fisher[start:start + k, 0, 1] = fisher[start:start + k, 1, 0] = tiny / 7
    fisher[start:start + k, 1, 1] = 3 * tiny
    return fisher.astype(dtype)


@emulated
@pytest.mark.parametrize('dtype', [F32, F64])
@pytest.mark.parametrize('damping', [0.0, 1e-3, 1.0])
@pytest.mark.parametrize('grid', [1, 2, None])
@pytest.mark.parametrize('c', [1, 5, 300])
def test_unit_fisher_inverse(rng, dtype, damping, grid, c):
    fisher = (_fisher_cases(rng, dtype, c) if c >= 8
              else rng.randn(c, 2, 2).astype(dtype))

    def make():
        return [fisher.copy(), damping, numpy.array([0, 0, 0], numpy.int32),
                2]

    ref, emu, ref_inv, emu_inv = run_both(ops.unit_fisher_inverse, make, grid)
    assert_same(emu_inv, ref_inv)
    assert_same(emu[2], ref[2])
    assert ref[2][:2].tolist() == [0, 0]
    if c >= 8:
        assert ref[2][2] == 2  # the non-finite channels
        assert numpy.isfinite(ref_inv).all()
        numpy.testing.assert_array_equal(ref_inv[2 * (c // 8) + 1],
                                      numpy.eye(2))


@emulated
@pytest.mark.parametrize('dtype', [F32, F64])
def test_unit_fisher_inverse_level_one_only(dtype):
    fisher = numpy.array([[[-1.0, 0.5], [0.5, 4.0]],
                          [[2.0, 0.0], [0.0, 2.0]]], dtype)

    def make():
        return [fisher.copy(), 1e-3, numpy.array([0], numpy.int32), 0]

    ref, emu, ref_inv, emu_inv = run_both(ops.unit_fisher_inverse, make, 1)
    assert_same(emu_inv, ref_inv)
    assert ref[2].tolist() == emu[2].tolist() == [1]


@emulated
def test_empty_inputs_launch_nothing():
    flags = numpy.zeros(1, numpy.int32)
    with cuda.emulate():
        ops.pack([], [], numpy.zeros(0, F32))
        ops.pack([numpy.zeros((0, 3), F32)], [False], numpy.zeros(0, F16))
        ops.unpack(numpy.zeros(0, F32), [numpy.zeros(0, F64)], [False])
        ops.flag_nonfinite(numpy.zeros((0,), F16), flags, 0)
        ops.momentum_update(*[numpy.zeros(0, F32)] * 4, flags, 0, 0.1, 0.9)
        inv = ops.unit_fisher_inverse(numpy.zeros((0, 2, 2)), 1e-3, flags, 0)
    assert inv.shape == (0, 2, 2) and inv.dtype == F64
    assert flags.tolist() == [0]


# --------------------------------------------------------------------------
# GPU


@pytest.fixture
def cp():
    cupy = pytest.importorskip('cupy')
    if not cupy.is_available():
        pytest.skip('no CUDA device')
    return cupy


@pytest.mark.gpu
@pytest.mark.parametrize('buffer_dtype', [F32, F16])
def test_gpu_pack_unpack(cp, rng, buffer_dtype):  # pragma: no cover
    arrays, sym = mixed_list(rng, (F32, F16, F64), with_special=True)
    # CuPy compiles with -ftz=true: no float32 subnormals on the GPU
    special = arrays[-1]
    arrays[-1] = special[(special == 0)
                         | (numpy.abs(special) >= numpy.finfo(F32).tiny)]
    arrays.append(symmetric(rng, 3000, F32))
    sym.append(True)
    total = packed_total(arrays, sym)
    scales = pow2_scales(rng, len(arrays))
    expected = numpy.zeros(total, buffer_dtype)
    ops.pack(arrays, sym, expected, scales)
    buffer = cp.zeros(total, buffer_dtype)
    ops.pack([cp.asarray(a) for a in arrays], sym, buffer, cp.asarray(scales))
    assert_same(cp.asnumpy(buffer), expected)

    divisors = rank_divisors(rng, len(arrays))
    outs = [numpy.zeros(a.shape, a.dtype) for a in arrays]
    ops.unpack(expected, outs, sym, divisors)
    gpu_outs = [cp.zeros(a.shape, a.dtype) for a in arrays]
    ops.unpack(cp.asarray(expected), gpu_outs, sym, cp.asarray(divisors))
    for g, o in zip(gpu_outs, outs):
        assert_same(cp.asnumpy(g), o)


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', FLOATS)
def test_gpu_flag_nonfinite(cp, rng, dtype):  # pragma: no cover
    x = rng.randn(100000).astype(dtype)
    flags = cp.zeros(2, numpy.int32)
    ops.flag_nonfinite(cp.asarray(x), flags, 0)
    x[99999] = numpy.nan
    ops.flag_nonfinite(cp.asarray(x), flags, 1)
    assert cp.asnumpy(flags).tolist() == [0, 1]


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', FLOATS)
@pytest.mark.parametrize('flag', [0, 1])
def test_gpu_momentum_update(cp, rng, dtype, flag):  # pragma: no cover
    arrays = [rng.randn(10007).astype(dtype) for _ in range(4)]
    flags = numpy.array([flag], numpy.int32)
    cpu = copies(arrays)
    ops.momentum_update(*cpu, flags, 0, 0.1, 0.9)
    gpu = [cp.asarray(a) for a in arrays]
    ops.momentum_update(*gpu, cp.asarray(flags), 0, 0.1, 0.9)
    tol = {F16: 1e-3, F32: 1e-6, F64: 1e-14}[dtype]
    for g, c in zip(gpu[:2], cpu[:2]):
        numpy.testing.assert_allclose(cp.asnumpy(g), c, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [F32, F64])
def test_gpu_unit_fisher_inverse(cp, rng, dtype):  # pragma: no cover
    fisher = _fisher_cases(rng, dtype, 300)
    status = numpy.zeros(1, numpy.int32)
    expected = ops.unit_fisher_inverse(fisher, 1e-3, status, 0)
    gpu_status = cp.zeros(1, numpy.int32)
    inv = ops.unit_fisher_inverse(cp.asarray(fisher), 1e-3, gpu_status, 0)
    tol = 1e-5 if dtype == F32 else 1e-12
    numpy.testing.assert_allclose(cp.asnumpy(inv), expected, rtol=tol,
                                  atol=0)
    assert cp.asnumpy(gpu_status).tolist() == status.tolist()


@pytest.mark.gpu
@pytest.mark.parametrize('buffer_dtype', [F32, F16])
@pytest.mark.parametrize('grid', [3, None])
def test_gpu_pack_unpack_without_scales_or_divisors(
        cp, rng, buffer_dtype, grid):  # pragma: no cover - needs a GPU
    """The launches that pass launcher.NULL for the absent scales/divisors
    (what CuPy 13.6 got wrong for None): every array dtype, both buffer
    dtypes, a small grid (the grid-stride loop) and the default one."""
    arrays, sym = mixed_list(rng, (F32, F16, F64))
    total = packed_total(arrays, sym)
    expected = numpy.zeros(total, buffer_dtype)
    ops.pack(arrays, sym, expected)
    buffer = cp.full(total, numpy.nan, buffer_dtype)
    ops.pack([cp.asarray(a) for a in arrays], sym, buffer, grid=grid)
    assert_same(cp.asnumpy(buffer), expected)
    outs = [numpy.zeros(a.shape, a.dtype) for a in arrays]
    ops.unpack(expected, outs, sym)
    gpu_outs = [cp.full(a.shape, numpy.nan, a.dtype) for a in arrays]
    ops.unpack(cp.asarray(expected), gpu_outs, sym, grid=grid)
    for g, o in zip(gpu_outs, outs):
        assert_same(cp.asnumpy(g), o)
