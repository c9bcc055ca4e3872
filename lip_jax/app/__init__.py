"""The application layer, the library behind the commands (lip_jax.commands): pipeline and inference
programs, the photo window, output checks, checkpoint loaders, and the work of eval and the demo."""
