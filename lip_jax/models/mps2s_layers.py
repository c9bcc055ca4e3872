"""MP-S2S transformer layers: attention (with decoding caches), GEGLU feed-forward, LayerScale,
the pre-norm block and the (optionally scanned, rematerialised) stack; see lip_jax.models.mps2s."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from lip_jax.models.clip import dense, layer_norm, part
from lip_jax.models.mps2s_config import REMAT_POLICIES, MPSConfig
from lip_jax.ops.attention import attention
from lip_jax.sharding import constrain_batch


def layer_scale_init(index: int) -> float:
    """Official LayerScale init by 1-based layer index."""
    return 0.1 if index <= 18 else (1e-5 if index <= 24 else 1e-6)


class Attention(nn.Module):
    """q/k/v projections without bias, `to_out` with bias, dropout on the output (official)."""

    dim: int
    heads: int
    dim_head: int
    dropout: float = 0.0
    dtype: Any = jnp.float32
    implementation: str = "auto"

    def setup(self):
        inner = self.heads * self.dim_head
        self.q_linear = dense(inner, ("embed", "heads"), "q_linear", use_bias=False, dtype=self.dtype)
        self.k_linear = dense(inner, ("embed", "heads"), "k_linear", use_bias=False, dtype=self.dtype)
        self.v_linear = dense(inner, ("embed", "heads"), "v_linear", use_bias=False, dtype=self.dtype)
        self.to_out = dense(self.dim, ("heads", "embed"), "to_out", dtype=self.dtype)
        self.drop = nn.Dropout(self.dropout)

    def kv(self, y):
        return self.k_linear(y), self.v_linear(y)

    def __call__(self, x, k, v, allowed=None, causal: bool = False, deterministic: bool = True):
        """x [B, Q, dim]; k, v [B, K, inner]; allowed (True = may attend) broadcastable to
        [B, heads, Q, K] or None; causal adds k <= q."""
        b, nq, _ = x.shape
        h, dh = self.heads, self.dim_head
        q = self.q_linear(x).reshape(b, nq, h, dh)
        k = k.reshape(b, k.shape[1], h, dh)
        v = v.reshape(b, v.shape[1], h, dh)
        q, k, v = constrain_batch((q, k, v))
        out = attention(q, k, v, mask=allowed, causal=causal, implementation=self.implementation)
        return self.drop(self.to_out(out.reshape(b, nq, h * dh)), deterministic=deterministic)

    def attend(self, x, parts):
        """Cached decoding (no dropout): one softmax over several key/value sets, parts =
        [(k [B, H, dh, K], v [B, H, K, dh], allowed broadcastable to [B, H, Q, K] or None), ...].
        These layouts feed XLA's batched matmuls directly: with [B, K, inner] caches XLA:CPU
        transposed every cache at every step."""
        b, nq, _ = x.shape
        h, dh = self.heads, self.dim_head
        q = self.q_linear(x).reshape(b, nq, h, dh).transpose(0, 2, 1, 3)
        logits = []
        for k, _, allowed in parts:
            lg = jnp.einsum("bhqd,bhdk->bhqk", q, k, preferred_element_type=jnp.float32) * dh ** -0.5
            logits.append(lg if allowed is None else jnp.where(allowed, lg, jnp.finfo(jnp.float32).min))
        m = functools.reduce(jnp.maximum, [jnp.max(lg, axis=-1, keepdims=True) for lg in logits])
        e = [jnp.exp(lg - m) for lg in logits]
        denom = functools.reduce(jnp.add, [jnp.sum(p, axis=-1, keepdims=True) for p in e])
        out = functools.reduce(jnp.add, [jnp.einsum("bhqk,bhkd->bhqd", (p / denom).astype(v.dtype), v)
                                         for p, (_, v, _) in zip(e, parts)])
        return self.to_out(out.transpose(0, 2, 1, 3).reshape(b, nq, h * dh))


def kv_heads(k, v, heads: int):
    """Keys/values [B, K, inner] -> the decoding layouts k [B, H, dh, K], v [B, H, K, dh]."""
    b, n, inner = k.shape
    k = k.reshape(b, n, heads, inner // heads).transpose(0, 2, 3, 1)
    return k, v.reshape(b, n, heads, inner // heads).transpose(0, 2, 1, 3)


class LayerScale(nn.Module):
    dim: int
    index: int  # 1-based layer index

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", part(nn.initializers.constant(layer_scale_init(self.index)),
                                         (None, None, "embed")), (1, 1, self.dim))
        return x * scale


class FeedForward(nn.Module):
    """Linear -> GEGLU (first half value, second half gate, exact GELU) -> dropout -> Linear."""

    dim: int
    mult: int = 4
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        # [.., 2, mlp] rather than the official fused [.., 2 * mlp]: with mlp over `tensor`, a fused
        # axis put the value and gate halves on different shards (a collective-permute per layer)
        h = nn.DenseGeneral((2, self.dim * self.mult), dtype=self.dtype, name="dense_h_to_8h",
                            kernel_init=part(nn.initializers.lecun_normal(), ("embed", "glu", "mlp")),
                            bias_init=part(nn.initializers.zeros_init(), ("glu", "mlp")))(x)
        h = constrain_batch(h)
        val, gate = h[..., 0, :], h[..., 1, :]
        h = nn.Dropout(self.dropout)(val * jax.nn.gelu(gate, approximate=False), deterministic=deterministic)
        return dense(self.dim, ("mlp", "embed"), "dense_4h_to_h", dtype=self.dtype)(h)


class Block(nn.Module):
    """Pre-LN block: self-attention, optional cross-attention, GEGLU feed-forward, each LayerScaled."""

    cfg: MPSConfig
    index: int
    cross: bool
    causal: bool = False  # full-sequence self-attention only sees k <= q (the decoder)

    def setup(self):
        c = self.cfg
        attn = lambda name: Attention(c.dim, c.heads, c.dim_head, c.attn_dropout, c.jnp_dtype, c.attention,  # noqa: E731
                                      name=name)
        self.atten_norm = layer_norm("atten_norm")
        self.attention = attn("attention")
        self.attention_scale = LayerScale(c.dim, self.index, name="attention_scale")
        if self.cross:
            self.atten_norm_cond = layer_norm("atten_norm_cond")
            self.attention_cond = attn("attention_cond")
            self.attention_scale_cond = LayerScale(c.dim, self.index, name="attention_scale_cond")
        self.ff_norm = layer_norm("ff_norm")
        self.ff = FeedForward(c.dim, c.ff_mult, c.ff_dropout, c.jnp_dtype, name="ff")
        self.ff_scale = LayerScale(c.dim, self.index, name="ff_scale")

    def cross_kv(self, cond):
        return self.attention_cond.kv(cond)

    def __call__(self, x, allowed, context=None, cache=None, deterministic: bool = True):
        """Full sequence (cache=None; `context` is the cross-attention input [B, L, dim], so a
        rematerialised block recomputes its keys / values instead of keeping them) or a decoding
        chunk with `cache` = (k, v, start, valid) and `context` the cached cross (k, v).

        Decoding: cache k [B, H, dh, T], v [B, H, T, dh] and the cross (k, v) in the same layouts (kv_heads);
        the chunk x [B, C, dim] occupies positions start[b] + [0, C) and slots with valid[b, i] are
        written; allowed = (mask over the cache, mask over the chunk). Returns (x, new (k, v) or None).
        """
        x = constrain_batch(x)  # activations stay batch-parallel under FSDP (no-op without a mesh)
        h = self.atten_norm(x)
        k, v = self.attention.kv(h)
        new_cache = None
        if cache is not None:
            ck, cv, start, valid = cache
            k, v = kv_heads(k, v, self.cfg.heads)
            att = self.attention.attend(h, [(ck, cv, allowed[0]), (k, v, allowed[1])])
            # The write depends on `att` (the test is always true for finite values) so XLA orders the
            # in-place update after the reads of the old cache instead of copying the cache.
            total = jnp.sum(att)
            valid = valid & (total == total)
            new_cache = (_write(ck, k, start, valid, 3), _write(cv, v, start, valid, 2))
        else:
            att = self.attention(h, k, v, allowed, self.causal, deterministic)
        x = x + self.attention_scale(att)
        if self.cross and cache is not None:
            cond = self.attention_cond.attend(self.atten_norm_cond(x), [(*context, None)])
            x = x + self.attention_scale_cond(cond)
        elif self.cross:
            ck, cv = self.attention_cond.kv(context)
            x = x + self.attention_scale_cond(
                self.attention_cond(self.atten_norm_cond(x), ck, cv, None, False, deterministic))
        x = x + self.ff_scale(self.ff(self.ff_norm(x), deterministic))
        return constrain_batch(x), new_cache


def _write(cache, new, start, valid, axis: int):
    """cache[b, ..., start[b] + i (on `axis`), ...] = new[b, ..., i, ...] where valid[b, i]
    (cache and new [B, H, ., .], axis 2 or 3); invalid slots are dropped, not read back."""
    b, c = valid.shape
    pos = jnp.where(valid, start[:, None] + jnp.arange(c), cache.shape[axis])  # out of range: dropped
    new = jnp.moveaxis(new, axis, 1).astype(cache.dtype)  # [B, C, H, .]
    idx = (jnp.arange(b)[:, None],) + (slice(None),) * (axis - 1) + (pos,)
    return cache.at[idx].set(new, mode="drop")


def block_class(remat: str):
    """Block, or Block rematerialised under a REMAT_POLICIES policy (same parameter names).
    Argument 5 of __call__ (counting self), `deterministic`, is static."""
    if remat == "none":
        return Block
    return nn.remat(Block, policy=REMAT_POLICIES[remat], static_argnums=(5,), prevent_cse=True)


class Transformer(nn.Module):
    cfg: MPSConfig
    depth: int
    cross: bool  # the decoder: cross-attention and causal self-attention

    def setup(self):
        block = block_class(self.cfg.remat)
        self.layers = [block(self.cfg, i + 1, self.cross, self.cross, name=f"layers_{i}") for i in range(self.depth)]

    def __call__(self, x, allowed=None, cond=None, deterministic: bool = True):
        """allowed: None or a list of per-layer masks or None (repeating with period
        len(attn_types_dec)); cond: the cross-attention input [B, L, dim] (decoder) or None."""
        period = len(self.cfg.attn_types_dec) if allowed is not None else 1
        if self.cfg.scan_layers and not self.is_initializing() and self.depth % period == 0:
            return self._scan(x, allowed, cond, period, deterministic)
        for i, layer in enumerate(self.layers):
            x, _ = layer(x, None if allowed is None else allowed[i], cond, None, deterministic)
        return x

    def _scan(self, x, allowed, cond, period, deterministic):
        """The layer loop as a lax.scan over depth / period groups of `period` layers (same math)."""
        params = self.variables["params"]
        groups = self.depth // period
        stack = lambda *a: jnp.stack(a)  # noqa: E731
        stacked = [jax.tree_util.tree_map(stack, *[params[f"layers_{g * period + j}"] for g in range(groups)])
                   for j in range(period)]
        block = Block(self.cfg, 1, self.cross, self.cross, parent=None)  # the index only sets the LayerScale init

        def layer(p, x, mask, rng):
            rngs = None if deterministic else {"dropout": rng}
            return block.apply({"params": p}, x, mask, cond, None, deterministic, rngs=rngs)[0]

        if self.cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=True)
        rng = jax.random.key(0) if deterministic else self.make_rng("dropout")
        keys = jax.random.split(rng, groups * period)
        keys = keys.reshape((groups, period) + keys.shape[1:])

        def body(x, xs):
            ps, ks = xs
            for j in range(period):
                x = layer(ps[j], x, None if allowed is None else allowed[j], ks[j])
            return x, None

        return jax.lax.scan(body, x, (stacked, keys))[0]

    def cross_kv(self, cond):
        return [layer.cross_kv(cond) for layer in self.layers]

    def chunk(self, x, allowed, cross_kv, caches, start, valid):
        new = []
        for i, layer in enumerate(self.layers):
            x, c = layer(x, allowed[i], cross_kv[i], (*caches[i], start, valid), True)
            new.append(c)
        return x, new


class AxialPositionalEmbedding(nn.Module):
    """Summed axial embedding over `shape` (the axial_positional_embedding package, axial_dims=None):
    parameters weights_i of shape (1, 1.., shape[i], ..1, dim), flattened to [1, prod(shape), dim]."""

    dim: int
    shape: tuple

    @nn.compact
    def __call__(self):
        total = 0.0
        n = len(self.shape)
        for i, s in enumerate(self.shape):
            ax = [1] * n
            ax[i] = s
            names = (None,) + tuple(f"axial_{j}" if j == i else None for j in range(n)) + ("embed",)
            w = self.param(f"weights_{i}", part(nn.initializers.normal(1.0), names), (1, *ax, self.dim))
            total = total + jnp.broadcast_to(w, (1, *self.shape, self.dim))
        return total.reshape(1, -1, self.dim)


def normal_init(stddev):
    return nn.initializers.normal(stddev)
