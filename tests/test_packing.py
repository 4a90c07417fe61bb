import numpy
import pytest

from chainerkfac.communicators import packing
from chainerkfac.communicators.packing import PackingPlan


def symmetric(rng, d, dtype):
    m = rng.randn(d, d)
    return (m + m.T).astype(dtype)


@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float16])
@pytest.mark.parametrize('d', [1, 2, 5, 6])
def test_round_trip_of_triangles_and_plain_arrays(rng, d, dtype):
    arrays = [symmetric(rng, d, numpy.float32), rng.randn(3, d).astype('f'),
              rng.randn(4).astype('f')]
    plan = PackingPlan([(a.shape, i == 0) for i, a in enumerate(arrays)])
    assert plan.sizes == [d * (d + 1) // 2, 3 * d, 4]
    assert plan.offsets == [0, d * (d + 1) // 2, d * (d + 1) // 2 + 3 * d]
    buffer = numpy.zeros(plan.size, dtype)
    plan.pack(arrays, buffer)
    out = [numpy.full(a.shape, numpy.nan, numpy.float32) for a in arrays]
    plan.unpack(buffer, out)
    tol = 0 if dtype == numpy.float32 else 2e-3
    for a, b in zip(arrays, out):
        assert b.shape == a.shape and b.dtype == numpy.float32
        numpy.testing.assert_allclose(b, a, rtol=tol, atol=tol)
    numpy.testing.assert_array_equal(out[0], out[0].T)


def test_triangle_is_the_upper_one_row_major():
    m = numpy.arange(9, dtype='f').reshape(3, 3)
    m = numpy.triu(m) + numpy.triu(m, 1).T
    plan = PackingPlan([((3, 3), True)])
    buffer = numpy.zeros(6, 'f')
    plan.pack([m], buffer)
    numpy.testing.assert_array_equal(buffer, [0, 1, 2, 4, 5, 8])


def test_scales_and_divisors(rng):
    a = rng.randn(2, 3).astype('f')
    plan = PackingPlan([(a.shape, False)])
    buffer = numpy.zeros(plan.size, 'f')
    plan.pack([a], buffer, scales=numpy.array([4.0], 'f'))
    numpy.testing.assert_allclose(buffer, 4 * a.ravel())
    out = [numpy.empty_like(a)]
    plan.unpack(buffer, out, numpy.array([4.0], 'f'))
    numpy.testing.assert_allclose(out[0], a)


def test_sub_range_of_a_plan(rng):
    arrays = [symmetric(rng, 3, 'f'), rng.randn(5).astype('f'),
              symmetric(rng, 2, 'f')]
    plan = PackingPlan([(a.shape, a.ndim == 2) for a in arrays])
    assert plan.bounds(0, 3) == (0, plan.size)
    first, last = plan.bounds(1, 3)
    assert (first, last) == (6, plan.size)
    buffer = numpy.zeros(plan.size, 'f')
    plan.pack(arrays[1:], buffer[first:last], start=1, stop=3)
    assert not buffer[:first].any()
    out = [numpy.empty(5, 'f'), numpy.empty((2, 2), 'f')]
    plan.unpack(buffer[first:last], out, start=1, stop=3)
    numpy.testing.assert_array_equal(out[1], arrays[2])
    with pytest.raises(ValueError, match='shape'):
        plan.pack(arrays[:2], buffer[:11], start=1, stop=3)


def test_plan_holds_no_index_arrays():
    """A plan for ResNet-50's largest factor (4608 wide) is a few numbers:
    the kernels compute triangle positions (the old plans kept
    triu_indices, 170 MB for this one factor)."""
    plan = PackingPlan([((4608, 4608), True)])
    assert not [v for v in vars(plan).values()
                if isinstance(v, (numpy.ndarray, dict))]


def test_plan_checks_shapes():
    with pytest.raises(ValueError, match='square'):
        PackingPlan([((2, 3), True)])
    plan = PackingPlan([((2, 2), False)])
    with pytest.raises(ValueError, match='shape'):
        plan.pack([numpy.zeros((3,))], numpy.zeros(4))


def test_fp16_exponents_keep_sums_in_range(rng):
    values = [rng.randn(50) * s for s in (1e-6, 1.0, 1e5)]
    ks = packing.fp16_exponents(packing.max_abs(values), n_terms=8)
    for v, k in zip(values, ks):
        scaled = abs(v).max() * 2.0 ** k * 8
        assert packing.FP16_TARGET / 2 < scaled <= packing.FP16_TARGET
        # round trip keeps ~11 bits
        back = (v * 2.0 ** k).astype(numpy.float16).astype('f8') / 2.0 ** k
        numpy.testing.assert_allclose(back, v, rtol=1e-3,
                                      atol=abs(v).max() * 1e-3)
    assert list(packing.fp16_exponents([0.0, numpy.inf])) == [0, 0]
