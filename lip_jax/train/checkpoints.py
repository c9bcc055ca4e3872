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
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


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
    """Read a parameter tree, replicated over every device of every process.

    With `template` (a tree of shapes), every leaf must be present and match: checked against the
    checkpoint's metadata first, for a clear message. Without it, the tree is read as stored
    (single process only: orbax needs a target to restore onto another topology).
    """
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    try:
        with ocp.StandardCheckpointer() as ckpt:
            if template is None:
                return ckpt.restore(directory)
            stored = ckpt.metadata(directory).item_metadata
            _check_tree(directory, nn.unbox(template), stored)
            everywhere = NamedSharding(Mesh(np.array(jax.devices()), ("all",)), P())
            target = jax.tree_util.tree_map(
                lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=everywhere), nn.unbox(template))
            return ckpt.restore(directory, target)
    except CheckpointError:
        raise
    except Exception as e:  # orbax raises many types for a foreign or truncated directory
        raise CheckpointError(f"{directory}: not a readable orbax checkpoint ({type(e).__name__}: {e})") from e


def _check_tree(directory: str, template, stored) -> None:
    want = jax.tree_util.tree_flatten_with_path(template)[0]
    got = dict(jax.tree_util.tree_flatten_with_path(stored)[0])
    bad = [jax.tree_util.keystr(k) for k, v in want if k not in got or tuple(got[k].shape) != tuple(v.shape)]
    if bad or len(got) != len(want):
        raise CheckpointError(f"{directory}: parameters do not match the model config "
                              f"({len(bad)} missing or mis-shaped, e.g. {bad[:3]}; {len(got)} vs {len(want)} leaves)")


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
