"""OpenAI CLIP (ViT-B/32 structure) in Flax linen: the text tower, the vision tower and `CLIP`.

Parameter names mirror OpenAI's state dict: `token_embedding`, `positional_embedding`,
`transformer.resblocks.N.{ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, `text_projection`;
`visual.{conv1, class_embedding, positional_embedding, ln_pre, transformer, ln_post, proj}`.
`attn` is PyTorch's nn.MultiheadAttention: a fused `in_proj` (q; k; v rows) and `out_proj`; its
torch names `in_proj_weight` / `in_proj_bias` are the only renames the converter needs.

`__call__` returns all token states after `ln_final` (what NUWA-LIP's text view uses), projected by
`cond_emb` when `cond_dim` is set. `pooled` gives CLIP's text embedding (EOT state @ text_projection).

`CLIP` holds the text tower as `text` (its keys are OpenAI's top-level ones: the converter drops the
prefix), `visual` and `logit_scale`. `preprocess` maps our [-1, 1] NHWC images to CLIP's input.

Logical axis names: vocab, ctx (sequence positions, text or patches), embed, qkv, mlp, norm, proj,
embed_in (cond_emb input = text width), patch_h, patch_w, rgb (patch convolution).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from lip_jax.ops.attention import attention
from lip_jax.sharding import constrain_batch

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
    """nn.MultiheadAttention(width, heads) self-attention, causal (text tower) or full (vision tower)."""

    width: int
    heads: int
    dtype: Any = jnp.float32

    def setup(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} not divisible by heads {self.heads}")
        self.in_proj = dense(3 * self.width, ("embed", "qkv"), "in_proj", dtype=self.dtype)
        self.out_proj = dense(self.width, ("qkv", "embed"), "out_proj", dtype=self.dtype)

    def __call__(self, x, causal: bool):
        b, n, _ = x.shape
        dh = self.width // self.heads
        q, k, v = jnp.split(self.in_proj(x), 3, axis=-1)
        q, k, v = (t.reshape(b, n, self.heads, dh) for t in (q, k, v))
        return self.out_proj(attention(q, k, v, causal=causal).reshape(b, n, self.width))


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
    def __call__(self, x, causal: bool):
        # batch-parallel under FSDP: unpinned, the text tower ran on the global batch (plan, 256 devices)
        x = constrain_batch(x)
        x = x + MultiheadAttention(self.width, self.heads, self.dtype, name="attn")(layer_norm("ln_1")(x), causal)
        return constrain_batch(x + Mlp(self.width, self.dtype, name="mlp")(layer_norm("ln_2")(x)))


class Transformer(nn.Module):
    width: int
    layers: int
    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, causal: bool):
        for i in range(self.layers):
            x = ResidualAttentionBlock(self.width, self.heads, self.dtype, name=f"resblocks_{i}")(x, causal)
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
        x = self.token_embedding(ids) + self.positional_embedding
        return self.ln_final(self.transformer(x.astype(self.dtype), True))

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


# --- vision tower and the full CLIP model ----------------------------------------------------------

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

PRESETS: dict[str, dict] = {
    # OpenAI ViT-B/32 (ViT-B-32.pt, the NUWA-LIP reranker and text encoder).
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     vision_heads=12, context_length=77, vocab_size=49408, transformer_width=512,
                     transformer_heads=8, transformer_layers=12, tokenizer="clip"),
    # Tests: the same structure at 32 px, byte tokenizer.
    "tiny": dict(embed_dim=24, image_resolution=32, vision_layers=2, vision_width=32, vision_patch_size=8,
                 vision_heads=4, context_length=16, vocab_size=259, transformer_width=32,
                 transformer_heads=4, transformer_layers=2, tokenizer="bytes"),
}


def config_from_any(cls, cfg, presets: Mapping, what: str):
    """A dataclass config from an instance, a preset name, or a dict / ConfigDict of its fields."""
    if isinstance(cfg, cls):
        return cfg
    if isinstance(cfg, str):
        if cfg not in presets:
            raise ValueError(f"unknown {what} preset {cfg!r}; have {sorted(presets)}")
        return cls(**presets[cfg])
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} config fields: {unknown}")
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """Hyper-parameters with OpenAI's `build_model` names (heads are explicit: OpenAI derives them
    as width // 64, which tiny test models cannot follow)."""

    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 32
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12
    tokenizer: str = "clip"  # lip_jax.models.tokenizer.get_tokenizer spec for encode_text ids

    def __post_init__(self):
        if self.image_resolution % self.vision_patch_size:
            raise ValueError(f"image_resolution {self.image_resolution} not divisible by patch "
                             f"{self.vision_patch_size}")

    @classmethod
    def from_any(cls, cfg: "ClipConfig | Mapping | str") -> "ClipConfig":
        """A preset name, a dict / ConfigDict of fields, or a ClipConfig."""
        return config_from_any(cls, cfg, PRESETS, "CLIP")


class ClipVision(nn.Module):
    """CLIP ViT: normalised pixels [B, R, R, 3] -> image embedding [B, output_dim]."""

    input_resolution: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    output_dim: int = 512
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        r, p = self.input_resolution, self.patch_size
        if x.ndim != 4 or x.shape[1:] != (r, r, 3):
            raise ValueError(f"CLIP images must be [B, {r}, {r}, 3] (see preprocess), got {x.shape}")
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", use_bias=False, name="conv1",
                    dtype=self.dtype,
                    kernel_init=part(nn.initializers.lecun_normal(), ("patch_h", "patch_w", "rgb", "embed")))(x)
        b = x.shape[0]
        x = x.reshape(b, -1, self.width)
        scale = self.width ** -0.5
        cls = self.param("class_embedding", part(nn.initializers.normal(scale), ("embed",)), (self.width,))
        pos = self.param("positional_embedding", part(nn.initializers.normal(scale), ("ctx", "embed")),
                         ((r // p) ** 2 + 1, self.width))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, self.width)), x], axis=1) + pos
        x = layer_norm("ln_pre")(x)
        x = Transformer(self.width, self.layers, self.heads, self.dtype, name="transformer")(x, False)
        x = layer_norm("ln_post")(x[:, 0])
        proj = self.param("proj", part(nn.initializers.normal(scale), ("embed", "proj")), (self.width, self.output_dim))
        return x @ proj


class CLIP(nn.Module):
    """OpenAI CLIP: `encode_image` (normalised pixels), `encode_text` (ids), `__call__` -> logits."""

    cfg: ClipConfig
    dtype: Any = jnp.float32

    def setup(self):
        c = self.cfg
        self.visual = ClipVision(c.image_resolution, c.vision_patch_size, c.vision_width, c.vision_layers,
                                 c.vision_heads, c.embed_dim, self.dtype, name="visual")
        self.text = ClipText(c.vocab_size, c.context_length, c.transformer_width, c.transformer_layers,
                             c.transformer_heads, proj_dim=c.embed_dim, dtype=self.dtype, name="text")
        self.logit_scale = self.param("logit_scale", part(nn.initializers.constant(math.log(1 / 0.07)), ()), ())

    def encode_image(self, pixels):
        return self.visual(pixels)

    def encode_text(self, ids):
        return self.text.pooled(ids)

    def __call__(self, pixels, ids):
        """(logits_per_image [Bi, Bt], logits_per_text [Bt, Bi]) = exp(logit_scale) * cosine."""
        img = _normalize(self.encode_image(pixels))
        txt = _normalize(self.encode_text(ids))
        logits = jnp.exp(self.logit_scale) * img @ txt.T
        return logits, logits.T


def _normalize(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def preprocess(images, size: int = 224, resize: str = "bicubic"):
    """Our images [B, H, W, 3] in [-1, 1] -> CLIP input [B, size, size, 3] (mean/std normalised).

    resize="bicubic": OpenAI's transform (shorter side to `size` with antialiased bicubic, centre
    crop; values clipped to [0, 1] as PIL's uint8 would). resize="nearest": NUWA-LIP's reranker
    (`F.interpolate(image, size)`: nearest, both sides to `size`, aspect ratio not kept).
    """
    x = (jnp.clip(jnp.asarray(images, jnp.float32), -1.0, 1.0) + 1.0) / 2.0
    b, h, w, _ = x.shape
    if resize == "nearest":
        rows = np.minimum(np.floor(np.arange(size) * (h / size)).astype(int), h - 1)
        cols = np.minimum(np.floor(np.arange(size) * (w / size)).astype(int), w - 1)
        x = x[:, rows][:, :, cols]
    elif resize == "bicubic":
        short, long = min(h, w), max(h, w)
        nh, nw = (size, int(size * long / short)) if h <= w else (int(size * long / short), size)
        if (nh, nw) != (h, w):
            x = jnp.clip(jax.image.resize(x, (b, nh, nw, 3), "bicubic", antialias=True), 0.0, 1.0)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        x = x[:, top:top + size, left:left + size]
    else:
        raise ValueError(f"resize must be 'bicubic' or 'nearest', got {resize!r}")
    return (x - jnp.asarray(IMAGE_MEAN)) / jnp.asarray(IMAGE_STD)


def param_template(cfg) -> dict:
    """Parameter shapes of CLIP(cfg) (no allocation)."""
    cfg = ClipConfig.from_any(cfg)
    r = cfg.image_resolution
    pixels = jax.ShapeDtypeStruct((1, r, r, 3), np.float32)
    ids = jax.ShapeDtypeStruct((1, cfg.context_length), np.int32)
    init = jax.eval_shape(lambda k, p, i: CLIP(cfg).init(k, p, i), jax.random.PRNGKey(0), pixels, ids)
    return nn.meta.unbox(init["params"])
