import numpy as np

from lip_jax.data import Shapes, dominant
from lip_jax.data import shapes as shapes_lib


def object_region(obj, size, pad=2):
    region = np.zeros((size, size), bool)
    left, top, right, bottom = (int(round(v * size)) for v in obj.box)
    region[max(top - pad, 0):bottom + pad, max(left - pad, 0):right + pad] = True
    return region


def test_shapes_are_deterministic_and_any_size():
    a, b = Shapes(5, 48, seed=1)[3], Shapes(5, 48, seed=1)[3]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["text"] == b["text"] and a["id"] == "shapes/1/3"
    assert a["image"].shape == (48, 48, 3) and a["image"].dtype == np.uint8
    assert Shapes(5, 96, seed=1)[3]["text"] == a["text"]
    assert not np.array_equal(Shapes(5, 48, seed=2)[3]["image"], a["image"])


def test_caption_states_every_object():
    for index in range(10):
        objects = shapes_lib.scene(0, index)
        text = Shapes(10, 64)[index]["text"]
        for o in objects:
            assert f"{o.size} {o.colour} {o.shape} {shapes_lib.PLACES[o.cell]}" in text


def test_dominant_reads_back_colour_and_shape():
    size = 128
    for index in range(20):
        objects = shapes_lib.scene(0, index)
        image = shapes_lib.render(objects, 0, index, size)
        for o in objects:
            assert dominant(image, object_region(o, size)) == (o.colour, o.shape)


def test_dominant_of_background_is_none():
    size = 128
    for index in range(10):
        objects = shapes_lib.scene(0, index)
        image = shapes_lib.render(objects, 0, index, size)
        background = np.ones((size, size), bool)
        for o in objects:
            background &= ~object_region(o, size, pad=4)
        assert dominant(image, background) == (None, None)


def test_object_scale_grows_the_shapes_and_keeps_the_captions():
    import pytest

    from lip_jax.data import DataError

    plain, big = Shapes(20, 32, seed=1, max_objects=1), Shapes(20, 32, seed=1, max_objects=1, object_scale=2.0)
    for i in range(20):
        a, b = shapes_lib.scene(1, i, 1)[0], shapes_lib.scene(1, i, 1, scale=2.0)[0]
        assert plain[i]["text"] == big[i]["text"] and (a.colour, a.shape, a.size) == (b.colour, b.shape, b.size)
        assert np.isclose(b.box[2] - b.box[0], 2 * (a.box[2] - a.box[0]))
        assert 0 <= b.box[0] and b.box[2] <= 1 and 0 <= b.box[1] and b.box[3] <= 1
        # The reader stays exact on the ground truth at the demo's size (32 px) with big shapes.
        assert dominant(big[i]["image"], object_region(b, 32)) == (b.colour, b.shape)
    for bad in (0.0, -1.0, 4.0):
        with pytest.raises(DataError, match="scale"):
            Shapes(5, 32, object_scale=bad)


def test_dominant_reads_blurred_shapes_at_the_demos_size():
    """A 4-pixel VQ token blurs edges by about a pixel; the reader must still tell the shapes apart
    there, each as well as the others."""
    from PIL import Image, ImageFilter

    src = Shapes(num_examples=150, image_size=32, seed=5, max_objects=1, texture=0.0, object_scale=2.0,
                 object_hole=4)
    hits = {shape: [] for shape in shapes_lib.SHAPES}
    for i in range(len(src)):
        ex = src[i]
        blurred = np.asarray(Image.fromarray(ex["image"]).filter(ImageFilter.GaussianBlur(1.0)))
        hits[ex["target"].shape].append(dominant(blurred, ex["mask"]) == (ex["target"].colour, ex["target"].shape))
    assert np.mean(sum(hits.values(), [])) >= 0.95
    assert all(np.mean(h) >= 0.9 for h in hits.values()), {k: np.mean(h) for k, h in hits.items()}


def test_dominant_ignores_a_stray_speck_of_the_objects_colour():
    src = Shapes(num_examples=20, image_size=32, seed=5, max_objects=1, texture=0.0, object_scale=2.0,
                 object_hole=4)
    for i in range(len(src)):
        ex = src[i]
        image, (ys, xs) = ex["image"].copy(), np.nonzero(ex["mask"])
        # One pixel of the object's colour at the hole corner farthest from the object's centre.
        left, top, right, bottom = (v * 32 for v in ex["target"].box)
        y = ys.min() if (top + bottom) / 2 - ys.min() > ys.max() - (top + bottom) / 2 else ys.max()
        x = xs.min() if (left + right) / 2 - xs.min() > xs.max() - (left + right) / 2 else xs.max()
        image[y, x] = shapes_lib.COLOURS[ex["target"].colour]
        assert dominant(image, ex["mask"]) == (ex["target"].colour, ex["target"].shape), i
