import importlib.util
import json
import os
import subprocess
import sys
import warnings

import numpy
import pytest

from chainerkfac.datasets import fashion_mnist
from chainerkfac.datasets import image_list
from chainerkfac.datasets.image_list import compute_mean
from chainerkfac.datasets.image_list import ImageListDataset
from chainerkfac.datasets.image_list import read_image_list

Image = pytest.importorskip('PIL.Image')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'scripts', 'export_fashion_mnist.py')
MEAN = numpy.array(image_list.IMAGENET_MEAN, numpy.float32)[:, None, None]
STD = numpy.array(image_list.IMAGENET_STD, numpy.float32)[:, None, None]


def _gradient(h, w, channels=3):
    """uint8 ``(h, w, channels)``; for h <= 42, w <= 51 and 3 channels
    no two windows of the same size are equal (channel 0 encodes the row,
    channel 1 the column)."""
    r, c = numpy.mgrid[:h, :w]
    planes = [r * 6 % 256, c * 5 % 256, (r + c) * 3 % 256]
    return numpy.stack(planes[:channels], axis=2).astype(numpy.uint8)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp('images')
    paths = {}

    def save(name, im, **kw):
        im.save(str(d / name), **kw)
        paths[name] = str(d / name)

    save('rgb.png', Image.new('RGB', (23, 17), (200, 100, 50)))
    save('rgb.jpg', Image.new('RGB', (40, 30), (200, 100, 50)), quality=95)
    save('gray.png', Image.new('L', (17, 23), 100))
    save('gray.jpg', Image.fromarray(_gradient(30, 20, 1)[:, :, 0]))
    save('rgba.png', Image.new('RGBA', (20, 20), (10, 20, 30, 0)))
    save('la.png', Image.new('LA', (20, 20), (60, 128)))
    pal = Image.new('P', (20, 18), 1)
    pal.putpalette([0, 0, 0, 90, 80, 70] + [0] * 762)
    save('pal.png', pal)
    pal_t = pal.copy()
    save('pal_t.png', pal_t, transparency=0)
    save('cmyk.jpg', Image.new('CMYK', (20, 20), (0, 0, 0, 0)))
    i16 = Image.new('I;16', (18, 18))
    for xy in [(0, 0), (5, 5), (17, 17)]:
        i16.putpixel(xy, 65535)
    save('i16.png', i16)
    save('small.png', Image.new('RGB', (5, 7), (1, 2, 3)))
    save('grad.png', Image.fromarray(_gradient(40, 50)))
    (d / 'corrupt.jpg').write_bytes(
        numpy.random.RandomState(0).bytes(2000))
    paths['corrupt.jpg'] = str(d / 'corrupt.jpg')
    Image.fromarray(_gradient(64, 64)).save(str(d / 'full.png'))
    data = (d / 'full.png').read_bytes()
    (d / 'trunc.png').write_bytes(data[:len(data) // 2])
    paths['trunc.png'] = str(d / 'trunc.png')
    paths['root'] = str(d)
    return paths


def _write(path, text):
    path.write_text(text)
    return str(path)


# --- read_image_list --------------------------------------------------------

def test_read_image_list(images, tmp_path):
    lst = _write(tmp_path / 'list.txt',
                 '# header\nrgb.png 0\n\n  gray.png   3  \n#x 1\ngrad.png 9\n')
    pairs = read_image_list(lst, images['root'], n_class=10)
    assert pairs == [(images['rgb.png'], 0), (images['gray.png'], 3),
                     (images['grad.png'], 9)]
    assert all(os.path.isabs(p) and type(t) is int for p, t in pairs)


def test_read_image_list_path_with_space(images, tmp_path):
    root = tmp_path / 'r'
    root.mkdir()
    Image.new('L', (3, 3)).save(str(root / 'a b.png'))
    lst = _write(tmp_path / 'list.txt', 'a b.png 2\n')
    assert read_image_list(lst, str(root)) == [(str(root / 'a b.png'), 2)]


def test_read_image_list_missing_list(images, tmp_path):
    with pytest.raises(FileNotFoundError, match='nolist.txt'):
        read_image_list(str(tmp_path / 'nolist.txt'), images['root'])


def test_read_image_list_missing_root(tmp_path):
    lst = _write(tmp_path / 'list.txt', 'a.png 0\n')
    with pytest.raises(FileNotFoundError, match='noroot'):
        read_image_list(lst, str(tmp_path / 'noroot'))


@pytest.mark.parametrize('bad', ['rgb.png', 'rgb.png x', 'rgb.png 1.5',
                                 'rgb.png 1 2x'])
def test_read_image_list_malformed(images, tmp_path, bad):
    lst = _write(tmp_path / 'list.txt', '# c\nrgb.png 0\n\n{}\n'.format(bad))
    with pytest.raises(ValueError) as e:
        read_image_list(lst, images['root'])
    msg = str(e.value)
    assert lst + ':4:' in msg and repr(bad) in msg


@pytest.mark.parametrize('label,n_class', [(5, 5), (-1, None), (-1, 5)])
def test_read_image_list_label_range(images, tmp_path, label, n_class):
    lst = _write(tmp_path / 'list.txt', 'rgb.png 0\nrgb.png {}\n'.format(
        label))
    with pytest.raises(ValueError) as e:
        read_image_list(lst, images['root'], n_class=n_class)
    msg = str(e.value)
    assert lst + ':2:' in msg and 'label {}'.format(label) in msg
    assert '[0, {})'.format('inf' if n_class is None else n_class) in msg


def test_read_image_list_missing_image(images, tmp_path):
    lst = _write(tmp_path / 'list.txt',
                 'rgb.png 0\nsub/none.png 1\nnone2.png 1\n')
    with pytest.raises(ValueError) as e:
        read_image_list(lst, images['root'])
    msg = str(e.value)
    assert lst + ':2:' in msg
    assert os.path.join(images['root'], 'sub/none.png') in msg
    assert '2 of 3' in msg
    assert len(read_image_list(lst, images['root'], check_exists=False)) == 3


def test_read_image_list_empty(images, tmp_path):
    lst = _write(tmp_path / 'list.txt', '# nothing\n\n')
    with pytest.raises(ValueError, match='no entries'):
        read_image_list(lst, images['root'])


# --- decoding ---------------------------------------------------------------

@pytest.mark.parametrize('name', ['rgb.png', 'rgb.jpg', 'gray.png',
                                  'gray.jpg', 'rgba.png', 'la.png', 'pal.png',
                                  'pal_t.png', 'cmyk.jpg', 'i16.png',
                                  'small.png', 'grad.png'])
@pytest.mark.parametrize('channels', [3, 1])
def test_get_example_shapes(images, name, channels):
    ds = ImageListDataset([(images[name], 7)], 16, train=True,
                          channels=channels, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        x, t = ds[0]
    assert x.shape == (channels, 16, 16) and x.dtype == numpy.float32
    assert t.dtype == numpy.int32 and t.shape == () and int(t) == 7
    assert numpy.isfinite(x).all()


@pytest.mark.parametrize('name,rgb', [
    ('rgb.png', (200, 100, 50)),
    ('gray.png', (100, 100, 100)),
    ('rgba.png', (10, 20, 30)),      # alpha dropped, not composited
    ('la.png', (60, 60, 60)),
    ('pal.png', (90, 80, 70)),
    ('pal_t.png', (90, 80, 70)),
    ('cmyk.jpg', (255, 255, 255)),
    ('small.png', (1, 2, 3)),        # constant survives the upscaling
])
def test_constant_colour_values(images, name, rgb):
    rgb = numpy.array(rgb, numpy.float32)[:, None, None]
    for train in (True, False):
        x, _ = ImageListDataset([(images[name], 0)], 4, train=train,
                                seed=0)[0]
        numpy.testing.assert_allclose(
            x, numpy.broadcast_to((rgb - MEAN) / STD, x.shape), atol=1e-5)
    # channels=1: Pillow's luma, default luma-weighted ImageNet statistics
    x, _ = ImageListDataset([(images[name], 0)], 4, train=False,
                            channels=1)[0]
    gray = numpy.float32(image_list.IMAGENET_GRAY_MEAN[0])
    luma = (rgb[:, 0, 0] * [0.299, 0.587, 0.114]).sum()
    numpy.testing.assert_allclose(
        x * image_list.IMAGENET_GRAY_STD[0] + gray, luma, atol=0.51)


def test_jpeg_constant_close(images):
    x, _ = ImageListDataset([(images['rgb.jpg'], 0)], 8, train=False,
                            mean=[0, 0, 0])[0]
    numpy.testing.assert_allclose(x * 255, numpy.broadcast_to(
        numpy.array([200, 100, 50.])[:, None, None], x.shape), atol=3)


def test_i16_scaled(images):
    a = image_list.load_image(images['i16.png'])
    assert a.shape == (18, 18, 3) and a.max() == 255 and a.min() == 0
    assert (a[5, 5] == 255).all() and (a == 255).sum() == 9


def test_gray_image_channels(images):
    a = image_list.load_image(images['gray.jpg'], channels=3)
    b = image_list.load_image(images['gray.jpg'], channels=1)
    assert a.shape == (30, 20, 3) and b.shape == (30, 20, 1)
    numpy.testing.assert_array_equal(a, numpy.repeat(b, 3, axis=2))


def test_upscale_small(images):
    a = image_list.upscale(image_list.load_image(images['small.png']), 16)
    assert a.shape == (23, 16, 3)  # w 5 -> 16, h ceil(7 * 16 / 5) = 23
    a = image_list.upscale(numpy.zeros((10, 30, 1), numpy.float32), 16)
    assert a.shape == (16, 48, 1)
    big = numpy.zeros((16, 30, 1), numpy.float32)
    assert image_list.upscale(big, 16) is big


def test_normalisation_options(images):
    img = numpy.array([200, 100, 50], numpy.float32)[:, None, None]
    ds = ImageListDataset([(images['rgb.png'], 0)], 8, train=False,
                          mean=[10, 20, 30])
    x, _ = ds[0]
    numpy.testing.assert_allclose(
        x, numpy.broadcast_to((img - [[[10]], [[20]], [[30]]]) / 255,
                              x.shape), rtol=1e-6)
    ds = ImageListDataset([(images['rgb.png'], 0)], 8, train=False,
                          mean=[10, 20, 30], std=[2, 4, 5])
    numpy.testing.assert_allclose(ds[0][0][:, 0, 0], [95, 20, 4], rtol=1e-6)
    # full mean image: its top-left crop, whatever the crop offset or flip
    mean = numpy.random.RandomState(0).uniform(0, 255, (3, 12, 14))
    for train in (True, False):
        ds = ImageListDataset([(images['rgb.png'], 0)], 8, train=train,
                              mean=mean, seed=1)
        for _ in range(3):
            numpy.testing.assert_allclose(
                ds[0][0], (img - mean[:, :8, :8]) / 255, rtol=1e-5,
                atol=1e-6)


@pytest.mark.parametrize('kwargs', [
    dict(mean=numpy.zeros((3, 7, 20))),   # mean image smaller than crop
    dict(mean=[1, 2]),                    # wrong channel count
    dict(mean=[1, 2, 3], std=[1, 0, 1]),
    dict(mean=[1, 2, 3], std=numpy.ones((3, 8, 8))),
    dict(channels=2),
])
def test_bad_options(images, kwargs):
    with pytest.raises(ValueError):
        ImageListDataset([(images['rgb.png'], 0)], 8, **kwargs)


# --- cropping ---------------------------------------------------------------

def _windows(grad, crop):
    """All (top, left, flip) -> window of an (H, W, C) image as (C, c, c)."""
    h, w = grad.shape[:2]
    out = {}
    for top in range(h - crop + 1):
        for left in range(w - crop + 1):
            win = grad[top:top + crop, left:left + crop].transpose(2, 0, 1)
            out[(top, left, False)] = win
            out[(top, left, True)] = win[:, :, ::-1]
    return out


def test_train_crop_random_and_flip(images):
    grad = _gradient(40, 50).astype(numpy.float32)
    windows = _windows(grad, 30)
    ds = ImageListDataset([(images['grad.png'], 0)], 30, train=True,
                          mean=[0, 0, 0], std=[1, 1, 1], seed=0)
    seen = set()
    for _ in range(40):
        x, _ = ds[0]
        match = [k for k, v in windows.items() if numpy.array_equal(v, x)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 20
    assert {k[2] for k in seen} == {False, True}
    # reproducible with the same seed in the same process
    a = ImageListDataset([(images['grad.png'], 0)], 30, seed=5)
    b = ImageListDataset([(images['grad.png'], 0)], 30, seed=5)
    for _ in range(3):
        numpy.testing.assert_array_equal(a[0][0], b[0][0])


def test_val_centre_crop_deterministic(images):
    grad = _gradient(40, 50).astype(numpy.float32)
    ds = ImageListDataset([(images['grad.png'], 0)], 30, train=False,
                          mean=[0, 0, 0], std=[1, 1, 1])
    x = ds[0][0]
    numpy.testing.assert_array_equal(
        x, grad[5:35, 10:40].transpose(2, 0, 1))
    numpy.testing.assert_array_equal(ds[0][0], x)


def test_rng_per_process(images):
    ds = ImageListDataset([(images['grad.png'], 0)], 30, seed=3)
    same = numpy.random.RandomState(3).randint(0, 1000, 5)
    assert (ds.rng.randint(0, 1000, 5) == same).all()
    assert ds.rng is ds.rng
    # a forked worker: another pid -> a fresh, different stream
    ds._creator_pid = -1
    ds._rng_pid = -1
    rng = ds.rng
    assert not (numpy.random.RandomState(3).randint(0, 1000, 5)
                == rng.randint(0, 1000, 5)).all()
    unseeded = ImageListDataset([(images['grad.png'], 0)], 30)
    assert unseeded.rng is not None


# --- corrupt images ---------------------------------------------------------

@pytest.mark.parametrize('name', ['corrupt.jpg', 'trunc.png'])
def test_corrupt_raises(images, name):
    ds = ImageListDataset([(images[name], 0)], 8)
    with pytest.raises(ValueError) as e:
        ds[0]
    assert images[name] in str(e.value)
    assert e.value.__cause__ is not None


def test_skip_corrupt(images):
    pairs = [(images['corrupt.jpg'], 0), (images['trunc.png'], 1),
             (images['rgb.png'], 2), (images['corrupt.jpg'], 3)]
    ds = ImageListDataset(pairs, 8, train=False, skip_corrupt=True)
    assert ds.n_skipped == 0
    with pytest.warns(UserWarning, match='skipping corrupt image') as rec:
        x, t = ds[0]
    assert [images['corrupt.jpg'] in str(w.message) for w in rec] == [
        True, False]
    assert images['trunc.png'] in str(rec[1].message)
    assert int(t) == 2 and ds.n_skipped == 2
    numpy.testing.assert_array_equal(x, ds[2][0])
    with pytest.warns(UserWarning):
        x, t = ds[3]  # wraps around: 3 -> 0 -> 1 -> 2
    assert int(t) == 2 and ds.n_skipped == 5
    bad = ImageListDataset(pairs[:2], 8, skip_corrupt=True)
    with pytest.warns(UserWarning), pytest.raises(ValueError,
                                                  match='all 2 images'):
        bad[0]


def test_compute_mean(images):
    pairs = [(images['rgb.png'], 0), (images['gray.png'], 0),
             (images['small.png'], 0)]
    m = compute_mean(pairs, 4)
    assert m.shape == (3,) and m.dtype == numpy.float32
    numpy.testing.assert_allclose(m, [(200 + 100 + 1) / 3,
                                      (100 + 100 + 2) / 3,
                                      (50 + 100 + 3) / 3], rtol=1e-5)
    numpy.testing.assert_allclose(compute_mean(pairs, 4, limit=2),
                                  [100.5, 51, 26.5], rtol=1e-5)
    ds = ImageListDataset(pairs, 4, mean=m)
    assert ds[0][0].shape == (3, 4, 4)


# --- scripts/export_fashion_mnist.py ----------------------------------------

requires_fmnist = pytest.mark.skipif(
    not os.path.isdir(fashion_mnist.DEFAULT_ROOT),
    reason='Fashion-MNIST not installed')


def _load_script():
    spec = importlib.util.spec_from_file_location('export_fashion_mnist',
                                                  SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so that the pool can pickle tasks
    spec.loader.exec_module(module)
    return module


@requires_fmnist
def test_export_fashion_mnist(tmp_path, capsys):
    out = tmp_path / 'fm'
    proc = subprocess.run(
        [sys.executable, SCRIPT, str(out), '--train-limit', '30',
         '--val-limit', '10'], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert 'exported 30 train + 10 val' in proc.stdout
    script = _load_script()
    for name, source, n in [('train', 'train', 30), ('val', 'test', 10)]:
        x, t = fashion_mnist.load_fashion_mnist(source, limit=n)
        lines = (out / (name + '.txt')).read_text().splitlines()
        assert len(lines) == n
        pairs = read_image_list(str(out / (name + '.txt')), str(out / name),
                                n_class=10)
        for i, (line, (path, label)) in enumerate(zip(lines, pairs)):
            rel = '{}/{:05d}.png'.format(script.CLASS_NAMES[t[i]], i)
            assert line == '{} {}'.format(rel, t[i]) and label == t[i]
            assert path == str(out / name / rel)
            with Image.open(path) as im:
                assert im.mode == 'L' and im.size == (28, 28)
                numpy.testing.assert_array_equal(
                    numpy.asarray(im), numpy.rint(x[i, 0] * 255))
        ds = ImageListDataset(pairs, 28, train=False, mean=[0], std=[255],
                              channels=1)
        numpy.testing.assert_allclose(ds[n - 1][0], x[n - 1], atol=1e-6)
    stamp = json.loads((out / script.STAMP).read_text())
    assert (stamp['n_train'], stamp['n_val']) == (30, 10)

    # idempotent: nothing rewritten
    label0 = int(fashion_mnist.load_fashion_mnist('train', limit=1)[1][0])
    probe = out / 'train' / script.relative_path(0, label0)
    mtime = probe.stat().st_mtime_ns
    argv = [str(out), '--train-limit', '30', '--val-limit', '10']
    assert script.main(argv) == 0
    assert 'found 30 train + 10 val' in capsys.readouterr().out
    assert probe.stat().st_mtime_ns == mtime
    # other limits, or an incomplete list: exported again (in 2 processes)
    assert script.main([str(out), '--train-limit', '20', '--val-limit',
                        '10']) == 0
    assert 'exported 20 train' in capsys.readouterr().out
    assert len((out / 'train.txt').read_text().splitlines()) == 20
    (out / 'val.txt').write_text('x 0\n')
    assert script.export(str(out), 20, 10)[2] is False
    assert len((out / 'val.txt').read_text().splitlines()) == 10
    assert script.export(str(out), 20, 10)[2] is True
    assert script.export(str(out), 20, 10, force=True)[2] is False
