"""The function hook that feeds the Fisher blocks during forward and
backward."""
import chainer

from chainerkfac.profiling import timed
from chainer.functions.connection import convolution_2d
from chainer.functions.connection import linear
from chainer.functions.normalization import batch_normalization

_CAPTURED_FUNCTIONS = (
    linear.LinearFunction,
    convolution_2d.Convolution2DFunction,
    batch_normalization.BatchNormalization,
)


class KFACStatisticsHook(chainer.FunctionHook):
    """Routes each call of a registered link's function to its Fisher block.

    A call belongs to a block when its second input (``W`` or ``gamma``) is
    that link's parameter array. The optimizer activates the hook only inside
    its ``update`` (``with hook: forward; backward``).

    Args:
        blocks (list of FisherBlock): the blocks to feed.
        grad_scale (float): loss scale applied to the backward pass.
    """

    name = 'KFACStatisticsHook'

    def __init__(self, blocks, grad_scale=1.0):
        self.blocks = blocks
        self.grad_scale = grad_scale
        self.timer = None
        self._by_key = None
        self._uninitialized = True

    def __enter__(self):
        self._by_key = None
        self._uninitialized = True
        for block in self.blocks:
            block.start_capture()
        return super(KFACStatisticsHook, self).__enter__()

    def _build_map(self):
        # Built once per update (parameters may be re-allocated between
        # updates), and again while some parameters are still uninitialised
        # (lazy links are initialised by this very forward pass).
        keys = [(block.key_array(), block) for block in self.blocks]
        self._by_key = {id(k): b for k, b in keys if k is not None}
        self._uninitialized = len(self._by_key) < len(keys)

    def _block_of(self, function, in_data):
        if not isinstance(function, _CAPTURED_FUNCTIONS) or len(in_data) < 2:
            return None
        key = in_data[1]
        if key is None:
            return None
        if self._by_key is None or (self._uninitialized
                                    and id(key) not in self._by_key):
            self._build_map()
        block = self._by_key.get(id(key))
        if block is not None and block.key_array() is key:
            return block
        return None

    def forward_postprocess(self, function, in_data):
        block = self._block_of(function, in_data)
        if block is not None:
            with timed(self.timer, 'statistics'):
                block.capture_forward(function, in_data)

    #: whether the backward pass feeds the blocks (off while the optimizer
    #: runs a backward pass whose gradients are not the statistics' source:
    #: the true gradient's pass when the Fisher is a Monte-Carlo one)
    capture_backward = True

    def backward_preprocess(self, function, in_data, out_grad):
        if not self.capture_backward:
            return
        block = self._block_of(function, in_data)
        if block is not None:
            with timed(self.timer, 'statistics'):
                block.capture_backward(function, in_data, out_grad,
                                       self.grad_scale)
