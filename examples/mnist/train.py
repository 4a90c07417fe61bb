#!/usr/bin/env python
"""K-FAC on MNIST (or Fashion-MNIST): the original repository's MNIST example.

Same command lines as the original (tyohei/chainerkfac,
``examples/mnist/train.py``)::

    python examples/mnist/train.py --no_cuda                # one CPU process
    python examples/mnist/train.py                          # GPU 0
    mpiexec -n 4 python examples/mnist/train.py --distributed  # a GPU each
    mpiexec -n 2 python examples/mnist/train.py --distributed --no_cuda

``--arch mlp|cnn`` picks the network (``models/mnist.py``), ``--optimizer``
K-FAC or a first-order method to compare with. Under ``--distributed``
the training and test sets are split over the ranks
(``chainermn.scatter_dataset``), K-FAC runs as
:class:`chainerkfac.DistributedKFAC` (each Fisher block's inverse on one
rank) and the evaluation is averaged over the ranks.

Data: nothing is downloaded. MNIST is read from the four idx files
(``train-images-idx3-ubyte[.gz]`` ...) in ``--data_dir`` (default
``data/mnist`` under the repository root); ``--dataset fashion-mnist`` reads
Fashion-MNIST (same format) from Debian's ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``). Missing files stop every rank with
one line saying where to put them.

The GPU paths (default without ``--no_cuda``) are written for one CuPy
device per process and have not run on a GPU from this repository's
machines; without a usable GPU they stop with one line.
"""
import gzip
import os
import sys
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, REPO)

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2
import chainerkfac  # NOQA: E402,F401
import chainer  # NOQA: E402
import chainer.links as L  # NOQA: E402
import numpy  # NOQA: E402

from chainerkfac.datasets import fashion_mnist  # NOQA: E402
from chainerkfac.training import allocator  # NOQA: E402
from chainerkfac.training import example_support as support  # NOQA: E402
from chainerkfac.training.example_support import (  # NOQA: E402,F401
    build_optimizer)
from chainerkfac.training.example_support import DataError  # NOQA: E402
from models import mnist as mnist_models  # NOQA: E402

PROG = 'examples/mnist/train.py'
DEFAULT_MNIST_DIR = os.path.join(REPO, 'data', 'mnist')
MNIST_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
OPTIMIZERS = ('kfac', 'adam', 'momentum_sgd', 'sgd')


# --- data -----------------------------------------------------------------
def _idx_path(directory, name):
    for candidate in (name + '.gz', name):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def read_idx(path, ndim):
    """The uint8 array of an idx file (gzip-compressed or not) of ``ndim``
    dimensions (images: 3, labels: 1)."""
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError('cannot read {}: {}'.format(path, e))
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise DataError('{} is not an idx file ({} bytes)'.format(
            path, len(data)))
    magic = numpy.frombuffer(data, '>u4', count=1 + ndim)
    if int(magic[0]) != 0x800 + ndim:
        raise DataError('{} is not an idx file of unsigned bytes in {} '
                        'dimensions (magic number {:#x}, expected {:#x})'
                        .format(path, ndim, int(magic[0]), 0x800 + ndim))
    shape = tuple(int(n) for n in magic[1:])
    if len(data) - header != int(numpy.prod(shape)):
        raise DataError('{}: {} data bytes for shape {}'.format(
            path, len(data) - header, shape))
    return numpy.frombuffer(data, numpy.uint8, offset=header).reshape(shape)


def load_mnist(directory, split):
    """``(images, labels)`` of MNIST's ``split`` from its idx files:
    float32 ``(N, 1, 28, 28)`` in [0, 1] (as ``chainer.datasets.get_mnist``
    scales them) and int32 labels."""
    paths = [_idx_path(directory, name) for name in MNIST_FILES[split]]
    missing = [n for n, p in zip(MNIST_FILES[split], paths) if p is None]
    if missing:
        files = ', '.join(n + '.gz' for pair in MNIST_FILES.values()
                          for n in pair)
        raise DataError(
            'MNIST not found: {} has no {}[.gz]; this example downloads '
            'nothing: put the four idx files of '
            'http://yann.lecun.com/exdb/mnist/ ({}; gzipped or not) there '
            'or name their directory with --data_dir, or train on '
            'Fashion-MNIST with --dataset fashion-mnist'.format(
                os.path.abspath(directory), missing[0], files))
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError('{} and {} disagree: images {}, labels {} (expected '
                        'N x 28 x 28 and N)'.format(paths[0], paths[1],
                                                   images.shape, labels.shape))
    if labels.size and labels.max() > 9:
        raise DataError('{}: label {} out of 0..9'.format(
            paths[1], int(labels.max())))
    x = images.astype(numpy.float32)[:, None] / numpy.float32(255)
    return x, labels.astype(numpy.int32)


def load_data(args):
    """Training and test ``TupleDataset`` of ``--dataset``."""
    if args.dataset == 'fashion-mnist':
        root = args.data_dir or fashion_mnist.DEFAULT_ROOT
        try:
            train = fashion_mnist.load_fashion_mnist('train', root=root)
            test = fashion_mnist.load_fashion_mnist('test', root=root)
        except (OSError, ValueError) as e:
            raise DataError(str(e))
    else:
        directory = args.data_dir or DEFAULT_MNIST_DIR
        train = load_mnist(directory, 'train')
        test = load_mnist(directory, 'test')
    return (chainer.datasets.TupleDataset(*train),
            chainer.datasets.TupleDataset(*test))


# --- command line ---------------------------------------------------------
def parse_args(argv=None):
    p, h = support.make_parser(
        PROG, __doc__,
        'Defaults of --lr/--momentum/--damping/--cov_ema_decay: those '
        'of the original: K-FAC lr 0.001, momentum 0.9, damping 0.03, '
        'cov_ema_decay 0.99; Adam alpha 0.001; (momentum) SGD lr 0.01, '
        'momentum 0.9.',
        100, OPTIMIZERS, ('Adam', 'adam'), mnist_models.ARCHS, 'mlp')
    h.add_argument('--dataset', choices=('mnist', 'fashion-mnist'),
                   default='mnist')
    h.add_argument('--data_dir', default=None,
                   help='directory of the idx files (default: {} for mnist, '
                   '{} for fashion-mnist)'.format(
                       DEFAULT_MNIST_DIR, fashion_mnist.DEFAULT_ROOT))
    support.add_optimizer_options(h, 'learning rate (Adam: alpha)')
    args = p.parse_args(argv)
    support.check_args(p, args)
    return args


# --- training -------------------------------------------------------------
def make_iterators(args, train, test, order_sampler):
    return (chainer.iterators.SerialIterator(train, args.batch_size,
                                             order_sampler=order_sampler),
            chainer.iterators.SerialIterator(test, args.batch_size,
                                             repeat=False, shuffle=False))


def main(argv=None):
    allocator.configure_allocator()   # reuse freed host memory (no-op on GPU)
    args = parse_args(argv)
    comm, device = support.setup_processes(PROG, args)
    # rank 0 reads the data; every rank stops with its one line on a problem
    trainer = support.train(
        PROG, args, comm, device, lambda: load_data(args),
        lambda: L.Classifier(mnist_models.ARCHS[args.arch]()),
        lambda train, test, sampler: make_iterators(args, train, test,
                                                    sampler))
    support.report_final(trainer, comm, '{} {} {}'.format(
        args.dataset, args.arch, args.optimizer))


if __name__ == '__main__':
    main()
