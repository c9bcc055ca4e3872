"""uint8 pixels <-> the models' float range [-1, 1]: one pair, so a saved PNG, a PSNR and a
training preview all round the same way.

Both take numpy or jax arrays and return the same kind: numpy stays on the host (no device
transfer for a file that is about to be written), jax works inside `jit` (PSNR, training previews).
"""

from __future__ import annotations

import sys

import numpy as np


def _xp(image):
    # jax is looked up, not imported: an array can only be a jax array if jax is loaded, and the
    # image readers (data-loader workers, the CLI's checks) should not pay for importing it.
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(image, jax.Array):
        return jax.numpy
    return np


def from_uint8(image):
    """uint8 [0, 255] -> float32 [-1, 1]."""
    xp = _xp(image)
    return xp.asarray(image).astype(xp.float32) / 127.5 - 1.0


def to_uint8(image):
    """[-1, 1] -> uint8, rounded half to even and clipped: what a saved PNG holds."""
    xp = _xp(image)
    return xp.clip(xp.round((xp.asarray(image, xp.float32) + 1.0) * 127.5), 0, 255).astype(xp.uint8)
