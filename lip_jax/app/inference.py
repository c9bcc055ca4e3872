"""The compiled programs of inpainting on a device mesh: what `lip-jax inpaint`, `lip-jax eval` and
`Inpainter` run (lip_jax.app.pipeline), and what `tools/plan.py --recipe sample` compiles.

Mesh: the config's `mesh` section, as in training (`lip_jax.sharding.make_mesh`, axes data / fsdp /
tensor over ALL devices; data parallel when the config has none). Parameters are split by their
logical axis names through the one rule table (`lip_jax.sharding.param_shardings`).

Rows: every call works on B images x K candidates = B * K rows, image-major, split over
data x fsdp (a tensor group shares its rows and splits the heads). B * K is padded up to a multiple
of the row shards with copies of the last row, and the padding is dropped on the host. A real
row's random stream does not depend on the padding or the layout, so the sampled tokens are those
of one device (images agree to float rounding: convolutions sum in an order set by the batch each
device sees).
Per-image work (DF-VQGAN encoder, MP-S2S encoders) is split over images when the shards divide B,
else every device does it for all B images (cheap next to the token-by-token decoding).

Programs: `encode` (defective image -> tokens, hole mask, skip features), `sample` (MP-S2S fills
the holes with the config's decoder, lip_jax.sample.sample_rows), `decode` (every row with its image's skips). Several
processes: each calls them with the same full inputs (`put` builds the global arrays from them),
and `to_host` returns every row on every process.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from lip_jax import sharding
from lip_jax.models import dfvqgan, mps2s
from lip_jax.models.mps2s import MPSConfig

DEFAULT_MESH = {"data": -1, "fsdp": 1, "tensor": 1}


def with_mesh_section(config) -> None:
    """Give a config without `mesh` the data-parallel default, so `--config.mesh.*` overrides apply."""
    if "mesh" not in config:
        import ml_collections

        config.mesh = ml_collections.ConfigDict(DEFAULT_MESH)


def mesh_of(config=None) -> Mesh:
    """The config's mesh over every device (data parallel without a `mesh` section)."""
    shape = dict(config.mesh) if config is not None and "mesh" in config else DEFAULT_MESH
    return sharding.make_mesh(shape)


def _on(mesh: Mesh, fn):
    """`fn` traced with `mesh` as the abstract mesh, whatever the caller's context: its
    `constrain_batch` pins rows to this mesh's axes (identical programs for the pipeline and the plan)."""
    @functools.wraps(fn)
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)
    return traced


def row_shards(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


@functools.lru_cache(maxsize=8)
def abstract_weights(model: dfvqgan.DFVQGAN, cfg: MPSConfig, mesh: Mesh) -> tuple[Any, Any]:
    """(DF-VQGAN, MP-S2S) parameters as ShapeDtypeStructs carrying their shardings, from the logical
    axes of an abstract init (nothing is allocated)."""
    import flax.linen as nn

    key = jax.random.key(0)
    out = []
    for boxed in (jax.eval_shape(lambda r: dfvqgan.init_params(model, r), key),
                  jax.eval_shape(lambda r: mps2s.init_boxed(cfg, r), key)):
        shardings = sharding.param_shardings(boxed, mesh)[0]
        out.append(jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                nn.unbox(boxed), shardings))
    return tuple(out)


def weight_shardings(model: dfvqgan.DFVQGAN, cfg: MPSConfig, mesh: Mesh) -> tuple[Any, Any]:
    """(DF-VQGAN, MP-S2S) parameter shardings."""
    return tuple(jax.tree.map(lambda a: a.sharding, tree) for tree in abstract_weights(model, cfg, mesh))


def put(x, target: NamedSharding):
    """One array onto `target`; on several processes every process passes the same full array."""
    if target.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, target)  # a no-op when already there
    x = np.asarray(x)  # this process's full copy: each process fills its own devices' shards
    return jax.make_array_from_callback(x.shape, target, lambda index: x[index])


def place(tree, shardings):
    """A weight tree onto its shardings; returned as is when already there (a per-leaf device_put,
    even a no-op one, costs ~0.1 ms: tens of ms per call for a model's thousands of leaves)."""
    leaves, targets = jax.tree.leaves(tree), jax.tree.leaves(shardings)
    if len(leaves) == len(targets) and all(isinstance(x, jax.Array) and x.sharding == s
                                           for x, s in zip(leaves, targets)):
        return tree
    return jax.tree.map(put, tree, shardings)


def to_host(x: jax.Array) -> np.ndarray:
    """The whole array on this process (gathered from the other processes' devices if needed)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@dataclasses.dataclass(frozen=True)
class Programs:
    """The jitted programs for B = `batch` images x K = `num_samples` candidates on `mesh`, their
    argument shardings and abstract arguments (ShapeDtypeStructs carrying the shardings)."""

    mesh: Mesh
    batch: int
    num_samples: int
    rows: int  # B * K padded to a multiple of the row shards
    vq_shardings: Any
    mps_shardings: Any
    image_sharding: Callable[[int], NamedSharding]  # per-image arrays of ndim n
    replicated: NamedSharding
    encode: Callable  # (vq, x, mask) -> tokens [B, N], token_mask [B, N], skips, skip_masks
    sample: Callable  # (mps, tokens, token_mask, x, text_ids, rng, top_k, temperature) -> tokens [rows, N]
    decode: Callable  # (vq, tokens [rows, N], skips, skip_masks) -> images [rows, r, r, 3]
    abstract: dict  # program name -> its abstract arguments


@functools.lru_cache(maxsize=16)
def programs(model: dfvqgan.DFVQGAN, cfg: MPSConfig, mesh: Mesh, batch: int, num_samples: int,
             decoder: str = "auto") -> Programs:
    """The programs for one shape and token decoder (cached: every call of that shape reuses the
    compiled ones)."""
    from lip_jax.sample import padded_rows, sample_rows, to_rows

    k, shards = int(num_samples), row_shards(mesh)
    rows = padded_rows(batch, k, shards)
    vq_abs, mps_abs = abstract_weights(model, cfg, mesh)
    vq_sh, mps_sh = weight_shardings(model, cfg, mesh)
    rep = sharding.replicated(mesh)

    def per_image(ndim):  # split over images only when that is even: else replicated, no padding
        return sharding.batch_sharding(mesh, ndim) if batch % shards == 0 else rep

    def abstract(tree, shardings):
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)

    r, n, (h, w) = cfg.img_size, cfg.num_tokens, cfg.grid
    by_row = sharding.batch_sharding(mesh, 2), sharding.batch_sharding(mesh, 4)
    x = jax.ShapeDtypeStruct((batch, r, r, 3), jnp.float32, sharding=per_image(4))
    mask = jax.ShapeDtypeStruct((batch, r, r), jnp.bool_, sharding=per_image(3))

    def encode_fn(params, x, mask):
        enc = model.apply({"params": params}, x, mask, method=dfvqgan.DFVQGAN.encode)
        b = x.shape[0]
        return enc["indices"].reshape(b, -1), enc["skip_masks"][-1].reshape(b, -1), enc["skips"], enc["skip_masks"]

    enc_shapes = jax.eval_shape(encode_fn, vq_abs, x, mask)
    enc_sh = jax.tree.map(lambda a: per_image(a.ndim), enc_shapes)
    encode = jax.jit(_on(mesh, encode_fn), in_shardings=(vq_sh, per_image(4), per_image(3)), out_shardings=enc_sh)

    sample = jax.jit(_on(mesh, functools.partial(sample_rows, cfg=cfg, num_samples=k, row_multiple=shards,
                                                 decoder=decoder)),
                     in_shardings=(mps_sh, per_image(2), per_image(2), per_image(4), per_image(2), rep, rep, rep),
                     out_shardings=by_row[0])

    def decode_fn(params, tokens, skips, skip_masks):
        rows_of = lambda t: sharding.constrain_batch(to_rows(t, k, rows))  # noqa: E731
        return model.apply({"params": params}, sharding.constrain_batch(tokens.reshape(rows, h, w)),
                           [rows_of(s) for s in skips], [rows_of(m) for m in skip_masks],
                           method=dfvqgan.DFVQGAN.decode_indices)

    decode = jax.jit(_on(mesh, decode_fn), in_shardings=(vq_sh, by_row[0], enc_sh[2], enc_sh[3]),
                     out_shardings=by_row[1])

    tokens_in, token_mask_in, skips, skip_masks = abstract(enc_shapes, enc_sh)
    scalar = lambda dtype, shape=(): jax.ShapeDtypeStruct(shape, dtype, sharding=rep)  # noqa: E731
    text_ids = jax.ShapeDtypeStruct((batch, cfg.text_len), jnp.int32, sharding=per_image(2))
    args = {"encode": (vq_abs, x, mask),
            "sample": (mps_abs, tokens_in, token_mask_in, x, text_ids, scalar(jnp.uint32, (2,)), scalar(jnp.int32),
                       scalar(jnp.float32)),
            "decode": (vq_abs, jax.ShapeDtypeStruct((rows, n), jnp.int32, sharding=by_row[0]), skips, skip_masks)}
    return Programs(mesh=mesh, batch=batch, num_samples=k, rows=rows, vq_shardings=vq_sh, mps_shardings=mps_sh,
                    image_sharding=per_image, replicated=rep, encode=encode, sample=sample, decode=decode,
                    abstract=args)
