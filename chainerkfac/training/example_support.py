"""Shared support of the original-interface examples
(``examples/mnist/train.py``, ``examples/cifar10/train.py``).

Process, communicator and device setup that stops with one line; the
optimizer (K-FAC with the original's defaults, or a first-order method in
ChainerMN's multi-node optimizer); the command-line options and the
trainer/snapshot/resume wiring both examples share.
"""
import argparse
import warnings

import chainer
import chainermn
import numpy
from chainer import training
from chainer.training import extensions

import chainerkfac
from chainerkfac import errors
from chainerkfac import threads
from chainerkfac.communicators import CommunicatorUnavailable
from chainerkfac.training import checkpoint
from chainerkfac.training import device as device_module
from chainerkfac.training import extensions as kfac_extensions
from chainerkfac.training import resharding

#: exit status of a run stopped by a usage or data problem (one line)
EXIT_STATUS = errors.EXIT_STATUS
#: the original's KFAC() defaults (its chainerkfac/optimizers/kfac.py)
KFAC_DEFAULTS = dict(lr=0.001, momentum=0.9, damping=0.03, cov_ema_decay=0.99)


class DataError(Exception):
    """Data that cannot be read; its message is one line."""


# --- processes, devices, optimizers ---------------------------------------
def stop(prog, message, comm=None):
    """Rank 0 prints ``PROG: error: MESSAGE``; every rank exits with 2.
    Every rank must call it (the ranks have agreed on the error)."""
    errors.exit_on_every_rank(prog, message, comm)


def setup_processes(prog, args):
    """``(comm, device)``: the communicator (None without ``--distributed``)
    and this process's GPU (None with ``--no_cuda``). Switches on float64
    sums of BatchNormalization's batch statistics on the CPU
    (:func:`chainerkfac.use_float64_bn_statistics`), as every entry point does,
    and sets the BLAS threads (:mod:`chainerkfac.threads`: the communicator
    does it with ``--distributed``), saying so in one line on stderr once the
    devices are settled (an error before that stays the only line)."""
    chainerkfac.use_float64_bn_statistics()
    if args.distributed:
        comm = chainerkfac.create_communicator('mpi')
    else:
        comm = None
        chainerkfac.configure_threads()
    device = None
    if not args.no_cuda:
        device = device_module.select_gpu_or_exit(
            prog, comm, option='GPU training (the default; --no_cuda trains '
            'on the CPU)')
    name = args.communicator
    if name == 'auto':
        name = 'mpi' if device is None else 'pure_nccl'
    if comm is not None and name == 'pure_nccl':
        try:
            comm = chainerkfac.create_communicator('pure_nccl')
        except CommunicatorUnavailable as e:
            stop(prog, '--communicator pure_nccl: {}'.format(e), comm)
    threads.log_to_stderr()
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
def make_parser(prog, doc, epilog, *original):
    """``(parser, group)``: an example's parser (``doc``'s first line as its
    description), the original example's options in their group
    (:func:`add_original_options` with ``original``), and the group
    ``'options added here'`` for the example to fill."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0],
                                epilog=epilog)
    add_original_options(p.add_argument_group(
        "the original example's options"), *original)
    return p, p.add_argument_group('options added here')


def add_original_options(g, batch_size, optimizers, first_order, archs,
                         arch):
    """The original example's options on group ``g``: default
    ``batch_size``, ``--optimizer`` among ``optimizers`` (``first_order``:
    what the original trained for any value other than kfac), ``--arch``
    among ``archs`` (default ``arch``)."""
    g.add_argument('--batch_size', type=int, default=batch_size,
                   help='examples per process and step (default {})'.format(
                       batch_size))
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
    g.add_argument('--optimizer', choices=optimizers, default='kfac',
                   help='kfac, or a method to compare with (the original '
                   'trained {} for any value other than kfac: use {})'.format(
                       *first_order))
    g.add_argument('--arch', choices=sorted(archs), default=arch)
    g.add_argument('--plot', action='store_true',
                   help='loss.png and accuracy.png in --out (matplotlib)')
    g.add_argument('--distributed', action='store_true',
                   help='one process per rank under mpiexec; data split '
                   'over the ranks')


def add_optimizer_options(h, lr_help):
    """The options added here after the data ones: the hyperparameters
    (``--lr`` helped by ``lr_help``), ``--communicator`` and ``--seed``."""
    h.add_argument('--lr', type=float, default=None, help=lr_help)
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


def check_args(p, args, checks=()):
    """``p.error`` on a non-positive batch or epoch count, on the first of
    the example's ``checks`` (``(bad, message)`` pairs) that is bad, or on
    an optimizer flag given to an optimizer that does not take it."""
    if args.batch_size < 1 or args.num_epochs < 1:
        p.error('--batch_size and --num_epochs must be positive')
    for bad, message in checks:
        if bad:
            p.error(message)
    for flag, allowed in (('momentum', ('kfac', 'momentum_sgd')),
                          ('damping', ('kfac',)),
                          ('cov_ema_decay', ('kfac',)),
                          ('stale', ('kfac',))):
        if getattr(args, flag) not in (None, False) and \
                args.optimizer not in allowed:
            p.error('--{} applies to --optimizer {} only'.format(
                flag, ' or '.join(allowed)))


# --- training -------------------------------------------------------------
def load_on_rank0(prog, comm, device, load):
    """``(train, test)`` of ``load()`` on rank 0 (None elsewhere); every
    rank stops with rank 0's one line on a :class:`DataError`."""
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    train = test = error = None
    if rank == 0:
        try:
            train, test = load()
        except DataError as e:
            error = str(e)
    error = errors.agreed_error(comm, error)
    if error:
        stop(prog, error, comm)

    if rank == 0 and comm is not None:
        print('distributed: {} processes, {} communicator, {}'.format(
            size, type(comm).__name__,
            'CPU' if device is None else 'GPU'), flush=True)
    if device is not None and rank == 0:
        print(device_module.describe(device), flush=True)
    return train, test


def scatter(comm, train, test, seed):
    """``(train, test, n_train, shard_indices)``: the data of this rank
    (all of it without ``comm``), the training set's size and the global
    index of each example of this rank's shard (None without ``comm``)."""
    n_train = len(train) if comm is None or comm.rank == 0 else None
    shard_indices = None
    if comm is not None:
        n_train = comm.mpi_comm.bcast(n_train, root=0)
        train = chainermn.scatter_dataset(train, comm, shuffle=True,
                                          seed=seed)
        # the global index of each example of this rank's shard (same seed,
        # same split): a resume on another process count needs them
        shard_indices = numpy.asarray(chainermn.scatter_dataset(
            numpy.arange(n_train), comm, shuffle=True, seed=seed)[:],
            numpy.int64)
        test = chainermn.scatter_dataset(test, comm)
    return train, test, n_train, shard_indices


def build_trainer(args, comm, device, model, optimizer, train_iter,
                  test_iter, shard_indices, schedule=()):
    """``(trainer, sharded)``: the trainer with its evaluator, the
    ``schedule`` extensions (``(extension, trigger)`` pairs, on every rank),
    snapshots (sharded: distributed K-FAC's) and rank 0's reports."""
    rank = 0 if comm is None else comm.rank
    updater = training.updaters.StandardUpdater(
        train_iter, optimizer, input_device=device)
    trainer = training.Trainer(updater, (args.num_epochs, 'epoch'),
                               out=args.out)
    evaluator = extensions.Evaluator(test_iter, model, device=device)
    if comm is not None:
        evaluator = chainermn.create_multi_node_evaluator(evaluator, comm)
    trainer.extend(evaluator)
    for extension, trigger in schedule:
        trainer.extend(extension, trigger=trigger)

    interval = args.num_epochs if args.snapshot_interval == -1 \
        else max(1, args.snapshot_interval)
    sharded = comm is not None and args.optimizer == 'kfac'
    if sharded:
        # each rank holds the curvature of the blocks it owns: every rank
        # writes its part (chainerkfac.training.checkpoint)
        trainer.extend(checkpoint.ShardedSnapshot(
            comm, optimizer, rank_arrays={'shard_indices': shard_indices}),
            trigger=(interval, 'epoch'), name='snapshot')
    elif rank == 0:
        trainer.extend(extensions.snapshot(), trigger=(interval, 'epoch'))
    if rank == 0:
        trainer.extend(extensions.LogReport())
        if args.plot:
            kfac_extensions.add_plot_reports(trainer)
        trainer.extend(extensions.PrintReport(
            ['epoch', 'main/loss', 'validation/main/loss', 'main/accuracy',
             'validation/main/accuracy', 'elapsed_time']))
        trainer.extend(extensions.ProgressBar())
    return trainer, sharded


def train(prog, args, comm, device, load, make_model, make_iterators,
          schedule=()):
    """What both examples do after :func:`setup_processes`: rank 0 reads
    the data (``load()``), which is split over the ranks; the model
    (``make_model()``, initial weights from ``--seed``) goes to ``device``
    with its optimizer (:func:`build_optimizer`); ``make_iterators(train,
    test, order_sampler)`` gives the iterators; then the trainer
    (:func:`build_trainer`, with ``schedule``), ``--resume`` and the run.
    Returns the trainer."""
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    train, test = load_on_rank0(prog, comm, device, load)
    train, test, n_train, shard_indices = scatter(comm, train, test,
                                                  args.seed)
    numpy.random.seed(args.seed)   # initial weights (rank 0's are broadcast)
    model = make_model()
    if device is not None:
        model.to_device(device)    # before setup: the optimizer state too
    optimizer = build_optimizer(args, comm)
    optimizer.setup(model)
    order_rng = numpy.random.RandomState([args.seed, size, rank])
    train_iter, test_iter = make_iterators(
        train, test, chainer.iterators.ShuffleOrderSampler(order_rng))
    trainer, sharded = build_trainer(
        args, comm, device, model, optimizer, train_iter, test_iter,
        shard_indices, schedule)
    if args.resume:
        resume(prog, args, trainer, optimizer, comm, sharded, shard_indices,
               n_train, order_rng)
    run(trainer)
    return trainer


def report_final(trainer, comm, what):
    """Rank 0: ``final: WHAT on N process(es): epoch E, validation accuracy
    A, loss L`` from the last log entry."""
    if comm is not None and comm.rank != 0:
        return
    last = trainer.get_extension('LogReport').log[-1]
    print('final: {} on {} process(es): epoch {}, validation accuracy '
          '{:.4f}, loss {:.4f}'.format(
              what, 1 if comm is None else comm.size, last['epoch'],
              last['validation/main/accuracy'],
              last['validation/main/loss']), flush=True)


def run(trainer):
    """``trainer.run()`` with Chainer's DeprecationWarnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        trainer.run()


def resume(prog, args, trainer, optimizer, comm, sharded, shard_indices,
           n_train, order_rng):
    """``--resume``: a sharded snapshot directory (distributed K-FAC, on any
    number of processes) or Chainer's npz snapshot (one process, or every
    rank of a distributed first-order run reading rank 0's file)."""
    error = None
    if sharded:
        try:
            checkpoint.resume_trainer(
                args.resume, trainer, optimizer, comm, shard_indices,
                n_train, order_rng, reseed=lambda info: resharding.reseed(
                    [order_rng], info, args.seed, with_index=False))
        except checkpoint.CheckpointError as e:
            error = str(e)   # the same on every rank
    else:
        try:
            chainer.serializers.load_npz(args.resume, trainer)
        except Exception as e:   # a missing file, another model, ...
            error = errors.one_line(e)
        error = errors.agreed_error(comm, error)
    if error:
        stop(prog, '--resume {}: {}'.format(args.resume, error), comm)
