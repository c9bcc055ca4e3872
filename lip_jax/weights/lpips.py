"""LPIPS-VGG weights: torchvision VGG16 + LPIPS linear heads (PyTorch) <-> Flax params.

Canonical torch key set (what `lpips_to_torch` writes):
  features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}   torchvision vgg16 `features`
  lin{0..4}.model.1.weight                                       heads, shape (1, C, 1, 1)

`lpips_from_torch` also accepts, in one merged state dict:
- a full torchvision VGG16 checkpoint: `classifier.*` is ignored (LPIPS does not use it);
- an LPIPS model state dict (lpips package or taming): `net.sliceK.N.*` -> `features.N.*`;
  `scaling_layer.shift/scale`, if present, must equal the fixed constants and are dropped;
- heads saved without dropout (`linK.model.0.weight`).
The lpips package's `weights/v0.1/vgg.pth` and taming's `vgg.pth` are the same file (md5
d507d7349b931f0638a25a48a722f98a): heads only; the VGG16 weights come from torchvision's
`vgg16-397923af.pth`. `load_lpips_checkpoints(vgg_path, heads_path)` reads and merges both.
"""

from __future__ import annotations

import re
from typing import Mapping

import flax.linen as nn
import numpy as np

from lip_jax.weights import torch_io
from lip_jax.models import lpips as L
from lip_jax.models.lpips import param_template

KEY_RULES: list = []  # Flax names are the torch names: features_N -> features.N, linK/model_1 -> linK.model.1
SHAPE_RULES: list = []

_SLICE_KEY = re.compile(r"^net\.slice[1-5]\.(\d+)\.(weight|bias)$")
_HEAD_NO_DROPOUT = re.compile(r"^(lin[0-4])\.model\.0\.weight$")
_IGNORED = re.compile(r"^classifier\.\d+\.(weight|bias)$")
_SCALING = {"scaling_layer.shift": L.SHIFT, "scaling_layer.scale": L.SCALE}




def canonical_state(state: Mapping, what: str = "LPIPS") -> dict:
    """Rename accepted key spellings to the canonical set; values are passed through untouched."""
    out: dict = {}
    for key, value in state.items():
        if _IGNORED.match(key):
            continue
        if key in _SCALING:
            got = torch_io.as_numpy(value).reshape(-1).astype(np.float64)
            if got.shape != (3,) or not np.allclose(got, _SCALING[key], rtol=0, atol=1e-6):
                raise torch_io.ConversionError(f"{what}: {key} is {got.tolist()}, expected {list(_SCALING[key])}")
            continue
        m = _SLICE_KEY.match(key)
        new = f"features.{m.group(1)}.{m.group(2)}" if m else key
        m = _HEAD_NO_DROPOUT.match(new)
        new = f"{m.group(1)}.model.1.weight" if m else new
        if new in out:
            raise torch_io.ConversionError(f"{what}: {key} and another key both give {new}")
        out[new] = value
    return out


def lpips_from_torch(state: Mapping, what: str = "LPIPS") -> dict:
    """Torch state dict (VGG16 features + heads, any accepted spelling) -> Flax params, strictly."""
    return torch_io.torch_to_flax(canonical_state(state, what), param_template(), what, SHAPE_RULES, KEY_RULES)


def lpips_to_torch(params: Mapping, what: str = "LPIPS") -> dict:
    """Flax params -> canonical torch state dict (numpy): torchvision `features.N.*` + `linK.model.1.weight`.

    Split it with `split_torch_state` to write the two files of the original release.
    """
    expected = torch_io.expected_torch_shapes(param_template(), SHAPE_RULES, KEY_RULES)
    got = torch_io.expected_torch_shapes(nn.unbox(params), SHAPE_RULES, KEY_RULES)
    torch_io.check_keys({k: s for k, (_, s) in expected.items()}, {k: s for k, (_, s) in got.items()}, what)
    return torch_io.flax_to_torch(nn.unbox(params), what, SHAPE_RULES, KEY_RULES)


def split_torch_state(state: Mapping) -> tuple[dict, dict]:
    """Canonical state -> (torchvision VGG16 `features.*` subset, heads `lin*` = the vgg.pth layout)."""
    vgg = {k: v for k, v in state.items() if k.startswith("features.")}
    heads = {k: v for k, v in state.items() if k.startswith("lin")}
    return vgg, heads


def load_lpips_checkpoints(vgg_path: str, heads_path: str | None = None, what: str = "LPIPS") -> dict:
    """Memory-mapped merge of a torchvision VGG16 .pth and an LPIPS heads .pth (or one LPIPS .pth)."""
    state = dict(torch_io.load_torch_checkpoint(vgg_path))
    if heads_path is not None:
        heads = torch_io.load_torch_checkpoint(heads_path)
        clash = sorted(set(state) & set(heads))
        if clash:
            raise torch_io.ConversionError(f"{what}: {vgg_path} and {heads_path} both hold {', '.join(clash[:8])}")
        state.update(heads)
    return state


def load_lpips_params(vgg_path: str, heads_path: str | None = None) -> dict:
    """Local torchvision `vgg16-397923af.pth` + lpips/taming `vgg.pth` -> Flax LPIPS params."""
    return lpips_from_torch(load_lpips_checkpoints(vgg_path, heads_path))
