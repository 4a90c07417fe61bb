import gzip
import os
import shutil

import numpy
import pytest

import chainer

from chainerkfac.datasets import fashion_mnist
from chainerkfac.datasets import get_fashion_mnist
from chainerkfac.datasets import load_fashion_mnist

ROOT = fashion_mnist.DEFAULT_ROOT

requires_data = pytest.mark.skipif(
    not os.path.isdir(ROOT),
    reason='Fashion-MNIST not installed (apt-get install '
           'dataset-fashion-mnist)')


def _write_idx(path, magic, shape, payload):
    header = numpy.array([magic] + list(shape), dtype='>u4').tobytes()
    with gzip.open(str(path), 'wb') as f:
        f.write(header + payload)


def _write_split(root, split, images, labels):
    """Write a valid tiny IDX pair for ``split`` into ``root``."""
    image_file, label_file = fashion_mnist._FILES[split]
    _write_idx(root / image_file, 2051, images.shape, images.tobytes())
    _write_idx(root / label_file, 2049, labels.shape, labels.tobytes())


def _tiny(n=5):
    rng = numpy.random.RandomState(0)
    images = rng.randint(0, 256, size=(n, 28, 28)).astype(numpy.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = (numpy.arange(n) % 10).astype(numpy.uint8)
    return images, labels


@requires_data
@pytest.mark.parametrize('split,n', [('train', 60000), ('test', 10000)])
def test_full_split(split, n):
    x, t = load_fashion_mnist(split)
    assert x.shape == (n, 1, 28, 28)
    assert x.dtype == numpy.float32
    assert t.shape == (n,)
    assert t.dtype == numpy.int32
    assert x.min() == 0.0 and x.max() == 1.0
    assert t.min() == 0 and t.max() == 9
    # Fashion-MNIST is balanced: every class appears n / 10 times.
    assert (numpy.bincount(t, minlength=10) == n // 10).all()


@requires_data
def test_limit_and_dtype():
    x, t = load_fashion_mnist('test', limit=100, dtype=numpy.float64)
    assert x.shape == (100, 1, 28, 28)
    assert x.dtype == numpy.float64
    assert t.shape == (100,)
    x_all, t_all = load_fashion_mnist('test')
    numpy.testing.assert_allclose(x, x_all[:100], rtol=1e-6)
    numpy.testing.assert_array_equal(t, t_all[:100])


@requires_data
def test_get_fashion_mnist():
    d = get_fashion_mnist('train', limit=3)
    assert isinstance(d, chainer.datasets.TupleDataset)
    assert len(d) == 3
    x, t = d[0]
    assert x.shape == (1, 28, 28)
    assert t.dtype == numpy.int32


def test_tiny_files_roundtrip(tmp_path):
    images, labels = _tiny()
    _write_split(tmp_path, 'train', images, labels)
    x, t = load_fashion_mnist('train', root=str(tmp_path))
    numpy.testing.assert_allclose(x[:, 0], images / 255.0, rtol=1e-6)
    numpy.testing.assert_array_equal(t, labels)
    assert x[0, 0, 0, 0] == 0.0 and x[0, 0, 0, 1] == 1.0
    x, t = load_fashion_mnist('train', root=str(tmp_path), limit=2)
    assert x.shape == (2, 1, 28, 28) and t.shape == (2,)
    x, t = load_fashion_mnist('train', root=str(tmp_path), limit=0)
    assert x.shape == (0, 1, 28, 28) and t.shape == (0,)


def test_missing_root(tmp_path):
    root = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError) as e:
        load_fashion_mnist(root=root)
    assert root in str(e.value)
    assert 'apt-get install dataset-fashion-mnist' in str(e.value)


def test_missing_file(tmp_path):
    images, labels = _tiny()
    _write_split(tmp_path, 'train', images, labels)
    os.remove(str(tmp_path / 'train-labels-idx1-ubyte.gz'))
    with pytest.raises(FileNotFoundError) as e:
        load_fashion_mnist(root=str(tmp_path))
    assert 'train-labels-idx1-ubyte.gz' in str(e.value)
    assert 'apt-get install dataset-fashion-mnist' in str(e.value)


def test_bad_split():
    with pytest.raises(ValueError):
        load_fashion_mnist('valid')


def _corrupt_cases():
    images, labels = _tiny()
    header_i = numpy.array([2051, 5, 28, 28], dtype='>u4').tobytes()
    return {
        'not_gzip': ('train-images-idx3-ubyte.gz', b'not a gzip file'),
        'truncated_gzip': ('train-images-idx3-ubyte.gz',
                           gzip.compress(header_i + images.tobytes())[:-20]),
        'short_header': ('train-images-idx3-ubyte.gz',
                         gzip.compress(header_i[:6])),
        'short_data': ('train-images-idx3-ubyte.gz',
                       gzip.compress(header_i + images.tobytes()[:-1])),
        'bad_magic': ('train-labels-idx1-ubyte.gz', gzip.compress(
            numpy.array([2051, 5], '>u4').tobytes() + labels.tobytes())),
        'count_mismatch': ('train-labels-idx1-ubyte.gz', gzip.compress(
            numpy.array([2049, 4], '>u4').tobytes() + labels[:4].tobytes())),
        'bad_label': ('train-labels-idx1-ubyte.gz', gzip.compress(
            numpy.array([2049, 5], '>u4').tobytes() +
            numpy.array([0, 1, 2, 3, 10], numpy.uint8).tobytes())),
        'bad_image_shape': ('train-images-idx3-ubyte.gz', gzip.compress(
            numpy.array([2051, 5, 27, 28], '>u4').tobytes() +
            images[:, :27].tobytes())),
    }


@pytest.mark.parametrize('case', sorted(_corrupt_cases()))
def test_corrupt_file(tmp_path, case):
    images, labels = _tiny()
    _write_split(tmp_path, 'train', images, labels)
    name, raw = _corrupt_cases()[case]
    with open(str(tmp_path / name), 'wb') as f:
        f.write(raw)
    with pytest.raises(ValueError) as e:
        load_fashion_mnist(root=str(tmp_path))
    assert name in str(e.value)


def test_copy_of_installed_files_is_read(tmp_path):
    """A copy of the real test split under another root loads identically."""
    if not os.path.isdir(ROOT):
        pytest.skip('Fashion-MNIST not installed')
    for name in fashion_mnist._FILES['test']:
        shutil.copy(os.path.join(ROOT, name), str(tmp_path / name))
    x, t = load_fashion_mnist('test', root=str(tmp_path), limit=10)
    x0, t0 = load_fashion_mnist('test', limit=10)
    numpy.testing.assert_array_equal(x, x0)
    numpy.testing.assert_array_equal(t, t0)
