"""Images and masks: read (`read`), the [-1, 1] <-> uint8 pair (`convert`), every resize by its
purpose (`resize`), atomic file and image writers (`write`), the user's mask check (`masks`).

Below the data, sampling and app layers (it imports none of them), so every reader and writer of
an image shares these functions instead of keeping its own copy."""

from lip_jax.images.convert import from_uint8, to_uint8
from lip_jax.images.errors import DataError
from lip_jax.images.masks import check_mask
from lip_jax.images.read import read_image, read_mask
from lip_jax.images.write import encode_image, write_atomic, write_image

__all__ = ["DataError", "read_image", "read_mask", "from_uint8", "to_uint8", "check_mask",
           "encode_image", "write_atomic", "write_image"]
