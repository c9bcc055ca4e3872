import numpy as np
import pytest
from PIL import Image

from lip_jax import images
from lip_jax.data import DataError, masks

H, W = 64, 96  # not square, so height/width mix-ups show
RANDOM_FAMILIES = ["stage1_boxes", "stage2", "brush", "thin", "thick", "half"]


def coverages(family, n=60, h=H, w=W):
    return np.array([masks.make_mask(family, 0, i, h, w).mean() for i in range(n)])


def interior_fraction(mask, r):
    """Fraction of hole pixels whose whole (2r+1)^2 neighbourhood is hole."""
    k = 2 * r + 1
    c = np.pad(mask.astype(np.int64), r + 1).cumsum(0).cumsum(1)
    window = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return (window[:mask.shape[0], :mask.shape[1]] == k * k).sum() / max(mask.sum(), 1)


@pytest.mark.parametrize("family", sorted(masks.FAMILIES))
def test_every_family_is_a_deterministic_bool_mask(family):
    a = masks.make_mask(family, 3, 7, H, W)
    b = masks.make_mask(family, 3, 7, H, W)
    assert a.dtype == bool and a.shape == (H, W)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family", RANDOM_FAMILIES)
def test_random_families_vary_with_index(family):
    drawn = {masks.make_mask(family, 0, i, H, W).tobytes() for i in range(8)}
    assert len(drawn) > 1


def test_stage1_boxes_coverage_at_most_40_percent():
    cov = coverages("stage1_boxes")
    assert cov.max() <= 0.4
    # Each accepted box alone covers >= 10% (up to rounding of its sides).
    assert cov.min() >= 0.09


def test_stage1_mixture_proportions_and_decoder_flag():
    rng = np.random.default_rng(0)
    kinds, flags = [], []
    for _ in range(600):
        m, decoder_none = masks.stage1_mixture(rng, 16, 16)
        kinds.append("none" if not m.any() else "full" if m.all() else "boxes")
        flags.append(decoder_none)
    kinds, flags = np.array(kinds), np.array(flags)
    for kind, p in [("boxes", 0.4), ("none", 0.2), ("full", 0.4)]:
        assert abs((kinds == kind).mean() - p) < 0.06, kind
    assert flags[kinds == "none"].all()
    assert abs(flags[kinds != "none"].mean() - 0.5) < 0.08


def test_stage2_coverage_at_most_70_percent_and_usually_above_half():
    cov = coverages("stage2", n=80)
    assert cov.max() <= 0.7
    assert cov.min() >= 0.09
    assert (cov > 0.5).mean() > 0.5


def test_thin_and_thick_stay_within_half_the_image():
    for family in ("thin", "thick"):
        cov = coverages(family, n=30, h=128, w=128)
        assert cov.min() > 0 and cov.max() <= 0.5, family


def test_thin_strokes_are_narrow_and_thick_ones_wide():
    thin = [interior_fraction(masks.make_mask("thin", 0, i, 128, 128), 4) for i in range(20)]
    thick = [interior_fraction(masks.make_mask("thick", 0, i, 128, 128), 4) for i in range(20)]
    assert np.mean(thin) < 0.05 < 0.3 < np.mean(thick)


def test_brush_is_a_partial_free_form_mask():
    cov = coverages("brush", n=30)
    assert cov.min() > 0 and cov.max() < 0.9


def test_every_second_line():
    m = masks.make_mask("every_second_line", 0, 0, H, W)
    assert m[1::2].all() and not m[0::2].any()


def test_super_resolution_keeps_every_second_pixel():
    m = masks.make_mask("super_resolution", 0, 0, H, W)
    assert not m[::2, ::2].any()
    m[::2, ::2] = True
    assert m.all()


def test_expand_is_border_only():
    m = masks.make_mask("expand", 0, 0, H, W)
    bh, bw = H // 4, W // 4
    assert not m[bh:H - bh, bw:W - bw].any()
    m[bh:H - bh, bw:W - bw] = True
    assert m.all()


def test_half_is_one_half_plane():
    halves = set()
    for i in range(20):
        m = masks.make_mask("half", 0, i, H, W)
        assert m.mean() == 0.5
        for name, region in [("left", m[:, :W // 2]), ("right", m[:, W // 2:]),
                             ("top", m[:H // 2]), ("bottom", m[H // 2:])]:
            if region.all():
                halves.add(name)
    assert halves == {"left", "right", "top", "bottom"}


def test_none_and_full():
    assert not masks.make_mask("none", 0, 0, H, W).any()
    assert masks.make_mask("full", 0, 0, H, W).all()


def test_unknown_family_is_a_data_error():
    with pytest.raises(DataError, match="unknown mask family"):
        masks.make_mask("circles", 0, 0, H, W)


def test_token_mask_is_max_pool():
    m = np.zeros((2, 32, 48), bool)
    m[0, 9, 17] = True
    m[1, :8, :8] = True
    t = masks.token_mask(m, 8)
    expected = np.zeros((2, 4, 6), bool)
    expected[0, 1, 2] = True
    expected[1, 0, 0] = True
    np.testing.assert_array_equal(t, expected)
    with pytest.raises(DataError, match="multiple"):
        masks.token_mask(np.zeros((30, 32), bool), 8)


@pytest.mark.parametrize("patch", [2, 4, 8, 16])
def test_token_mask_matches_per_token_definition(patch):
    m = np.random.default_rng(patch).random((32, 64)) < 0.01
    t = masks.token_mask(m, patch)
    assert t.shape == (32 // patch, 64 // patch)
    for i in range(t.shape[0]):
        for j in range(t.shape[1]):
            assert t[i, j] == m[i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].any()


def test_load_mask_nonzero_is_hole_and_validated(tmp_path):
    values = np.zeros((8, 10), np.uint8)
    values[1, 2], values[3, 4] = 255, 7
    Image.fromarray(values).save(tmp_path / "m.png")
    m = images.read_mask(tmp_path / "m.png", (8, 10))
    np.testing.assert_array_equal(m, values != 0)
    with pytest.raises(DataError, match="m.png.*expected 9x10"):
        images.read_mask(tmp_path / "m.png", (9, 10))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        images.read_mask(tmp_path / "bad.png")


def test_file_masks_resize_and_invert(tmp_path):
    values = np.zeros((16, 16), np.uint8)
    values[:, :8] = 255
    Image.fromarray(values).save(tmp_path / "a.png")
    rng = np.random.default_rng(0)
    m = masks.FileMasks(tmp_path)(rng, 32, 32)
    assert m[:, :16].all() and not m[:, 16:].any()
    inverted = masks.FileMasks(tmp_path, invert=True)(rng, 32, 32)
    np.testing.assert_array_equal(inverted, ~m)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no mask images"):
        masks.FileMasks(tmp_path / "empty")
