"""The NCCL adapter and CuPy arrays through the communicators, on one GPU.

The primitives' tests run on two implementations of the NCCL interface:
the NCCL adapter (``NcclBackend``, marked ``gpu``: tests/conftest.py skips
it without a CUDA device, and the fixture skips it, naming why, where CuPy
has no NCCL) and its MPI emulation (CPU, every run). One rank: NCCL refuses
two ranks on one GPU, so the sums are over one rank and the test is that
each primitive moves the right bytes, on the right stream, against NumPy.
The other tests are ``gpu`` only. Written on a machine without a GPU: the
``gpu`` ones have not run yet (``scripts/gpu_check.sh`` runs them).
"""
import numpy
import pytest

DTYPES = [numpy.float16, numpy.float32, numpy.float64]


@pytest.fixture
def cp():  # pragma: no cover - needs a GPU
    import cupy
    return cupy


def nccl_adapter():  # pragma: no cover - needs a GPU
    """A fresh NcclBackend of this one rank, or a skip naming what NCCL
    lacks here."""
    from mpi4py import MPI

    from chainerkfac.communicators import nccl_backend
    problem = nccl_backend.nccl_problem()
    if problem is not None:
        pytest.skip('NCCL adapter: ' + problem)
    return nccl_backend.NcclBackend(MPI.COMM_WORLD, 0)


@pytest.fixture
def gpu_nccl():  # pragma: no cover - needs a GPU
    return nccl_adapter()


@pytest.fixture(params=[pytest.param('nccl', marks=pytest.mark.gpu),
                        'mpi_emulation'])
def nccl(request):
    """Either implementation of the NCCL interface, on this one rank."""
    if request.param == 'nccl':  # pragma: no cover - needs a GPU
        return nccl_adapter()
    from mpi4py import MPI

    from chainerkfac.communicators.nccl_emulation import MpiNcclEmulation
    return MpiNcclEmulation(MPI.COMM_WORLD)


@pytest.mark.parametrize('dtype', DTYPES)
def test_each_primitive_against_numpy(nccl, dtype):
    rng = numpy.random.RandomState(0)
    host = rng.randn(12).astype(dtype)
    send = nccl.asarray(host.copy())
    stream = nccl.current_stream()

    def check(device, want):
        numpy.testing.assert_array_equal(nccl.to_host(device, stream), want)

    recv = nccl.zeros(12, dtype)
    nccl.all_reduce(send, recv, 'sum', stream)
    check(recv, host)
    if dtype != numpy.float16:
        nccl.all_reduce(send, recv, 'max', stream)
        check(recv, host)
    inplace = send.copy()
    nccl.all_reduce(inplace, inplace, 'sum', stream)
    check(inplace, host)
    recv[...] = numpy.nan
    nccl.reduce(send, recv, 0, 'sum', stream)
    check(recv, host)
    buf = send.copy()
    nccl.bcast(buf, 0, stream)
    check(buf, host)
    recv[...] = numpy.nan
    nccl.reduce_scatter(send, recv, 'sum', stream)
    check(recv, host)
    recv[...] = numpy.nan
    nccl.all_gather(send, recv, stream)
    check(recv, host)
    recv[...] = numpy.nan
    with nccl.group():     # the grouped mapping: one reduce per segment
        nccl.reduce(send[:5], recv[:5], 0, 'sum', stream)
        nccl.reduce(send[5:], recv[5:], 0, 'sum', stream)
    check(recv, host)
    # the root always receives (the package never passes None there)
    with pytest.raises(ValueError, match='reduce needs a recv buffer on its '
                                         'root'):
        nccl.reduce(send, None, 0, 'sum', stream)
    with pytest.raises(ValueError, match='recv buffer of 12'):
        nccl.all_gather(send, recv[:6], stream)


def test_side_stream_ordered_by_events(nccl):
    caller = nccl.current_stream()
    side = nccl.new_stream()
    assert side is not caller
    n = 1 << 22
    big = nccl.asarray(numpy.arange(n, dtype=numpy.float32))
    out = nccl.empty(n, numpy.float32)

    def double():
        big[...] *= 2
    nccl.launch(caller, double)           # queued before the collective
    side.wait_event(caller.record())
    nccl.all_reduce(big, out, 'sum', side)
    caller.wait_event(side.record())
    numpy.testing.assert_array_equal(
        nccl.to_host(out[-3:], caller),
        2 * numpy.arange(n - 3, n, dtype=numpy.float32))


@pytest.mark.gpu
def test_abort_ends_the_communicator_and_a_new_one_works(
        cp):  # pragma: no cover - needs a GPU
    """``NcclBackend.abort`` (what the job's abort path calls) returns
    without waiting for other ranks, and the GPU takes a new communicator
    afterwards."""
    first = nccl_adapter()
    assert first._comm.comm != 0
    first.abort()
    assert first._comm.comm == 0          # ncclCommAbort ran; no destroy left
    second = nccl_adapter()
    x = second.asarray(numpy.arange(4, dtype=numpy.float32))
    stream = second.current_stream()
    second.all_reduce(x, x, 'sum', stream)
    numpy.testing.assert_array_equal(second.to_host(x, stream),
                                     numpy.arange(4))


def per_rank(cp, rng):  # pragma: no cover - needs a GPU
    a = rng.randn(5, 5).astype(numpy.float32)
    arrays = [((a + a.T) / 2, True), (rng.randn(7).astype(numpy.float32),
                                      False)]
    return [[(cp.asarray(x), sym) for x, sym in arrays]], arrays


@pytest.mark.gpu
@pytest.mark.parametrize('mapping', ['grouped', 'padded'])
@pytest.mark.parametrize('comm_dtype', ['float32', 'float16'])
def test_pure_nccl_on_one_gpu(cp, gpu_nccl, mapping,
                              comm_dtype):  # pragma: no cover - needs a GPU
    from mpi4py import MPI

    from chainerkfac.communicators import MpiCommunicator
    from chainerkfac.communicators import PureNcclCommunicator
    comm = PureNcclCommunicator(MPI.COMM_WORLD, gpu_nccl, mapping)
    reference = MpiCommunicator(MPI.COMM_WORLD, cuda_aware=False)
    rng = numpy.random.RandomState(1)
    device, host = per_rank(cp, rng)
    rtol = 0 if comm_dtype == 'float32' else 2e-3

    def same(got, want):
        for g, w in zip(got, want):
            assert isinstance(g, cp.ndarray)
            numpy.testing.assert_allclose(cp.asnumpy(g), w, rtol=rtol,
                                          atol=rtol * abs(w).max())
    want = reference.reduce_scatter_v([host], comm_dtype)
    same(comm.reduce_scatter_v(device, comm_dtype), want)
    pending = comm.start_reduce_scatter_v(device, comm_dtype,
                                          purpose='rs_forward')
    same(pending.wait(), want)
    own = [a for a, _ in device[0]] + [numpy.arange(3, dtype=numpy.float32)]
    got = comm.all_gather_v([own], comm_dtype)
    assert isinstance(got[0][-1], numpy.ndarray)      # a host array back
    same(got[0][:-1], [a for a, _ in host])
    numpy.testing.assert_allclose(got[0][-1], numpy.arange(3), rtol=rtol)
    same(comm.allreduce_mean([a for a, _ in device[0]], comm_dtype),
         [a for a, _ in host])


@pytest.mark.gpu
def test_mpi_stages_cupy_through_pinned_memory(cp):  # pragma: no cover
    from mpi4py import MPI

    from chainerkfac.communicators import MpiCommunicator
    comm = MpiCommunicator(MPI.COMM_WORLD, cuda_aware=False)
    rng = numpy.random.RandomState(2)
    device, host = per_rank(cp, rng)
    for comm_dtype in ('float32', 'float16'):
        got = comm.reduce_scatter_v(device, comm_dtype)
        for g, (w, _) in zip(got, host):
            assert isinstance(g, cp.ndarray)
            numpy.testing.assert_allclose(cp.asnumpy(g), w, rtol=2e-3,
                                          atol=2e-3 * abs(w).max())
    kinds = set(key[2] for key in comm._buffers)
    assert 'pinned' in kinds and ('device', 0) in kinds, kinds
    pinned = [b for k, b in comm._buffers.items() if k[2] == 'pinned']
    for buf in pinned:
        attributes = cp.cuda.runtime.pointerGetAttributes(buf.ctypes.data)
        assert attributes.type == 1       # cudaMemoryTypeHost: pinned
    before = dict(comm._buffers)
    assert len(comm.pending_copies) == 1     # the last unpack's copy
    waits = comm.pending_copies.waits
    comm.reduce_scatter_v(device, 'float32')
    assert all(comm._buffers[k] is v for k, v in before.items())
    assert comm.pending_copies.waits == waits + 1
    # all_gather_v and allreduce_mean, a host array packed in place first
    own = [numpy.arange(3, dtype=numpy.float32)] + [a for a, _ in device[0]]
    for _ in range(2):
        got = comm.all_gather_v([own], 'float32')[0]
        assert isinstance(got[0], numpy.ndarray)
        numpy.testing.assert_array_equal(got[0], own[0])
        for g, (w, _) in zip(got[1:], host):
            numpy.testing.assert_array_equal(cp.asnumpy(g), w)
        got = comm.allreduce_mean(own)
        for g, w in zip(got, [own[0]] + [w for w, _ in host]):
            numpy.testing.assert_array_equal(cp.asnumpy(g), w)
    assert comm.pending_copies.waits == waits + 5


@pytest.mark.gpu
def test_cuda_aware_mpi_takes_device_buffers(cp):  # pragma: no cover
    from mpi4py import MPI

    from chainerkfac.communicators import mpi_communicator
    if not mpi_communicator.mpi_cuda_support():
        pytest.skip('this MPI is not CUDA-aware (MPIX_Query_cuda_support '
                    'is 0)')
    comm = mpi_communicator.MpiCommunicator(MPI.COMM_WORLD)
    rng = numpy.random.RandomState(3)
    device, host = per_rank(cp, rng)
    got = comm.reduce_scatter_v(device, 'float32')
    for g, (w, _) in zip(got, host):
        numpy.testing.assert_array_equal(cp.asnumpy(g), w)
    assert any(key[2] == ('device', 0) and key[0] == 'rs_send'
               for key in comm._buffers)


@pytest.fixture
def managed_memory(cp):  # pragma: no cover - needs a GPU
    """CuPy allocates managed memory for the test: pointers the host can
    read and write too, which lets a non-CUDA-aware MPI (the MPICH wheel)
    serve the CUDA-aware code path on one rank."""
    previous = cp.cuda.get_allocator()
    pool = cp.cuda.MemoryPool(cp.cuda.malloc_managed)
    cp.cuda.set_allocator(pool.malloc)
    try:
        yield pool
    finally:
        cp.cuda.Device().synchronize()
        cp.cuda.set_allocator(previous)
        pool.free_all_blocks()


@pytest.mark.gpu
@pytest.mark.parametrize('comm_dtype', ['float32', 'float16'])
def test_cuda_aware_paths_on_managed_memory(
        cp, managed_memory, comm_dtype):  # pragma: no cover - needs a GPU
    """The 'device' staging mode (what a CUDA-aware MPI gets) on one rank,
    whatever this MPI is: device buffers handed to MPI, packing synchronised
    before MPI reads them, _unpack_device with host arrays among the
    results, fp16 heads written and read on the device (all_gather_v),
    fp16 sums staged through pinned memory, against the host-staged
    communicator."""
    from mpi4py import MPI

    from chainerkfac.communicators import MpiCommunicator
    comm = MpiCommunicator(MPI.COMM_WORLD, cuda_aware=True)
    reference = MpiCommunicator(MPI.COMM_WORLD, cuda_aware=False)
    rng = numpy.random.RandomState(4)
    device, host = per_rank(cp, rng)
    rtol = 0 if comm_dtype == 'float32' else 2e-3

    def same(got, want, where):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert type(g) is type(w), where     # host stays host
            numpy.testing.assert_allclose(cp.asnumpy(g), cp.asnumpy(w),
                                          rtol=rtol, atol=rtol * float(
                                              abs(cp.asnumpy(w)).max()),
                                          err_msg=where)
    for _ in range(2):                            # kept buffers, reused
        same(comm.reduce_scatter_v(device, comm_dtype),
             reference.reduce_scatter_v(device, comm_dtype), 'rs')
        own = [numpy.arange(3, dtype=numpy.float32)] + [
            a for a, _ in device[0]]
        got = comm.all_gather_v([own], comm_dtype)[0]
        assert isinstance(got[0], numpy.ndarray)
        same(got, reference.all_gather_v([own], comm_dtype)[0], 'ag')
        same(comm.allreduce_mean(own, comm_dtype),
             reference.allreduce_mean(own, comm_dtype), 'allreduce')
    kinds = {key[0]: key[2] for key in comm._buffers}
    assert kinds['ag_send'] == ('device', cp.cuda.Device().id), kinds
    if comm_dtype == 'float32':
        assert kinds['rs_send'] == ('device', cp.cuda.Device().id), kinds
    else:                                   # fp16 sums: the op is Python's
        assert kinds['rs_send'] == 'pinned', kinds
