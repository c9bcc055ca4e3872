"""The convolution's CPU weight-gradient formulation (lip_jax.ops.conv): the same gradients as XLA's
own, taken only where it pays (large same-size convolutions on the CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax.ops import conv as C


def _xla(x, w, pad):
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("kernel,pad", [(3, 1), (1, 0)])
def test_matmul_weight_gradient_equals_xla(monkeypatch, kernel, pad):
    monkeypatch.setattr(C, "CPU_MATMUL_WGRAD_MACS", 0)  # every convolution takes the CPU formulation
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 7, 5), np.float32))
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 5, 6), np.float32))
    dy = jnp.asarray(rng.standard_normal((2, 9, 7, 6), np.float32))
    assert "custom_vjp" in str(jax.make_jaxpr(lambda x, w: C.conv2d(x, w, 1, pad))(x, w))

    def grads(f):
        y, vjp = jax.vjp(f, x, w)
        return (y,) + vjp(dy)

    for got, want in zip(grads(lambda x, w: C.conv2d(x, w, 1, pad)), grads(lambda x, w: _xla(x, w, pad))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_only_large_same_size_convolutions_on_the_cpu_take_it():
    big = jnp.zeros((2, 64, 64, 64)), jnp.zeros((3, 3, 64, 64))  # 2*64*64*36864 = 3e8 multiply-adds
    small = jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 4, 4))
    jaxpr = lambda x, w, s, p: str(jax.make_jaxpr(lambda x, w: C.conv2d(x, w, s, p))(x, w))  # noqa: E731
    assert "custom_vjp" not in jaxpr(*small, 1, 1)
    assert "custom_vjp" not in jaxpr(*big, 2, 1)  # strided: XLA's
    with pytest.MonkeyPatch.context() as m:
        m.setattr(C, "CPU_MATMUL_WGRAD_MACS", 10 ** 8)
        assert ("custom_vjp" in jaxpr(*big, 1, 1)) == (jax.default_backend() == "cpu")


def test_dfvqgan_gradients_are_the_same_with_either_formulation(monkeypatch):
    """The whole model's training gradient (defect-free encoder, skips, 1x1 and strided convs)."""
    import flax.linen as nn

    from lip_jax.models import dfvqgan as D

    cfg = dict(D.PRESETS["reduced"], resolution=32)
    model = D.from_config(cfg)
    params = nn.unbox(D.init_params(model, jax.random.key(0)))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32))
    mask = jnp.zeros((2, 32, 32), bool).at[:, 8:20, 4:24].set(True)

    def loss(p):
        rec, enc = model.apply({"params": p}, x, mask)
        return jnp.mean(jnp.abs(rec - x)) + enc["loss"]

    grads = {}
    for name, threshold in (("xla", 10 ** 30), ("matmul", 0)):
        monkeypatch.setattr(C, "CPU_MATMUL_WGRAD_MACS", threshold)
        grads[name] = jax.grad(loss)(params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads["matmul"]), jax.tree_util.tree_leaves(grads["xla"])):
        err = float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))
        assert err < 1e-4, (jax.tree_util.keystr(path), err)
