"""A few DistributedKFAC steps; prints each rank's parameter digest.

Usage: parameter_digest.py COMM_DTYPE OVERLAP BN_FISHER [--out OUT]
Each rank writes its digest (sha256 of every parameter and BN statistic) to
OUT/rank<r>.json (rank_record.py) and prints 'DIGEST rank R <digest>'. Run
with and without CHAINERKFAC_EMULATE_KERNELS=1 to compare the emulated CUDA
kernels with the NumPy references on the optimizer's real argument lists.
"""
import hashlib
import sys

import chainerkfac  # NOQA: I100 (first: makes Chainer importable on NumPy 2)
import chainer
import chainer.functions as F
import chainer.links as L
import numpy

from chainerkfac.optimizers import DistributedKFAC
from chainerkfac.optimizers.distributed_kfac import named_persistents

import rank_record


class Net(chainer.Chain):
    def __init__(self):
        super(Net, self).__init__()
        with self.init_scope():
            self.c1 = L.Convolution2D(2, 4, 3, pad=1)
            self.bn = L.BatchNormalization(4)
            self.c2 = L.Convolution2D(4, 5, 3, stride=2, nobias=True)
            self.fc = L.Linear(20, 3)

    def forward(self, x, t):
        h = F.relu(self.bn(self.c1(x)))
        return F.softmax_cross_entropy(self.fc(F.relu(self.c2(h))), t)


def main():
    argv, out = rank_record.split_out(sys.argv[1:])
    comm_dtype, overlap, bn_fisher = argv[0], argv[1] == '1', argv[2]
    comm = chainerkfac.create_communicator('mpi')
    numpy.random.seed(7)
    model = Net()
    opt = DistributedKFAC(comm, lr=0.1, damping=1e-2, cov_ema_decay=0.5,
                          bn_fisher=bn_fisher, comm_dtype=comm_dtype,
                          communicate_after_forward=overlap, stale_warmup=2)
    opt.setup(model)
    rng = numpy.random.RandomState(11 + comm.rank)
    for _ in range(5):
        x = rng.randn(4, 2, 6, 6).astype(numpy.float32)
        t = rng.randint(0, 3, 4).astype(numpy.int32)
        opt.update(model, x, t)
    digest = hashlib.sha256()
    for name, p in sorted(model.namedparams()):
        digest.update(name.encode() + p.array.tobytes())
    for name, v in named_persistents(model):
        digest.update(name.encode() + numpy.asarray(v).tobytes())
    rank_record.write(out, comm, steps=opt.t, digest=digest.hexdigest())
    print('DIGEST rank {} {}'.format(comm.rank, digest.hexdigest()))


if __name__ == '__main__':
    main()
