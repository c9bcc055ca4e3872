import numpy as np
import pytest

from lip_jax.data import STAGE1_AUGMENT, STAGE2_AUGMENT, Augment
from lip_jax.data.augment import augment, center_resize, crop_box


def test_official_strengths():
    assert (STAGE1_AUGMENT.flip_p, STAGE1_AUGMENT.brightness) == (0.2, 0.05)
    assert (STAGE2_AUGMENT.flip_p, STAGE2_AUGMENT.brightness) == (0.1, 0.1)
    for aug in (STAGE1_AUGMENT, STAGE2_AUGMENT):
        assert (aug.contrast, aug.saturation, aug.scale) == (0.25, 0.25, (0.65, 1.0))


@pytest.mark.parametrize("h,w", [(100, 100), (60, 200), (300, 80)])
def test_crop_box_is_a_square_inside_the_image_with_area_in_scale(h, w):
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left, side = crop_box(rng, h, w, (0.65, 1.0))
        assert 0 <= top and top + side <= h and 0 <= left and left + side <= w
        fits = 0.65 * h * w <= min(h, w) ** 2
        if fits:
            assert 0.64 * h * w <= side * side <= 1.01 * h * w
        else:  # fallback: centred square of the short side
            assert side == min(h, w)


def test_augment_applies_the_same_geometry_to_the_mask():
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, :20] = 255  # left half white
    mask = image[..., 0] > 0
    no_jitter = Augment(flip_p=0.5, brightness=0, contrast=0, saturation=0)
    for seed in range(10):
        out, out_mask = augment(image, mask, np.random.default_rng(seed), 32, no_jitter)
        assert out.shape == (32, 32, 3) and out_mask.shape == (32, 32)
        np.testing.assert_array_equal(out_mask, out[..., 0] > 127)


def test_flip_probability_one_mirrors():
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    always = Augment(flip_p=1.0, brightness=0, contrast=0, saturation=0, scale=(1.0, 1.0))
    out, _ = augment(image, None, np.random.default_rng(0), 16, always)
    np.testing.assert_array_equal(out, image[:, ::-1])


def test_jitter_changes_colours_within_strength():
    image = np.full((16, 16, 3), 100, np.uint8)
    bright = Augment(flip_p=0, brightness=0.5, contrast=0, saturation=0, scale=(1.0, 1.0))
    means = [augment(image, None, np.random.default_rng(s), 16, bright)[0].mean()
             for s in range(20)]
    assert min(means) >= 49 and max(means) <= 151 and np.std(means) > 5


def test_center_resize():
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 10:30] = 200  # the centred square
    np.testing.assert_array_equal(center_resize(image, 20), np.full((20, 20, 3), 200))
