"""DF-VQGAN weights: official state dict (`torch.load(p)["model"]`, DFVQGAN key names) <-> Flax."""

from __future__ import annotations

import re
from typing import Mapping

import flax.linen as nn

from lip_jax.weights import torch_io
from lip_jax.models.dfvqgan import param_template

# The generic rule writes `name_N` as `name.N` (ModuleList indices); `mid.block_1` is an attribute.
KEY_RULES = [(r"\.mid\.(block|attn)\.(\d+)\.", r".mid.\1_\2.")]
_MASK_NORM = re.compile(r"^encoder\..*\.norm\.(weight|bias)$")


def _mask_group_norm_shape(key: str, flax_shape: tuple[int, ...]):
    # Official MaskGroupNorm stores its affine parameters as (1, C, 1).
    return (1, flax_shape[0], 1) if _MASK_NORM.match(key) else None


SHAPE_RULES = [_mask_group_norm_shape]




# The stage-1 training `Net` also holds these; the released checkpoint comes from it, which is why
# the official inference class loads with strict=False. They are not part of the VQGAN.
TRAINING_ONLY_PREFIXES = ("discriminator.", "perceptual_loss.")


def split_training_keys(state: Mapping) -> tuple[dict, dict]:
    """(VQGAN keys, training-only keys) of a stage-1 state dict."""
    vq = {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    return vq, {k: v for k, v in state.items() if k.startswith(TRAINING_ONLY_PREFIXES)}


def dfvqgan_from_torch(state: Mapping, cfg, what: str = "DF-VQGAN") -> dict:
    """Official DFVQGAN (or stage-1 training Net) state dict -> Flax params.

    Strict on every VQGAN key and shape; the training-only `discriminator.*` and
    `perceptual_loss.*` entries are left aside (see `split_training_keys`).
    """
    vq, _ = split_training_keys(state)
    return torch_io.torch_to_flax(vq, param_template(cfg), what, SHAPE_RULES, KEY_RULES)


def dfvqgan_to_torch(params: Mapping, cfg=None, what: str = "DF-VQGAN") -> dict:
    """Flax params -> official DFVQGAN state dict (numpy arrays), loadable with strict=True."""
    if cfg is not None:  # refuse params that do not belong to this config
        expected = torch_io.expected_torch_shapes(param_template(cfg), SHAPE_RULES, KEY_RULES)
        got = torch_io.expected_torch_shapes(nn.unbox(params), SHAPE_RULES, KEY_RULES)
        torch_io.check_keys({k: s for k, (_, s) in expected.items()}, {k: s for k, (_, s) in got.items()}, what)
    return torch_io.flax_to_torch(nn.unbox(params), what, SHAPE_RULES, KEY_RULES)


# A converted stage-1 training checkpoint: the DF-VQGAN params as above, plus this top-level entry
# {"params", "batch_stats"} (lip_jax.weights.discriminator). Readers of DF-VQGAN weights take both.
DISCRIMINATOR = "discriminator"


def training_from_torch(state: Mapping, cfg, what: str = "DF-VQGAN") -> tuple[dict, int]:
    """Official DFVQGAN or stage-1 training `Net` state dict -> the orbax tree `lip-jax convert`
    writes: DF-VQGAN params, plus DISCRIMINATOR when the state has `discriminator.*` keys.
    Returns (tree, number of `perceptual_loss.*` keys left out: the frozen LPIPS, converted on its
    own with --kind lpips)."""
    from lip_jax.weights import discriminator as conv_disc

    rest, disc, lpips = conv_disc.split(state)
    tree = torch_io.torch_to_flax(rest, param_template(cfg), what, SHAPE_RULES, KEY_RULES)
    if disc:
        tree[DISCRIMINATOR] = conv_disc.discriminator_from_torch(disc, what=f"{what} discriminator")
    return tree, len(lpips)


def training_to_torch(params: Mapping, disc: Mapping | None, what: str = "DF-VQGAN") -> dict:
    """Inverse of `training_from_torch` (without LPIPS): `discriminator.*` keys when `disc` is given."""
    from lip_jax.weights import discriminator as conv_disc

    state = dfvqgan_to_torch(params, None, what)
    if disc is not None:
        state.update({conv_disc.PREFIX + k: v for k, v in conv_disc.discriminator_to_torch(disc, what).items()})
    return state
