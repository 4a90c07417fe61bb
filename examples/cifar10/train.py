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
import argparse
import os
import pickle
import sys
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, REPO)

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2
import chainerkfac  # NOQA: E402
import chainer  # NOQA: E402
import chainer.links as L  # NOQA: E402
import chainermn  # NOQA: E402
import numpy  # NOQA: E402
from chainer import training  # NOQA: E402
from chainer.training import extensions  # NOQA: E402

from chainerkfac.communicators import CommunicatorUnavailable  # NOQA: E402
from chainerkfac.training import allocator  # NOQA: E402
from chainerkfac.training import checkpoint  # NOQA: E402
from chainerkfac.training import device as device_module  # NOQA: E402
from models import cifar as cifar_models  # NOQA: E402

PROG = 'examples/cifar10/train.py'
#: exit status of a run stopped by a usage or data problem (one line)
EXIT_STATUS = 2
BATCHES_DIR = 'cifar-10-batches-py'
DEFAULT_DATA_DIR = os.path.join(REPO, 'data', BATCHES_DIR)
TRAIN_BATCHES = tuple('data_batch_{}'.format(i) for i in range(1, 6))
TEST_BATCH = 'test_batch'
OPTIMIZERS = ('kfac', 'momentum_sgd', 'adam', 'sgd')
#: the original's KFAC() defaults (its chainerkfac/optimizers/kfac.py)
KFAC_DEFAULTS = dict(lr=0.001, momentum=0.9, damping=0.03, cov_ema_decay=0.99)
#: the learning rate is multiplied by LR_FACTOR every LR_EPOCHS epochs
LR_FACTOR, LR_EPOCHS = 0.5, 25
#: threads of each data iterator (the original's MultithreadIterator)
N_THREADS = 8
OPTIMIZER_PATH = 'updater/optimizer:main'
#: snapshot keys that differ between ranks
RANK_LOCAL = ('updater/iterator:main',)


class DataError(Exception):
    """Data that cannot be read; its message is one line."""


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
                        'with data and labels): {}: {}'.format(
                            path, type(e).__name__, e))
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


# --- processes, devices, optimizers ---------------------------------------
def stop(message, comm=None):
    """Rank 0 prints ``PROG: error: MESSAGE``; every rank exits with 2.
    Every rank must call it (the ranks have agreed on the error)."""
    if comm is None or comm.rank == 0:
        sys.stderr.write('{}: error: {}\n'.format(PROG, message))
        sys.stderr.flush()
    if comm is not None and comm.size > 1:
        comm.mpi_comm.Barrier()
    sys.exit(EXIT_STATUS)


def agreed_error(comm, error):
    """The first rank's error message (None when no rank has one)."""
    if comm is None or comm.size == 1:
        return error
    errors = comm.mpi_comm.allgather(error)
    return next((e for e in errors if e), None)


def setup_processes(args):
    """``(comm, device)``: the communicator (None without ``--distributed``)
    and this process's GPU (None with ``--no_cuda``)."""
    comm = chainerkfac.create_communicator('mpi') if args.distributed \
        else None
    device = None
    if not args.no_cuda:
        device = device_module.select_gpu_or_exit(
            PROG, comm, option='GPU training (the default; --no_cuda trains '
            'on the CPU)')
    name = args.communicator
    if name == 'auto':
        name = 'mpi' if device is None else 'pure_nccl'
    if comm is not None and name == 'pure_nccl':
        try:
            comm = chainerkfac.create_communicator('pure_nccl')
        except CommunicatorUnavailable as e:
            stop('--communicator pure_nccl: {}'.format(e), comm)
    return comm, device


def _given(value, default):
    return default if value is None else value


def build_optimizer(args, comm):
    """``--optimizer``; distributed: DistributedKFAC over ``comm``, or the
    first-order method in ChainerMN's multi-node optimizer (gradients
    averaged over the ranks by the same communicator)."""
    if args.optimizer == 'kfac':
        kw = dict(lr=_given(args.lr, KFAC_DEFAULTS['lr']),
                  momentum=_given(args.momentum, KFAC_DEFAULTS['momentum']),
                  damping=_given(args.damping, KFAC_DEFAULTS['damping']),
                  cov_ema_decay=_given(args.cov_ema_decay,
                                       KFAC_DEFAULTS['cov_ema_decay']),
                  stab_coeff=16.0, bn_fisher='full', stale=args.stale)
        if comm is None:
            return chainerkfac.KFAC(**kw)
        return chainerkfac.DistributedKFAC(comm, **kw)
    if args.optimizer == 'adam':
        optimizer = chainer.optimizers.Adam(alpha=_given(args.lr, 0.001))
    elif args.optimizer == 'momentum_sgd':
        optimizer = chainer.optimizers.MomentumSGD(
            lr=_given(args.lr, 0.01), momentum=_given(args.momentum, 0.9))
    else:
        optimizer = chainer.optimizers.SGD(lr=_given(args.lr, 0.01))
    if comm is not None:
        optimizer = chainermn.create_multi_node_optimizer(optimizer, comm)
    return optimizer


# --- command line ---------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.splitlines()[0],
        epilog='Defaults of --lr/--momentum/--damping/--cov_ema_decay: those '
        'of the original: K-FAC lr 0.001, momentum 0.9, damping 0.03, '
        'cov_ema_decay 0.99; MomentumSGD lr 0.01, momentum 0.9; Adam alpha '
        '0.001; SGD lr 0.01. The learning rate (Adam: alpha) halves every '
        '25 epochs.')
    g = p.add_argument_group("the original example's options")
    g.add_argument('--batch_size', type=int, default=64,
                   help='examples per process and step (default 64)')
    g.add_argument('--num_epochs', type=int, default=20)
    g.add_argument('--snapshot_interval', type=int, default=-1,
                   help='epochs between snapshots (-1: one at the end)')
    g.add_argument('--no_cuda', action='store_true',
                   help='train on the CPU (default: GPU, the node-local one '
                   'of each rank; stops with one line without one)')
    g.add_argument('--out', default='result')
    g.add_argument('--resume', default='',
                   help='a snapshot this example wrote (distributed K-FAC: '
                   'the snapshot_iter_<N> directory; it resumes on any '
                   'number of processes)')
    g.add_argument('--optimizer', choices=OPTIMIZERS, default='kfac',
                   help='kfac, or a method to compare with (the original '
                   'trained MomentumSGD for any value other than kfac: use '
                   'momentum_sgd)')
    g.add_argument('--arch', choices=sorted(cifar_models.ARCHS),
                   default='resnet50')
    g.add_argument('--plot', action='store_true',
                   help='loss.png and accuracy.png in --out (matplotlib)')
    g.add_argument('--distributed', action='store_true',
                   help='one process per rank under mpiexec; data split '
                   'over the ranks')
    h = p.add_argument_group('options added here')
    h.add_argument('--data_dir', default=DEFAULT_DATA_DIR,
                   help='directory of the CIFAR-10 python batches (default '
                   '%(default)s)')
    h.add_argument('--width', type=float, default=1.0,
                   help='multiplier of every channel count of --arch '
                   '(default 1: the original network)')
    h.add_argument('--lr', type=float, default=None,
                   help='initial learning rate (Adam: alpha)')
    h.add_argument('--momentum', type=float, default=None,
                   help='kfac and momentum_sgd only')
    h.add_argument('--damping', type=float, default=None, help='kfac only')
    h.add_argument('--cov_ema_decay', type=float, default=None,
                   help='kfac only: weight of the newest statistics')
    h.add_argument('--stale', action='store_true',
                   help='kfac only: refresh each statistic at its own '
                   'adaptive interval (SP-NGD) instead of every step as the '
                   'original')
    h.add_argument('--communicator', choices=('auto', 'mpi', 'pure_nccl'),
                   default='auto', help="--distributed: 'auto' is "
                   "'pure_nccl' (as the original) on GPUs, 'mpi' on CPUs")
    h.add_argument('--seed', type=int, default=0,
                   help='initial weights, data split and order')
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.num_epochs < 1:
        p.error('--batch_size and --num_epochs must be positive')
    if not args.width > 0:
        p.error('--width must be positive')
    for flag, allowed in (('momentum', ('kfac', 'momentum_sgd')),
                          ('damping', ('kfac',)),
                          ('cov_ema_decay', ('kfac',)),
                          ('stale', ('kfac',))):
        if getattr(args, flag) not in (None, False) and \
                args.optimizer not in allowed:
            p.error('--{} applies to --optimizer {} only'.format(
                flag, ' or '.join(allowed)))
    return args


# --- training -------------------------------------------------------------
def main(argv=None):
    allocator.configure_allocator()   # reuse freed host memory (no-op on GPU)
    args = parse_args(argv)
    comm, device = setup_processes(args)
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    # rank 0 reads the data; every rank stops with its one line on a problem
    train = test = error = None
    if rank == 0:
        try:
            train, test = load_cifar10(args.data_dir)
        except DataError as e:
            error = str(e)
    error = agreed_error(comm, error)
    if error:
        stop(error, comm)

    if rank == 0 and comm is not None:
        print('distributed: {} processes, {} communicator, {}'.format(
            size, type(comm).__name__,
            'CPU' if device is None else 'GPU'), flush=True)
    if device is not None and rank == 0:
        print(device_module.describe(device), flush=True)

    n_train = len(train) if rank == 0 else None
    shard_indices = None
    if comm is not None:
        n_train = comm.mpi_comm.bcast(n_train, root=0)
        train = chainermn.scatter_dataset(train, comm, shuffle=True,
                                          seed=args.seed)
        # the global index of each example of this rank's shard (same seed,
        # same split): a resume on another process count needs them
        shard_indices = numpy.asarray(chainermn.scatter_dataset(
            numpy.arange(n_train), comm, shuffle=True, seed=args.seed)[:],
            numpy.int64)
        test = chainermn.scatter_dataset(test, comm)

    numpy.random.seed(args.seed)   # initial weights (rank 0's are broadcast)
    model = L.Classifier(cifar_models.ARCHS[args.arch](width=args.width))
    if device is not None:
        model.to_device(device)    # before setup: the optimizer state too
    optimizer = build_optimizer(args, comm)
    optimizer.setup(model)

    order_rng = numpy.random.RandomState([args.seed, size, rank])
    train_iter = chainer.iterators.MultithreadIterator(
        train, args.batch_size, n_threads=N_THREADS,
        order_sampler=chainer.iterators.ShuffleOrderSampler(order_rng))
    test_iter = chainer.iterators.MultithreadIterator(
        test, args.batch_size, repeat=False, shuffle=False,
        n_threads=N_THREADS)
    updater = training.updaters.StandardUpdater(
        train_iter, optimizer, input_device=device)
    trainer = training.Trainer(updater, (args.num_epochs, 'epoch'),
                               out=args.out)
    evaluator = extensions.Evaluator(test_iter, model, device=device)
    if comm is not None:
        evaluator = chainermn.create_multi_node_evaluator(evaluator, comm)
    trainer.extend(evaluator)
    # every rank: the learning rate stays the same on all of them
    trainer.extend(extensions.ExponentialShift(
        'alpha' if args.optimizer == 'adam' else 'lr', LR_FACTOR),
        trigger=(LR_EPOCHS, 'epoch'))

    interval = args.num_epochs if args.snapshot_interval == -1 \
        else max(1, args.snapshot_interval)
    sharded = comm is not None and args.optimizer == 'kfac'
    if sharded:
        # each rank holds the curvature of the blocks it owns: every rank
        # writes its part (chainerkfac.training.checkpoint)
        trainer.extend(checkpoint.ShardedSnapshot(
            comm, optimizer, optimizer_path=OPTIMIZER_PATH,
            rank_local=RANK_LOCAL,
            rank_arrays={'shard_indices': shard_indices}),
            trigger=(interval, 'epoch'), name='snapshot')
    elif rank == 0:
        trainer.extend(extensions.snapshot(), trigger=(interval, 'epoch'))
    if rank == 0:
        trainer.extend(extensions.LogReport())
        if args.plot and extensions.PlotReport.available():
            trainer.extend(extensions.PlotReport(
                ['main/loss', 'validation/main/loss'], 'epoch',
                file_name='loss.png'))
            trainer.extend(extensions.PlotReport(
                ['main/accuracy', 'validation/main/accuracy'], 'epoch',
                file_name='accuracy.png'))
        trainer.extend(extensions.PrintReport(
            ['epoch', 'main/loss', 'validation/main/loss', 'main/accuracy',
             'validation/main/accuracy', 'elapsed_time']))
        trainer.extend(extensions.ProgressBar())

    if args.resume:
        resume(args, trainer, optimizer, comm, sharded, shard_indices,
               n_train, order_rng)

    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        trainer.run()
    if rank == 0:
        last = trainer.get_extension('LogReport').log[-1]
        print('final: cifar10 {} (width {:g}) {} on {} process(es): epoch '
              '{}, validation accuracy {:.4f}, loss {:.4f}'.format(
                  args.arch, args.width, args.optimizer, size, last['epoch'],
                  last['validation/main/accuracy'],
                  last['validation/main/loss']), flush=True)


def resume(args, trainer, optimizer, comm, sharded, shard_indices, n_train,
           order_rng):
    """``--resume``: a sharded snapshot directory (distributed K-FAC, on any
    number of processes) or Chainer's npz snapshot (one process, or every
    rank of a distributed first-order run reading rank 0's file)."""
    error = None
    if sharded:
        try:
            info = checkpoint.load(args.resume, trainer, optimizer, comm,
                                   optimizer_path=OPTIMIZER_PATH,
                                   rank_local=RANK_LOCAL)
            if not info.same_layout:
                order_rng.seed([args.seed, comm.size, comm.rank,
                                info.iteration])
                checkpoint.reposition_iterator(
                    trainer.updater.get_iterator('main'), info, comm,
                    shard_indices, n_train, order_rng)
        except checkpoint.CheckpointError as e:
            error = str(e)   # the same on every rank
    else:
        try:
            chainer.serializers.load_npz(args.resume, trainer)
        except Exception as e:   # a missing file, another model, ...
            error = '{}: {}'.format(type(e).__name__,
                                    (str(e).strip().splitlines() or [''])[0])
        error = agreed_error(comm, error)
    if error:
        stop('--resume {}: {}'.format(args.resume, error), comm)


if __name__ == '__main__':
    main()
