"""scripts/compute_mean.py (the original recipe's mean.npy) and how
train_imagenet.py --mean uses it (issue 11, item 4)."""
import json
import os
import subprocess
import sys
import tracemalloc

import numpy
import pytest

import image_fixtures
import train_imagenet
from chainerkfac.datasets import image_list
from chainerkfac.datasets.augment import BatchAugmenter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'scripts', 'compute_mean.py')
SCRIPT = os.path.join(ROOT, 'train_imagenet.py')


def make_images(directory, n, size=(22, 18), sizes=None, seed=0):
    """``n`` images of every mode (all ``size`` = (W, H) unless ``sizes``)
    and their list file; returns the list's path."""
    rng = numpy.random.RandomState(seed)
    os.makedirs(os.path.join(directory, 'imgs'), exist_ok=True)
    lines = []
    for i in range(n):
        ext, mode = image_fixtures.MODES[i % len(image_fixtures.MODES)]
        rel = 'imgs/{}.{}'.format(i, ext)
        image_fixtures.write_image(
            os.path.join(directory, rel), mode,
            sizes[i % len(sizes)] if sizes else size, rng)
        lines.append('{} {}'.format(rel, i % 3))
    path = os.path.join(directory, 'list.txt')
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path


def run_tool(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, TOOL] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, env=env, timeout=120)


def expected_mean(directory, listfile, channels=3):
    images = [image_list.load_image(path, channels) for path, _ in
              image_list.read_image_list(listfile, directory)]
    return numpy.mean(numpy.stack(images), axis=0, dtype=numpy.float64) \
        .transpose(2, 0, 1).astype(numpy.float32)


@pytest.mark.parametrize('jobs', [1, 2])
def test_per_pixel_mean_of_the_list(tmp_path, jobs):
    d = str(tmp_path)
    listfile = make_images(d, 13)
    out = str(tmp_path / 'mean.npy')
    result = run_tool(listfile, '--root', d, '-o', out, '--jobs', jobs)
    assert result.returncode == 0, result.stdout
    assert 'mean of 13 images, shape (3, 18, 22)' in result.stdout
    mean = numpy.load(out)
    assert mean.dtype == numpy.float32 and mean.shape == (3, 18, 22)
    # sums of 0-255 integers are exact in float64, in any order
    numpy.testing.assert_array_equal(mean, expected_mean(d, listfile))


def test_one_size_or_resized(tmp_path):
    d = str(tmp_path)
    listfile = make_images(d, 4, sizes=[(22, 18), (30, 25)])
    result = run_tool(listfile, '--root', d, '-o', str(tmp_path / 'm.npy'))
    assert result.returncode == 2
    assert 'imgs/1.jpg is 25x30 (HxW), the first image 18x22' in \
        result.stdout and '--size H W' in result.stdout
    assert 'Traceback' not in result.stdout
    result = run_tool(listfile, '--root', d, '-o', str(tmp_path / 'm.npy'),
                      '--size', 20, 24, '--channels', 1)
    assert result.returncode == 0, result.stdout
    assert numpy.load(str(tmp_path / 'm.npy')).shape == (1, 20, 24)


def test_corrupt_image_named_or_skipped(tmp_path):
    d = str(tmp_path)
    listfile = make_images(d, 3)
    with open(os.path.join(d, 'imgs', 'bad.png'), 'wb') as f:
        f.write(b'not a png')
    with open(listfile, 'a') as f:
        f.write('imgs/bad.png 0\n')
    result = run_tool(listfile, '--root', d, '-o', str(tmp_path / 'm.npy'))
    assert result.returncode == 2 and 'bad.png' in result.stdout
    result = run_tool(listfile, '--root', d, '-o', str(tmp_path / 'm.npy'),
                      '--skip_corrupt')
    assert result.returncode == 0 and '1 corrupt skipped' in result.stdout


def peak_bytes(pairs):
    tracemalloc.start()
    try:
        image_list.mean_image(pairs, chunk=8)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    d = str(tmp_path)
    listfile = make_images(d, 48, size=(40, 40))
    pairs = image_list.read_image_list(listfile, d)
    image_bytes = 40 * 40 * 3 * 8      # one image as float64
    peak_bytes(pairs[:2])    # Pillow's decoders load on first use
    few, many = peak_bytes(pairs[:8]), peak_bytes(pairs)
    assert many < few + image_bytes / 2, (few, many)
    assert many < 8 * image_bytes      # all 48 as float32: 24 image_bytes


def test_mean_image_is_used_as_the_original(tmp_path):
    """--mean with a (C, H, W) mean image: its top-left crop is subtracted
    whatever the crop's place or flip, then / 255 (the original's
    datasets.py)."""
    d = str(tmp_path)
    listfile = make_images(d, 6, size=(14, 12))
    mean_path = str(tmp_path / 'mean.npy')
    assert run_tool(listfile, '--root', d, '-o', mean_path).returncode == 0
    full = numpy.load(mean_path)
    crop = 8
    args = train_imagenet.parse_args(['t', 'v', '--mean', mean_path])
    mean, std = train_imagenet.normalization(args, 3, crop)
    numpy.testing.assert_array_equal(mean, full[:, :crop, :crop])
    assert tuple(std) == (255.0,) * 3
    pairs = image_list.read_image_list(listfile, d)
    # validation: the centre crop
    val = image_list.ImageListDataset(pairs, crop, train=False, mean=mean,
                                      std=std)
    image = image_list.load_image(pairs[0][0]).transpose(2, 0, 1)
    top, left = (12 - crop) // 2, (14 - crop) // 2
    expected = (image[:, top:top + crop, left:left + crop]
                - full[:, :crop, :crop]) / 255.0
    numpy.testing.assert_allclose(val[0][0], expected, rtol=1e-6, atol=1e-6)
    # training: a (possibly flipped) window, minus the same top-left crop
    aug = BatchAugmenter(crop, mean, std, n_class=3, seed=3)
    x, _ = aug([(image_list.load_image(p), t) for p, t in pairs])
    for (p, _), xi in zip(pairs, x):
        raw = xi * 255.0 + full[:, :crop, :crop]
        img = image_list.load_image(p).transpose(2, 0, 1)
        windows = [w for top in range(12 - crop + 1)
                   for left in range(14 - crop + 1)
                   for w in (img[:, top:top + crop, left:left + crop],
                             img[:, top:top + crop, left:left + crop]
                             [:, :, ::-1])]
        assert any(numpy.allclose(raw, w, atol=1e-3) for w in windows)
    # too small for the crop: one line
    numpy.save(mean_path, full[:, :4, :4])
    with pytest.raises(train_imagenet.UsageError, match='H, W >= 8'):
        train_imagenet.normalization(args, 3, crop)


def test_train_imagenet_with_the_tools_mean(tmp_path):
    data = image_fixtures.make_dataset(str(tmp_path / 'data'))
    mean = str(tmp_path / 'mean.npy')
    result = run_tool(os.path.join(data, 'train.txt'), '--root',
                      os.path.join(data, 'train'), '-o', mean, '--size', 20,
                      20)
    assert result.returncode == 0, result.stdout
    config = image_fixtures.write_config(str(tmp_path / 'tiny.json'))
    out = str(tmp_path / 'out')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, '-W', 'ignore', SCRIPT,
         os.path.join(data, 'train.txt'), os.path.join(data, 'val.txt'),
         '--train_root', os.path.join(data, 'train'), '--val_root',
         os.path.join(data, 'val'), '--config', config, '--mean', mean,
         '--iterations', '1', '--loaderjob', '0', '--no_progress', '--out',
         out], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout
    with open(os.path.join(out, 'log')) as f:
        assert numpy.isfinite(json.load(f)[-1]['main/loss'])
