"""Fashion-MNIST loader reading the IDX gzip files shipped by Debian.

The files are those of the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist`` by default); nothing is downloaded.
"""
import gzip
import os
import zlib

import numpy

import chainer

DEFAULT_ROOT = '/usr/share/datasets/fashion-mnist'

_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
_N_CLASS = 10
_INSTALL_HINT = 'install it with `apt-get install dataset-fashion-mnist`'


def _read_gzip(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(
            'Fashion-MNIST file not found: {}; {}'.format(path, _INSTALL_HINT))
    try:
        with gzip.open(path, 'rb') as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(
            'corrupt Fashion-MNIST file {}: {}'.format(path, e)) from e


def _parse_idx(path, magic, ndim):
    """Parse one IDX file; return a uint8 array of the declared shape."""
    data = _read_gzip(path)
    header_size = 4 * (1 + ndim)
    if len(data) < header_size:
        raise ValueError('corrupt Fashion-MNIST file {}: {} bytes, shorter '
                         'than the IDX header'.format(path, len(data)))
    header = numpy.frombuffer(data, dtype='>u4', count=1 + ndim)
    if int(header[0]) != magic:
        raise ValueError('corrupt Fashion-MNIST file {}: magic number {} '
                         '(expected {})'.format(path, int(header[0]), magic))
    shape = tuple(int(d) for d in header[1:])
    size = int(numpy.prod(shape))
    if len(data) != header_size + size:
        raise ValueError('corrupt Fashion-MNIST file {}: {} data bytes for '
                         'shape {} (expected {})'.format(
                             path, len(data) - header_size, shape, size))
    return numpy.frombuffer(data, dtype=numpy.uint8,
                            offset=header_size).reshape(shape)


def load_fashion_mnist(split='train', root=DEFAULT_ROOT, limit=None,
                       dtype=numpy.float32):
    """Load Fashion-MNIST as NumPy arrays.

    Args:
        split (str): ``'train'`` (60,000 examples) or ``'test'`` (10,000).
        root (str): Directory holding the four ``*-ubyte.gz`` files.
        limit (int or None): Keep only the first ``limit`` examples.
        dtype: Floating point dtype of the images.

    Returns:
        tuple: ``(images, labels)``; images of shape ``(N, 1, 28, 28)``
        scaled to ``[0, 1]``, labels of shape ``(N,)`` and dtype int32.

    Raises:
        FileNotFoundError: ``root`` or one of the files is missing.
        ValueError: A file is corrupt, truncated or inconsistent.
    """
    if split not in _FILES:
        raise ValueError("split must be 'train' or 'test', got {!r}".format(
            split))
    if limit is not None and limit < 0:
        raise ValueError('limit must be non-negative, got {}'.format(limit))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            'Fashion-MNIST directory not found: {}; {}'.format(
                root, _INSTALL_HINT))
    image_file, label_file = (os.path.join(root, f) for f in _FILES[split])
    images = _parse_idx(image_file, _IMAGES_MAGIC, 3)
    labels = _parse_idx(label_file, _LABELS_MAGIC, 1)
    if images.shape[1:] != (28, 28):
        raise ValueError('corrupt Fashion-MNIST file {}: image shape {} '
                         '(expected 28x28)'.format(image_file,
                                                   images.shape[1:]))
    if len(images) != len(labels):
        raise ValueError('Fashion-MNIST files disagree: {} images in {} but '
                         '{} labels in {}'.format(len(images), image_file,
                                                  len(labels), label_file))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if labels.size and labels.max() >= _N_CLASS:
        raise ValueError('corrupt Fashion-MNIST file {}: label {} out of '
                         'range'.format(label_file, int(labels.max())))
    x = images.astype(dtype)[:, None]
    x /= 255
    return x, labels.astype(numpy.int32)


def get_fashion_mnist(split='train', root=DEFAULT_ROOT, limit=None,
                      dtype=numpy.float32):
    """Same as :func:`load_fashion_mnist`, as a ``TupleDataset``."""
    x, t = load_fashion_mnist(split, root=root, limit=limit, dtype=dtype)
    return chainer.datasets.TupleDataset(x, t)
