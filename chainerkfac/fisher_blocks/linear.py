"""Fisher block of ``chainer.links.Linear``."""
from chainerkfac.fisher_blocks.base import compute_dtype
from chainerkfac.fisher_blocks.base import example_moment
from chainerkfac.fisher_blocks import kronecker


class LinearBlock(kronecker.KroneckerFactoredBlock):
    """K-FAC block of a fully-connected layer ``s = W a + b``.

    With N examples, ``abar_n = [a_n; 1]`` and ``gt_n = N dL/ds_n`` (the
    example's own loss gradient when L is the batch mean):
    ``A = (1/N) sum_n abar_n abar_n^T`` (``(d_in [+1])^2``) and
    ``G = (1/N) sum_n gt_n gt_n^T`` (``d_out^2``).
    """

    def forward(self, function, in_data):
        if 'A' not in self.due:
            return
        x = in_data[0]
        x = x.astype(compute_dtype(x), copy=False)
        n = x.shape[0]
        moment = (example_moment(x.T, n, 1.0, self.has_bias)
                  if self.record_moments else None)
        self.accumulate('A', kronecker.input_second_moment(
            x.T, n, self.has_bias), moment, n)

    def backward(self, function, in_data, gy, grad_scale):
        if 'G' not in self.due:
            return
        gy = gy.astype(compute_dtype(gy), copy=False)
        n = gy.shape[0]
        # (1/N) sum (N gy)(N gy)^T, with the loss scale removed
        moment = (example_moment(gy.T, n, (n / grad_scale) ** 2)
                  if self.record_moments else None)
        self.accumulate('G', kronecker.output_second_moment(
            gy.T, n / grad_scale ** 2), moment, n)
