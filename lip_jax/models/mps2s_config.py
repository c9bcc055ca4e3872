"""MP-S2S hyper-parameters: `MPSConfig`, the official presets and the rematerialisation policies."""

from __future__ import annotations

import dataclasses
from itertools import cycle, islice
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from lip_jax.models.clip import config_from_any
from lip_jax.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS


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
