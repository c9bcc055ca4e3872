"""Multi-head attention through jax.nn.dot_product_attention (cuDNN flash attention on GPU, XLA elsewhere).

The defect-free encoder's masked attention is not routed here: its fill value and blocked-row
behaviour are part of the official math (lip_jax.ops.defect_free.masked_self_attention).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def resolve(implementation: str, dtype, head_dim: int, q_len: int, kv_len: int, masked: bool) -> str:
    """The jax.nn.dot_product_attention backend for `implementation` ("auto": cuDNN where its flash
    kernel applies: GPU, 16-bit inputs, head size a multiple of 8 up to 128, and with a mask or causal
    even query / key lengths, which its backward pass needs; otherwise XLA)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation != "auto":
        return implementation
    cudnn_ok = (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
                and head_dim % 8 == 0 and head_dim <= 128 and not (masked and (q_len % 2 or kv_len % 2)))
    return "cudnn" if cudnn_ok else "xla"


def attention(q, k, v, *, mask=None, causal: bool = False, implementation: str = "auto"):
    """q [B, Q, H, D], k / v [B, K, H, D] -> [B, Q, H, D]; scale D ** -0.5, softmax in float32.
    mask: bool, True = may attend, broadcastable to [B, H, Q, K] (2-D [Q, K] allowed); causal adds
    k <= q (the mask may already contain it: cuDNN then skips the blocks above the diagonal)."""
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    impl = resolve(implementation, q.dtype, q.shape[-1], q.shape[1], k.shape[1], mask is not None or causal)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation=impl)
