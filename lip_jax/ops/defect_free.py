"""Defect-free primitives of DF-VQGAN (NHWC, mask True = defective).

Every op computes a "full" result (all pixels) and a "masked" result (hole pixels zeroed, statistics
from known pixels only) and keeps the masked one outside the hole. Outside the hole nothing then
depends on the hole's contents: the hole enters only through `jnp.where`, never through arithmetic.
With `mask=None` each op is the plain op of the official `skip_mask=True` path.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lip_jax.ops.conv import Conv2d

Array = jax.Array

# Logical axis names of every parameter (mapped to mesh axes by lip_jax.sharding).
CONV_AXES = ("conv_kh", "conv_kw", "conv_in", "conv_out")
# Backends on which group_norm first makes each group's entries one minor axis, for groups of at
# most STATS_MINOR_MAX_CHANNELS channels. XLA:CPU reduces the positions axis of NHWC slowly when a
# group is one or two channels wide; wider groups reduce well in place and the transposes then
# cost more than they save. A MaskNormalize's forward and backward, 2-core Xeon, NHWC -> minor:
# 1 channel per group: 8x32x32x32 7.6 -> 2.3 ms, 2x256x256x32 220 -> 98 ms; 2 channels:
# 8x16x16x64 2.3 -> 1.5 ms, 2x64x64x64 9.8 -> 5.3 ms, 2x128x128x64 48 -> 53 ms; 4 channels
# (the official 128-channel levels): 2x128x128x128 75 -> 150 ms, so NHWC stays there.
STATS_MINOR_ON = ("cpu",)
STATS_MINOR_MAX_CHANNELS = 2


def zero_hole(x: Array, mask: Array | None) -> Array:
    """x with defective positions set to exactly 0 (mask: [B, H, W])."""
    return x if mask is None else jnp.where(mask[..., None], jnp.zeros((), x.dtype), x)


def blend(full: Array, masked: Array, mask: Array | None) -> Array:
    """`full` inside the hole, `masked` outside (the official `full * m + masked * ~m`)."""
    return masked if mask is None else jnp.where(mask[..., None], full, masked)


def mask_pyramid_level(mask: Array, level: int) -> Array:
    """Mask after `level + 1` downsamplings, as the official encoder builds it.

    The full-resolution mask is padded at the bottom/right by k - 1 and max-pooled with kernel and
    stride k = 2 ** (level + 1): a latent cell is defective if any pixel it covers is.
    """
    k = 2 ** (level + 1)
    padded = jnp.pad(mask, ((0, 0), (0, k - 1), (0, k - 1)))
    return jax.lax.reduce_window(padded, False, jax.lax.bitwise_or, (1, k, k), (1, k, k), "VALID")


def group_norm(x: Array, num_groups: int, eps: float, ddof: int, mask: Array | None = None) -> Array:
    """Group norm without affine; with `mask`, the official relative estimation (paper Eq. 4).

    ddof=1 is the official MaskGroupNorm (unbiased variance, also without a mask); ddof=0 is
    torch.nn.GroupNorm. With a mask, x must already be zero in the hole; mean and variance are
    re-estimated from the n - m known entries of each group in one parallel pass:
    mean = mean_all * n / (n - m + eps), hole filled with that mean, var * (n - 1) / (n - m - 1 + eps).
    """
    b, h, w, c = x.shape
    per = c // num_groups
    n = h * w * per
    minor = jax.default_backend() in STATS_MINOR_ON and per <= STATS_MINOR_MAX_CHANNELS
    if minor:
        g = jnp.transpose(x.reshape(b, h * w, num_groups, per), (0, 2, 3, 1)).reshape(b, num_groups, n)
        axes = (2,)
    else:
        g = x.reshape(b, h * w, num_groups, per)
        axes = (1, 3)
    mean = jnp.mean(g, axis=axes, keepdims=True)
    filled = g
    if mask is not None:
        hole = mask.reshape(b, 1, h * w) if minor else mask.reshape(b, h * w, 1, 1)
        # n - m counted directly: written as `n - m + eps`, XLA folds the constants to
        # `(n + eps) - m`, which is 0 for an all-hole group (0/0 = NaN in the discarded branch,
        # and NaN * 0 in its gradient).
        known = jnp.sum(~hole, axis=axes[0], keepdims=True).astype(x.dtype) * per
        mean = mean * n / (known + eps)
        filled = jnp.where(jnp.tile(hole, (1, 1, per)) if minor else hole, mean, g)
    centred = filled - jnp.mean(filled, axis=axes, keepdims=True)
    var = jnp.sum(jnp.square(centred), axis=axes, keepdims=True) / (n - ddof)
    if mask is not None:
        # All-hole: the denominator is eps - 1 < 0, as in the official code (the branch is
        # discarded by the blend); clamping keeps a rounding residue from reaching sqrt.
        var = jnp.maximum(var * (n - 1) / (known - 1 + eps), 0.0)
    out = (g - mean) / jnp.sqrt(var + eps)
    if minor:
        return jnp.transpose(out.reshape(b, num_groups, per, h * w), (0, 3, 1, 2)).reshape(b, h, w, c)
    return out.reshape(b, h, w, c)


class GroupNorm(nn.Module):
    """Group norm with (C,) affine parameters; `ddof=1` with an optional mask is MaskGroupNorm."""

    num_groups: int = 32
    eps: float = 1e-6
    ddof: int = 0

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (c,))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (c,))
        return group_norm(x, self.num_groups, self.eps, self.ddof, mask) * scale + bias


class MaskNormalize(nn.Module):
    """Official MaskNormalize: plain statistics inside the hole, known-pixel statistics outside."""

    @nn.compact
    def __call__(self, x: Array, mask: Array | None) -> Array:
        norm = GroupNorm(num_groups=32, eps=1e-6, ddof=1, name="norm")
        if mask is None:
            return norm(x)
        return blend(norm(x), norm(zero_hole(x, mask), mask), mask)


def conv(features: int, kernel: int, stride: int = 1, padding=1, name: str | None = None) -> Conv2d:
    """torch.nn.Conv2d equivalent (explicit symmetric padding), logical axes on its parameters."""
    return Conv2d(features, kernel, stride, padding, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_AXES),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


class MaskConv(nn.Module):
    """Official MaskConv2d: conv(x) where the output mask is set, conv(x with hole zeroed) elsewhere.

    `in_mask` is the mask at the input resolution, `out_mask` at the output resolution (they differ
    only for the strided downsampling conv). One parameter set, under `conv`.
    """

    features: int
    kernel: int
    stride: int = 1
    padding: int = 1

    @nn.compact
    def __call__(self, x: Array, in_mask: Array | None, out_mask: Array | None) -> Array:
        layer = conv(self.features, self.kernel, self.stride, self.padding, name="conv")
        if in_mask is None:
            return layer(x)
        return blend(layer(x), layer(zero_hole(x, in_mask)), out_mask)


def attention_bias_mask(mask: Array) -> Array:
    """[B, HW, HW] True where a known query would see a defective key (blocked)."""
    flat = mask.reshape(mask.shape[0], -1)
    return flat[:, None, :] & ~flat[:, :, None]


def masked_self_attention(q: Array, k: Array, v: Array, mask: Array | None) -> Array:
    """Single-head spatial attention over [B, H, W, C]; known queries never attend defective keys.

    Blocked scores are filled with -finfo.max as the official code does (not -inf), so a row with
    every key blocked still has a defined softmax.
    """
    b, h, w, c = q.shape
    q, k, v = (t.reshape(b, h * w, c) for t in (q, k, v))
    scores = jnp.einsum("bic,bjc->bij", q, k) * (c ** -0.5)
    if mask is not None:
        scores = jnp.where(attention_bias_mask(mask), -jnp.finfo(scores.dtype).max, scores)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bij,bjc->bic", weights, v).reshape(b, h, w, c)


def swish(x: Array) -> Array:
    return x * jax.nn.sigmoid(x)

