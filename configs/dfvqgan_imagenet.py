"""DF-VQGAN on ImageNet, the official `dfvq4imagenet` recipe (8192 codes, 256 px, 32x32 tokens).

Use `configs/dfvqgan_imagenet.py` for the official model, `configs/dfvqgan_imagenet.py:tiny` or
`:reduced` for the small presets the tests use (same code paths).
"""

import ml_collections

from lip_jax.models.dfvqgan import PRESETS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = {None: "imagenet8192", "": "imagenet8192", "official": "imagenet8192"}.get(arg, arg)
    if preset not in PRESETS:
        raise ValueError(f"unknown DF-VQGAN preset {arg!r}; choose from {sorted(PRESETS)} or 'official'")
    config = ml_collections.ConfigDict()
    config.vqgan = ml_collections.ConfigDict(PRESETS[preset])
    return config
