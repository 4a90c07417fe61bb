"""fp16 parameters: after a few DistributedKFAC steps every rank holds the
same parameters, bit for bit (the owner adds the same rounded step as the
others). Each rank writes its parameters to OUT/rank<r>.npz.

    fp16_parameters.py OUT COMM_DTYPE
"""
import os
import sys

import chainerkfac  # NOQA: I100 (first: makes Chainer importable on NumPy 2)
import chainer
import numpy

from equivalence import ConvNet


def main():
    out, comm_dtype = sys.argv[1], sys.argv[2]
    comm = chainerkfac.create_communicator('mpi')
    numpy.random.seed(0)
    with chainer.using_config('dtype', numpy.float16):
        model = ConvNet(use_bn=False)
    opt = chainerkfac.DistributedKFAC(comm, comm_dtype=comm_dtype, lr=0.05,
                                      damping=1e-2, stale_warmup=2)
    opt.setup(model)
    rng = numpy.random.RandomState(comm.rank)
    for _ in range(4):
        x = rng.randn(4, 2, 6, 6).astype(numpy.float16)
        t = rng.randint(0, 3, 4).astype(numpy.int32)
        opt.update(model, x, t)
    numpy.savez(os.path.join(out, 'rank{}.npz'.format(comm.rank)),
                **{k: p.array for k, p in model.namedparams()})


if __name__ == '__main__':
    main()
