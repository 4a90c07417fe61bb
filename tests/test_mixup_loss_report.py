"""The training loss reported under mixup: the original's hard-label value as
``main/loss`` and the minimised soft-target value as ``main/mixup_loss``
(issue 11, item 5)."""
import chainer
import chainer.functions as F
import numpy
import pytest

from chainerkfac.datasets.augment import BatchAugmenter
from chainerkfac.training.classifier import Classifier


class Fixed(chainer.Link):
    """Logits ``x @ W`` with a parameter ``W``."""

    def __init__(self, w):
        super(Fixed, self).__init__()
        with self.init_scope():
            self.W = chainer.Parameter(w)

    def forward(self, x):
        return F.matmul(x, self.W)


def observe(model, *args):
    observation = {}
    reporter = chainer.Reporter()
    reporter.add_observer('main', model)
    with reporter.scope(observation):
        loss = model(*args)
    return loss, {k: float(v.array if hasattr(v, 'array') else v)
                  for k, v in observation.items()}


def log_softmax(y):
    y = y - y.max(axis=1, keepdims=True)
    return y - numpy.log(numpy.exp(y).sum(axis=1, keepdims=True))


@pytest.fixture
def case():
    rng = numpy.random.RandomState(0)
    x = rng.randn(6, 4).astype(numpy.float32)
    w = rng.randn(4, 5).astype(numpy.float32)
    labels = numpy.array([0, 1, 2, 3, 4, 0], numpy.int32)
    lam = numpy.maximum(rng.beta(0.4, 0.4, 6), 0.5).reshape(6, 1)
    other = numpy.eye(5)[[3, 3, 0, 1, 2, 4]]
    soft = (lam * numpy.eye(5)[labels] + (1 - lam) * other).astype(
        numpy.float32)
    return x, w, labels, soft


@pytest.mark.parametrize('give_labels', [True, False])
def test_reports_the_originals_loss_and_minimises_the_soft_one(
        case, give_labels):
    x, w, labels, soft = case
    model = Classifier(Fixed(w.copy()))
    args = (x, soft, labels) if give_labels else (x, soft)
    loss, seen = observe(model, *args)
    logp = log_softmax(x.astype(numpy.float64) @ w)
    hard = -logp[numpy.arange(6), labels].mean()
    soft_ce = -(soft * logp).sum(axis=1).mean()
    assert seen['main/loss'] == pytest.approx(hard, rel=1e-5)
    assert seen['main/mixup_loss'] == pytest.approx(soft_ce, rel=1e-5)
    assert abs(hard - soft_ce) > 1e-3          # they do differ
    assert seen['main/accuracy'] == pytest.approx(
        ((x @ w).argmax(axis=1) == labels).mean())
    # the value minimised is the soft-target loss; its gradient is the
    # original's backward, (softmax(y) - t_soft) / N
    assert float(loss.array) == pytest.approx(soft_ce, rel=1e-5)
    model.cleargrads()
    loss.backward()
    expected = x.T.astype(numpy.float64) @ (numpy.exp(logp) - soft) / 6
    numpy.testing.assert_allclose(model.predictor.W.grad, expected,
                                  rtol=1e-4, atol=1e-6)


def test_hard_targets_report_one_loss(case):
    x, w, labels, _ = case
    _, seen = observe(Classifier(Fixed(w)), x, labels)
    assert set(seen) == {'main/loss', 'main/accuracy'}


def test_augmenter_returns_the_batchs_own_labels():
    rng = numpy.random.RandomState(1)
    aug = BatchAugmenter(4, [0] * 3, [1] * 3, n_class=3, mixup_alpha=1.0,
                         return_labels=True, seed=0)
    for _ in range(4):     # the first batch unmixed, then running mixup
        labels = rng.randint(0, 3, 8)
        batch = [(rng.rand(6, 6, 3).astype(numpy.float32) * 255, int(t))
                 for t in labels]
        x, t, out_labels = aug(batch)
        assert t.shape == (8, 3)
        numpy.testing.assert_array_equal(out_labels, labels)
        # lambda >= 1/2: the batch's own label weighs most
        numpy.testing.assert_array_equal(t.argmax(axis=1), labels)
    assert len(BatchAugmenter(4, [0] * 3, [1] * 3, n_class=3)(batch)) == 2
