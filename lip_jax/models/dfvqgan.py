"""DF-VQGAN: VQGAN with a defect-free encoder and symmetrical skip connections (NHWC).

Module and field names follow the official `config/dfvqgan.py`, so a PyTorch key is the Flax path
with `name_N` written `name.N` (see lip_jax.weights.dfvqgan).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lip_jax.ops.defect_free import (GroupNorm, MaskConv, MaskNormalize, conv, mask_pyramid_level,
                                     masked_self_attention, swish)
from lip_jax.sharding import constrain_batch

Array = jax.Array

PRESETS = {
    # Official DFVQGAN.Arg8192 / dfvq4imagenet: 256 px -> 32x32 tokens over an 8192 codebook.
    "imagenet8192": dict(resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=(1, 1, 2, 4),
                         num_res_blocks=2, attn_resolutions=(16,), z_channels=256, n_e=8192, e_dim=256,
                         beta=0.25, legacy=False),
    # Official structure at test size (attention appears at 16 px in encoder and decoder).
    "reduced": dict(resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=(1, 1, 2, 4), num_res_blocks=2,
                    attn_resolutions=(16,), z_channels=16, n_e=128, e_dim=16, beta=0.25, legacy=False),
    "tiny": dict(resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(16,), z_channels=8, n_e=64, e_dim=8, beta=0.25, legacy=False),
}


class ResnetBlock(nn.Module):
    """MaskResnetBlock (encoder, `masked=True`) or the plain ResnetBlock (decoder)."""

    out_channels: int
    masked: bool

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        norm = (lambda name: MaskNormalize(name=name)) if self.masked else (lambda name: GroupNorm(name=name))
        # batch-parallel activations under FSDP (propagation otherwise follows the weights' split)
        x = constrain_batch(x)
        conv1, conv2 = (self._conv(self.out_channels, 3, n) for n in ("conv1", "conv2"))
        h = conv1(swish(norm("norm1")(x, mask)), mask)
        h = conv2(swish(norm("norm2")(h, mask)), mask)
        if x.shape[-1] != self.out_channels:
            x = self._conv(self.out_channels, 1, "nin_shortcut")(x, mask)
        return constrain_batch(x + h)

    def _conv(self, features: int, kernel: int, name: str):
        if self.masked:
            layer = MaskConv(features, kernel, padding=kernel // 2, name=name)
            return lambda x, mask: layer(x, mask, mask)
        layer = conv(features, kernel, padding=kernel // 2, name=name)
        return lambda x, mask: layer(x)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention; `masked=True` is the official MaskAttnBlock."""

    masked: bool

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        c = x.shape[-1]
        if self.masked:
            h = MaskNormalize(name="norm")(x, mask)
            q, k, v = (MaskConv(c, 1, padding=0, name=n)(h, mask, mask) for n in ("q", "k", "v"))
            h = masked_self_attention(q, k, v, mask)
            return constrain_batch(x + MaskConv(c, 1, padding=0, name="proj_out")(h, mask, mask))
        h = GroupNorm(name="norm")(x)
        q, k, v = (conv(c, 1, padding=0, name=n)(h) for n in ("q", "k", "v"))
        return constrain_batch(x + conv(c, 1, padding=0, name="proj_out")(masked_self_attention(q, k, v, None)))


class Downsample(nn.Module):
    """Official MaskDownsample: pad bottom/right by one, 3x3 stride-2 masked conv."""

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, out_mask: Array | None) -> Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        if mask is not None:
            mask = jnp.pad(mask, ((0, 0), (0, 1), (0, 1)))
        return MaskConv(x.shape[-1], 3, stride=2, padding=0, name="conv")(x, mask, out_mask)


class Upsample(nn.Module):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(x.shape[-1], 3, name="conv")(x)


class Mid(nn.Module):
    """block_1, attn_1, block_2 at the lowest resolution."""

    masked: bool

    @nn.compact
    def __call__(self, h: Array, mask: Array | None = None) -> Array:
        c = h.shape[-1]
        h = ResnetBlock(c, masked=self.masked, name="block_1")(h, mask)
        h = AttnBlock(masked=self.masked, name="attn_1")(h, mask)
        return ResnetBlock(c, masked=self.masked, name="block_2")(h, mask)


class EncoderLevel(nn.Module):
    """One resolution of the encoder: blocks (each followed by attention where configured), then
    the downsampling conv unless last. Returns every intermediate feature, as skips."""

    out_channels: int
    num_res_blocks: int
    with_attn: bool
    with_down: bool

    @nn.compact
    def __call__(self, h: Array, mask: Array | None, down_mask: Array | None) -> list[Array]:
        outs = []
        for i in range(self.num_res_blocks):
            h = ResnetBlock(self.out_channels, masked=True, name=f"block_{i}")(h, mask)
            if self.with_attn:
                h = AttnBlock(masked=True, name=f"attn_{i}")(h, mask)
            outs.append(h)
        if self.with_down:
            outs.append(Downsample(name="downsample")(h, mask, down_mask))
        return outs


class Encoder(nn.Module):
    """Defect-free encoder (official MaskEncoder).

    Returns the latent and the skip features with their masks, in the official `hs`/`hms` order:
    conv_in, each block of each level, each downsample.
    """

    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    attn_resolutions: Sequence[int]
    z_channels: int
    resolution: int

    @nn.compact
    def __call__(self, x: Array, mask: Array):
        x, mask = constrain_batch((x, mask))
        hs = [MaskConv(self.ch, 3, name="conv_in")(x, mask, mask)]
        hms = [mask]
        cur_mask, curr_res = mask, self.resolution
        for lvl, mult in enumerate(self.ch_mult):
            with_down = lvl != len(self.ch_mult) - 1
            down_mask = mask_pyramid_level(mask, lvl) if with_down else None
            hs += EncoderLevel(self.ch * mult, self.num_res_blocks, curr_res in self.attn_resolutions, with_down,
                               name=f"down_{lvl}")(hs[-1], cur_mask, down_mask)
            hms += [cur_mask] * self.num_res_blocks
            if with_down:
                hms.append(down_mask)
                cur_mask, curr_res = down_mask, curr_res // 2
        h = Mid(masked=True, name="mid")(hs[-1], cur_mask)
        h = swish(MaskNormalize(name="norm_out")(h, cur_mask))
        h = MaskConv(self.z_channels, 3, name="conv_out")(h, cur_mask, cur_mask)
        return h, hs, hms


def fuse_skip(h: Array, skip: Array, mask: Array) -> Array:
    """Official symmetrical connection `(skip * ~m + h * m + h) / 2`: h in the hole, mean outside."""
    return jnp.where(mask[..., None], h, (skip + h) / 2)


class DecoderLevel(nn.Module):
    """One resolution of the official MaskDecoder: before each block the skip is fused, then
    attention (where configured) runs, then the resnet block; the last block changes channels.
    The skip is fused once more before the upsampling (all levels but the first)."""

    out_channels: int
    num_res_blocks: int
    with_attn: bool
    with_up: bool

    @nn.compact
    def __call__(self, h: Array, take) -> Array:
        for i in range(self.num_res_blocks):
            h = take(h)
            if self.with_attn:
                h = AttnBlock(masked=False, name=f"attn_{i}")(h)
            out = self.out_channels if i == self.num_res_blocks - 1 else h.shape[-1]
            h = ResnetBlock(out, masked=False, name=f"block_{i}")(h)
        return Upsample(name="upsample")(take(h)) if self.with_up else h


class Decoder(nn.Module):
    """Official MaskDecoder; skips are consumed from the end, `hs[0]` is never used. Without skips
    it is the plain decoder."""

    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    attn_resolutions: Sequence[int]
    out_ch: int
    resolution: int

    @nn.compact
    def __call__(self, z: Array, skips: Sequence[Array] | None = None,
                 skip_masks: Sequence[Array] | None = None) -> Array:
        skips, skip_masks = list(skips or []), list(skip_masks or [])
        if len(skips) != len(skip_masks):
            raise ValueError(f"got {len(skips)} skip features but {len(skip_masks)} skip masks")

        def take(h):
            return fuse_skip(h, skips.pop(), skip_masks.pop()) if skips else h

        curr_res = self.resolution // 2 ** (len(self.ch_mult) - 1)
        h = conv(self.ch * self.ch_mult[-1], 3, name="conv_in")(constrain_batch(z))
        h = Mid(masked=False, name="mid")(h)
        in_ch_mult = (1,) + tuple(self.ch_mult)
        for lvl in reversed(range(len(self.ch_mult))):
            h = DecoderLevel(self.ch * in_ch_mult[lvl], self.num_res_blocks, curr_res in self.attn_resolutions,
                             lvl != 0, name=f"up_{lvl}")(h, take)
            curr_res *= 2
        h = swish(GroupNorm(name="norm_out")(h))
        return constrain_batch(conv(self.out_ch, 3, name="conv_out")(h))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation with the straight-through estimator (official VectorQuantizer2).

    legacy=True (the official default of the class) puts beta on the codebook term, legacy=False
    (the official 8192 preset) on the commitment term.
    """

    n_e: int
    e_dim: int
    beta: float = 0.25
    legacy: bool = True

    def setup(self):
        init = nn.initializers.uniform(scale=2.0 / self.n_e)
        self.embedding = nn.Embed(
            self.n_e, self.e_dim, name="embedding",
            embedding_init=nn.with_logical_partitioning(lambda k, s, d: init(k, s, d) - 1.0 / self.n_e,
                                                        ("codebook", "codebook_dim")))

    def __call__(self, z: Array):
        codebook = self.embedding.embedding
        flat = z.reshape(-1, self.e_dim)
        # Full precision: a low-precision matmul moves the argmin between near-equal codes.
        d = (jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(codebook ** 2, axis=1)
             - 2 * jnp.einsum("nd,kd->nk", flat, codebook, precision=jax.lax.Precision.HIGHEST))
        indices = jnp.argmin(d, axis=1).reshape(z.shape[:-1]).astype(jnp.int32)
        z_q = codebook[indices]
        commit = jnp.mean((jax.lax.stop_gradient(z_q) - z) ** 2)
        codebook_loss = jnp.mean((z_q - jax.lax.stop_gradient(z)) ** 2)
        loss = commit + self.beta * codebook_loss if self.legacy else self.beta * commit + codebook_loss
        return z + jax.lax.stop_gradient(z_q - z), loss, indices

    def lookup(self, indices: Array) -> Array:
        return self.embedding(indices)


class DFVQGAN(nn.Module):
    """The official DFVQGAN: encoder, quantizer, quant convs, decoder. Fields use official names."""

    resolution: int
    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    attn_resolutions: Sequence[int]
    z_channels: int
    n_e: int
    e_dim: int
    beta: float = 0.25
    legacy: bool = False
    in_channels: int = 3
    out_ch: int = 3

    def setup(self):
        common = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                      attn_resolutions=tuple(self.attn_resolutions), resolution=self.resolution)
        self.encoder = Encoder(z_channels=self.z_channels, **common)
        self.decoder = Decoder(out_ch=self.out_ch, **common)
        self.quantize = VectorQuantizer(self.n_e, self.e_dim, self.beta, self.legacy)
        self.quant_conv = conv(self.e_dim, 1, padding=0)
        self.post_quant_conv = conv(self.z_channels, 1, padding=0)

    def encode(self, x: Array, mask: Array | None = None) -> dict:
        """Image [B,H,W,3] in [-1,1] and mask [B,H,W] (True = hole) ->
        {indices [B,h,w], quant [B,h,w,e_dim], loss, skips, skip_masks}.

        `mask=None` is the plain encoder (official `skip_mask=True`). It runs as an all-hole mask,
        which the official code computes identically; one compiled program for both keeps them
        bit-identical (two XLA programs may differ in the last ulp).
        """
        self._check_input(x, mask)
        if mask is None:
            mask = jax.lax.optimization_barrier(jnp.ones(x.shape[:3], bool))  # not constant-folded
        h, skips, skip_masks = self.encoder(x, mask)
        quant, loss, indices = self.quantize(self.quant_conv(h))
        return dict(indices=indices, quant=quant, loss=loss, skips=skips, skip_masks=skip_masks)

    def decode(self, quant: Array, skips=None, skip_masks=None) -> Array:
        """Quantised latents -> image; symmetrical connections when skips are given."""
        return self.decoder(self.post_quant_conv(quant), skips, skip_masks)

    def decode_indices(self, indices: Array, skips=None, skip_masks=None) -> Array:
        """Token indices [B,h,w] -> image."""
        return self.decode(self.quantize.lookup(indices), skips, skip_masks)

    def __call__(self, x: Array, mask: Array, decoder_none: Array | None = None):
        """Training forward (official dfvq4imagenet `Net`): encode the ground truth with its mask,
        decode with skips except for rows flagged `decoder_none` (all their skip masks set)."""
        enc = self.encode(x, mask)
        skip_masks = enc["skip_masks"]
        if decoder_none is not None:
            skip_masks = [m | decoder_none[:, None, None] for m in skip_masks]
        return self.decode(enc["quant"], enc["skips"], skip_masks), enc

    def _check_input(self, x: Array, mask: Array | None) -> None:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"expected images [B, H, W, {self.in_channels}], got {x.shape}")
        factor = 2 ** (len(self.ch_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"image size {x.shape[1:3]} is not divisible by {factor}")
        if mask is not None and mask.shape != x.shape[:3]:
            raise ValueError(f"mask shape {mask.shape} does not match images {x.shape[:3]}")


def from_config(cfg) -> DFVQGAN:
    """Build from a dict/ConfigDict with the official field names."""
    fields = {k: cfg[k] for k in ("resolution", "ch", "ch_mult", "num_res_blocks", "attn_resolutions",
                                  "z_channels", "n_e", "e_dim", "beta", "legacy", "in_channels", "out_ch")
              if k in cfg}
    fields["ch_mult"] = tuple(fields["ch_mult"])
    fields["attn_resolutions"] = tuple(fields["attn_resolutions"])
    return DFVQGAN(**fields)


def init_params(model: DFVQGAN, rng: jax.Array, batch: int = 1) -> dict:
    """Random parameters (boxed with logical axis names)."""
    x = jnp.zeros((batch, model.resolution, model.resolution, model.in_channels), jnp.float32)
    mask = jnp.zeros(x.shape[:3], bool)
    return jax.jit(model.init)(rng, x, mask)["params"]


def param_template(cfg) -> dict:
    """Parameter shapes of the model built from `cfg` (no allocation)."""
    model = from_config(cfg)
    return nn.unbox(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))
