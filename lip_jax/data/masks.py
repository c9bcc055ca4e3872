"""Inpainting mask generators. True = defective pixel (hole).

Every family is a function ``(rng, height, width) -> bool[H, W]``; ``make_mask``
turns (seed, index) into the generator so that any mask can be regenerated
from those two numbers alone.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from lip_jax.data.errors import DataError
from lip_jax.images import read_mask
from lip_jax.images.resize import mask_nearest

MaskFn = Callable[[np.random.Generator, int, int], np.ndarray]

# Box aspect ratios are drawn log-uniformly in [0.3, 1/0.3]
# (MaskingGenerator defaults in config/dfvq4imagenet/__init__.py and config/mps4cc/__init__.py).
MIN_ASPECT = 0.3

# Stage 1 (config/dfvq4imagenet/base.py: min_vmlm_ratio, max_vmlm_ratio, random_mask_ratio,
# full_mask_ratio, none_decoder_ratio).
STAGE1_COVERAGE = (0.1, 0.4)
STAGE1_P_BOXES = 0.4
STAGE1_P_NO_HOLE = 0.2  # named full_mask_ratio upstream, but it yields an all-zero mask
STAGE1_P_DECODER_NONE = 0.5

# Stage 2 (config/mps4cc/base.py and config/mps4coco/base.py: min/max_vmlm_ratio,
# min/max_per_mask_ratio, attempt).
STAGE2_COVERAGE = (0.5, 0.7)
STAGE2_BOX_AREA = (0.1, 0.3)
BOX_ATTEMPTS = 5


def _box_mask(rng, height, width, *, box_area, max_total, stop_above=None,
              attempts=BOX_ATTEMPTS) -> np.ndarray:
    """Union of up to `attempts` random rectangles (areas in pixels).

    A box is kept only if the union stays within `max_total`; the loop ends
    early once the union exceeds `stop_above`. Neither official generator
    guarantees a minimum coverage, and neither does this one.
    """
    mask = np.zeros((height, width), bool)
    covered = 0
    log_aspect = (math.log(MIN_ASPECT), math.log(1.0 / MIN_ASPECT))
    for _ in range(attempts):
        area = rng.uniform(*box_area)
        aspect = math.exp(rng.uniform(*log_aspect))
        box_h = int(round(math.sqrt(area * aspect)))
        box_w = int(round(math.sqrt(area / aspect)))
        if box_h >= height or box_w >= width:
            continue
        top = int(rng.integers(0, height - box_h + 1))
        left = int(rng.integers(0, width - box_w + 1))
        window = mask[top:top + box_h, left:left + box_w]
        total = covered + box_h * box_w - int(window.sum())
        if total > max_total:
            continue
        window[:] = True
        covered = total
        if stop_above is not None and covered > stop_above:
            break
    return mask


def stage1_boxes(rng, height, width) -> np.ndarray:
    """Stage-1 random boxes: each box and the union cover at most 40% of the image."""
    n = height * width
    lo, hi = int(n * STAGE1_COVERAGE[0]), int(n * STAGE1_COVERAGE[1])
    return _box_mask(rng, height, width, box_area=(lo, hi), max_total=hi)


def stage1_mixture(rng, height, width) -> tuple[np.ndarray, bool]:
    """The stage-1 training mixture: (mask, decoder_none).

    40% random boxes, 20% no hole, 40% full hole. "Decoder without skips" is
    drawn with p=0.5 for boxes and full holes, and always set for no-hole
    masks (config/dfvq4imagenet/__init__.py, BaseDataset._mask_vision).
    """
    r, r2 = rng.random(), rng.random()
    if r < STAGE1_P_BOXES:
        return stage1_boxes(rng, height, width), bool(r2 < STAGE1_P_DECODER_NONE)
    if r < STAGE1_P_BOXES + STAGE1_P_NO_HOLE:
        return np.zeros((height, width), bool), True
    return np.ones((height, width), bool), bool(r2 < STAGE1_P_DECODER_NONE)


def stage1(rng, height, width) -> np.ndarray:
    """The mask of the stage-1 mixture (use `stage1_mixture` for the decoder flag too)."""
    return stage1_mixture(rng, height, width)[0]


def stage2_boxes(rng, height, width) -> np.ndarray:
    """Stage-2 boxes: 10-30% each, union at most 70%, stop once above 50%."""
    n = height * width
    return _box_mask(
        rng, height, width,
        box_area=(int(n * STAGE2_BOX_AREA[0]), int(n * STAGE2_BOX_AREA[1])),
        max_total=int(n * STAGE2_COVERAGE[1]),
        stop_above=int(n * STAGE2_COVERAGE[0]))


def strokes(rng, height, width, *, times, max_width, max_angle, max_len,
            segments=(1, 5)) -> np.ndarray:
    """Free-form brush strokes: `times` polylines of random-walk segments.

    Sizes are given for a 256-pixel image and scaled to the requested one.
    """
    scale = min(height, width) / 256.0
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in range(int(rng.integers(times[0], times[1] + 1))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        for _ in range(int(rng.integers(segments[0], segments[1] + 1))):
            angle = 0.01 + rng.uniform(0, max_angle)
            if stroke % 2 == 0:
                angle = 2 * math.pi - angle
            length = (10 + rng.uniform(0, max_len)) * scale
            brush = max(1, int(round((5 + rng.uniform(0, max_width)) * scale)))
            nx = float(np.clip(x + length * math.sin(angle), 0, width - 1))
            ny = float(np.clip(y + length * math.cos(angle), 0, height - 1))
            draw.line([(x, y), (nx, ny)], fill=255, width=brush)
            # Round joints, so consecutive segments leave no notches.
            r = brush / 2
            draw.ellipse([nx - r, ny - r, nx + r, ny + r], fill=255)
            x, y = nx, ny
    return np.asarray(canvas) > 0


def _add_boxes(rng, mask, *, times, size, margin):
    height, width = mask.shape
    scale = min(height, width) / 256.0
    size = (int(size[0] * scale), int(size[1] * scale))
    margin = int(margin * scale)
    for _ in range(int(rng.integers(times[0], times[1] + 1))):
        box_h = int(rng.integers(size[0], min(size[1], height - 2 * margin) + 1))
        box_w = int(rng.integers(size[0], min(size[1], width - 2 * margin) + 1))
        top = int(rng.integers(margin, height - margin - box_h + 1))
        left = int(rng.integers(margin, width - margin - box_w + 1))
        mask[top:top + box_h, left:left + box_w] = True
    return mask


def _at_most_half(draw_fn, rng, height, width, tries=10):
    # LaMa's mask datasets drop masks covering more than half the image
    # (max_tamper_area: 0.5); redraw a few times instead of dropping.
    for _ in range(tries):
        mask = draw_fn(rng, height, width)
        if mask.mean() <= 0.5:
            return mask
    return mask


def brush(rng, height, width) -> np.ndarray:
    """Free-form brush strokes in the style of DeepFill v2 (a few long, medium-width strokes)."""
    return strokes(rng, height, width, times=(1, 4), max_width=35, max_angle=4.0,
                   max_len=60, segments=(4, 12))


def thin(rng, height, width) -> np.ndarray:
    """LaMa / RePaint "thin": many narrow strokes (LaMa configs/data_gen/random_thin_256.yaml)."""
    def draw(r, h, w):
        return strokes(r, h, w, times=(4, 50), max_width=10, max_angle=4.0, max_len=40)
    return _at_most_half(draw, rng, height, width)


def thick(rng, height, width) -> np.ndarray:
    """LaMa / RePaint "thick": few wide strokes, plus boxes 30% of the time
    (LaMa configs/data_gen/random_thick_256.yaml)."""
    def draw(r, h, w):
        mask = strokes(r, h, w, times=(1, 5), max_width=100, max_angle=4.0, max_len=200)
        if r.random() < 0.3:
            mask = _add_boxes(r, mask, times=(1, 3), size=(30, 150), margin=10)
        return mask
    return _at_most_half(draw, rng, height, width)


def every_second_line(rng, height, width) -> np.ndarray:
    """RePaint "alternating lines": every odd row is a hole."""
    mask = np.zeros((height, width), bool)
    mask[1::2] = True
    return mask


def super_resolution(rng, height, width) -> np.ndarray:
    """RePaint "super-resolve 2x": only pixels at even (row, column) are known."""
    mask = np.ones((height, width), bool)
    mask[::2, ::2] = False
    return mask


def expand(rng, height, width) -> np.ndarray:
    """RePaint "expand" (outpainting): a border of a quarter of each side is the hole."""
    mask = np.ones((height, width), bool)
    mask[height // 4:height - height // 4, width // 4:width - width // 4] = False
    return mask


def half(rng, height, width) -> np.ndarray:
    """RePaint "half": one half of the image (left, right, top or bottom) is the hole."""
    mask = np.zeros((height, width), bool)
    side = int(rng.integers(4))
    if side == 0:
        mask[:, :width // 2] = True
    elif side == 1:
        mask[:, width - width // 2:] = True
    elif side == 2:
        mask[:height // 2] = True
    else:
        mask[height - height // 2:] = True
    return mask


def no_hole(rng, height, width) -> np.ndarray:
    """Nothing missing (pure reconstruction)."""
    return np.zeros((height, width), bool)


def full_hole(rng, height, width) -> np.ndarray:
    """Everything missing (text-to-image generation)."""
    return np.ones((height, width), bool)


FAMILIES: dict[str, MaskFn] = {
    "stage1": stage1,
    "stage1_boxes": stage1_boxes,
    "stage2": stage2_boxes,
    "brush": brush,
    "thin": thin,
    "thick": thick,
    "every_second_line": every_second_line,
    "super_resolution": super_resolution,
    "expand": expand,
    "half": half,
    "none": no_hole,
    "full": full_hole,
}


def sample(family, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, bool]:
    """Draw (mask, decoder_none) from a family name or a `MaskFn` callable.

    Only "stage1" (the official stage-1 mixture) sets decoder_none.
    """
    if family == "stage1":
        return stage1_mixture(rng, height, width)
    if callable(family):
        return family(rng, height, width), False
    if family not in FAMILIES:
        raise DataError(f"unknown mask family {family!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[family](rng, height, width), False


def make_mask(family, seed: int, index: int, height: int, width: int) -> np.ndarray:
    """The mask of `family` for (seed, index): same inputs, same mask."""
    return sample(family, np.random.default_rng((seed, index)), height, width)[0]


def token_mask(mask: np.ndarray, patch: int = 8) -> np.ndarray:
    """Max-pool a [..., H, W] pixel mask with kernel = stride = `patch`: a token is
    defective if any of its pixels is."""
    *lead, h, w = mask.shape
    if h % patch or w % patch:
        raise DataError(f"mask size {h}x{w} is not a multiple of the VAE patch size {patch}")
    runs = np.ascontiguousarray(mask, dtype=bool).reshape(*lead, h, w // patch, patch)
    if patch % 8 == 0:
        # Eight bools read as one uint64 word: ~15x faster than any() over a short axis.
        runs = runs.view(np.uint64)
    per_row = runs.any(axis=-1)
    return per_row.reshape(*lead, h // patch, patch, w // patch).any(axis=-2)


class FileMasks:
    """A mask family drawn from a folder of mask images (e.g. the irregular-mask benchmark).

    Each call picks one file with `rng` and resizes it (nearest) to the
    requested size. `invert=True` is for sets where black marks the hole.
    """

    def __init__(self, directory, invert: bool = False):
        if not os.path.isdir(directory):
            raise DataError(f"{directory}: mask directory does not exist")
        self.files = sorted(
            os.path.join(directory, f) for f in os.listdir(directory)
            if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp")))
        if not self.files:
            raise DataError(f"{directory}: no mask images (.png/.jpg/.bmp) found")
        self.invert = invert

    def __call__(self, rng, height, width) -> np.ndarray:
        mask = read_mask(self.files[int(rng.integers(len(self.files)))])
        if mask.shape != (height, width):
            mask = mask_nearest(mask, (height, width))
        return ~mask if self.invert else mask
