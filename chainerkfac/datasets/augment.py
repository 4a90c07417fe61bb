"""Training-batch augmentation in the main process, with a saved random state.

The original recipe: random crop and horizontal flip, normalisation, running
mixup and random erasing. Doing all of it here, from random states that are
serialized with the trainer, makes a resumed run draw exactly what an
uninterrupted one draws (loader threads only decode).
"""
import chainer
import numpy
from chainer import training

from chainerkfac.datasets import transforms


def _serialize_random_state(serializer, rng):
    """Saves/loads a ``numpy.random.RandomState`` (MT19937 state)."""
    name, keys, pos, has_gauss, cached = rng.get_state()
    keys = serializer('keys', keys)
    pos = int(serializer('pos', pos))
    has_gauss = int(serializer('has_gauss', has_gauss))
    cached = float(serializer('cached_gaussian', cached))
    rng.set_state((name, numpy.asarray(keys, numpy.uint32), pos, has_gauss,
                   cached))


class BatchAugmenter(object):
    """Converter: list of ``(image HWC 0-255, label)`` -> ``(x, t)``.

    Per example: a uniform random ``crop x crop`` window and a horizontal
    flip with probability 1/2, then ``(x - mean) / std``. Per batch, when
    enabled: running mixup
    (:class:`~chainerkfac.datasets.transforms.RunningMixup`; ``t`` becomes soft
    targets ``(N, n_class)``) and random erasing.

    Args:
        crop_size (int): output side.
        mean, std: per-channel arrays broadcastable to ``(C, 1, 1)``.
        n_class (int): number of classes (for mixup).
        mixup_alpha (float): Beta parameter; 0 disables mixup.
        running_mixup (bool): mix with the previous mixed batch (the
            original); otherwise with a random permutation of the batch.
        erasing (dict or None): ``p``, ``area``, ``aspect`` of random
            erasing; None disables it.
        seed (int): seed of the random states (give each rank its own).
        dtype: dtype of ``x`` (float16 for fp16 training).
        return_labels (bool): return ``(x, t, labels)``: also the batch's
            integer labels, which the original reported its loss and
            accuracy against under mixup
            (:class:`~chainerkfac.training.classifier.Classifier`).
    """

    def __init__(self, crop_size, mean, std, n_class, mixup_alpha=0.0,
                 running_mixup=True, erasing=None, seed=0,
                 dtype=numpy.float32, return_labels=False):
        self.crop_size = crop_size
        self.mean = numpy.asarray(mean, numpy.float32)
        if self.mean.ndim == 1:
            self.mean = self.mean.reshape(-1, 1, 1)
        self.std = numpy.asarray(std, numpy.float32).reshape(-1, 1, 1)
        self.running_mixup = running_mixup
        self.n_class = n_class
        self.erasing = erasing
        self.dtype = dtype
        self.return_labels = return_labels
        self.rng = numpy.random.RandomState(seed)
        self.erasing_rng = numpy.random.RandomState(seed + 1)
        self.mixup = (transforms.RunningMixup(mixup_alpha, n_class, seed + 2)
                      if mixup_alpha > 0 else None)

    def crop(self, image):
        """Random crop and flip of one ``(H, W, C)`` image -> ``(C, c, c)``."""
        c = self.crop_size
        h, w = image.shape[:2]
        top = self.rng.randint(0, h - c + 1)
        left = self.rng.randint(0, w - c + 1)
        x = image[top:top + c, left:left + c].transpose(2, 0, 1)
        if self.rng.randint(2):
            x = x[:, :, ::-1]
        return (x - self.mean) / self.std

    def __call__(self, batch, device=None):
        x = numpy.stack([self.crop(image) for image, _ in batch]).astype(
            self.dtype)
        t = labels = numpy.array([label for _, label in batch], numpy.int32)
        if self.mixup is not None and self.running_mixup:
            x, t = self.mixup(x, t)
        elif self.mixup is not None:
            onehot = numpy.eye(self.n_class, dtype=x.dtype)[t]
            perm = self.mixup.rng.permutation(len(x))
            x, t = transforms.mixup(x, onehot, x[perm], onehot[perm],
                                    self.mixup.alpha, self.mixup.rng)
        if self.erasing is not None:
            x = transforms.random_erasing(x, self.erasing_rng,
                                          **self.erasing)
        out = (x, t, labels) if self.return_labels else (x, t)
        if device is not None:
            out = tuple(device.send(a) for a in out)
        return out

    def serialize(self, serializer):
        _serialize_random_state(serializer['rng'], self.rng)
        _serialize_random_state(serializer['erasing_rng'], self.erasing_rng)
        if self.mixup is None:
            return
        m = self.mixup
        _serialize_random_state(serializer['mixup_rng'], m.rng)
        loading = isinstance(serializer, chainer.serializer.Deserializer)
        for name in ('prev_x', 'prev_t'):
            value = getattr(m, name)
            if loading:
                loaded = serializer['mixup'](name, None)
                setattr(m, name, None if loaded.size == 0 else loaded)
            else:
                serializer['mixup'](name, numpy.zeros((0,), numpy.float32)
                                    if value is None else value)


class RandomStateExtension(training.Extension):
    """Puts objects' random states into trainer snapshots.

    ``RandomStateExtension(augmenter=aug, order=rng)``: each value is either
    an object with ``serialize`` or a ``numpy.random.RandomState`` (e.g. the
    one of an iterator's ``ShuffleOrderSampler``). It does nothing when
    called.
    """

    trigger = (1, 'epoch')
    priority = training.PRIORITY_READER

    def __init__(self, **objects):
        self.objects = objects

    def __call__(self, trainer):
        pass

    def serialize(self, serializer):
        for name, obj in sorted(self.objects.items()):
            if isinstance(obj, numpy.random.RandomState):
                _serialize_random_state(serializer[name], obj)
            else:
                obj.serialize(serializer[name])
