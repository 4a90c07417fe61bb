"""Faults under mpiexec.

Usage: faults.py MODE [DIR]: MODE one of raise_on_rank1, model_mismatch,
skip_link, skip_link_overlap; with DIR, each rank also writes its uncaught
exception to DIR/rank<R>.txt.
"""
import os
import sys
import time

import chainerkfac  # NOQA: I100 (first: makes Chainer importable on NumPy 2)
import chainer
import chainer.functions as F
import chainer.links as L
import numpy


class Net(chainer.Chain):
    def __init__(self, hidden):
        super(Net, self).__init__()
        with self.init_scope():
            self.l1 = L.Linear(4, hidden)
            self.l2 = L.Linear(hidden, 2)

    def forward(self, x, t, skip_l2=False):
        h = F.relu(self.l1(x))
        return F.softmax_cross_entropy(h if skip_l2 else self.l2(h), t)


def record_uncaught_exceptions(directory, rank):
    """Writes an uncaught exception to DIRECTORY/rank<R>.txt before the
    installed hook (ChainerMN's: print, then MPI_Abort) runs: mpiexec may
    drop forwarded output when the job aborts, a file is not lost."""
    hook = sys.excepthook

    def write_then_delegate(exctype, value, tb):
        with open(os.path.join(directory, 'rank{}.txt'.format(rank)),
                  'w') as f:
            f.write('{}: {}\n'.format(exctype.__name__, value))
            f.flush()
            os.fsync(f.fileno())
        hook(exctype, value, tb)
    sys.excepthook = write_then_delegate


def main():
    mode = sys.argv[1]
    comm = chainerkfac.create_communicator('mpi')
    if len(sys.argv) > 2:
        record_uncaught_exceptions(sys.argv[2], comm.rank)
    hidden = 5 if (mode == 'model_mismatch' and comm.rank == 1) else 3
    model = Net(hidden)
    opt = chainerkfac.DistributedKFAC(
        comm, lr=0.1, communicate_after_forward=mode == 'skip_link_overlap')
    opt.setup(model)
    x = numpy.ones((4, 4), numpy.float32)
    t = numpy.zeros(4, numpy.int32)
    for step in range(1000):
        if mode == 'raise_on_rank1' and comm.rank == 1 and step == 2:
            raise RuntimeError('injected failure on rank 1')
        # a data-dependent branch that skips /l2 on rank 1 at the third step
        skip = mode.startswith('skip_link') and comm.rank == 1 and step == 2
        opt.update(model, x, t, skip)
    time.sleep(60)  # never reached when the fault is handled


if __name__ == '__main__':
    main()
