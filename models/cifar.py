"""The two networks of the original repository's CIFAR-10 example.

``examples/cifar10/train.py --arch resnet50|vgg`` trains them on
``(N, 3, 32, 32)`` images; both return logits.

* :class:`ResNet50CIFAR` is the ResNet-50 of the original example
  (``examples/cifar10/models/resnet50.py`` there), which is not the ImageNet
  network of :class:`models.resnet.ResNet50`: a 3x3 stride-1 stem without
  padding and without max pool (32 -> 30), four stages res3..res6 of
  [3, 4, 6, 3] bottlenecks with the stride on the first 1x1 conv (maps
  30 -> 30 -> 15 -> 8 -> 4), a projection shortcut in the first block of
  every stage, global average pool and ``fc7``; and, as in the original,
  *no ReLU after the residual sum* (``relu_after_sum=True`` gives the usual
  block). 53 conv + 53 BN + 1 FC = 107 K-FAC blocks, 23.5 M parameters.
* :class:`VGG`: the original's ``train.py`` imports ``models.vgg.VGG`` but
  its repository has no such file, so its ``--arch vgg`` (and, the import
  being unconditional, the whole CIFAR example) cannot run. This is the
  usual VGG-16 with batch normalization for CIFAR: 13 3x3 convolutions
  (64, 64 | 128, 128 | 256 x 3 | 512 x 3 | 512 x 3, each + BN + ReLU, a 2x2
  max pool after each group: 32 -> 1), then ``fc6`` (512 -> 512) + BN +
  ReLU + dropout and ``fc7`` (512 -> n_class). 15.0 M parameters.

``width`` scales every channel count (``max(1, round(c * width))``); 1 is
the network above, smaller values make CPU tests affordable (the examples'
``--width``).
"""
import chainer
import chainer.functions as F
import chainer.links as L
from chainer import initializers

from models import resnet


def scaled(channels, width):
    """``channels`` scaled by ``width`` (at least 1)."""
    return max(1, int(round(channels * width)))


class _Bottleneck(resnet.Bottleneck):
    """:class:`models.resnet.Bottleneck` with the ReLU after the residual
    sum optional (the original CIFAR example has none)."""

    def __init__(self, *args, **kwargs):
        self.relu_after_sum = kwargs.pop('relu_after_sum')
        super(_Bottleneck, self).__init__(*args, **kwargs)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        h = h + (self.bn4(self.conv4(x)) if self.proj else x)
        return F.relu(h) if self.relu_after_sum else h


class ResNet50CIFAR(chainer.Chain):
    """ResNet-50 of the original CIFAR-10 example (see the module docstring).

    Link names are the original's (``conv1``, ``bn2``, ``res3/0/conv1`` ...
    ``res6/2/bn3``, projection ``res<k>/0/conv4``/``bn4``, ``fc7``).
    Convolutions: He-normal, no bias; BN: Chainer's defaults; ``fc7``:
    Chainer's default initialisation with a bias, as in the original.

    Args:
        n_class (int): number of classes.
        width (float): channel multiplier (1: 64 ... 2048 channels).
        relu_after_sum (bool): ReLU after each residual sum (the usual
            ResNet; the original has none).
    """

    def __init__(self, n_class=10, width=1.0, relu_after_sum=False):
        super(ResNet50CIFAR, self).__init__()
        c = [scaled(n, width) for n in (64, 128, 256, 512)]
        kw = dict(stride_on='1x1', relu_after_sum=relu_after_sum)
        with self.init_scope():
            self.conv1 = L.Convolution2D(3, c[0], 3, 1, 0, nobias=True,
                                         initialW=initializers.HeNormal())
            self.bn2 = L.BatchNormalization(c[0])
            self.res3 = self._stage(3, c[0], c[0], 4 * c[0], 1, kw)
            self.res4 = self._stage(4, 4 * c[0], c[1], 4 * c[1], 2, kw)
            self.res5 = self._stage(6, 4 * c[1], c[2], 4 * c[2], 2, kw)
            self.res6 = self._stage(3, 4 * c[2], c[3], 4 * c[3], 2, kw)
            self.fc7 = L.Linear(4 * c[3], n_class)

    @staticmethod
    def _stage(n, in_ch, mid_ch, out_ch, stride, kw):
        blocks = [_Bottleneck(in_ch, mid_ch, out_ch, stride, proj=True, **kw)]
        blocks += [_Bottleneck(out_ch, mid_ch, out_ch, **kw)
                   for _ in range(n - 1)]
        return resnet.Stage(*blocks)

    def forward(self, x):
        h = F.relu(self.bn2(self.conv1(x)))
        h = self.res6(self.res5(self.res4(self.res3(h))))
        return self.fc7(F.average(h, axis=(2, 3)))


#: VGG-16's convolution groups (channels of each conv; a max pool after each)
VGG16_GROUPS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512))


class VGG(chainer.Chain):
    """VGG-16 with batch normalization for 32x32 inputs (module docstring).

    Links ``conv<g>_<i>`` / ``bn<g>_<i>`` (group g = 1..5, i = 1..3), ``fc6``,
    ``bn6``, ``fc7``. Convolutions: 3x3, pad 1, He-normal, no bias.

    Args:
        n_class (int): number of classes.
        width (float): channel multiplier (1: 64 ... 512 channels).
        dropout (float): dropout ratio before ``fc7`` (0 for none).
    """

    def __init__(self, n_class=10, width=1.0, dropout=0.5):
        super(VGG, self).__init__()
        self.dropout = dropout
        self._convs = []
        in_ch = 3
        with self.init_scope():
            for g, group in enumerate(VGG16_GROUPS, 1):
                names = []
                for i, ch in enumerate(group, 1):
                    ch = scaled(ch, width)
                    setattr(self, 'conv{}_{}'.format(g, i), L.Convolution2D(
                        in_ch, ch, 3, 1, 1, nobias=True,
                        initialW=initializers.HeNormal()))
                    setattr(self, 'bn{}_{}'.format(g, i),
                            L.BatchNormalization(ch))
                    names.append(('conv{}_{}'.format(g, i),
                                  'bn{}_{}'.format(g, i)))
                    in_ch = ch
                self._convs.append(names)
            hidden = scaled(512, width)
            self.fc6 = L.Linear(in_ch, hidden, nobias=True,
                                initialW=initializers.HeNormal())
            self.bn6 = L.BatchNormalization(hidden)
            self.fc7 = L.Linear(hidden, n_class)

    def forward(self, x):
        h = x
        for names in self._convs:
            for conv, bn in names:
                h = F.relu(self[bn](self[conv](h)))
            h = F.max_pooling_2d(h, 2, 2)
        h = F.relu(self.bn6(self.fc6(h)))
        if self.dropout:
            h = F.dropout(h, self.dropout)
        return self.fc7(h)


ARCHS = {'resnet50': ResNet50CIFAR, 'vgg': VGG}
