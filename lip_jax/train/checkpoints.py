"""Parameter checkpoints on disk (orbax)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

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


class DataStateHandler(ocp.CheckpointHandler):
    """Every process writes its own data-iterator state (`process_I-of-N.json`) into the item dir,
    so a resumed run, on the same number of hosts, sees exactly the batches it would have seen."""

    def save(self, directory, args: "DataSave"):
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        (directory / name).write_text(json.dumps(args.item.get_state()))

    def restore(self, directory, args: "DataRestore"):
        path = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not path.exists():
            found = sorted(p.name for p in directory.iterdir())
            raise CheckpointError(f"{directory}: no data state {path.name} (saved with other host counts: {found})")
        args.item.set_state(json.loads(path.read_text()))
        return args.item

    def metadata(self, directory):
        return None

    def structure(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
    item: Any
