"""Photo windows: plan around the hole, crop to the model size, paste back (numpy/PIL only)."""
import numpy as np
import pytest

from lip_jax.app.photo import Window, crop, paste, plan_window, to_model

COLOUR = np.array([12, 200, 77], np.uint8)


def photo(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def hole(h, w, top, left, bottom, right):
    m = np.zeros((h, w), bool)
    m[top:bottom, left:right] = True
    return m


def inpaint_constant(image, mask, size, composite=True):
    """The pipeline around a stand-in model that paints everything COLOUR."""
    pixels, holes, window = to_model(image, mask, size)
    assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8
    assert holes.shape == (size, size) and holes.dtype == bool
    result = np.broadcast_to(COLOUR, pixels.shape).copy()
    return paste(image, result, window, mask, composite), window, holes


def covers(window, mask, holes, size):
    """Every photo hole pixel maps (photo -> window -> model) onto a model hole pixel."""
    r, c = np.nonzero(mask)
    i = (r - window.top) * size // window.side
    j = (c - window.left) * size // window.side
    return bool(np.all(holes[i, j]))


def check_composite(image, mask, out):
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~mask], image[~mask])
    assert np.all(out[mask] == COLOUR)


def test_small_hole_native_resolution():
    image, mask = photo(750, 1000), hole(750, 1000, 300, 400, 340, 460)
    out, window, holes = inpaint_constant(image, mask, 256)
    assert window.side == 256
    assert 0 <= window.top and window.bottom <= 750 and 0 <= window.left and window.right <= 1000
    # centred on the hole bbox (rows 300..340, cols 400..460)
    assert (window.top, window.left) == ((300 + 340 - 256) // 2, (400 + 460 - 256) // 2)
    check_composite(image, mask, out)
    assert covers(window, mask, holes, 256)


def test_large_hole_window_grows_and_is_resized():
    image, mask = photo(750, 1000), hole(750, 1000, 100, 200, 600, 800)   # 500 x 600 hole
    out, window, holes = inpaint_constant(image, mask, 256)
    assert window.side == 750   # 1.5 x 600, capped at the photo's short side
    assert window.top <= 100 and window.bottom >= 600 and window.left <= 200 and window.right >= 800
    check_composite(image, mask, out)
    assert covers(window, mask, holes, 256)
    assert plan_window(hole(750, 1000, 100, 200, 400, 500), 256).side == 450   # 1.5 x 300


def test_photo_smaller_than_model():
    image, mask = photo(150, 200), hole(150, 200, 50, 60, 90, 120)
    out, window, holes = inpaint_constant(image, mask, 256)
    assert out.shape == (150, 200, 3)
    assert window.side == 256 and window.top < 0 and window.left < 0
    assert window.bottom > 150 and window.right > 200
    check_composite(image, mask, out)
    assert covers(window, mask, holes, 256)
    # the padding is edge-replicated photo, never hole
    pixels, holes2 = crop(image, mask, window, 256)
    assert not holes2[:-window.top].any() and not holes2[:, :-window.left].any()
    np.testing.assert_array_equal(pixels[0, -window.left:-window.left + 200], image[0])


@pytest.mark.parametrize("box", [(0, 0, 30, 40), (700, 950, 750, 1000), (0, 300, 750, 340)])
def test_hole_on_the_border(box):
    image, mask = photo(750, 1000, seed=1), hole(750, 1000, *box)
    out, window, holes = inpaint_constant(image, mask, 256)
    assert 0 <= window.top and window.bottom <= 750 and 0 <= window.left and window.right <= 1000
    check_composite(image, mask, out)
    assert covers(window, mask, holes, 256)


def test_wide_hole_on_wide_photo():
    image, mask = photo(120, 1000), hole(120, 1000, 40, 50, 80, 950)
    out, window, holes = inpaint_constant(image, mask, 64)
    assert window.side == 900 and window.left == 50 and window.top < 0   # the hole's length
    check_composite(image, mask, out)
    assert covers(window, mask, holes, 64)


@pytest.mark.parametrize("h,w,box", [(750, 1000, (300, 400, 340, 460)), (150, 200, (5, 5, 20, 20)),
                                     (750, 1000, (100, 200, 600, 800))])
def test_no_composite_replaces_window_inside_photo(h, w, box):
    image, mask = photo(h, w, seed=2), hole(h, w, *box)
    out, window, _ = inpaint_constant(image, mask, 256, composite=False)
    inside = np.zeros((h, w), bool)
    inside[max(window.top, 0):window.bottom, max(window.left, 0):window.right] = True
    np.testing.assert_array_equal(out[~inside], image[~inside])
    assert np.all(out[inside] == COLOUR)


def test_round_trip_exact_when_side_is_size():
    image, mask = photo(300, 400, seed=3), hole(300, 400, 290, 100, 300, 130)
    window = plan_window(mask, 64)
    assert window.side == 64
    pixels, _ = crop(image, mask, window, 64)
    for composite in (True, False):
        np.testing.assert_array_equal(paste(image, pixels, window, mask, composite), image)


def test_empty_mask_changes_nothing():
    image, mask = photo(100, 120, seed=4), np.zeros((100, 120), bool)
    out, window, holes = inpaint_constant(image, mask, 32)
    assert window.side == 32 and not holes.any()
    np.testing.assert_array_equal(out, image)


def test_rejects_mismatch_and_upscaling():
    image, mask = photo(50, 60), hole(50, 60, 1, 1, 5, 5)
    with pytest.raises(ValueError):
        crop(image, mask[:, :-1], plan_window(mask, 32), 32)
    with pytest.raises(ValueError):
        crop(image, mask, Window(0, 0, 16), 32)
    with pytest.raises(ValueError):
        plan_window(mask, 32, context=0.5)


def random_mask(rng, h, w):
    mask = np.zeros((h, w), bool)
    for _ in range(rng.integers(1, 4)):   # a few rectangles, sometimes one pixel, sometimes huge
        t, l = rng.integers(0, h), rng.integers(0, w)
        mask[t:t + rng.integers(1, h + 1), l:l + rng.integers(1, w + 1)] = True
    return mask


@pytest.mark.parametrize("seed", range(12))
def test_invariants_random(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(10, 400)), int(rng.integers(10, 400))
    size = int(rng.choice([16, 32, 64]))
    image, mask = photo(h, w, seed), random_mask(rng, h, w)
    out, window, holes = inpaint_constant(image, mask, size)
    r, c = np.nonzero(mask)
    assert window.side >= size
    assert window.top <= r.min() and r.max() < window.bottom
    assert window.left <= c.min() and c.max() < window.right
    for start, end, extent in ((window.top, window.bottom, h), (window.left, window.right, w)):
        if window.side <= extent:   # fits: inside the photo
            assert 0 <= start and end <= extent
        else:                       # covers the axis, photo centred
            assert start <= 0 and end >= extent and abs(start + (end - extent)) <= 1
    check_composite(image, mask, out)
    assert covers(window, mask, holes, size)
    out, _, _ = inpaint_constant(image, mask, size, composite=False)
    inside = np.zeros((h, w), bool)
    inside[max(window.top, 0):window.bottom, max(window.left, 0):window.right] = True
    np.testing.assert_array_equal(out[~inside], image[~inside])
    assert np.all(out[inside] == COLOUR)
