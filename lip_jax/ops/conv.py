"""The 2-D convolution of every model here (torch.nn.Conv2d semantics, NHWC / HWIO), with the
weight gradient formulated per backend.

XLA:CPU computes a convolution's weight gradient at a fraction of its forward rate once the maps
are large (on a 2-core Xeon, a 3x3 conv over 2x128x128x128: 250 ms against 45 ms forward, while
PyTorch's whole backward takes 130 ms). There the weight gradient is written as one matmul per
kernel offset, sum over positions of x[shifted] (x) dy, which runs at the matmul rate (136 ms);
small convolutions keep XLA's own (faster below ~1e9 multiply-adds, where its fused kernel wins).
The forward pass and the input gradient are XLA's in every case; on GPU and TPU everything is.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

_DN = ("NHWC", "HWIO", "NHWC")
# Weight-gradient multiply-adds above which the per-offset matmuls beat XLA:CPU's own.
CPU_MATMUL_WGRAD_MACS = 10 ** 9


def _conv(x, w, stride, padding):
    return jax.lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_matmul_wgrad(x, w, pad: int):
    return _conv(x, w, (1, 1), [(pad, pad)] * 2)


def _fwd(x, w, pad):
    return _conv(x, w, (1, 1), [(pad, pad)] * 2), (x, w)


def _bwd(pad, res, dy):
    x, w = res
    _, vjp_x = jax.vjp(lambda x: _conv(x, w, (1, 1), [(pad, pad)] * 2), x)
    kh, kw, ci, co = w.shape
    b, h, wd, _ = dy.shape
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    flat_dy = dy.reshape(-1, co)
    dw = jnp.stack([xp[:, i:i + h, j:j + wd, :].reshape(-1, ci).T @ flat_dy for i in range(kh) for j in range(kw)])
    return vjp_x(dy)[0], dw.reshape(kh, kw, ci, co).astype(w.dtype)


_conv_matmul_wgrad.defvjp(_fwd, _bwd)


def conv2d(x, w, stride: int, padding):
    """lax.conv_general_dilated (NHWC, HWIO); `padding` an int (symmetric) or "SAME"/"VALID"."""
    pads = padding if isinstance(padding, str) else [(padding, padding)] * 2
    same_size = stride == 1 and isinstance(padding, int) and 2 * padding == w.shape[0] - 1 == w.shape[1] - 1
    macs = x.shape[0] * x.shape[1] * x.shape[2] * w.size
    if same_size and jax.default_backend() == "cpu" and macs >= CPU_MATMUL_WGRAD_MACS:
        return _conv_matmul_wgrad(x, w, padding)
    return _conv(x, w, (stride, stride), pads)


class Conv2d(nn.Module):
    """torch.nn.Conv2d (explicit symmetric padding) with `kernel` / `bias` parameters as nn.Conv
    names them, so weights and converters are the same."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int | str = 1
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        return conv2d(x, kernel, self.stride, self.padding) + bias
