"""BatchAugmenter: crops, normalisation, and its saved random state."""
import numpy
import pytest
from chainer import serializers

from chainerkfac.datasets.augment import BatchAugmenter
from chainerkfac.datasets.augment import RandomStateExtension


def batch(rng, n=6, size=(9, 11), channels=3):
    return [(rng.randint(0, 256, size + (channels,)).astype(numpy.float32),
             i % 3) for i in range(n)]


def test_crop_is_a_window_of_the_image_possibly_flipped(rng):
    aug = BatchAugmenter(5, mean=[10, 20, 30], std=[2, 4, 8], n_class=3,
                         seed=1)
    images = batch(rng)
    x, t = aug(images)
    assert x.shape == (6, 3, 5, 5) and x.dtype == numpy.float32
    numpy.testing.assert_array_equal(t, [0, 1, 2, 0, 1, 2])
    mean = numpy.array([10, 20, 30], 'f').reshape(3, 1, 1)
    std = numpy.array([2, 4, 8], 'f').reshape(3, 1, 1)
    for (image, _), xi in zip(images, x):
        raw = xi * std + mean                     # (C, 5, 5), 0-255
        found = False
        for top in range(9 - 5 + 1):
            for left in range(11 - 5 + 1):
                window = image[top:top + 5, left:left + 5].transpose(2, 0, 1)
                if numpy.allclose(raw, window, atol=1e-3) or numpy.allclose(
                        raw, window[:, :, ::-1], atol=1e-3):
                    found = True
        assert found


def test_mixup_and_erasing_give_soft_targets(rng):
    aug = BatchAugmenter(5, [0] * 3, [1] * 3, n_class=3, mixup_alpha=0.4,
                         erasing=dict(p=1.0, area=(0.1, 0.2),
                                      aspect=(0.5, 1.0)), seed=0)
    x1, t1 = aug(batch(rng))
    x2, t2 = aug(batch(rng))
    assert t2.shape == (6, 3)
    numpy.testing.assert_allclose(t2.sum(axis=1), 1, rtol=1e-6)
    assert (t2.max(axis=1) >= 0.5).all()          # lambda = max(l, 1 - l)
    assert ((x2 == 0).reshape(6, -1).any(axis=1)).all()   # every one erased


@pytest.mark.parametrize('mixup', [0.0, 0.4])
def test_saved_state_replays_the_same_draws(rng, tmp_path, mixup):
    aug = BatchAugmenter(5, [0] * 3, [1] * 3, n_class=3, mixup_alpha=mixup,
                         erasing=dict(p=0.5, area=(0.1, 0.2),
                                      aspect=(0.5, 1.0)), seed=3)
    order = numpy.random.RandomState(9)
    holder = RandomStateExtension(augmenter=aug, order=order)
    first = batch(rng)
    aug(first)
    path = str(tmp_path / 'state.npz')
    serializers.save_npz(path, holder)
    nxt = batch(rng)
    expected = aug(nxt), order.permutation(10)

    aug2 = BatchAugmenter(5, [0] * 3, [1] * 3, n_class=3, mixup_alpha=mixup,
                          erasing=dict(p=0.5, area=(0.1, 0.2),
                                       aspect=(0.5, 1.0)), seed=77)
    order2 = numpy.random.RandomState(1)
    serializers.load_npz(path, RandomStateExtension(augmenter=aug2,
                                                    order=order2))
    got = aug2(nxt), order2.permutation(10)
    numpy.testing.assert_array_equal(got[0][0], expected[0][0])
    numpy.testing.assert_array_equal(got[0][1], expected[0][1])
    numpy.testing.assert_array_equal(got[1], expected[1])
