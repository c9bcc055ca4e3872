"""Synthetic captioned scenes: coloured shapes on a textured background.

Scene and image are pure functions of (seed, index) and the image size, so
the set needs no files and any example can be regenerated. `dominant` reads a
region back and names its colour and shape, which lets a test or demo check
that an inpainted hole follows the caption.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from lip_jax.data.errors import DataError

# Saturated colours, one per 60 degrees of hue, so hue alone separates them.
COLOURS = {
    "red": (220, 30, 30),
    "yellow": (230, 220, 30),
    "green": (30, 190, 40),
    "cyan": (30, 200, 210),
    "blue": (35, 55, 225),
    "purple": (200, 40, 210),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.17, "large": 0.28}  # side of the shape / image side
# 3x3 grid of places; the name is what the caption says.
PLACES = {
    (0, 0): "in the upper left", (0, 1): "at the top", (0, 2): "in the upper right",
    (1, 0): "on the left", (1, 1): "in the center", (1, 2): "on the right",
    (2, 0): "in the lower left", (2, 1): "at the bottom", (2, 2): "in the lower right",
}
# Background pixels stay below this HSV saturation; shapes are far above it.
_SATURATION_THRESHOLD = 100


@dataclasses.dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    size: str
    cell: tuple[int, int]
    box: tuple[float, float, float, float]  # left, top, right, bottom as fractions of the image

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {PLACES[self.cell]}"


def scene(seed: int, index: int, max_objects: int = 3, scale: float = 1.0) -> list[Shape]:
    """The objects of scene (seed, index): 1..max_objects shapes in distinct grid cells; `scale`
    multiplies every object's side (the caption's size word is unchanged)."""
    if not 0 < scale <= 1 / max(SIZES.values()):
        raise DataError(f"shapes: object scale must be in (0, {1 / max(SIZES.values()):.2f}], got {scale}")
    rng = np.random.default_rng((seed, index, 0))
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.permutation(9)[:n]
    objects = []
    for cell in cells:
        row, col = divmod(int(cell), 3)
        size = ("small", "large")[int(rng.integers(2))]
        side = SIZES[size] * scale
        # Centre jitters inside its cell but the shape never leaves the image.
        cx = float(np.clip((col + 0.5 + rng.uniform(-0.2, 0.2)) / 3, side / 2, 1 - side / 2))
        cy = float(np.clip((row + 0.5 + rng.uniform(-0.2, 0.2)) / 3, side / 2, 1 - side / 2))
        objects.append(Shape(
            colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            size=size, cell=(row, col),
            box=(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)))
    return objects


def caption(objects: list[Shape]) -> str:
    """'a large red triangle in the upper left and a small blue circle in the center'."""
    return " and ".join(o.phrase() for o in objects)


def _background(rng, size: int, texture: float = 1.0) -> np.ndarray:
    # Low-saturation texture: a tinted grey gradient, stripes and noise (scaled by `texture`).
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(4, 12)
    stripes = 18 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)))
    base = 90 + 70 * (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1)) + texture * stripes
    noise = rng.normal(0, 6, (size, size)).astype(np.float32)
    tint = rng.uniform(-12, 12, 3).astype(np.float32)
    grey = np.clip(base + texture * noise, 40, 210)[..., None] + tint
    return np.clip(grey, 0, 255).astype(np.uint8)


def render(objects: list[Shape], seed: int, index: int, size: int, texture: float = 1.0) -> np.ndarray:
    """Draw `objects` over the textured background of (seed, index); uint8 [size, size, 3]."""
    rng = np.random.default_rng((seed, index, 1))
    im = Image.fromarray(_background(rng, size, texture))
    draw = ImageDraw.Draw(im)
    for o in objects:
        _draw(draw, o.shape, [v * size for v in o.box], COLOURS[o.colour])
    return np.asarray(im)


def _draw(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    """The one way a shape is drawn in its box (left, top, right, bottom in pixels): the scenes and
    the reader's templates."""
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse([left, top, right, bottom], fill=fill)
    elif shape == "square":
        draw.rectangle([left, top, right, bottom], fill=fill)
    else:
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)


class Shapes:
    """Random-access source of synthetic captioned scenes (`shapes`)."""

    def __init__(self, num_examples: int = 10_000, image_size: int = 256, seed: int = 0,
                 max_objects: int = 3, object_hole: int = 0, texture: float = 1.0, object_scale: float = 1.0,
                 hide_all: bool = False):
        """object_hole > 0: each example also has a `mask` (True = hole) covering one of its objects,
        its box grown by a random margin and snapped outwards to a grid of `object_hole` pixels (the
        VQ token size), so the hole hides the object entirely and only the caption tells what it was.
        texture: strength of the background's stripes and noise (0: a smooth tinted gradient).
        object_scale: multiplies every object's side (e.g. 2 for objects several VQ tokens wide at a
        small image size; the captions still say "small" / "large").
        hide_all: the hole covers every object of the scene, each as above (stage 1 of the demo: every
        object then trains the DF-VQGAN's token path, which alone fills a hole)."""
        if num_examples <= 0 or image_size <= 0:
            raise DataError(f"shapes: num_examples and image_size must be positive, "
                            f"got {num_examples} and {image_size}")
        if object_hole < 0 or (object_hole and image_size % object_hole):
            raise DataError(f"shapes: object_hole must be 0 or divide image_size {image_size}, got {object_hole}")
        self.num_examples, self.image_size = num_examples, image_size
        self.seed, self.max_objects, self.object_hole = seed, max_objects, object_hole
        self.texture, self.object_scale = float(texture), float(object_scale)
        self.hide_all = bool(hide_all)
        scene(seed, 0, max_objects, self.object_scale)  # checks the scale

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(index)
        objects = scene(self.seed, index, self.max_objects, self.object_scale)
        example = {"image": render(objects, self.seed, index, self.image_size, self.texture),
                   "text": caption(objects), "id": f"shapes/{self.seed}/{index}"}
        if self.object_hole:
            rng = np.random.default_rng((self.seed, index, 2))
            target = objects[int(rng.integers(len(objects)))]
            example["mask"] = object_mask(target, self.image_size, self.object_hole, rng.uniform(0, 0.06))
            example["target"] = target
            for other in objects if self.hide_all else ():
                example["mask"] |= object_mask(other, self.image_size, self.object_hole, rng.uniform(0, 0.06))
        return example

    def __repr__(self) -> str:
        return (f"Shapes(num_examples={self.num_examples}, image_size={self.image_size}, "
                f"seed={self.seed}, max_objects={self.max_objects}, object_hole={self.object_hole}, "
                f"texture={self.texture}, object_scale={self.object_scale}, hide_all={self.hide_all})")


def object_mask(obj: Shape, size: int, grid: int, margin: float = 0.0) -> np.ndarray:
    """bool [size, size]: the object's box grown by `margin` (fraction of the image), snapped
    outwards to multiples of `grid` pixels."""
    left, top, right, bottom = obj.box
    lo = lambda v: int(np.floor(max(v - margin, 0.0) * size / grid)) * grid  # noqa: E731
    hi = lambda v: int(np.ceil(min(v + margin, 1.0) * size / grid)) * grid  # noqa: E731
    mask = np.zeros((size, size), bool)
    mask[lo(top):hi(bottom), lo(left):hi(right)] = True
    return mask


def _hue_to_colour(hue: np.ndarray) -> np.ndarray:
    """Index into COLOURS of the nearest palette hue (hues on PIL's 0..255 scale)."""
    palette = np.array([Image.fromarray(np.uint8([[c]])).convert("HSV").getpixel((0, 0))[0]
                        for c in COLOURS.values()], np.float32)
    diff = np.abs(hue[:, None].astype(np.float32) - palette[None])
    diff = np.minimum(diff, 256 - diff)  # hue is circular
    return diff.argmin(axis=1)


def dominant(image: np.ndarray, region: np.ndarray, min_fraction: float = 0.1):
    """Name the colour and shape that dominate `region` of a uint8 image.

    `region` is a bool [H, W] mask (e.g. an inpainted hole); it should contain
    the whole object for the shape to be read correctly. Returns
    (colour, shape), or (None, None) when fewer than `min_fraction` of the
    region's pixels are saturated (background only).

    The colour is the most common palette hue among the saturated pixels; the
    object is the largest connected blob of that colour (a stray speck is not
    part of it). The shape is the one whose template, drawn in the blob's
    bounding box as the scenes draw it, overlaps the blob best (IoU). Overlap
    rather than a threshold on how much of the box is filled, because blurred
    edges (what a 4-pixel VQ token leaves) move every template's overlap alike
    but shift a fill fraction across a fixed threshold; so the reader stays
    exact on ground truth and reliable on it blurred by 1 px, for every shape
    (tests/test_data_shapes.py).
    """
    from scipy import ndimage

    if image.shape[:2] != region.shape:
        raise DataError(f"image {image.shape[:2]} and region {region.shape} differ in size")
    hsv = np.asarray(Image.fromarray(image).convert("HSV"))
    saturated = region & (hsv[..., 1] > _SATURATION_THRESHOLD) & (hsv[..., 2] > 60)
    if saturated.sum() < max(1, min_fraction * region.sum()):
        return None, None
    labels = np.full(region.shape, -1)
    labels[saturated] = _hue_to_colour(hsv[..., 0][saturated])
    best = int(np.bincount(labels[saturated], minlength=len(COLOURS)).argmax())
    blobs, count = ndimage.label(labels == best)
    blob = blobs == 1 + int(np.bincount(blobs.ravel(), minlength=count + 1)[1:].argmax())
    ys, xs = np.nonzero(blob)
    box = (xs.min(), ys.min(), xs.max(), ys.max())
    overlap = {}
    for shape in SHAPES:
        template = Image.new("1", (blob.shape[1], blob.shape[0]))
        _draw(ImageDraw.Draw(template), shape, box, 1)
        t = np.asarray(template, bool)
        overlap[shape] = (t & blob).sum() / (t | blob).sum()
    return list(COLOURS)[best], max(SHAPES, key=overlap.get)
