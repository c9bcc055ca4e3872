"""OpenAI CLIP text transformer (ViT-B/32 text tower) in Flax linen.

Parameter names mirror OpenAI's state dict: `token_embedding`, `positional_embedding`,
`transformer.resblocks.N.{ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, `text_projection`.
`attn` is PyTorch's nn.MultiheadAttention: a fused `in_proj` (q; k; v rows) and `out_proj`; its
torch names `in_proj_weight` / `in_proj_bias` are the only renames the converter needs.

`__call__` returns all token states after `ln_final` (what NUWA-LIP's text view uses), projected by
`cond_emb` when `cond_dim` is set. `pooled` gives CLIP's text embedding (EOT state @ text_projection).

Logical axis names: vocab, ctx, embed, qkv, mlp, norm, proj, embed_in (cond_emb input = text width).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

LN_EPS = 1e-5  # torch.nn.LayerNorm default


def part(init, names):
    return nn.with_logical_partitioning(init, names)


def dense(features: int, names: tuple, name: str, use_bias: bool = True, dtype: Any = jnp.float32) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=part(nn.initializers.lecun_normal(), names),
                    bias_init=part(nn.initializers.zeros_init(), names[-1:]))


def layer_norm(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPS, name=name, dtype=jnp.float32,
                        scale_init=part(nn.initializers.ones_init(), ("norm",)),
                        bias_init=part(nn.initializers.zeros_init(), ("norm",)))


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention(width, heads) self-attention with an additive-style boolean mask."""

    width: int
    heads: int
    dtype: Any = jnp.float32

    def setup(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} not divisible by heads {self.heads}")
        self.in_proj = dense(3 * self.width, ("embed", "qkv"), "in_proj", dtype=self.dtype)
        self.out_proj = dense(self.width, ("qkv", "embed"), "out_proj", dtype=self.dtype)

    def __call__(self, x, allowed):
        b, n, _ = x.shape
        dh = self.width // self.heads
        q, k, v = jnp.split(self.in_proj(x), 3, axis=-1)
        q, k, v = (t.reshape(b, n, self.heads, dh) for t in (q, k, v))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * dh ** -0.5, k).astype(jnp.float32)
        logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, self.width)
        return self.out_proj(out)


class Mlp(nn.Module):
    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = dense(4 * self.width, ("embed", "mlp"), "c_fc", dtype=self.dtype)(x)
        return dense(self.width, ("mlp", "embed"), "c_proj", dtype=self.dtype)(quick_gelu(x))


class ResidualAttentionBlock(nn.Module):
    width: int
    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, allowed):
        x = x + MultiheadAttention(self.width, self.heads, self.dtype, name="attn")(layer_norm("ln_1")(x), allowed)
        return x + Mlp(self.width, self.dtype, name="mlp")(layer_norm("ln_2")(x))


class Transformer(nn.Module):
    width: int
    layers: int
    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, allowed):
        for i in range(self.layers):
            x = ResidualAttentionBlock(self.width, self.heads, self.dtype, name=f"resblocks_{i}")(x, allowed)
        return x


class ClipText(nn.Module):
    """CLIP text tower: ids [B, L] int -> states [B, L, width] (or [B, L, cond_dim] via `cond_emb`)."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    cond_dim: int | None = None  # NUWA-LIP's `cond_emb` (Linear width -> dim)
    proj_dim: int | None = None  # CLIP's `text_projection` (width -> embed_dim), reranker only
    dtype: Any = jnp.float32

    def setup(self):
        self.token_embedding = nn.Embed(self.vocab_size, self.width, name="token_embedding",
                                        embedding_init=part(nn.initializers.normal(0.02), ("vocab", "embed")))
        self.positional_embedding = self.param(
            "positional_embedding", part(nn.initializers.normal(0.01), ("ctx", "embed")),
            (self.context_length, self.width))
        self.transformer = Transformer(self.width, self.layers, self.heads, self.dtype, name="transformer")
        self.ln_final = layer_norm("ln_final")
        if self.cond_dim is not None:
            self.cond_emb = dense(self.cond_dim, ("embed_in", "embed"), "cond_emb", dtype=self.dtype)
        if self.proj_dim is not None:
            self.text_projection = self.param(
                "text_projection", part(nn.initializers.normal(self.width ** -0.5), ("embed", "proj")),
                (self.width, self.proj_dim))

    def states(self, ids):
        """All token states after ln_final, [B, L, width]."""
        if ids.ndim != 2 or ids.shape[1] != self.context_length:
            raise ValueError(f"text ids must be [B, {self.context_length}], got {ids.shape}")
        n = self.context_length
        x = self.token_embedding(ids) + self.positional_embedding
        causal = jnp.asarray(np.tril(np.ones((n, n), bool)))[None, None]
        return self.ln_final(self.transformer(x.astype(self.dtype), causal))

    def __call__(self, ids):
        x = self.states(ids)
        return self.cond_emb(x) if self.cond_dim is not None else x

    def pooled(self, ids):
        """CLIP text embedding: state at the EOT token (the largest id) @ text_projection."""
        if self.proj_dim is None:
            raise ValueError("pooled() needs proj_dim (text_projection)")
        x = self.states(ids)
        eot = jnp.argmax(ids, axis=-1)
        return x[jnp.arange(x.shape[0]), eot] @ self.text_projection
