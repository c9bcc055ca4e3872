"""The two ways a weights file can be wrong, both a one-line `lip-jax: error:` (exit 2)."""


class CheckpointError(ValueError):
    """A checkpoint directory is missing, unreadable or does not fit the model."""


class ConversionError(ValueError):
    """A PyTorch file cannot be read, or its keys and shapes do not fit the model."""
