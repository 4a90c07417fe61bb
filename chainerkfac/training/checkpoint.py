"""Sharded snapshots: the shared state written once, each rank's owned state
beside it, and resumption on another number of processes.

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
save; ``shared.npz`` also lists the blocks and their owners.

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
under the assignment of the current number of processes. Rank-local state
comes from the rank's own file on as many processes as wrote the snapshot,
and from old rank ``r % N`` otherwise, where it fits (an array saved with
another shape, e.g. an iterator's order over a shard of another size, keeps
its current value); the caller re-derives what depends on the shards and the
ranks (:func:`reposition_iterator`, reseeding). Every problem ends every rank
with the same one-line :class:`CheckpointError`.
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

FORMAT = 'chainerkfac-sharded-snapshot'
VERSION = 1
SHARED = 'shared.npz'
META = '_checkpoint/'
EXTRA = '_checkpoint/rank_arrays/'
#: largest piece of one MPI broadcast of the shared file's bytes
_BCAST_CHUNK = 1 << 30


class CheckpointError(Exception):
    """A snapshot cannot be written or resumed; one line, the same on every
    rank (every rank raises it)."""


def rank_file(rank):
    """Name of rank ``rank``'s file inside a snapshot directory."""
    return 'rank{}.npz'.format(rank)


def _one_line(error):
    text = str(error).strip().splitlines()
    return '{}: {}'.format(type(error).__name__, text[0] if text else '')


def _mpi(comm):
    """The mpi4py communicator of ``comm`` (a ChainerMN or chainerkfac
    communicator, an mpi4py one), or None for one process."""
    if comm is None:
        return None
    mpi = getattr(comm, 'mpi_comm', comm)
    return mpi if mpi.Get_size() > 1 else None


def _rank_size(comm):
    mpi = _mpi(comm)
    return (0, 1) if mpi is None else (mpi.Get_rank(), mpi.Get_size())


def agree(comm, error):
    """Raises :class:`CheckpointError` on every rank when any rank passes an
    error message (the lowest such rank's message); returns otherwise."""
    mpi = _mpi(comm)
    if mpi is None:
        if error:
            raise CheckpointError(error)
        return
    from mpi4py import MPI
    rank, size = mpi.Get_rank(), mpi.Get_size()
    first = mpi.allreduce(rank if error else size, op=MPI.MIN)
    if first < size:
        raise CheckpointError(mpi.bcast(error, root=first))


# --- which key goes where -------------------------------------------------
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
    costs = [assignment_module.block_cost(b) for b in blocks]
    return assignment_module.assign_blocks(
        costs, size, getattr(optimizer, 'assignment', 'balanced'))


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


def write_files(directory, target, optimizer, rank, size, token, iteration,
                optimizer_path='', rank_local=(), rank_arrays=None):
    """Writes rank ``rank``'s file (and, on rank 0, the shared file) into
    ``directory``; no communication. Returns ``{file name: bytes}``.

    Args:
        target: the object whose ``serialize`` holds everything (a trainer).
        optimizer: the K-FAC optimizer inside it, at ``optimizer_path``.
        rank, size: this process and the number of processes.
        token (str): the same on every rank for one save.
        iteration (int): recorded in every file.
        rank_local: key prefixes of per-rank state (iterators, random
            states).
        rank_arrays (dict): extra per-rank arrays (e.g. the global indices of
            this rank's data shard), read back with :meth:`Resume.rank_array`.
    """
    layout = Layout(optimizer, optimizer_path, rank_local)
    owners = block_owners(optimizer, size)
    mine = set(i for i, r in enumerate(owners) if r == rank)

    def owned_or_local(key):
        if layout.is_rank_local(key):
            return True
        return layout.block_of(key) in mine

    arrays = collect(target, owned_or_local)
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
        arrays[META + 'optimizer_path'] = numpy.asarray(optimizer_path)
        written[SHARED] = _write_npz(os.path.join(directory, SHARED), arrays)
    return written


def save(directory, target, optimizer, comm=None, iteration=None,
         optimizer_path='', rank_local=(), rank_arrays=None):
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
    rank, size = _rank_size(comm)
    mpi = _mpi(comm)
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
            directory, rank, _one_line(e))
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
            directory, _one_line(e))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return None


class ShardedSnapshot(training.Extension):
    """Trainer extension: :func:`save` of the trainer to
    ``<out>/<filename>`` (``filename`` formatted with the trainer, default
    ``snapshot_iter_<iteration>``). Every rank must run it at the same
    iterations (give all ranks the same trigger)."""

    trigger = 1, 'epoch'
    priority = -100   # after the other extensions, as Chainer's snapshot

    def __init__(self, comm, optimizer,
                 optimizer_path='updater/optimizer:main', rank_local=(),
                 rank_arrays=None,
                 filename='snapshot_iter_{.updater.iteration}'):
        self.comm = comm
        self.optimizer = optimizer
        self.optimizer_path = optimizer_path
        self.rank_local = tuple(rank_local)
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
def _scalar(npz, key, kind=int):
    return kind(npz[key][()])


def _read_shared(directory, comm):
    """``numpy.load`` of the shared file: read by rank 0, its bytes
    broadcast to the others."""
    rank, size = _rank_size(comm)
    mpi = _mpi(comm)
    path = os.path.join(directory, SHARED)
    data, error = None, None
    if rank == 0:
        if not os.path.isdir(directory):
            error = 'snapshot {}: no such directory'.format(directory)
        elif not os.path.isfile(path):
            error = ('snapshot {} is incomplete: {} is missing (it is '
                     'written last, after every rank file)'.format(
                         directory, SHARED))
        else:
            try:
                with open(path, 'rb') as f:
                    data = f.read()
            except OSError as e:
                error = 'snapshot {}: {}'.format(directory, _one_line(e))
    agree(comm, error)
    if mpi is not None:
        n = mpi.bcast(len(data) if rank == 0 else None, root=0)
        buf = bytearray(data) if rank == 0 else bytearray(n)
        view = memoryview(buf)
        for start in range(0, n, _BCAST_CHUNK):
            mpi.Bcast(view[start:start + _BCAST_CHUNK], root=0)
        data = bytes(buf)
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
    version = _scalar(npz, META + 'version')
    agree(comm, None if version <= VERSION else (
        'snapshot {} has format version {}; this code reads up to {}'.format(
            directory, version, VERSION)))
    return npz


class Resume(object):
    """What :func:`load` read: ``old_size`` (processes that wrote the
    snapshot), ``size`` (processes now), ``iteration``, ``directory``."""

    def __init__(self, directory, old_size, size, rank, iteration):
        self.directory = directory
        self.old_size = old_size
        self.size = size
        self.rank = rank
        self.iteration = iteration

    @property
    def same_layout(self):
        """Whether the snapshot was written by as many processes."""
        return self.old_size == self.size

    def old_ranks(self):
        """Old ranks whose files this rank checked (``r, r + M, ...``)."""
        return range(self.rank, self.old_size, self.size)

    def open(self, old_rank):
        """``numpy.load`` of old rank ``old_rank``'s file (close it)."""
        return numpy.load(os.path.join(self.directory, rank_file(old_rank)),
                          allow_pickle=True)

    def rank_array(self, old_rank, name):
        """A ``rank_arrays`` entry old rank ``old_rank`` saved."""
        with self.open(old_rank) as f:
            return f[EXTRA + name]


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
            it = _scalar(f, META + 'iteration')
            size = _scalar(f, META + 'n_processes')
            rank = _scalar(f, META + 'rank')
            other = str(f[META + 'token'][()])
    except (KeyError, ValueError, OSError) as e:
        return 'snapshot {}: {} is unreadable ({})'.format(
            directory, name, _one_line(e))
    if it != iteration:
        return ('snapshot {} mixes files of different saves: {} is from '
                'iteration {}, {} from iteration {}'.format(
                    directory, SHARED, iteration, name, it))
    if other != token or size != old_size or rank != old_rank:
        return ('snapshot {} mixes files of different saves of iteration {}: '
                '{} was not written with {}'.format(directory, iteration,
                                                    name, SHARED))
    return None


def load(directory, target, optimizer, comm=None, optimizer_path='',
         rank_local=()):
    """Loads a snapshot :func:`save` wrote, on any number of processes
    (collective).

    Returns:
        Resume: the processes that wrote it, the iteration, and access to the
        old rank files.

    Raises:
        CheckpointError: on every rank: an incomplete or mixed set of
            files, or a snapshot that does not match ``target``.
    """
    rank, size = _rank_size(comm)
    directory = os.path.normpath(directory)
    shared = _read_shared(directory, comm)
    old_size = _scalar(shared, META + 'n_processes')
    iteration = _scalar(shared, META + 'iteration')
    token = str(shared[META + 'token'][()])
    errors = [_check_rank_file(directory, r, old_size, iteration, token)
              for r in range(rank, old_size, size)]
    agree(comm, next((e for e in errors if e), None))

    layout = Layout(optimizer, optimizer_path, rank_local)
    names = [str(n) for n in shared[META + 'blocks']]
    mine = [b.name for b in layout.blocks]
    error = None
    if names != mine:
        diff = next((i for i, (a, b) in enumerate(zip(names, mine))
                     if a != b), min(len(names), len(mine)))
        error = ('snapshot {} does not match this model and configuration '
                 '(Fisher block {}: {} in the snapshot, {} here)'.format(
                     directory, diff,
                     names[diff] if diff < len(names) else 'none',
                     mine[diff] if diff < len(mine) else 'none'))
    agree(comm, error)
    old_owners = [int(r) for r in shared[META + 'owners']]
    try:
        new_owners = block_owners(optimizer, size)
    except ValueError as e:
        new_owners = None
        error = 'snapshot {}: {}'.format(directory, e)
    agree(comm, error)

    files = {}

    def old_file(old_rank):
        if old_rank not in files:
            files[old_rank] = numpy.load(
                os.path.join(directory, rank_file(old_rank)),
                allow_pickle=True)
        return files[old_rank]

    local_source = rank if old_size == size else rank % old_size
    lenient = old_size != size

    def route(key):
        if layout.is_rank_local(key):
            return old_file(local_source), lenient
        block = layout.block_of(key)
        if block is None:
            return shared, False
        if new_owners[block] != rank:
            return None, False
        return old_file(old_owners[block]), False

    error = None
    try:
        target.serialize(_Router(route))
    except (KeyError, ValueError, TypeError, AttributeError, IndexError,
            OSError) as e:
        error = ('snapshot {} does not match this model and configuration '
                 '({})'.format(directory, _one_line(e)))
    finally:
        for f in files.values():
            f.close()
    agree(comm, error)
    return Resume(directory, old_size, size, rank, iteration)


# --- data shards on another number of processes ----------------------------
def remaining_epoch_order(n, position, unseen, rng):
    """Order of a shard of ``n`` examples entered at ``position`` of an
    epoch: a permutation of ``range(n)`` whose positions ``position ..
    n - 1`` (the rest of the epoch) hold the shard's ``unseen`` examples
    (boolean mask) first, shuffled, then, if they are fewer than the
    remaining slots, already seen ones; unseen examples that do not fit and
    the other seen ones fill the positions before ``position`` (not drawn
    this epoch)."""
    unseen = numpy.asarray(unseen, bool)
    u = rng.permutation(numpy.flatnonzero(unseen))
    s = rng.permutation(numpy.flatnonzero(~unseen))
    rest = n - position
    tail_u = u[:rest]
    tail_s = s[:rest - len(tail_u)]
    head = rng.permutation(numpy.concatenate(
        [u[len(tail_u):], s[len(tail_s):]]))
    return numpy.concatenate([head, tail_u, tail_s]).astype(numpy.intp)


def reposition_iterator(iterator, resume, comm, shard_indices, dataset_size,
                        rng, iterator_path='updater/iterator:main',
                        indices_name='shard_indices'):
    """Places a shuffling iterator (``SerialIterator``,
    ``MultithreadIterator``) over this rank's new shard after :func:`load`
    from a snapshot of another process count (collective).

    The old ranks saved their iterator under ``iterator_path`` and the global
    indices of their shard as the rank array ``indices_name``. The iterator
    keeps the epoch and enters it at the same fraction (``round(position *
    n_new / n_old)``, identical on every rank, so epochs end together); the
    examples drawn in this epoch by any old rank are marked seen, and the
    rest of the epoch draws the new shard's unseen examples first
    (:func:`remaining_epoch_order`, shuffled by ``rng``, which should be the
    iterator's order sampler's random state, reseeded by the caller).

    Args:
        shard_indices: global index of each example of this rank's shard.
        dataset_size (int): number of examples of the whole dataset.
    """
    rank, size = _rank_size(comm)
    seen = numpy.zeros(dataset_size, numpy.uint8)
    prefix = iterator_path.strip('/') + '/'

    def state(f):
        key = prefix + ('order' if prefix + 'order' in f else '_order')
        return (int(f[prefix + 'current_position']), int(f[prefix + 'epoch']),
                bool(f[prefix + 'is_new_epoch']), f[key],
                float(f[prefix + 'previous_epoch_detail']))

    error = None
    try:
        for old in resume.old_ranks():
            with resume.open(old) as f:
                position, _, _, order, _ = state(f)
                indices = f[EXTRA + indices_name]
            seen[indices[order[:position]]] = 1
        with resume.open(rank % resume.old_size) as f:
            position, epoch, is_new_epoch, order, previous = state(f)
    except (KeyError, ValueError, IndexError, OSError) as e:
        error = 'snapshot {}: cannot place the data iterator ({})'.format(
            resume.directory, _one_line(e))
    agree(comm, error)
    mpi = _mpi(comm)
    if mpi is not None:
        from mpi4py import MPI
        mpi.Allreduce(MPI.IN_PLACE, seen, op=MPI.MAX)
    shard_indices = numpy.asarray(shard_indices)
    n = len(shard_indices)
    new_position = min(int(round(position * n / float(len(order)))), n)
    new_order = remaining_epoch_order(
        n, new_position, seen[shard_indices] == 0, rng)
    values = {'current_position': new_position, 'epoch': epoch,
              'is_new_epoch': is_new_epoch, 'order': new_order,
              '_order': new_order, 'previous_epoch_detail': previous}
    iterator.serialize(chainer_npz.NpzDeserializer(
        {k: numpy.asarray(v) for k, v in values.items()}))
    return new_position
