"""The communicator's collectives against brute-force NumPy, under mpiexec.

Usage: collectives.py [--out OUT]. Each rank writes to OUT/rank<r>.json
(rank_record.py) the checks it passed, in order, and what it measured.
"""
import sys

import chainer.links as L
import chainermn
import numpy

import chainerkfac
import rank_record


def rank_arrays(seed, shapes):
    """Every rank can rebuild every rank's inputs from the seed."""
    rng = numpy.random.RandomState(seed)
    out = []
    for shape, sym in shapes:
        a = rng.randn(*shape).astype(numpy.float32)
        out.append(((a + a.T) / 2 if sym else a, sym))
    return out


def main():
    _, out = rank_record.split_out(sys.argv[1:])
    comm = chainerkfac.create_communicator('mpi')
    rank, size = comm.rank, comm.size
    assert isinstance(comm, chainermn.communicators.mpi_communicator_base
                      .MpiCommunicatorBase)
    checks, sent = [], {}
    # segment r: r+1 arrays of mixed shapes; the last rank owns nothing
    shapes = [[((d, d), True) if i % 2 == 0 else ((d, 2), False)
               for i, d in enumerate(range(3, 3 + r + 1))]
              if r < size - 1 else [] for r in range(size)]
    inputs = {q: [rank_arrays(1000 * q + r, shapes[r]) for r in range(size)]
              for q in range(size)}       # inputs[sender][segment]
    for dtype, tol in (('float32', 1e-6), ('float16', 3e-3)):
        for blocking in (True, False):
            comm.reset_traffic()
            if blocking:
                got = comm.reduce_scatter_v(inputs[rank], dtype)
            else:
                got = comm.start_reduce_scatter_v(inputs[rank], dtype).wait()
            expected = [sum(inputs[q][rank][i][0] for q in range(size)) / size
                        for i in range(len(shapes[rank]))]
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                numpy.testing.assert_allclose(g, e, rtol=tol,
                                              atol=tol * abs(e).max())
            if dtype == 'float32':
                counts = [sum(d * (d + 1) // 2 if sym else d * 2
                              for (d, _), sym in seg) for seg in shapes]
                assert comm.bytes_sent == 4 * (sum(counts) - counts[rank])
                sent['blocking' if blocking else 'started'] = dict(
                    bytes_sent=comm.bytes_sent,
                    planned=4 * (sum(counts) - counts[rank]))
            checks.append('reduce_scatter_v {} {}'.format(
                dtype, 'blocking' if blocking else 'started'))

    # all_gather_v: every rank receives every rank's arrays
    own = [a for a, _ in rank_arrays(7 + rank, [((4, 3), False),
                                                 ((5,), False)])]
    per_rank = [own if r == rank else
                [numpy.empty((4, 3), 'f'), numpy.empty((5,), 'f')]
                for r in range(size)]
    for dtype, tol in (('float32', 0), ('float16', 1e-3)):
        got = comm.all_gather_v(per_rank, dtype)
        for r in range(size):
            want = [a for a, _ in rank_arrays(7 + r, [((4, 3), False),
                                                     ((5,), False)])]
            for g, e in zip(got[r], want):
                numpy.testing.assert_allclose(g, e, rtol=tol,
                                              atol=tol * abs(e).max())
        checks.append('all_gather_v ' + dtype)

    # allreduce_mean and ChainerMN's multi_node_mean_grad / bcast_data
    x = numpy.full((3,), rank, numpy.float32)
    numpy.testing.assert_allclose(comm.allreduce_mean([x])[0],
                                  numpy.full(3, (size - 1) / 2))
    checks.append('allreduce_mean')
    link = L.Linear(3, 2)
    link.W.grad = numpy.full((2, 3), rank, numpy.float32)
    link.b.grad = numpy.full((2,), 2 * rank, numpy.float32)
    comm.multi_node_mean_grad(link)
    numpy.testing.assert_allclose(link.W.grad, (size - 1) / 2)
    numpy.testing.assert_allclose(link.b.grad, size - 1)
    checks.append('multi_node_mean_grad')
    link.W.array[...] = rank
    comm.bcast_data(link)
    numpy.testing.assert_array_equal(link.W.array, 0)
    checks.append('bcast_data')
    data = chainermn.scatter_dataset(list(range(10)), comm)
    assert len(data) in (10 // size, 10 // size + 1)
    checks.append('scatter_dataset')
    # ChainerMN's multi-node evaluator averages the ranks' results
    import chainer
    from chainer.training import extensions
    model = chainer.links.Classifier(chainer.links.Linear(2, 2))
    model.predictor.W.array[...] = numpy.eye(2)
    model.predictor.b.array[...] = 0
    comm.bcast_data(model)
    xs = numpy.array([[1, 0], [0, 1], [0, 1], [1, 0]], numpy.float32)
    ts = numpy.array([0, 1, 0, 1], numpy.int32)   # half right
    shard = chainermn.scatter_dataset(
        chainer.datasets.TupleDataset(xs, ts), comm)
    evaluator = chainermn.create_multi_node_evaluator(extensions.Evaluator(
        chainer.iterators.SerialIterator(shard, 4, repeat=False), model), comm)
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    with reporter:
        result = evaluator.evaluate()
    assert result['main/accuracy'] == 0.5, result  # mean over all ranks
    checks.append('multi_node_evaluator')
    # buffers are reused across steps
    buffers = dict(comm._buffers)
    comm.reduce_scatter_v(inputs[rank], 'float32')
    assert all(comm._buffers[k] is v for k, v in buffers.items())
    checks.append('buffers reused')
    rank_record.write(out, comm, checks=checks, reduce_scatter_bytes=sent,
                      scattered=list(data),
                      evaluator_accuracy=result['main/accuracy'])
    print('OK rank {}'.format(rank))


if __name__ == '__main__':
    main()
