"""The one exception type the data layer raises for bad input: defined with the image readers
(lip_jax.images, below this layer) so they can raise it too; this is the same class."""

from lip_jax.images.errors import DataError

__all__ = ["DataError"]
