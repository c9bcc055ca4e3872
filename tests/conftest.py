import os

# Parity tests compare float32 results: keep XLA on full-precision matmuls and one host device
# unless a test asks for more.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
