"""PatchGAN discriminator of the official stage-1 recipe (pix2pix NLayerDiscriminator, BatchNorm).

Layers are named `main_N` after the official `nn.Sequential` indices, so `main.N.weight` maps
directly; BatchNorm running statistics (torch's: unbiased running variance, `num_batches_tracked`)
live in the `batch_stats` collection.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lip_jax.ops.defect_free import CONV_AXES


def _conv(features: int, stride: int, use_bias: bool, name: str) -> nn.Conv:
    return nn.Conv(features, (4, 4), strides=(stride, stride), padding=[(1, 1), (1, 1)], use_bias=use_bias,
                   name=name,
                   kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), CONV_AXES),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


class TorchBatchNorm(nn.Module):
    """`torch.nn.BatchNorm2d` (eps 1e-5, momentum 0.1) over the channels-last axis.

    Training normalises with the biased batch variance and keeps running statistics as torch does:
    running_var moves towards the *unbiased* variance (n / (n - 1)), which flax's BatchNorm does not;
    `num_batches_tracked` is kept so a checkpoint converts back to the exact torch state dict.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        # torch init (official weights_init): weight ~ N(1, 0.02), bias 0.
        scale = self.param("scale", nn.with_logical_partitioning(
            lambda k, s, d=jnp.float32: 1.0 + 0.02 * jax.random.normal(k, s, d), ("norm",)), (c,))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        tracked = self.variable("batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))
        if train:
            axes = tuple(range(x.ndim - 1))
            n = 1
            for a in axes:
                n *= x.shape[a]
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)  # two-pass, as torch (no E[x^2] - E[x]^2)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
                ra_var.value = (1.0 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
                tracked.value = tracked.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


def _bn(name: str) -> TorchBatchNorm:
    return TorchBatchNorm(name=name)


class NLayerDiscriminator(nn.Module):
    """`train=True` normalises with the statistics of the (global) batch, as the official training."""

    ndf: int = 64
    n_layers: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        idx = 0
        h = nn.leaky_relu(_conv(self.ndf, 2, True, f"main_{idx}")(x), 0.2)
        idx += 2
        mult = 1
        for n in range(1, self.n_layers + 1):
            mult = min(2 ** n, 8)
            stride = 2 if n < self.n_layers else 1
            h = _conv(self.ndf * mult, stride, False, f"main_{idx}")(h)
            h = _bn(f"main_{idx + 1}")(h, train)
            h = nn.leaky_relu(h, 0.2)
            idx += 3
        return _conv(1, 1, True, f"main_{idx}")(h)


def variables_template(ndf: int, n_layers: int) -> dict:
    """{"params", "batch_stats"} shapes of NLayerDiscriminator(ndf, n_layers) (no allocation)."""
    resolution = 4 * 2 ** n_layers  # the smallest input every layer fits (shapes do not depend on it)
    disc = NLayerDiscriminator(ndf=ndf, n_layers=n_layers)
    shapes = jax.eval_shape(lambda: disc.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)), train=True))
    return {"params": nn.unbox(shapes["params"]), "batch_stats": nn.unbox(shapes["batch_stats"])}
