"""ImageNet-style image-list datasets (``relative/path label`` files).

A list file holds one example per line, ``<path> <int label>``, with
``<path>`` relative to an image root directory (``--train_root`` /
``--val_root`` of ``train_imagenet.py``).  Blank lines and lines starting
with ``#`` are ignored.  The path is everything before the last run of
whitespace, so paths may contain spaces.

Base augmentation of the original recipe (Osawa et al.,
``examples/imagenet/datasets.py``): images smaller than the crop are
upscaled (bilinear) so that their short side equals the crop size; training
takes a random ``crop x crop`` window and flips it horizontally with
probability 1/2; validation takes the centre window.  Normalisation is
``(x - mean) / std`` on the 0-255 scale, see :class:`ImageListDataset`.
"""
import os
import warnings

import numpy

from chainer.dataset import dataset_mixin

try:
    from PIL import Image
    _PIL_ERROR = None
except ImportError as e:  # pragma: no cover - Pillow is in the venv
    Image = None
    _PIL_ERROR = e

#: Per-channel ImageNet statistics (RGB, 0-255 scale).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# Weights of Pillow's RGB -> L conversion (ITU-R 601-2 luma).
_LUMA = (0.299, 0.587, 0.114)
#: Defaults for ``channels=1``: the luma-weighted ImageNet values.  For the
#: mean this is exactly the mean of the L-converted images; for the std it
#: is an upper bound used as a convention.
IMAGENET_GRAY_MEAN = (sum(w * m for w, m in zip(_LUMA, IMAGENET_MEAN)),)
IMAGENET_GRAY_STD = (sum(w * s for w, s in zip(_LUMA, IMAGENET_STD)),)


def _require_pil():
    if Image is None:
        raise ImportError('ImageListDataset needs Pillow (pip install '
                          'Pillow): {}'.format(_PIL_ERROR))


def read_image_list(path, root, n_class=None, check_exists=True):
    """Read a ``<relative path> <label>`` list file.

    Args:
        path (str): The list file.
        root (str): Directory the image paths are relative to.
        n_class (int or None): If given, every label must be in
            ``[0, n_class)``; labels must be non-negative in any case.
        check_exists (bool): Check with ``os.path.isfile`` that every image
            exists (a few seconds for the 1.28M ImageNet images on a local
            disk).

    Returns:
        list of ``(absolute_path, int label)``, in file order
        (``os.path.join(abspath(root), path)``: an absolute path in the
        list is kept as it is).

    Raises:
        FileNotFoundError: The list file or ``root`` is missing.
        ValueError: A malformed line, a label out of range, an image that
            does not exist (``file:line`` and the path; the first missing
            one and the number missing), or no entries at all.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError('image list file not found: {}'.format(path))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            'image root directory not found: {} (for list {})'.format(
                root, path))
    root = os.path.abspath(root)
    pairs = []
    missing = []
    with open(path, encoding='utf-8') as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith('#'):
                continue
            fields = line.rsplit(None, 1)
            label = None
            if len(fields) == 2:
                try:
                    label = int(fields[1])
                except ValueError:
                    pass
            if label is None:
                raise ValueError(
                    '{}:{}: expected "<path> <int label>", got {!r}'.format(
                        path, lineno, line))
            if label < 0 or (n_class is not None and label >= n_class):
                raise ValueError(
                    '{}:{}: label {} out of range [0, {}) in {!r}'.format(
                        path, lineno, label,
                        'inf' if n_class is None else n_class, line))
            image = os.path.join(root, fields[0])
            if check_exists and not os.path.isfile(image):
                missing.append((lineno, image))
            pairs.append((image, label))
    if missing:
        lineno, image = missing[0]
        raise ValueError(
            '{}:{}: image not found: {} ({} of {} images missing under '
            '{})'.format(path, lineno, image, len(missing), len(pairs),
                         root))
    if not pairs:
        raise ValueError('image list file {} has no entries'.format(path))
    return pairs


class CorruptImageError(ValueError):
    """An image file that cannot be decoded (the message names it)."""


def load_image(path, channels=3):
    """Decode an image file into a ``(H, W, channels)`` float32 array.

    Every Pillow mode is converted to RGB (``channels=3``) or L
    (``channels=1``) with ``Image.convert``; alpha is *dropped*, not
    composited (the stored colour of transparent pixels is kept, as the
    original ``image[:, :, :3]``); palette images with transparency go
    through RGBA first.  16/32-bit integer modes (``I;16*``, ``I``) are
    rescaled from ``[0, 65535]`` to ``[0, 255]``; ``F`` is clipped to
    ``[0, 255]``.  EXIF orientation is ignored.  Values are on the 0-255
    scale.

    Raises:
        CorruptImageError: The file cannot be decoded (a ``ValueError``;
            the message names the file; the PIL error is chained).
    """
    _require_pil()
    target = 'RGB' if channels == 3 else 'L'
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode.startswith('I') or mode == 'F':
                a = numpy.asarray(im, dtype=numpy.float32)
                if mode != 'F':
                    a = a * numpy.float32(255.0 / 65535.0)
                a = numpy.clip(a, 0, 255)
                if a.ndim == 2:
                    a = a[:, :, None]
                if channels == 3 and a.shape[2] == 1:
                    a = numpy.repeat(a, 3, axis=2)
                return numpy.ascontiguousarray(a[:, :, :channels])
            if mode == 'P' and 'transparency' in im.info:
                im = im.convert('RGBA')
            if im.mode != target:
                im = im.convert(target)
            a = numpy.asarray(im, dtype=numpy.float32)
    except Exception as e:
        raise CorruptImageError('cannot decode image {}: {}: {}'.format(
            path, type(e).__name__, e)) from e
    if a.ndim == 2:
        a = a[:, :, None]
    return a


def upscale(image, crop_size):
    """Upscale ``(H, W, C)`` so the short side is ``crop_size`` if smaller.

    Bilinear, like the original (which only upscales): the short side
    becomes ``crop_size`` and the long side ``ceil(long * crop / short)``.
    """
    h, w = image.shape[:2]
    if h >= crop_size and w >= crop_size:
        return image
    if w < h:
        new_w, new_h = crop_size, -(-h * crop_size // w)
    else:
        new_w, new_h = -(-w * crop_size // h), crop_size
    channels = image.shape[2]
    out = numpy.empty((new_h, new_w, channels), dtype=numpy.float32)
    for c in range(channels):
        im = Image.fromarray(numpy.ascontiguousarray(image[:, :, c]))
        out[:, :, c] = numpy.asarray(
            im.resize((new_w, new_h), Image.BILINEAR))
    return out


def _as_stat(value, channels, name):
    a = numpy.asarray(value, dtype=numpy.float32)
    if a.ndim == 1:
        a = a[:, None, None]
    if a.ndim != 3 or a.shape[0] != channels:
        raise ValueError('{} must have shape ({c},), ({c}, 1, 1) or ({c}, H, '
                         'W), got {}'.format(name, a.shape, c=channels))
    return a


class ImageListDataset(dataset_mixin.DatasetMixin):
    """Cropped, normalised images from ``(path, label)`` pairs.

    ``get_example(i)`` returns ``(x, t)``: ``x`` float32 of shape
    ``(channels, crop_size, crop_size)``, ``t`` an int32 scalar array.

    Pipeline: :func:`load_image` (0-255, RGB or L) -> upscale if smaller
    than the crop (bilinear, short side = ``crop_size``) -> crop (train:
    uniform random window over all valid offsets, then horizontal flip with
    probability 1/2; val: centre window, ``offset = (size - crop) // 2``)
    -> ``x = (x - mean) / std``.

    Normalisation:

    * ``mean is None``: per-channel ImageNet values, ``mean``
      :data:`IMAGENET_MEAN`, ``std`` :data:`IMAGENET_STD` (``std``
      defaults to these too); for ``channels=1`` the luma-weighted
      :data:`IMAGENET_GRAY_MEAN`/:data:`IMAGENET_GRAY_STD`.
    * ``mean`` given, of shape ``(C,)``, ``(C, 1, 1)`` or ``(C, H, W)``
      (e.g. ``mean.npy``): ``std`` defaults to 255 (the original
      ``(x - mean) / 255``).  A full mean image must be at least
      ``crop x crop``; its *top-left* ``crop x crop`` window is subtracted
      whatever the crop offset or flip, as in the original.

    Random numbers: a ``numpy.random.RandomState`` made lazily in each
    process on first use (re-made when the process id changes, e.g. in
    ``MultiprocessIterator`` workers).  With ``seed=None`` each process
    draws OS entropy.  With an int ``seed`` the process that built the
    dataset uses ``RandomState(seed)`` (reproducible with a serial
    iterator); other processes use ``RandomState([seed, pid])`` so forked
    workers get different streams (not reproducible).  Give each MPI rank
    its own seed (e.g. ``seed + rank``).

    Corrupt images: ``ValueError`` naming the file, or with
    ``skip_corrupt=True`` the next decodable example (``i + 1``, ``i + 2``,
    ... wrapping around; its own label) is returned with a warning per
    corrupt file tried, and ``n_skipped`` counts these skips in *this*
    process (a file hit twice counts twice; ``MultiprocessIterator``
    workers keep their own counts, invisible to the parent).

    Args:
        pairs: Sequence of ``(path, int label)``, e.g. from
            :func:`read_image_list`.
        crop_size (int): Side of the square crop.
        train (bool): Random crop + flip if true, centre crop otherwise.
        mean, std: See above (0-255 scale).
        skip_corrupt (bool): Skip undecodable images instead of raising.
        channels (int): 3 (RGB) or 1 (L).
        seed (int or None): See above.
    """

    def __init__(self, pairs, crop_size, train=True, mean=None, std=None,
                 skip_corrupt=False, channels=3, seed=None):
        _require_pil()
        if channels not in (1, 3):
            raise ValueError('channels must be 1 or 3, got {}'.format(
                channels))
        if crop_size < 1:
            raise ValueError('crop_size must be positive, got {}'.format(
                crop_size))
        self._pairs = pairs
        self.crop_size = int(crop_size)
        self.train = train
        self.channels = channels
        self.skip_corrupt = skip_corrupt
        self.seed = seed
        if mean is None:
            mean = IMAGENET_MEAN if channels == 3 else IMAGENET_GRAY_MEAN
            if std is None:
                std = IMAGENET_STD if channels == 3 else IMAGENET_GRAY_STD
        elif std is None:
            std = (255.0,) * channels
        mean = _as_stat(mean, channels, 'mean')
        if mean.shape[1:] != (1, 1):
            if min(mean.shape[1:]) < self.crop_size:
                raise ValueError('mean image {} smaller than crop_size '
                                 '{}'.format(mean.shape, self.crop_size))
            mean = mean[:, :self.crop_size, :self.crop_size]
        self.mean = numpy.ascontiguousarray(mean)
        self.std = _as_stat(std, channels, 'std')
        if self.std.shape[1:] != (1, 1):
            raise ValueError('std must be per-channel, got shape {}'.format(
                self.std.shape))
        if (self.std <= 0).any():
            raise ValueError('std must be positive')
        self.n_skipped = 0
        self._creator_pid = os.getpid()
        self._rng = None
        self._rng_pid = None

    def __len__(self):
        return len(self._pairs)

    @property
    def rng(self):
        """This process's ``RandomState`` (see the class docstring)."""
        pid = os.getpid()
        if self._rng is None or self._rng_pid != pid:
            if self.seed is None:
                self._rng = numpy.random.RandomState()
            elif pid == self._creator_pid:
                self._rng = numpy.random.RandomState(self.seed)
            else:
                self._rng = numpy.random.RandomState(
                    [self.seed % 2 ** 32, pid])
            self._rng_pid = pid
        return self._rng

    def load(self, i):
        """``(image, label)`` of example ``i``: ``(H, W, C)`` float32 0-255,
        upscaled to at least ``crop x crop``; see ``skip_corrupt``."""
        n = len(self._pairs)
        for k in range(n):
            j = (i + k) % n
            path, label = self._pairs[j]
            try:
                image = load_image(path, self.channels)
            except ValueError as e:
                if not self.skip_corrupt:
                    raise
                self.n_skipped += 1
                warnings.warn('skipping corrupt image: {}'.format(e))
                continue
            return upscale(image, self.crop_size), label
        raise ValueError('all {} images of the dataset are corrupt'.format(n))

    def get_example(self, i):
        image, label = self.load(i)
        return (self._transform(image), numpy.array(label, dtype=numpy.int32))

    def _transform(self, image):
        crop = self.crop_size
        h, w = image.shape[:2]
        if self.train:
            rng = self.rng
            top = rng.randint(0, h - crop + 1)
            left = rng.randint(0, w - crop + 1)
            flip = rng.randint(2) == 1
        else:
            top, left, flip = (h - crop) // 2, (w - crop) // 2, False
        x = image[top:top + crop, left:left + crop].transpose(2, 0, 1)
        if flip:
            x = x[:, :, ::-1]
        x = (x - self.mean) / self.std
        return x.astype(numpy.float32, copy=False)


def compute_mean(pairs, size, limit=None, channels=3):
    """Per-channel mean (0-255 scale) of the centre ``size`` crops.

    Images are decoded and upscaled as in :class:`ImageListDataset`; with
    ``limit`` only ``limit`` evenly spaced pairs are read (list files are
    usually sorted by class).

    Returns:
        numpy.ndarray: float32 of shape ``(channels,)``, usable as
        ``ImageListDataset(..., mean=...)``.
    """
    n = len(pairs)
    if n == 0:
        raise ValueError('compute_mean: no pairs')
    if limit is not None and limit < n:
        index = numpy.linspace(0, n - 1, max(int(limit), 1)).round()
        index = numpy.unique(index.astype(int))
    else:
        index = numpy.arange(n)
    total = numpy.zeros(channels, dtype=numpy.float64)
    for j in index:
        image = upscale(load_image(pairs[j][0], channels), size)
        h, w = image.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        total += image[top:top + size, left:left + size].mean(axis=(0, 1))
    return (total / len(index)).astype(numpy.float32)


def resize(image, size):
    """``(H, W, C)`` float32 resized to ``size = (h, w)`` (bilinear, each
    channel at float precision)."""
    h, w = size
    out = numpy.empty((h, w, image.shape[2]), dtype=numpy.float32)
    for c in range(image.shape[2]):
        im = Image.fromarray(numpy.ascontiguousarray(image[:, :, c]))
        out[:, :, c] = numpy.asarray(im.resize((w, h), Image.BILINEAR))
    return out


def _mean_image_part(task):
    """Sum and count of the images of ``task``'s pairs (a worker's part of
    :func:`mean_image`): ``(sum (H, W, C) float64, n, n_skipped)``."""
    pairs, channels, size, resize_all, skip_corrupt = task
    total = numpy.zeros(size + (channels,), dtype=numpy.float64)
    n = skipped = 0
    for path, _ in pairs:
        try:
            image = load_image(path, channels)
        except CorruptImageError:
            if not skip_corrupt:
                raise
            skipped += 1
            continue
        if image.shape[:2] != size:
            if not resize_all:
                raise ValueError(
                    'mean image: {} is {}x{} (HxW), the first image {}x{}; '
                    'the original recipe expects images resized to one size '
                    '(or give --size H W to resize them here)'.format(
                        path, image.shape[0], image.shape[1], *size))
            image = resize(image, size)
        total += image
        n += 1
    return total, n, skipped


def mean_image(pairs, size=None, channels=3, jobs=1, chunk=64,
               skip_corrupt=False):
    """The per-pixel mean image of ``pairs``' images: the ``mean.npy`` of
    the original ImageNet recipe.

    Streams: each image is decoded, added to a float64 sum and dropped, so
    the memory is one image and one ``(H, W, C)`` sum per worker, whatever
    the number of images.

    Args:
        pairs: ``(path, label)`` pairs (:func:`read_image_list`).
        size ((int, int) or None): ``(H, W)``: resize every image to it
            (bilinear); None: every image must have the first image's size
            (the original recipe's images are resized to one size
            beforehand, e.g. 256x256).
        channels (int): 3 (RGB, as Pillow decodes) or 1 (L).
        jobs (int): processes decoding in parallel (1: this one).
        chunk (int): images per task of a worker.
        skip_corrupt (bool): skip undecodable images instead of raising.

    Returns:
        (numpy.ndarray, int, int): the mean, ``(channels, H, W)`` float32 on
        the 0-255 scale (what ``train_imagenet.py --mean`` takes: its
        top-left crop is subtracted, then ``x / 255``); the number of images
        averaged; the number skipped.

    Raises:
        ValueError: no pairs, an image of another size (``size`` None), a
            corrupt image (named; unless ``skip_corrupt``), or every image
            corrupt.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError('mean_image: no images')
    resize_all = size is not None
    if size is None:
        first = None
        for path, _ in pairs:
            try:
                first = load_image(path, channels)
                break
            except CorruptImageError:
                if not skip_corrupt:
                    raise
        if first is None:
            raise ValueError('mean_image: every image is corrupt')
        size = first.shape[:2]
        del first
    size = tuple(int(v) for v in size)
    tasks = [(pairs[i:i + chunk], channels, size, resize_all, skip_corrupt)
             for i in range(0, len(pairs), chunk)]
    total = numpy.zeros(size + (channels,), dtype=numpy.float64)
    n = skipped = 0
    if jobs > 1:
        import multiprocessing
        with multiprocessing.get_context('spawn').Pool(jobs) as pool:
            parts = pool.imap_unordered(_mean_image_part, tasks)
            for part_sum, part_n, part_skipped in parts:
                total += part_sum
                n += part_n
                skipped += part_skipped
                del part_sum
    else:
        for task in tasks:
            part_sum, part_n, part_skipped = _mean_image_part(task)
            total += part_sum
            n += part_n
            skipped += part_skipped
            del part_sum   # one part at a time
    if n == 0:
        raise ValueError('mean_image: every image is corrupt')
    mean = (total / n).transpose(2, 0, 1).astype(numpy.float32)
    return numpy.ascontiguousarray(mean), n, skipped


class UncroppedImageDataset(ImageListDataset):
    """Decoded images before cropping, for augmentation in the main process.

    ``get_example(i)`` returns ``(image, label)``: ``image`` ``(H, W, C)``
    float32 on the 0-255 scale, upscaled so both sides are at least
    ``crop_size``; ``label`` an int. Crop, flip and normalisation are done
    by :class:`chainerkfac.datasets.augment.BatchAugmenter`, whose random
    state is part of a snapshot (so a resumed run draws the same crops
    whatever the loader threads do).
    """

    def get_example(self, i):
        return self.load(i)
