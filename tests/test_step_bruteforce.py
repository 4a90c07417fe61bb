"""Brute-force check of one K-FAC step against the math conventions of
docs/design.md ("Math conventions").

Everything expected here is computed independently of chainerkfac: the layer
inputs and output gradients come from a separate forward/backward written
with ``chainer.functions`` on copies of the parameters, the im2col patches are
built with explicit Python loops, the factors are plain NumPy sums, and the
preconditioned gradient is obtained by solving with ``np.kron`` of the damped
factors.  The only things taken from the library are ``KFAC(...)``,
``setup`` and ``update``; the test compares how much each parameter moved.

Conventions checked (N = batch size, mean loss L, s = pre-activation output,
abar = [a; 1] if the layer has a bias, gtilde = N dL/ds):

* Linear:  A = 1/N sum_n abar abar^T,  G = 1/N sum_n gtilde gtilde^T
* Conv2D:  A = 1/N sum_{n,t} abar abar^T (summed over the T positions),
           G = 1/(N T) sum_{n,t} gtilde gtilde^T (averaged over positions)
* pi = sqrt((tr A/dim A) / (tr G/dim G)),
  Delta = (G + sqrt(gamma)/pi I)^-1 [dW, db] (A + pi sqrt(gamma) I)^-1
* BN:      f_n = [sum_t gtilde hhat ; sum_t gtilde], F = 1/N sum_n f_n f_n^T,
           damped F + stab_coeff gamma I, modes full / unit / diag.
* lr = 1, momentum = 0: theta_new = theta_old - Delta.
"""

import copy

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

N, C_IN, H, W_ = 3, 2, 5, 5
C1, C2, N_CLASS = 3, 4, 3
K1, PAD1 = 3, 1
K2, STRIDE2, PAD2 = 3, 2, 1
H2 = (H + 2 * PAD2 - K2) // STRIDE2 + 1  # 3
W2 = (W_ + 2 * PAD2 - K2) // STRIDE2 + 1  # 3

DAMPING = 1e-2
STAB = 16.0


class TinyNet(chainer.Chain):
    """conv(bias) -> BN -> relu -> strided conv(nobias) -> relu -> linear."""

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(C_IN, C1, ksize=K1, pad=PAD1)
            self.bn = L.BatchNormalization(C1)
            self.conv2 = L.Convolution2D(C1, C2, ksize=K2, stride=STRIDE2,
                                         pad=PAD2, nobias=True)
            self.fc = L.Linear(C2 * H2 * W2, N_CLASS)

    def forward(self, x):
        h = F.relu(self.bn(self.conv1(x)))
        h = F.relu(self.conv2(h))
        return self.fc(h)


def make_model(seed):
    np.random.seed(seed)
    with chainer.using_config('dtype', np.float64):
        model = TinyNet()
    rng = np.random.RandomState(seed + 100)
    # Non-trivial BN affine parameters and conv1 bias, so every term matters.
    model.conv1.b.array[...] = rng.randn(C1) * 0.3
    model.bn.gamma.array[...] = 1.0 + 0.3 * rng.randn(C1)
    model.bn.beta.array[...] = 0.3 * rng.randn(C1)
    model.fc.b.array[...] = 0.1 * rng.randn(N_CLASS)
    for p in model.params():
        assert p.array.dtype == np.float64, p.name
    return model


def make_batch(seed):
    rng = np.random.RandomState(seed)
    x = rng.randn(N, C_IN, H, W_).astype(np.float64)
    t = rng.randint(0, N_CLASS, size=N).astype(np.int32)
    return x, t


def lossfun_for(model):
    def lossfun(x, t):
        return F.softmax_cross_entropy(model(x), t)
    return lossfun


def snapshot(model):
    """Deep copy of all parameter arrays, keyed by link name and param."""
    return {
        'conv1': {'W': model.conv1.W.array.copy(),
                  'b': model.conv1.b.array.copy()},
        'bn': {'gamma': model.bn.gamma.array.copy(),
               'beta': model.bn.beta.array.copy(), 'eps': model.bn.eps},
        'conv2': {'W': model.conv2.W.array.copy()},
        'fc': {'W': model.fc.W.array.copy(), 'b': model.fc.b.array.copy()},
    }


# ---------------------------------------------------------------------------
# Independent brute force
# ---------------------------------------------------------------------------

def im2col_loops(x, kh_, kw_, stride, pad, bias):
    """Patches abar[n, t, :] with column order (in_channel, kh, kw) and a
    trailing 1 when ``bias``.  Explicit loops, no library help."""
    n_, c_, h_, w_ = x.shape
    ho = (h_ + 2 * pad - kh_) // stride + 1
    wo = (w_ + 2 * pad - kw_) // stride + 1
    xp = np.zeros((n_, c_, h_ + 2 * pad, w_ + 2 * pad), dtype=x.dtype)
    xp[:, :, pad:pad + h_, pad:pad + w_] = x
    dim = c_ * kh_ * kw_ + (1 if bias else 0)
    out = np.zeros((n_, ho * wo, dim), dtype=x.dtype)
    for n in range(n_):
        for i in range(ho):
            for j in range(wo):
                t = i * wo + j
                for c in range(c_):
                    for ki in range(kh_):
                        for kj in range(kw_):
                            col = (c * kh_ + ki) * kw_ + kj
                            out[n, t, col] = xp[n, c, i * stride + ki,
                                                j * stride + kj]
                if bias:
                    out[n, t, -1] = 1.0
    return out


def conv_factors(x, gy, kh_, kw_, stride, pad, bias):
    """A, G (KFC convention) and the gradient matrix [dW, db] of the mean loss
    from the layer input ``x`` and gy = dL/ds (mean loss)."""
    n_ = x.shape[0]
    patches = im2col_loops(x, kh_, kw_, stride, pad, bias)  # (N, T, dimA)
    T = patches.shape[1]
    out_c = gy.shape[1]
    assert gy.shape[2] * gy.shape[3] == T
    gt = n_ * gy  # gtilde
    dimA = patches.shape[2]
    A = np.zeros((dimA, dimA))
    G = np.zeros((out_c, out_c))
    grad = np.zeros((out_c, dimA))
    for n in range(n_):
        for t in range(T):
            i, j = divmod(t, gy.shape[3])
            a = patches[n, t]
            g = gt[n, :, i, j]
            A += np.outer(a, a)
            G += np.outer(g, g)
            grad += np.outer(gy[n, :, i, j], a)
    A /= n_
    G /= (n_ * T)
    return A, G, grad


def linear_factors(x, gy, bias):
    n_ = x.shape[0]
    x = x.reshape(n_, -1)
    gt = n_ * gy
    dimA = x.shape[1] + (1 if bias else 0)
    A = np.zeros((dimA, dimA))
    G = np.zeros((gy.shape[1], gy.shape[1]))
    grad = np.zeros((gy.shape[1], dimA))
    for n in range(n_):
        a = np.concatenate([x[n], [1.0]]) if bias else x[n]
        A += np.outer(a, a)
        G += np.outer(gt[n], gt[n])
        grad += np.outer(gy[n], a)
    return A / n_, G / n_, grad


def bn_factors(x, gy, eps):
    """F (2C x 2C, gamma block first) and [dgamma; dbeta]."""
    n_, c_ = x.shape[:2]
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mu) ** 2).mean(axis=(0, 2, 3), keepdims=True)  # biased
    hhat = (x - mu) / np.sqrt(var + eps)
    gt = n_ * gy
    Fm = np.zeros((2 * c_, 2 * c_))
    grad = np.zeros(2 * c_)
    for n in range(n_):
        f = np.zeros(2 * c_)
        for c in range(c_):
            f[c] = np.sum(gt[n, c] * hhat[n, c])
            f[c_ + c] = np.sum(gt[n, c])
            grad[c] += np.sum(gy[n, c] * hhat[n, c])
            grad[c_ + c] += np.sum(gy[n, c])
        Fm += np.outer(f, f)
    return Fm / n_, grad


def brute_stats(params, x, t):
    """Re-run the forward with chainer.functions on copies of ``params``;
    return factors and gradients of every layer (mean loss)."""
    p = copy.deepcopy(params)
    W1 = chainer.Variable(p['conv1']['W'])
    b1 = chainer.Variable(p['conv1']['b'])
    gam = chainer.Variable(p['bn']['gamma'])
    bet = chainer.Variable(p['bn']['beta'])
    W2v = chainer.Variable(p['conv2']['W'])
    W3 = chainer.Variable(p['fc']['W'])
    b3 = chainer.Variable(p['fc']['b'])
    eps = p['bn']['eps']

    xv = chainer.Variable(x.copy())
    s1 = F.convolution_2d(xv, W1, b1, stride=1, pad=PAD1)
    s_bn = F.batch_normalization(s1, gam, bet, eps=eps)
    h1 = F.relu(s_bn)
    s2 = F.convolution_2d(h1, W2v, None, stride=STRIDE2, pad=PAD2)
    h2 = F.relu(s2)
    s3 = F.linear(h2, W3, b3)
    loss = F.softmax_cross_entropy(s3, t)
    loss.backward(retain_grad=True)

    out = {}
    A, G, grad = conv_factors(x, s1.grad, K1, K1, 1, PAD1, bias=True)
    # sanity of the brute force itself: im2col gradient == autodiff gradient
    np.testing.assert_allclose(grad[:, :-1], W1.grad.reshape(C1, -1),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad[:, -1], b1.grad, rtol=1e-10, atol=1e-12)
    out['conv1'] = (A, G, grad)

    Fm, gbn = bn_factors(s1.array, s_bn.grad, eps)
    np.testing.assert_allclose(gbn, np.concatenate([gam.grad, bet.grad]),
                               rtol=1e-9, atol=1e-12)
    out['bn'] = (Fm, gbn)

    A, G, grad = conv_factors(h1.array, s2.grad, K2, K2, STRIDE2, PAD2,
                              bias=False)
    np.testing.assert_allclose(grad, W2v.grad.reshape(C2, -1),
                               rtol=1e-10, atol=1e-12)
    out['conv2'] = (A, G, grad)

    A, G, grad = linear_factors(h2.array, s3.grad, bias=True)
    np.testing.assert_allclose(grad[:, :-1], W3.grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad[:, -1], b3.grad, rtol=1e-10, atol=1e-12)
    out['fc'] = (A, G, grad)
    return out


def kfac_delta(A, G, grad, damping):
    """Preconditioned gradient via the explicit Kronecker form."""
    pi = np.sqrt((np.trace(A) / A.shape[0]) / (np.trace(G) / G.shape[0]))
    Ad = A + pi * np.sqrt(damping) * np.eye(A.shape[0])
    Gd = G + np.sqrt(damping) / pi * np.eye(G.shape[0])
    # vec_r(Gd^-1 grad Ad^-1) = (Gd (x) Ad)^-1 vec_r(grad)  (Ad symmetric)
    vec = np.linalg.solve(np.kron(Gd, Ad), grad.ravel())
    delta = vec.reshape(grad.shape)
    # the matrix form must agree (checks this brute force, not the library)
    delta_mat = np.linalg.solve(Gd, np.linalg.solve(Ad, grad.T).T)
    np.testing.assert_allclose(delta, delta_mat, rtol=1e-9, atol=1e-14)
    return delta


def bn_delta(Fm, grad, damping, stab, mode):
    c_ = Fm.shape[0] // 2
    lam = stab * damping
    if mode == 'full':
        return np.linalg.solve(Fm + lam * np.eye(2 * c_), grad)
    if mode == 'diag':
        return grad / (np.diag(Fm) + lam)
    if mode == 'unit':
        out = np.zeros_like(grad)
        for c in range(c_):
            idx = [c, c_ + c]
            blk = Fm[np.ix_(idx, idx)] + lam * np.eye(2)
            out[idx] = np.linalg.solve(blk, grad[idx])
        return out
    raise ValueError(mode)


def expected_deltas(stats, damping, stab, mode):
    d = {}
    A, G, grad = stats['conv1']
    dl = kfac_delta(A, G, grad, damping)
    d[('conv1', 'W')] = dl[:, :-1].reshape(C1, C_IN, K1, K1)
    d[('conv1', 'b')] = dl[:, -1]
    Fm, g = stats['bn']
    dl = bn_delta(Fm, g, damping, stab, mode)
    d[('bn', 'gamma')] = dl[:C1]
    d[('bn', 'beta')] = dl[C1:]
    A, G, grad = stats['conv2']
    d[('conv2', 'W')] = kfac_delta(A, G, grad, damping).reshape(C2, C1, K2,
                                                                 K2)
    A, G, grad = stats['fc']
    dl = kfac_delta(A, G, grad, damping)
    d[('fc', 'W')] = dl[:, :-1]
    d[('fc', 'b')] = dl[:, -1]
    return d


def check_moved(before, after, expected, label=''):
    assert set(k for k, _ in expected) == {'conv1', 'bn', 'conv2', 'fc'}
    failures = []
    for (link, pname), exp in expected.items():
        actual = before[link][pname] - after[link][pname]
        assert actual.shape == exp.shape, (link, pname)
        atol = 1e-9 * max(np.abs(exp).max(), 1e-12)
        if not np.allclose(actual, exp, rtol=1e-6, atol=atol):
            failures.append(
                '%s %s.%s: expected Delta %s, actual %s (max abs err %.3g)'
                % (label, link, pname, np.array2string(exp.ravel()[:6]),
                   np.array2string(actual.ravel()[:6]),
                   np.abs(actual - exp).max()))
    assert not failures, '\n'.join(failures)


def make_opt(mode, decay):
    from chainerkfac.optimizers import KFAC
    return KFAC(lr=1.0, momentum=0.0, damping=DAMPING, cov_ema_decay=decay,
                stab_coeff=STAB, bn_fisher=mode, pi_type='tracenorm')


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('mode', ['full', 'unit', 'diag'])
def test_one_step_matches_bruteforce(mode):
    model = make_model(0)
    x, t = make_batch(1)
    opt = make_opt(mode, 1.0)
    opt.setup(model)

    before = snapshot(model)
    stats = brute_stats(before, x, t)
    expected = expected_deltas(stats, DAMPING, STAB, mode)

    opt.update(lossfun_for(model), x, t)
    after = snapshot(model)
    for p in model.params():
        assert p.array.dtype == np.float64, p.name
    check_moved(before, after, expected, label='step1[%s]' % mode)


def test_bn_modes_differ():
    """Guard for the test itself: the three BN modes must give different
    expected updates on this net, otherwise the parametrization proves
    nothing."""
    model = make_model(0)
    x, t = make_batch(1)
    stats = brute_stats(snapshot(model), x, t)
    e = {m: expected_deltas(stats, DAMPING, STAB, m)[('bn', 'gamma')]
         for m in ('full', 'unit', 'diag')}
    for a, b in (('full', 'unit'), ('full', 'diag'), ('unit', 'diag')):
        assert not np.allclose(e[a], e[b], rtol=1e-3), (a, b)


def test_bruteforce_detects_wrong_conventions():
    """Guard for the test itself: plausible mistakes (no 1/T in conv G, no pi,
    bias column first) change the expected conv update by far more than the
    tolerance."""
    model = make_model(0)
    x, t = make_batch(1)
    stats = brute_stats(snapshot(model), x, t)
    A, G, grad = stats['conv1']
    good = kfac_delta(A, G, grad, DAMPING)
    T = H * W_
    bad_T = kfac_delta(A, G * T, grad, DAMPING)
    assert not np.allclose(good, bad_T, rtol=1e-3)
    # no pi (pi = 1)
    Ad = A + np.sqrt(DAMPING) * np.eye(A.shape[0])
    Gd = G + np.sqrt(DAMPING) * np.eye(G.shape[0])
    nopi = np.linalg.solve(Gd, np.linalg.solve(Ad, grad.T).T)
    assert not np.allclose(good, nopi, rtol=1e-3)
    # bias column first in A (grad still [dW, db])
    perm = np.r_[A.shape[0] - 1, 0:A.shape[0] - 1]
    Ap = A[np.ix_(perm, perm)]
    badb = kfac_delta(Ap, G, grad, DAMPING)
    assert not np.allclose(good, badb, rtol=1e-3)


@pytest.mark.parametrize('mode', ['full', 'unit', 'diag'])
def test_ema_kept_apart_from_damped_copy(mode):
    """cov_ema_decay=0.5: step 1 uses the first batch's statistics alone;
    step 2 uses 0.5 * new + 0.5 * old of the *undamped* factors (new
    statistics taken at the parameters of step 2)."""
    model = make_model(3)
    x1, t1 = make_batch(11)
    x2, t2 = make_batch(12)
    opt = make_opt(mode, 0.5)
    opt.setup(model)
    lossfun = lossfun_for(model)

    p0 = snapshot(model)
    s1 = brute_stats(p0, x1, t1)
    opt.update(lossfun, x1, t1)
    p1 = snapshot(model)
    check_moved(p0, p1, expected_deltas(s1, DAMPING, STAB, mode),
                label='step1[%s]' % mode)

    s2 = brute_stats(p1, x2, t2)
    mixed = {}
    for k in ('conv1', 'conv2', 'fc'):
        A1, G1, _ = s1[k]
        A2, G2, grad2 = s2[k]
        mixed[k] = (0.5 * A2 + 0.5 * A1, 0.5 * G2 + 0.5 * G1, grad2)
    mixed['bn'] = (0.5 * s2['bn'][0] + 0.5 * s1['bn'][0], s2['bn'][1])
    expected = expected_deltas(mixed, DAMPING, STAB, mode)

    opt.update(lossfun, x2, t2)
    p2 = snapshot(model)
    check_moved(p1, p2, expected, label='step2[%s]' % mode)

    # Guard: mixing in the damped copies instead would be detectably
    # different (so the test can tell the two apart).
    wrong = {}
    for k in ('conv1', 'conv2', 'fc'):
        A1, G1, _ = s1[k]
        A2, G2, grad2 = s2[k]
        pi = np.sqrt((np.trace(A1) / A1.shape[0])
                     / (np.trace(G1) / G1.shape[0]))
        A1d = A1 + pi * np.sqrt(DAMPING) * np.eye(A1.shape[0])
        G1d = G1 + np.sqrt(DAMPING) / pi * np.eye(G1.shape[0])
        wrong[k] = (0.5 * A2 + 0.5 * A1d, 0.5 * G2 + 0.5 * G1d, grad2)
    wd = expected_deltas(dict(wrong, bn=mixed['bn']), DAMPING, STAB, mode)
    assert not np.allclose(wd[('fc', 'W')], expected[('fc', 'W')], rtol=1e-4)
