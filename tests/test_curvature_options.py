"""The curvature options (issue 18) against independent brute forces on
tiny cases: eigenbasis preconditioning, ..."""
import chainer
import chainer.links as L
import numpy
import pytest

from chainerkfac import step_status
from chainerkfac.fisher_blocks.linear import LinearBlock
from chainerkfac.optimizers import KFAC
import nets


def spd(rng, d):
    m = rng.randn(d, d)
    return m @ m.T + 0.1 * numpy.eye(d)


def eigen_block(rng, d_in=3, d_out=2, bias=True):
    link = L.Linear(d_in, d_out, nobias=not bias)
    link.W.array = link.W.array.astype(numpy.float64)
    if bias:
        link.b.array = link.b.array.astype(numpy.float64)
    block = LinearBlock('/l', link)
    block.inverse_method = 'eigen'
    size = d_in + (1 if bias else 0)
    block.ema = {'A': spd(rng, size), 'G': spd(rng, d_out)}
    return block


def dense_preconditioned(a, g, damping, matrix):
    """``(A (x) G + d I)^-1 vec(M)``, vec stacking the columns of M."""
    dense = numpy.kron(a, g) + damping * numpy.eye(a.shape[0] * g.shape[0])
    x = numpy.linalg.solve(dense, matrix.reshape(-1, order='F'))
    return x.reshape(matrix.shape, order='F')


@pytest.mark.parametrize('bias', [True, False])
def test_eigen_preconditioning_is_the_exact_damped_kronecker_inverse(rng,
                                                                     bias):
    block = eigen_block(rng, bias=bias)
    status = step_status.StepStatus(numpy, 1)
    block.compute_inverses(3e-2, 1.0, 'tracenorm', ['A', 'G'], status, 0)
    block.eigen_damping = 3e-2
    gw = rng.randn(2, 3)
    grads = [gw, rng.randn(2)] if bias else [gw]
    out = block.precondition(grads)
    matrix = numpy.concatenate([gw, grads[1][:, None]], 1) if bias else gw
    expected = dense_preconditioned(block.ema['A'], block.ema['G'], 3e-2,
                                    matrix)
    got = numpy.concatenate([out[0], out[1][:, None]], 1) if bias else out[0]
    numpy.testing.assert_allclose(got, expected, rtol=1e-10)
    assert not status.array.any()
    # the planted error: the factored damping of the Cholesky path is not
    # the exact one, and the dense reference tells them apart
    block.inverse_method = 'cholesky'
    block.inverse = dict.fromkeys(block.statistic_names)
    block.compute_inverses(3e-2, 1.0, 'tracenorm', ['A', 'G'], status, 0)
    factored = block.precondition(grads)[0]
    assert not numpy.allclose(factored, expected[:, :3], rtol=1e-3)


def test_a_stale_partial_refresh_stays_exact(rng):
    """Only A is re-decomposed: the preconditioner is the exact inverse for
    the new A and the kept G (no damping split to keep consistent)."""
    block = eigen_block(rng)
    status = step_status.StepStatus(numpy, 1)
    block.compute_inverses(1e-2, 1.0, 'tracenorm', ['A', 'G'], status, 0)
    kept = block.inverse['G']
    block.ema['A'] = 5 * block.ema['A']
    block.compute_inverses(1e-2, 1.0, 'tracenorm', ['A'], status, 0)
    assert block.inverse['G'] is kept
    block.eigen_damping = 1e-2
    gw, gb = rng.randn(2, 3), rng.randn(2)
    out = block.precondition([gw, gb])
    expected = dense_preconditioned(block.ema['A'], block.ema['G'], 1e-2,
                                    numpy.concatenate([gw, gb[:, None]], 1))
    numpy.testing.assert_allclose(out[0], expected[:, :3], rtol=1e-10)


def test_a_failed_decomposition_takes_the_plain_gradient(rng):
    block = eigen_block(rng)
    block.ema['A'][0, 0] = numpy.nan
    status = step_status.StepStatus(numpy, 1)
    block.compute_inverses(1e-2, 1.0, 'tracenorm', ['A', 'G'], status, 0)
    assert status.array[status.fallback_slot(0)] != 0
    with pytest.warns(RuntimeWarning, match='eigendecomposition'):
        block.settle(status.array.astype(float)[:4])
    assert block.inverse['A'] is None
    grads = [rng.randn(2, 3), rng.randn(2)]
    assert block.precondition(grads) is grads


def test_eigen_training_resumes_exactly(rng, tmp_path):
    batches = [nets.conv_batch(rng) for _ in range(10)]
    kwargs = dict(lr=0.02, damping=1e-2, inverse='eigen', stale_warmup=2,
                  stale_threshold=1.0)
    model = nets.make(nets.ConvNet, use_bn=True)
    opt = KFAC(**kwargs)
    opt.setup(model)
    for x, t in batches[:5]:
        opt.update(model, x, t)
    chainer.serializers.save_npz(str(tmp_path / 'm.npz'), model)
    chainer.serializers.save_npz(str(tmp_path / 'o.npz'), opt)
    for x, t in batches[5:]:
        opt.update(model, x, t)
    model2 = nets.make(nets.ConvNet, seed=4, use_bn=True)
    opt2 = KFAC(**kwargs)
    opt2.setup(model2)
    chainer.serializers.load_npz(str(tmp_path / 'm.npz'), model2)
    chainer.serializers.load_npz(str(tmp_path / 'o.npz'), opt2)
    conv = [b for b in opt2.fisher_blocks if b.name == '/c1'][0]
    assert isinstance(conv.inverse['A'], tuple)
    for x, t in batches[5:]:
        opt2.update(model2, x, t)
    nets.assert_params_equal(nets.params_of(model2), nets.params_of(model))


def test_inverse_argument():
    with pytest.raises(ValueError, match="inverse must be one of"):
        KFAC(inverse='lu')


def test_kl_clip_scale_is_the_formula(rng):
    """nu = min(1, sqrt(kappa / (lr^2 sum(Delta . g)))): the parameters move
    by nu times the unclipped first step (momentum starts at 0), Delta the
    preconditioned gradient of each block and the gradient of a parameter
    without a block, all computed here by hand."""
    import chainer.functions as F

    class Net(chainer.Chain):
        def __init__(self):
            super(Net, self).__init__()
            with self.init_scope():
                self.l1 = L.Linear(4, 3)
                self.emb = L.Bias(shape=(3,))     # no Fisher block
                self.l2 = L.Linear(3, 2)

        def forward(self, x, t):
            return F.softmax_cross_entropy(
                self.l2(F.tanh(self.emb(self.l1(x)))), t)
    x = rng.randn(16, 4)
    t = rng.randint(0, 2, 16).astype(numpy.int32)
    lr, kappa = 0.5, 1e-4
    runs = {}
    for clip in (None, kappa):
        numpy.random.seed(1)
        with chainer.using_config('dtype', numpy.float64):
            model = Net()
        opt = KFAC(lr=lr, momentum=0.9, damping=1e-2, kl_clip=clip,
                   stale=False)
        with pytest.warns(UserWarning):
            opt.setup(model)
        before = {k: p.array.copy() for k, p in model.namedparams()}
        summary = {}
        with chainer.Reporter().scope(summary):
            opt.update(model, x, t)
        runs[clip] = ({k: p.array - before[k]
                       for k, p in model.namedparams()},
                      {k: p.grad.copy() for k, p in model.namedparams()},
                      summary)
    steps, grads, _ = runs[None]
    # unclipped first step: -lr Delta, so Delta = -step / lr
    s = sum(float((-steps[k] / lr * grads[k]).sum()) for k in steps)
    nu = min(1.0, numpy.sqrt(kappa / (lr ** 2 * s)))
    assert nu < 1                                  # the bound is active
    clipped, _, summary = runs[kappa]
    assert summary['kfac/kl_scale'] == pytest.approx(nu, rel=1e-9)
    for k in steps:
        numpy.testing.assert_allclose(clipped[k], nu * steps[k], rtol=1e-9)


def test_kl_clip_argument():
    with pytest.raises(ValueError, match='kl_clip must be > 0'):
        KFAC(kl_clip=0)
