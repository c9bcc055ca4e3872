"""Data layer: sources, mask families, augmentations and the per-host loader."""

from lip_jax.data.errors import DataError
from lip_jax.data.augment import STAGE1_AUGMENT, STAGE2_AUGMENT, Augment
from lip_jax.data.masks import FAMILIES as MASK_FAMILIES
from lip_jax.data.masks import FileMasks, make_mask, token_mask
from lip_jax.data.pipeline import Loader, PipelineConfig
from lip_jax.data.shapes import Shapes, dominant
from lip_jax.data.sources import (SOURCES, CocoCaptions, ConceptualCaptions, ImageFolder,
                                  ImageNetList, MaskEvalFolder, Tfds, open_source)

__all__ = [
    "DataError", "Augment", "STAGE1_AUGMENT", "STAGE2_AUGMENT", "MASK_FAMILIES", "FileMasks",
    "make_mask", "token_mask", "Loader", "PipelineConfig",
    "Shapes", "dominant", "SOURCES", "CocoCaptions", "ConceptualCaptions", "ImageFolder",
    "ImageNetList", "MaskEvalFolder", "Tfds", "open_source",
]
