"""Strict, streaming conversion between PyTorch state dicts and Flax parameter trees.

Flax modules are named after their PyTorch counterparts, so a torch key is the Flax path with
`name_N` written `name.N` and the leaf renamed (kernel/scale/embedding -> weight). Tensor layouts
differ only by a transpose that depends on the leaf kind (a linear kernel or bias may also split its
output axis in Flax, e.g. [in, 2, hidden] for a fused GEGLU projection); anything else is a
model-specific rule.
"""

from __future__ import annotations

import re
import warnings
from typing import Callable, Iterable, Mapping

import numpy as np
from flax import traverse_util

from lip_jax.paths import PathLike, is_url, path as as_path
from lip_jax.weights.errors import ConversionError


_INDEXED = re.compile(r"^(.*)_(\d+)$")
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def torch_key(path: tuple[str, ...]) -> str:
    """('encoder', 'down_0', 'block_1', 'conv1', 'kernel') -> 'encoder.down.0.block.1.conv1.weight'."""
    parts = []
    for name in path[:-1]:
        m = _INDEXED.match(name)
        parts.extend([m.group(1), m.group(2)] if m else [name])
    parts.append(_LEAF_TO_TORCH.get(path[-1], path[-1]))
    return ".".join(parts)


def to_flax_layout(leaf: str, value: np.ndarray, flax_shape: tuple[int, ...]) -> np.ndarray:
    """PyTorch tensor -> Flax array for a leaf of the given kind and Flax shape."""
    if leaf == "kernel" and value.ndim == 4:  # conv OIHW -> HWIO
        value = value.transpose(2, 3, 1, 0)
    elif leaf == "kernel" and value.ndim == 2:  # linear (out, in) -> (in, out[, ...])
        value = value.T
    if value.size != int(np.prod(flax_shape)):
        raise ConversionError(f"size mismatch: {value.shape} vs Flax {flax_shape}")
    return np.ascontiguousarray(value).reshape(flax_shape)  # ascontiguousarray makes 0-d arrays 1-d


def to_torch_layout(leaf: str, value: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `to_flax_layout`."""
    value = np.asarray(value)
    if leaf == "kernel" and value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)
    elif leaf == "kernel" and value.ndim in (2, 3):
        value = value.reshape(value.shape[0], -1).T
    return np.ascontiguousarray(value).reshape(torch_shape)


def default_torch_shape(leaf: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if leaf == "kernel" and len(flax_shape) == 4:
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if leaf == "kernel" and len(flax_shape) in (2, 3):  # (in, out[, ...]) -> (out, in)
        return (int(np.prod(flax_shape[1:])), flax_shape[0])
    if leaf == "bias" and len(flax_shape) == 2:
        return (int(np.prod(flax_shape)),)
    return tuple(flax_shape)


TorchShapeRule = Callable[[str, tuple[int, ...]], "tuple[int, ...] | None"]
KeyRule = tuple[str, str]  # (regex, replacement) applied to the derived torch key


def expected_torch_shapes(template: Mapping, shape_rules: Iterable[TorchShapeRule] = (),
                          key_rules: Iterable[KeyRule] = ()) -> dict:
    """torch key -> (flax path, torch shape) for every leaf of a Flax parameter template."""
    rules, renames = list(shape_rules), list(key_rules)
    out = {}
    for path, leaf in traverse_util.flatten_dict(_unfreeze(template)).items():
        key = torch_key(path)
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        shape = tuple(leaf.shape)
        torch_shape = next((s for r in rules if (s := r(key, shape)) is not None), None)
        out[key] = (path, torch_shape or default_torch_shape(path[-1], shape))
    return out


def check_keys(expected: Mapping[str, tuple], got: Mapping[str, tuple], what: str) -> None:
    """Raise ConversionError listing missing, unexpected and mis-shaped keys (never a partial load)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != tuple(got[k]))
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{what}: checkpoint does not match the model"]
    if missing:
        lines.append(f"missing {len(missing)} keys: {_abbrev(missing)}")
    if unexpected:
        lines.append(f"unexpected {len(unexpected)} keys: {_abbrev(unexpected)}")
    if misshaped:
        lines.append("mis-shaped: " + _abbrev([f"{k} {tuple(got[k])} != {tuple(expected[k])}" for k in misshaped]))
    raise ConversionError("; ".join(lines))


def torch_to_flax(state: Mapping[str, np.ndarray], template: Mapping, what: str,
                  shape_rules: Iterable[TorchShapeRule] = (), key_rules: Iterable[KeyRule] = ()) -> dict:
    """Convert a (sub) state dict into a Flax tree shaped like `template`, strictly.

    `state` values may be torch tensors or numpy arrays; they are converted one by one so a
    memory-mapped checkpoint is never materialised twice.
    """
    expected = expected_torch_shapes(template, shape_rules, key_rules)
    check_keys({k: s for k, (_, s) in expected.items()}, {k: tuple(v.shape) for k, v in state.items()}, what)
    flat_template = traverse_util.flatten_dict(_unfreeze(template))
    flat = {}
    for key, (path, _) in expected.items():
        flat[path] = to_flax_layout(path[-1], as_numpy(state[key]), tuple(flat_template[path].shape))
    return traverse_util.unflatten_dict(flat)


def flax_to_torch(params: Mapping, what: str, shape_rules: Iterable[TorchShapeRule] = (),
                  key_rules: Iterable[KeyRule] = ()) -> dict:
    """Flax tree -> {torch key: numpy array} in the PyTorch layout."""
    expected = expected_torch_shapes(params, shape_rules, key_rules)
    flat = traverse_util.flatten_dict(_unfreeze(params))
    return {key: to_torch_layout(path[-1], np.asarray(flat[path]), shape)
            for key, (path, shape) in expected.items()}


def as_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.cpu().numpy()
    return np.asarray(value)


def load_torch_checkpoint(path: PathLike) -> dict:
    """Read a .pth state dict (optionally wrapped as {"model": ...}) memory-mapped, tensors as-is.
    A TorchScript archive (OpenAI's CLIP) is read through the allow-list reader: every PyTorch file
    this project reads goes through here, as data. A URL (`gs://...`) is read through a seekable
    epath file (torch cannot memory-map it)."""
    from lip_jax.weights import torchscript

    if torchscript.is_torchscript(path):
        return torchscript.read_state_dict(path)
    import torch  # converter extra, not a runtime dependency of the JAX path

    try:
        with warnings.catch_warnings():  # torch's warnings about the file's format: the error says it
            warnings.simplefilter("ignore")
            try:
                if is_url(path):
                    with as_path(path).open("rb") as f:
                        obj = torch.load(f, map_location="cpu", weights_only=True)
                else:
                    obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as e:  # files from before torch's zip format cannot be memory-mapped
                if "mmap can only be used" not in str(e):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip archive unreadable, pickle of foreign objects, truncated file
        text = " ".join(str(e).split())
        unsafe = re.search(r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+|Unsupported class [\w.]+)", text)
        if "Weights only load failed" in text:  # never repeat torch's advice to load it unsafely
            raise ConversionError(f"{path}: refused: the file holds objects other than tensors"
                                  + (f" ({unsafe.group(1)})" if unsafe else "") + "; it is not loaded, as "
                                  "unpickling it could run code") from None
        raise ConversionError(f"{path}: cannot read as a PyTorch checkpoint ({type(e).__name__}: {text[:300]})") from e
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state dict or {{'model': state_dict}}, got {type(obj).__name__}")
    return dict(obj)


def save_torch_checkpoint(state: Mapping[str, np.ndarray], path: PathLike, wrap_model: bool = True) -> None:
    """Write {"model": state_dict} (the official release format) with torch tensors; a URL through
    an epath file."""
    import torch

    sd = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    obj = {"model": sd} if wrap_model else sd
    if is_url(path):
        with as_path(path).open("wb") as f:
            torch.save(obj, f)
    else:
        torch.save(obj, path)


def subtree(state: Mapping[str, object], prefix: str) -> dict:
    """Keys under `prefix.` with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def _unfreeze(tree):
    return tree.unfreeze() if hasattr(tree, "unfreeze") else dict(tree)


def _abbrev(items: list[str], n: int = 8) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n} more)" if len(items) > n else "")
