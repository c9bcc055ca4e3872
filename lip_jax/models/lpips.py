"""LPIPS (VGG16 variant), the perceptual loss of DF-VQGAN stage-1 training and an eval metric.

Same computation as the LPIPS of taming-transformers / the official `config/dfvqgan.py`, NHWC:

1. scaling layer: (x - shift) / scale per RGB channel (inputs in [-1, 1]);
2. VGG16 `features`, read after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3;
3. each feature map divided by its channel L2 norm (+ 1e-10);
4. squared difference of the two images' normalised features;
5. a bias-free 1x1 conv to one channel (`lin0` .. `lin4`), spatial mean, sum over the 5 layers.

The result is [B, 1, 1, 1], differentiable w.r.t. both images. Parameter names follow the
torch keys: `features_N` is torchvision's `features.N` (N the Sequential index of the conv), and
`linK/model_1` is the lpips package's `linK.model.1` (index 0 is the heads' Dropout).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lip_jax.ops.defect_free import CONV_AXES, conv

Array = jax.Array

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# torchvision vgg16().features: conv layer indices per stage (each conv is followed by a ReLU;
# a 2x2 max pool precedes stages 2..5). LPIPS taps the ReLU after each stage's last conv.
VGG16_STAGES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
CHANNELS = (64, 128, 256, 512, 512)
HEAD_DROPOUT = 0.5


def normalize_channels(x: Array, eps: float = 1e-10) -> Array:
    """x / (||x||_2 over channels + eps), with a finite gradient where the norm is exactly 0.

    The value is the reference's everywhere. Where every channel is 0 (possible after a ReLU) the
    reference's gradient is NaN (d sqrt(s)/ds at s = 0 times 0); here it is the subgradient 0.
    """
    s = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    positive = s > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0)
    return x / (norm + eps)


def scaling_layer(x: Array) -> Array:
    shift = jnp.asarray(SHIFT, x.dtype)
    scale = jnp.asarray(SCALE, x.dtype)
    return (x - shift) / scale


class NetLin(nn.Module):
    """Dropout (inactive when deterministic) then a 1x1 conv to one channel without bias."""

    use_dropout: bool = True

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        if self.use_dropout:
            x = nn.Dropout(HEAD_DROPOUT)(x, deterministic=deterministic)
        return nn.Conv(1, (1, 1), use_bias=False, name="model_1",
                       kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_AXES))(x)


class LPIPS(nn.Module):
    """LPIPS-VGG distance between two NHWC image batches in [-1, 1] -> [B, 1, 1, 1].

    `deterministic=False` (with a 'dropout' rng) activates the heads' Dropout(0.5). The official
    stage-1 training runs with it active: the loss is built with `LPIPS().eval()`, but the
    trainer's `self.model.train()` at every epoch (wutils.py) puts the submodule back in train
    mode. Evaluation and the default here are deterministic.
    """

    use_dropout: bool = True

    def setup(self):
        for stage, ch in zip(VGG16_STAGES, CHANNELS):
            for idx in stage:
                setattr(self, f"features_{idx}", conv(ch, 3, 1, 1))
        for k in range(len(CHANNELS)):
            setattr(self, f"lin{k}", NetLin(self.use_dropout))

    def features(self, x: Array) -> list[Array]:
        """The five VGG16 ReLU outputs (relu1_2 .. relu5_3) of already-scaled input."""
        taps = []
        for s, stage in enumerate(VGG16_STAGES):
            if s > 0:
                x = nn.max_pool(x, (2, 2), (2, 2), "VALID")
            for idx in stage:
                x = jax.nn.relu(getattr(self, f"features_{idx}")(x))
            taps.append(x)
        return taps

    def __call__(self, x: Array, y: Array, deterministic: bool = True) -> Array:
        if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"LPIPS expects two NHWC RGB batches of one shape, got {x.shape} and {y.shape}")
        if min(x.shape[1:3]) < 16:
            raise ValueError(f"LPIPS-VGG needs images of at least 16x16 pixels, got {x.shape[1]}x{x.shape[2]}")
        # one VGG pass for both, interleaved (x0, y0, x1, ...): a batch-sharded device then holds
        # its own pairs (concatenating [x; y] moved every feature map between devices)
        xy = jnp.stack([x, y], axis=1).reshape(-1, *x.shape[1:])
        taps = self.features(scaling_layer(xy))
        total = 0.0
        for k, f in enumerate(taps):
            f = normalize_channels(f).reshape(x.shape[0], 2, *f.shape[1:])
            diff = jnp.square(f[:, 0] - f[:, 1])
            head = getattr(self, f"lin{k}")(diff, deterministic=deterministic)
            total = total + jnp.mean(head, axis=(1, 2), keepdims=True)
        return total


def init_params(model: LPIPS, rng: jax.Array, size: int = 32) -> dict:
    """Random parameters (boxed with logical axes); the network is fully convolutional."""
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    return jax.jit(model.init)(rng, x, x)["params"]


def param_template() -> dict:
    """Unboxed parameter shapes of `LPIPS()` (no allocation)."""
    return nn.unbox(jax.eval_shape(lambda: init_params(LPIPS(), jax.random.key(0))))
