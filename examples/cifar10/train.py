#!/usr/bin/env python
"""K-FAC on CIFAR-10: the original repository's CIFAR-10 example.

Same command lines as the original (tyohei/chainerkfac,
``examples/cifar10/train.py``)::

    python examples/cifar10/train.py --no_cuda              # one CPU process
    python examples/cifar10/train.py                        # GPU 0
    mpiexec -n 4 python examples/cifar10/train.py --distributed  # a GPU each
    mpiexec -n 2 python examples/cifar10/train.py --distributed --no_cuda

``--arch resnet50|vgg`` picks the network (``models/cifar.py``; ``--width``
scales its channels), ``--optimizer`` K-FAC or a first-order method to
compare with; the learning rate halves every 25 epochs, as in the original.
Under ``--distributed`` the training and test sets are split over the ranks
(``chainermn.scatter_dataset``), K-FAC runs as
:class:`chainerkfac.DistributedKFAC` (each Fisher block's inverse on one
rank) and the evaluation is averaged over the ranks. Images are scaled to
[0, 1] without augmentation, as ``chainer.datasets.get_cifar10`` gives them
to the original.

Data: nothing is downloaded. ``--data_dir`` (default
``data/cifar-10-batches-py`` under the repository root) holds the CIFAR-10
python batches ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``
(pickled dicts with ``data``, N x 3072 uint8 in channel-major order, and
``labels``), as ``cifar-10-python.tar.gz`` unpacks them; the directory the
archive was unpacked in works too. Missing files stop every rank with one
line saying where to put them. The batches are pickles: read only files you
trust.

The GPU paths (default without ``--no_cuda``) are written for one CuPy
device per process and have not run on a GPU from this repository's
machines; without a usable GPU they stop with one line.
"""
import os
import pickle
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, REPO)

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2
import chainerkfac  # NOQA: E402,F401
import chainer  # NOQA: E402
import chainer.links as L  # NOQA: E402
import numpy  # NOQA: E402
from chainer.training import extensions  # NOQA: E402

from chainerkfac import errors  # NOQA: E402
from chainerkfac.training import allocator  # NOQA: E402
from chainerkfac.training import example_support as support  # NOQA: E402
from chainerkfac.training.example_support import (  # NOQA: E402,F401
    build_optimizer)
from chainerkfac.training.example_support import DataError  # NOQA: E402
from models import cifar as cifar_models  # NOQA: E402

PROG = 'examples/cifar10/train.py'
BATCHES_DIR = 'cifar-10-batches-py'
DEFAULT_DATA_DIR = os.path.join(REPO, 'data', BATCHES_DIR)
TRAIN_BATCHES = tuple('data_batch_{}'.format(i) for i in range(1, 6))
TEST_BATCH = 'test_batch'
OPTIMIZERS = ('kfac', 'momentum_sgd', 'adam', 'sgd')
#: the learning rate is multiplied by LR_FACTOR every LR_EPOCHS epochs
LR_FACTOR, LR_EPOCHS = 0.5, 25
#: threads of each data iterator (the original's MultithreadIterator)
N_THREADS = 8


# --- data -----------------------------------------------------------------
def batches_directory(directory):
    """``directory``, or its ``cifar-10-batches-py`` when the batches are
    there (the directory the archive was unpacked in)."""
    inner = os.path.join(directory, BATCHES_DIR)
    if not os.path.isfile(os.path.join(directory, TRAIN_BATCHES[0])) and \
            os.path.isfile(os.path.join(inner, TRAIN_BATCHES[0])):
        return inner
    return directory


def _entry(batch, key):
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def read_batch(path):
    """``(images, labels)`` of one CIFAR-10 python batch: uint8
    ``(N, 3, 32, 32)`` and int32 ``(N,)``."""
    try:
        with open(path, 'rb') as f:
            batch = pickle.load(f, encoding='bytes')
        data = numpy.asarray(_entry(batch, 'data'))
        labels = numpy.asarray(_entry(batch, 'labels'))
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError,
            ValueError, AttributeError) as e:
        raise DataError('{} is not a CIFAR-10 python batch (a pickled dict '
                        'with data and labels): {}'.format(
                            path, errors.one_line(e)))
    if data.dtype != numpy.uint8 or data.ndim != 2 or \
            data.shape[1] != 3 * 32 * 32 or labels.shape != data.shape[:1]:
        raise DataError('{}: data {} {} and labels {} (expected N x 3072 '
                        'uint8 and N)'.format(path, data.dtype, data.shape,
                                              labels.shape))
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError('{}: labels out of 0..9'.format(path))
    return data.reshape(-1, 3, 32, 32), labels.astype(numpy.int32)


def load_cifar10(directory):
    """Training and test ``TupleDataset`` of the batches in ``directory``:
    float32 ``(N, 3, 32, 32)`` images in [0, 1], int32 labels."""
    directory = batches_directory(directory)
    names = TRAIN_BATCHES + (TEST_BATCH,)
    missing = [n for n in names
               if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        where = os.path.abspath(directory)
        target = os.path.dirname(where) \
            if os.path.basename(where) == BATCHES_DIR else where
        raise DataError(
            'CIFAR-10 not found: {} has no {}; this example downloads '
            'nothing: put data_batch_1 ... data_batch_5 and test_batch of '
            'the CIFAR-10 python version there, e.g. `tar xzf '
            'cifar-10-python.tar.gz -C {}` (from '
            'https://www.cs.toronto.edu/~kriz/cifar.html), or name their '
            'directory with --data_dir'.format(where, missing[0], target))
    parts = [read_batch(os.path.join(directory, n)) for n in TRAIN_BATCHES]
    test = read_batch(os.path.join(directory, TEST_BATCH))

    def dataset(images, labels):
        x = images.astype(numpy.float32) / numpy.float32(255)
        return chainer.datasets.TupleDataset(x, labels)

    return (dataset(numpy.concatenate([p[0] for p in parts]),
                    numpy.concatenate([p[1] for p in parts])),
            dataset(*test))


# --- command line ---------------------------------------------------------
def parse_args(argv=None):
    p, h = support.make_parser(
        PROG, __doc__,
        'Defaults of --lr/--momentum/--damping/--cov_ema_decay: those '
        'of the original: K-FAC lr 0.001, momentum 0.9, damping 0.03, '
        'cov_ema_decay 0.99; MomentumSGD lr 0.01, momentum 0.9; Adam alpha '
        '0.001; SGD lr 0.01. The learning rate (Adam: alpha) halves every '
        '25 epochs.',
        64, OPTIMIZERS, ('MomentumSGD', 'momentum_sgd'), cifar_models.ARCHS,
        'resnet50')
    h.add_argument('--data_dir', default=DEFAULT_DATA_DIR,
                   help='directory of the CIFAR-10 python batches (default '
                   '%(default)s)')
    h.add_argument('--width', type=float, default=1.0,
                   help='multiplier of every channel count of --arch '
                   '(default 1: the original network)')
    support.add_optimizer_options(h, 'initial learning rate (Adam: alpha)')
    args = p.parse_args(argv)
    support.check_args(
        p, args, [(not args.width > 0, '--width must be positive')])
    return args


# --- training -------------------------------------------------------------
def make_iterators(args, train, test, order_sampler):
    return (chainer.iterators.MultithreadIterator(
        train, args.batch_size, n_threads=N_THREADS,
        order_sampler=order_sampler),
        chainer.iterators.MultithreadIterator(
            test, args.batch_size, repeat=False, shuffle=False,
            n_threads=N_THREADS))


def main(argv=None):
    allocator.configure_allocator()   # reuse freed host memory (no-op on GPU)
    args = parse_args(argv)
    comm, device = support.setup_processes(PROG, args)
    # every rank: the learning rate stays the same on all of them
    schedule = [(extensions.ExponentialShift(
        'alpha' if args.optimizer == 'adam' else 'lr', LR_FACTOR),
        (LR_EPOCHS, 'epoch'))]
    # rank 0 reads the data; every rank stops with its one line on a problem
    trainer = support.train(
        PROG, args, comm, device, lambda: load_cifar10(args.data_dir),
        lambda: L.Classifier(cifar_models.ARCHS[args.arch](
            width=args.width)),
        lambda train, test, sampler: make_iterators(args, train, test,
                                                    sampler), schedule)
    support.report_final(trainer, comm, 'cifar10 {} (width {:g}) {}'.format(
        args.arch, args.width, args.optimizer))


if __name__ == '__main__':
    main()
