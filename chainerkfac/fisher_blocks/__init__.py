"""Fisher blocks: per-link curvature approximations, and their factory."""
import chainer.links as L

from chainerkfac.fisher_blocks.base import FisherBlock  # NOQA
from chainerkfac.fisher_blocks.batch_normalization import BatchNormalizationBlock  # NOQA
from chainerkfac.fisher_blocks.convolution_2d import Convolution2DBlock  # NOQA
from chainerkfac.fisher_blocks.kronecker import KroneckerFactoredBlock  # NOQA
from chainerkfac.fisher_blocks.linear import LinearBlock  # NOQA


def _block_for(name, link, bn_fisher):
    """The block of one link, or None when the link has none (plain SGD)."""
    if isinstance(link, L.Convolution2D):
        groups = getattr(link, 'groups', 1)
        if groups != 1:
            raise ValueError(
                'chainerkfac: link {} is a grouped convolution (groups={}); '
                'K-FAC supports groups=1 only'.format(name, groups))
        return Convolution2DBlock(name, link)
    if isinstance(link, L.Linear):
        return LinearBlock(name, link)
    if isinstance(link, L.BatchNormalization):
        if (getattr(link, 'axis', None) is None
                and getattr(link, 'gamma', None) is not None
                and getattr(link, 'beta', None) is not None):
            return BatchNormalizationBlock(name, link, bn_fisher)
    return None


def create_fisher_blocks(model, bn_fisher='full'):
    """Builds the Fisher blocks of a model.

    Args:
        model (chainer.Link): the model.
        bn_fisher (str): shape of the BatchNormalization blocks.

    Returns:
        tuple: ``(blocks, plain)``: the blocks in the model's link order, and
        the names of links that own parameters but get no block (their
        parameters are updated by momentum SGD on the plain gradient).

    Raises:
        ValueError: a link's configuration is not supported (names the link).
    """
    blocks, plain = [], []
    for name, link in model.namedlinks():
        if not link._params:
            continue
        block = _block_for(name, link, bn_fisher)
        if block is None:
            plain.append(name)
        else:
            blocks.append(block)
    return blocks, plain
