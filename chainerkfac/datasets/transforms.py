"""Batch-level augmentations of the original ImageNet recipe.

Running mixup and random erasing as in Osawa et al.'s
``examples/imagenet/models/resnet50_d.py`` (``_mixup``, ``_random_erase``)
and a soft-target cross-entropy.  Arrays may be NumPy or CuPy (the backend
is taken from ``x`` with ``chainer.backend.get_array_module``); random
numbers are always drawn on the host from a ``numpy.random.RandomState``
and copied to the device, so a seed gives the same result on CPU and GPU.
"""
import numpy

import chainer
from chainer import backend
import chainer.functions as F


def _mixing_rows(prev, n, xp):
    """The ``n`` rows of ``prev`` to mix with: ``prev[k % len(prev)]``."""
    m = len(prev)
    if m == n:
        return prev
    if m > n:
        return prev[:n]
    return prev[xp.arange(n) % m]


def mixup(x, t_onehot, prev_x, prev_t, alpha, rng):
    """Mix a batch with a previous batch (mixup of the original recipe).

    ``lam_i ~ Beta(alpha, alpha)`` per sample, ``lam_i <- max(lam_i,
    1 - lam_i)``; ``x_mix[i] = lam_i x[i] + (1 - lam_i) prev_x[i]`` and
    ``t_mix[i] = lam_i t[i] + (1 - lam_i) prev_t[i]``.  If ``prev_x`` has
    more rows than ``x`` its first ``len(x)`` rows are used (fewer rows:
    they are cycled, ``prev_x[i % len(prev_x)]``).

    Args:
        x: ``(N, ...)`` float array.
        t_onehot: ``(N, K)`` float array of (soft) targets.
        prev_x, prev_t: Previous batch and its targets, or ``None``.
        alpha (float): Beta parameter.
        rng (numpy.random.RandomState): Draws the ``N`` lambdas
            (``rng.beta(alpha, alpha, N)``; nothing is drawn if ``prev_x``
            is ``None``).

    Returns:
        ``(x_mix, t_mix)`` of the shapes and dtypes of ``x`` and
        ``t_onehot``; the inputs themselves if ``prev_x`` is ``None``.
    """
    if prev_x is None:
        return x, t_onehot
    xp = backend.get_array_module(x)
    n = len(x)
    lam = rng.beta(alpha, alpha, n)
    lam = numpy.maximum(lam, 1.0 - lam)
    lam_x = xp.asarray(lam.astype(x.dtype).reshape((n,) + (1,) * (x.ndim - 1)))
    lam_t = xp.asarray(lam.astype(t_onehot.dtype).reshape(n, 1))
    px = _mixing_rows(prev_x, n, xp)
    pt = _mixing_rows(prev_t, n, xp)
    x_mix = lam_x * x + (1 - lam_x) * px
    t_mix = lam_t * t_onehot + (1 - lam_t) * pt
    return x_mix.astype(x.dtype, copy=False), \
        t_mix.astype(t_onehot.dtype, copy=False)


class RunningMixup(object):
    """Running mixup: each batch is mixed with the previous *mixed* batch.

    ``__call__(x, t)`` takes ``x`` ``(N, ...)`` float and integer labels
    ``t`` ``(N,)`` and returns ``(x_mixed, t_soft)`` with ``t_soft`` of
    shape ``(N, n_class)`` and the dtype of ``x``; each row of ``t_soft``
    sums to 1.  The first batch (and the first after :meth:`reset`) is
    returned unmixed with one-hot targets.  The returned pair is kept (by
    reference; it is not modified here) as the partner of the next batch,
    as the original with ``running_mixup=True``.  See :func:`mixup` for the
    definition and for batches of a different size.

    Unlike the original, whose in-place random erasing also erased the
    stored batch, apply :func:`random_erasing` *after* this (it returns a
    new array) so the stored batch stays unerased.

    Args:
        alpha (float): Beta parameter (0.4 for 4K-16K batches, 0.6 for
            32K/64K, 1.0 for 128K in the released configs).
        n_class (int): Number of classes.
        seed: Seed of the ``numpy.random.RandomState`` (``self.rng``).
    """

    def __init__(self, alpha, n_class, seed=None):
        if alpha <= 0:
            raise ValueError('alpha must be positive, got {}'.format(alpha))
        self.alpha = alpha
        self.n_class = n_class
        self.rng = numpy.random.RandomState(seed)
        self.reset()

    def reset(self):
        """Forget the previous batch (the next batch is not mixed)."""
        self.prev_x = None
        self.prev_t = None

    def __call__(self, x, t):
        xp = backend.get_array_module(x)
        t_onehot = xp.eye(self.n_class, dtype=x.dtype)[t]
        x, t_soft = mixup(x, t_onehot, self.prev_x, self.prev_t,
                          self.alpha, self.rng)
        self.prev_x, self.prev_t = x, t_soft
        return x, t_soft


def random_erasing(x, rng, p=0.5, area=(0.02, 0.25), aspect=(0.3, 1.0),
                   value=0):
    """Random erasing of the original recipe; returns a new array.

    For each sample ``i`` of ``x`` ``(N, C, H, W)``, with probability ``p``:
    area fraction ``s ~ U(area)``, aspect ``r ~ U(aspect)``, patch
    ``h = round(sqrt(s H W r))``, ``w = round(sqrt(s H W / r))``, swapped
    with probability 1/2, each clipped to ``[1, H]`` / ``[1, W]``; top-left
    corner uniform over all positions that keep the patch inside the image
    (the original excluded the last one); every channel of the patch is
    set to ``value`` (0 = the mean after mean subtraction).

    Random numbers per sample, in order: ``u`` (erase if ``u < p``), then,
    only if erasing, ``s``, ``r``, swap, top, left, all from ``rng``
    (a ``numpy.random.RandomState``) on the host.

    Returns:
        Array like ``x`` (same backend, shape and dtype); ``x`` is not
        modified.
    """
    xp = backend.get_array_module(x)
    n, _, h, w = x.shape
    box = numpy.zeros((n, 4), dtype=numpy.int64)  # top, bottom, left, right
    for i in range(n):
        if not rng.uniform() < p:
            continue
        s = rng.uniform(area[0], area[1]) * h * w
        r = rng.uniform(aspect[0], aspect[1])
        eh = int(round(numpy.sqrt(s * r)))
        ew = int(round(numpy.sqrt(s / r)))
        if rng.randint(2):
            eh, ew = ew, eh
        eh = min(max(eh, 1), h)
        ew = min(max(ew, 1), w)
        top = rng.randint(0, h - eh + 1)
        left = rng.randint(0, w - ew + 1)
        box[i] = top, top + eh, left, left + ew
    box = xp.asarray(box)
    rows = xp.arange(h)[None, :]
    cols = xp.arange(w)[None, :]
    in_rows = (rows >= box[:, 0:1]) & (rows < box[:, 1:2])  # (N, H)
    in_cols = (cols >= box[:, 2:3]) & (cols < box[:, 3:4])  # (N, W)
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return xp.where(mask, x.dtype.type(value), x)


def soft_cross_entropy(y, t_soft):
    """Cross-entropy with soft targets, averaged over the batch.

    ``loss = -(1/N) sum_i sum_k t[i, k] log_softmax(y)[i, k]`` for logits
    ``y`` ``(N, K)`` and targets ``t_soft`` ``(N, K)`` (rows summing to 1).
    Equals ``F.softmax_cross_entropy(y, t)`` for one-hot ``t_soft``.

    Returns:
        chainer.Variable: Scalar loss.
    """
    if isinstance(t_soft, chainer.Variable):
        t_soft = t_soft.array
    t_soft = t_soft.astype(y.dtype, copy=False)
    # Chainer's own soft-target loss: the same value and gradient
    # ((softmax(y) - t) / N), and a SoftmaxCrossEntropy node, which is how
    # KFAC(fisher='mc') finds the logits
    return F.softmax_cross_entropy(y, t_soft)
