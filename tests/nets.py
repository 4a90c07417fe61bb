"""Tiny models shared by the optimizer tests."""
import chainer
import chainer.functions as F
import chainer.links as L
import numpy


class MLP(chainer.Chain):
    """Linear -> tanh -> Linear; a mean softmax cross-entropy loss."""

    def __init__(self, n_in=6, n_hidden=5, n_out=3, nobias=False):
        super(MLP, self).__init__()
        with self.init_scope():
            self.l1 = L.Linear(n_in, n_hidden, nobias=nobias)
            self.l2 = L.Linear(n_hidden, n_out)

    def forward(self, x, t):
        return F.softmax_cross_entropy(self.l2(F.tanh(self.l1(x))), t)


class ConvNet(chainer.Chain):
    """conv(bias) -> relu -> strided conv (no bias) -> relu -> linear."""

    def __init__(self, use_bn=False, n_out=3):
        super(ConvNet, self).__init__()
        with self.init_scope():
            self.c1 = L.Convolution2D(2, 3, 3, pad=1)
            if use_bn:
                self.bn = L.BatchNormalization(3)
            self.c2 = L.Convolution2D(3, 4, 3, stride=2, nobias=True)
            self.fc = L.Linear(16, n_out)
        self.use_bn = use_bn

    def forward(self, x, t):
        h = self.c1(x)
        if self.use_bn:
            h = self.bn(h)
        h = F.relu(self.c2(F.relu(h)))
        return F.softmax_cross_entropy(self.fc(h), t)


def make(cls, seed=0, dtype=numpy.float64, **kwargs):
    numpy.random.seed(seed)
    with chainer.using_config('dtype', dtype):
        return cls(**kwargs)


def conv_batch(rng, n=8, dtype=numpy.float64):
    return (rng.randn(n, 2, 6, 6).astype(dtype),
            rng.randint(0, 3, n).astype(numpy.int32))


def mlp_batch(rng, n=8, dtype=numpy.float64):
    return (rng.randn(n, 6).astype(dtype),
            rng.randint(0, 3, n).astype(numpy.int32))


def params_of(model):
    return {name: p.array.copy() for name, p in model.namedparams()}


def assert_params_equal(a, b, rtol=0, atol=0):
    assert a.keys() == b.keys()
    for name in a:
        numpy.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol,
                                      err_msg=name)


def interrupted_and_uninterrupted(kwargs, batches, split, directory,
                                  loaded=None):
    """A BN ConvNet trained by ``KFAC(**kwargs)`` over ``batches``, saved
    after ``split`` of them (model and optimizer, npz); then a fresh model
    and optimizer from other weights load that snapshot (``loaded(opt)`` is
    called right after) and take the remaining batches. Returns
    ``(model, opt, resumed_model, resumed_opt)``."""
    import os
    from chainer import serializers
    from chainerkfac.optimizers import KFAC
    model = make(ConvNet, use_bn=True)
    opt = KFAC(**kwargs)
    opt.setup(model)
    for x, t in batches[:split]:
        opt.update(model, x, t)
    paths = [os.path.join(str(directory), n) for n in ('model.npz',
                                                        'opt.npz')]
    serializers.save_npz(paths[0], model)
    serializers.save_npz(paths[1], opt)
    for x, t in batches[split:]:
        opt.update(model, x, t)
    resumed = make(ConvNet, seed=3, use_bn=True)
    resumed_opt = KFAC(**kwargs)
    resumed_opt.setup(resumed)
    serializers.load_npz(paths[0], resumed)
    serializers.load_npz(paths[1], resumed_opt)
    if loaded is not None:
        loaded(resumed_opt)
    for x, t in batches[split:]:
        resumed_opt.update(resumed, x, t)
    return model, opt, resumed, resumed_opt
