"""Every resize the project does, one function per purpose. The filters differ on purpose:

  photo_to_model   a square cut of a photo down to the model's resolution (`lip-jax inpaint` and
                   `reconstruct`, the Python pipeline): LANCZOS, the sharpest filter for shrinking.
  model_to_photo   the model's output back up to the photo's window: BICUBIC (LANCZOS rings when
                   enlarging).
  eval_to_model    an evaluation image (ground truth or masked) to the model's resolution: BICUBIC,
                   as the official evaluation resizes.
  train_to_model   a training crop to the model's resolution: BILINEAR, as the official training
                   transforms (torchvision's Resize default).
  display_nearest  a small image enlarged for viewing (the demo's grid): NEAREST, pixels stay sharp.
  mask_any         a hole mask shrunk for the model: a pixel is hole if ANY pixel under it is, so
                   the model fills at least everything that is pasted back.
  mask_nearest     a mask file or training mask to another size: NEAREST, as the official data code.

Sizes: an int is a square; a pair is (height, width). Images are uint8 [H, W, 3], masks bool [H, W].
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _hw(size) -> tuple[int, int]:
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def _pil(image: np.ndarray, size, resample) -> np.ndarray:
    h, w = _hw(size)
    return np.asarray(Image.fromarray(np.asarray(image)).resize((w, h), resample))


def photo_to_model(image: np.ndarray, size) -> np.ndarray:
    return _pil(image, size, Image.LANCZOS)


def model_to_photo(image: np.ndarray, size) -> np.ndarray:
    return _pil(image, size, Image.BICUBIC)


def eval_to_model(image: np.ndarray, size) -> np.ndarray:
    return _pil(image, size, Image.BICUBIC)


def train_to_model(image: np.ndarray, size) -> np.ndarray:
    return _pil(image, size, Image.BILINEAR)


def display_nearest(image: np.ndarray, size) -> np.ndarray:
    return _pil(image, size, Image.NEAREST)


def mask_nearest(mask: np.ndarray, size) -> np.ndarray:
    # through uint8 0/255: PIL has no bool image that resizes
    return _pil(np.asarray(mask).astype(np.uint8) * 255, size, Image.NEAREST) > 0


def mask_any(mask: np.ndarray, size: int) -> np.ndarray:
    """A square bool mask to size x size, True where ANY source pixel under the target pixel is
    True. Target i covers source [floor(i*s/n), ceil((i+1)*s/n)): overlapping spans, so no hole
    pixel is lost at any ratio. Separable: any over a box = any of per-row anys."""
    s = mask.shape[0]
    i = np.arange(size)
    lo, hi = (i * s) // size, -((-(i + 1) * s) // size)

    def pool(m: np.ndarray) -> np.ndarray:   # along axis 0 with prefix sums
        cs = np.concatenate([np.zeros((1,) + m.shape[1:], np.int64), np.cumsum(m, 0)])
        return (cs[hi] - cs[lo]) > 0

    return pool(pool(mask).T).T
