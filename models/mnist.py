"""The two networks of the original repository's MNIST example.

``examples/mnist/train.py --arch mlp|cnn`` trains them. Both take
``(N, 1, 28, 28)`` images (a Linear link flattens its input, so
``(N, 784)`` works as well) and return logits. Link names are those of the
original example (``l1`` ... ``l3``; ``conv1``, ``conv2``, ``l3``, ``l4``)
and the initialisation is Chainer's default (LeCun-normal weights, zero
biases), as there.

The only difference: input sizes are given (784 and 800) instead of being
inferred at the first forward pass, so that every parameter exists when the
K-FAC optimizer is set up and when rank 0's weights are broadcast.
"""
import chainer
import chainer.functions as F
import chainer.links as L

#: pixels of one MNIST / Fashion-MNIST image
N_PIXELS = 28 * 28


class MLP(chainer.Chain):
    """784 -> 1000 -> 1000 -> ``n_class``, ReLU between (3 K-FAC blocks).

    Args:
        n_units (int): width of both hidden layers (1000 in the original).
        n_class (int): number of classes.
    """

    def __init__(self, n_units=1000, n_class=10):
        super(MLP, self).__init__()
        with self.init_scope():
            self.l1 = L.Linear(N_PIXELS, n_units)
            self.l2 = L.Linear(n_units, n_units)
            self.l3 = L.Linear(n_units, n_class)

    def forward(self, x):
        h = F.relu(self.l1(x))
        h = F.relu(self.l2(h))
        return self.l3(h)


class CNN(chainer.Chain):
    """LeNet-style network (4 K-FAC blocks)::

        conv1 5x5 (1 -> 20) -> ReLU -> 2x2 max pool      28 -> 24 -> 12
        conv2 5x5 (20 -> 50) -> ReLU -> 2x2 max pool     12 ->  8 ->  4
        l3 (50*4*4 = 800 -> 500) -> ReLU -> l4 (500 -> n_class)

    Convolutions without padding and with biases, as in the original.
    """

    def __init__(self, n_class=10):
        super(CNN, self).__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(1, 20, 5)
            self.conv2 = L.Convolution2D(20, 50, 5)
            self.l3 = L.Linear(50 * 4 * 4, 500)
            self.l4 = L.Linear(500, n_class)

    def forward(self, x):
        if x.ndim == 2:   # flat (N, 784) input, as get_mnist(ndim=1) gives
            x = F.reshape(x, (x.shape[0], 1, 28, 28))
        h = F.max_pooling_2d(F.relu(self.conv1(x)), 2)
        h = F.max_pooling_2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.l3(h))
        return self.l4(h)


ARCHS = {'mlp': MLP, 'cnn': CNN}
