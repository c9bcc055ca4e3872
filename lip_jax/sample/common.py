"""What both token samplers share: argument checks, the top-k / temperature rule, the random stream,
rows (images x candidates, padded to a mesh's row shards) and the per-image conditioning that is
computed once before decoding (encoders, cross-attention K/V, empty self-attention caches).

Randomness: row r's key is split(rng, rows)[r]; the key of grid position g of that row is
fold_in(row key, g). The sequential sampler draws hole g with that key; the parallel sampler folds
in a tag per use (draft, acceptance, residual), so no draw of one kind is reused for another.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lip_jax.models.mps2s import MPS2S, MPSConfig
from lip_jax.models.mps2s_layers import kv_heads
from lip_jax.sharding import constrain_batch


def check_args(cfg: MPSConfig, num_samples: int, top_k: int, temperature: float):
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if int(top_k) < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def top_k_keep(logits, k):
    """logits >= (k-th largest logit of the row), for a traced k in [1, vocab], without a sort: the
    k-th largest value's order-preserving uint32 image is built bit by bit (32 counting passes,
    much cheaper on CPU than sorting the vocabulary at every step)."""
    x = jnp.where(jnp.abs(logits) < jnp.finfo(jnp.float32).tiny, 0.0, logits)  # -0.0 == 0.0 == denormals
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    key = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))  # monotone in x
    tau = jnp.zeros(logits.shape[:-1] + (1,), jnp.uint32)
    for bit in range(31, -1, -1):  # largest tau with count(key >= tau) >= k
        cand = tau | jnp.uint32(1 << bit)
        tau = jnp.where(jnp.sum(key >= cand, axis=-1, keepdims=True) >= k, cand, tau)
    return key >= tau


def filtered_logits(logits, top_k, temperature):
    """The sampling distribution's logits: top-k kept (ties at the k-th value kept), divided by the
    temperature, -inf elsewhere. Both samplers draw from softmax of exactly this."""
    logits = logits.astype(jnp.float32)
    return jnp.where(top_k_keep(logits, top_k), logits / temperature, -jnp.inf)


def draw(logits, keys, top_k, temperature):
    """Sample from softmax(top-k logits / temperature), one key per row: int32 [R]."""
    return jax.vmap(jax.random.categorical)(keys, filtered_logits(logits, top_k, temperature)).astype(jnp.int32)


def grid_keys(row_keys, g):
    """Per-row key for grid positions g [R]."""
    return jax.vmap(jax.random.fold_in)(row_keys, g)


def repeat(x, s):
    return jnp.repeat(x, s, axis=0) if s > 1 else x


def to_rows(x, num_samples: int, rows: int | None = None):
    """Per-image [B, ...] -> image-major rows [rows, ...] (row r: candidate r % K of image r // K).
    Rows past B * K are padding (copies of the last row) that fill a mesh's row shards; callers
    drop them. Without padding this is the plain repeat."""
    real = x.shape[0] * num_samples
    if rows is None or rows == real:
        return repeat(x, num_samples)
    return x[jnp.minimum(jnp.arange(rows), real - 1) // num_samples]


def padded_rows(batch: int, num_samples: int, row_multiple: int) -> int:
    """B * K rounded up to a multiple of the row shards."""
    return -(-batch * num_samples // row_multiple) * row_multiple


def compute_kernels(params, cfg: MPSConfig):
    """Matmul / conv kernels cast to the compute dtype once, not at every decoding step (each layer
    casts them to that dtype anyway, so the results are the same): each step then reads 16-bit weights."""
    if cfg.jnp_dtype == jnp.float32:
        return params
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.astype(cfg.jnp_dtype) if path[-1].key == "kernel" else x, params)


@dataclasses.dataclass
class Decoding:
    """Everything a sampler needs before its first decoder pass, rows already laid out."""

    model: MPS2S
    variables: Any
    cross_kv: Any  # per decoder layer (k [R, H, dh, L], v [R, H, L, dh])
    tokens: Any  # int32 [R, N], holes set to 0
    mask: Any  # bool [R, N], True = hole
    row_keys: Any  # [R] keys
    caches: Any  # per decoder layer (k [R, H, dh, T], v [R, H, T, dh]), zeros
    real: int  # B * K: rows past it are padding


def prepare(params, tokens, token_mask, image, text_ids, rng, *, cfg: MPSConfig, num_samples: int,
            row_multiple: int = 1, cache_len: int | None = None) -> Decoding:
    """The token view, pixel view, text encoder and every decoder layer's cross-attention K/V run
    once per image (then broadcast to the candidates); self-attention caches of `cache_len`
    positions (default N + 1: BOS and every grid token)."""
    model = MPS2S(cfg)
    variables = {"params": compute_kernels(params, cfg)}
    real = tokens.shape[0] * num_samples
    rows = padded_rows(tokens.shape[0], num_samples, row_multiple)
    to_r = lambda x: constrain_batch(to_rows(x, num_samples, rows))  # noqa: E731
    tokens = jnp.where(token_mask, 0, tokens)  # official: holes start at token 0
    cond = model.apply(variables, tokens, token_mask, image, text_ids, method=MPS2S.encode)
    cross_kv = [tuple(to_r(a) for a in kv_heads(k, v, cfg.heads))
                for k, v in model.apply(variables, cond, method=MPS2S.cross_kv)]
    row_keys = jax.random.split(rng, real)  # the padding's keys copy the last row's: real rows never change
    if rows > real:
        row_keys = row_keys[jnp.minimum(jnp.arange(rows), real - 1)]
    t = cache_len or cfg.num_tokens + 1
    dt, h, dh = cfg.jnp_dtype, cfg.heads, cfg.dim_head
    caches = constrain_batch([(jnp.zeros((rows, h, dh, t), dt), jnp.zeros((rows, h, t, dh), dt))
                              for _ in range(cfg.dec_depth)])
    return Decoding(model=model, variables=variables, cross_kv=cross_kv, tokens=to_r(tokens),
                    mask=to_r(token_mask), row_keys=row_keys, caches=caches, real=real)


def kv_cache_bytes(cfg, batch: int, dtype=None) -> dict:
    """Memory of the cached sampler's decoder state for `batch` rows (images x candidates)."""
    cfg = MPSConfig.from_any(cfg)
    item = jnp.dtype(dtype or cfg.dtype).itemsize
    per = 2 * cfg.dec_depth * batch * cfg.inner_dim * item
    return {"self_kv": per * (cfg.num_tokens + 1), "cross_kv": per * cfg.cond_len}
