"""The original code's API and what drop-in users do with it (issue 21):
positional arguments, the original's keywords, ``exclude``, the block
factory, optimizer hooks, a snapshot between micro-batches."""
import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest
from chainer import optimizer_hooks

import chainerkfac
from chainerkfac.fisher_blocks import LinearBlock
from chainerkfac.optimizers import KFAC
import nets


def test_kfac_takes_the_originals_positional_order():
    opt = KFAC(0.05, 0.8, 0.5, 1e-2, 8.0)
    assert (opt.lr, opt.momentum, opt.cov_ema_decay, opt.damping,
            opt.stab_coeff) == (0.05, 0.8, 0.5, 1e-2, 8.0)
    opt = KFAC(0.05, 0.8, 0.5, 1e-2, 8.0, None, 'none', True, 4.0, True, 2)
    assert (opt.pi_type, opt._loss_scale, opt.adjust_momentum,
            opt.acc_iters) == ('none', 4.0, True, 2)
    with pytest.raises(TypeError):     # the new ones are keyword-only
        KFAC(0.05, 0.8, 0.5, 1e-2, 8.0, None, 'none', True, 4.0, True, 2,
             'unit')


def test_distributed_kfac_takes_lr_second():
    comm = chainerkfac.create_communicator('mpi')
    opt = chainerkfac.DistributedKFAC(comm, 0.01, 0.7)
    assert (opt.lr, opt.momentum) == (0.01, 0.7)
    assert opt.comm_dtype == numpy.float32


def test_the_originals_keywords():
    KFAC(use_cholesky=True)
    with pytest.raises(ValueError, match='use_cholesky=False'):
        KFAC(use_cholesky=False)
    comm = chainerkfac.create_communicator('mpi')
    chainerkfac.DistributedKFAC(comm, only_pic_update_weight=True)
    with pytest.raises(ValueError, match='only_pic_update_weight=False'):
        chainerkfac.DistributedKFAC(comm, only_pic_update_weight=False)
    with pytest.raises(ValueError, match='constructor must be a callable'):
        KFAC(constructor='linear')


def test_constructor_plugs_in_a_block_factory(rng):
    seen = []

    def linear_only(name, link):
        seen.append(name)
        return LinearBlock(name, link) if isinstance(link, L.Linear) else None
    model = nets.make(nets.ConvNet, use_bn=True)
    opt = KFAC(lr=0.05, constructor=linear_only)
    with pytest.warns(UserWarning, match='/bn, /c1, /c2'):
        opt.setup(model)
    assert [b.name for b in opt.fisher_blocks] == ['/fc']
    assert sorted(seen) == ['/bn', '/c1', '/c2', '/fc']
    opt.update(model, *nets.conv_batch(rng))


def test_an_excluded_link_gets_sgds_update(rng):
    """exclude=['/l2']: l2's parameters move by momentum SGD on the plain
    gradient (its first step: -lr grad), l1 keeps its Fisher block."""
    x, t = nets.mlp_batch(rng)
    model = nets.make(nets.MLP)
    reference = nets.make(nets.MLP)
    reference.cleargrads()
    reference(x, t).backward()
    grad = reference.l2.W.grad.copy()
    opt = KFAC(lr=0.1, damping=1e-2, exclude=['/l2'])
    opt.setup(model)                       # no warning: on purpose
    assert [b.name for b in opt.fisher_blocks] == ['/l1']
    assert opt.excluded_links == ['/l2']
    before = model.l2.W.array.copy()
    opt.update(model, x, t)
    numpy.testing.assert_allclose(model.l2.W.array, before - 0.1 * grad,
                                  rtol=1e-12)


class Shared(chainer.Chain):
    """A link called twice, and a grouped convolution."""

    def __init__(self):
        super(Shared, self).__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(2, 4, 3, pad=1, groups=2)
            self.twice = L.Linear(4 * 4 * 4, 64)
            self.out = L.Linear(64, 3)

    def forward(self, x, t):
        h = F.relu(self.conv(x))
        h = self.twice(h)
        h = self.twice(F.relu(h))
        return F.softmax_cross_entropy(self.out(h), t)


def test_exclude_trains_grouped_and_shared_links(rng):
    x = rng.randn(8, 2, 4, 4)
    t = rng.randint(0, 3, 8).astype(numpy.int32)
    with pytest.raises(ValueError, match=r"exclude=\['/conv'\]"):
        KFAC().setup(nets.make(Shared))
    opt = KFAC(lr=0.05, exclude=['/conv'])
    model = nets.make(Shared)
    opt.setup(model)
    with pytest.raises(RuntimeError, match=r"exclude=\['/twice'\]"):
        opt.update(model, x, t)
    model = nets.make(Shared)
    opt = KFAC(lr=0.05, exclude=lambda name, link: name in ('/conv',
                                                           '/twice'))
    opt.setup(model)
    for _ in range(3):
        opt.update(model, x, t)
    assert [b.name for b in opt.fisher_blocks] == ['/out']
    with pytest.raises(ValueError, match="does not have: /nope"):
        KFAC(exclude=['/nope']).setup(nets.make(nets.MLP))
    with pytest.raises(ValueError, match='got the string'):
        KFAC(exclude='/l1')


def test_exclude_names_a_chain_and_everything_under_it():
    class Outer(chainer.Chain):
        def __init__(self):
            super(Outer, self).__init__()
            with self.init_scope():
                self.inner = nets.MLP()
                self.head = L.Linear(3, 2)
    model = Outer()
    opt = KFAC(exclude=['/inner'])
    opt.setup(model)
    assert [b.name for b in opt.fisher_blocks] == ['/head']


def test_a_global_hook_is_refused_and_gradient_clipping_replaced():
    comm = chainerkfac.create_communicator('mpi')
    opt = chainerkfac.DistributedKFAC(comm)
    opt.setup(nets.make(nets.MLP))
    opt.add_hook(optimizer_hooks.WeightDecay(1e-4))
    opt.add_hook(optimizer_hooks.GradientClipping(1.0))
    hooks = opt._hookable._pre_update_hooks
    assert type(hooks['GradientClipping']).__name__ == \
        'DistributedGradientClipping'

    class GlobalHook(object):
        name = 'global'
        call_for_each_param = False
        timing = 'pre'

        def __call__(self, opt):
            pass
    with pytest.raises(ValueError, match='acts on all gradients'):
        opt.add_hook(GlobalHook())


def test_gradient_clipping_on_one_process_equals_kfacs(rng):
    batches = [nets.mlp_batch(rng) for _ in range(4)]
    comm = chainerkfac.create_communicator('mpi')
    models = [nets.make(nets.MLP), nets.make(nets.MLP)]
    opts = [KFAC(lr=0.1, damping=1e-2),
            chainerkfac.DistributedKFAC(comm, lr=0.1, damping=1e-2)]
    for model, opt in zip(models, opts):
        opt.setup(model)
        opt.add_hook(optimizer_hooks.GradientClipping(0.05))
        for x, t in batches:
            opt.update(model, x, t)
    nets.assert_params_equal(nets.params_of(models[0]),
                             nets.params_of(models[1]), rtol=1e-12)


def test_indices_are_the_owners_per_rank():
    comm = chainerkfac.create_communicator('mpi')
    opt = chainerkfac.DistributedKFAC(comm)
    opt.setup(nets.make(nets.ConvNet, use_bn=True))
    assert opt.indices == [list(range(len(opt.fisher_blocks)))]


def test_a_snapshot_between_micro_batches_is_refused(rng, tmp_path):
    model = nets.make(nets.MLP)
    opt = KFAC(lr=0.05, acc_iters=2)
    opt.setup(model)
    x, t = nets.mlp_batch(rng)
    opt.update(model, x, t)                # the first of two micro-batches
    with pytest.raises(RuntimeError, match='after 1 of the 2 micro-batches'):
        chainer.serializers.save_npz(str(tmp_path / 'opt.npz'), opt)
    opt.update(model, x, t)                # the step
    chainer.serializers.save_npz(str(tmp_path / 'opt.npz'), opt)
