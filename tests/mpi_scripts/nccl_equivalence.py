"""'pure_nccl' over the MPI emulation of NCCL against 'mpi', under mpiexec.

Usage: nccl_equivalence.py [collectives] [training] [--out OUT]  (default:
both). Each rank writes what each phase checked to OUT/rank<r>.json
(rank_record.py) and prints 'OK rank R ...'.

collectives: every collective of PureNcclCommunicator (both mappings, fp32
    and fp16, blocking and on the side stream) equals 'mpi''s bit for bit
    and brute-force NumPy to round-off; the byte counters equal 'mpi''s for
    the grouped mapping and the padded volumes for the padded one.
training: DistributedKFAC with stale statistics, 40 steps, a conv net with
    BatchNormalization, through 'mpi' and through 'pure_nccl' (both
    mappings, fp32 and fp16, with and without the after-forward overlap):
    parameters, BN statistics and schedules equal bit for bit at every
    10th step and at the end.
"""
import sys
import warnings

import chainer.links as L
import numpy

import chainerkfac
import rank_record
from chainerkfac.communicators import nccl_mapping
from chainerkfac.communicators.base import ring_all_gather
from chainerkfac.communicators.base import ring_reduce_scatter
from chainerkfac.optimizers.distributed_kfac import named_persistents
from equivalence import ConvNet

STEPS = 40
KWARGS = dict(lr=0.02, momentum=0.9, damping=1e-2, cov_ema_decay=0.3,
              stale_warmup=2, stale_threshold=1.0, bn_fisher='unit')
# (mapping, comm_dtype, communicate_after_forward)
CONFIGS = [('grouped', 'float32', True), ('padded', 'float32', False),
           ('grouped', 'float16', False), ('padded', 'float16', True)]


def rank_arrays(seed, shapes):
    rng = numpy.random.RandomState(seed)
    out = []
    for shape, sym in shapes:
        a = (rng.randn(*shape) * 10.0 ** rng.uniform(-3, 3)).astype(
            numpy.float32)
        out.append(((a + a.T) / 2 if sym else a, sym))
    return out


def assert_same(got, want, what):
    assert len(got) == len(want), (what, len(got), len(want))
    for g, w in zip(got, want):
        assert type(g) is type(w) and g.dtype == w.dtype, what
        numpy.testing.assert_array_equal(g, w, err_msg=what)


def collectives(mpi, rank, size):
    # segment r: r+1 arrays of mixed shapes; the last rank owns nothing
    shapes = [[((d, d), True) if i % 2 == 0 else ((d, 2), False)
               for i, d in enumerate(range(3, 3 + r + 1))]
              if r < size - 1 else [] for r in range(size)]
    inputs = {q: [rank_arrays(1000 * q + r, shapes[r]) for r in range(size)]
              for q in range(size)}       # inputs[sender][segment]
    counts = [sum(d * (d + 1) // 2 if sym else d * 2
                  for (d, _), sym in seg) for seg in shapes]
    started = {}
    for mapping in ('grouped', 'padded'):
        nccl = chainerkfac.create_communicator(
            'pure_nccl', nccl_backend='mpi_emulation', mapping=mapping,
            abort_on_exception=False)
        layout = nccl_mapping.SegmentLayout(counts, mapping)
        for dtype, tol in (('float32', 1e-6), ('float16', 3e-3)):
            for blocking in (True, False):
                mpi.reset_traffic()
                nccl.reset_traffic()
                what = '{} {} blocking={}'.format(mapping, dtype, blocking)
                if blocking:
                    want = mpi.reduce_scatter_v(inputs[rank], dtype)
                    got = nccl.reduce_scatter_v(inputs[rank], dtype)
                else:
                    pending = nccl.start_reduce_scatter_v(
                        inputs[rank], dtype, purpose='rs_forward')
                    want = mpi.start_reduce_scatter_v(inputs[rank],
                                                      dtype).wait()
                    got = pending.wait()
                assert_same(got, want, what)
                expected = [sum(inputs[q][rank][i][0] for q in range(size))
                            / size for i in range(len(shapes[rank]))]
                for g, e in zip(got, expected):
                    numpy.testing.assert_allclose(g, e, rtol=tol,
                                                  atol=tol * abs(e).max())
                itemsize = 4 if dtype == 'float32' else 2
                scales = 0
                if dtype == 'float16':   # the agreed maxima: float64
                    scales = mpi.bytes_sent - itemsize * ring_reduce_scatter(
                        counts, rank)[0]
                if mapping == 'grouped':
                    assert nccl.bytes_sent == mpi.bytes_sent, what
                    assert nccl.bytes_received == mpi.bytes_received, what
                else:
                    assert nccl.bytes_sent == scales + itemsize * (
                        size - 1) * layout.width, (what, nccl.bytes_sent)
        # all_gather_v: every rank receives every rank's arrays; rank 1 none
        gshapes = [[((4, 3), False), ((5,), False)] if q != 1 else []
                   for q in range(size)]
        own = [a for a, _ in rank_arrays(7 + rank, gshapes[rank])]
        per_rank = [own if q == rank else
                    [numpy.empty(s, 'f') for s, _ in gshapes[q]]
                    for q in range(size)]
        for dtype, tol in (('float32', 0), ('float16', 1e-3)):
            mpi.reset_traffic()
            nccl.reset_traffic()
            want = mpi.all_gather_v(per_rank, dtype)
            got = nccl.all_gather_v(per_rank, dtype)
            for q in range(size):
                assert_same(got[q], want[q], 'all_gather_v {} {}'.format(
                    mapping, dtype))
                ref = [a for a, _ in rank_arrays(7 + q, gshapes[q])]
                for g, e in zip(got[q], ref):
                    numpy.testing.assert_allclose(g, e, rtol=tol,
                                                  atol=tol * abs(e).max())
            if mapping == 'grouped':
                assert nccl.bytes_sent == mpi.bytes_sent
            else:
                head = 2 if dtype == 'float16' else 0
                gcounts = [head + 17 if s else 0 for s in gshapes]
                width = max(gcounts)
                assert nccl.bytes_sent == (size - 1) * width * (
                    4 if dtype == 'float32' else 2), nccl.bytes_sent
                assert (ring_all_gather(gcounts, rank)[0]
                        <= (size - 1) * width)
        # allreduce_mean (fp32 and fp16) and multi_node_mean_grad
        x = [numpy.full((3,), rank + 0.1, numpy.float32),
             numpy.arange(5, dtype=numpy.float32) * (rank + 1)]
        for dtype in ('float32', 'float16'):
            assert_same(nccl.allreduce_mean(x, dtype),
                        mpi.allreduce_mean(x, dtype), 'allreduce ' + dtype)
        link = L.Linear(3, 2)
        link.W.grad = numpy.full((2, 3), rank, numpy.float32)
        link.b.grad = numpy.full((2,), 2 * rank, numpy.float32)
        nccl.multi_node_mean_grad(link)
        numpy.testing.assert_allclose(link.W.grad, (size - 1) / 2)
        numpy.testing.assert_allclose(link.b.grad, size - 1)
        # buffers are reused
        buffers = dict(nccl._buffers)
        nccl.reduce_scatter_v(inputs[rank], 'float32')
        assert all(nccl._buffers[k] is v for k, v in buffers.items())
        started[mapping] = dict(nccl.backend.started)
    # the grouped mapping's reduces ran fused (MPI_Reduce_scatter order)
    assert started['grouped'].get('Ireduce_scatter (fused reduces)'), started
    assert 'Ireduce' not in started['grouped'], started
    assert started['padded'].get('Ireduce_scatter'), started
    assert started['padded'].get('Iallgather'), started
    assert started['grouped'].get('Ibcast'), started
    return 'collectives', dict(started=started)


def state(model, opt):
    out = {k: p.array.copy() for k, p in model.namedparams()}
    out.update({k: numpy.array(v) for k, v in named_persistents(model)})
    return out, (dict(opt.schedule.next_due), dict(opt.schedule.interval))


def training(mpi, rank, size):
    rng = numpy.random.RandomState(5)
    local = 4
    data = [(rng.randn(local * size, 2, 6, 6).astype(numpy.float32),
             rng.randint(0, 3, local * size).astype(numpy.int32))
            for _ in range(STEPS)]
    report, configs = [], []
    for mapping, dtype, overlap in CONFIGS:
        nccl = chainerkfac.create_communicator(
            'pure_nccl', nccl_backend='mpi_emulation', mapping=mapping,
            abort_on_exception=False)
        runs = []
        for comm in (mpi, nccl):
            comm.reset_traffic()
            numpy.random.seed(100 + rank)   # rank 0's weights are broadcast
            model = ConvNet(use_bn=True)
            opt = chainerkfac.DistributedKFAC(
                comm, comm_dtype=dtype, communicate_after_forward=overlap,
                **KWARGS)
            opt.setup(model)
            runs.append((comm, model, opt))
        what = '{} {} overlap={}'.format(mapping, dtype, overlap)
        compared = []
        for step, (x, t) in enumerate(data, 1):
            xs = x[rank * local:(rank + 1) * local]
            ts = t[rank * local:(rank + 1) * local]
            for _, model, opt in runs:
                opt.update(model, xs, ts)
            if step % 10 == 0:
                (pa, sa), (pb, sb) = [state(m, o) for _, m, o in runs]
                for k in pa:
                    numpy.testing.assert_array_equal(
                        pb[k], pa[k], err_msg='{} step {}: {}'.format(
                            what, step, k))
                assert sa == sb, (what, step, sa, sb)
                compared.append(step)
        schedule = runs[0][2].schedule
        assert max(schedule.interval.values()) > 1, schedule.interval
        if mapping == 'grouped':
            assert nccl.bytes_sent == mpi.bytes_sent, what
            assert nccl.bytes_received == mpi.bytes_received, what
        else:
            assert nccl.bytes_sent >= mpi.bytes_sent, what
        report.append('{} {}{} sent {}/{}'.format(
            mapping, dtype, '+overlap' if overlap else '', nccl.bytes_sent,
            mpi.bytes_sent))
        configs.append(dict(
            mapping=mapping, comm_dtype=dtype, overlap=overlap,
            steps=runs[1][2].t, bit_identical_at=compared,
            max_interval=max(schedule.interval.values()),
            nccl_bytes=[nccl.bytes_sent, nccl.bytes_received],
            mpi_bytes=[mpi.bytes_sent, mpi.bytes_received]))
    return ('training {} steps bit-identical: '.format(STEPS)
            + '; '.join(report), dict(configs=configs))


def main():
    warnings.filterwarnings('ignore', message='chainerkfac: no Fisher block')
    phases, out = rank_record.split_out(sys.argv[1:])
    phases = phases or ['collectives', 'training']
    mpi = chainerkfac.create_communicator('mpi')
    done = [{'collectives': collectives, 'training': training}[p](
        mpi, mpi.rank, mpi.size) for p in phases]
    rank_record.write(out, mpi, phases=phases,
                      **{p: checked for p, (_, checked) in zip(phases, done)})
    sys.stdout.write('OK rank {} of {}: {}\n'.format(
        mpi.rank, mpi.size, ' | '.join(line for line, _ in done)))
    sys.stdout.flush()


if __name__ == '__main__':
    main()
