"""For a batch of ONE example and a layer with a single output position, the
K-FAC curvature block A (x) G is exact: with Grad = [dW, db] the gradient of
that example's loss,

    kron(G, A) == outer(vec_r(Grad), vec_r(Grad)),

because Grad = g abar^T, vec_r(Grad) = g (x) abar, A = abar abar^T and
G = g g^T.  The factors are read from the optimizer's public Fisher blocks
(``opt.fisher_blocks[i].link`` / ``.ema['A']`` / ``.ema['G']``) after one
update with cov_ema_decay=1.0; the gradient is computed independently with
chainer.functions on copies of the parameters.  A wrong bias placement
(bias column first), a missing bias column, a wrong 1/N or 1/T scale or a
transposed Kronecker order all break the identity.
"""

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest


def _np(a):
    return np.asarray(chainer.backend.CpuDevice().send(a), dtype=np.float64)


def _opt():
    from chainerkfac.optimizers import KFAC
    return KFAC(lr=1.0, momentum=0.0, damping=1e-2, cov_ema_decay=1.0,
                stab_coeff=16.0, bn_fisher='full', pi_type='tracenorm')


def _block_factors(opt, link):
    blocks = [b for b in opt.fisher_blocks if b.link is link]
    assert len(blocks) == 1, 'no unique Fisher block for %r' % link.name
    ema = blocks[0].ema
    return _np(ema['A']), _np(ema['G'])


def _check(A, G, grad):
    v = grad.ravel()  # row-major vec of [dW, db]
    assert A.shape == (grad.shape[1], grad.shape[1])
    assert G.shape == (grad.shape[0], grad.shape[0])
    lhs = np.kron(G, A)
    rhs = np.outer(v, v)
    scale = np.abs(rhs).max()
    assert scale > 1e-8
    np.testing.assert_allclose(lhs, rhs, rtol=1e-6, atol=1e-9 * scale)


class MLP(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(4, 5)
            self.l2 = L.Linear(5, 3)

    def forward(self, x):
        return self.l2(F.tanh(self.l1(x)))


def test_linear_single_example_kron_equals_outer():
    np.random.seed(0)
    with chainer.using_config('dtype', np.float64):
        model = MLP()
    rng = np.random.RandomState(1)
    model.l1.b.array[...] = 0.2 * rng.randn(5)
    model.l2.b.array[...] = 0.2 * rng.randn(3)
    x = rng.randn(1, 4)
    t = np.array([2], dtype=np.int32)

    # independent gradient of the single example's loss
    W1 = chainer.Variable(model.l1.W.array.copy())
    b1 = chainer.Variable(model.l1.b.array.copy())
    W2 = chainer.Variable(model.l2.W.array.copy())
    b2 = chainer.Variable(model.l2.b.array.copy())
    loss = F.softmax_cross_entropy(
        F.linear(F.tanh(F.linear(x, W1, b1)), W2, b2), t)
    loss.backward()
    grads = {
        'l1': np.concatenate([W1.grad, b1.grad[:, None]], axis=1),
        'l2': np.concatenate([W2.grad, b2.grad[:, None]], axis=1),
    }

    opt = _opt()
    opt.setup(model)
    opt.update(lambda x, t: F.softmax_cross_entropy(model(x), t), x, t)

    for name in ('l1', 'l2'):
        A, G = _block_factors(opt, getattr(model, name))
        _check(A, G, grads[name])


class ConvNet(chainer.Chain):
    """Convolution whose output has a single spatial position (T = 1)."""

    def __init__(self, in_c, out_c, ksize):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(in_c, out_c, ksize=ksize, pad=0)
            self.fc = L.Linear(out_c, 3)

    def forward(self, x):
        return self.fc(F.tanh(self.conv(x)))


@pytest.mark.parametrize('in_c,out_c,ksize', [(3, 4, 1), (2, 3, 2)])
def test_conv_single_position_kron_equals_outer(in_c, out_c, ksize):
    # ksize 1 on a 1x1 input, or ksize 2 on a 2x2 input: T = 1 either way.
    np.random.seed(2)
    with chainer.using_config('dtype', np.float64):
        model = ConvNet(in_c, out_c, ksize)
    rng = np.random.RandomState(3)
    model.conv.b.array[...] = 0.2 * rng.randn(out_c)
    x = rng.randn(1, in_c, ksize, ksize)
    t = np.array([1], dtype=np.int32)

    W = chainer.Variable(model.conv.W.array.copy())
    b = chainer.Variable(model.conv.b.array.copy())
    W3 = chainer.Variable(model.fc.W.array.copy())
    b3 = chainer.Variable(model.fc.b.array.copy())
    s = F.convolution_2d(x, W, b, pad=0)
    assert s.shape[2:] == (1, 1)
    loss = F.softmax_cross_entropy(F.linear(F.tanh(s), W3, b3), t)
    loss.backward()
    grad = np.concatenate([W.grad.reshape(out_c, -1), b.grad[:, None]],
                          axis=1)

    opt = _opt()
    opt.setup(model)
    opt.update(lambda x, t: F.softmax_cross_entropy(model(x), t), x, t)

    A, G = _block_factors(opt, model.conv)
    _check(A, G, grad)
