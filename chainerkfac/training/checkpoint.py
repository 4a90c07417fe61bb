"""Sharded snapshots: the shared state written once, each rank's owned state
beside it, resumable on any number of processes.

In :class:`~chainerkfac.DistributedKFAC` the momentum and the curvature of a
Fisher block (EMAs, damped inverses, damping floors, its parameters' update
rules: ``v``, ``t``, ``lr_prev``) live on the block's owner only, while the
parameters, the BN statistics, the refresh schedule, the step counter and
everything else a trainer holds are identical on every rank. A snapshot is a
directory::

    snapshot_iter_<N>/
        shared.npz      rank 0: every key that is neither owned nor rank-local
        rank<r>.npz     rank r: the owned keys of the blocks r owns, and r's
                        rank-local keys (iterator position and order, random
                        states: ``rank_local`` prefixes) and ``rank_arrays``

The keys are those of the target's ``serialize`` (a trainer's, e.g.
``updater/model:main/...``), so merging the files gives what Chainer's own
snapshot would hold, less the empty placeholders of blocks owned elsewhere.
Every file carries ``_checkpoint/`` metadata: format and version, iteration,
number of processes, its rank (-1 for the shared file) and the token of the
save; ``shared.npz`` also lists the blocks and their owners, where the
optimizer sits in the target (``optimizer_path``) and the rank-local
prefixes.

Defaults are the safe ones. For a trainer the optimizer's path is found in
its updater (``updater/optimizer:main``) and every iterator of the updater is
rank-local (``updater/iterator:<name>``: each rank resumes its own position
and order); :func:`load` reads both from the snapshot, so only a caller who
gives other values than the snapshot's is stopped (one line saying so).

Writes never destroy a checkpoint: every rank writes into
``snapshot_iter_<N>.partial-<token>/`` (each file under a temporary name,
then renamed), the ranks agree that all files were written, and rank 0 then
renames the directory to its final name (an existing directory of that name
is first renamed to ``.old-<token>`` and removed after the new one is in
place). A crash leaves the previous snapshot intact or both complete sets.

:func:`load` checks the set before reading anything (the shared file and
every rank file present, all of the same save), then reads the shared state
on every rank (rank 0 reads the file and broadcasts its bytes) and each
block's owned state from its old owner's file on the block's new owner,
under the assignment of the current number of processes; on another number
of processes than wrote it, see :mod:`~chainerkfac.training.resharding`
(where each key comes from, the data iterator, the random states), and
:func:`resume_trainer` for a trainer. One file (a trainer snapshot one rank
wrote) is refused: it holds one rank's blocks only. Every problem ends every
rank with the same one-line :class:`CheckpointError`.
"""
import io
import os
import shutil
import uuid

import chainer
import numpy
from chainer import training
from chainer.serializers import npz as chainer_npz

from chainerkfac import assignment as assignment_module
from chainerkfac import errors
from chainerkfac.training._snapshot import agree  # NOQA: F401 (public here)
from chainerkfac.training._snapshot import CheckpointError
from chainerkfac.training._snapshot import EXTRA  # NOQA: F401
from chainerkfac.training._snapshot import FORMAT
from chainerkfac.training._snapshot import META
from chainerkfac.training._snapshot import mpi_of
from chainerkfac.training._snapshot import rank_file
from chainerkfac.training._snapshot import rank_size
from chainerkfac.training._snapshot import scalar
from chainerkfac.training._snapshot import SHARED
from chainerkfac.training._snapshot import VERSION
from chainerkfac.training import resharding
from chainerkfac.training.resharding import remaining_epoch_order  # NOQA: F401 (public here)
from chainerkfac.training.resharding import reposition_iterator
from chainerkfac.training.resharding import Resume

#: where a trainer's serialize holds its (main) optimizer
OPTIMIZER_PATH = 'updater/optimizer:main'
#: the key prefix of a trainer's iterator ``<name>``: ``ITERATOR + name``
ITERATOR = 'updater/iterator:'
#: largest piece of one MPI broadcast of the shared file's bytes
_BCAST_CHUNK = 1 << 30


# --- which key goes where -------------------------------------------------
def optimizer_path_of(target, optimizer):
    """Where ``optimizer`` sits in ``target.serialize``: ``''`` for the
    optimizer itself, ``updater/optimizer:<name>`` in a trainer whose updater
    holds it under ``name``.

    Raises:
        CheckpointError: another target (pass ``optimizer_path``).
    """
    if target is optimizer:
        return ''
    updater = getattr(target, 'updater', None)
    if updater is not None and hasattr(updater, 'get_all_optimizers'):
        for name, held in sorted(updater.get_all_optimizers().items()):
            if held is optimizer:
                return 'updater/optimizer:' + name
    raise CheckpointError(
        'cannot tell where the optimizer sits in the serialize of {} (not a '
        'trainer holding it): pass optimizer_path, the path of its keys (a '
        "trainer's: {!r})".format(type(target).__name__, OPTIMIZER_PATH))


def rank_local_of(target):
    """The default rank-local prefixes: every iterator of a trainer's updater
    (``updater/iterator:<name>``); none for another target."""
    updater = getattr(target, 'updater', None)
    if updater is None or not hasattr(updater, 'get_iterator'):
        return ()
    # Chainer's updaters keep them in _iterators (and have no public list)
    names = sorted(getattr(updater, '_iterators', None) or ('main',))
    return tuple(ITERATOR + name for name in names)


def block_owners(optimizer, size):
    """Owner rank of each of ``optimizer.fisher_blocks`` on ``size``
    processes: the assignment :class:`~chainerkfac.DistributedKFAC` makes at
    its first update (a deterministic function of the model and ``size``)."""
    blocks = optimizer.fisher_blocks
    if size == 1:
        return [0] * len(blocks)
    owners = getattr(optimizer, 'owners', None)
    communicator = getattr(optimizer, 'communicator', None)
    if owners is not None and communicator is not None and \
            communicator.size == size:
        return list(owners)
    return assignment_module.block_owners(
        blocks, size, getattr(optimizer, 'assignment', 'balanced'))


def _join(*parts):
    return '/'.join(p.strip('/') for p in parts if p.strip('/')) + '/'


class Layout(object):
    """Classifies the keys of a target's ``serialize``: the owned keys of
    each block (its ``fisher_blocks/<name>/`` entries and its parameters'
    update rules under ``optimizer_path``), rank-local keys (under one of
    the ``rank_local`` prefixes) and shared keys (the rest)."""

    def __init__(self, optimizer, optimizer_path='', rank_local=()):
        self.blocks = list(optimizer.fisher_blocks)
        self._block_of = {}
        index = {id(p): i for i, b in enumerate(self.blocks)
                 for p in b.params}
        for name, param in optimizer.target.namedparams():
            i = index.get(id(param))
            if i is not None:
                self._block_of[_join(optimizer_path, name)] = i
        for i, block in enumerate(self.blocks):
            self._block_of[_join(optimizer_path, 'fisher_blocks',
                                 block.name.strip('/') or 'root')] = i
        self.optimizer_path = optimizer_path
        self.rank_local = tuple(_join(p) for p in rank_local)

    def block_of(self, key):
        """Index of the block owning ``key``, or None."""
        if '/' not in key:
            return None
        return self._block_of.get(key.rsplit('/', 1)[0] + '/')

    def is_rank_local(self, key):
        return key.startswith(self.rank_local)


# --- serializers ----------------------------------------------------------
def _to_host(value):
    if value is None:
        return numpy.asarray(None)
    if isinstance(value, (numpy.ndarray, numpy.generic)) or \
            numpy.isscalar(value):
        return numpy.asarray(value)
    return chainer.backend.CpuDevice().send(value)


class _Collector(chainer.serializer.Serializer):
    """Serializer keeping the keys ``accept(key)`` accepts (host copies)."""

    def __init__(self, accept, target=None, path=''):
        self.accept = accept
        self.target = {} if target is None else target
        self.path = path

    def __getitem__(self, key):
        return _Collector(self.accept, self.target,
                          self.path + key.strip('/') + '/')

    def __call__(self, key, value):
        key = self.path + key.lstrip('/')
        if self.accept(key):
            self.target[key] = _to_host(value)
        return value


class _Router(chainer.serializer.Deserializer):
    """Deserializer reading each key from the mapping ``route(key)`` returns
    as ``(mapping, lenient)`` (a None mapping: the key is left as the object
    has it; ``lenient``: so is an array whose saved shape differs)."""

    def __init__(self, route, path=''):
        self.route = route
        self.path = path

    def __getitem__(self, key):
        return _Router(self.route, self.path + key.strip('/') + '/')

    def __call__(self, key, value):
        key = self.path + key.lstrip('/')
        source, lenient = self.route(key)
        if source is None:
            return value
        if lenient and key in source and value is not None and \
                numpy.shape(source[key]) != numpy.shape(value):
            return value
        return chainer_npz.NpzDeserializer(source, path='', strict=True)(
            key, value)


def collect(target, accept):
    """``{key: host array}`` of the keys of ``target.serialize`` that
    ``accept(key)`` accepts."""
    collector = _Collector(accept)
    target.serialize(collector)
    return collector.target


# --- writing ----------------------------------------------------------------
def _write_npz(path, arrays):
    """``numpy.savez`` to a temporary name, flushed to disk, then renamed."""
    tmp = '{}.tmp-{}'.format(path, os.getpid())
    with open(tmp, 'wb') as f:
        numpy.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return os.path.getsize(path)


def _meta(iteration, size, rank, token):
    return {META + 'format': numpy.asarray(FORMAT),
            META + 'version': numpy.asarray(VERSION),
            META + 'iteration': numpy.asarray(int(iteration)),
            META + 'n_processes': numpy.asarray(int(size)),
            META + 'rank': numpy.asarray(int(rank)),
            META + 'token': numpy.asarray(token)}


def _layout(target, optimizer, optimizer_path, rank_local):
    """The :class:`Layout` of a save, ``None`` arguments by their defaults
    (:func:`optimizer_path_of`, :func:`rank_local_of`)."""
    if optimizer_path is None:
        optimizer_path = optimizer_path_of(target, optimizer)
    if rank_local is None:
        rank_local = rank_local_of(target)
    return Layout(optimizer, optimizer_path, rank_local)


def _collect_rank_file(target, layout, mine):
    """This rank's keys: the owned keys of the blocks ``mine`` and the
    rank-local keys. Raises when no key of the target is a block's (the
    owned state would be lost)."""
    found = []

    def owned_or_local(key):
        if layout.is_rank_local(key):
            return True
        block = layout.block_of(key)
        found.append(block is not None)
        return block in mine

    arrays = collect(target, owned_or_local)
    if layout.blocks and not any(found):
        raise CheckpointError(
            'no key of the target is a Fisher block\'s under optimizer_path '
            '{!r}: the optimizer\'s state would not be saved; give the path '
            'of its keys'.format(layout.optimizer_path))
    return arrays


def write_files(directory, target, optimizer, rank, size, token, iteration,
                optimizer_path=None, rank_local=None, rank_arrays=None):
    """Writes rank ``rank``'s file (and, on rank 0, the shared file) into
    ``directory``; no communication. Returns ``{file name: bytes}``.

    Args:
        target: the object whose ``serialize`` holds everything (a trainer).
        optimizer: the K-FAC optimizer inside it, at ``optimizer_path``
            (None: found in a trainer, :func:`optimizer_path_of`).
        rank, size: this process and the number of processes.
        token (str): the same on every rank for one save.
        iteration (int): recorded in every file.
        rank_local: key prefixes of per-rank state (iterators, random
            states); None: every iterator of a trainer's updater
            (:func:`rank_local_of`).
        rank_arrays (dict): extra per-rank arrays (e.g. the global indices of
            this rank's data shard), read back with :meth:`Resume.rank_array`.
    """
    layout = _layout(target, optimizer, optimizer_path, rank_local)
    owners = block_owners(optimizer, size)
    mine = set(i for i, r in enumerate(owners) if r == rank)
    arrays = _collect_rank_file(target, layout, mine)
    arrays.update(_meta(iteration, size, rank, token))
    arrays[META + 'owned'] = numpy.array(
        [layout.blocks[i].name for i in sorted(mine)], dtype=str)
    for name, value in (rank_arrays or {}).items():
        arrays[EXTRA + name] = _to_host(value)
    written = {rank_file(rank): _write_npz(
        os.path.join(directory, rank_file(rank)), arrays)}
    del arrays
    if rank == 0:
        def shared(key):
            return not layout.is_rank_local(key) and \
                layout.block_of(key) is None
        arrays = collect(target, shared)
        arrays.update(_meta(iteration, size, -1, token))
        arrays[META + 'blocks'] = numpy.array(
            [b.name for b in layout.blocks], dtype=str)
        arrays[META + 'owners'] = numpy.asarray(owners, numpy.int64)
        arrays[META + 'optimizer_path'] = numpy.asarray(layout.optimizer_path)
        arrays[META + 'rank_local'] = numpy.array(layout.rank_local,
                                                  dtype=str)
        written[SHARED] = _write_npz(os.path.join(directory, SHARED), arrays)
    return written


def save(directory, target, optimizer, comm=None, iteration=None,
         optimizer_path=None, rank_local=None, rank_arrays=None):
    """Writes a sharded snapshot to ``directory`` (collective: every rank
    calls it). See :func:`write_files` for the arguments; ``iteration``
    defaults to ``optimizer.t``.

    Returns:
        dict: ``{file name: bytes}`` this rank wrote.

    Raises:
        CheckpointError: on every rank, when any rank could not write its
            file or the directory could not be put in place; a directory
            that already held a complete snapshot still does.
    """
    rank, size = rank_size(comm)
    mpi = mpi_of(comm)
    iteration = optimizer.t if iteration is None else iteration
    token = uuid.uuid4().hex
    if mpi is not None:
        token = mpi.bcast(token, root=0)
    directory = os.path.normpath(directory)
    staging = '{}.partial-{}'.format(directory, token[:12])
    error, written = None, {}
    try:
        os.makedirs(staging, exist_ok=True)
        written = write_files(staging, target, optimizer, rank, size, token,
                              iteration, optimizer_path, rank_local,
                              rank_arrays)
    except Exception as e:   # agreed below: no rank is left waiting
        error = 'snapshot {}: rank {} could not write its file ({})'.format(
            directory, rank, errors.one_line(e))
    try:
        agree(comm, error)
    except CheckpointError:
        if rank == 0:   # every rank is past its writes
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if rank == 0:
        error = _publish(staging, directory, size, token)
    agree(comm, error)
    return written


def _publish(staging, directory, size, token):
    """Rank 0: renames the complete staging directory to ``directory``;
    an error message or None."""
    missing = [rank_file(r) for r in range(size)
               if not os.path.exists(os.path.join(staging, rank_file(r)))]
    if missing:
        return ('snapshot {}: rank 0 does not see {} written by the other '
                'ranks: the output directory must be on a file system every '
                'rank shares'.format(directory, missing[0]))
    old = None
    try:
        if os.path.exists(directory):
            old = '{}.old-{}'.format(directory, token[:12])
            os.rename(directory, old)
        os.rename(staging, directory)
    except OSError as e:
        return 'snapshot {}: could not put it in place ({})'.format(
            directory, errors.one_line(e))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return None


class ShardedSnapshot(training.Extension):
    """Trainer extension: :func:`save` of the trainer to
    ``<out>/<filename>`` (``filename`` formatted with the trainer, default
    ``snapshot_iter_<iteration>``). Every rank must run it at the same
    iterations (give all ranks the same trigger).

    ``optimizer_path`` None: the path of ``optimizer`` in the trainer's
    updater (``updater/optimizer:main``); ``rank_local`` None: every iterator
    of the updater (each rank's position and order are its own); give
    further per-rank state (random states) with the iterators'
    prefixes."""

    trigger = 1, 'epoch'
    priority = -100   # after the other extensions, as Chainer's snapshot

    def __init__(self, comm, optimizer, optimizer_path=None, rank_local=None,
                 rank_arrays=None,
                 filename='snapshot_iter_{.updater.iteration}'):
        self.comm = comm
        self.optimizer = optimizer
        self.optimizer_path = optimizer_path
        self.rank_local = None if rank_local is None else tuple(rank_local)
        self.rank_arrays = rank_arrays
        self.filename = filename
        #: ``{file name: bytes}`` this rank wrote at the last snapshot
        self.last_written = {}

    def __call__(self, trainer):
        directory = os.path.join(trainer.out, self.filename.format(trainer))
        self.last_written = save(
            directory, trainer, self.optimizer, self.comm,
            trainer.updater.iteration, self.optimizer_path, self.rank_local,
            self.rank_arrays)


# --- reading ----------------------------------------------------------------
def _shared_file_problem(directory):
    """Rank 0: why ``directory`` holds no shared file to read, or None."""
    if os.path.isfile(directory):
        return ('{} is one file, not a sharded snapshot directory: a trainer '
                'snapshot one rank wrote (ChainerMN\'s rank-0 snapshot, '
                'serializers.save_npz) holds the momentum and curvature of '
                'that rank\'s Fisher blocks only, and loading it on every '
                'rank would reset the others; resume from a snapshot_iter_<N> '
                'directory written by chainerkfac.training.checkpoint '
                '(ShardedSnapshot)'.format(directory))
    if not os.path.isdir(directory):
        return 'snapshot {}: no such directory'.format(directory)
    if not os.path.isfile(os.path.join(directory, SHARED)):
        return ('snapshot {} is incomplete: {} is missing (it is written '
                'last, after every rank file)'.format(directory, SHARED))
    return None


def _broadcast_bytes(mpi, data):
    """Rank 0's ``data`` (bytes) on every rank, in pieces of at most
    ``_BCAST_CHUNK``."""
    rank = mpi.Get_rank()
    n = mpi.bcast(len(data) if rank == 0 else None, root=0)
    buf = bytearray(data) if rank == 0 else bytearray(n)
    view = memoryview(buf)
    for start in range(0, n, _BCAST_CHUNK):
        mpi.Bcast(view[start:start + _BCAST_CHUNK], root=0)
    return bytes(buf)


def _read_shared(directory, comm):
    """``numpy.load`` of the shared file: read by rank 0, its bytes
    broadcast to the others."""
    rank, _ = rank_size(comm)
    mpi = mpi_of(comm)
    path = os.path.join(directory, SHARED)
    data, error = None, None
    if rank == 0:
        error = _shared_file_problem(directory)
        if error is None:
            try:
                with open(path, 'rb') as f:
                    data = f.read()
            except OSError as e:
                error = 'snapshot {}: {}'.format(directory,
                                                 errors.one_line(e))
    agree(comm, error)
    if mpi is not None:
        data = _broadcast_bytes(mpi, data)
    error = None
    npz = None
    try:
        npz = numpy.load(io.BytesIO(data), allow_pickle=True)
        fmt = str(npz[META + 'format'][()])
        if fmt != FORMAT:
            raise ValueError(fmt)
    except (KeyError, ValueError, OSError):
        error = ('{} is not a snapshot of this format (a directory written '
                 'by chainerkfac.training.checkpoint)'.format(path))
    agree(comm, error)
    version = scalar(npz, META + 'version')
    agree(comm, None if version <= VERSION else (
        'snapshot {} has format version {}; this code reads up to {}'.format(
            directory, version, VERSION)))
    return npz


def _check_rank_file(directory, old_rank, old_size, iteration, token):
    """An error message for old rank ``old_rank``'s file, or None."""
    name = rank_file(old_rank)
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        return ('snapshot {} is incomplete: {} is missing (written by {} '
                'processes: {} and rank0.npz .. {})'.format(
                    directory, name, old_size, SHARED,
                    rank_file(old_size - 1)))
    try:
        with numpy.load(path, allow_pickle=True) as f:
            it = scalar(f, META + 'iteration')
            size = scalar(f, META + 'n_processes')
            rank = scalar(f, META + 'rank')
            other = str(f[META + 'token'][()])
    except (KeyError, ValueError, OSError) as e:
        return 'snapshot {}: {} is unreadable ({})'.format(
            directory, name, errors.one_line(e))
    if it != iteration:
        return ('snapshot {} mixes files of different saves: {} is from '
                'iteration {}, {} from iteration {}'.format(
                    directory, SHARED, iteration, name, it))
    if other != token or size != old_size or rank != old_rank:
        return ('snapshot {} mixes files of different saves of iteration {}: '
                '{} was not written with {}'.format(directory, iteration,
                                                    name, SHARED))
    return None


def _saved_layout(shared, directory, target, optimizer, optimizer_path,
                  rank_local):
    """``(layout, error)``: the :class:`Layout` the snapshot was written
    with (its recorded optimizer path and rank-local prefixes; a snapshot
    of an earlier version, which recorded no prefixes: ``rank_local``, or
    :func:`rank_local_of`), and a message where the arguments given name
    others."""
    saved_path = str(shared[META + 'optimizer_path'][()])
    saved_local = None
    if META + 'rank_local' in shared.files:
        saved_local = tuple(str(p) for p in shared[META + 'rank_local'])
    if optimizer_path is not None and \
            optimizer_path.strip('/') != saved_path.strip('/'):
        return None, (
            'snapshot {} holds the optimizer at {!r} of its target, not at '
            'optimizer_path={!r} (leave it unset: load reads it from the '
            'snapshot)'.format(directory, saved_path, optimizer_path))
    if rank_local is None:
        rank_local = saved_local if saved_local is not None \
            else rank_local_of(target)
    layout = Layout(optimizer, saved_path, rank_local)
    if saved_local is not None and \
            sorted(layout.rank_local) != sorted(saved_local):
        return None, (
            'snapshot {} keeps rank-local state under {}, not under '
            'rank_local={} (leave it unset: load reads it from the '
            'snapshot)'.format(directory, list(saved_local),
                               list(layout.rank_local)))
    return layout, None


def _block_mismatch(shared, layout, directory):
    """A message when the snapshot's Fisher blocks are not the target's."""
    names = [str(n) for n in shared[META + 'blocks']]
    mine = [b.name for b in layout.blocks]
    if names == mine:
        return None
    diff = next((i for i, (a, b) in enumerate(zip(names, mine)) if a != b),
                min(len(names), len(mine)))
    return ('snapshot {} does not match this model and configuration '
            '(Fisher block {}: {} in the snapshot, {} here)'.format(
                directory, diff, names[diff] if diff < len(names) else 'none',
                mine[diff] if diff < len(mine) else 'none'))


def _owners_now(optimizer, size, directory, comm):
    new_owners, error = None, None
    try:
        new_owners = block_owners(optimizer, size)
    except ValueError as e:
        error = 'snapshot {}: {}'.format(directory, e)
    agree(comm, error)
    return new_owners


def load(directory, target, optimizer, comm=None, optimizer_path=None,
         rank_local=None):
    """Loads a snapshot :func:`save` wrote, on any number of processes
    (collective).

    ``optimizer_path`` and ``rank_local`` default to what the snapshot
    records (given, they must match it).

    Returns:
        Resume: the processes that wrote it, the iteration, and access to the
        old rank files.

    Raises:
        CheckpointError: on every rank: one file instead of a snapshot
            directory, an incomplete or mixed set of files, or a snapshot
            that does not match ``target``.
    """
    rank, size = rank_size(comm)
    directory = os.path.normpath(directory)
    shared = _read_shared(directory, comm)
    old_size = scalar(shared, META + 'n_processes')
    iteration = scalar(shared, META + 'iteration')
    token = str(shared[META + 'token'][()])
    problems = [_check_rank_file(directory, r, old_size, iteration, token)
                for r in range(rank, old_size, size)]
    agree(comm, next((e for e in problems if e), None))
    layout, error = _saved_layout(shared, directory, target, optimizer,
                                  optimizer_path, rank_local)
    agree(comm, error or _block_mismatch(shared, layout, directory))
    old_owners = [int(r) for r in shared[META + 'owners']]
    sources = resharding.KeySources(
        layout, shared, directory, old_owners,
        _owners_now(optimizer, size, directory, comm), rank, size, old_size)
    error = None
    try:
        target.serialize(_Router(sources.route))
    except (KeyError, ValueError, TypeError, AttributeError, IndexError,
            OSError) as e:
        error = ('snapshot {} does not match this model and configuration '
                 '({})'.format(directory, errors.one_line(e)))
    finally:
        sources.close()
    agree(comm, error)
    return Resume(directory, old_size, size, rank, iteration)


def resume_trainer(directory, trainer, optimizer, comm, shard_indices,
                   dataset_size, order_rng, reseed=None, optimizer_path=None,
                   rank_local=None, iterator='main'):
    """:func:`load` into ``trainer``, then, on another number of processes
    than wrote the snapshot, ``reseed(resume)`` (the caller's random states,
    e.g. with :func:`~chainerkfac.training.resharding.reseed`) and the
    updater's iterator ``iterator`` placed over this rank's new shard
    (:func:`~chainerkfac.training.resharding.reposition_iterator`, drawing
    with ``order_rng``). Collective; returns the :class:`Resume`."""
    info = load(directory, trainer, optimizer, comm, optimizer_path,
                rank_local)
    if not info.same_layout:
        if reseed is not None:
            reseed(info)
        reposition_iterator(
            trainer.updater.get_iterator(iterator), info, comm,
            shard_indices, dataset_size, order_rng,
            iterator_path=ITERATOR + iterator)
    return info
