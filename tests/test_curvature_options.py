"""The curvature options (issue 18) against independent brute forces on
tiny cases: eigenbasis preconditioning, ..."""
import chainer
import chainer.links as L
import numpy
import pytest

from chainerkfac import step_status
from chainerkfac.fisher_blocks.linear import LinearBlock
from chainerkfac.optimizers import KFAC
from chainerkfac.optimizers.kfac import inverse_cdf_sample
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

    def loaded(opt):
        conv = [b for b in opt.fisher_blocks if b.name == '/c1'][0]
        assert isinstance(conv.inverse['A'], tuple)
    model, _, resumed, _ = nets.interrupted_and_uninterrupted(
        kwargs, batches, 5, tmp_path, loaded)
    nets.assert_params_equal(nets.params_of(resumed), nets.params_of(model))


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


def exact_fisher_g(model, x):
    """The true Fisher's G of l1 and l2 of nets.MLP, by enumerating the
    classes: (1/N) sum_n sum_c p_nc gt gt^T, gt the example's output
    gradient for target c (computed here without chainerkfac)."""
    w1, b1 = model.l1.W.array, model.l1.b.array
    w2, b2 = model.l2.W.array, model.l2.b.array
    a = numpy.tanh(x @ w1.T + b1)
    y = a @ w2.T + b2
    p = numpy.exp(y - y.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n, classes = p.shape
    g1 = numpy.zeros((w1.shape[0],) * 2)
    g2 = numpy.zeros((classes, classes))
    for c in range(classes):
        gy2 = p - numpy.eye(classes)[c]                  # (N, C)
        gy1 = (gy2 @ w2) * (1 - a * a)
        weight = p[:, c]
        g2 += (gy2 * weight[:, None]).T @ gy2 / n
        g1 += (gy1 * weight[:, None]).T @ gy1 / n
    return {'/l1': g1, '/l2': g2}


def mc_g(model, x, t, samples, mc_samples=1):
    """The mean of ``samples`` steps' Monte-Carlo G (lr 0: the model stays)."""
    opt = KFAC(lr=0.0, cov_ema_decay=1.0, stale=False, fisher='mc',
               mc_samples=mc_samples)
    opt.setup(model)
    total = {}
    for _ in range(samples):
        opt.update(model, x, t)
        for b in opt.fisher_blocks:
            total[b.name] = total.get(b.name, 0) + b.ema['G'] / samples
    return total, opt


def test_mc_fisher_converges_to_the_exact_fisher(rng):
    model = nets.make(nets.MLP)
    x, t = nets.mlp_batch(rng, n=16)
    exact = exact_fisher_g(model, x)
    numpy.random.seed(0)
    mean, opt = mc_g(model, x, t, 600)
    for name in exact:
        error = numpy.linalg.norm(mean[name] - exact[name]) / \
            numpy.linalg.norm(exact[name])
        assert error < 0.05, (name, error)
    # the planted error: the empirical Fisher (true labels) is not it
    empirical = KFAC(lr=0.0, cov_ema_decay=1.0, stale=False)
    empirical.setup(model)
    empirical.update(model, x, t)
    g2 = [b for b in empirical.fisher_blocks if b.name == '/l2'][0].ema['G']
    assert numpy.linalg.norm(g2 - exact['/l2']) / numpy.linalg.norm(
        exact['/l2']) > 0.1
    # the parameters' gradients are the true ones, not the sampled ones
    reference = nets.make(nets.MLP)
    reference.cleargrads()
    reference(x, t).backward()
    numpy.testing.assert_allclose(model.l1.W.grad, reference.l1.W.grad,
                                  rtol=1e-12)


def test_one_mc_sample_is_unbiased_and_more_reduce_its_spread(rng):
    model = nets.make(nets.MLP)
    x, t = nets.mlp_batch(rng, n=16)
    exact = exact_fisher_g(model, x)['/l2']

    def errors(mc_samples):
        numpy.random.seed(1)
        out = []
        for _ in range(40):
            g, _ = mc_g(model, x, t, 1, mc_samples)
            out.append(numpy.linalg.norm(g['/l2'] - exact))
        return numpy.mean(out)
    assert errors(8) < 0.6 * errors(1)


def test_mc_fisher_with_soft_targets_and_the_error_for_other_losses(rng):
    import chainer.functions as F
    from chainerkfac.datasets.transforms import soft_cross_entropy
    model = nets.make(nets.MLP)
    x, t = nets.mlp_batch(rng, n=16)
    soft = numpy.eye(3)[t] * 0.7 + 0.1
    opt = KFAC(lr=0.01, fisher='mc')
    opt.setup(model)

    def mixup_loss(x, t_soft):
        return soft_cross_entropy(model.l2(F.tanh(model.l1(x))), t_soft)
    opt.update(mixup_loss, x, soft)

    def squared(x, t):
        return F.mean_squared_error(model.l2(F.tanh(model.l1(x))),
                                    numpy.eye(3)[t])
    with pytest.raises(ValueError, match="fisher='mc'.*MeanSquaredError"):
        opt.update(squared, x, t)
    with pytest.raises(ValueError, match='fisher must be one of'):
        KFAC(fisher='exact')
    with pytest.raises(ValueError, match='mc_samples'):
        KFAC(fisher='mc', mc_samples=0)


def test_mc_fisher_runs_only_when_g_is_due(rng):
    model = nets.make(nets.MLP)
    x, t = nets.mlp_batch(rng, n=16)
    opt = KFAC(lr=0.01, fisher='mc', stale_warmup=0, stale_threshold=10.0,
               stale_loss_ratio=None)
    opt.setup(model)
    calls = []
    original = opt.sample_targets
    opt.sample_targets = lambda p: calls.append(opt.t) or original(p)
    for _ in range(4):
        opt.update(model, x, t)
    assert calls == [0, 1, 3]    # steps 1, 2 and 4: at 3 no G was due


def test_mc_fisher_feeds_the_bn_fisher_too(rng):
    """BN's F comes from the sampled targets' backward as G does: with lr 0
    it differs from the empirical one of the same batch, and two samples
    (the BN input kept across the passes) give a third value."""
    x, t = nets.conv_batch(rng, n=16)
    values = []
    for fisher, samples in (('empirical', 1), ('mc', 1), ('mc', 2)):
        numpy.random.seed(0)
        model = nets.make(nets.ConvNet, use_bn=True)
        opt = KFAC(lr=0.0, stale=False, cov_ema_decay=1.0, fisher=fisher,
                   mc_samples=samples, bn_fisher='unit')
        opt.setup(model)
        opt.update(model, x, t)
        values.append([b for b in opt.fisher_blocks
                       if b.name == '/bn'][0].ema['F'])
    assert all(numpy.isfinite(v).all() for v in values)
    assert not numpy.allclose(values[0], values[1])
    assert not numpy.allclose(values[1], values[2])


def lm_run(rng, lr, interval=1, steps=1):
    model = nets.make(nets.MLP)
    x, t = nets.mlp_batch(rng, n=32)
    opt = KFAC(lr=lr, momentum=0.0, damping=1e-2, cov_ema_decay=1.0,
               stale=False, damping_adaptation=True,
               damping_adaptation_interval=interval)
    opt.setup(model)
    reports = []
    for _ in range(steps):
        before = {k: p.array.copy() for k, p in model.namedparams()}
        loss = float(model(x, t).array)
        reports.append({})
        with chainer.Reporter().scope(reports[-1]):
            opt.update(model, x, t)
    return model, opt, x, t, before, loss, reports


def test_reduction_ratio_is_the_formula(rng):
    """rho = (L(theta + d) - L(theta)) / (g.d + d^T (A (x) G + gamma I) d / 2)
    over the Kronecker blocks (no plain parameters here), from the blocks'
    factors and the step, computed here with numpy.kron."""
    model, opt, x, t, before, loss, reports = lm_run(rng, lr=0.05)
    after = float(model(x, t).array)
    predicted = 0.0
    for block in opt.fisher_blocks:
        name = block.name
        d = numpy.concatenate([
            model[name[1:]].W.array - before[name + '/W'],
            (model[name[1:]].b.array - before[name + '/b'])[:, None]], 1)
        g = numpy.concatenate([model[name[1:]].W.grad,
                               model[name[1:]].b.grad[:, None]], 1)
        a, gg = block.ema['A'], block.ema['G']
        vec = d.reshape(-1, order='F')
        curvature = numpy.kron(a, gg) + 1e-2 * numpy.eye(vec.size)
        predicted += float((g * d).sum()) + 0.5 * float(vec @ curvature @ vec)
    rho = (after - loss) / predicted
    assert reports[0]['kfac/reduction_ratio'] == pytest.approx(rho, rel=1e-9)
    omega = 19.0 / 20.0
    expected = 1e-2 * omega if rho > 0.75 else (
        1e-2 / omega if rho < 0.25 else 1e-2)
    assert opt.damping == pytest.approx(expected)
    assert reports[0]['kfac/damping'] == pytest.approx(expected)


def test_a_bad_step_raises_the_damping_and_good_ones_lower_it(rng):
    _, opt, _, _, _, _, reports = lm_run(rng, lr=50.0)
    assert reports[0]['kfac/reduction_ratio'] < 0.25
    assert opt.damping == pytest.approx(1e-2 / 0.95)
    _, opt, _, _, _, _, reports = lm_run(rng, lr=1e-3, steps=3)
    assert all(r['kfac/reduction_ratio'] > 0.75 for r in reports)
    assert opt.damping == pytest.approx(1e-2 * 0.95 ** 3)
    _, opt, _, _, _, _, reports = lm_run(rng, lr=1e-3, interval=2, steps=4)
    assert ['kfac/damping' in r for r in reports] == [False, True, False,
                                                      True]
    assert opt.damping == pytest.approx(1e-2 * 0.95 ** 4)


def test_the_adapted_damping_is_serialized_and_bounded(rng, tmp_path):
    _, opt, _, _, _, _, _ = lm_run(rng, lr=1e-3, steps=2)
    chainer.serializers.save_npz(str(tmp_path / 'o.npz'), opt)
    fresh = KFAC(damping=1e-2, damping_adaptation=True, stale=False)
    fresh.setup(nets.make(nets.MLP))
    chainer.serializers.load_npz(str(tmp_path / 'o.npz'), fresh)
    assert fresh.damping == pytest.approx(1e-2 * 0.95 ** 2)
    with pytest.raises(ValueError, match='damping_bounds'):
        KFAC(damping_adaptation=True, damping_bounds=(1.0, 0.1))
    model = nets.make(nets.MLP)
    x, t = nets.mlp_batch(rng, n=32)
    opt = KFAC(lr=1e-3, damping=1e-2, damping_adaptation=True,
               damping_adaptation_interval=1, damping_bounds=(9e-3, 1.0))
    opt.setup(model)
    for _ in range(4):
        opt.update(model, x, t)
    assert opt.damping == pytest.approx(9e-3)


def test_the_extra_forward_pass_reports_nothing(rng):
    """Under a trainer's reporter (the model a registered observer, as
    chainer.links.Classifier reports), the adaptation's forward pass neither
    fails nor overwrites the step's own report of the loss."""
    numpy.random.seed(0)
    with chainer.using_config('dtype', numpy.float64):
        model = L.Classifier(chainer.Sequential(
            L.Linear(6, 5), chainer.functions.tanh, L.Linear(5, 3)))
    x, t = nets.mlp_batch(rng, n=32)
    opt = KFAC(lr=50.0, damping=1e-2, stale=False, damping_adaptation=True,
               damping_adaptation_interval=1)
    opt.setup(model)

    def loss_now():
        return float(chainer.functions.softmax_cross_entropy(
            model.predictor(x), t).array)

    before = loss_now()
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    observation = {}
    with reporter.scope(observation):
        opt.update(model, x, t)
    assert float(observation['main/loss'].array) == pytest.approx(before,
                                                          rel=1e-6)
    assert loss_now() != pytest.approx(before, rel=1e-3)   # the step moved
    assert 'kfac/reduction_ratio' in observation


@pytest.mark.gpu
@pytest.mark.parametrize('options', [
    dict(inverse='eigen'), dict(kl_clip=1e-4), dict(fisher='mc'),
    dict(damping_adaptation=True, damping_adaptation_interval=1)],
    ids=['eigen', 'kl_clip', 'mc', 'lm'])
def test_each_option_on_the_gpu_matches_the_cpu(rng, options):
    """Each option's device path (cupy eigh = syevd, the KL scale on the
    device, sampling from the device softmax, the adaptation's forward pass)
    over 4 stale steps in float64 against the same run on NumPy; the
    Monte-Carlo targets drawn from the same host uniforms on both."""
    import cupy
    x, t = nets.conv_batch(rng, n=8)
    models, opts = [], []
    for device in ('@numpy', '@cupy:0'):
        model = nets.make(nets.ConvNet, seed=5)
        model.to_device(device)
        opt = KFAC(lr=0.005, momentum=0.9, damping=1e-2, cov_ema_decay=0.5,
                   stale_warmup=2, **options)
        opt.setup(model)
        uniforms = iter(numpy.random.RandomState(9).uniform(size=(8, 8)))

        def sample_targets(probabilities, uniforms=uniforms):
            return inverse_cdf_sample(probabilities, next(uniforms))
        opt.sample_targets = sample_targets
        models.append(model)
        opts.append(opt)
    for _ in range(4):
        for model, xp in zip(models, (numpy, cupy)):
            opt = opts[models.index(model)]
            opt.update(model, xp.asarray(x), xp.asarray(t))
    for (name, p), (_, q) in zip(sorted(models[0].namedparams()),
                                 sorted(models[1].namedparams())):
        numpy.testing.assert_allclose(cupy.asnumpy(q.array), p.array,
                                      rtol=1e-8, atol=1e-10, err_msg=name)
    assert opts[1].damping == pytest.approx(opts[0].damping, rel=1e-12)


def test_adaptation_resumed_from_a_snapshot_without_it_warns(rng, tmp_path):
    model = nets.make(nets.MLP)
    x, t = nets.mlp_batch(rng, n=32)
    opt = KFAC(lr=1e-3, damping=1e-2, stale=False)
    opt.setup(model)
    opt.update(model, x, t)
    chainer.serializers.save_npz(str(tmp_path / 'o.npz'), opt)
    fresh = KFAC(damping=3e-2, damping_adaptation=True, stale=False)
    fresh.setup(nets.make(nets.MLP))
    with pytest.warns(RuntimeWarning, match='no adapted damping'):
        chainer.serializers.load_npz(str(tmp_path / 'o.npz'), fresh)
    assert fresh.damping == pytest.approx(3e-2)


def stream_sampler(opt, seed=11):
    """MC targets from one stream of uniforms, consumed row by row: a batch
    split into micro-batches draws the same uniform for each example as
    the whole batch does."""
    stream = numpy.random.RandomState(seed)

    def sample_targets(probabilities):
        return inverse_cdf_sample(probabilities,
                                  stream.uniform(size=len(probabilities)))
    opt.sample_targets = sample_targets


@pytest.mark.parametrize('options', [
    dict(inverse='eigen'), dict(kl_clip=1e-4), dict(fisher='mc')],
    ids=['eigen', 'kl_clip', 'mc'])
def test_options_with_acc_iters_equal_the_whole_batch(rng, options):
    """acc_iters=2 over two halves equals one update on the whole batch
    (stale statistics on, 6 steps), for each option (damping_adaptation
    measures its ratio on the last micro-batch, so it is not equal)."""
    data = [nets.conv_batch(rng, n=8) for _ in range(6)]
    runs = []
    for acc_iters in (1, 2):
        model = nets.make(nets.ConvNet, seed=3)
        opt = KFAC(lr=0.01, momentum=0.9, damping=1e-2, cov_ema_decay=0.5,
                   stale_warmup=2, acc_iters=acc_iters, **options)
        opt.setup(model)
        stream_sampler(opt)
        for x, t in data:
            for part in range(acc_iters):
                rows = slice(part * 8 // acc_iters,
                             (part + 1) * 8 // acc_iters)
                opt.update(model, x[rows], t[rows])
        runs.append((model, opt))
    (whole, opt1), (split, opt2) = runs
    nets.assert_params_equal(nets.params_of(whole), nets.params_of(split),
                             rtol=1e-10, atol=1e-12)
    assert opt1.schedule.next_due == opt2.schedule.next_due


@pytest.mark.parametrize('bn_fisher', ['full', 'unit', 'diag'])
def test_eigen_leaves_the_bn_blocks_as_they_are(rng, bn_fisher):
    """inverse='eigen' changes the Kronecker blocks only: after one step the
    BN parameters equal the Cholesky run's, in every bn_fisher mode, and the
    other options train in every mode (finite parameters after 4 steps)."""
    x, t = nets.conv_batch(rng, n=8)
    steps = {}
    for inverse in ('cholesky', 'eigen'):
        model = nets.make(nets.ConvNet, seed=4, use_bn=True)
        opt = KFAC(lr=0.01, damping=1e-2, bn_fisher=bn_fisher,
                   inverse=inverse)
        opt.setup(model)
        opt.update(model, x, t)
        steps[inverse] = nets.params_of(model)
    bn = [k for k in steps['eigen'] if '/bn' in k]
    assert bn
    for k in bn:
        numpy.testing.assert_allclose(steps['eigen'][k], steps['cholesky'][k],
                                      rtol=1e-12, err_msg=k)
    assert any(not numpy.allclose(steps['eigen'][k], steps['cholesky'][k])
               for k in steps['eigen'] if k not in bn)
    for options in (dict(kl_clip=1e-4), dict(fisher='mc'),
                    dict(damping_adaptation=True,
                         damping_adaptation_interval=1)):
        model = nets.make(nets.ConvNet, seed=4, use_bn=True)
        opt = KFAC(lr=0.01, damping=1e-2, bn_fisher=bn_fisher, **options)
        opt.setup(model)
        for _ in range(4):
            opt.update(model, x, t)
        assert all(numpy.isfinite(p.array).all() for p in model.params())


def test_inverse_cdf_sample_picks_the_class_the_uniform_falls_in():
    p = numpy.array([[0.2, 0.5, 0.3], [0.2, 0.5, 0.3], [0.2, 0.5, 0.3],
                     [1.0, 0.0, 0.0]])
    u = numpy.array([0.1, 0.6, 0.95, 0.999])
    assert inverse_cdf_sample(p, u).tolist() == [0, 1, 2, 0]
    assert inverse_cdf_sample(p, u).dtype == numpy.int32
