"""Stage-1 discriminator: official `NLayerDiscriminator` state dict (`main.N.*`, BatchNorm2d running
statistics included) <-> Flax {"params", "batch_stats"}.

The official stage-1 training checkpoint (`{"model": Net.state_dict(), "optimizer": [...], "epoch"}`)
holds it under `discriminator.`; its size (ndf, n_layers) is read from the keys, input 3 channels.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from lip_jax.models.discriminator import variables_template
from lip_jax.weights import torch_io

PREFIX = "discriminator."
# Flax names the BatchNorm statistics mean / var; torch running_mean / running_var.
KEY_RULES = [(r"\.mean$", ".running_mean"), (r"\.var$", ".running_var")]


def size_of(state: Mapping) -> tuple[int, int]:
    """(ndf, n_layers) of an official discriminator state dict (without the prefix)."""
    if "main.0.weight" not in state:
        raise torch_io.ConversionError("discriminator: no main.0.weight (the first conv)")
    ndf = int(state["main.0.weight"].shape[0])
    n_layers = sum(1 for k in state if k.endswith(".running_mean"))
    if n_layers < 1:
        raise torch_io.ConversionError("discriminator: no BatchNorm layer (running_mean) found")
    return ndf, n_layers


def size_of_tree(tree: Mapping) -> tuple[int, int]:
    """(ndf, n_layers) of a Flax {"params", "batch_stats"} tree (arrays or shapes)."""
    try:
        return int(tree["params"]["main_0"]["kernel"].shape[-1]), len(tree["batch_stats"])
    except (KeyError, TypeError, AttributeError) as e:
        raise torch_io.ConversionError(f"not a discriminator tree {{params: {{main_0: ...}}, batch_stats}} ({e!r})") from e




def _flat_template(tmpl: Mapping) -> dict:
    # One tree, so the strict key check sees params and statistics together.
    out: dict = {}
    for part in ("params", "batch_stats"):
        for layer, leaves in tmpl[part].items():
            out.setdefault(layer, {}).update(leaves)
    return out


def discriminator_from_torch(state: Mapping, what: str = "discriminator") -> dict:
    """Official NLayerDiscriminator state dict (keys `main.N.*`) -> {"params", "batch_stats"}; strict."""
    tmpl = variables_template(*size_of(state))
    flat = torch_io.torch_to_flax(state, _flat_template(tmpl), what, key_rules=KEY_RULES)
    out: dict = {"params": {}, "batch_stats": {}}
    for part in ("params", "batch_stats"):
        for layer, leaves in tmpl[part].items():
            out[part][layer] = {name: flat[layer][name].astype(leaves[name].dtype) for name in leaves}
    return out


def discriminator_to_torch(tree: Mapping, what: str = "discriminator") -> dict:
    """{"params", "batch_stats"} -> official state dict (numpy; num_batches_tracked int64 as torch)."""
    if set(tree) != {"params", "batch_stats"}:
        raise torch_io.ConversionError(f"{what}: expected {{params, batch_stats}}, got {sorted(tree)}")
    state = torch_io.flax_to_torch(_flat_template(tree), what, key_rules=KEY_RULES)
    return {k: v.astype(np.int64) if k.endswith("num_batches_tracked") else v for k, v in state.items()}


def split(state: Mapping) -> tuple[dict, dict, dict]:
    """A stage-1 training Net state dict -> (autoencoder keys, discriminator keys without the prefix,
    LPIPS `perceptual_loss.*` keys: the frozen network, converted separately with --kind lpips)."""
    disc = torch_io.subtree(state, PREFIX[:-1])
    lpips = {k: v for k, v in state.items() if k.startswith("perceptual_loss.")}
    rest = {k: v for k, v in state.items() if not k.startswith((PREFIX, "perceptual_loss."))}
    return rest, disc, lpips
