"""lip_jax.images: the one converter pair, the named resize rules, the atomic writers, the mask check."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lip_jax.config import UsageError
from lip_jax.images import check_mask, from_uint8, read_image, to_uint8, write_atomic, write_image
from lip_jax.images import resize as R


def test_converters_round_trip_every_pixel_exactly():
    pixels = np.arange(256, dtype=np.uint8)
    unit = from_uint8(pixels)
    assert unit.dtype == np.float32 and unit.min() == -1.0 and unit.max() == 1.0
    np.testing.assert_array_equal(to_uint8(unit), pixels)
    # jax in and out, also inside jit: the same bytes as the host path
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda p: to_uint8(from_uint8(p)))(jnp.asarray(pixels))), pixels)
    assert isinstance(to_uint8(jnp.asarray(unit)), jax.Array) and isinstance(to_uint8(unit), np.ndarray)


def test_to_uint8_rounds_and_clips():
    x = np.array([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 191, 255, 255])


@pytest.mark.parametrize("rule", ["photo_to_model", "model_to_photo", "eval_to_model", "train_to_model",
                                  "display_nearest"])
def test_image_rules_give_the_asked_shape(rule):
    image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    out = getattr(R, rule)(image, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert getattr(R, rule)(image, (12, 20)).shape == (12, 20, 3)


def test_mask_rules_keep_only_holes_and_never_lose_one():
    mask = np.random.default_rng(1).random((37, 53)) > 0.7
    near = R.mask_nearest(mask, (16, 20))
    assert near.dtype == bool and near.shape == (16, 20)
    one = np.zeros((64, 64), bool)
    one[31, 40] = True
    assert R.mask_any(one, 8).sum() >= 1 and R.mask_any(one, 8).dtype == bool
    assert not R.mask_nearest(one, 8).any()  # why the model's crop uses mask_any, not nearest


def test_write_image_round_trips_and_is_atomic(tmp_path, monkeypatch):
    image = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    write_image(image, tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), image)
    with pytest.raises(ValueError, match="unknown file extension"):
        write_image(image, tmp_path / "a.nope")

    def full_disk(self, data):
        open(self, "wb").write(data[:10])  # half written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("etils.epath.Path.write_bytes", full_disk, raising=False)
    import pathlib
    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_image(image, tmp_path / "b.png")
    with pytest.raises(OSError, match="No space"):
        write_atomic(tmp_path / "a.png", b"new bytes")
    assert sorted(os.listdir(tmp_path)) == ["a.png"]  # no b.png, no temporary, a.png untouched
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), image)


def test_check_mask_messages():
    hole = np.zeros((4, 6), bool)
    hole[1, 2] = True
    assert check_mask(hole, (4, 6), "m.png") is not None
    with pytest.raises(UsageError, match=r"^m.png: mask is 6x4 but the image is 8x4$"):
        check_mask(hole, (4, 8), "m.png")
    with pytest.raises(UsageError, match=r"^m.png: mask has no hole \(non-zero pixels\)$"):
        check_mask(~np.ones((4, 6), bool), (4, 6), "m.png")
    with pytest.raises(UsageError, match=r"^mask: mask has no hole \(after --invert-mask\)$"):
        check_mask(np.zeros((4, 6), bool), (4, 6), "mask", inverted=True)


def test_reconstruct_and_inpaint_cut_a_photo_the_same_way(monkeypatch, tmp_path):
    """`lip-jax reconstruct` gives the model the pixels `Inpainter` gives it for the same photo
    (photo.to_model), and writes the result back at the photo's size."""
    from lip_jax.app import photo, pipeline
    from lip_jax.cli import main
    from lip_jax.weights import load

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)
    mask = np.zeros((90, 150), bool)
    mask[20:70, 60:130] = True
    Image.fromarray(image).save(tmp_path / "photo.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    seen = {}

    def fake_reconstruct(params, cfg, pixels, holes):
        seen.update(pixels=pixels, holes=holes)
        return np.zeros(pixels.shape, np.float32)

    monkeypatch.setattr(load, "load_vqgan", lambda path, cfg: {})
    monkeypatch.setattr(pipeline, "reconstruct", fake_reconstruct)
    rc = main(["reconstruct", "--config", "configs/test_stage1.py", "--ckpt", str(tmp_path), "--image",
               str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "o.png")])
    assert rc == 0
    want_pixels, want_holes, window = photo.to_model(image, mask, 32)  # what Inpainter.__call__ cuts
    np.testing.assert_array_equal(seen["pixels"], want_pixels)
    np.testing.assert_array_equal(seen["holes"], want_holes)
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == image.shape
    np.testing.assert_array_equal(out, photo.paste(image, np.full((32, 32, 3), 128, np.uint8), window, mask,
                                                   composite=False))
