"""A classifier link for hard or soft (mixup) targets."""
import chainer
import chainer.functions as F

from chainerkfac.datasets.transforms import soft_cross_entropy


class Classifier(chainer.Chain):
    """``loss = CE(predictor(x), t)``; reports ``loss`` and ``accuracy``.

    ``t`` is either integer labels ``(N,)`` (softmax cross-entropy) or soft
    targets ``(N, n_class)`` from mixup.

    With soft targets the loss minimised is the soft-target cross-entropy
    ``-mean_n sum_c t log softmax(y)``, reported as ``mixup_loss``, while
    ``loss`` and ``accuracy`` are reported against the batch's own integer
    labels, as the original code reported them under mixup (its
    ``softmax_cross_entropy`` computed the hard-label value in the forward
    pass and the soft-target gradient in the backward pass; its accuracy
    was against the hard labels). The labels are ``labels`` when given (the
    third array of ``BatchAugmenter(return_labels=True)``), else ``argmax
    t``, which is the same label since mixup's ``lambda >= 1/2`` weighs the
    batch's own label most.
    """

    def __init__(self, predictor):
        super(Classifier, self).__init__()
        with self.init_scope():
            self.predictor = predictor

    def forward(self, x, t, labels=None):
        y = self.predictor(x)
        if t.ndim != 2:
            loss = F.softmax_cross_entropy(y, t)
            chainer.report({'loss': loss, 'accuracy': F.accuracy(y, t)},
                           self)
            return loss
        if y.dtype != t.dtype:
            y = F.cast(y, t.dtype)
        loss = soft_cross_entropy(y, t)
        if labels is None:
            labels = t.argmax(axis=1).astype('i')
        with chainer.no_backprop_mode():
            hard = F.softmax_cross_entropy(y.array, labels)
        chainer.report({'loss': hard, 'mixup_loss': loss,
                        'accuracy': F.accuracy(y.array, labels)}, self)
        return loss
