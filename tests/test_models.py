"""ResNet models (models/resnet.py): structure, shapes, init, registry."""
import warnings

import chainer
import chainer.functions as F
import chainer.links as L
import numpy
import pytest

from chainerkfac.optimizers import KFAC
from models import resnet
from models.resnet import ResNet50
from models.resnet import ResNet50D
from models.resnet import ResNetCIFAR


def link_counts(model):
    counts = {'conv': 0, 'bn': 0, 'fc': 0}
    kinds = {L.Convolution2D: 'conv', L.BatchNormalization: 'bn',
             L.Linear: 'fc'}
    for _, link in model.namedlinks(skipself=True):
        if type(link) in kinds:
            counts[kinds[type(link)]] += 1
    return counts


def n_params(model):
    return sum(p.size for p in model.params())


@pytest.fixture(scope='module')
def resnet50_1000():
    numpy.random.seed(0)
    return ResNet50(1000)


@pytest.fixture(scope='module')
def resnet50d_1000():
    numpy.random.seed(0)
    return ResNet50D(1000)


@pytest.mark.parametrize('arch,n_conv', [
    ('resnet20', 21), ('resnet32', 33)])
def test_cifar_link_counts(arch, n_conv):
    # 1 stem conv + 2 per basic block + 2 projections.
    model = resnet.get_model(arch, 10)
    assert link_counts(model) == {'conv': n_conv, 'bn': n_conv, 'fc': 1}


def test_resnet50_links_and_params(resnet50_1000):
    # 107 K-FAC blocks (CVPR poster); 25,557,032 parameters (He et al.).
    assert link_counts(resnet50_1000) == {'conv': 53, 'bn': 53, 'fc': 1}
    assert n_params(resnet50_1000) == 25557032
    biases = [n for n, _ in resnet50_1000.namedparams() if n.endswith('/b')]
    assert biases == ['/fc/b']


def test_resnet50d_links_and_params(resnet50d_1000):
    # 111 K-FAC blocks; the deeper stem adds 19,264 parameters.
    assert link_counts(resnet50d_1000) == {'conv': 55, 'bn': 55, 'fc': 1}
    assert n_params(resnet50d_1000) == 25576296
    biases = sorted(n for n, _ in resnet50d_1000.namedparams()
                    if n.endswith('/b'))
    assert biases == ['/conv1_1/b', '/fc/b']


def test_kfac_sees_every_layer(resnet50_1000, resnet50d_1000):
    for model, n_blocks in [(resnet50_1000, 107), (resnet50d_1000, 111),
                            (ResNetCIFAR(20), 43)]:
        opt = KFAC()
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # no link left without a block
            opt.setup(model)
        assert len(opt.fisher_blocks) == n_blocks


def test_link_names(resnet50_1000, resnet50d_1000):
    names = set(n for n, _ in resnet50_1000.namedlinks(skipself=True))
    assert {'/conv1', '/bn1', '/res2/0/conv1', '/res2/0/conv4',
            '/res3/3/bn3', '/res5/2/conv3', '/fc'} <= names
    assert '/res2/1/conv4' not in names
    names = set(n for n, _ in resnet50d_1000.namedlinks(skipself=True))
    assert {'/conv1_1', '/bn1_3', '/res4/5/conv3', '/res5/0/bn4'} <= names


def test_stride_placement(resnet50d_1000):
    m = ResNet50(10)
    assert m.res3[0].conv1.stride == (1, 1)
    assert m.res3[0].conv2.stride == (2, 2)
    assert m.res3[0].conv4.stride == (2, 2)
    m = ResNet50(10, stride_on='1x1')
    assert m.res4[0].conv1.stride == (2, 2)
    assert m.res4[0].conv2.stride == (1, 1)
    assert n_params(m) == n_params(ResNet50(10))
    d = resnet50d_1000
    for stage in (d.res3, d.res4, d.res5):
        assert stage[0].conv2.stride == (2, 2)
        assert stage[0].conv4.stride == (1, 1)  # avg pool does the stride
        assert stage[0].avg_down
    with pytest.raises(ValueError, match='stride_on'):
        ResNet50(10, stride_on='7x7')


@pytest.mark.parametrize('cls', [ResNet50, ResNet50D])
def test_resnet50_forward_shape(cls):
    numpy.random.seed(0)
    model = cls(n_class=10)
    x = numpy.random.randn(1, 3, 64, 64).astype(numpy.float32)
    with chainer.using_config('train', False):
        y = model(x)
    assert y.shape == (1, 10)
    assert y.dtype == numpy.float32
    assert numpy.isfinite(y.array).all()


@pytest.mark.parametrize('shape', [(2, 1, 28, 28), (2, 3, 32, 32)])
def test_cifar_forward_shape(shape):
    model = ResNetCIFAR(20, n_class=10, in_channels=shape[1])
    y = model(numpy.random.randn(*shape).astype(numpy.float32))
    assert y.shape == (2, 10)


def test_cifar_backward():
    rng = numpy.random.RandomState(0)
    numpy.random.seed(0)
    model = ResNetCIFAR(20, n_class=10, in_channels=1)
    x = rng.randn(4, 1, 28, 28).astype(numpy.float32)
    t = rng.randint(0, 10, 4).astype(numpy.int32)
    loss = F.softmax_cross_entropy(model(x), t)
    model.cleargrads()
    loss.backward()
    for name, p in model.namedparams():
        assert p.grad is not None, name
        assert numpy.isfinite(p.grad).all(), name
        assert numpy.abs(p.grad).max() > 0, name


def test_initializers(resnet50_1000, resnet50d_1000):
    def gammas(model):
        return numpy.concatenate([
            link.gamma.array for _, link in model.namedlinks()
            if isinstance(link, L.BatchNormalization)])

    def betas(model):
        return numpy.concatenate([
            link.beta.array for _, link in model.namedlinks()
            if isinstance(link, L.BatchNormalization)])

    assert (gammas(resnet50_1000) == 1).all()
    g = gammas(resnet50d_1000)
    assert abs(g.mean() - 1) < 5e-3 and abs(g.std() - 0.05) < 5e-3
    assert (betas(resnet50d_1000) == 0).all()
    g = gammas(ResNetCIFAR(20, bn_gamma_init='paper'))
    assert abs(g.mean() - 1) < 0.02 and 0.03 < g.std() < 0.07
    bn = resnet50d_1000.res3[1].bn2
    assert bn.decay == 0.9 and bn.eps == 2e-5
    w = resnet50_1000.fc.W.array  # (1000, 2048): N(0, sqrt(2 / 2048))
    assert abs(w.std() / numpy.sqrt(2.0 / 2048) - 1) < 0.01
    assert (resnet50_1000.fc.b.array == 0).all()
    w = resnet50_1000.res4[2].conv2.W.array  # He: sqrt(2 / (256*3*3))
    assert abs(w.std() / numpy.sqrt(2.0 / (256 * 9)) - 1) < 0.01
    with pytest.raises(ValueError, match='bn_gamma_init'):
        ResNetCIFAR(20, bn_gamma_init='zeros')


def test_avg_pool_ceil_mode_on_odd_sizes():
    x = numpy.random.randn(2, 3, 7, 5).astype(numpy.float32)
    y = resnet.avg_pool_2x2_ceil(x).array
    assert y.shape == (2, 3, 4, 3)
    numpy.testing.assert_allclose(y[:, :, 0, 0], x[:, :, :2, :2].mean((2, 3)),
                                  rtol=1e-5)
    numpy.testing.assert_allclose(y[:, :, 3, 2], x[:, :, 6, 4], rtol=1e-5)
    numpy.testing.assert_allclose(y[:, :, 3, 0], x[:, :, 6, :2].mean(-1),
                                  rtol=1e-5)
    even = numpy.random.randn(1, 2, 4, 4).astype(numpy.float32)
    numpy.testing.assert_allclose(
        resnet.avg_pool_2x2_ceil(even).array,
        F.average_pooling_2d(even, 2, 2).array)
    # A ResNet-D downsampling block accepts an odd map: 7x7 -> 4x4.
    block = resnet.Bottleneck(8, 4, 16, stride=2, proj=True, avg_down=True)
    assert block(numpy.ones((1, 8, 7, 7), numpy.float32)).shape == \
        (1, 16, 4, 4)


def test_get_model():
    model = resnet.get_model('resnet20', 7, in_channels=1)
    assert isinstance(model, ResNetCIFAR) and model.depth == 20
    assert model.fc.W.shape == (7, 64)
    assert model.conv1.W.shape == (16, 1, 3, 3)
    assert resnet.get_model('resnet32', 10).depth == 32
    assert {'resnet50', 'resnet50_d', 'resnet20', 'resnet32'} <= \
        set(resnet.ARCHS)
    with pytest.raises(ValueError) as e:
        resnet.get_model('resnet18', 10)
    msg = str(e.value)
    assert "'resnet18'" in msg
    for name in resnet.ARCHS:
        assert name in msg


def test_bad_depth():
    with pytest.raises(ValueError, match='6n'):
        ResNetCIFAR(21)
