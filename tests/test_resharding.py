"""chainerkfac.training.resharding in one process: where each key comes from
on another process count, the reseeding, what a resume describes, and a
trainer resumed on one process from a two-process snapshot
(checkpoint.resume_trainer). Placing the data iterator:
test_checkpoint.py; under mpiexec: test_checkpoint_mpi.py and
test_checkpoint_train_imagenet.py."""
import os

import chainerkfac  # NOQA: F401,I100 (first: makes Chainer importable on NumPy 2)
import numpy
import pytest

from chainerkfac.training import checkpoint
from chainerkfac.training import resharding
from test_checkpoint import make_trainer
from test_checkpoint import ran


def write_rank_files(directory, n, extra=None):
    for rank in range(n):
        numpy.savez(os.path.join(directory, 'rank{}.npz'.format(rank)),
                    **dict({'mark': numpy.asarray(rank)}, **(extra or {})))


def test_key_sources_route_every_kind_of_key(tmp_path):
    trainer, opt = make_trainer()
    layout = checkpoint.Layout(opt, 'updater/optimizer:main',
                               ('updater/iterator:main',))
    names = [b.name for b in layout.blocks]   # /bn /c1 /c2 /fc
    directory = str(tmp_path)
    write_rank_files(directory, 3)
    shared = {'shared': numpy.asarray(-1)}
    old_owners = [2, 1, 0, 2]          # written on 3 processes
    new_owners = [0, 1, 1, 0]          # now 2: this is rank 1
    sources = resharding.KeySources(layout, shared, directory, old_owners,
                                    new_owners, rank=1, size=2, old_size=3)
    c1 = 'updater/optimizer:main/fisher_blocks/c1/ema_A'
    c2 = 'updater/optimizer:main/c2/W/v'
    fc = 'updater/optimizer:main/fisher_blocks/fc/ema_A'
    assert names[1:] == ['/c1', '/c2', '/fc']
    mapping, lenient = sources.route(c1)   # owned now, by old rank 1
    assert int(mapping['mark']) == 1 and not lenient
    mapping, lenient = sources.route(c2)   # owned now, by old rank 0
    assert int(mapping['mark']) == 0 and not lenient
    assert sources.route(fc) == (None, False)          # rank 0's now
    assert sources.route('updater/model:main/c1/W') == (shared, False)
    mapping, lenient = sources.route('updater/iterator:main/order')
    assert int(mapping['mark']) == 1 % 3 and lenient   # r % M, any shape
    sources.close()
    same = resharding.KeySources(layout, shared, directory, new_owners,
                                 new_owners, rank=1, size=3, old_size=3)
    mapping, lenient = same.route('updater/iterator:main/order')
    assert int(mapping['mark']) == 1 and not lenient   # its own, exactly
    same.close()


@pytest.mark.parametrize('with_index', [True, False])
def test_reseed_is_a_function_of_the_new_layout(with_index):
    resume = resharding.Resume('d', 2, 3, 1, 40)
    rngs = [numpy.random.RandomState(0) for _ in range(2)]
    resharding.reseed(rngs, resume, seed=7, with_index=with_index)
    for i, rng in enumerate(rngs):
        key = [7, 3, 1, 40] + ([i] if with_index else [])
        assert rng.rand() == numpy.random.RandomState(key).rand()


def test_resume_describes_the_old_layout(tmp_path):
    directory = str(tmp_path)
    write_rank_files(directory, 3, {checkpoint.EXTRA + 'shard': numpy.arange(
        3)})
    resume = resharding.Resume(directory, 3, 2, 0, 5)
    assert not resume.same_layout
    assert list(resume.old_ranks()) == [0, 2]
    assert list(resharding.Resume(directory, 3, 2, 1, 5).old_ranks()) == [1]
    numpy.testing.assert_array_equal(resume.rank_array(2, 'shard'),
                                     numpy.arange(3))
    with resume.open(2) as f:
        assert int(f['mark']) == 2
    assert resharding.Resume(directory, 2, 2, 0, 5).same_layout


def test_resume_trainer_from_two_processes_on_one(tmp_path):
    """A 2-process snapshot of a trainer (each rank 12 examples into its
    shard of 16) resumed on one process over all 32: the model and
    optimizer restored, the random states reseeded once, the iterator at
    the same fraction of the epoch, drawing the 8 examples no rank drew."""
    trainer, opt = ran(make_trainer(out=str(tmp_path), n=16))
    directory = str(tmp_path / 'snap')
    os.makedirs(directory)
    shards = [numpy.arange(16), numpy.arange(16, 32)]
    for rank in (0, 1):   # both ranks' iterators: the same order here
        checkpoint.write_files(directory, trainer, opt, rank, 2, 't' * 32, 3,
                               rank_arrays={'shard_indices': shards[rank]})
    order = trainer.updater.get_iterator('main')._state.order
    unseen = set(range(32)) - set(order[:12]) - set(order[:12] + 16)
    fresh, fresh_opt = make_trainer(seed=4, out=str(tmp_path), n=32)
    reseeded = []
    info = checkpoint.resume_trainer(
        directory, fresh, fresh_opt, None, numpy.arange(32), 32,
        numpy.random.RandomState(3), reseed=reseeded.append)
    assert reseeded == [info] and (info.old_size, info.size) == (2, 1)
    it = fresh.updater.get_iterator('main')
    assert it.current_position == 24 and len(unseen) == 8
    assert set(it._state.order[24:]) == unseen
    assert fresh.updater.iteration == 3 and fresh_opt.t == 3
    for a, b in zip(opt.fisher_blocks, fresh_opt.fisher_blocks):
        for name in a.statistic_names:
            numpy.testing.assert_array_equal(a.ema[name], b.ema[name])
