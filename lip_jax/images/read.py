"""Image and mask files, read one way everywhere (training data, evaluation folders, `lip-jax
inpaint` / `reconstruct`, the Python pipeline).

Images: any mode PIL decodes, to uint8 RGB; 16-bit images are scaled to 8 bits (clipping them would
turn every photo white), transparency is dropped (the colours are the image). Masks: any colour
channel non-zero = hole; an alpha channel is transparency, never "hole" (an opaque RGBA mask would
otherwise be all hole). PIL's decompression-bomb guard stays on: such a file is a `DataError`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from lip_jax.images.errors import DataError
from lip_jax.paths import is_url, path as as_path

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _open(path, what: str) -> Image.Image:
    try:
        # PIL opens local files itself; an object (gs://...) is read whole through epath first.
        im = Image.open(io.BytesIO(as_path(path).read_bytes()) if is_url(path) else path)
        im.load()
        return im
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: refused, too many pixels ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode {what} ({e})") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT:  # 16-bit grey: 65535 is white
        grey = np.round(np.asarray(im, np.float64) / 257.0).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "F":  # float images: [0, 1] by convention
        grey = np.round(np.asarray(im, np.float64) * 255.0).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert(im.mode[:-1] if im.mode != "PA" else "RGBA").convert("RGB")
    return np.asarray(im.convert("RGB"))


def read_image(path) -> np.ndarray:
    """Image file -> uint8 RGB [H, W, 3]; `DataError` naming the file if it cannot be read."""
    with _open(path, "image") as im:
        return _to_rgb(im)


def read_mask(path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Mask file -> bool [H, W], True = hole (any colour channel non-zero; alpha ignored).

    `size` is the expected (height, width); a different size is an error."""
    with _open(path, "mask image") as im:
        mask = _to_rgb(im).any(axis=-1)
    if size is not None and mask.shape != tuple(size):
        raise DataError(f"{path}: mask is {mask.shape[0]}x{mask.shape[1]}, expected {size[0]}x{size[1]}")
    return mask
