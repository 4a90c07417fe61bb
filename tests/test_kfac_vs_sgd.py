"""K-FAC vs. a tuned momentum SGD on a Fashion-MNIST subset (CPU, ~15 s).

Protocol: SmallCNN (conv-BN-relu x2, global average pooling, linear), the
first 4,000 training images, batch 128, 50 steps (~1.6 epochs), the same
initial weights (one model, deep-copied), the same batch order. The score is
the mean softmax cross entropy on the whole 4,000-image subset after the
last step (BN in training mode, i.e. the objective being minimized), plus
the mean minibatch loss of the last 10 steps.

Offline tuning of MomentumSGD(momentum=0.9), this exact protocol, seeds
0 / 1 / 2, whole-subset loss after 50 steps (initial loss ~2.4):

    lr=0.01: 2.152 / 2.165 / 2.096     lr=0.3: 1.222 / 1.098 / 1.056
    lr=0.03: 1.949 / 2.009 / 1.872     lr=1.0: 1.185 / 1.018 / 1.084
    lr=0.1:  1.437 / 1.434 / 1.330     lr=2.0: 1.312 / 1.216 / 1.193

lr 0.3 and 1.0 are the best (flat optimum, BN makes the net scale
invariant), so the test runs SGD at both and compares K-FAC with the better.

Offline tuning of KFAC(momentum=0.9, bn_fisher='full'), same protocol and
seeds, lr x damping, for cov_ema_decay (weight of the newest statistic) in
{0.99, 0.5, 0.1}; whole-subset loss after 50 steps with cov_ema_decay=0.1:

    lr=0.01: damping 1e-4: 0.683 / 0.718 / 0.617   1e-3: 0.773 / 0.806 / 0.753
             damping 1e-2: 1.121 / 1.139 / 1.060
    lr=0.03: damping 1e-4: 0.815 / 0.760 / 0.724   1e-3: 0.697 / 0.716 / 0.640
             damping 1e-2: 0.887 / 0.895 / 0.836
    lr=0.1:  damping 1e-4: 1.004 / 1.187 / 1.448   1e-3: 0.734 / 0.807 / 0.707
             damping 1e-2: 0.799 / 0.822 / 0.717

(cov_ema_decay 0.99 and 0.5 give losses within ~0.05 of these; damping 1e-1
is worse: 1.80 at lr=0.01, 1.36 at lr=0.03, 1.03 at lr=0.1, seed 0, decay
0.99). The test uses lr=0.03, damping=1e-3, cov_ema_decay=0.1; with
bn_fisher 'unit' / 'diag' the same settings give 0.701 / 0.741 / 0.638 and
0.735 / 0.752 / 0.683.
"""
import copy
import os
import sys

import numpy
import pytest

import chainer
import chainer.functions as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# E402: after the sys.path line above (flake8 flags these; ruff does not)
from chainerkfac.datasets import fashion_mnist  # NOQA: E402
from chainerkfac.datasets import load_fashion_mnist  # NOQA: E402
from models import SmallCNN  # NOQA: E402

N_TRAIN = 4000
BATCH = 128
STEPS = 50
SEED = 0
SGD_LRS = (0.3, 1.0)
KFAC_SETTINGS = dict(lr=0.03, momentum=0.9, damping=1e-3, cov_ema_decay=0.1)

pytestmark = pytest.mark.skipif(
    not os.path.isdir(fashion_mnist.DEFAULT_ROOT),
    reason='Fashion-MNIST not installed (apt-get install '
           'dataset-fashion-mnist)')


class Classifier(chainer.Chain):
    """Mean softmax cross entropy of ``predictor``; remembers its value."""

    def __init__(self, predictor):
        super(Classifier, self).__init__()
        with self.init_scope():
            self.predictor = predictor
        self.last_loss = None

    def forward(self, x, t):
        loss = F.softmax_cross_entropy(self.predictor(x), t)
        self.last_loss = float(loss.array)
        return loss


@pytest.fixture(scope='module')
def problem():
    x, t = load_fashion_mnist('train', limit=N_TRAIN)
    rng = numpy.random.RandomState(SEED)
    batches = []
    while len(batches) < STEPS:
        perm = rng.permutation(N_TRAIN)
        batches += [perm[i:i + BATCH]
                    for i in range(0, N_TRAIN - BATCH + 1, BATCH)]
    numpy.random.seed(SEED)
    return x, t, batches[:STEPS], SmallCNN(n_class=10)


def subset_loss(predictor, x, t):
    """Loss on the whole subset, BN on batch statistics (training mode);
    on a copy, so the running averages of ``predictor`` stay untouched."""
    predictor = copy.deepcopy(predictor)
    with chainer.using_config('train', True), chainer.no_backprop_mode():
        return float(F.softmax_cross_entropy(predictor(x), t).array)


def train(problem, optimizer):
    x, t, batches, init = problem
    model = Classifier(copy.deepcopy(init))
    optimizer.setup(model)
    losses = []
    for idx in batches:
        optimizer.update(model, x[idx], t[idx])
        losses.append(model.last_loss)
    assert numpy.isfinite(losses).all(), losses
    return subset_loss(model.predictor, x, t), float(numpy.mean(losses[-10:]))


@pytest.fixture(scope='module')
def sgd_result(problem):
    """Best (lowest) subset / last-10 loss of MomentumSGD over SGD_LRS."""
    results = [train(problem, chainer.optimizers.MomentumSGD(
        lr=lr, momentum=0.9)) for lr in SGD_LRS]
    return min(r[0] for r in results), min(r[1] for r in results)


def test_sgd_baseline_learns(problem, sgd_result):
    x, t, _, init = problem
    initial = subset_loss(init, x, t)
    assert initial > 2.0
    assert sgd_result[0] < initial - 0.8


@pytest.mark.parametrize('bn_fisher', ['full', 'unit', 'diag'])
def test_kfac_beats_tuned_sgd(problem, sgd_result, bn_fisher):
    from chainerkfac.optimizers import KFAC
    kfac_subset, kfac_last10 = train(
        problem, KFAC(bn_fisher=bn_fisher, **KFAC_SETTINGS))
    sgd_subset, sgd_last10 = sgd_result
    # Seed 0 measured: K-FAC ~0.70 (full/unit) / 0.73 (diag), best SGD 1.185.
    assert kfac_subset < 0.85 * sgd_subset, (kfac_subset, sgd_subset)
    assert kfac_last10 < sgd_last10, (kfac_last10, sgd_last10)
