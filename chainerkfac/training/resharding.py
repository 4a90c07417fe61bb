"""Resuming a sharded snapshot on another number of processes.

:func:`chainerkfac.training.checkpoint.load` reads every key of the target
from the file :class:`KeySources` names for this rank; the same rule serves
every process count, and on as many processes as wrote the snapshot (and the
same assignment) it reads each rank's own file:

* a Fisher block's owned state (its EMAs, inverses, damping floors, its
  parameters' momentum) comes from its old owner's file, on its new owner
  only (elsewhere the block keeps no state);
* rank-local state (iterators, random states) comes from rank ``r``'s own
  file on as many processes, from old rank ``r % M`` on another number
  (``M`` old processes), where it fits: an array saved with another shape
  (an iterator's order over a shard of another size) keeps its current
  value;
* everything else comes from the shared file.

What depends on the data shards and the ranks is then re-derived by the
caller: :func:`reposition_iterator` places a shuffling iterator over this
rank's new shard at the same fraction of the epoch, drawing the examples no
old rank drew in it first (:func:`remaining_epoch_order`); :func:`reseed`
gives each rank's random states a seed of the new layout.
:func:`chainerkfac.training.checkpoint.resume_trainer` does all of it for a
trainer.
"""
import numpy
from chainer.serializers import npz as chainer_npz

from chainerkfac import errors
from chainerkfac.training._snapshot import agree
from chainerkfac.training._snapshot import EXTRA
from chainerkfac.training._snapshot import mpi_of
from chainerkfac.training._snapshot import open_rank_file
from chainerkfac.training._snapshot import rank_size


class Resume(object):
    """What :func:`~chainerkfac.training.checkpoint.load` read:
    ``old_size`` (processes that wrote the snapshot), ``size`` (processes
    now), ``rank``, ``iteration``, ``directory``."""

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
        return open_rank_file(self.directory, old_rank)

    def rank_array(self, old_rank, name):
        """A ``rank_arrays`` entry old rank ``old_rank`` saved."""
        with self.open(old_rank) as f:
            return f[EXTRA + name]


class KeySources(object):
    """Where each key of this rank's target comes from: :meth:`route`
    (a deserializer's ``route``, see ``checkpoint._Router``).

    Args:
        layout: the ``checkpoint.Layout`` of the target.
        shared: the shared file's arrays.
        directory (str): the snapshot, whose rank files are opened when first
            needed (:meth:`close` them).
        old_owners, new_owners: owner rank of each block when the snapshot
            was written and now.
        rank, size, old_size: this process, processes now and then.
    """

    def __init__(self, layout, shared, directory, old_owners, new_owners,
                 rank, size, old_size):
        self.layout, self.shared, self.directory = layout, shared, directory
        self.old_owners, self.new_owners = old_owners, new_owners
        self.rank = rank
        self.local_source = rank if old_size == size else rank % old_size
        self.lenient = old_size != size
        self._files = {}

    def old_file(self, old_rank):
        """Old rank ``old_rank``'s file (opened once)."""
        if old_rank not in self._files:
            self._files[old_rank] = open_rank_file(self.directory, old_rank)
        return self._files[old_rank]

    def route(self, key):
        """``(mapping, lenient)``: the arrays ``key`` is read from (None: the
        object keeps its value), and whether a saved array of another shape
        is passed over."""
        if self.layout.is_rank_local(key):
            return self.old_file(self.local_source), self.lenient
        block = self.layout.block_of(key)
        if block is None:
            return self.shared, False
        if self.new_owners[block] != self.rank:
            return None, False
        return self.old_file(self.old_owners[block]), False

    def close(self):
        for f in self._files.values():
            f.close()
        self._files = {}


def reseed(rngs, resume, seed, with_index=True):
    """Seeds each of ``rngs`` (NumPy ``RandomState``) for the new layout:
    ``[seed, size, rank, iteration, i]`` (``i`` its index; without it when
    ``with_index`` is False), so a resume on another process count
    repeats."""
    for i, rng in enumerate(rngs):
        key = [seed, resume.size, resume.rank, resume.iteration]
        rng.seed(key + [i] if with_index else key)


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


def _iterator_state(f, prefix):
    key = prefix + ('order' if prefix + 'order' in f else '_order')
    return (int(f[prefix + 'current_position']), int(f[prefix + 'epoch']),
            bool(f[prefix + 'is_new_epoch']), f[key],
            float(f[prefix + 'previous_epoch_detail']))


def _seen_examples(resume, comm, prefix, indices_name, dataset_size):
    """``(seen, state)``: 1 for each global example an old rank drew in the
    epoch (summed over ranks: collective), and the iterator state of old
    rank ``r % M``."""
    seen = numpy.zeros(dataset_size, numpy.uint8)
    error = state = None
    try:
        for old in resume.old_ranks():
            with resume.open(old) as f:
                position, _, _, order, _ = _iterator_state(f, prefix)
                indices = f[EXTRA + indices_name]
            seen[indices[order[:position]]] = 1
        with resume.open(rank_size(comm)[0] % resume.old_size) as f:
            state = _iterator_state(f, prefix)
    except (KeyError, ValueError, IndexError, OSError) as e:
        error = 'snapshot {}: cannot place the data iterator ({})'.format(
            resume.directory, errors.one_line(e))
    agree(comm, error)
    mpi = mpi_of(comm)
    if mpi is not None:
        from mpi4py import MPI
        mpi.Allreduce(MPI.IN_PLACE, seen, op=MPI.MAX)
    return seen, state


def reposition_iterator(iterator, resume, comm, shard_indices, dataset_size,
                        rng, iterator_path='updater/iterator:main',
                        indices_name='shard_indices'):
    """Places a shuffling iterator (``SerialIterator``,
    ``MultithreadIterator``) over this rank's new shard after
    :func:`~chainerkfac.training.checkpoint.load` from a snapshot of another
    process count (collective).

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

    Returns:
        int: the iterator's position in the epoch.
    """
    prefix = iterator_path.strip('/') + '/'
    seen, state = _seen_examples(resume, comm, prefix, indices_name,
                                 dataset_size)
    position, epoch, is_new_epoch, order, previous = state
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
