"""'pure_nccl' in one process: the mappings, the logic above the NCCL
interface (through a recording fake of it), the MPI emulation's stream
semantics, and the clear errors of create_communicator('pure_nccl')."""
import contextlib
import functools
import re
import sys
import types

import numpy
import pytest

import chainerkfac
from chainerkfac.communicators import CommunicatorUnavailable
from chainerkfac.communicators import mpi_communicator
from chainerkfac.communicators import nccl_backend
from chainerkfac.communicators import nccl_interface
from chainerkfac.communicators import nccl_mapping
from chainerkfac.communicators import PureNcclCommunicator
from chainerkfac.communicators.base import ring_all_gather
from chainerkfac.communicators.base import ring_allreduce
from chainerkfac.communicators.base import ring_reduce_scatter
from chainerkfac.communicators.nccl_emulation import MpiNcclEmulation
from chainerkfac.communicators.nccl_mapping import SegmentLayout
from cuda_helpers import stand_in_libraries  # NOQA: I100


# --------------------------------------------------------------------------
# mappings


def test_grouped_layout_is_back_to_back():
    layout = SegmentLayout([3, 0, 5], 'grouped')
    assert layout.mapping == 'grouped'
    assert layout.offsets == [0, 3, 3] and layout.total == 8
    assert [layout.gap(q) for q in range(3)] == [0, 0, 0]
    buf = numpy.arange(8)
    assert list(layout.segment(buf, 2)) == [3, 4, 5, 6, 7]
    assert layout.moved_counts() == [3, 0, 5]


def test_padded_layout_pads_to_the_largest():
    layout = SegmentLayout([3, 0, 5], 'padded')
    assert layout.width == 5 and layout.offsets == [0, 5, 10]
    assert layout.total == 15
    assert [layout.gap(q) for q in range(3)] == [2, 5, 0]
    buf = numpy.arange(15)
    assert list(layout.segment(buf, 0)) == [0, 1, 2]
    assert list(layout.slot(buf, 0)) == [0, 1, 2, 3, 4]
    assert layout.reduce_scatter_traffic(1) == (10, 10)
    assert layout.all_gather_traffic(1) == (10, 10)


def test_auto_takes_padded_only_for_equal_counts():
    assert nccl_mapping.choose_mapping([4, 4, 4]) == 'padded'
    assert nccl_mapping.choose_mapping([4, 5, 4]) == 'grouped'
    assert nccl_mapping.choose_mapping([4, 5], 'padded') == 'padded'
    with pytest.raises(ValueError, match='mapping must be one of'):
        nccl_mapping.choose_mapping([1], 'ring')
    with pytest.raises(ValueError, match='negative'):
        SegmentLayout([1, -1])


@pytest.mark.parametrize('seed', range(5))
def test_grouped_never_moves_more_than_padded(seed):
    rng = numpy.random.RandomState(seed)
    p = rng.randint(2, 9)
    counts = list(rng.randint(0, 1000, p))
    grouped, padded = SegmentLayout(counts, 'grouped'), SegmentLayout(
        counts, 'padded')
    for traffic in ('reduce_scatter_traffic', 'all_gather_traffic'):
        g = [getattr(grouped, traffic)(r) for r in range(p)]
        d = [getattr(padded, traffic)(r) for r in range(p)]
        assert sum(s for s, _ in g) <= sum(s for s, _ in d)
        # grouped: NCCL's chained reduce/bcast move the ring V volumes
        ring = ring_reduce_scatter if traffic[0] == 'r' else ring_all_gather
        assert g == [ring(counts, r) for r in range(p)]
        assert all(s == (p - 1) * max(counts) for s, _ in d)


def test_planned_nccl_traffic_of_a_model():
    from chainerkfac.optimizers import traffic
    from chainerkfac.optimizers.traffic import planned_step_traffic
    from models import resnet
    numpy.random.seed(0)
    model = resnet.ResNetCIFAR(8, in_channels=1)
    for size in (2, 3, 5):
        for dtype in ('float32', 'float16'):
            plan = planned_step_traffic(model, size, dtype)
            grouped = traffic.planned_nccl_traffic(model, size, dtype,
                                                        'grouped')
            padded = traffic.planned_nccl_traffic(model, size, dtype,
                                                       'padded')
            assert grouped['ours'] == plan['ours']
            assert grouped['pipeline'] == plan['pipeline']
            assert all(p >= g for p, g in zip(padded['ours'], plan['ours']))
            assert sum(padded['ours']) > sum(plan['ours'])


# --------------------------------------------------------------------------
# a recording fake of the NCCL interface: p identical ranks in one process


class FakeMpiComm(object):
    """What ChainerMN's communicator base asks of an mpi4py communicator,
    for rank ``rank`` of ``size`` in one process."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def gather(self, obj, root=0):
        return [obj] * self.size if self.rank == root else None

    def scatter(self, objs, root=0):
        if objs is not None:
            return objs[self.rank]
        return (self.rank, self.rank, self.size, 0, 1)

    def allgather(self, obj):
        return [obj] * self.size

    def bcast(self, obj, root=0):
        return obj


class FakeEvent(object):
    def __init__(self, log, stream, number):
        self.log, self.stream, self.number = log, stream, number

    def synchronize(self):
        self.log.append(('event_sync', self.number))


class FakeStream(object):
    def __init__(self, log, name):
        self.log, self.name, self.events = log, name, 0

    def record(self):
        self.events += 1
        number = '{}#{}'.format(self.name, self.events)
        self.log.append(('record', self.name, number))
        return FakeEvent(self.log, self, number)

    def wait_event(self, event):
        self.log.append(('wait', self.name, event.number))

    def synchronize(self):
        self.log.append(('sync', self.name))


class RecordingNccl(nccl_interface.NcclInterface):
    """Every rank holds this rank's values: a sum is ``size`` times the
    input (exact for a power-of-two size), a max the input; a segment
    broadcast or gathered from rank q is filled with ``q + 1``. Logs every
    call with its stream and where its buffers lie."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size
        self.log = []
        self.null = FakeStream(self.log, 'null')
        self._group = 0

    def empty(self, n, dtype):
        return numpy.full(n, numpy.nan, dtype)

    def zeros(self, n, dtype):
        return numpy.zeros(n, dtype)

    def asarray(self, array):
        return numpy.asarray(array)

    def to_host(self, array, stream):
        self.log.append(('to_host', stream.name))
        return numpy.array(array)

    def current_stream(self):
        return self.null

    def new_stream(self):
        return FakeStream(self.log, 'side')

    def launch(self, stream, function):
        self.log.append(('launch', stream.name))
        return function()

    @staticmethod
    def _where(view):
        base = view if view.base is None else view.base
        return (view.ctypes.data - base.ctypes.data) // view.itemsize

    def _record(self, kind, stream, *details):
        self.log.append((kind, stream.name, self._group > 0) + details)

    def all_reduce(self, send, recv, op, stream):
        nccl_interface.check_call('all_reduce', self.size, self.rank,
                                  send=send, recv=recv, op=op)
        self._record('all_reduce', stream, op, send.size)
        recv[...] = send * (self.size if op == 'sum' else 1)

    def reduce(self, send, recv, root, op, stream):
        nccl_interface.check_call('reduce', self.size, self.rank, send=send,
                                  recv=recv, op=op, root=root)
        self._record('reduce', stream, root, self._where(send), send.size,
                     recv is not None)
        if root == self.rank:
            recv[...] = send * self.size

    def bcast(self, buffer, root, stream):
        nccl_interface.check_call('bcast', self.size, self.rank,
                                  buffer=buffer, root=root)
        self._record('bcast', stream, root, self._where(buffer), buffer.size)
        if root != self.rank:
            buffer[...] = root + 1

    def reduce_scatter(self, send, recv, op, stream):
        nccl_interface.check_call('reduce_scatter', self.size, self.rank,
                                  send=send, recv=recv, op=op)
        self._record('reduce_scatter', stream, send.size, recv.size)
        n = recv.size
        self.sent = send.copy()
        recv[...] = send[self.rank * n:(self.rank + 1) * n] * self.size

    def all_gather(self, send, recv, stream):
        nccl_interface.check_call('all_gather', self.size, self.rank,
                                  send=send, recv=recv)
        self._record('all_gather', stream, self._where(send), send.size,
                     recv.size)
        n = send.size
        mine = send.copy()
        for q in range(self.size):
            recv[q * n:(q + 1) * n] = q + 1
        recv[self.rank * n:(self.rank + 1) * n] = mine

    @contextlib.contextmanager
    def group(self):
        self.log.append(('group_start',))
        self._group += 1
        yield
        self._group -= 1
        self.log.append(('group_end',))


def fake_comm(rank=1, size=4, mapping='grouped'):
    backend = RecordingNccl(rank, size)
    return PureNcclCommunicator(FakeMpiComm(rank, size), backend,
                                mapping), backend


def segments(rng, size, empty=(2,)):
    """Per rank: a symmetric matrix and a vector; ranks in ``empty`` own
    nothing."""
    out = []
    for q in range(size):
        if q in empty:
            out.append([])
            continue
        a = rng.randn(q + 2, q + 2).astype(numpy.float32)
        out.append([((a + a.T) / 2, True),
                    (rng.randn(q + 3).astype(numpy.float32), False)])
    return out


def packed_count(seg):
    return sum(a.shape[0] * (a.shape[0] + 1) // 2 if sym else a.size
               for a, sym in seg)


@pytest.mark.parametrize('comm_dtype', ['float32', 'float16'])
def test_grouped_reduce_scatter_calls_and_results(rng, comm_dtype):
    comm, nccl = fake_comm(rank=1, size=4, mapping='grouped')
    per_rank = segments(rng, 4)
    got = comm.reduce_scatter_v(per_rank, comm_dtype)
    tol = 0 if comm_dtype == 'float32' else 2e-3
    for g, (want, _) in zip(got, per_rank[1]):
        numpy.testing.assert_allclose(g, want, rtol=tol, atol=tol)
    counts = [packed_count(s) for s in per_rank]
    reduces = [e for e in nccl.log if e[0] == 'reduce']
    # one reduce per non-empty owner, in one group, at the V offsets, the
    # recv buffer only at the root
    assert [(e[3], e[4], e[5], e[6]) for e in reduces] == [
        (0, 0, counts[0], False), (1, counts[0], counts[1], True),
        (3, counts[0] + counts[1], counts[3], False)]
    assert all(e[1] == 'null' and e[2] for e in reduces)
    assert nccl.log.count(('group_start',)) == 1
    itemsize = numpy.dtype(comm_dtype).itemsize
    data = ring_reduce_scatter(counts, 1)
    scales = 0
    if comm_dtype == 'float16':   # one float64 max per array, all-reduced
        scales = ring_allreduce(6, 4) * 8
        assert ('all_reduce', 'null', False, 'max', 6) in nccl.log
    assert comm.bytes_sent == data[0] * itemsize + scales
    assert comm.bytes_received == data[1] * itemsize + scales


def test_padded_reduce_scatter_pads_with_zeros(rng):
    comm, nccl = fake_comm(rank=3, size=4, mapping='padded')
    per_rank = segments(rng, 4)
    got = comm.reduce_scatter_v(per_rank)
    for g, (want, _) in zip(got, per_rank[3]):
        numpy.testing.assert_array_equal(g, want)
    counts = [packed_count(s) for s in per_rank]
    width = max(counts)
    calls = [e for e in nccl.log if e[0] == 'reduce_scatter']
    assert calls == [('reduce_scatter', 'null', False, 4 * width, width)]
    sent = nccl.sent.reshape(4, width)
    for q in range(4):
        assert (sent[q, counts[q]:] == 0).all()       # the padding
        assert not numpy.isnan(sent[q]).any()
    assert comm.bytes_sent == 3 * width * 4
    assert comm.bytes_sent > ring_reduce_scatter(counts, 3)[0] * 4


@pytest.mark.parametrize('mapping', ['grouped', 'padded'])
def test_side_stream_is_ordered_by_events(rng, mapping):
    comm, nccl = fake_comm(rank=0, size=2, mapping=mapping)
    per_rank = segments(rng, 2, empty=())
    pending = comm.start_reduce_scatter_v(per_rank, purpose='rs_forward')
    log = list(nccl.log)
    collective = [i for i, e in enumerate(log) if e[0] in (
        'reduce', 'reduce_scatter')]
    assert all(log[i][1] == 'side' for i in collective)
    pack = log.index(('launch', 'null'))
    wait = log.index(('wait', 'side', 'null#1'))
    record = log.index(('record', 'null', 'null#1'))
    assert pack < record < wait < collective[0]
    assert log[-1] == ('record', 'side', 'side#1')
    got = pending.wait()
    after = nccl.log[len(log):]
    assert after[0] == ('wait', 'null', 'side#1')      # then unpack
    assert after[1] == ('launch', 'null')
    for g, (want, _) in zip(got, per_rank[0]):
        numpy.testing.assert_array_equal(g, want)
    # a collective on the caller's stream waits for the side stream first
    nccl.log[:] = []
    pending = comm.start_reduce_scatter_v(per_rank, purpose='rs_forward')
    mark = len(nccl.log)
    comm.allreduce_mean([numpy.ones(3, numpy.float32)])
    assert nccl.log[mark] == ('wait', 'null', 'side#2')
    pending.wait()
    assert not any(e[0] in ('sync', 'event_sync') for e in nccl.log)


@pytest.mark.parametrize('mapping', ['grouped', 'padded'])
@pytest.mark.parametrize('comm_dtype', ['float32', 'float16'])
def test_all_gather_calls_heads_and_padding(rng, mapping, comm_dtype):
    size, rank = 4, 2
    comm, nccl = fake_comm(rank=rank, size=size, mapping=mapping)
    shapes = [[(3, 2), (4,)], [], [(5,)], [(2, 2)]]
    own = [rng.randn(*s).astype(numpy.float32) for s in shapes[rank]]
    per_rank = [own if q == rank else
                [numpy.empty(s, numpy.float32) for s in shapes[q]]
                for q in range(size)]
    got = comm.all_gather_v(per_rank, comm_dtype)
    fp16 = comm_dtype == 'float16'
    for q in range(size):
        assert [g.shape for g in got[q]] == shapes[q]
        if q == rank:
            for g, w in zip(got[q], own):
                numpy.testing.assert_allclose(g, w, rtol=1e-3 if fp16 else 0)
        else:   # the fake delivers q + 1 everywhere in q's segment, head
            # included: an fp16 exponent of q + 1 divides by 2 ** (q + 1)
            want = (q + 1) / 2.0 ** (q + 1) if fp16 else q + 1
            for g in got[q]:
                numpy.testing.assert_array_equal(g, numpy.float32(want))
    heads = [len(s) if fp16 else 0 for s in shapes]
    counts = [h + sum(int(numpy.prod(s)) for s in seg)
              for h, seg in zip(heads, shapes)]
    layout = SegmentLayout(counts, mapping)
    calls = [e for e in nccl.log if e[0] in ('bcast', 'all_gather')]
    if mapping == 'grouped':
        assert calls == [('bcast', 'null', True, q, layout.offsets[q],
                          counts[q]) for q in range(size) if counts[q]]
    else:
        assert calls == [('all_gather', 'null', False,
                          layout.offsets[rank], layout.width, layout.total)]
    itemsize = 2 if fp16 else 4
    assert comm.bytes_sent == layout.all_gather_traffic(rank)[0] * itemsize
    # one pack and one unpack launch (fp16: + maxima and divisors)
    launches = nccl.log.count(('launch', 'null'))
    assert launches == (4 if fp16 else 2)


def test_allreduce_mean_and_empty_collectives(rng):
    comm, nccl = fake_comm(rank=0, size=2)
    a = rng.randn(3, 2).astype(numpy.float32)
    (mean,) = comm.allreduce_mean([a])
    numpy.testing.assert_array_equal(mean, a)
    (half,) = comm.allreduce_mean([a], 'float16')
    numpy.testing.assert_allclose(half, a, rtol=1e-3)
    assert comm.allreduce_mean([]) == []
    assert comm.reduce_scatter_v([[], []]) == []
    assert comm.all_gather_v([[], []]) == [[], []]
    with pytest.raises(ValueError, match='one list of arrays per rank'):
        comm.reduce_scatter_v([[]])
    with pytest.raises(ValueError, match='one list of arrays per rank'):
        comm.all_gather_v([[]])


def test_communicator_arguments():
    with pytest.raises(ValueError, match='mapping'):
        fake_comm(mapping='tree')
    with pytest.raises(ValueError, match='nccl_backend must be one of'):
        PureNcclCommunicator(FakeMpiComm(0, 2), 'gloo')
    with pytest.raises(ValueError, match='rank 0 of 3, MPI says rank 0 of 2'):
        PureNcclCommunicator(FakeMpiComm(0, 2), RecordingNccl(0, 3))


def test_interface_checks_arguments():
    check = nccl_interface.check_call
    f32 = numpy.zeros(6, numpy.float32)
    with pytest.raises(ValueError, match='op must be one of'):
        check('all_reduce', 2, 0, send=f32, recv=f32, op='prod')
    with pytest.raises(ValueError, match='root 2 is not a rank'):
        check('reduce', 2, 0, send=f32, recv=f32, op='sum', root=2)
    with pytest.raises(ValueError, match='not 2 ranks x 4'):
        check('reduce_scatter', 2, 0, send=f32, recv=f32[:4], op='sum')
    with pytest.raises(ValueError, match='recv buffer of 12'):
        check('all_gather', 2, 0, send=f32, recv=f32)
    with pytest.raises(TypeError, match='recv has dtype float64'):
        check('all_reduce', 2, 0, send=f32, recv=f32.astype(float), op='sum')
    with pytest.raises(TypeError, match='int32'):
        check('bcast', 2, 0, buffer=f32.astype(numpy.int32), root=0)
    with pytest.raises(ValueError, match='1-D contiguous'):
        check('bcast', 2, 0, buffer=f32.reshape(2, 3), root=0)
    check('reduce', 2, 1, send=f32, recv=None, op='sum', root=0)
    with pytest.raises(ValueError, match=r'reduce needs a recv buffer on its '
                                         r'root \(rank 1\)'):
        check('reduce', 2, 1, send=f32, recv=None, op='sum', root=1)
    with pytest.raises(ValueError, match='all_reduce needs a recv buffer$'):
        check('all_reduce', 2, 0, send=f32, recv=None, op='sum')


# --------------------------------------------------------------------------
# the MPI emulation in one process


def test_emulated_results_are_nan_until_their_stream_completes():
    from mpi4py import MPI
    nccl = MpiNcclEmulation(MPI.COMM_WORLD)
    side = nccl.new_stream()
    send = numpy.arange(4, dtype=numpy.float32)
    recv = numpy.zeros(4, numpy.float32)
    nccl.all_reduce(send, recv, 'sum', side)
    assert numpy.isnan(recv).all()            # not ordered after the call
    event = side.record()
    assert not event.query()
    nccl.launch(nccl.current_stream(), lambda: None)
    assert numpy.isnan(recv).all()            # another stream: still not
    nccl.current_stream().wait_event(event)
    numpy.testing.assert_array_equal(recv, send)
    assert event.query()
    # in place, in a group of reduces (one fused reduce-scatter)
    buf = numpy.arange(6, dtype=numpy.float16)
    out = numpy.empty(6, numpy.float16)
    with nccl.group():
        nccl.reduce(buf, out, 0, 'sum', side)
    assert numpy.isnan(out).all()
    side.synchronize()
    numpy.testing.assert_array_equal(out, buf)
    nccl.all_gather(buf, buf, nccl.current_stream())     # in place
    nccl.bcast(buf, 0, nccl.current_stream())
    host = nccl.to_host(buf, nccl.current_stream())
    numpy.testing.assert_array_equal(host, numpy.arange(6))
    nccl.reduce_scatter(send, recv, 'max', side)
    side.synchronize()
    numpy.testing.assert_array_equal(recv, send)
    assert nccl.started == {'Iallreduce': 1, 'Ireduce_scatter': 1,
                            'Ireduce_scatter (fused reduces)': 1,
                            'Iallgather': 1, 'Ibcast': 1}
    with pytest.raises(ValueError, match='max of float16'):
        nccl.all_reduce(buf, buf, 'max', side)
    with pytest.raises(RuntimeError, match='in the group'):
        with nccl.group():
            nccl.reduce(buf, out, 0, 'sum', side)
            raise RuntimeError('in the group')
    with nccl.group():
        pass
    assert sum(nccl.started.values()) == 5     # the failed group: nothing


def test_emulated_communicator_in_one_process(rng):
    comm = chainerkfac.create_communicator(
        'pure_nccl', nccl_backend='mpi_emulation', mapping='padded')
    assert comm.size == 1 and isinstance(comm.backend, MpiNcclEmulation)
    a = rng.randn(4, 4).astype(numpy.float32)
    (got,) = comm.reduce_scatter_v([[(a, False)]], 'float16')
    numpy.testing.assert_allclose(got, a, rtol=1e-3, atol=1e-3)
    pending = comm.start_reduce_scatter_v([[(a, False)]])
    (got,) = pending.wait()
    numpy.testing.assert_array_equal(got, a)


# --------------------------------------------------------------------------
# create_communicator('pure_nccl') without CuPy, NCCL or a GPU


def stand_in_cupy(nccl_available=True, device=True, count=1,
                  bus='0000:01:00.0'):
    cupy = types.ModuleType('cupy')
    cupy.__version__ = '99.0'
    cuda = types.ModuleType('cupy.cuda')
    nccl = types.ModuleType('cupy.cuda.nccl')
    nccl.available = nccl_available

    def refuse(*args):
        raise AssertionError('NCCL was called')
    nccl.get_unique_id = refuse
    nccl.NcclCommunicator = refuse
    cuda.nccl = nccl
    cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: count)
    cuda.Device = lambda i: types.SimpleNamespace(pci_bus_id=bus, id=i)
    cupy.cuda = cuda
    cupy.is_available = lambda: device
    return {'cupy': cupy, 'cupy.cuda': cuda, 'cupy.cuda.nccl': nccl}


@pytest.mark.parametrize('modules,message', [
    ({'cupy': None}, re.escape("create_communicator('pure_nccl'): CuPy is "
                               "not installed (ModuleNotFoundError")),
    (stand_in_cupy(nccl_available=False),
     r"CuPy 99.0 cannot load NCCL \(needed for the 'pure_nccl' "
     r"communicator\): .*; install the nvidia-nccl-cu12 or -cu13 wheel"),
    (stand_in_cupy(device=False),
     'CuPy 99.0 finds no usable CUDA device'),
])
def test_pure_nccl_says_what_is_missing(monkeypatch, modules, message):
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    with pytest.raises(CommunicatorUnavailable, match=message) as info:
        chainerkfac.create_communicator('pure_nccl')
    assert '\n' not in str(info.value)
    assert str(info.value).startswith('chainerkfac: ')


def test_pure_nccl_checks_the_libraries_training_calls(monkeypatch):
    for name, module in stand_in_cupy().items():
        monkeypatch.setitem(sys.modules, name, module)
    stand_in_libraries(monkeypatch, broken=('nvrtc',))
    with pytest.raises(CommunicatorUnavailable, match=re.escape(
            "chainerkfac: create_communicator('pure_nccl'): CuPy 99.0 cannot "
            "load NVRTC (needed for chainerkfac's CUDA kernels): ImportError: "
            'libnvrtc.so.99')):
        chainerkfac.create_communicator('pure_nccl')
    stand_in_libraries(monkeypatch)
    assert nccl_backend.nccl_problem() is None


def test_pure_nccl_problem_here_is_one_line():
    problem = nccl_backend.nccl_problem()
    try:
        import cupy  # NOQA: F401
    except ImportError:
        assert problem.startswith('CuPy is not installed')
    else:  # pragma: no cover - CuPy legs
        assert problem is None or '\n' not in problem


def test_ranks_agree_on_a_problem():
    comm = FakeMpiComm(0, 3)
    comm.allgather = lambda obj: [None, 'CuPy is not installed (x)', None]
    with pytest.raises(CommunicatorUnavailable, match=r'\(rank 1\): CuPy'):
        nccl_backend.agree(comm, None, 'what')
    nccl_backend.agree(FakeMpiComm(0, 1), None, 'what')


def test_two_ranks_on_one_gpu_is_refused_before_nccl(monkeypatch):
    for name, module in stand_in_cupy(count=1).items():
        monkeypatch.setitem(sys.modules, name, module)
    from mpi4py import MPI
    host = MPI.Get_processor_name()
    comm = FakeMpiComm(1, 2)
    comm.allgather = lambda mine: [(host, 0, 0, '0000:01:00.0'), mine]
    with pytest.raises(CommunicatorUnavailable, match=re.escape(
            'ranks 0 and 1 (local ranks 0 and 1 on {}) would both use GPU 0 '
            '(PCI 0000:01:00.0)'.format(host))):
        nccl_backend.NcclBackend(comm, 1)


def test_one_gpu_per_rank_passes():
    placements = [('a', 0, 0, 'bus0'), ('a', 1, 1, 'bus1'),
                  ('b', 0, 0, 'bus0')]
    assert nccl_backend.shared_gpu_problem(placements) is None
    problem = nccl_backend.shared_gpu_problem(placements + [
        ('b', 1, 0, 'bus0')])
    assert problem.startswith('ranks 2 and 3 (local ranks 0 and 1 on b)')


def test_gpu_of_rank_takes_the_local_rank(monkeypatch):
    for name, module in stand_in_cupy(count=4).items():
        monkeypatch.setitem(sys.modules, name, module)
    comm = FakeMpiComm(0, 1)
    assert nccl_backend.gpu_of_rank(comm, 0) == 0
    comm = FakeMpiComm(1, 2)
    comm.allgather = lambda mine: [('n', 0, 0, 'b0'), mine]
    buses = iter(['b5'])
    sys.modules['cupy'].cuda.Device = lambda i: types.SimpleNamespace(
        pci_bus_id=next(buses))
    assert nccl_backend.gpu_of_rank(comm, 5) == 1     # 5 % 4


def test_create_communicator_options():
    with pytest.raises(TypeError, match="takes no option mapping"):
        chainerkfac.create_communicator('mpi', mapping='padded')
    with pytest.raises(TypeError, match="its options: mapping, nccl_backend"):
        chainerkfac.create_communicator('pure_nccl', cuda_aware=True)


# --------------------------------------------------------------------------
# 'mpi' with CuPy arrays: where the buffers live


def test_staging_mode():
    mode = mpi_communicator.staging_mode
    assert mode(False, True, False) == 'host'
    assert mode(False, False, True) == 'host'
    assert mode(True, False, False) == 'pinned'
    assert mode(True, True, False) == 'device'
    assert mode(True, True, True) == 'pinned'   # the fp16 op runs on the host


def test_mpi_cuda_support_query(monkeypatch):
    from mpi4py import MPI
    # the MPICH wheel answers through MPIX_Query_cuda_support: built without
    assert mpi_communicator.mpi_cuda_support() is False
    assert mpi_communicator._loaded_mpi_libraries()
    monkeypatch.setattr(MPI, 'Query_cuda_support', lambda: 1, raising=False)
    assert mpi_communicator.mpi_cuda_support() is True
    assert chainerkfac.create_communicator('mpi').cuda_aware is True
    comm = chainerkfac.create_communicator('mpi', cuda_aware=False)
    assert comm.cuda_aware is False


def test_cuda_aware_mpi_keeps_host_arrays_on_the_host(rng):
    comm = chainerkfac.create_communicator('mpi', cuda_aware=True)
    a = rng.randn(3).astype(numpy.float32)
    numpy.testing.assert_array_equal(comm.allreduce_mean([a])[0], a)
    assert all(key[2] == 'host' for key in comm._buffers)


class RecordingStream(object):
    """A stream that logs ``record`` and its events' ``synchronize``."""

    def __init__(self, name, log, ptr=None):
        self.name, self.log = name, log
        self.recorded = 0
        if ptr is not None:
            self.ptr = ptr

    def record(self):
        self.recorded += 1
        self.log.append(('record', self.name, self.recorded))
        return types.SimpleNamespace(synchronize=functools.partial(
            self.log.append, ('synchronize', self.name, self.recorded)))


def test_pending_copies_wait_for_the_latest_event_of_each_stream():
    log = []
    a, b = RecordingStream('a', log, ptr=1), RecordingStream('b', log, ptr=2)
    copies = mpi_communicator.PendingCopies()
    copies.wait()                              # nothing pending: no wait
    assert log == [] and copies.waits == 0
    copies.started(a)
    copies.started(b)
    copies.started(a)                          # a's second event covers both
    assert len(copies) == 2
    copies.wait()
    assert log[3:] == [('synchronize', 'a', 2), ('synchronize', 'b', 1)]
    assert copies.waits == 2 and len(copies) == 0
    copies.wait()
    assert len(log) == 5 and copies.waits == 2
    # streams without a pointer (the emulation's) are told apart by identity
    from chainerkfac.communicators.nccl_emulation import HostStream
    copies.started(HostStream('x'))
    copies.started(HostStream('y'))
    assert len(copies) == 2
    copies.wait()
    assert copies.waits == 4


def test_a_pinned_buffer_is_handed_out_once_pending_copies_passed(
        monkeypatch):
    """Each collective takes its buffers before it packs into them or MPI
    writes them: a pinned one only after the copies out of pinned memory
    queued by earlier collectives (asynchronous ``ndarray.set``) are done.
    The device is stood in for: a device run of arrays, pinned memory."""
    from mpi4py import MPI
    comm = mpi_communicator.MpiCommunicator(MPI.COMM_WORLD, cuda_aware=False)
    log = []
    comm.pending_copies.started(RecordingStream('s', log, ptr=7))
    x = numpy.zeros(3, numpy.float32)
    comm._staged_buffer('ag_recv', 3, numpy.float32, [x], False)
    assert len(comm.pending_copies) == 1      # host buffers: nothing waits
    monkeypatch.setattr(mpi_communicator, '_device_of', lambda arrays: 0)
    monkeypatch.setattr(comm, '_allocate', lambda size, dtype, kind: (
        log.append(('allocate', kind)) or numpy.empty(size, dtype)))
    buf = comm._staged_buffer('ag_recv', 3, numpy.float32, [x], False)
    assert buf.shape == (3,)
    assert log == [('record', 's', 1), ('synchronize', 's', 1),
                   ('allocate', 'pinned')]
    assert comm.pending_copies.waits == 1 and len(comm.pending_copies) == 0
