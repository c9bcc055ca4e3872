"""Inpaint real photos at their own size: plan a square window around the hole, crop it to the
model's `size`, and paste the model's output back into the untouched photo.

Pure numpy/PIL (no JAX). Conventions: images uint8 [H, W, 3], masks bool [H, W], True = hole.

Window rule (plan_window):
  * side = max(size, min(ceil(context * L), max(L, min(H, W)))), L = the hole bbox's long
    side: at least `size`, so a small hole is inpainted at native resolution (never upscaled);
    growing with the hole so the model sees `context` x its extent; but no larger than the
    photo's short side unless the hole itself is (then exactly L), so the window stays inside
    the photo whenever it can: padding adds no information, only costs model resolution.
    Always >= L, so the bbox fits.
  * Per axis: centred on the hole bbox and shifted to lie inside the photo when side <= that
    extent; otherwise the window covers the whole axis and the photo is centred in it.
  * The part of a window outside the photo is edge-replicated context (never hole) and is
    never pasted back.
Resampling (lip_jax.images.resize): crop only ever shrinks (side >= size), photo_to_model;
paste only ever enlarges, model_to_photo. The crop mask is mask_any (box/max pooled): a model
pixel is hole if ANY photo pixel under it is, so the model fills at least everything that is
pasted back. `lip-jax reconstruct` cuts its input with `to_model` too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lip_jax.images.resize import mask_any, model_to_photo, photo_to_model


@dataclass(frozen=True)
class Window:
    """A square window in photo coordinates; top/left may be negative, bottom/right may pass
    the photo's edge (that part is padding)."""
    top: int
    left: int
    side: int

    @property
    def bottom(self) -> int:
        return self.top + self.side

    @property
    def right(self) -> int:
        return self.left + self.side


def _place(lo: int, hi: int, side: int, extent: int) -> int:
    """Start of a `side`-long span containing [lo, hi) on an axis of length `extent`."""
    if side <= extent:
        return min(max((lo + hi - side) // 2, 0), extent - side)
    return (extent - side) // 2   # photo centred in a window larger than it: pad both ends


def plan_window(mask: np.ndarray, size: int, context: float = 1.5) -> Window:
    """Square window around the hole's bounding box (see the module docstring for the rule)."""
    if context < 1:
        raise ValueError(f"context {context} < 1: the window would not contain the hole")
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:   # no hole: nothing to inpaint; a `size` window in the photo's centre
        r0, r1, c0, c1 = h // 2, h // 2, w // 2, w // 2
    else:
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    extent = max(r1 - r0, c1 - c0)
    side = max(size, min(math.ceil(context * extent), max(extent, min(h, w))))
    return Window(int(_place(r0, r1, side, h)), int(_place(c0, c1, side, w)), int(side))


def _inside(window: Window, h: int, w: int):
    """(photo slices, window slices) of the part of the window that lies inside the photo."""
    t, l = max(window.top, 0), max(window.left, 0)
    b, r = min(window.bottom, h), min(window.right, w)
    photo = (slice(t, b), slice(l, r))
    win = (slice(t - window.top, b - window.top), slice(l - window.left, r - window.left))
    return photo, win


def _cut(array: np.ndarray, window: Window, mode: str, **kw) -> np.ndarray:
    """The window's pixels, padding where it passes the photo's edge."""
    h, w = array.shape[:2]
    (ps, qs), _ = _inside(window, h, w)
    pad = [(ps.start - window.top, window.bottom - ps.stop),
           (qs.start - window.left, window.right - qs.stop)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array[ps, qs], pad, mode=mode, **kw)


def crop(image: np.ndarray, mask: np.ndarray, window: Window, size: int):
    """The window cut from the photo and resized to size x size: (uint8 [size, size, 3],
    bool [size, size]). Outside the photo: edge-replicated pixels, not hole."""
    image, mask = np.asarray(image, np.uint8), np.asarray(mask, bool)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in size")
    if window.side < size:
        raise ValueError(f"window side {window.side} < model size {size}: would upscale")
    pixels = _cut(image, window, "edge")
    holes = _cut(mask, window, "constant", constant_values=False)
    if window.side == size:
        return pixels, holes
    return photo_to_model(pixels, size), mask_any(holes, size)


def paste(photo: np.ndarray, result: np.ndarray, window: Window, mask: np.ndarray,
          composite: bool = True) -> np.ndarray:
    """The photo with the model's output (resized back to the window) written in: only the
    hole pixels if `composite`, else the whole part of the window inside the photo. Pixels
    outside that stay bit-identical; the photo itself is not modified."""
    photo, result = np.asarray(photo, np.uint8), np.asarray(result, np.uint8)
    if result.shape[0] != window.side:
        result = model_to_photo(result, window.side)
    out = photo.copy()
    ps, ws = _inside(window, *photo.shape[:2])
    if composite:
        hole = np.asarray(mask, bool)[ps][..., None]
        out[ps] = np.where(hole, result[ws], photo[ps])
    else:
        out[ps] = result[ws]
    return out


def to_model(image: np.ndarray, mask: np.ndarray, size: int, context: float = 1.5):
    """plan_window + crop: (uint8 [size, size, 3], bool [size, size], Window)."""
    window = plan_window(mask, size, context)
    pixels, holes = crop(image, mask, window, size)
    # The bbox is inside the window and pooling keeps every hole pixel: a lost hole is a bug.
    assert holes.any() or not np.any(mask), "the crop mask lost the photo's hole"
    return pixels, holes, window
