"""ResNet models for the K-FAC experiments. Every model returns logits.

* :class:`ResNet50`: plain ResNet-50 (He et al. 2016), the model of the CVPR
  2019 paper. 53 conv + 53 BN + 1 FC = 107 K-FAC blocks.
* :class:`ResNet50D`: ResNet-50-D ("Bag of Tricks", He et al. 2018), the
  model of the released chainerkfac ImageNet example. 55 conv + 55 BN + 1 FC
  = 111 K-FAC blocks.
* :class:`ResNetCIFAR`: the CIFAR ResNet of He et al. 2016 sec. 4.2
  (depth 6n+2, basic blocks), for 1x28x28 (Fashion-MNIST) or 3x32x32 input.

Inputs are ``(N, C, H, W)`` float arrays, outputs ``(N, n_class)``.
Link names follow Chainer's ImageNet example and the released chainerkfac
code (``conv1``, ``res2/0/conv1`` ... ``res5/2/bn3``, projection shortcut
``res3/0/conv4``/``bn4``, ``fc``; ResNet-50-D stem ``conv1_1`` ...
``bn1_3``), so the K-FAC block names read like the layers they stand for.

Initialisation: He-normal convolutions; FC weight N(0, sqrt(2/fan_in))
(``HeNormal`` on a ``(out, in)`` Linear weight is exactly that); zero
biases; BN beta 0 and gamma 1 (``'ones'``) or N(1, 0.05) (``'paper'``, the
released code's ``NormalM``); BN decay 0.9 and eps 2e-5 (Chainer's defaults,
also the released code's values). No dropout.
"""
import chainer
import chainer.functions as F
import chainer.links as L
from chainer import initializer
from chainer import initializers

BN_DECAY = 0.9
BN_EPS = 2e-5
BN_GAMMA_INITS = ('ones', 'paper')


class NormalAround(initializer.Initializer):
    """Fills an array with N(mean, scale^2) (default N(1, 0.05^2))."""

    def __init__(self, mean=1.0, scale=0.05, dtype=None):
        super(NormalAround, self).__init__(dtype)
        self.mean = mean
        self.scale = scale

    def __call__(self, array):
        initializers.Normal(self.scale, dtype=self.dtype)(array)
        array[...] += array.dtype.type(self.mean)


def _conv(in_ch, out_ch, ksize, stride=1, nobias=True):
    """Square conv with 'same'-style padding ksize // 2, He-normal W."""
    return L.Convolution2D(in_ch, out_ch, ksize, stride=stride,
                           pad=ksize // 2, nobias=nobias,
                           initialW=initializers.HeNormal())


def _bn(size, gamma_init):
    if gamma_init == 'ones':
        gamma = initializers.One()
    elif gamma_init == 'paper':
        gamma = NormalAround(1.0, 0.05)
    else:
        raise ValueError('bn_gamma_init must be one of {}, got {!r}'.format(
            BN_GAMMA_INITS, gamma_init))
    return L.BatchNormalization(size, decay=BN_DECAY, eps=BN_EPS,
                                initial_gamma=gamma,
                                initial_beta=initializers.Zero())


def _fc(in_size, out_size):
    # HeNormal on a (out, in) weight: std = sqrt(2 / in) = sqrt(2 / fan_in).
    return L.Linear(in_size, out_size, initialW=initializers.HeNormal())


def avg_pool_2x2_ceil(x):
    """2x2 stride-2 average pool in 'ceil mode' excluding padding.

    For even H, W this is ``F.average_pooling_2d(x, 2, 2)`` (the released
    code's call). Odd sizes are padded at the bottom/right so that the
    output size ceil(H/2) matches a stride-2 3x3 conv with pad 1, and the
    padded cells are left out of the mean.
    """
    h, w = x.shape[2:]
    ph, pw = h % 2, w % 2
    if ph == 0 and pw == 0:
        return F.average_pooling_2d(x, 2, stride=2)
    xp = chainer.backend.get_array_module(x)
    pad = ((0, 0), (0, 0), (0, ph), (0, pw))
    y = F.average_pooling_2d(F.pad(x, pad, 'constant'), 2, stride=2)
    ones = xp.pad(xp.ones((1, 1, h, w), dtype=x.dtype), pad, 'constant')
    count = F.average_pooling_2d(ones, 2, stride=2).array
    return y / xp.broadcast_to(count, y.shape)


class Bottleneck(chainer.Chain):
    """1x1 (mid) -> 3x3 (mid) -> 1x1 (out) bottleneck with BN after each
    conv, ReLU after the first two and after the residual sum.

    Args:
        in_ch, mid_ch, out_ch (int): channel sizes.
        stride (int): spatial stride of the block.
        proj (bool): use a projection shortcut ``conv4`` (1x1) + ``bn4``;
            otherwise identity (needs ``in_ch == out_ch`` and stride 1).
        stride_on (str): ``'3x3'`` puts the stride on ``conv2`` (ResNet-B /
            "v1.5"), ``'1x1'`` on ``conv1`` (MSRA original / "v1").
        avg_down (bool): ResNet-D shortcut: 2x2 average pool (stride) then a
            stride-1 1x1 conv, instead of a strided 1x1 conv.
        bn_gamma_init (str): ``'ones'`` or ``'paper'``.
    """

    def __init__(self, in_ch, mid_ch, out_ch, stride=1, proj=False,
                 stride_on='3x3', avg_down=False, bn_gamma_init='ones'):
        super(Bottleneck, self).__init__()
        if stride_on not in ('3x3', '1x1'):
            raise ValueError("stride_on must be '3x3' or '1x1', got {!r}"
                             .format(stride_on))
        if not proj and (stride != 1 or in_ch != out_ch):
            raise ValueError('an identity shortcut needs stride 1 and '
                             'in_ch == out_ch')
        s1, s3 = (1, stride) if stride_on == '3x3' else (stride, 1)
        self.stride = stride
        self.proj = proj
        self.avg_down = avg_down
        with self.init_scope():
            self.conv1 = _conv(in_ch, mid_ch, 1, s1)
            self.bn1 = _bn(mid_ch, bn_gamma_init)
            self.conv2 = _conv(mid_ch, mid_ch, 3, s3)
            self.bn2 = _bn(mid_ch, bn_gamma_init)
            self.conv3 = _conv(mid_ch, out_ch, 1)
            self.bn3 = _bn(out_ch, bn_gamma_init)
            if proj:
                self.conv4 = _conv(in_ch, out_ch, 1,
                                   1 if avg_down else stride)
                self.bn4 = _bn(out_ch, bn_gamma_init)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        if self.proj:
            s = x
            if self.avg_down and self.stride > 1:
                s = avg_pool_2x2_ceil(s)
            s = self.bn4(self.conv4(s))
        else:
            s = x
        return F.relu(h + s)


class BasicBlock(chainer.Chain):
    """3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, + shortcut, ReLU.

    The stride is on ``conv1``. With ``proj`` the shortcut is a strided 1x1
    ``conv3`` + ``bn3`` (He et al. option B), otherwise identity.
    """

    def __init__(self, in_ch, out_ch, stride=1, proj=False,
                 bn_gamma_init='ones'):
        super(BasicBlock, self).__init__()
        if not proj and (stride != 1 or in_ch != out_ch):
            raise ValueError('an identity shortcut needs stride 1 and '
                             'in_ch == out_ch')
        self.proj = proj
        with self.init_scope():
            self.conv1 = _conv(in_ch, out_ch, 3, stride)
            self.bn1 = _bn(out_ch, bn_gamma_init)
            self.conv2 = _conv(out_ch, out_ch, 3)
            self.bn2 = _bn(out_ch, bn_gamma_init)
            if proj:
                self.conv3 = _conv(in_ch, out_ch, 1, stride)
                self.bn3 = _bn(out_ch, bn_gamma_init)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        s = self.bn3(self.conv3(x)) if self.proj else x
        return F.relu(h + s)


class Stage(chainer.ChainList):
    """A sequence of residual blocks; children are named '0', '1', ..."""

    def forward(self, x):
        for block in self:
            x = block(x)
        return x


def _bottleneck_stage(n_blocks, in_ch, mid_ch, out_ch, stride, **kwargs):
    # The first block always projects (channels change in every stage).
    blocks = [Bottleneck(in_ch, mid_ch, out_ch, stride, proj=True, **kwargs)]
    kwargs.pop('avg_down', None)
    blocks += [Bottleneck(out_ch, mid_ch, out_ch, **kwargs)
               for _ in range(n_blocks - 1)]
    return Stage(*blocks)


def _resnet50_stages(**kw):
    """res2..res5 of ResNet-50: [3, 4, 6, 3] bottlenecks, widths 64..512."""
    return (_bottleneck_stage(3, 64, 64, 256, 1, **kw),
            _bottleneck_stage(4, 256, 128, 512, 2, **kw),
            _bottleneck_stage(6, 512, 256, 1024, 2, **kw),
            _bottleneck_stage(3, 1024, 512, 2048, 2, **kw))


def _resnet50_head(model, h):
    """3x3/2 max pool, res2..res5, global average pool, fc."""
    h = F.max_pooling_2d(h, 3, stride=2)
    h = model.res5(model.res4(model.res3(model.res2(h))))
    return model.fc(F.average(h, axis=(2, 3)))


class ResNet50(chainer.Chain):
    """Plain ResNet-50 (He et al. 2016), as in the CVPR 2019 K-FAC paper.

    conv1 7x7/2 (64, no bias) -> BN -> ReLU -> 3x3/2 max pool ->
    res2..res5 = [3, 4, 6, 3] bottlenecks of width 64/128/256/512 and
    expansion 4 (strides 1, 2, 2, 2; first block of each stage has a 1x1
    conv + BN projection shortcut) -> global average pool -> fc(2048,
    n_class, with bias). All convolutions have no bias.

    Input ``(N, 3, H, W)`` (224x224 for ImageNet; anything with H, W >= 32
    works), output ``(N, n_class)``. At 224 the res5 map is 7x7.
    Parameters: 25,557,032 for 1000 classes (either stride placement).

    Stride placement: ``stride_on='3x3'`` (default) strides the 3x3 conv of
    the downsampling bottlenecks (ResNet-B, the torchvision / NVIDIA "v1.5"
    model, which NVIDIA reports ~0.5 % better top-1 than v1 at equal
    parameter count; also the placement in the released chainerkfac
    ResNet-50-D). Note that Chainer's own ``examples/imagenet/resnet50.py``
    (the likely base of the paper's code) and the MSRA original put the
    stride on the first 1x1 conv; the paper does not say which it used, so
    ``stride_on='1x1'`` reproduces that "v1" model. The max pool uses
    Chainer's defaults (pad 0, ``cover_all=True``, i.e. Caffe's ceil mode:
    112 -> 56).

    Args:
        n_class (int): number of classes.
        bn_gamma_init (str): ``'ones'`` (default) or ``'paper'`` (N(1, 0.05)).
        stride_on (str): ``'3x3'`` (default) or ``'1x1'``.
    """

    def __init__(self, n_class=1000, bn_gamma_init='ones', stride_on='3x3'):
        super(ResNet50, self).__init__()
        kw = dict(bn_gamma_init=bn_gamma_init, stride_on=stride_on)
        with self.init_scope():
            self.conv1 = _conv(3, 64, 7, 2)
            self.bn1 = _bn(64, bn_gamma_init)
            (self.res2, self.res3, self.res4,
             self.res5) = _resnet50_stages(**kw)
            self.fc = _fc(2048, n_class)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return _resnet50_head(self, h)


class ResNet50D(chainer.Chain):
    """ResNet-50-D (He et al. 2018, "Bag of Tricks"), as in the released
    chainerkfac ImageNet example (``examples/imagenet/models/resnet50_d.py``).

    Stem: conv1_1 3x3/2 (32, with bias), conv1_2 3x3 (32), conv1_3 3x3
    (64), each + BN + ReLU, then 3x3/2 max pool. Stages as in
    :class:`ResNet50` with the stride on the 3x3 conv; in res3..res5 the
    projection shortcut is a 2x2/2 average pool followed by a stride-1 1x1
    conv + BN (res2's projection has stride 1, so no pool). Global average
    pool, fc with bias. Only conv1_1 and fc have a bias; no dropout.

    Input ``(N, 3, H, W)``, output ``(N, n_class)``. Parameters: 25,576,296
    for 1000 classes. Link names match the released code, so its npz
    snapshots load (mixup / random erasing / loss live outside the model
    here).

    Args:
        n_class (int): number of classes.
        bn_gamma_init (str): ``'paper'`` (default, N(1, 0.05) as the released
            code) or ``'ones'``.
    """

    def __init__(self, n_class=1000, bn_gamma_init='paper'):
        super(ResNet50D, self).__init__()
        kw = dict(bn_gamma_init=bn_gamma_init, stride_on='3x3',
                  avg_down=True)
        with self.init_scope():
            self.conv1_1 = _conv(3, 32, 3, 2, nobias=False)
            self.bn1_1 = _bn(32, bn_gamma_init)
            self.conv1_2 = _conv(32, 32, 3)
            self.bn1_2 = _bn(32, bn_gamma_init)
            self.conv1_3 = _conv(32, 64, 3)
            self.bn1_3 = _bn(64, bn_gamma_init)
            (self.res2, self.res3, self.res4,
             self.res5) = _resnet50_stages(**kw)
            self.fc = _fc(2048, n_class)

    def forward(self, x):
        h = F.relu(self.bn1_1(self.conv1_1(x)))
        h = F.relu(self.bn1_2(self.conv1_2(h)))
        h = F.relu(self.bn1_3(self.conv1_3(h)))
        return _resnet50_head(self, h)


class ResNetCIFAR(chainer.Chain):
    """CIFAR-style ResNet (He et al. 2016, sec. 4.2), depth = 6n + 2.

    conv1 3x3 (16, no bias) -> BN -> ReLU -> res2/res3/res4 = n basic
    blocks each with 16/32/64 channels (stride 1/2/2) -> global average
    pool -> fc(64, n_class). When the shape changes (first block of res3
    and res4) the shortcut is a strided 1x1 conv + BN (option B; the paper's
    CIFAR models used option A, zero-padding, which has no parameters and
    so no K-FAC block). Depth 20: 21 conv + 21 BN + 1 FC.

    Input ``(N, in_channels, H, W)``: 1x28x28 (maps 28 -> 14 -> 7) or
    3x32x32 (32 -> 16 -> 8); output ``(N, n_class)``.

    Args:
        depth (int): 20, 32, 44, 56, 110, ... (must be 6n + 2).
        n_class (int): number of classes.
        in_channels (int): input channels (1 or 3).
        bn_gamma_init (str): ``'ones'`` (default) or ``'paper'``.
    """

    def __init__(self, depth=20, n_class=10, in_channels=3,
                 bn_gamma_init='ones'):
        super(ResNetCIFAR, self).__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError('depth must be 6n + 2 with n >= 1, got {}'
                             .format(depth))
        n = (depth - 2) // 6
        self.depth = depth
        kw = dict(bn_gamma_init=bn_gamma_init)
        with self.init_scope():
            self.conv1 = _conv(in_channels, 16, 3)
            self.bn1 = _bn(16, bn_gamma_init)
            self.res2 = self._stage(n, 16, 16, 1, kw)
            self.res3 = self._stage(n, 16, 32, 2, kw)
            self.res4 = self._stage(n, 32, 64, 2, kw)
            self.fc = _fc(64, n_class)

    @staticmethod
    def _stage(n, in_ch, out_ch, stride, kw):
        proj = stride != 1 or in_ch != out_ch
        blocks = [BasicBlock(in_ch, out_ch, stride, proj=proj, **kw)]
        blocks += [BasicBlock(out_ch, out_ch, **kw) for _ in range(n - 1)]
        return Stage(*blocks)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.res4(self.res3(self.res2(h)))
        h = F.average(h, axis=(2, 3))
        return self.fc(h)


def _cifar(depth):
    def make(n_class=10, **kwargs):
        return ResNetCIFAR(depth=depth, n_class=n_class, **kwargs)
    make.__name__ = make.__qualname__ = 'resnet{}'.format(depth)
    make.__doc__ = ':class:`ResNetCIFAR` with depth {}.'.format(depth)
    return make


ARCHS = {
    'resnet50': ResNet50,
    'resnet50_d': ResNet50D,
    'resnet8': _cifar(8),      # one block per stage: tests and the demo
    'resnet20': _cifar(20),
    'resnet32': _cifar(32),
    'resnet44': _cifar(44),
    'resnet56': _cifar(56),
    'resnet110': _cifar(110),
}


def get_model(arch, n_class, **kwargs):
    """Builds ``ARCHS[arch](n_class=n_class, **kwargs)``.

    Raises:
        ValueError: for an unknown ``arch``; the message lists valid names.
    """
    try:
        cls = ARCHS[arch]
    except KeyError:
        raise ValueError('unknown arch {!r}; valid names: {}'.format(
            arch, ', '.join(sorted(ARCHS))))
    return cls(n_class=n_class, **kwargs)
