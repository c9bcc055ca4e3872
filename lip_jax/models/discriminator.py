"""PatchGAN discriminator of the official stage-1 recipe (pix2pix NLayerDiscriminator, BatchNorm).

Layers are named `main_N` after the official `nn.Sequential` indices, so `main.N.weight` maps
directly; BatchNorm running statistics live in the `batch_stats` collection.
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


def _bn(name: str) -> nn.BatchNorm:
    # torch BatchNorm2d: eps 1e-5, running = 0.9 * running + 0.1 * batch; init weight ~ N(1, 0.02).
    return nn.BatchNorm(momentum=0.9, epsilon=1e-5, name=name,
                        scale_init=nn.with_logical_partitioning(
                            lambda k, s, d=jnp.float32: 1.0 + 0.02 * jax.random.normal(k, s, d), ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


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
            h = _bn(f"main_{idx + 1}")(h, use_running_average=not train)
            h = nn.leaky_relu(h, 0.2)
            idx += 3
        return _conv(1, 1, True, f"main_{idx}")(h)
