"""The one check a user's hole mask passes before any weight is read (`lip-jax inpaint`,
`reconstruct`, the Python pipeline): the image's size, and a hole to fill."""

from __future__ import annotations

import numpy as np

from lip_jax.config import UsageError


def check_mask(mask: np.ndarray, shape: tuple[int, int], name, inverted: bool = False) -> np.ndarray:
    """`mask` (bool [H, W], True = hole) fits an image of `shape` (H, W) and has a hole; else one
    UsageError line naming `name` (the mask's file, or "mask"). `inverted`: the user asked for
    --invert-mask, said in the message because an all-black mask is then the cause."""
    mask = np.asarray(mask, bool)
    if mask.shape != tuple(shape):
        raise UsageError(f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                         f"{shape[1]}x{shape[0]}")
    if not mask.any():
        raise UsageError(f"{name}: mask has no hole" + (" (after --invert-mask)" if inverted else " (non-zero pixels)"))
    return mask
