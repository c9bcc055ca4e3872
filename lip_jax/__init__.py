"""lip-jax: NUWA-LIP (language-guided inpainting with a defect-free VQGAN) in JAX/Flax."""

__version__ = "0.1.0"
