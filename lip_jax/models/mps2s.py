"""MP-S2S: NUWA-LIP's multi-perspective sequence-to-sequence inpainting transformer (Flax linen).

Three views of a defective image condition an autoregressive decoder over VQ tokens:
  * token view: `transformer_enc` over the known tokens (holes replaced by `image_msk_emb`);
  * pixel view: `transformer_pth` over ViT patches of the defective image (`patch_emb`);
  * text view:  the CLIP text transformer, all token states after ln_final, through `cond_emb`.
`transformer_dec` runs over BOS + (token embeddings at holes, `image_msk_emb` at known slots) with
causal self-attention cycling through `attn_types_dec` ("full" / "nearby": a kernel x kernel window
of the token grid, BOS always visible) and cross-attention over cat(token view, pixel view, text).
Logits at sequence position i predict grid token i; the loss is cross-entropy on holes only.

Module names follow the official state dict (`transformer_dec.layers.N.attention.q_linear`, ...)
so lip_jax.convert.mps2s is a short table. Masks: True = hole (defective).

Logical axis names used by the parameters (for a MaxText-style sharding rule table):
  vocab      codebook / text-vocabulary rows, logits output
  embed      model width (dim) and the CLIP text width inside the text tower
  embed_in   cond_emb input (text width)
  codebook   DF-VQGAN codebook vector size (vae_emb columns, image_emb input)
  heads      fused heads * dim_head axis of q/k/v/out projections
  qkv        CLIP's fused 3 * width in_proj axis
  mlp        feed-forward hidden axis
  glu        GEGLU's value / gate half of dense_h_to_8h (kernel [dim, 2, mlp]: each `tensor`
             shard then holds matching halves, and splitting them moves no data)
  norm       LayerNorm scale / bias
  ctx        text positions
  patch_h, patch_w, rgb   ViT patch convolution window and input channels
  axial_0, axial_1, axial_2   axial positional-embedding axes (1, H, W)
  (None for size-1 broadcast axes of LayerScale, BOS and mask embeddings)
"""

from __future__ import annotations

import dataclasses
import functools
from itertools import cycle, islice
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from lip_jax.models.clip import ClipText, config_from_any, dense, layer_norm, part
from lip_jax.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from lip_jax.ops.attention import attention
from lip_jax.sharding import constrain_batch

PRESETS: dict[str, dict] = {
    # config/mps4cc/base.py and config/mps4coco/base.py (identical model hyper-parameters).
    "cc": dict(img_size=256, vae_patch_size=8, vit_patch_size=16, vqvae_vocab_size=8192, vae_emb_dim=256,
               dim=1280, dec_depth=24, enc_depth=12, heads=20, dim_head=64, ff_mult=4,
               attn_dropout=0.1, ff_dropout=0.1, attn_types_dec=("full", "nearby", "nearby", "nearby"),
               attn_types_enc=("full",), kernel_size=11, text_vocab_size=49408, text_len=77,
               text_width=512, text_layers=12, text_heads=8, tokenizer="clip", pth_layout="torch"),
    # Bench size: 32x32 tokens, 4 decoder + 2 + 2 encoder layers at width 256.
    "mid": dict(img_size=256, vae_patch_size=8, vit_patch_size=16, vqvae_vocab_size=8192, vae_emb_dim=256,
                dim=256, dec_depth=4, enc_depth=2, heads=4, dim_head=64, ff_mult=4,
                attn_dropout=0.0, ff_dropout=0.0, attn_types_dec=("full", "nearby", "nearby", "nearby"),
                attn_types_enc=("full",), kernel_size=11, text_vocab_size=49408, text_len=77,
                text_width=256, text_layers=2, text_heads=4, tokenizer="clip", pth_layout="torch"),
    # Tests: 8x8 token grid, kernel 3 (so nearby differs from full), byte tokenizer, DF-VQGAN "tiny" codebook.
    "tiny": dict(img_size=64, vae_patch_size=8, vit_patch_size=16, vqvae_vocab_size=64, vae_emb_dim=8,
                 dim=32, dec_depth=4, enc_depth=1, heads=2, dim_head=16, ff_mult=4,
                 attn_dropout=0.0, ff_dropout=0.0, attn_types_dec=("full", "nearby", "nearby", "nearby"),
                 attn_types_enc=("full",), kernel_size=3, text_vocab_size=259, text_len=16,
                 text_width=32, text_layers=1, text_heads=2, tokenizer="bytes", pth_layout="torch"),
}
PRESETS["coco"] = dict(PRESETS["cc"])


@dataclasses.dataclass(frozen=True)
class MPSConfig:
    """Hyper-parameters with the official names (config/mps4*/base.py `Args`)."""

    img_size: int = 256
    vae_patch_size: int = 8
    vit_patch_size: int = 16
    vqvae_vocab_size: int = 8192
    vae_emb_dim: int = 256
    dim: int = 1280
    dec_depth: int = 24
    enc_depth: int = 12
    heads: int = 20
    dim_head: int = 64
    ff_mult: int = 4
    attn_dropout: float = 0.1
    ff_dropout: float = 0.1
    attn_types_dec: tuple = ("full", "nearby", "nearby", "nearby")
    attn_types_enc: tuple = ("full",)
    kernel_size: int = 11
    text_vocab_size: int = 49408
    text_len: int = 77
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    tokenizer: str = "clip"
    # "torch": the official NCHW `.view(B, -1, dim)` of the patch conv (channels and positions
    # interleaved; the released weights need it). "clean": one row per patch.
    pth_layout: str = "torch"
    # Compute dtype of matmuls / convolutions ("float32" or "bfloat16"); parameters, LayerNorm,
    # softmax, the residual stream and the logits stay float32.
    dtype: str = "float32"
    # Per-layer rematerialisation of every transformer block (REMAT_POLICIES); the official
    # training checkpointed each layer (mpu.checkpoint), i.e. "full".
    remat: str = "none"
    # Full-sequence passes run each transformer as a lax.scan over layer groups (one period of
    # attn_types_dec); compile time stops growing with depth. Parameters stay stored per layer
    # (layers_N, the official key layout) and are stacked inside the step, which costs one copy of
    # the transformer weights. Same function; dropout draws differ from the unrolled loop.
    scan_layers: bool = False
    # Full-sequence attention backend (lip_jax.ops.attention): "auto" = cuDNN flash attention on GPU
    # for bfloat16 where its kernel applies, XLA otherwise; "xla" / "cudnn" force one. Cached
    # decoding always uses XLA.
    attention: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "attn_types_dec", _as_tuple(self.attn_types_dec))
        object.__setattr__(self, "attn_types_enc", _as_tuple(self.attn_types_enc))
        for p in (self.vae_patch_size, self.vit_patch_size):
            if self.img_size % p:
                raise ValueError(f"img_size {self.img_size} not divisible by patch size {p}")
        if set(self.attn_types_dec) - {"full", "nearby"}:
            raise ValueError(f"attn_types_dec must be full/nearby, got {self.attn_types_dec}")
        if set(self.attn_types_enc) != {"full"}:
            # The official nearby mask carries a BOS row/column, which only the decoder has.
            raise ValueError(f"attn_types_enc must be ('full',), got {self.attn_types_enc}")
        if self.pth_layout not in ("torch", "clean"):
            raise ValueError(f"pth_layout must be 'torch' or 'clean', got {self.pth_layout!r}")
        if self.kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {self.kernel_size}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {self.remat!r}")

    @classmethod
    def from_any(cls, cfg: "MPSConfig | Mapping | str") -> "MPSConfig":
        """A preset name, a dict / ml_collections.ConfigDict of fields, or an MPSConfig."""
        return config_from_any(cls, cfg, PRESETS, "MP-S2S")

    @property
    def grid(self) -> tuple[int, int]:
        n = self.img_size // self.vae_patch_size
        return n, n

    @property
    def vit_grid(self) -> tuple[int, int]:
        n = self.img_size // self.vit_patch_size
        return n, n

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def cond_len(self) -> int:
        return self.num_tokens + self.vit_grid[0] * self.vit_grid[1] + self.text_len

    @property
    def inner_dim(self) -> int:
        return self.heads * self.dim_head

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    def dec_layer_types(self) -> tuple[str, ...]:
        return tuple(islice(cycle(self.attn_types_dec), self.dec_depth))


# What a rematerialised block keeps from its forward pass (the rest is recomputed in the backward).
REMAT_POLICIES: dict[str, Any] = {
    "none": None,                                                        # no remat
    "full": jax.checkpoint_policies.nothing_saveable,                    # only the block input
    "dots": jax.checkpoint_policies.checkpoint_dots,                     # every matmul output
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # projections, not QK/AV
}


def _as_tuple(v) -> tuple:
    return (v,) if isinstance(v, str) else tuple(v)


def layer_scale_init(index: int) -> float:
    """Official LayerScale init by 1-based layer index."""
    return 0.1 if index <= 18 else (1e-5 if index <= 24 else 1e-6)


# --- attention masks (True = may attend) ----------------------------------------------------------

def nearby_allowed(q_pos, k_pos, grid: tuple[int, int], kernel_size: int):
    """Decoder sequence positions (0 = BOS, p >= 1 = grid token p - 1): window of kernel x kernel
    around the query's grid token, BOS row and column always open. Broadcasts q_pos against k_pos."""
    w = grid[1]
    lo = kernel_size // 2
    hi = kernel_size - 1 - lo
    qg, kg = q_pos - 1, k_pos - 1
    dr = kg // w - qg // w
    dc = kg % w - qg % w
    inside = (dr >= -lo) & (dr <= hi) & (dc >= -lo) & (dc <= hi)
    return inside | (q_pos == 0) | (k_pos == 0)


def decoder_allowed(q_pos, k_pos, attn_type: str, grid: tuple[int, int], kernel_size: int):
    causal = k_pos <= q_pos
    if attn_type == "full":
        return causal
    return causal & nearby_allowed(q_pos, k_pos, grid, kernel_size)


# --- building blocks ---------------------------------------------------------------------------------

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


class MPS2S(nn.Module):
    """Pure function of (params, inputs). Inputs: tokens int [B, N] (N = h*w grid, row-major),
    token_mask bool [B, N] (True = hole), image float [B, H, W, 3] in [-1, 1] (the defective image),
    text_ids int [B, text_len]."""

    cfg: MPSConfig

    def setup(self):
        c = self.cfg
        dt = c.jnp_dtype
        self.encoder = ClipText(c.text_vocab_size, c.text_len, c.text_width, c.text_layers, c.text_heads,
                                cond_dim=c.dim, dtype=dt, name="encoder")
        self.vae_emb = nn.Embed(c.vqvae_vocab_size, c.vae_emb_dim, name="vae_emb",
                                embedding_init=part(normal_init(1.0), ("vocab", "codebook")))
        self.image_emb = dense(c.dim, ("codebook", "embed"), "image_emb", dtype=dt)
        p = c.vit_patch_size
        self.patch_emb = nn.Conv(c.dim, (p, p), strides=(p, p), padding="VALID", name="patch_emb", dtype=dt,
                                 kernel_init=part(nn.initializers.lecun_normal(), ("patch_h", "patch_w", "rgb", "embed")),
                                 bias_init=part(nn.initializers.zeros_init(), ("embed",)))
        self.image_bos_emb = self.param("image_bos_emb", part(normal_init(1.0), (None, "embed")), (1, c.dim))
        self.image_msk_emb = self.param("image_msk_emb", part(normal_init(1.0), (None, "embed")), (1, c.dim))
        self.image_pos_emb_vae = AxialPositionalEmbedding(c.dim, (1, *c.grid), name="image_pos_emb_vae")
        self.image_pos_emb_vit = AxialPositionalEmbedding(c.dim, (1, *c.vit_grid), name="image_pos_emb_vit")
        self.transformer_dec = Transformer(c, c.dec_depth, True, name="transformer_dec")
        self.transformer_enc = Transformer(c, c.enc_depth, False, name="transformer_enc")
        self.transformer_pth = Transformer(c, c.enc_depth, False, name="transformer_pth")
        self.to_logits_img_0 = layer_norm("to_logits_img_0")
        self.to_logits_img_1 = dense(c.vqvae_vocab_size, ("embed", "vocab"), "to_logits_img_1", dtype=dt)

    # -- embeddings -----------------------------------------------------------------------------------
    def token_embed(self, tokens, positions):
        """image_emb(vae_emb(tokens)) + axial position; tokens [B, C] at grid positions [B, C]."""
        pos = self.image_pos_emb_vae()[0]
        # the codebook gather loses the batch split under FSDP (plan: [B_global * N, dim] per device)
        return self.image_emb(constrain_batch(self.vae_emb(tokens))) + pos[positions]

    def pixel_view(self, image, deterministic=True):
        c = self.cfg
        x = self.patch_emb(image.astype(c.jnp_dtype))  # [B, h', w', dim]
        b = x.shape[0]
        if c.pth_layout == "torch":  # reproduce NCHW .view(B, -1, dim) of the official code
            x = jnp.transpose(x, (0, 3, 1, 2))
        x = constrain_batch(x.reshape(b, -1, c.dim) + self.image_pos_emb_vit())
        return self.transformer_pth(x, None, None, deterministic)

    def encode(self, tokens, token_mask, image, text_ids, deterministic: bool = True):
        """cat(token view, pixel view, text view) [B, cond_len, dim]: the decoder's cross-attention input."""
        b, n = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(n), (b, n))
        emb = self.token_embed(tokens, positions)  # position added before the mask is mixed in
        tokens_enc = constrain_batch(jnp.where(token_mask[..., None], self.image_msk_emb, emb))
        enc_out = self.transformer_enc(tokens_enc, None, None, deterministic)
        pth_out = self.pixel_view(image, deterministic)
        text = self.encoder(text_ids)
        return constrain_batch(jnp.concatenate([enc_out, pth_out, text.astype(enc_out.dtype)], axis=1))

    def decoder_inputs(self, tokens, token_mask, seq_pos):
        """Decoder input at sequence positions seq_pos [B, C]: BOS at 0, else grid token p - 1's
        embedding where it is a hole and the (position-free) mask embedding where it is known."""
        n = tokens.shape[1]
        g = jnp.clip(seq_pos - 1, 0, n - 1)
        tok = jnp.take_along_axis(tokens, g, axis=1)
        hole = jnp.take_along_axis(token_mask, g, axis=1)
        x = jnp.where(hole[..., None], constrain_batch(self.token_embed(tok, g)), self.image_msk_emb)
        return constrain_batch(jnp.where((seq_pos == 0)[..., None], self.image_bos_emb, x))

    def cross_kv(self, cond):
        return self.transformer_dec.cross_kv(cond)

    def logits_head(self, h):
        return constrain_batch(self.to_logits_img_1(self.to_logits_img_0(h)).astype(jnp.float32))

    # -- teacher-forced forward -----------------------------------------------------------------------
    def __call__(self, tokens, token_mask, image, text_ids, deterministic: bool = True):
        """Logits [B, N, vocab]: position i predicts grid token i from BOS + tokens < i."""
        c = self.cfg
        b, n = tokens.shape
        cond = self.encode(tokens, token_mask, image, text_ids, deterministic)
        # BOS + tokens[:-1]: the official sequence also feeds the last token, whose output is unused
        # and (causal) changes no other output; n positions keep cuDNN's even-length kernels usable.
        seq = jnp.broadcast_to(jnp.arange(n), (b, n))
        x = self.decoder_inputs(tokens, token_mask, seq)
        qp, kp = np.arange(n)[:, None], np.arange(n)[None, :]
        # "full" is the blocks' causal attention alone (no mask array: cuDNN's causal kernel)
        masks = {"full": None, "nearby": jnp.asarray(decoder_allowed(qp, kp, "nearby", c.grid, c.kernel_size))}
        allowed = [masks[t] for t in c.dec_layer_types()]
        x = self.transformer_dec(x, allowed, cond, deterministic)
        return self.logits_head(x)

    # -- cached decoding ------------------------------------------------------------------------------
    def decode_chunk(self, tokens, token_mask, seq_pos, valid, query_index, cross_kv, caches):
        """Run decoder positions seq_pos [B, C] (contiguous per row, from seq_pos[:, 0]; slots with
        valid[b, i] are new, the cache holds every earlier position) against the self-attention
        caches (k [B, H, dh, T], v [B, H, T, dh]) and cross_kv (kv_heads layouts); returns logits
        [B, vocab] at chunk index query_index [B] and the new caches."""
        c = self.cfg
        x = self.decoder_inputs(tokens, token_mask, seq_pos)
        t = caches[0][1].shape[2]
        kp = jnp.arange(t)[None, None, :]
        qp = seq_pos[:, :, None]
        first = jnp.min(jnp.where(valid, seq_pos, t), axis=1)[:, None, None]  # cache slots >= first are stale
        allow = lambda k, ty: decoder_allowed(qp, k, ty, c.grid, c.kernel_size)  # noqa: E731
        masks = {ty: ((allow(kp, ty) & (kp < first))[:, None],
                      (allow(seq_pos[:, None, :], ty) & valid[:, None, :])[:, None]) for ty in set(c.attn_types_dec)}
        allowed = [masks[ty] for ty in c.dec_layer_types()]
        x, caches = self.transformer_dec.chunk(x, allowed, cross_kv, caches, seq_pos[:, 0], valid)
        h = jnp.take_along_axis(x, query_index[:, None, None], axis=1)[:, 0]
        return self.logits_head(h), caches


def hole_nll(logits, tokens, token_mask):
    """(summed cross-entropy over hole tokens, number of hole tokens): sums, so that gradient
    accumulation can combine microbatches into the batch mean over hole tokens exactly."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    m = token_mask.astype(jnp.float32)
    return jnp.sum(nll * m), jnp.sum(m)


def hole_loss(logits, tokens, token_mask):
    """Mean cross-entropy over hole tokens of the whole batch (ignore_index semantics)."""
    total, holes = hole_nll(logits, tokens, token_mask)
    return total / jnp.maximum(holes, 1.0)


def check_inputs(cfg: MPSConfig, tokens, token_mask, image, text_ids):
    """Shape/dtype validation with one-line errors; returns (tokens int32 [B,N], mask bool [B,N])."""
    n = cfg.num_tokens
    tokens = jnp.asarray(tokens)
    token_mask = jnp.asarray(token_mask)
    b = tokens.shape[0] if tokens.ndim else 0
    if tokens.ndim == 3:
        tokens = tokens.reshape(b, -1)
    if token_mask.ndim == 3:
        token_mask = token_mask.reshape(token_mask.shape[0], -1)
    if tokens.ndim != 2 or tokens.shape[1] != n or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer [B, {n}] (or [B, {cfg.grid[0]}, {cfg.grid[1]}]), got {tokens.dtype} {tokens.shape}")
    if token_mask.shape != tokens.shape:
        raise ValueError(f"token_mask shape {token_mask.shape} != tokens shape {tokens.shape}")
    if token_mask.dtype != jnp.bool_:
        raise ValueError(f"token_mask must be bool (True = hole), got {token_mask.dtype}")
    if tuple(image.shape) != (b, cfg.img_size, cfg.img_size, 3):
        raise ValueError(f"image must be NHWC [{b}, {cfg.img_size}, {cfg.img_size}, 3], got {tuple(image.shape)}")
    if tuple(text_ids.shape) != (b, cfg.text_len):
        raise ValueError(f"text_ids must be [{b}, {cfg.text_len}], got {tuple(text_ids.shape)}")
    return tokens.astype(jnp.int32), token_mask


def init_params(cfg, rng, batch: int = 1):
    """Unboxed float32 parameters of MPS2S(cfg) (use `logical_axes` for the partitioning names)."""
    cfg = MPSConfig.from_any(cfg)
    return jax.jit(lambda r: nn.meta.unbox(init_boxed(cfg, r, batch)))(rng)


def logical_axes(cfg) -> Any:
    """Tree of logical axis-name tuples matching init_params(cfg)."""
    cfg = MPSConfig.from_any(cfg)
    boxed = jax.eval_shape(lambda r: init_boxed(cfg, r, 1), jax.random.PRNGKey(0))
    return nn.get_partition_spec(boxed)


def init_boxed(cfg, rng, batch: int = 1):
    """Parameters of MPS2S(cfg) boxed with their logical axis names."""
    cfg = MPSConfig.from_any(cfg)
    n = cfg.num_tokens
    dummy = (jnp.zeros((batch, n), jnp.int32), jnp.zeros((batch, n), bool),
             jnp.zeros((batch, cfg.img_size, cfg.img_size, 3), jnp.float32),
             jnp.zeros((batch, cfg.text_len), jnp.int32))
    return MPS2S(cfg).init(rng, *dummy)["params"]
