"""Behaviour of chainerkfac.optimizers.KFAC beyond the brute-force step."""
import warnings

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest
from chainer import optimizer_hooks
from chainer import serializers
from chainer import training
from chainer.training import extensions

from chainerkfac.optimizers import KFAC
import nets


def test_hyperparameters_are_proxies():
    opt = KFAC(lr=0.1, damping=1e-2)
    opt.setup(nets.make(nets.MLP))
    opt.lr = 0.05
    opt.damping = 0.5
    rule = opt.target.l1.W.update_rule
    assert rule.hyperparam.lr == 0.05
    assert opt.hyperparam.damping == 0.5


@pytest.mark.parametrize('kwargs', [
    dict(lr=-1), dict(momentum=1.5), dict(damping=-1), dict(cov_ema_decay=0),
    dict(cov_ema_decay=1.5), dict(bn_fisher='block'), dict(pi_type='x'),
    dict(acc_iters=0), dict(acc_iters=1.5), dict(loss_scale=0)])
def test_bad_hyperparameters_raise(kwargs):
    name = list(kwargs)[0]
    with pytest.raises(ValueError, match=name):
        KFAC(**kwargs)


def test_update_without_lossfun_is_an_error():
    opt = KFAC()
    opt.setup(nets.make(nets.MLP))
    with pytest.raises(TypeError, match='loss function'):
        opt.update()


def test_setup_reports_blocks_and_plain_links():
    class Mixed(chainer.Chain):
        def __init__(self):
            super(Mixed, self).__init__()
            with self.init_scope():
                self.embed = L.EmbedID(5, 4)
                self.fc = L.Linear(4, 2)

        def forward(self, x, t):
            return F.softmax_cross_entropy(self.fc(self.embed(x)), t)

    model = Mixed()
    opt = KFAC(lr=0.1)
    with pytest.warns(UserWarning, match='/embed'):
        opt.setup(model)
    assert [b.name for b in opt.fisher_blocks] == ['/fc']
    assert opt.plain_links == ['/embed']
    assert '/fc LinearBlock' in opt.fisher_block_summary()
    assert '/embed plain-SGD' in opt.fisher_block_summary()
    # the plain link is trained by momentum SGD on its plain gradient
    x, t = numpy.array([0, 1, 2, 3]), numpy.array([0, 1, 0, 1], numpy.int32)
    embed_before = model.embed.W.array.copy()
    model.cleargrads()
    model(x, t).backward()
    grad = model.embed.W.grad.copy()
    opt.momentum = 0.0
    opt.update(model, x, t)
    numpy.testing.assert_allclose(model.embed.W.array,
                                  embed_before - 0.1 * grad, rtol=1e-6)


def test_grouped_convolution_is_rejected_naming_the_link():
    model = chainer.Sequential(L.Convolution2D(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match='/0.*groups=2'):
        KFAC().setup(model)


def test_weight_sharing_is_an_error():
    class Shared(chainer.Chain):
        def __init__(self):
            super(Shared, self).__init__()
            with self.init_scope():
                self.fc = L.Linear(3, 3)

        def forward(self, x):
            return F.sum(self.fc(self.fc(x)))

    opt = KFAC()
    opt.setup(Shared())
    with pytest.raises(RuntimeError, match='/fc.*more than once'):
        opt.update(opt.target, numpy.ones((2, 3), numpy.float32))


def test_lazily_initialised_link_gets_statistics(rng):
    model = chainer.Sequential(L.Linear(None, 3))
    opt = KFAC(lr=0.1)
    opt.setup(model)
    x = rng.randn(4, 5).astype(numpy.float32)
    opt.update(lambda x: F.sum(model(x) ** 2), x)
    block = opt.fisher_blocks[0]
    assert block.ema['A'].shape == (6, 6) and block.ema['G'].shape == (3, 3)


def test_weight_decay_is_preconditioned_with_the_gradient(rng):
    """WeightDecay(rate) acts on the gradient before preconditioning: the
    step equals K-FAC on the loss plus rate/2 ||theta||^2 (that term changes
    no activation or output gradient, so no factor either)."""
    rate = 0.1
    x, t = nets.conv_batch(rng)
    a, b = nets.make(nets.ConvNet), nets.make(nets.ConvNet)
    opt_a = KFAC(lr=0.5, momentum=0.0, damping=1e-2)
    opt_a.setup(a)
    opt_a.add_hook(optimizer_hooks.WeightDecay(rate))
    opt_b = KFAC(lr=0.5, momentum=0.0, damping=1e-2)
    opt_b.setup(b)

    def l2_loss(x, t):
        reg = sum(F.sum(p * p) for p in b.params())
        return b(x, t) + 0.5 * rate * reg

    opt_a.update(a, x, t)
    opt_b.update(l2_loss, x, t)
    nets.assert_params_equal(nets.params_of(a), nets.params_of(b), rtol=1e-10)


def test_loss_scale_does_not_change_the_step(rng):
    x, t = nets.conv_batch(rng)
    a = nets.make(nets.ConvNet, use_bn=True)
    b = nets.make(nets.ConvNet, use_bn=True)
    opt_a = KFAC(lr=0.5, damping=1e-2)
    opt_a.setup(a)
    opt_b = KFAC(lr=0.5, damping=1e-2, loss_scale=1024.0)
    opt_b.setup(b)
    for _ in range(2):
        opt_a.update(a, x, t)
        opt_b.update(b, x, t)
    nets.assert_params_equal(nets.params_of(a), nets.params_of(b), rtol=1e-9)


def test_fp16_model_with_fp32_update_follows_fp32(rng):
    x, t = nets.conv_batch(rng, dtype=numpy.float32)
    ref = nets.make(nets.ConvNet, dtype=numpy.float32)
    half = nets.make(nets.ConvNet, dtype=numpy.float32)
    half.to_device('@numpy')
    for p in half.params():
        p.array = p.array.astype(numpy.float16)
    opt_ref = KFAC(lr=0.1, damping=1e-2)
    opt_ref.setup(ref)
    opt_half = KFAC(lr=0.1, damping=1e-2, loss_scale=256.0)
    opt_half.setup(half)
    opt_half.use_fp32_update()
    for _ in range(2):
        opt_ref.update(ref, x, t)
        opt_half.update(half, x.astype(numpy.float16), t)
    for (name, p), q in zip(ref.namedparams(), half.params()):
        assert q.dtype == numpy.float16
        assert q.update_rule._fp32_param.dtype == numpy.float32
        numpy.testing.assert_allclose(q.update_rule._fp32_param.array, p.array,
                                      rtol=0.05, atol=5e-3, err_msg=name)


def test_adjust_momentum_scales_velocity_when_lr_drops(rng):
    x, t = nets.mlp_batch(rng)
    model = nets.make(nets.MLP)
    opt = KFAC(lr=0.2, momentum=0.9, damping=1e-2, adjust_momentum=True)
    opt.setup(model)
    opt.update(model, x, t)
    rule = model.l1.W.update_rule
    assert rule.effective_momentum() == 0.9
    opt.lr = 0.1
    assert rule.effective_momentum() == pytest.approx(0.45)
    opt.adjust_momentum = False
    assert rule.effective_momentum() == 0.9


def test_accumulation_equals_one_step_on_the_concatenation(rng):
    x, t = nets.conv_batch(rng, n=16)
    a, b = nets.make(nets.ConvNet), nets.make(nets.ConvNet)
    opt_a = KFAC(lr=0.5, momentum=0.9, damping=1e-2, cov_ema_decay=0.7,
                 acc_iters=4)
    opt_a.setup(a)
    opt_b = KFAC(lr=0.5, momentum=0.9, damping=1e-2, cov_ema_decay=0.7)
    opt_b.setup(b)
    for step in range(2):
        before = nets.params_of(a)
        for i in range(4):
            opt_a.update(a, x[4 * i:4 * i + 4], t[4 * i:4 * i + 4])
            if i < 3:  # no step before the last micro-batch
                nets.assert_params_equal(nets.params_of(a), before)
        opt_b.update(b, x, t)
        nets.assert_params_equal(nets.params_of(a), nets.params_of(b),
                                 rtol=1e-9, atol=1e-12)
    assert opt_a.t == opt_b.t == 2


def run_steps(model, opt, batches):
    for x, t in batches:
        opt.update(model, x, t)


@pytest.mark.parametrize('bn_fisher', ['full', 'unit', 'diag'])
def test_resume_gives_the_identical_next_update(rng, tmp_path, bn_fisher):
    batches = [nets.conv_batch(rng) for _ in range(4)]
    kwargs = dict(lr=0.3, momentum=0.9, damping=1e-2, cov_ema_decay=0.5,
                  bn_fisher=bn_fisher, adjust_momentum=True)
    model = nets.make(nets.ConvNet, use_bn=True)
    opt = KFAC(**kwargs)
    opt.setup(model)
    run_steps(model, opt, batches[:3])
    serializers.save_npz(str(tmp_path / 'model.npz'), model)
    serializers.save_npz(str(tmp_path / 'opt.npz'), opt)
    opt.lr = 0.2
    run_steps(model, opt, batches[3:])
    expected = nets.params_of(model)

    resumed = nets.make(nets.ConvNet, seed=1, use_bn=True)
    opt2 = KFAC(**kwargs)
    opt2.setup(resumed)
    serializers.load_npz(str(tmp_path / 'model.npz'), resumed)
    serializers.load_npz(str(tmp_path / 'opt.npz'), opt2)
    assert opt2.t == 3
    for b1, b2 in zip(opt.fisher_blocks, opt2.fisher_blocks):
        assert b2.ema.keys() == b1.ema.keys()
    opt2.lr = 0.2
    run_steps(resumed, opt2, batches[3:])
    nets.assert_params_equal(nets.params_of(resumed), expected)


def test_trainer_with_lr_and_damping_schedules(rng, tmp_path):
    x, t = nets.conv_batch(rng, n=32, dtype=numpy.float32)
    dataset = chainer.datasets.TupleDataset(x, t)
    model = nets.make(nets.ConvNet, use_bn=True, dtype=numpy.float32)
    opt = KFAC(lr=0.05, damping=1e-2)
    opt.setup(model)
    it = chainer.iterators.SerialIterator(dataset, 8, shuffle=False)
    updater = training.StandardUpdater(it, opt, loss_func=model)
    trainer = training.Trainer(updater, (4, 'iteration'), out=str(tmp_path))
    trainer.extend(extensions.ExponentialShift('damping', 0.5))
    trainer.extend(extensions.observe_lr(), trigger=(1, 'iteration'))
    trainer.extend(extensions.LogReport(trigger=(1, 'iteration')))
    trainer.extend(extensions.snapshot(filename='snap'),
                   trigger=(4, 'iteration'))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        trainer.run()
    assert opt.t == 4
    assert opt.damping == pytest.approx(1e-2 * 0.5 ** 4)
    log = trainer.get_extension('LogReport').log
    assert [e['lr'] for e in log] == [0.05] * 4
    assert (tmp_path / 'snap').exists()
    # the snapshot restores the curvature state
    model2 = nets.make(nets.ConvNet, use_bn=True, dtype=numpy.float32)
    opt2 = KFAC(lr=0.05, damping=1e-2)
    opt2.setup(model2)
    updater2 = training.StandardUpdater(
        chainer.iterators.SerialIterator(dataset, 8, shuffle=False), opt2,
        loss_func=model2)
    trainer2 = training.Trainer(updater2, (4, 'iteration'), out=str(tmp_path))
    trainer2.extend(extensions.ExponentialShift('damping', 0.5))
    serializers.load_npz(str(tmp_path / 'snap'), trainer2)
    assert opt2.t == 4
    for b1, b2 in zip(opt.fisher_blocks, opt2.fisher_blocks):
        for name in b1.statistic_names:
            numpy.testing.assert_array_equal(b1.ema[name], b2.ema[name])
            numpy.testing.assert_array_equal(b1.inverse[name],
                                             b2.inverse[name])
