"""Sharded snapshots (chainerkfac.training.checkpoint) in one process: what
goes where, exact resumption, resumption of a 2-process snapshot on one
process, incomplete sets, writes that never lose a snapshot, and the data
iterator placed on another process count."""
import os
import warnings

import chainerkfac  # NOQA: F401,I100 (first: makes Chainer importable on NumPy 2)
import chainer
import numpy
import pytest

import nets
from chainerkfac.optimizers import KFAC
from chainerkfac.training import checkpoint

OPT = 'optimizer'


class State(object):
    """Model, optimizer and a per-rank random state under one serialize."""

    def __init__(self, model, optimizer, rng=None):
        self.model, self.optimizer = model, optimizer
        self.rng = rng or numpy.random.RandomState(0)

    def serialize(self, serializer):
        self.model.serialize(serializer['model'])
        self.optimizer.serialize(serializer[OPT])
        keys = serializer['local']('keys', self.rng.get_state()[1])
        if isinstance(serializer, chainer.serializer.Deserializer):
            self.rng.set_state(('MT19937', keys, 624))


def make(seed=0):
    model = nets.make(nets.ConvNet, seed=seed, use_bn=True,
                      dtype=numpy.float32)
    opt = KFAC(lr=0.1, momentum=0.9, damping=1e-2, cov_ema_decay=0.5,
               stale_warmup=1)
    opt.setup(model)
    return model, opt


def steps(model, opt, batches):
    for x, t in batches:
        opt.update(model, x, t)


@pytest.fixture
def batches():
    rng = numpy.random.RandomState(3)
    return [nets.conv_batch(rng, dtype=numpy.float32) for _ in range(6)]


def trained(batches, n=3):
    model, opt = make()
    steps(model, opt, batches[:n])
    return model, opt


def test_keys_split_into_shared_owned_and_rank_local(batches):
    model, opt = trained(batches)
    layout = checkpoint.Layout(opt, OPT, rank_local=('local',))
    names = [b.name for b in layout.blocks]
    assert names == ['/bn', '/c1', '/c2', '/fc']
    block = names.index('/c1')
    assert layout.block_of('optimizer/fisher_blocks/c1/ema_A') == block
    assert layout.block_of('optimizer/c1/W/v') == block
    assert layout.block_of('optimizer/c1/b/lr_prev') == block
    assert layout.block_of('optimizer/schedule/next_due/c1.A') is None
    assert layout.block_of('model/c1/W') is None
    assert layout.block_of('optimizer/t') is None
    assert layout.is_rank_local('local/keys')
    assert not layout.is_rank_local('localx/keys')


def test_one_process_round_trip_is_exact(batches, tmp_path):
    model, opt = trained(batches)
    directory = str(tmp_path / 'snap')
    written = checkpoint.save(directory, State(model, opt), opt,
                              optimizer_path=OPT, rank_local=('local',))
    assert sorted(os.listdir(str(tmp_path))) == ['snap']
    assert sorted(os.listdir(directory)) == ['rank0.npz', 'shared.npz']
    assert written['shared.npz'] == os.path.getsize(
        os.path.join(directory, 'shared.npz'))
    with numpy.load(os.path.join(directory, 'shared.npz')) as f:
        assert not any('fisher_blocks' in k or k.endswith('/v')
                       for k in f.files), f.files
        assert 'model/c1/W' in f.files and 'optimizer/t' in f.files
        assert 'local/keys' not in f.files
    with numpy.load(os.path.join(directory, 'rank0.npz')) as f:
        assert 'optimizer/fisher_blocks/c1/ema_A' in f.files
        assert 'optimizer/c1/W/v' in f.files
        assert 'model/c1/W' not in f.files and 'local/keys' in f.files

    fresh, fresh_opt = make(seed=5)
    info = checkpoint.load(directory, State(fresh, fresh_opt), fresh_opt,
                           optimizer_path=OPT, rank_local=('local',))
    assert (info.old_size, info.size, info.iteration) == (1, 1, 3)
    steps(model, opt, batches[3:])
    steps(fresh, fresh_opt, batches[3:])
    nets.assert_params_equal(nets.params_of(fresh), nets.params_of(model))


def two_process_snapshot(directory, model, opt, token='t' * 32,
                         iteration=None):
    """What two processes would write (owners: the 2-process assignment);
    written here from one optimizer, which holds every block's state."""
    os.makedirs(directory, exist_ok=True)
    for rank in (0, 1):
        checkpoint.write_files(directory, State(model, opt), opt, rank, 2,
                               token, opt.t if iteration is None
                               else iteration, OPT, ('local',))


def test_two_process_snapshot_resumes_on_one(batches, tmp_path):
    model, opt = trained(batches)
    directory = str(tmp_path / 'snap')
    two_process_snapshot(directory, model, opt)
    owners = checkpoint.block_owners(opt, 2)
    assert sorted(set(owners)) == [0, 1]
    for rank in (0, 1):
        with numpy.load(os.path.join(directory, 'rank{}.npz'.format(rank))) \
                as f:
            held = set(k.split('/')[2] for k in f.files
                       if k.startswith('optimizer/fisher_blocks/'))
        assert held == set(b.name.strip('/') for b, r in
                           zip(opt.fisher_blocks, owners) if r == rank)
    fresh, fresh_opt = make(seed=5)
    info = checkpoint.load(directory, State(fresh, fresh_opt), fresh_opt,
                           optimizer_path=OPT, rank_local=('local',))
    assert (info.old_size, info.size) == (2, 1) and not info.same_layout
    for a, b in zip(opt.fisher_blocks, fresh_opt.fisher_blocks):
        for name in a.statistic_names:
            numpy.testing.assert_array_equal(a.ema[name], b.ema[name])
            numpy.testing.assert_array_equal(a.inverse[name], b.inverse[name])
        for p, q in zip(a.params, b.params):
            numpy.testing.assert_array_equal(p.update_rule.state['v'],
                                             q.update_rule.state['v'])
    steps(model, opt, batches[3:])
    steps(fresh, fresh_opt, batches[3:])
    nets.assert_params_equal(nets.params_of(fresh), nets.params_of(model))


@pytest.mark.parametrize('damage, message', [
    ('missing', 'is incomplete: rank1.npz is missing'),
    ('other_iteration', 'shared.npz is from iteration 3, rank1.npz from '
     'iteration 2'),
    ('other_save', 'mixes files of different saves of iteration 3: '
     'rank1.npz'),
    ('no_shared', 'is incomplete: shared.npz is missing'),
])
def test_incomplete_set_is_one_clear_line(batches, tmp_path, damage,
                                          message):
    model, opt = trained(batches)
    directory = str(tmp_path / 'snap')
    two_process_snapshot(directory, model, opt)
    rank1 = os.path.join(directory, 'rank1.npz')
    if damage == 'missing':
        os.remove(rank1)
    elif damage == 'no_shared':
        os.remove(os.path.join(directory, 'shared.npz'))
    else:
        other = str(tmp_path / 'other')
        two_process_snapshot(other, model, opt, token='u' * 32,
                             iteration=2 if damage == 'other_iteration'
                             else None)
        os.replace(os.path.join(other, 'rank1.npz'), rank1)
    fresh, fresh_opt = make(seed=5)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(directory, State(fresh, fresh_opt), fresh_opt,
                        optimizer_path=OPT, rank_local=('local',))
    assert message in str(e.value)
    assert '\n' not in str(e.value)


def test_another_model_does_not_match(batches, tmp_path):
    model, opt = trained(batches)
    directory = str(tmp_path / 'snap')
    checkpoint.save(directory, State(model, opt), opt, optimizer_path=OPT)
    other = nets.make(nets.ConvNet, use_bn=False, dtype=numpy.float32)
    other_opt = KFAC()
    other_opt.setup(other)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(directory, State(other, other_opt), other_opt,
                        optimizer_path=OPT)
    assert 'does not match this model' in str(e.value)


def test_a_failed_write_keeps_the_previous_snapshot(batches, tmp_path,
                                                    monkeypatch):
    model, opt = trained(batches)
    directory = str(tmp_path / 'snap')
    checkpoint.save(directory, State(model, opt), opt, optimizer_path=OPT)
    with numpy.load(os.path.join(directory, 'shared.npz')) as f:
        token = str(f['_checkpoint/token'])
    steps(model, opt, batches[3:4])

    def full_disk(path, arrays):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(checkpoint, '_write_npz', full_disk)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.save(directory, State(model, opt), opt, optimizer_path=OPT)
    assert 'rank 0 could not write' in str(e.value)
    assert 'No space left' in str(e.value)
    with numpy.load(os.path.join(directory, 'shared.npz')) as f:
        assert str(f['_checkpoint/token']) == token
    monkeypatch.undo()
    # a successful save replaces it, leaving no temporary file behind
    checkpoint.save(directory, State(model, opt), opt, optimizer_path=OPT)
    with numpy.load(os.path.join(directory, 'shared.npz')) as f:
        assert str(f['_checkpoint/token']) != token
        assert int(f['_checkpoint/iteration']) == 4
    assert os.listdir(str(tmp_path)) == ['snap']
    assert not any('.tmp' in n for n in os.listdir(directory))


def test_remaining_epoch_order_draws_unseen_examples_first():
    rng = numpy.random.RandomState(0)
    unseen = numpy.zeros(10, bool)
    unseen[[1, 4, 7]] = True
    for position, tail in ((5, 5), (7, 3), (8, 2)):
        order = checkpoint.remaining_epoch_order(10, position, unseen, rng)
        assert sorted(order) == list(range(10))
        rest = order[position:]
        k = min(3, tail)
        assert set(rest[:k]) <= {1, 4, 7}
        if tail >= 3:
            assert set(rest[:3]) == {1, 4, 7}


def test_reposition_iterator_on_another_process_count(tmp_path):
    """Two old ranks (shards of 6 of 12 examples, 4 drawn each) to one:
    the rest of the epoch is exactly the 4 examples nobody drew."""
    directory = str(tmp_path)
    perm = numpy.random.RandomState(1).permutation(12)
    old_orders = {}
    for rank in (0, 1):
        order = numpy.random.RandomState(rank).permutation(6)
        old_orders[rank] = order
        numpy.savez(os.path.join(directory, 'rank{}.npz'.format(rank)), **{
            'it/current_position': numpy.asarray(4),
            'it/epoch': numpy.asarray(2),
            'it/is_new_epoch': numpy.asarray(False),
            'it/order': order,
            'it/previous_epoch_detail': numpy.asarray(2.5),
            checkpoint.EXTRA + 'shard_indices': perm[6 * rank:6 * rank + 6]})
    seen = set(int(perm[6 * r + i]) for r in (0, 1)
               for i in old_orders[r][:4])
    dataset = list(range(12))
    iterator = chainer.iterators.SerialIterator(
        dataset, 3, order_sampler=chainer.iterators.ShuffleOrderSampler(
            numpy.random.RandomState(9)))
    resume = checkpoint.Resume(directory, 2, 1, 0, 7)
    position = checkpoint.reposition_iterator(
        iterator, resume, None, numpy.arange(12), 12,
        numpy.random.RandomState(4), iterator_path='it')
    assert position == 8 and iterator.epoch == 2
    assert iterator.epoch_detail == pytest.approx(2 + 8 / 12.0)
    drawn = iterator.next() + iterator.next()[:1]   # the epoch's last 4
    assert iterator.epoch == 3
    assert set(drawn) == set(range(12)) - seen


# --- defaults: the optimizer's path and the iterators of a trainer ---------
def make_trainer(seed=0, rng_seed=1, out='.', n=24):
    model, opt = make(seed)
    x, t = nets.conv_batch(numpy.random.RandomState(2), n=n,
                           dtype=numpy.float32)
    it = chainer.iterators.SerialIterator(
        chainer.datasets.TupleDataset(x, t), 4,
        order_sampler=chainer.iterators.ShuffleOrderSampler(
            numpy.random.RandomState(rng_seed)))
    updater = chainer.training.StandardUpdater(it, opt, loss_func=model)
    trainer = chainer.training.Trainer(updater, (3, 'iteration'), out=out)
    return trainer, opt


def ran(made):
    """``make_trainer()``'s pair, after its 3 iterations."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        made[0].run()
    return made


def test_defaults_of_a_trainer():
    trainer, opt = make_trainer()
    model, _ = make()
    assert checkpoint.optimizer_path_of(trainer, opt) == \
        checkpoint.OPTIMIZER_PATH == 'updater/optimizer:main'
    assert checkpoint.optimizer_path_of(opt, opt) == ''
    assert checkpoint.rank_local_of(trainer) == ('updater/iterator:main',)
    assert checkpoint.rank_local_of(State(model, opt)) == ()
    with pytest.raises(checkpoint.CheckpointError,
                       match='pass optimizer_path'):
        checkpoint.optimizer_path_of(State(model, opt), opt)


def test_trainer_snapshot_with_the_defaults(tmp_path):
    """ShardedSnapshot and load with no paths: the iterator is rank-local,
    both paths are recorded, and load reads them back."""
    trainer, opt = ran(make_trainer(out=str(tmp_path)))
    snapshot = checkpoint.ShardedSnapshot(None, opt)
    snapshot(trainer)
    directory = os.path.join(str(tmp_path), 'snapshot_iter_3')
    with numpy.load(os.path.join(directory, 'rank0.npz')) as f:
        assert 'updater/iterator:main/current_position' in f.files
        assert 'updater/optimizer:main/c1/W/v' in f.files
    with numpy.load(os.path.join(directory, 'shared.npz')) as f:
        assert 'updater/iterator:main/current_position' not in f.files
        assert list(f['_checkpoint/rank_local']) == ['updater/iterator:main/']
        assert str(f['_checkpoint/optimizer_path']) == 'updater/optimizer:main'
    fresh, fresh_opt = make_trainer(seed=4, rng_seed=9, out=str(tmp_path))
    info = checkpoint.load(directory, fresh, fresh_opt)
    assert info.iteration == 3 and fresh.updater.iteration == 3
    it, other = (t.updater.get_iterator('main') for t in (trainer, fresh))
    numpy.testing.assert_array_equal(it._state.order, other._state.order)
    assert other.current_position == it.current_position
    for a, b in zip(opt.fisher_blocks, fresh_opt.fisher_blocks):
        for name in a.statistic_names:
            numpy.testing.assert_array_equal(a.ema[name], b.ema[name])


@pytest.mark.parametrize('kwargs, message', [
    (dict(optimizer_path=''), "holds the optimizer at 'updater/optimizer:main'"
     " of its target, not at optimizer_path=''"),
    (dict(rank_local=()), "keeps rank-local state under "
     "['updater/iterator:main/'], not under rank_local=[]"),
])
def test_load_arguments_against_the_snapshot_are_one_line(tmp_path, kwargs,
                                                          message):
    trainer, opt = ran(make_trainer(out=str(tmp_path)))
    directory = str(tmp_path / 'snap')
    checkpoint.save(directory, trainer, opt)
    fresh, fresh_opt = make_trainer(seed=4, out=str(tmp_path))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(directory, fresh, fresh_opt, **kwargs)
    assert message in str(e.value) and '\n' not in str(e.value)
    assert 'leave it unset' in str(e.value)


def test_a_path_that_holds_no_block_is_refused_at_save(batches, tmp_path):
    model, opt = trained(batches)
    directory = str(tmp_path / 'snap')
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.save(directory, State(model, opt), opt,
                        optimizer_path='elsewhere')
    assert "no key of the target is a Fisher block's under optimizer_path " \
        "'elsewhere'" in str(e.value)
    assert not os.path.exists(directory)


def test_one_file_is_refused_saying_how_to_resume(batches, tmp_path):
    model, opt = trained(batches)
    path = str(tmp_path / 'snapshot_iter_3')
    chainer.serializers.save_npz(path, State(model, opt))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(path, State(model, opt), opt, optimizer_path=OPT)
    assert 'is one file, not a sharded snapshot directory' in str(e.value)
    assert 'ShardedSnapshot' in str(e.value) and '\n' not in str(e.value)


def test_a_snapshot_missing_a_velocity_is_an_error_not_a_reset(rng, tmp_path):
    """has_v says a velocity was saved: dropping it from the file makes the
    load fail naming it (it used to reset the momentum silently); a rule
    that never updated saves has_v = 0 and loads without one."""
    import chainer
    import numpy
    import nets
    from chainerkfac.optimizers import KFAC
    model = nets.make(nets.MLP)
    opt = KFAC(lr=0.05)
    opt.setup(model)
    opt.update(model, *nets.mlp_batch(rng))
    path = str(tmp_path / 'opt.npz')
    chainer.serializers.save_npz(path, opt)
    with numpy.load(path) as f:
        saved = dict(f)
    assert saved['l1/W/has_v'] == 1
    numpy.savez(str(tmp_path / 'cut.npz'),
                **{k: v for k, v in saved.items() if k != 'l1/W/v'})
    fresh = KFAC(lr=0.05)
    fresh.setup(nets.make(nets.MLP))
    with pytest.raises(KeyError, match='holds no "v"'):
        chainer.serializers.load_npz(str(tmp_path / 'cut.npz'), fresh)
    never = KFAC(lr=0.05)
    never.setup(nets.make(nets.MLP))
    chainer.serializers.save_npz(str(tmp_path / 'never.npz'), never)
    with numpy.load(str(tmp_path / 'never.npz')) as f:
        assert f['l1/W/has_v'] == 0 and 'l1/W/v' not in f
    chainer.serializers.load_npz(str(tmp_path / 'never.npz'), fresh)
    assert fresh.target.l1.W.update_rule.state is None
