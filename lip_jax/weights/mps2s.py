"""NUWA-LIP MP-S2S weights: official state dict <-> Flax (strict, both directions).

The Flax modules carry the official names, so the generic rule of lip_jax.weights.torch_io derives
every torch key; the table below covers the exceptions:
  * CLIP's `resblocks.N.ln_1` / `ln_2` are attribute names, not list indices;
  * nn.MultiheadAttention stores its fused projection as `in_proj_weight` / `in_proj_bias`;
  * LayerScale's parameter is called `scale` in torch (a Flax `scale` leaf is otherwise LayerNorm's
    `weight`);
  * the axial positional embedding is `weights_0, ...` (axial_positional_embedding < 0.3) or
    `weights.0, ...` (newer ParameterList): both are read, `axial_naming` picks the one written.

The full release checkpoint (`{"model": state_dict}`) adds `vae.model.*` (DF-VQGAN, converted by
lip_jax.weights.dfvqgan) and `clip_sim.*` (the CLIP ViT-B/32 reranker, kept as raw arrays).
"""

from __future__ import annotations

import re
from typing import Mapping

from flax import linen as nn

from lip_jax.weights import torch_io
from lip_jax.models.mps2s import param_template

KEY_RULES = [
    (r"\.ln\.(\d+)\.", r".ln_\1."),
    (r"\.attn\.in_proj\.(weight|bias)$", r".attn.in_proj_\1"),
    (r"\.(attention_scale|attention_scale_cond|ff_scale)\.weight$", r".\1.scale"),
]
_AXIAL_DOT = [(r"\.weights_(\d+)$", r".weights.\1")]
_AXIAL_DOT_KEY = re.compile(r"^image_pos_emb_v(ae|it)\.weights\.\d+$")


def _key_rules(axial_naming: str) -> list:
    if axial_naming not in ("underscore", "dot"):
        raise ValueError(f"axial_naming must be 'underscore' or 'dot', got {axial_naming!r}")
    return KEY_RULES + (_AXIAL_DOT if axial_naming == "dot" else [])




def mps2s_from_torch(state: Mapping, cfg, what: str = "MP-S2S") -> dict:
    """Official `Net` state dict without `vae.model.*` / `clip_sim.*` -> Flax params (strict)."""
    naming = "dot" if any(_AXIAL_DOT_KEY.match(k) for k in state) else "underscore"
    return torch_io.torch_to_flax(state, param_template(cfg), what, (), _key_rules(naming))


def mps2s_to_torch(params: Mapping, cfg=None, axial_naming: str = "underscore",
                   what: str = "MP-S2S") -> dict:
    """Flax params -> official state dict (numpy arrays), keys as `Net.load_state_dict` expects."""
    rules = _key_rules(axial_naming)
    params = nn.meta.unbox(params)
    if cfg is not None:  # refuse params that do not belong to this config
        expected = torch_io.expected_torch_shapes(param_template(cfg), (), rules)
        got = torch_io.expected_torch_shapes(params, (), rules)
        torch_io.check_keys({k: s for k, (_, s) in expected.items()}, {k: s for k, (_, s) in got.items()}, what)
    return torch_io.flax_to_torch(params, what, (), rules)


# --- full NUWA-LIP release checkpoint ---------------------------------------------------------------

def lip_from_torch(state: Mapping, mps_cfg, vqgan_cfg) -> dict:
    """{"model": ...} contents -> {"mps": params, "vqgan": params, "clip_sim": {key: array}}."""
    from lip_jax.weights import dfvqgan  # DF-VQGAN converter, imported only for full checkpoints

    vae = torch_io.subtree(state, "vae.model")
    clip_sim = {k: torch_io.as_numpy(v) for k, v in torch_io.subtree(state, "clip_sim").items()}
    rest = {k: v for k, v in state.items() if not k.startswith(("vae.model.", "clip_sim."))}
    return {"mps": mps2s_from_torch(rest, mps_cfg),
            "vqgan": dfvqgan.dfvqgan_from_torch(vae, vqgan_cfg),
            "clip_sim": clip_sim}


def lip_to_torch(tree: Mapping, mps_cfg, vqgan_cfg, axial_naming: str = "underscore") -> dict:
    """Inverse of `lip_from_torch`: one flat official state dict."""
    from lip_jax.weights import dfvqgan

    out = dict(mps2s_to_torch(tree["mps"], mps_cfg, axial_naming))
    out.update({f"vae.model.{k}": v for k, v in dfvqgan.dfvqgan_to_torch(tree["vqgan"], vqgan_cfg).items()})
    out.update({f"clip_sim.{k}": v for k, v in tree.get("clip_sim", {}).items()})
    return out
