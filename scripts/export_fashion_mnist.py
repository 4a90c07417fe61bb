"""Export Fashion-MNIST once as an ImageNet-layout image folder.

    python scripts/export_fashion_mnist.py OUT_DIR [--train-limit N]
        [--val-limit N] [--root DIR] [--workers 2] [--force]

Writes grayscale 28x28 PNGs ``OUT_DIR/train/<class>/<index>.png`` (the
60,000 training images) and ``OUT_DIR/val/<class>/<index>.png`` (the
10,000 test images), ``<index>`` being the 5-digit index in the split, and
the list files ``OUT_DIR/train.txt`` and ``OUT_DIR/val.txt`` with lines
``<class>/<index>.png <label>``.  List paths are relative to
``OUT_DIR/train`` and ``OUT_DIR/val``, i.e. to ``--train_root`` /
``--val_root`` of ``train_imagenet.py``::

    train_imagenet.py OUT/train.txt OUT/val.txt \\
        --train_root OUT/train --val_root OUT/val

Idempotent: ``OUT_DIR/export_stamp.json`` is written last; a rerun with
the same limits and source directory whose list files are complete does
nothing (``--force`` re-exports).  A re-export overwrites files but does
not delete images left from an earlier, larger export.
"""
import argparse
import json
import multiprocessing
import os
import sys
import time

import numpy

try:
    from chainerkfac.datasets.fashion_mnist import DEFAULT_ROOT
    from chainerkfac.datasets.fashion_mnist import load_fashion_mnist
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    from chainerkfac.datasets.fashion_mnist import DEFAULT_ROOT
    from chainerkfac.datasets.fashion_mnist import load_fashion_mnist

#: Directory names of the ten classes, in label order.
CLASS_NAMES = ('tshirt_top', 'trouser', 'pullover', 'dress', 'coat',
               'sandal', 'shirt', 'sneaker', 'bag', 'ankle_boot')
STAMP = 'export_stamp.json'
_STAMP_VERSION = 1
_SPLITS = (('train', 'train'), ('val', 'test'))  # (output name, source)

_images = None  # uint8 (N, 28, 28), inherited by the pool's workers
_labels = None


def relative_path(index, label):
    """List path of example ``index`` of a split, relative to its root."""
    return '{}/{:05d}.png'.format(CLASS_NAMES[label], index)


def _init_worker(images, labels):
    global _images, _labels
    _images, _labels = images, labels


def _write_range(args):
    from PIL import Image
    split_dir, start, stop = args
    for i in range(start, stop):
        path = os.path.join(split_dir, relative_path(i, int(_labels[i])))
        Image.fromarray(_images[i]).save(path, compress_level=1)
    return stop - start


def _count_lines(path):
    try:
        with open(path) as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return -1


def _load_uint8(split, root, limit):
    x, t = load_fashion_mnist(split, root=root, limit=limit,
                              dtype=numpy.float64)
    return numpy.rint(x[:, 0] * 255).astype(numpy.uint8), t


def _export_split(out_dir, name, source, root, limit, workers):
    images, labels = _load_uint8(source, root, limit)
    split_dir = os.path.join(out_dir, name)
    for c in CLASS_NAMES:
        os.makedirs(os.path.join(split_dir, c), exist_ok=True)
    n = len(images)
    chunk = max(1, min(1000, -(-n // (4 * max(workers, 1)))))
    tasks = [(split_dir, s, min(s + chunk, n)) for s in range(0, n, chunk)]
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.Pool(workers, _init_worker,
                                  (images, labels)) as pool:
            written = sum(pool.imap_unordered(_write_range, tasks))
    else:
        _init_worker(images, labels)
        written = sum(map(_write_range, tasks))
    assert written == n
    list_path = os.path.join(out_dir, name + '.txt')
    tmp = list_path + '.tmp'
    with open(tmp, 'w') as f:
        for i, label in enumerate(labels):
            f.write('{} {}\n'.format(relative_path(i, int(label)), label))
    os.replace(tmp, list_path)
    return n


def export(out_dir, train_limit=None, val_limit=None, root=DEFAULT_ROOT,
           workers=2, force=False):
    """Export (or reuse) the folder; return ``(n_train, n_val, skipped)``."""
    wanted = {'version': _STAMP_VERSION, 'train_limit': train_limit,
              'val_limit': val_limit, 'root': os.path.abspath(root)}
    stamp_path = os.path.join(out_dir, STAMP)
    if not force and os.path.isfile(stamp_path):
        try:
            with open(stamp_path) as f:
                stamp = json.load(f)
        except (OSError, ValueError):
            stamp = {}
        if ({k: stamp.get(k) for k in wanted} == wanted
                and _count_lines(os.path.join(out_dir, 'train.txt'))
                == stamp.get('n_train')
                and _count_lines(os.path.join(out_dir, 'val.txt'))
                == stamp.get('n_val')):
            return stamp['n_train'], stamp['n_val'], True
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)
    counts = {}
    for (name, source), limit in zip(_SPLITS, (train_limit, val_limit)):
        counts['n_' + name] = _export_split(out_dir, name, source, root,
                                            limit, workers)
    wanted.update(counts)
    wanted['class_names'] = list(CLASS_NAMES)
    tmp = stamp_path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(wanted, f, indent=1)
    os.replace(tmp, stamp_path)
    return counts['n_train'], counts['n_val'], False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out_dir')
    parser.add_argument('--train-limit', type=int, default=None,
                        help='first N training images (default: 60,000)')
    parser.add_argument('--val-limit', type=int, default=None,
                        help='first N test images (default: 10,000)')
    parser.add_argument('--root', default=DEFAULT_ROOT,
                        help='Fashion-MNIST IDX directory')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--force', action='store_true',
                        help='re-export even if the stamp matches')
    args = parser.parse_args(argv)
    for name in ('train_limit', 'val_limit'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error('--{} must be positive'.format(
                name.replace('_', '-')))
    start = time.time()
    n_train, n_val, skipped = export(
        args.out_dir, args.train_limit, args.val_limit, args.root,
        args.workers, args.force)
    print('{} {} train + {} val images in {} ({:.1f} s)'.format(
        'found' if skipped else 'exported', n_train, n_val, args.out_dir,
        time.time() - start))
    return 0


if __name__ == '__main__':
    sys.exit(main())
