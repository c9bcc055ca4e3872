"""The one exception type for bad input data (a file that cannot be read, a mask that does not fit).

It lives here, at the bottom, so the image readers can raise it without importing the data layer;
`lip_jax.data.DataError` is this class, and the CLI turns it into one line and exit code 2."""


class DataError(ValueError):
    """Bad or missing input data; the message names the file and the problem."""
