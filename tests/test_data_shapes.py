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
