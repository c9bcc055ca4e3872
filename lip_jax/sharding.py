"""Device mesh and the one rule table mapping logical parameter axes to mesh axes (MaxText style).

Every parameter is created with logical axis names (`nn.with_logical_partitioning`); `RULES` says
which mesh axis each name is split over: FSDP over `fsdp`, Megatron column/row splits of
attention and feed-forward over `tensor`, the batch over `data` x `fsdp`.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    # Transformers (MP-S2S, CLIP): FSDP on the model width, Megatron splits on heads / hidden.
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("glu", None),
    ("vocab", "tensor"),
    ("embed_in", None),
    ("qkv", "tensor"),
    ("ctx", None),
    ("patch_h", None),
    ("patch_w", None),
    ("rgb", None),
    ("axial_0", None),
    ("axial_1", None),
    ("axial_2", None),
    # Convolutions: FSDP over output channels.
    ("conv_kh", None),
    ("conv_kw", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("norm", None),
    # VQ codebook: codes over fsdp.
    ("codebook", "fsdp"),
    ("codebook_dim", None),
)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over all devices with axes (data, fsdp, tensor); one size may be -1 (= the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(shape)}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {dict(shape)}: {len(devices)} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"{len(devices)} are present")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def _mesh_axes(logical: str | None, rules) -> tuple[str, ...]:
    for name, target in rules:
        if name == logical:
            return () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    if logical is None:
        return ()
    raise KeyError(f"logical axis {logical!r} has no rule in the partitioning table")


def spec_for(shape: Sequence[int], logical: Sequence[str | None], mesh: Mesh, rules=RULES) -> tuple[P, list[str]]:
    """PartitionSpec for one array, and a note for each rule that could not apply.

    A rule is dropped for a dimension its mesh axes do not divide (e.g. an RGB output conv over
    fsdp=4), or whose mesh axes an earlier dimension already uses; every drop is reported.
    """
    used, parts, notes = set(), [], []
    for dim, name in zip(shape, logical):
        axes = tuple(a for a in _mesh_axes(name, rules) if mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in axes)
        if not axes:
            parts.append(None)
        elif used & set(axes) or dim % size:
            notes.append(f"{name}={dim} not split over {axes} (size {size})")
            parts.append(None)
        else:
            used |= set(axes)
            parts.append(axes[0] if len(axes) == 1 else axes)
    return P(*parts), notes


def logical_axes(boxed) -> dict:
    """Tree of logical axis tuples (None for unboxed leaves) of a boxed parameter tree."""
    return jax.tree_util.tree_map(lambda x: tuple(x.names) if isinstance(x, nn.Partitioned) else None,
                                  boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def param_shardings(boxed, mesh: Mesh, rules=RULES) -> tuple[dict, list[str]]:
    """NamedSharding for each parameter of a boxed tree, and the notes of dropped rules."""
    notes: list[str] = []

    def one(path, x):
        if not isinstance(x, nn.Partitioned):
            return NamedSharding(mesh, P())
        spec, why = spec_for(x.value.shape, x.names, mesh, rules)
        notes.extend(f"{jax.tree_util.keystr(path)}: {w}" for w in why)
        return NamedSharding(mesh, spec)

    shardings = jax.tree_util.tree_map_with_path(one, boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    return shardings, notes


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) dimension over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def constrain_batch(tree):
    """Pin the leading (batch) dimension of every array over data x fsdp inside a jitted step
    (the other dimensions are left to XLA, e.g. a Megatron split over `tensor`).

    XLA's sharding propagation loses the batch split through loops (the gradient-accumulation
    scan) and may trade it for the parameters' FSDP split, replicating activations: this keeps
    activations batch-parallel. A no-op outside a mesh with these axes or for indivisible batches.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not {"data", "fsdp"} <= set(mesh.axis_names):
        return tree
    size = mesh.shape["data"] * mesh.shape["fsdp"]

    def one(x):
        if size == 1 or not hasattr(x, "ndim") or x.ndim == 0 or x.shape[0] % size:
            return x
        return jax.lax.with_sharding_constraint(x, P(("data", "fsdp"), *([P.UNCONSTRAINED] * (x.ndim - 1))))

    return jax.tree_util.tree_map(one, tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
    """Per-host numpy batch -> global jax Arrays sharded over data x fsdp (multi-host aware)."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in local.items()}
