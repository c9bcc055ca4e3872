"""FID Inception weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` <-> Flax variables.

Torch keys are torchvision Inception3's (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch5x5_1.bn.
running_mean`, `fc.weight` ...). Flax paths are the same names, so the table is short:
- `branchX_N` Flax modules print as `branchX.N` under the generic rule: one regex puts `_N` back;
- the batch-norm `scale`/`bias` live in `params`, `running_mean`/`running_var` in `batch_stats`.

Also accepted on input: the state dict of pytorch-fid's `InceptionV3` wrapper (`blocks.I.J.*`),
checkpoints with or without `num_batches_tracked` (ignored: eval-mode BN never reads it), and
with or without `fc.*` (kept, as `FIDInceptionV3(num_classes=...)`; FID does not use it).
Anything else (torchvision's own `AuxLogits`, other networks) is refused with the keys named.
"""

from __future__ import annotations

import re
from typing import Mapping

import flax.linen as nn
import numpy as np

from lip_jax.weights import torch_io
from lip_jax.models.inception import variables_template

KEY_RULES = [(r"\.(branch[^.]*)\.(\d+)\.", r".\1_\2.")]
SHAPE_RULES: list = []

# pytorch-fid InceptionV3.blocks[i][j] -> torchvision Inception3 attribute (pools have no params).
WRAPPER_BLOCKS = {
    (0, 0): "Conv2d_1a_3x3", (0, 1): "Conv2d_2a_3x3", (0, 2): "Conv2d_2b_3x3",
    (1, 0): "Conv2d_3b_1x1", (1, 1): "Conv2d_4a_3x3",
    **{(2, j): f"Mixed_{n}" for j, n in enumerate(("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"))},
    **{(3, j): f"Mixed_{n}" for j, n in enumerate(("7a", "7b", "7c"))},
}
_WRAPPER_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.*)$")
_COUNTER = re.compile(r"\.num_batches_tracked$")




def canonical_state(state: Mapping, what: str = "FID Inception") -> dict:
    """torchvision key names, no `num_batches_tracked`; values passed through untouched."""
    out: dict = {}
    for key, value in state.items():
        if _COUNTER.search(key):
            continue
        new = key
        m = _WRAPPER_KEY.match(key)
        if m and (int(m.group(1)), int(m.group(2))) in WRAPPER_BLOCKS:
            new = f"{WRAPPER_BLOCKS[int(m.group(1)), int(m.group(2))]}.{m.group(3)}"
        if new in out:
            raise torch_io.ConversionError(f"{what}: {key} and another key both give {new}")
        out[new] = value
    return out


def _expected(template: Mapping) -> dict:
    """torch key -> torch shape for params and batch_stats together."""
    shapes = {}
    for col in ("params", "batch_stats"):
        for key, (_, shape) in torch_io.expected_torch_shapes(template[col], SHAPE_RULES, KEY_RULES).items():
            shapes[key] = shape
    return shapes


def inception_from_torch(state: Mapping, what: str = "FID Inception") -> tuple[dict, dict]:
    """Torch state dict -> (params, batch_stats) for `FIDInceptionV3(num_classes=...)`, strictly.

    num_classes is read from `fc.weight` (0 when the checkpoint has no fc layer), see
    `num_classes_of`.
    """
    state = canonical_state(state, what)
    template = variables_template(num_classes_of(state))
    torch_io.check_keys(_expected(template), {k: tuple(v.shape) for k, v in state.items()}, what)
    out = {}
    for col in ("params", "batch_stats"):
        keys = torch_io.expected_torch_shapes(template[col], SHAPE_RULES, KEY_RULES)
        out[col] = torch_io.torch_to_flax({k: state[k] for k in keys}, template[col], what, SHAPE_RULES, KEY_RULES)
    return out["params"], out["batch_stats"]


def num_classes_of(state: Mapping) -> int:
    """Logit count of a (canonical) checkpoint's fc layer; 0 without one."""
    fc = state.get("fc.weight")
    return int(fc.shape[0]) if fc is not None and len(fc.shape) == 2 else 0


def inception_to_torch(params: Mapping, batch_stats: Mapping, num_batches_tracked: bool = True,
                       what: str = "FID Inception") -> dict:
    """(params, batch_stats) -> torchvision Inception3 state dict (numpy), pytorch-fid's layout.

    With `num_batches_tracked`, each BN also gets a zero int64 counter, so a strict
    `load_state_dict` works on any torch version.
    """
    params, batch_stats = nn.unbox(params), nn.unbox(batch_stats)
    fc = params.get("fc", {}).get("kernel") if hasattr(params, "get") else None
    template = variables_template(int(fc.shape[1]) if fc is not None else 0)
    got = {}
    for col, tree in (("params", params), ("batch_stats", batch_stats)):
        for key, (_, shape) in torch_io.expected_torch_shapes(tree, SHAPE_RULES, KEY_RULES).items():
            got[key] = shape
    torch_io.check_keys(_expected(template), got, what)
    out = torch_io.flax_to_torch(params, what, SHAPE_RULES, KEY_RULES)
    out.update(torch_io.flax_to_torch(batch_stats, what, SHAPE_RULES, KEY_RULES))
    if num_batches_tracked:
        for key in [k for k in out if k.endswith(".bn.running_mean")]:
            out[key[: -len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out


def load_inception_variables(path: str) -> dict:
    """Local pytorch-fid weights .pth -> {"params", "batch_stats"} for `FIDInceptionV3`."""
    params, batch_stats = inception_from_torch(torch_io.load_torch_checkpoint(path))
    return {"params": params, "batch_stats": batch_stats}
