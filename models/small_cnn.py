"""Tiny CNNs for 1x28x28 inputs (Fashion-MNIST), cheap enough for CPU tests."""
import chainer
import chainer.functions as F
import chainer.links as L


class SmallCNN(chainer.Chain):
    """conv(1->8, s2) -> BN -> relu -> conv(8->16, s2) -> BN -> relu
    -> global average pool -> linear(16->n_class).

    Spatial size goes 28 -> 14 -> 7. Returns logits.
    """

    def __init__(self, n_class=10):
        super(SmallCNN, self).__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(1, 8, 3, stride=2, pad=1,
                                         nobias=True)
            self.bn1 = L.BatchNormalization(8)
            self.conv2 = L.Convolution2D(8, 16, 3, stride=2, pad=1,
                                         nobias=True)
            self.bn2 = L.BatchNormalization(16)
            self.fc = L.Linear(16, n_class)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = F.average(h, axis=(2, 3))
        return self.fc(h)


class SmallCNNNoBN(chainer.Chain):
    """Same as :class:`SmallCNN` without batch normalization (convs with bias).
    """

    def __init__(self, n_class=10):
        super(SmallCNNNoBN, self).__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(1, 8, 3, stride=2, pad=1)
            self.conv2 = L.Convolution2D(8, 16, 3, stride=2, pad=1)
            self.fc = L.Linear(16, n_class)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        h = F.average(h, axis=(2, 3))
        return self.fc(h)


class DemoCNN(chainer.Chain):
    """The README demo's CNN for 1x28x28 inputs (about 60k parameters).

    conv(1->16, 3x3) -> BN -> relu -> conv(16->32, 3x3, stride 2) -> BN ->
    relu -> conv(32->32, 3x3, stride 2) -> BN -> relu -> linear(32*7*7 ->
    n_class). Spatial size goes 28 -> 14 -> 7. Returns logits.
    """

    def __init__(self, n_class=10):
        super(DemoCNN, self).__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(1, 16, 3, pad=1, nobias=True)
            self.bn1 = L.BatchNormalization(16)
            self.conv2 = L.Convolution2D(16, 32, 3, stride=2, pad=1,
                                         nobias=True)
            self.bn2 = L.BatchNormalization(32)
            self.conv3 = L.Convolution2D(32, 32, 3, stride=2, pad=1,
                                         nobias=True)
            self.bn3 = L.BatchNormalization(32)
            self.fc = L.Linear(32 * 7 * 7, n_class)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = F.relu(self.bn3(self.conv3(h)))
        return self.fc(h)
