"""Fisher blocks: per-link curvature approximations, and their factory."""
import chainer.links as L

# the block classes (F401: the two base classes are only re-exported)
from chainerkfac.fisher_blocks.base import FisherBlock  # NOQA: F401
from chainerkfac.fisher_blocks.batch_normalization import \
    BatchNormalizationBlock
from chainerkfac.fisher_blocks.convolution_2d import Convolution2DBlock
from chainerkfac.fisher_blocks.kronecker import KroneckerFactoredBlock  # NOQA: F401
from chainerkfac.fisher_blocks.linear import LinearBlock


def block_for(name, link, bn_fisher='full'):
    """The block of one link, or None when the link has none (plain SGD):
    the default ``constructor`` of :class:`chainerkfac.KFAC`.

    Raises:
        ValueError: a grouped convolution (name it in ``exclude`` to train it
            by SGD).
    """
    if isinstance(link, L.Convolution2D):
        groups = getattr(link, 'groups', 1)
        if groups != 1:
            raise ValueError(
                'chainerkfac: link {} is a grouped convolution (groups={}); '
                'K-FAC supports groups=1 only (exclude=[{!r}] gives it '
                'momentum SGD)'.format(name, groups, name))
        return Convolution2DBlock(name, link)
    if isinstance(link, L.Linear):
        return LinearBlock(name, link)
    if isinstance(link, L.BatchNormalization):
        if (getattr(link, 'axis', None) is None
                and getattr(link, 'gamma', None) is not None
                and getattr(link, 'beta', None) is not None):
            return BatchNormalizationBlock(name, link, bn_fisher)
    return None


def is_excluded(exclude, name, link):
    """Whether ``exclude`` (link names, or a predicate ``(name, link)``)
    names this link or a chain it belongs to (``'/res2'`` covers
    ``'/res2/a/conv1'``)."""
    if callable(exclude):
        return bool(exclude(name, link))
    for other in exclude or ():
        if name == other or name.startswith(other.rstrip('/') + '/'):
            return True
    return False


def create_fisher_blocks(model, bn_fisher='full', exclude=(),
                         constructor=None):
    """Builds the Fisher blocks of a model.

    Args:
        model (chainer.Link): the model.
        bn_fisher (str): shape of the BatchNormalization blocks.
        exclude: link names, or a predicate ``(name, link)``: those links get
            no block.
        constructor: ``constructor(name, link)``: a block or None (default:
            :func:`block_for`).

    Returns:
        tuple: ``(blocks, plain)``: the blocks in the model's link order, and
        the names of links that own parameters but get no block (their
        parameters are updated by momentum SGD on the plain gradient).

    Raises:
        ValueError: a link's configuration is not supported (names the link),
            or ``exclude`` names a link the model does not have.
    """
    blocks, plain = [], []
    links = list(model.namedlinks())
    if not callable(exclude):
        unknown = sorted(set(exclude or ()) - set(n for n, _ in links))
        if unknown:
            raise ValueError('chainerkfac: exclude names links the model '
                             'does not have: {} (names are namedlinks() '
                             'paths, e.g. {!r})'.format(
                                 ', '.join(unknown), links[-1][0]))
    for name, link in links:
        if not link._params:
            continue
        if is_excluded(exclude, name, link):
            plain.append(name)
            continue
        block = (constructor(name, link) if constructor is not None
                 else block_for(name, link, bn_fisher))
        if block is None:
            plain.append(name)
        else:
            blocks.append(block)
    return blocks, plain
