"""The FID Inception-V3 of pytorch-fid (the TF 2015-12-05 graph used by TTUR), NHWC, eval only.

Structure of torchvision's Inception3 with pytorch-fid's patched blocks:
- Mixed_5b/5c/5d (A), Mixed_6b..6e (C) and Mixed_7b (E) average-pool their pool branch without
  counting the zero padding (TF semantics);
- Mixed_7c (E) max-pools its pool branch instead (a quirk of the TF graph, kept for parity).
Every BasicConv2d is a bias-free conv, an eval-mode batch norm (eps 1e-3, running statistics in
the `batch_stats` collection, never updated) and a ReLU.

Input: NHWC in [-1, 1] (pytorch-fid takes [0, 1] and maps it to [-1, 1] itself). With
`resize_input` it is first resized to 299x299 bilinearly like torch's
`F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing); without it any size
>= 75 px works. Output: the 2048-d final average pool ("pool3") features, and with
`num_classes` > 0 also the logits of the `fc` layer (1008 TF classes in pytorch-fid's weights).

Parameter names are torchvision's keys with `branchX_N` modules written as Flax names; see
`lip_jax.weights.inception` for the mapping.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lip_jax.ops.defect_free import CONV_AXES

Array = jax.Array
FID_SIZE = 299
MIN_SIZE = 75
FEATURE_DIM = 2048
BN_EPS = 1e-3


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, Sequence) else (v, v)


class FrozenBatchNorm(nn.Module):
    """Eval-mode BatchNorm2d: affine params in `params`, running_mean/var in `batch_stats`."""

    eps: float = BN_EPS

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (c,))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (c,))
        mean = self.variable("batch_stats", "running_mean",
                             nn.with_logical_partitioning(jnp.zeros, ("norm",)), (c,), jnp.float32).value
        var = self.variable("batch_stats", "running_var",
                            nn.with_logical_partitioning(jnp.ones, ("norm",)), (c,), jnp.float32).value
        return (x - mean) / jnp.sqrt(var + self.eps) * scale + bias


class BasicConv2d(nn.Module):
    features: int
    kernel: int | tuple[int, int] = 1
    stride: int = 1
    padding: int | tuple[int, int] = 0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel), strides=_pair(self.stride),
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv",
                    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_AXES))(x)
        return jax.nn.relu(FrozenBatchNorm(name="bn")(x))


def avg_pool_3x3_tf(x: Array) -> Array:
    """3x3 stride-1 average pool, padding 1, the padded zeros not counted (TF 'SAME')."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x: Array, stride: int, pad: int = 0) -> Array:
    return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = BasicConv2d(64, 1, name="branch1x1")(x)
        b5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, 1, name="branch_pool")(avg_pool_3x3_tf(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
        bd = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, 1, name="branch1x1")(x)
        b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, 1, name="branch_pool")(avg_pool_3x3_tf(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
    max_pool_branch: bool = False  # pytorch-fid's FIDInceptionE_2 (Mixed_7c)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = BasicConv2d(320, 1, name="branch1x1")(x)
        b3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = max_pool_3x3(x, 1, 1) if self.max_pool_branch else avg_pool_3x3_tf(x)
        bp = BasicConv2d(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(x: Array, size: int = FID_SIZE) -> Array:
    """NHWC bilinear resize matching torch `F.interpolate(bilinear, align_corners=False)`."""
    b, h, w, c = x.shape
    if (h, w) == (size, size):
        return x
    return jax.image.resize(x, (b, size, size, c), method="linear", antialias=False)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's InceptionV3(output_blocks=[3]) as a Flax module (plus optional fc logits)."""

    resize_input: bool = True
    num_classes: int = 0  # 0: no fc layer; 1008 for pytorch-fid's full TF weights

    @nn.compact
    def __call__(self, x: Array) -> dict[str, Array]:
        """x: [B, H, W, 3] in [-1, 1] -> {"pool": [B, 2048]} (+ "logits": [B, num_classes])."""
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"FID Inception expects NHWC RGB images, got shape {x.shape}")
        if self.resize_input:
            x = resize_bilinear(x.astype(jnp.float32))
        elif min(x.shape[1:3]) < MIN_SIZE:
            raise ValueError(f"FID Inception without resize needs images >= {MIN_SIZE}px, got "
                             f"{x.shape[1]}x{x.shape[2]}")
        x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = max_pool_3x3(x, 2)
        x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
        x = max_pool_3x3(x, 2)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(max_pool_branch=True, name="Mixed_7c")(x)
        out = {"pool": jnp.mean(x, axis=(1, 2))}
        if self.num_classes:
            out["logits"] = nn.Dense(
                self.num_classes, name="fc",
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "vocab")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)))(out["pool"])
        return out


def init_variables(model: FIDInceptionV3, rng: jax.Array) -> dict:
    """Random {"params", "batch_stats"} (boxed with logical axes)."""
    size = FID_SIZE if model.resize_input else MIN_SIZE
    return jax.jit(model.init)(rng, jnp.zeros((1, size, size, 3), jnp.float32))


def variables_template(num_classes: int = 0) -> dict:
    """Shapes of {"params", "batch_stats"} without allocating (unboxed)."""
    model = FIDInceptionV3(resize_input=False, num_classes=num_classes)
    return nn.unbox(jax.eval_shape(lambda: init_variables(model, jax.random.key(0))))
