"""The official training augmentations, in numpy/PIL, driven by a numpy Generator.

torchvision's RandomResizedCrop(size, scale, ratio=(1, 1)), RandomHorizontalFlip
and ColorJitter(brightness, contrast, saturation, hue=0) on PIL images, re-done
so that every random draw comes from the example's own generator.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageEnhance

from lip_jax.images.resize import mask_nearest, train_to_model


@dataclasses.dataclass(frozen=True)
class Augment:
    """Strengths of the training augmentations."""

    flip_p: float
    brightness: float
    contrast: float = 0.25
    saturation: float = 0.25
    scale: tuple[float, float] = (0.65, 1.0)


# config/dfvq4imagenet/base.py, Args.transform.
STAGE1_AUGMENT = Augment(flip_p=0.2, brightness=0.05)
# config/mps4cc/base.py and config/mps4coco/base.py, Args.transform (these
# override the defaults written in the datasets' own __init__.py).
STAGE2_AUGMENT = Augment(flip_p=0.1, brightness=0.1)


def crop_box(rng, height: int, width: int, scale) -> tuple[int, int, int]:
    """(top, left, side) of a square crop covering a `scale` fraction of the area.

    Ten tries as in torchvision; when none fits, the centred square of the
    short side.
    """
    for _ in range(10):
        side = int(round(math.sqrt(height * width * rng.uniform(*scale))))
        if 0 < side <= min(height, width):
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            return top, left, side
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def _jitter(im: Image.Image, rng, aug: Augment) -> Image.Image:
    factors = {
        "brightness": rng.uniform(1 - aug.brightness, 1 + aug.brightness),
        "contrast": rng.uniform(1 - aug.contrast, 1 + aug.contrast),
        "saturation": rng.uniform(1 - aug.saturation, 1 + aug.saturation),
    }
    enhancers = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
                 "saturation": ImageEnhance.Color}
    # ColorJitter applies its adjustments in a random order.
    for name in rng.permutation(list(factors)):
        im = enhancers[name](im).enhance(factors[name])
    return im


def _crop_resize(array: np.ndarray, box, size: int, resize) -> np.ndarray:
    top, left, side = box
    cut = array[top:top + side, left:left + side]
    return resize(cut, size) if side != size else cut.copy()


def augment(image: np.ndarray, mask: np.ndarray | None, rng, size: int, aug: Augment):
    """Random square crop resized to `size`, flip, colour jitter.

    The same crop and flip go to `mask` (nearest neighbour) when given.
    Returns (image uint8 [size, size, 3], mask bool [size, size] or None).
    """
    box = crop_box(rng, image.shape[0], image.shape[1], aug.scale)
    out = _crop_resize(image, box, size, train_to_model)
    if mask is not None:
        mask = _crop_resize(np.asarray(mask, bool), box, size, mask_nearest)
    if rng.random() < aug.flip_p:
        out = out[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
    out = np.asarray(_jitter(Image.fromarray(np.ascontiguousarray(out)), rng, aug))
    return out, None if mask is None else np.ascontiguousarray(mask)


def center_resize(image: np.ndarray, size: int, resize=train_to_model) -> np.ndarray:
    """Centred square crop of the short side, resized to `size` (evaluation); a bool mask takes
    `resize=mask_nearest` (lip_jax.images.resize)."""
    side = min(image.shape[:2])
    box = ((image.shape[0] - side) // 2, (image.shape[1] - side) // 2, side)
    return _crop_resize(image, box, size, resize)
