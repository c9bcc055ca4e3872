"""LPIPS-VGG: parity (value, taps, input gradient) with a PyTorch reference, converter round trips."""

import functools
import os
import tracemalloc

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_lpips as T
from lip_jax.weights import torch_io
from lip_jax.weights.errors import ConversionError
from lip_jax.weights.lpips import (canonical_state, load_lpips_checkpoints, lpips_from_torch, lpips_to_torch,
                                   param_template, split_torch_state)
from lip_jax.models import lpips as L
from lip_jax.weights.store import load_params, save_params


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@functools.lru_cache(maxsize=None)
def setup():
    tm = T.randomize_(T.LPIPS(), seed=3).eval()
    state = {k: v.clone() for k, v in tm.state_dict().items()}
    params = lpips_from_torch(state)
    model = L.LPIPS()
    fwd = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y))
    return tm, state, params, model, fwd


def pair(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, shape), -1, 1).astype(np.float32)
    return x, y


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def test_state_dict_keys_are_canonical():
    _, state, params, _, _ = setup()
    assert set(lpips_to_torch(params)) == set(state)
    assert "lin0.model.1.weight" in state and "features.28.weight" in state and "features.30.weight" not in state


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (1, 40, 24, 3)])
def test_lpips_parity(shape):
    tm, _, params, model, fwd = setup()
    x, y = pair(shape, seed=shape[1])
    with torch.no_grad():
        ref = tm(nchw(x), nchw(y)).numpy()
        taps = tm.taps((nchw(x) - tm.shift) / tm.scale)
    out = np.asarray(fwd(params, x, y))
    assert out.shape == (shape[0], 1, 1, 1)
    assert rel_err(out, ref) < 1e-4, (out.ravel(), ref.ravel())
    got = model.apply({"params": params}, L.scaling_layer(jnp.asarray(x)), method=L.LPIPS.features)
    assert len(got) == 5
    for g, t in zip(got, taps):
        assert rel_err(g, t.numpy().transpose(0, 2, 3, 1)) < 1e-4


def test_lpips_gradient_parity():
    """The loss is differentiable w.r.t. the reconstruction and its gradient matches autograd."""
    tm, _, params, model, _ = setup()
    x, y = pair((2, 32, 32, 3), seed=5)
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(model.apply({"params": params}, a, b))))(x, y)
    xt = nchw(x).requires_grad_(True)
    tm(xt, nchw(y)).sum().backward()
    ref = xt.grad.numpy().transpose(0, 2, 3, 1)
    assert np.abs(ref).max() > 0
    assert rel_err(grad, ref) < 1e-4


def test_identical_images_give_zero():
    _, _, params, _, fwd = setup()
    x, _ = pair((2, 32, 32, 3), seed=6)
    # Zero up to float32 rounding: XLA:CPU need not give bit-identical rows for identical inputs.
    assert np.abs(np.asarray(fwd(params, x, x))).max() < 1e-10


def test_normalize_channels_value_and_finite_gradient_at_zero():
    x = np.random.default_rng(0).normal(size=(1, 2, 3, 8)).astype(np.float32)
    x[0, 0, 0] = 0.0  # a pixel with every channel 0, as after a ReLU
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = xt / (torch.sqrt(torch.sum(xt ** 2, dim=-1, keepdim=True)) + 1e-10)
    np.testing.assert_allclose(np.asarray(L.normalize_channels(jnp.asarray(x))), ref.detach().numpy(), rtol=1e-6)
    ref.sum().backward()
    assert np.isnan(xt.grad.numpy()[0, 0, 0]).all()  # the reference's gradient is NaN there
    g = jax.grad(lambda a: jnp.sum(L.normalize_channels(a)))(jnp.asarray(x))
    assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_allclose(np.asarray(g)[0, 1:], xt.grad.numpy()[0, 1:], rtol=1e-5, atol=1e-6)


def test_head_dropout_only_when_not_deterministic():
    """Official training leaves the heads' Dropout(0.5) on; eval (default) is deterministic."""
    _, _, params, model, fwd = setup()
    x, y = pair((2, 32, 32, 3), seed=7)
    det = np.asarray(fwd(params, x, y))
    no_dropout = jax.eval_shape(lambda: L.init_params(L.LPIPS(use_dropout=False), jax.random.key(0)))
    assert jax.tree.structure(nn.unbox(no_dropout)) == jax.tree.structure(params)
    train = jax.jit(lambda p, a, b, r: model.apply({"params": p}, a, b, deterministic=False, rngs={"dropout": r}))
    drop = [np.asarray(train(params, x, y, jax.random.key(s))) for s in range(2)]
    assert not np.array_equal(drop[0], det) and not np.array_equal(drop[0], drop[1])
    assert np.isfinite(drop[0]).all()


def test_bad_inputs():
    _, _, params, _, fwd = setup()
    with pytest.raises(ValueError, match="one shape"):
        fwd(params, np.zeros((1, 32, 32, 3), np.float32), np.zeros((1, 32, 16, 3), np.float32))
    with pytest.raises(ValueError, match="at least 16"):
        fwd(params, np.zeros((1, 8, 8, 3), np.float32), np.zeros((1, 8, 8, 3), np.float32))


# -------------------------------------------------------------------------------- converter


def _same_params(a, b):
    fa, fb = (jax.tree_util.tree_flatten_with_path(nn.unbox(t))[0] for t in (a, b))
    assert [k for k, _ in fa] == [k for k, _ in fb]
    for (k, va), (_, vb) in zip(fa, fb):
        np.testing.assert_array_equal(np.asarray(va), np.asarray(vb), err_msg=jax.tree_util.keystr(k))


def test_accepted_spellings_give_the_same_params():
    _, state, params, _, _ = setup()
    # lpips package / taming LPIPS model state dict: net.sliceK.N.*, scaling buffers, heads.
    slice_of = {i: s + 1 for s, stage in enumerate(((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)))
                for i in stage}
    lpips_pkg = {("net.slice%d.%s" % (slice_of[int(k.split(".")[1])], k[len("features."):])
                  if k.startswith("features.") else k): v for k, v in state.items()}
    lpips_pkg["scaling_layer.shift"] = torch.tensor([-.030, -.088, -.188])[None, :, None, None]
    lpips_pkg["scaling_layer.scale"] = torch.tensor([.458, .448, .450])[None, :, None, None]
    _same_params(lpips_from_torch(lpips_pkg), params)
    # Full torchvision vgg16 checkpoint (classifier ignored) + heads saved without dropout.
    tv = dict(state)
    tv.update({"classifier.0.weight": torch.zeros(4, 2), "classifier.6.bias": torch.zeros(3)})
    tv = {k.replace("model.1", "model.0"): v for k, v in tv.items()}
    _same_params(lpips_from_torch(tv), params)


def test_round_trip_torch_orbax_torch_bit_exact(tmp_path):
    _, state, params, _, _ = setup()
    vgg, heads = split_torch_state(lpips_to_torch(params))
    torch_io.save_torch_checkpoint(vgg, str(tmp_path / "vgg16.pth"), wrap_model=False)
    torch_io.save_torch_checkpoint(heads, str(tmp_path / "vgg.pth"), wrap_model=False)
    loaded = lpips_from_torch(load_lpips_checkpoints(str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg.pth")))
    save_params(str(tmp_path / "orbax"), loaded)
    restored = load_params(str(tmp_path / "orbax"), param_template())
    back = lpips_to_torch(restored)
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == np.float32
        np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)
    strict = T.LPIPS()
    strict.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_truncated_and_foreign_checkpoints(tmp_path):
    _, state, params, _, _ = setup()
    heads = {k: v for k, v in state.items() if k.startswith("lin")}
    path = tmp_path / "vgg.pth"
    torch.save(heads, path)
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="cut.pth: cannot read"):
        load_lpips_checkpoints(str(tmp_path / "cut.pth"))
    # Heads only (the VGG part forgotten): the missing keys are named.
    with pytest.raises(ConversionError, match=r"missing 26 keys: features\.0\.bias"):
        lpips_from_torch(load_lpips_checkpoints(str(path)))
    partial = {k: v for k, v in state.items() if k != "lin4.model.1.weight"}
    with pytest.raises(ConversionError, match=r"missing 1 keys: lin4\.model\.1\.weight"):
        lpips_from_torch(partial)
    foreign = dict(state, **{"encoder.conv_in.weight": torch.zeros(1), "net.slice1.0.weight": state["features.0.weight"]})
    with pytest.raises(ConversionError, match="both give features.0.weight"):
        lpips_from_torch(foreign)
    foreign.pop("net.slice1.0.weight")
    with pytest.raises(ConversionError, match=r"unexpected 1 keys: encoder\.conv_in\.weight"):
        lpips_from_torch(foreign)
    squeezed = dict(state, **{"lin2.model.1.weight": torch.zeros(1, 128, 1, 1)})
    with pytest.raises(ConversionError, match=r"mis-shaped: lin2\.model\.1\.weight \(1, 128, 1, 1\)"):
        lpips_from_torch(squeezed)
    with pytest.raises(ConversionError, match="scaling_layer.scale"):
        canonical_state(dict(state, **{"scaling_layer.scale": torch.ones(1, 3, 1, 1)}))
    with pytest.raises(ConversionError, match=r"missing 2 keys: features\.28\.bias, features\.28\.weight"):
        lpips_to_torch({k: v for k, v in nn.unbox(params).items() if k != "features_28"})


def test_conversion_streams_under_twice_the_checkpoint(tmp_path):
    _, state, _, _, _ = setup()
    path = tmp_path / "lpips_full.pth"
    torch.save(state, path)
    size = os.path.getsize(path)
    mapped = torch_io.load_torch_checkpoint(str(path))
    tracemalloc.start()
    params = lpips_from_torch(mapped)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sum(v.nbytes for v in jax.tree.leaves(params)) > 0.9 * size
    assert peak < 2 * size, (peak, size)
