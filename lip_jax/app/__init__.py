"""The application layer: pipeline, image/mask/checkpoint I/O, commands."""
