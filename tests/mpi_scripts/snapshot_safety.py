"""Snapshots of a DistributedKFAC trainer that used to lose state silently.

    snapshot_safety.py one_file DIR     one rank's file loaded on every rank
    snapshot_safety.py iterators DIR    a sharded snapshot with the defaults

Each rank writes what it saw to ``DIR/rank<r>.json`` (``rank_record.py``;
the test reads those, not stdout).

``one_file``: 3 steps; rank 0 alone saves the trainer with
``chainer.serializers.save_npz`` (ChainerMN's usual rank-0 snapshot, and the
file the original's ``--resume`` loaded on every rank); every rank loads it
into a fresh trainer, and into the one that took the steps, and takes a
step, and records the error it got at the load or the step
(``ForeignSnapshotError``, one line) and the error of ``checkpoint.load``
given the same file.

``iterators``: each rank's iterator draws its own order; 3 steps, a
``ShardedSnapshot`` with its default arguments, 2 more steps; a fresh
trainer on every rank ``checkpoint.load``-s the snapshot with the defaults;
each rank records its iterator's position and order when saved and after
the load.
"""
import os
import sys

import chainerkfac  # NOQA: I100 (first: makes Chainer importable on NumPy 2)
import chainer
import numpy
from chainer import training

import nets
import rank_record
from chainerkfac.optimizers import DistributedKFAC
from chainerkfac.training import checkpoint


def dataset(comm):
    rng = numpy.random.RandomState(5 + comm.rank)   # each rank its shard
    x = rng.randn(24, 2, 6, 6).astype(numpy.float32)
    t = rng.randint(0, 3, 24).astype(numpy.int32)
    return chainer.datasets.TupleDataset(x, t)


def make_trainer(comm, seed, out):
    model = nets.make(nets.ConvNet, seed=seed, use_bn=True,
                      dtype=numpy.float32)
    opt = DistributedKFAC(comm, lr=0.05, damping=1e-2, cov_ema_decay=0.5,
                          stale_warmup=2)
    opt.setup(model)
    order = numpy.random.RandomState(100 * seed + comm.rank)
    it = chainer.iterators.SerialIterator(
        dataset(comm), 4,
        order_sampler=chainer.iterators.ShuffleOrderSampler(order))
    updater = training.StandardUpdater(it, opt, loss_func=model)
    return training.Trainer(updater, (3, 'iteration'), out=out), opt


def steps(trainer, n):
    for _ in range(n):
        trainer.updater.update()


def train(trainer):
    """The first 3 steps, as a run (a trainer that never ran cannot be
    saved)."""
    trainer.run()


def one_line_error(call):
    try:
        call()
    except Exception as e:   # recorded, not raised: the test reads them
        return {'type': type(e).__name__, 'message': str(e)}
    return None


def one_file(comm, directory):
    trainer, opt = make_trainer(comm, 1, directory)
    train(trainer)
    path = os.path.join(directory, 'snapshot_iter_3')
    if comm.rank == 0:
        chainer.serializers.save_npz(path, trainer)
    comm.mpi_comm.Barrier()
    fresh, fresh_opt = make_trainer(comm, 2, directory)

    def load_and_step(target):
        chainer.serializers.load_npz(path, target)
        steps(target, 1)
    return {
        'load_npz': one_line_error(lambda: load_and_step(fresh)),
        # into the trainer that took the steps (its owners already known)
        'load_npz_mid_run': one_line_error(lambda: load_and_step(trainer)),
        'checkpoint_load': one_line_error(lambda: checkpoint.load(
            path, fresh, fresh_opt, comm)),
    }


def iterator_state(trainer):
    """What the main iterator saves (position, epoch, order), as lists."""
    saved = chainer.serializers.DictionarySerializer()
    trainer.updater.get_iterator('main').serialize(saved)
    return {k: numpy.asarray(v).tolist() for k, v in saved.target.items()}


def iterators(comm, directory):
    trainer, opt = make_trainer(comm, 1, directory)
    train(trainer)
    saved = iterator_state(trainer)
    checkpoint.ShardedSnapshot(comm, opt)(trainer)
    steps(trainer, 2)
    fresh, fresh_opt = make_trainer(comm, 2, directory)
    checkpoint.load(os.path.join(directory, 'snapshot_iter_3'), fresh,
                    fresh_opt, comm)
    return {'saved': saved, 'loaded': iterator_state(fresh),
            'iteration': int(fresh.updater.iteration)}


def main():
    mode, directory = sys.argv[1], sys.argv[2]
    comm = chainerkfac.create_communicator('mpi')
    record = {'one_file': one_file, 'iterators': iterators}[mode](
        comm, directory)
    rank_record.write(directory, comm, **record)


if __name__ == '__main__':
    main()
