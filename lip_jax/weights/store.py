"""Parameter checkpoints on disk (orbax), and the `params` directory a training run leaves.

A finished `lip-jax train` writes `WORKDIR/params`: the DF-VQGAN parameters for stage 1, and
`{"mps", "vqgan"}` for stage 2 (the DF-VQGAN it was trained over travels with it, so inference needs
one path). Every loader accepts the workdir itself or its `params` directory.

Every checkpoint written here records a checksum of every array in its metadata, and every load
verifies it: a flipped byte is a one-line error naming the checkpoint and the array, never a model
that silently computes something else. The checksum is a position-weighted 32-bit sum of the
array's bits (every single-bit change alters it), computed by XLA where the array lives: at memory
bandwidth, on any mesh and any number of hosts, so a checkpoint verifies however it is resharded.
"""

from __future__ import annotations

import json
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lip_jax.config import to_record
from lip_jax.paths import PathLike, path as as_path
from lip_jax.weights.errors import CheckpointError


PARAMS = "params"


def save_params(directory: PathLike, params, overwrite: bool = False, config=None) -> None:
    """Write a parameter tree as an orbax checkpoint. orbax writes into a temporary directory and
    renames it at the end (on gs://: writes a commit_success.txt last), so a reader never sees half
    a tree; `overwrite` replaces an old one. A `gs://` URL reaches orbax unchanged. `config` (the
    resolved config the weights belong to) is recorded beside the arrays with its own checksum, so
    the checkpoint loads without a config file."""
    directory = as_path(directory)
    if directory.exists() and not overwrite:
        raise CheckpointError(f"{directory}: already exists, refusing to overwrite")
    params = nn.unbox(params)
    meta = {"checksums": checksums(params)}
    if config is not None:
        record = to_record(config)
        meta.update(config=record, config_checksum=_config_sum(record))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(directory, params, force=overwrite, custom_metadata=meta)


def _config_sum(record: dict) -> int:
    return zlib.crc32(json.dumps(record, sort_keys=True).encode())


def saved_config(path: PathLike) -> dict | None:
    """The config recorded with an orbax checkpoint (a workdir stands for its params/), verified
    against its checksum; None when it records none (written by `lip-jax convert` without a
    config, or by an older lip-jax)."""
    directory = resolve(path)
    try:
        with ocp.StandardCheckpointer() as ckpt:
            custom = getattr(ckpt.metadata(directory), "custom_metadata", None) or {}
    except Exception as e:  # orbax raises many types for a foreign or truncated directory
        raise CheckpointError(f"{path}: not a readable orbax checkpoint ({type(e).__name__}: {e})") from e
    record = custom.get("config")
    if record is None:
        return None
    if custom.get("config_checksum") != _config_sum(record):
        raise CheckpointError(f"{path}: its recorded config fails its checksum: the checkpoint is corrupted")
    return record


def checksums(tree) -> dict[str, int]:
    """{leaf path: 32-bit checksum} of every array in `tree` (see the module docstring)."""
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0]
    sums = jax.device_get([_sum32_host(v) if _on_host(v) else _sum32(v) for _, v in flat])
    return {jax.tree_util.keystr(k): int(v) for (k, _), v in zip(flat, sums)}


def _on_host(x) -> bool:
    # On a CPU backend numpy needs no compilation (a program per array shape costs more than the
    # sum itself); accelerators and arrays spread over hosts sum where they live.
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return True
    return jax.default_backend() == "cpu" and x.is_fully_addressable


_CHUNK = 1 << 20


def _sum32_host(x) -> int:
    """`_sum32` in numpy, chunked: the same value, without a compiled program."""
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    x = np.ascontiguousarray(np.asarray(x))
    if x.dtype == np.bool_:
        bits = x.reshape(-1).astype(np.uint32)
    else:
        bits = x.reshape(-1).view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[x.dtype.itemsize])
    total, base = 0, np.arange(min(_CHUNK, bits.size), dtype=np.uint32)
    for start in range(0, bits.size, _CHUNK):
        part = bits[start:start + _CHUNK].astype(np.uint32)
        weight = (base[:part.size] + np.uint32(start)) * np.uint32(2654435761) + np.uint32(0x9E3779B9)
        total += int((part * (weight | np.uint32(1))).sum(dtype=np.uint32))
    return total & 0xFFFFFFFF


@jax.jit
def _sum32(x) -> jax.Array:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    else:
        width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)
    bits = bits.reshape(-1)
    # An odd weight per position: a changed bit changes the sum, a moved value too.
    weight = jax.lax.iota(jnp.uint32, bits.shape[0]) * jnp.uint32(2654435761) + jnp.uint32(0x9E3779B9)
    return jnp.sum(bits * (weight | jnp.uint32(1)), dtype=jnp.uint32)


def verify(directory: PathLike, tree, recorded: dict | None, what: str = "") -> None:
    """Compare `tree` (as restored) with the checksums recorded at save; CheckpointError on a
    mismatch. A checkpoint without checksums (written before they existed) loads with a warning."""
    if not recorded:
        import logging

        logging.getLogger("lip_jax").warning("%s: no checksums recorded (written by an older lip-jax): "
                                             "loaded unverified", directory)
        return
    for key, value in checksums(tree).items():
        stored = recorded.get(what + key)
        if stored is None:
            raise CheckpointError(f"{directory}: array {what + key} has no recorded checksum")
        if stored != value:
            raise CheckpointError(f"{directory}: array {what + key} fails its checksum (recorded {stored:08x}, "
                                  f"read {value:08x}): the checkpoint is corrupted")


def _recorded(ckpt, directory) -> dict | None:
    meta = ckpt.metadata(directory)
    custom = getattr(meta, "custom_metadata", None) or {}
    return custom.get("checksums")


def resolve(path: PathLike) -> epath.Path:
    """A training workdir -> its `params` directory; any other path as an epath (a URL unchanged)."""
    p = as_path(path)
    inner = p / PARAMS
    if p.is_dir() and not _is_orbax(p) and inner.is_dir():
        return inner
    if (p / "checkpoints").is_dir() and not inner.is_dir():
        raise CheckpointError(f"{path}: a training workdir without {PARAMS}/ (the run has not finished; "
                              f"rerun the same `lip-jax train` command to complete it)")
    return p


def _is_orbax(path: PathLike) -> bool:
    p = as_path(path)
    return (p / "_CHECKPOINT_METADATA").is_file() or (p / "_METADATA").is_file()


def orbax_template(path: PathLike):
    """Shapes and dtypes of a stored orbax tree, read from its metadata (no array is loaded)."""
    directory = resolve(path)
    if not directory.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    try:
        with ocp.StandardCheckpointer() as ckpt:
            meta = ckpt.metadata(directory).item_metadata
    except Exception as e:  # orbax raises many types for a foreign or truncated directory
        raise CheckpointError(f"{path}: not a readable orbax checkpoint ({type(e).__name__}: {e})") from e
    meta = getattr(meta, "tree", meta)
    if not hasattr(meta, "keys"):
        raise CheckpointError(f"{path}: not an orbax parameter tree")
    return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), dict(meta))


def load_part(path: PathLike, part: str, template):
    """The `part` subtree ("mps" or "vqgan") of a stage-2 tree, or the model alone: stage 2 takes a
    stage-1 output or a stage-2 output as its DF-VQGAN alike. Entries stored beside the model
    (the discriminator of a converted stage-1 training checkpoint) are not read."""
    keys = set(orbax_template(path))
    if {"mps", "vqgan"} <= keys:
        return load_params(path, {part: nn.unbox(template)}, partial=True)[part]
    template = nn.unbox(template)
    return load_params(path, template, partial=bool(keys - set(template)))


def load_params(directory: PathLike, template=None, partial: bool = False):
    """Read a parameter tree, replicated over every device of every process.

    With `template` (a tree of shapes), every leaf must be present and match: checked against the
    checkpoint's metadata first, for a clear message. Without it, the tree is read as stored
    (single process only: orbax needs a target to restore onto another topology). `partial`: the
    template names some top-level subtrees only; the others are not read.
    """
    directory = resolve(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    try:
        with ocp.StandardCheckpointer() as ckpt:
            recorded = _recorded(ckpt, directory)
            if template is None:
                tree = ckpt.restore(directory)
                verify(directory, tree, recorded)
                return tree
            stored = ckpt.metadata(directory).item_metadata
            stored = getattr(stored, "tree", stored)
            if partial:
                stored = {k: stored[k] for k in template if k in stored}
            _check_tree(directory, nn.unbox(template), stored)
            target = jax.tree_util.tree_map(
                lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=_everywhere()), nn.unbox(template))
            if partial:  # only the template's subtrees are read: the other model's bytes are not
                with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as tree_ckpt:
                    tree = tree_ckpt.restore(directory, args=ocp.args.PyTreeRestore(
                        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                        partial_restore=True))
            else:
                tree = ckpt.restore(directory, target)
            verify(directory, tree, recorded)
            return tree
    except CheckpointError:
        raise
    except Exception as e:  # orbax raises many types for a foreign or truncated directory
        raise CheckpointError(f"{directory}: not a readable orbax checkpoint ({type(e).__name__}: {e})") from e


def _everywhere() -> NamedSharding:
    return NamedSharding(Mesh(np.array(jax.devices()), ("all",)), P())


def replicate(tree):
    """Host arrays -> arrays replicated over every device of every process, as `load_params`
    returns them (a jitted training step over a multi-host mesh takes no numpy input)."""
    s = _everywhere()
    return jax.tree_util.tree_map(lambda a: jax.make_array_from_callback(np.shape(a), s, lambda i: np.asarray(a)[i]),
                                  tree)


def _check_tree(directory: PathLike, template, stored) -> None:
    want = jax.tree_util.tree_flatten_with_path(template)[0]
    got = dict(jax.tree_util.tree_flatten_with_path(stored)[0])
    bad = [jax.tree_util.keystr(k) for k, v in want if k not in got or tuple(got[k].shape) != tuple(v.shape)]
    if bad or len(got) != len(want):
        raise CheckpointError(f"{directory}: parameters do not match the model config "
                              f"({len(bad)} missing or mis-shaped, e.g. {bad[:3]}; {len(got)} vs {len(want)} leaves)")
