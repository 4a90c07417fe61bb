"""The communicator's byte counters equal the planned traffic of a step.

Usage: traffic.py COMM_DTYPE [--out OUT]. Each rank writes its counter and
the plan to OUT/rank<r>.json (rank_record.py).
"""
import sys

import numpy

import chainerkfac
import rank_record
from chainerkfac.optimizers.traffic import planned_step_traffic
from equivalence import ConvNet


def main():
    argv, out = rank_record.split_out(sys.argv[1:])
    comm_dtype = argv[0]
    comm = chainerkfac.create_communicator('mpi')
    numpy.random.seed(0)
    model = ConvNet(use_bn=True)
    opt = chainerkfac.DistributedKFAC(comm, lr=0.1, comm_dtype=comm_dtype)
    opt.setup(model)
    rng = numpy.random.RandomState(comm.rank)
    x = rng.randn(4, 2, 6, 6).astype(numpy.float32)
    t = rng.randint(0, 3, 4).astype(numpy.int32)
    opt.update(model, x, t)
    comm.reset_traffic()
    opt.update(model, x, t)
    numpy.random.seed(0)
    plan = planned_step_traffic(ConvNet(use_bn=True), comm.size, comm_dtype)
    assert comm.bytes_sent == plan['ours'][comm.rank], (
        comm.bytes_sent, plan['ours'])
    rank_record.write(out, comm, comm_dtype=comm_dtype,
                      bytes_sent=comm.bytes_sent, planned=plan['ours'])
    print('OK rank {}'.format(comm.rank))


if __name__ == '__main__':
    main()
