"""Multi-head attention: jax.nn.dot_product_attention's cuDNN flash kernel on GPU where it applies,
plain XLA math elsewhere.

The defect-free encoder's masked attention is not routed here: its fill value and blocked-row
behaviour are part of the official math (lip_jax.ops.defect_free.masked_self_attention).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def resolve(implementation: str, dtype, head_dim: int, q_len: int, kv_len: int) -> str:
    """The attention backend for `implementation` ("auto": cuDNN where its flash
    kernel applies: GPU, 16-bit inputs, head size a multiple of 8 up to 128, and even query and key
    lengths, which its backward pass needs (seen on an H100: odd lengths raise); otherwise XLA)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation != "auto":
        return implementation
    cudnn_ok = (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
                and head_dim % 8 == 0 and head_dim <= 128 and q_len % 2 == 0 and kv_len % 2 == 0)
    return "cudnn" if cudnn_ok else "xla"


def attention(q, k, v, *, mask=None, causal: bool = False, implementation: str = "auto"):
    """q [B, Q, H, D], k / v [B, K, H, D] -> [B, Q, H, D]; scale D ** -0.5, softmax in float32.
    mask: bool, True = may attend, broadcastable to [B, H, Q, K] (2-D [Q, K] allowed); causal adds
    k <= q (the mask may already contain it: cuDNN then skips the blocks above the diagonal)."""
    nq, nk, dh = q.shape[1], k.shape[1], q.shape[-1]
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if resolve(implementation, q.dtype, dh, nq, nk) == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="cudnn")
    # XLA: the same math as jax.nn.dot_product_attention(implementation="xla"), with which the MP-S2S
    # "mid" training step took 11.0-11.2 s on CPU against 9.1-9.7 s (tools/bench_train.py).
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * dh ** -0.5
    if causal:
        tri = jnp.asarray(np.tril(np.ones((nq, nk), bool)))
        mask = tri if mask is None else mask & tri
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)
