"""Parameter checkpoints on disk (orbax)."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
    """A checkpoint directory is missing, unreadable or does not fit the model."""


def save_params(directory: str, params) -> None:
    """Write a parameter tree as an orbax checkpoint (directory must not exist yet)."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        raise CheckpointError(f"{directory}: already exists, refusing to overwrite")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(directory, nn.unbox(params))


def load_params(directory: str, template=None):
    """Read a parameter tree; with `template` (shapes), every leaf must be present and match."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    try:
        with ocp.StandardCheckpointer() as ckpt:
            params = ckpt.restore(directory)
    except Exception as e:  # orbax raises many types for a foreign or truncated directory
        raise CheckpointError(f"{directory}: not a readable orbax checkpoint ({type(e).__name__}: {e})") from e
    if template is not None:
        want = jax.tree_util.tree_flatten_with_path(nn.unbox(template))[0]
        got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
        bad = [jax.tree_util.keystr(k) for k, v in want if k not in got or tuple(np.shape(got[k])) != tuple(v.shape)]
        if bad or len(got) != len(want):
            raise CheckpointError(f"{directory}: parameters do not match the model config "
                                  f"({len(bad)} missing or mis-shaped, e.g. {bad[:3]}; {len(got)} vs {len(want)} leaves)")
    return params
