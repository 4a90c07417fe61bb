"""A classifier link for hard or soft (mixup) targets."""
import chainer
import chainer.functions as F

from chainerkfac.datasets.transforms import soft_cross_entropy


class Classifier(chainer.Chain):
    """``loss = CE(predictor(x), t)``; reports ``loss`` and ``accuracy``.

    ``t`` is either integer labels ``(N,)`` (softmax cross-entropy) or soft
    targets ``(N, n_class)`` from mixup (``-mean_n sum_c t log softmax(y)``;
    accuracy against ``argmax t``).
    """

    def __init__(self, predictor):
        super(Classifier, self).__init__()
        with self.init_scope():
            self.predictor = predictor

    def forward(self, x, t):
        y = self.predictor(x)
        if y.dtype != t.dtype and t.ndim == 2:
            y = F.cast(y, t.dtype)
        if t.ndim == 2:
            loss = soft_cross_entropy(y, t)
            labels = t.argmax(axis=1).astype('i')
        else:
            loss = F.softmax_cross_entropy(y, t)
            labels = t
        chainer.report({'loss': loss, 'accuracy': F.accuracy(y, labels)},
                       self)
        return loss
