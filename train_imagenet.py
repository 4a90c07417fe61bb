#!/usr/bin/env python
"""Trains an ImageNet classifier with distributed K-FAC (Osawa et al., 2019).

    mpiexec -n N python train_imagenet.py TRAIN_LIST VAL_LIST \\
        --train_root DIR --val_root DIR \\
        [--config configs/bs4k_resnet50.json] [--arch resnet50] \\
        [--batchsize 32] [--acc_iters K] [--epoch E] \\
        [--iterations N] [--out DIR] [--resume SNAPSHOT] [--gpu]

List files hold ``relative/path label`` lines; paths are relative to
``--train_root``/``--val_root``. Rank 0 reads and checks the lists and
``chainermn.scatter_dataset`` shards them. Without ``--mean``, inputs are
normalised with the per-channel ImageNet mean and std (0-255 scale); with
``--mean mean.npy`` (``(C,)`` or a ``(C, H, W)`` mean image, whose top-left
crop is used as in the original; ``scripts/compute_mean.py`` makes one),
``x = (x - mean) / 255``.

The original code's ``examples/imagenet/configs/*.json`` load unchanged with
``--config`` (:func:`chainerkfac.training.config.resolve_config`) and its
``train.py`` flags are accepted with their meaning, overriding the
configuration (``docs/migrating.md``); ``--help`` groups them. The resolved
configuration, the original's keys given and where they went, and any
warning are written to ``<out>/config.json`` (``--config_out``). Under mixup
the log's ``main/loss`` and ``main/accuracy`` are against the batch's own
labels, as the original reported them; ``main/mixup_loss`` is the
soft-target loss that is minimised.

Snapshots are directories ``snapshot_iter_<N>/``: rank 0 writes the shared
state once (``shared.npz``: model, BN statistics, counters, schedule, log) and
every rank its own ``rank<r>.npz`` (the momentum and curvature of the blocks
it owns, its iterator and random states;
:mod:`chainerkfac.training.checkpoint`).
``--resume DIR/snapshot_iter_<N>`` works on any number of processes: on as
many as wrote it the run continues exactly; on another number the owned
state moves to the new owners and the data shards are re-split (see
:func:`resume`). Snapshots of the earlier per-rank format
(``snapshot_iter_<N>_rank<r>``, every rank the whole trainer) resume on as
many processes as wrote them. One trainer file (the original's ``--resume``
of ChainerMN's rank-0 snapshot) holds one rank's share of the optimizer's
state and is refused in one line (``--initmodel`` takes its weights).

With ``--gpu`` each rank trains on its node-local GPU (``comm.intra_rank``):
the model (and so the optimizer's state) lives there and the updater's and
evaluator's converters send each batch there; augmentation stays on the CPU.
Without a usable GPU for every rank, every rank stops with one line saying
what is missing (:mod:`chainerkfac.training.device`). The GPU path has not run
on a GPU from this repository's machines yet: ``scripts/gpu_check.sh`` is the
check to run on one.

The script is laid out by responsibility, each section a few short
functions: the command line; the configuration; the data (lists, shards,
augmentation, loaders); the model and optimizer; the trainer (what every
rank runs); reporting (rank 0's log, plots and files); resuming; and
:func:`run`, which puts them together. Its trainer extensions and triggers
are the package's (:mod:`chainerkfac.training.extensions`,
:mod:`chainerkfac.training.triggers`), shared with the examples.
"""
import argparse
import json
import multiprocessing
import os
import re
import sys
import types
import warnings

# chainerkfac before chainer: it makes Chainer 7.8.1 import on NumPy 2 (the
# CuPy 14 stack; chainerkfac/_compat.py)
import chainerkfac  # NOQA: I100
import chainer
import chainermn
import numpy
from chainer import serializers
from chainer import training
from chainer.training import extensions

from chainerkfac import errors
from chainerkfac import threads as kfac_threads
from chainerkfac.datasets import image_list
from chainerkfac.datasets.augment import BatchAugmenter
from chainerkfac.datasets.augment import RandomStateExtension
from chainerkfac.training import allocator
from chainerkfac.training import checkpoint
from chainerkfac.training import config as config_module
from chainerkfac.training import device as device_module
from chainerkfac.training import extensions as kfac_extensions
from chainerkfac.training import resharding
from chainerkfac.training import triggers
from chainerkfac.training.classifier import Classifier
from models import resnet

PROG = 'train_imagenet.py'

#: command-line options that override a configuration key of the same name
#: (ours, or the original's, mapped by chainerkfac.training.original)
CONFIG_OPTIONS = (
    'arch', 'arch_file', 'arch_name', 'batchsize', 'val_batchsize',
    'acc_iters', 'epoch', 'crop_size', 'lr', 'momentum', 'adjust_momentum',
    'damping', 'cov_ema_decay', 'stab_coeff', 'normalize_weight',
    'nw_skip_scale_comp', 'communicate_after_forward', 'lr_plan',
    'epoch_lr_decay_start', 'polynomial_decay_p', 'polynomial_epoch',
    'mixup_alpha', 'running_mixup', 're_rate', 're_area_rl', 're_area_rh',
    're_aspect_rl', 'inverse', 'fisher', 'mc_samples', 'kl_clip',
    'damping_adaptation', 'damping_adaptation_interval')

#: snapshot keys that differ between ranks (each rank's file holds its own)
RANK_LOCAL = ('updater/iterator:main', 'extensions/random_state')
OPTIMIZER_PATH = checkpoint.OPTIMIZER_PATH


class UsageError(Exception):
    """Bad input found before or at the first step; exit with its message."""


class AgreedUsageError(UsageError):
    """A UsageError every rank raises with the same message: rank 0 prints it
    once and every rank exits (no abort)."""


# --- command line ----------------------------------------------------------
def _switch(group, name, help_on, help_off):
    """``--name`` (true) and ``--no_name`` (false), both default None (the
    configuration decides)."""
    group.add_argument('--' + name, dest=name, action='store_const',
                       const=True, default=None, help=help_on)
    group.add_argument('--no_' + name, dest=name, action='store_const',
                       const=False, help=help_off)


def _floats(g, *options):
    """``--name`` (a float, default None: the configuration decides) for
    each ``(name, help)`` of ``options``."""
    for name, text in options:
        g.add_argument('--' + name, type=float, help=text)


def _data_options(p):
    """Options: the list files, their roots, normalisation and loaders."""
    g = p.add_argument_group('data')
    g.add_argument('--train_root', default='.',
                   help='directory the training list is relative to '
                   '(original; default .)')
    g.add_argument('--val_root', default='.',
                   help='directory the validation list is relative to '
                   '(original; default .)')
    g.add_argument('--mean', help='mean.npy: a (C, H, W) mean image, whose '
                   'top-left crop is subtracted, then x / 255 (original; '
                   'scripts/compute_mean.py makes one), or (C,); without '
                   'it, per-channel ImageNet mean and std (the original '
                   'always read ./mean.npy)')
    g.add_argument('--loaderjob', type=int, default=2,
                   help='loader threads or processes per process; 0: serial '
                   '(original; its default 4)')
    g.add_argument('--iterator', choices=('thread', 'process', 'serial'),
                   default='thread',
                   help="data loaders: threads, processes (forkserver, as "
                   "the original) or serial (original)")
    g.add_argument('--channels', type=int, choices=(1, 3), default=3)
    g.add_argument('--n_class', type=int,
                   help='classes of the model (default: max train label + 1)')
    g.add_argument('--skip_corrupt', action='store_true',
                   help='skip undecodable images (counted) instead of '
                   'stopping with an error naming the file')


def _configuration_options(p):
    """Options: the configuration file and where the resolved one goes."""
    g = p.add_argument_group('configuration')
    g.add_argument('--config', help='JSON configuration: configs/*.json, or '
                   "the original's examples/imagenet/configs/*.json "
                   'unchanged (original)')
    g.add_argument('--config_out', default='config.json',
                   help='name, under --out, of the resolved configuration '
                   'written at the start (original)')


def _model_options(p):
    """Options: the model and its initial weights."""
    g = p.add_argument_group('model')
    g.add_argument('--arch', help="model: resnet50, resnet50_d, resnet8, "
                   "resnet20, ...")
    g.add_argument('--arch_file', help='(original) models/resnet50_d.py '
                   '(ResNet-50-D) or models/resnet50.py (ResNet-50), with '
                   '--arch_name ResNet50')
    g.add_argument('--arch_name', help='(original) ResNet50')
    g.add_argument('--initmodel', help='(original) start from the weights '
                   'of an npz: a model, an original trainer snapshot, or a '
                   'snapshot_iter_<N> directory of this script')


def _length_options(p):
    """Options: mini-batches and how long the run is."""
    g = p.add_argument_group('mini-batch and length')
    g.add_argument('--batchsize', type=int, help='per process (original)')
    g.add_argument('--val_batchsize', type=int, help='(original)')
    g.add_argument('--acc_iters', type=int,
                   help='micro-batches per K-FAC step (original)')
    g.add_argument('--epoch', '-E', type=float, help='(original)')
    g.add_argument('--crop_size', type=int)
    g.add_argument('--iterations', type=int,
                   help='stop after this many K-FAC updates (smoke runs)')


def _optimizer_options(p):
    """Options: K-FAC's hyper-parameters."""
    g = p.add_argument_group('K-FAC optimizer')
    g.add_argument('--lr', type=float, help='initial learning rate (original)')
    g.add_argument('--momentum', type=float, help='(original)')
    _switch(g, 'adjust_momentum', 'momentum x lr_t/lr_{t-1} when the lr '
            'drops (original; on by default, and its flag could not turn it '
            'off)', 'turn the momentum adjustment off')
    g.add_argument('--damping', type=float, help='(original)')
    g.add_argument('--cov_ema_decay', type=float,
                   help='weight of the newest statistics (original)')
    g.add_argument('--stab_coeff', type=float,
                   help='BN damping multiplier (the original had no flag; '
                   'its files say 64, its runs used 16)')
    _switch(g, 'normalize_weight', 'weight rescaling, ||W|| <= sqrt(2 '
            'd_out) (original; on by default, and its flag could not turn '
            'it off)', 'turn weight rescaling off')
    g.add_argument('--nw_skip_scale_comp', action='store_const', const=True,
                   default=None, help='(original) accepted, not honoured: '
                   'the rescaling is computed every step')
    _switch(g, 'communicate_after_forward', 'reduce the A factors during '
            'the backward pass (original)', 'reduce them after the backward '
            'pass (default)')
    g = p.add_argument_group('curvature options (off by default: the '
                             "paper's K-FAC; README: what each costs)")
    g.add_argument('--inverse', choices=('cholesky', 'eigen'),
                   help="'eigen': eigenbasis preconditioning with exact "
                   'Tikhonov damping')
    g.add_argument('--fisher', choices=('empirical', 'mc'),
                   help="'mc': G/F from targets sampled from the model")
    g.add_argument('--mc_samples', type=int, help="samples of --fisher mc")
    g.add_argument('--kl_clip', type=float,
                   help='bound kappa on lr^2 sum(Delta . g)')
    _switch(g, 'damping_adaptation', 'Levenberg-Marquardt adaptive damping',
            'a fixed damping (default)')
    g.add_argument('--damping_adaptation_interval', type=int,
                   help='steps between damping adaptations')


def _schedule_options(p):
    """Options: the learning-rate schedule."""
    g = p.add_argument_group('learning-rate schedule')
    g.add_argument('--lr_plan', help="(original) 'polynomial'; any other "
                   'value: a constant lr')
    _floats(g, ('epoch_lr_decay_start',
                '(original) epoch the polynomial decay starts'),
            ('polynomial_decay_p', '(original) power p of the decay'),
            ('polynomial_epoch',
             '(original) the decay ends at max(epoch, this)'))


def _augmentation_options(p):
    """Options: mixup and random erasing."""
    g = p.add_argument_group('augmentation')
    g.add_argument('--mixup_alpha', type=float,
                   help='mixup Beta(alpha, alpha); 0: off (original)')
    _switch(g, 'running_mixup', 'mix with the previous mixed batch '
            '(original; on by default, and its flag could not turn it off)',
            'mix with a permutation of the batch instead')
    _floats(g, ('re_rate', '(original) random erasing probability'),
            ('re_area_rl', '(original) erased area fraction, low'),
            ('re_area_rh', '(original) erased area fraction, high'),
            ('re_aspect_rl', '(original) aspect ratio low (high: 1)'))


def _device_options(p):
    """Options: GPUs."""
    g = p.add_argument_group('device')
    g.add_argument('--gpu', action='store_true',
                   help='train on GPUs: each rank on its node-local device '
                   '(CuPy); stops with one line when a rank has none (the '
                   'original always used GPUs)')
    g.add_argument('--use_tensor_core', action='store_true',
                   help="with --gpu: Chainer's use_cudnn_tensor_core='always' "
                   '(no effect without cuDNN, e.g. on CuPy 14; the '
                   "original's flag did nothing)")


def _run_options(p):
    """Options: output, logging, snapshots and resuming."""
    g = p.add_argument_group('run, logging and snapshots')
    g.add_argument('--out', '-o', default='result', help='(original)')
    g.add_argument('--resume', help='a snapshot_iter_<N> directory (on any '
                   'number of processes), or a snapshot_iter_<N>_rank<r> '
                   "file of the earlier per-rank format (the original's "
                   'trainer snapshots: use --initmodel)')
    g.add_argument('--snapshot_interval', type=int, default=None,
                   help='iterations between snapshots (default: one per '
                   'epoch); one is always taken at the end')
    g.add_argument('--log_interval', type=int, default=10,
                   help='iterations between log lines')
    g.add_argument('--eval_interval', type=int, default=None,
                   help='iterations between evaluations (default: every '
                   'epoch and at the end)')
    g.add_argument('--test', action='store_true',
                   help='(original) evaluate and log every 10 iterations')
    g.add_argument('--stats', action='store_true',
                   help="(original) log the parameters' statistics "
                   '(ParameterStatistics)')
    g.add_argument('--seed', type=int, default=0)
    g.add_argument('--no_progress', action='store_true')


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog='Options marked (original) are those of the original '
        "code's examples/imagenet/train.py, with its meaning; options given "
        'here override the configuration file (the original let the file '
        'override them). docs/migrating.md maps every original option and '
        'key.')
    p.add_argument('train', help='training list file (path label per line)')
    p.add_argument('val', help='validation list file')
    for add_options in (_data_options, _configuration_options,
                        _model_options, _length_options, _optimizer_options,
                        _schedule_options, _augmentation_options,
                        _device_options, _run_options):
        add_options(p)
    return p


def parse_args(argv=None):
    """The options, and in ``args.given`` the options given on the command
    line (a file's run options do not replace them)."""
    args = build_parser().parse_args(argv)
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    args.given = sorted(vars(quiet.parse_args(argv)))
    if args.resume == '':
        args.resume = None   # the original's default
    return args


# --- configuration ---------------------------------------------------------
def build_config(args):
    """The resolved configuration (:func:`resolve_config`): ``--config``
    (either format) with the options of :data:`CONFIG_OPTIONS` over it."""
    overrides = {k: getattr(args, k) for k in CONFIG_OPTIONS
                 if getattr(args, k) is not None}
    if args.config is not None and not os.path.isfile(args.config):
        raise UsageError('--config {}: no such file'.format(args.config))
    if args.arch is not None and (args.arch_file or args.arch_name):
        raise UsageError('--arch and --arch_file/--arch_name name the model '
                         'twice; give one')
    try:
        return config_module.resolve_config(args.config, overrides)
    except ValueError as e:
        raise UsageError(str(e))


def apply_run_options(args, resolved):
    """The original's run options found in the configuration file (its
    train.py merged every key of a file into its options), where the
    command line does not give them. Returns the names applied."""
    applied = []
    for key, value in resolved.run_options.items():
        if key not in args.given:
            setattr(args, key, None if key == 'resume' and value == ''
                    else value)
            applied.append(key)
    return applied


def report_resolution(args, resolved, from_file):
    """Rank 0: the configuration's warnings, one line each, and the run
    options taken from the file."""
    for line in resolved.warnings:
        sys.stderr.write('train_imagenet.py: warning: {}\n'.format(line))
    sys.stderr.flush()
    if from_file:
        print('options from {}: {}'.format(args.config, ', '.join(
            '--{} {}'.format(k, getattr(args, k)) for k in from_file)),
            flush=True)


def configure(args, comm, device):
    """``(resolved, from_file)``: the resolved configuration and the run
    options taken from its file, applied to ``args`` (the original's
    ``--test``: evaluate and log every 10 iterations); rank 0 reports them."""
    resolved = build_config(args)
    from_file = apply_run_options(args, resolved)
    if device is not None and 'use_tensor_core' in from_file:
        device_module.configure_cudnn(args.use_tensor_core)
    if args.test:   # the original's --test: evaluate and log every 10
        for name in ('eval_interval', 'log_interval'):
            if name not in args.given:
                setattr(args, name, 10)
    if comm.rank == 0:
        report_resolution(args, resolved, from_file)
    return resolved, from_file


# --- data ------------------------------------------------------------------
def read_lists(args, comm):
    """Rank 0 reads and checks both lists; every rank gets them."""
    payload = None
    if comm.rank == 0:
        try:
            for option, root in (('--train_root', args.train_root),
                                 ('--val_root', args.val_root)):
                if not os.path.isdir(root):
                    raise UsageError('{} {}: no such directory'.format(
                        option, root))
            train = image_list.read_image_list(args.train, args.train_root,
                                               n_class=args.n_class)
            n_class = args.n_class or max(label for _, label in train) + 1
            val = image_list.read_image_list(args.val, args.val_root,
                                             n_class=n_class)
        except (ValueError, OSError) as e:
            raise UsageError(str(e))
        payload = (train, val, n_class)
    return comm.bcast_obj(payload)


def normalization(args, channels, crop_size):
    """Per-channel (or mean-image) ``mean`` and ``std`` on the 0-255 scale."""
    if args.mean is None:
        if channels == 3:
            return image_list.IMAGENET_MEAN, image_list.IMAGENET_STD
        return image_list.IMAGENET_GRAY_MEAN, image_list.IMAGENET_GRAY_STD
    try:
        mean = numpy.load(args.mean).astype(numpy.float32)
    except (OSError, ValueError) as e:
        raise UsageError('--mean {}: {}'.format(args.mean, e))
    if mean.ndim == 1 and mean.shape[0] == channels:
        return mean, (255.0,) * channels
    if mean.ndim == 3 and mean.shape[0] == channels and \
            min(mean.shape[1:]) >= crop_size:
        return mean[:, :crop_size, :crop_size], (255.0,) * channels
    raise UsageError('--mean {}: shape {} is neither ({},) nor ({}, H, W) '
                     'with H, W >= {}'.format(args.mean, mean.shape, channels,
                                              channels, crop_size))


def make_shards(args, comm, train_pairs, val_pairs, crop, mean, std):
    """``(train, val, shard_indices)``: this rank's training and validation
    datasets, and the global index of each example of its training shard
    (what ``scatter_dataset(train_pairs, shuffle=True)`` would give), kept
    in the snapshot so that a resume on another process count knows the
    data seen."""
    shard_indices = numpy.asarray(chainermn.scatter_dataset(
        numpy.arange(len(train_pairs)), comm, shuffle=True,
        seed=args.seed)[:], numpy.int64)
    train_shard = [train_pairs[i] for i in shard_indices]
    val_shard = chainermn.scatter_dataset(val_pairs, comm)
    train = image_list.UncroppedImageDataset(
        train_shard, crop, channels=args.channels,
        skip_corrupt=args.skip_corrupt)
    val = image_list.ImageListDataset(
        val_shard, crop, train=False, mean=mean, std=std,
        channels=args.channels, skip_corrupt=args.skip_corrupt)
    return train, val, shard_indices


def make_augmenter(args, config, crop, mean, std, n_class, rank):
    """The training batches' crops, flips, normalisation, mixup and random
    erasing, from random states of their own (part of the snapshot)."""
    erasing = None
    if config['random_erasing_p'] > 0:
        erasing = dict(p=config['random_erasing_p'],
                       area=tuple(config['random_erasing_area']),
                       aspect=tuple(config['random_erasing_aspect']))
    dtype = numpy.float16 if config['fp16'] else numpy.float32
    return BatchAugmenter(
        crop, mean, std, n_class, mixup_alpha=config['mixup_alpha'],
        running_mixup=config['running_mixup'], erasing=erasing,
        seed=args.seed + 7919 * (rank + 1), dtype=dtype, return_labels=True)


#: environment variables of MPI launchers (MPICH's Hydra, Open MPI, PMIx)
MPI_LAUNCHER_ENV = ('PMI_', 'PMIX_', 'HYDRA_', 'HYDI_', 'MPIR_', 'OMPI_',
                    'MPI_LOCALNRANKS', 'MPI_LOCALRANKID')


def start_loader_server():
    """Starts multiprocessing's forkserver outside MPI: without the
    launcher's environment and with ``MPI4PY_RC_INITIALIZE=false``, so that
    the loader processes, which import this script, do not initialise MPI
    (under mpiexec they would wait for the launcher)."""
    from multiprocessing import forkserver
    saved = dict(os.environ)
    try:
        for key in list(os.environ):
            if key.startswith(MPI_LAUNCHER_ENV):
                del os.environ[key]
        os.environ['MPI4PY_RC_INITIALIZE'] = 'false'
        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def make_iterators(args, config, train, val, sampler):
    """The original's ``--iterator``: loader threads (``thread``), processes
    (``process``; started by a forkserver, as the original, since forking a
    process that uses InfiniBand may crash it) or none (``serial``, also
    for ``--loaderjob 0``)."""
    kind = args.iterator if args.loaderjob > 0 else 'serial'
    batch, val_batch = config['batchsize'], config['val_batchsize']
    if kind == 'process':
        if multiprocessing.get_start_method(allow_none=True) is None:
            multiprocessing.set_start_method('forkserver')
        if multiprocessing.get_start_method() == 'forkserver':
            start_loader_server()
        return (chainer.iterators.MultiprocessIterator(
            train, batch, n_processes=args.loaderjob, order_sampler=sampler),
            chainer.iterators.MultiprocessIterator(
                val, val_batch, repeat=False, shuffle=False,
                n_processes=args.loaderjob))
    if kind == 'thread':
        return (chainer.iterators.MultithreadIterator(
            train, batch, n_threads=args.loaderjob, order_sampler=sampler),
            chainer.iterators.MultithreadIterator(
                val, val_batch, repeat=False, shuffle=False,
                n_threads=args.loaderjob))
    return (chainer.iterators.SerialIterator(train, batch,
                                             order_sampler=sampler),
            chainer.iterators.SerialIterator(val, val_batch, repeat=False,
                                             shuffle=False))


def build_data(args, config, comm, train_pairs, val_pairs, n_class, mean,
               std):
    """This rank's data: ``train`` and ``val`` (its shards), their
    iterators, ``shard_indices``, the ``augmenter``, the iterator's order
    state ``order_rng``, the whole training set's size and ``--seed``."""
    crop = config['crop_size']
    train, val, shard_indices = make_shards(args, comm, train_pairs,
                                            val_pairs, crop, mean, std)
    order_rng = numpy.random.RandomState(args.seed + 1000 * (comm.rank + 1))
    sampler = chainer.iterators.ShuffleOrderSampler(order_rng)
    train_iter, val_iter = make_iterators(args, config, train, val, sampler)
    augmenter = make_augmenter(args, config, crop, mean, std, n_class,
                               comm.rank)
    return types.SimpleNamespace(
        train=train, val=val, train_iter=train_iter, val_iter=val_iter,
        shard_indices=shard_indices, augmenter=augmenter,
        order_rng=order_rng, dataset_size=len(train_pairs), seed=args.seed)


# --- model and optimizer ---------------------------------------------------
def build_model(config, n_class, channels):
    kwargs = {}
    if config['arch'] not in ('resnet50', 'resnet50_d'):
        kwargs['in_channels'] = channels
    elif channels != 3:
        raise UsageError('--arch {} needs 3 input channels'.format(
            config['arch']))
    dtype = numpy.float16 if config['fp16'] else numpy.float32
    try:
        with chainer.using_config('dtype', dtype):
            return Classifier(resnet.get_model(config['arch'], n_class,
                                               **kwargs))
    except ValueError as e:
        raise UsageError(str(e))


def build_optimizer(config, comm, model):
    optimizer = chainerkfac.DistributedKFAC(
        comm, lr=config['lr'], momentum=config['momentum'],
        damping=config['damping'], cov_ema_decay=config['cov_ema_decay'],
        stab_coeff=config['stab_coeff'], bn_fisher=config['bn_fisher'],
        pi_type=config['pi_type'], acc_iters=config['acc_iters'],
        adjust_momentum=config['adjust_momentum'],
        loss_scale=config['loss_scale'], stale=config['stale'],
        **({'stale_threshold': config['stale_threshold'],
            'stale_max_interval': config['stale_max_interval'],
            'stale_warmup': config['stale_warmup'],
            'stale_growth': config['stale_growth'],
            'stale_loss_ratio': config['stale_loss_ratio']} if config['stale']
           else {}),
        comm_dtype=config['comm_dtype'], assignment=config['assignment'],
        communicate_after_forward=config['communicate_after_forward'],
        inverse=config['inverse'], fisher=config['fisher'],
        mc_samples=config['mc_samples'], kl_clip=config['kl_clip'],
        damping_adaptation=config['damping_adaptation'],
        damping_adaptation_interval=config['damping_adaptation_interval'],
        damping_bounds=tuple(config['damping_bounds']))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        optimizer.setup(model)
    if config['fp16']:
        optimizer.use_fp32_update()
    if config['weight_decay'] > 0:
        optimizer.add_hook(chainer.optimizer_hooks.WeightDecay(
            config['weight_decay']))
    if config['weight_rescaling']:
        kfac_extensions.add_weight_rescaling(model.predictor)
    return optimizer


#: where a model's arrays may sit in an ``--initmodel`` npz: ours
#: (``snapshot_iter_<N>/shared.npz``, a saved Classifier), the original's
#: trainer snapshot (its model held no predictor), a bare model
INITMODEL_PREFIXES = ('updater/model:main/predictor/', 'predictor/',
                      'updater/model:main/', '')


def load_initmodel(model, path):
    """The original's ``--initmodel``: the predictor's parameters and BN
    statistics from an npz (a ``snapshot_iter_<N>`` directory: its
    ``shared.npz``). Returns the prefix they were found under."""
    if os.path.isdir(path):
        path = os.path.join(path, checkpoint.SHARED)
    try:
        with numpy.load(path) as f:
            keys = set(f.files)
    except (OSError, ValueError) as e:
        raise UsageError('--initmodel {}: {}'.format(path, e))
    names = [name.lstrip('/') for name, _ in model.predictor.namedparams()]
    for prefix in INITMODEL_PREFIXES:
        if all(prefix + name in keys for name in names):
            break
    else:
        raise UsageError(
            "--initmodel {}: no parameters of this model in it (looked for "
            "{} under {}); is --arch the model it was saved from?".format(
                path, names[0], ', '.join(repr(p) for p in
                                          INITMODEL_PREFIXES)))
    try:
        serializers.load_npz(path, model.predictor, path=prefix)
    except (KeyError, ValueError, TypeError) as e:
        raise UsageError('--initmodel {} does not match this model ({}; '
                         'its classes: --n_class)'.format(
                             path, errors.one_line(e)))
    return prefix


def build_model_and_optimizer(args, config, comm, device, n_class):
    """The model (rank 0's initial weights are broadcast at the first update;
    ``--initmodel``'s, if given), on ``device``, and its optimizer."""
    numpy.random.seed(args.seed)   # initial weights (rank 0's are broadcast)
    model = build_model(config, n_class, args.channels)
    if args.initmodel:
        prefix = load_initmodel(model, args.initmodel)
        if comm.rank == 0:
            print('initmodel: loaded {} ({})'.format(
                args.initmodel, "under '{}'".format(prefix) if prefix
                else 'a model'), flush=True)
    if device is not None:
        model.to_device(device)   # before setup: the state lives there too
    return model, build_optimizer(config, comm, model)


# --- trainer ---------------------------------------------------------------
def build_trainer(args, config, comm, device, model, optimizer, data):
    """``(trainer, is_last, iters_per_epoch)``: the trainer with what every
    rank runs (:func:`add_every_rank_extensions`), ending at ``is_last``."""
    dtype = numpy.float16 if config['fp16'] else numpy.float32

    def val_converter(batch, device=None):
        x, t = chainer.dataset.concat_examples(batch)
        return x.astype(dtype, copy=False), t

    updater = training.StandardUpdater(
        data.train_iter, optimizer,
        converter=device_module.on_device(data.augmenter, device))
    iters_per_epoch = len(data.train) / config['batchsize']
    is_last = triggers.LastIteration(triggers.last_iteration(
        args.iterations, config['epoch'], config['acc_iters'],
        iters_per_epoch))
    trainer = training.Trainer(updater, (is_last.last, 'iteration'),
                               out=args.out)
    evaluator = extensions.Evaluator(
        data.val_iter, model,
        converter=device_module.on_device(val_converter, device))
    add_every_rank_extensions(trainer, args, config, comm, optimizer,
                              evaluator, data, is_last)
    return trainer, is_last, iters_per_epoch


def add_every_rank_extensions(trainer, args, config, comm, optimizer,
                              evaluator, data, is_last):
    """The learning-rate schedule, the random states, the multi-node
    evaluation, the sharded snapshot and the communication volume, in this
    order (their names are snapshot keys)."""
    schedule = kfac_extensions.make_lr_schedule(config, optimizer=optimizer)
    if schedule is not None:
        trainer.extend(schedule)
    trainer.extend(RandomStateExtension(augmenter=data.augmenter,
                                        order=data.order_rng),
                   name='random_state')
    eval_trigger = (
        triggers.any_of((args.eval_interval, 'iteration'), is_last)
        if args.eval_interval else triggers.any_of((1, 'epoch'), is_last))
    trainer.extend(chainermn.create_multi_node_evaluator(evaluator, comm),
                   trigger=eval_trigger, name='validation')
    snapshot_trigger = triggers.any_of(
        (args.snapshot_interval, 'iteration') if args.snapshot_interval
        else (1, 'epoch'), is_last)
    trainer.extend(checkpoint.ShardedSnapshot(
        comm, optimizer, optimizer_path=OPTIMIZER_PATH, rank_local=RANK_LOCAL,
        rank_arrays={'shard_indices': data.shard_indices}),
        trigger=snapshot_trigger, name='snapshot')
    trainer.extend(kfac_extensions.CommunicationVolume(comm,
                                                       config['acc_iters']))


# --- reporting (rank 0) ----------------------------------------------------
#: the columns of the printed log
PRINTED = ['epoch', 'iteration', 'main/loss', 'main/mixup_loss',
           'main/accuracy', 'validation/main/loss',
           'validation/main/accuracy', 'lr', 'kfac/refresh_fraction',
           'comm/MB_per_update', 'elapsed_time']


def add_reports(trainer, args, model, optimizer, is_last):
    """Rank 0's log (every ``--log_interval`` iterations and at the end),
    printed columns, plots (loss, accuracy, lr), ``--stats`` and the
    progress bar."""
    def log_trigger():  # a fresh one per extension: triggers keep state
        return triggers.any_of((args.log_interval, 'iteration'), is_last)
    trainer.extend(extensions.observe_lr(), trigger=log_trigger())
    trainer.extend(extensions.observe_value(
        'damping', lambda t: optimizer.damping), trigger=log_trigger())
    trainer.extend(extensions.LogReport(trigger=log_trigger()))
    if args.stats:   # the original's --stats: summarised every
        # iteration, reported with the log
        trainer.extend(extensions.ParameterStatistics(
            model.predictor, trigger=log_trigger()))
    trainer.extend(extensions.PrintReport(PRINTED), trigger=log_trigger())
    kfac_extensions.add_plot_reports(trainer, 'iteration',
                                     trigger=log_trigger,
                                     extra=[(['lr'], 'lr.png')])
    if not args.no_progress:
        trainer.extend(extensions.ProgressBar(update_interval=1))


def write_resolved_config(args, resolved, from_file, comm, n_class, config,
                          train_pairs, val_pairs):
    """Rank 0: ``<out>/<config_out>``, the resolved configuration, the
    original's keys given and where they went, the warnings, the options
    taken from the file, every option and the run's sizes."""
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, args.config_out), 'w') as f:
        json.dump({'config': config,
                   'original_keys': resolved.original,
                   'warnings': resolved.warnings,
                   'options_from_config': from_file,
                   'args': vars(args),
                   'n_processes': comm.size, 'n_class': n_class,
                   'global_batchsize': config['batchsize'] * comm.size
                   * config['acc_iters'],
                   'train_examples': len(train_pairs),
                   'val_examples': len(val_pairs)}, f, indent=2)


def train_and_report(trainer, args, data, rank):
    """Runs the trainer; rank 0 prints the last validation's accuracy and
    loss, every rank the corrupt images it skipped (``--skip_corrupt``)."""
    try:
        trainer.run(show_loop_exception_msg=False)
    except image_list.CorruptImageError as e:
        raise UsageError('{} (use --skip_corrupt to skip and count such '
                         'images)'.format(e))
    if rank == 0:
        entries = [e for e in trainer.get_extension('LogReport').log
                   if 'validation/main/accuracy' in e]
        if entries:
            print('final: iteration {} validation accuracy {:.4f} loss {:.4f}'
                  .format(entries[-1]['iteration'],
                          entries[-1]['validation/main/accuracy'],
                          entries[-1]['validation/main/loss']))
    train, val = data.train, data.val
    if args.skip_corrupt and (train.n_skipped or val.n_skipped):
        print('rank {}: skipped {} corrupt images'.format(
            rank, train.n_skipped + val.n_skipped))


# --- resuming --------------------------------------------------------------
def resume_path(path, rank):
    """This rank's file for ``--resume`` given any rank's file of the
    earlier per-rank format."""
    match = re.match(r'^(.*_rank)\d+$', path)
    if match is None:
        raise UsageError('--resume {}: expected a snapshot_iter_<N> '
                         'directory written by this script'.format(path))
    return '{}{}'.format(match.group(1), rank)


def legacy_processes(path):
    """Number of ``<prefix>_rank<r>`` files beside ``path`` (earlier
    per-rank format)."""
    directory, name = os.path.split(path)
    prefix = re.match(r'^(.*_rank)\d+$', name).group(1)
    pattern = re.compile(re.escape(prefix) + r'\d+$')
    return sum(1 for f in os.listdir(directory or '.') if pattern.match(f))


def snapshot_directory(path):
    """The snapshot directory ``--resume`` names (the directory, or one of
    its files), or None for a file of the earlier per-rank format."""
    path = os.path.normpath(path)
    if os.path.isdir(path):
        return path
    name = os.path.basename(path)
    if name == checkpoint.SHARED or re.match(r'^rank\d+\.npz$', name):
        return os.path.dirname(path)
    if re.match(r'^.*_rank\d+$', name):
        return None
    return path   # load() says what is wrong with it


def resume_legacy(trainer, path, comm):
    """A snapshot of the earlier format: every rank loads its own file, on
    as many processes as wrote them."""
    written = legacy_processes(path) if os.path.isdir(
        os.path.dirname(path) or '.') else 0
    if written and written != comm.size:
        raise AgreedUsageError(
            '--resume {}: a per-rank snapshot of the earlier format, written '
            'by {} processes, resumes only on {} processes, not on {} '
            '(snapshots written by this version resume on any number)'.format(
                path, written, written, comm.size))
    own = resume_path(path, comm.rank)
    if not os.path.isfile(own):
        raise UsageError('--resume: no snapshot {} for rank {} (was the '
                         'run made with as many processes?)'.format(
                             own, comm.rank))
    try:
        with warnings.catch_warnings():
            # the triggers inside AnyOf were not saved by the earlier format;
            # IntervalTrigger then guesses their state right (each is called
            # every iteration) but warns
            warnings.filterwarnings('ignore', 'The previous value of',
                                    UserWarning)
            serializers.load_npz(own, trainer)
    except (KeyError, ValueError, TypeError) as e:
        raise UsageError('--resume {} does not match this model and '
                         'configuration ({})'.format(own, errors.one_line(e)))


#: what ``--resume`` adds when it is given one file (a trainer snapshot)
INITMODEL_HINT = ('; to start from its weights instead, give it as '
                  '--initmodel')


def resume(trainer, path, comm, optimizer, data):
    """Loads ``--resume``; on another number of processes than wrote it,
    re-splits the data.

    What a resumed run on another process count keeps: the model, BN
    statistics, the optimizer's step counter and refresh schedule, every
    block's momentum, EMAs, inverses and damping floors (on its new owner),
    the plain parameters' momentum, the iteration and epoch counters, the
    log, and the epoch fraction reached (to one example of the new shard),
    hence the learning-rate schedule (a function of the epoch). What it
    cannot keep: the exact sample order and each rank's augmentation draws
    (the shards change; each rank's random states are reseeded from
    ``--seed``, the process count, its rank and the iteration, so a resume
    repeats), and, with the same per-process batch size, the global batch.
    The rest of the interrupted epoch draws each new shard's examples that
    no rank drew yet in this epoch first
    (:func:`chainerkfac.training.resharding.reposition_iterator`); running
    mixup's partner batch is old rank ``r % N``'s last batch.

    A file that is not of the earlier per-rank format (a trainer snapshot
    one rank wrote, as the original's ``--resume`` took) is refused in one
    line: it holds one rank's share of the optimizer's state.
    """
    directory = snapshot_directory(path)
    if directory is None:
        return resume_legacy(trainer, path, comm)
    augmenter = data.augmenter

    def reseed(info):
        rngs = [data.order_rng, augmenter.rng, augmenter.erasing_rng]
        if augmenter.mixup is not None:
            rngs.append(augmenter.mixup.rng)
        resharding.reseed(rngs, info, data.seed)
    try:
        return checkpoint.resume_trainer(
            directory, trainer, optimizer, comm, data.shard_indices,
            data.dataset_size, data.order_rng, reseed=reseed,
            optimizer_path=OPTIMIZER_PATH, rank_local=RANK_LOCAL)
    except checkpoint.CheckpointError as e:
        hint = INITMODEL_HINT if os.path.isfile(directory) else ''
        raise AgreedUsageError('--resume {}: {}{}'.format(path, e, hint))


def resume_run(trainer, args, config, comm, optimizer, data, is_last,
               iters_per_epoch):
    """``--resume``; on another number of processes, the run's end moves to
    this count's iterations (:func:`~chainerkfac.training.triggers.
    last_iteration_after_resume`) and rank 0 says what was kept."""
    info = resume(trainer, args.resume, comm, optimizer, data)
    if info is None or info.same_layout:
        return
    updater = trainer.updater
    is_last.last = triggers.last_iteration_after_resume(
        args.iterations, config['epoch'], config['acc_iters'], updater,
        iters_per_epoch)
    trainer.stop_trigger = training.triggers.IntervalTrigger(
        is_last.last, 'iteration')
    per_step = config['batchsize'] * config['acc_iters']
    if comm.rank == 0:
        print('resumed {} (iteration {}, written by {} processes) on '
              '{} processes: model, optimizer state (on the new '
              'owners) and counters restored; data re-split at epoch '
              '{:.4f}; global batch {} -> {}; run ends at iteration '
              '{}'.format(info.directory, info.iteration,
                          info.old_size, comm.size, updater.epoch_detail,
                          per_step * info.old_size, per_step * comm.size,
                          is_last.last),
              flush=True)


# --- the run --------------------------------------------------------------
def run(args, comm, device=None):
    """Trains as the options say (every rank); returns the trainer."""
    resolved, from_file = configure(args, comm, device)
    config = resolved.config
    train_pairs, val_pairs, n_class = read_lists(args, comm)
    mean, std = normalization(args, args.channels, config['crop_size'])
    model, optimizer = build_model_and_optimizer(args, config, comm, device,
                                                 n_class)
    data = build_data(args, config, comm, train_pairs, val_pairs, n_class,
                      mean, std)
    trainer, is_last, iters_per_epoch = build_trainer(
        args, config, comm, device, model, optimizer, data)
    if comm.rank == 0:
        add_reports(trainer, args, model, optimizer, is_last)
        write_resolved_config(args, resolved, from_file, comm, n_class,
                              config, train_pairs, val_pairs)
    if args.resume:
        resume_run(trainer, args, config, comm, optimizer, data, is_last,
                   iters_per_epoch)
    train_and_report(trainer, args, data, comm.rank)
    return trainer


def select_device(args, comm):
    """``--gpu``: this rank's node-local GPU (every rank stops with one line
    when a rank has none), rank 0 saying which; None on the CPU."""
    if not args.gpu:
        return None
    device = device_module.select_gpu_or_exit(
        PROG, comm, use_tensor_core=args.use_tensor_core)
    if comm.rank == 0:
        print('rank 0 of {}: {} (every rank: its node-local GPU)'.format(
            comm.size, device_module.describe(device)), flush=True)
    return device


def main(argv=None):
    allocator.configure_allocator()  # reuse freed host memory (no-op on GPU)
    # CPU BN batch sums in float64 (README)
    chainerkfac.use_float64_bn_statistics()
    args = parse_args(argv)
    comm = chainerkfac.create_communicator('mpi')
    device = select_device(args, comm)
    kfac_threads.log_to_stderr()  # create_communicator's BLAS-threads line
    try:
        return run(args, comm, device)
    except (AgreedUsageError, checkpoint.CheckpointError,
            errors.ForeignSnapshotError) as e:
        # every rank has the same message: one line, no abort
        errors.exit_on_every_rank(PROG, e, comm)
    except UsageError as e:
        sys.stderr.write('{}: error (rank {}): {}\n'.format(
            PROG, comm.rank, e))
        sys.stderr.flush()
        if comm.size > 1:
            comm.mpi_comm.Abort(2)
        sys.exit(2)


if __name__ == '__main__':
    main()
