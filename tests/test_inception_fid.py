"""FID Inception-V3: parity with a pytorch-fid-structured reference, resize, converter round trips."""

import functools
import os
import tracemalloc

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torch_inception as T
from lip_jax.weights import torch_io
from lip_jax.weights.errors import ConversionError
from lip_jax.weights.inception import (WRAPPER_BLOCKS, inception_from_torch, inception_to_torch,
                                       load_inception_variables, variables_template)
from lip_jax.eval import metrics as M
from lip_jax.models import inception as I
from lip_jax.weights.store import load_params, save_params


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@functools.lru_cache(maxsize=None)
def setup():
    tm = T.randomize_(T.FIDInception3(num_classes=1008, resize_input=False), seed=4).eval()
    state = {k: v.clone() for k, v in tm.state_dict().items()}
    params, stats = inception_from_torch(state)
    return tm, state, {"params": params, "batch_stats": stats}


@functools.lru_cache(maxsize=None)
def forward(resize_input: bool):
    model = I.FIDInceptionV3(resize_input=resize_input, num_classes=1008)
    return jax.jit(lambda v, x: model.apply(v, x))


def images(shape, seed):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def nchw01(x):
    return torch.from_numpy(np.ascontiguousarray((x.transpose(0, 3, 1, 2) + 1) / 2))


def test_parity_without_resize_smallest_inputs():
    """Non-square inputs at the 75 px minimum: every block, both pool patches, fc logits."""
    tm, _, variables = setup()
    x = images((2, 75, 83, 3), seed=1)
    with torch.no_grad():
        pool, logits = tm(nchw01(x))
    out = forward(False)(variables, x)
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert float(np.abs(pool.numpy()).max()) > 1e-3
    assert rel_err(out["pool"], pool.numpy()) < 1e-4
    assert rel_err(out["logits"], logits.numpy()) < 1e-4


def test_parity_with_resize_to_299():
    tm, _, variables = setup()
    x = images((1, 64, 48, 3), seed=2)
    tm.resize_input = True
    try:
        with torch.no_grad():
            pool, _ = tm(nchw01(x))
    finally:
        tm.resize_input = False
    out = forward(True)(variables, x)
    assert rel_err(out["pool"], pool.numpy()) < 1e-4


@pytest.mark.parametrize("shape", [(2, 350, 420, 3), (1, 64, 48, 3), (1, 299, 299, 3)])
def test_resize_matches_torch_bilinear(shape):
    x = images(shape, seed=3)
    ref = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(299, 299), mode="bilinear",
                        align_corners=False).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(I.resize_bilinear(x)), ref, atol=2e-6)


def test_rejects_small_or_non_rgb_inputs():
    _, _, variables = setup()
    with pytest.raises(ValueError, match=">= 75px"):
        forward(False)(variables, np.zeros((1, 64, 80, 3), np.float32))
    with pytest.raises(ValueError, match="NHWC RGB"):
        forward(False)(variables, np.zeros((1, 80, 80, 1), np.float32))


def test_batch_stats_only_in_their_collection():
    t = variables_template(0)
    flat_p = jax.tree_util.tree_flatten_with_path(t["params"])[0]
    flat_s = jax.tree_util.tree_flatten_with_path(t["batch_stats"])[0]
    assert not any("running" in jax.tree_util.keystr(k) for k, _ in flat_p)
    assert all(jax.tree_util.keystr(k).endswith(("['running_mean']", "['running_var']")) for k, _ in flat_s)
    assert len(flat_s) == 2 * 94 and len(flat_p) == 3 * 94
    boxed = jax.eval_shape(lambda: I.init_variables(I.FIDInceptionV3(resize_input=False), jax.random.key(0)))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)


def test_feature_fn_pads_and_shards():
    """The batched, sharded feature extractor equals a plain apply (odd batch: padding dropped)."""
    _, _, variables = setup()
    x = images((3, 75, 75, 3), seed=5)
    run = M.inception_feature_fn(variables, resize_input=False)
    feats = run(x)
    assert feats.shape == (3, 2048) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, np.asarray(forward(False)(variables, x)["pool"]), rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------- converter


def _same(a, b):
    fa, fb = (jax.tree_util.tree_flatten_with_path(nn.unbox(t))[0] for t in (a, b))
    assert [k for k, _ in fa] == [k for k, _ in fb]
    for (k, va), (_, vb) in zip(fa, fb):
        np.testing.assert_array_equal(np.asarray(va), np.asarray(vb), err_msg=jax.tree_util.keystr(k))


def test_round_trip_torch_orbax_torch_bit_exact(tmp_path):
    _, state, variables = setup()
    path = str(tmp_path / "pt_inception.pth")
    torch_io.save_torch_checkpoint(inception_to_torch(variables["params"], variables["batch_stats"]), path,
                                 wrap_model=False)
    loaded = load_inception_variables(path)
    _same(loaded, variables)
    save_params(str(tmp_path / "orbax"), loaded)
    restored = load_params(str(tmp_path / "orbax"), variables_template(1008))
    back = inception_to_torch(restored["params"], restored["batch_stats"])
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == v.numpy().dtype, k
        np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)
    strict = T.FIDInception3(num_classes=1008)
    strict.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in back.items()}, strict=True)


def test_wrapper_spelling_without_fc_or_counters():
    """pytorch-fid's InceptionV3 module state dict (blocks.I.J.*): no fc, no num_batches_tracked."""
    _, state, variables = setup()
    name_to_block = {v: k for k, v in WRAPPER_BLOCKS.items()}
    wrapper = {}
    for k, v in state.items():
        top, rest = k.split(".", 1)
        if top == "fc" or k.endswith("num_batches_tracked"):
            continue
        i, j = name_to_block[top]
        wrapper[f"blocks.{i}.{j}.{rest}"] = v
    params, stats = inception_from_torch(wrapper)
    assert "fc" not in params
    _same({"params": params, "batch_stats": stats},
          {"params": {k: v for k, v in variables["params"].items() if k != "fc"}, "batch_stats": variables["batch_stats"]})
    back = inception_to_torch(params, stats, num_batches_tracked=False)
    assert set(back) == {k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def test_truncated_and_foreign_checkpoints(tmp_path):
    _, state, variables = setup()
    path = tmp_path / "small.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("Conv2d_1a")}, path)
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) - 100])
    with pytest.raises(ConversionError, match="cut.pth: cannot read"):
        load_inception_variables(str(tmp_path / "cut.pth"))
    with pytest.raises(ConversionError, match=r"missing \d+ keys: Conv2d_2a_3x3\.bn\.bias"):
        load_inception_variables(str(path))
    no_var = {k: v for k, v in state.items() if k != "Mixed_7c.branch_pool.bn.running_var"}
    with pytest.raises(ConversionError, match=r"missing 1 keys: Mixed_7c\.branch_pool\.bn\.running_var"):
        inception_from_torch(no_var)
    # torchvision's own Inception3 (aux classifier) is a different network.
    aux = dict(state, **{"AuxLogits.conv0.conv.weight": torch.zeros(128, 768, 1, 1)})
    with pytest.raises(ConversionError, match=r"unexpected 1 keys: AuxLogits\.conv0\.conv\.weight"):
        inception_from_torch(aux)
    wrong = dict(state, **{"Mixed_6b.branch7x7_2.conv.weight": torch.zeros(128, 128, 7, 1)})
    with pytest.raises(ConversionError, match=r"mis-shaped: Mixed_6b\.branch7x7_2\.conv\.weight \(128, 128, 7, 1\)"):
        inception_from_torch(wrong)
    stats = {k: v for k, v in variables["batch_stats"].items() if k != "Mixed_5b"}
    with pytest.raises(ConversionError, match=r"missing 14 keys: Mixed_5b\.branch1x1\.bn\.running_mean"):
        inception_to_torch(variables["params"], stats)


def test_conversion_streams_under_twice_the_checkpoint(tmp_path):
    _, state, _ = setup()
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    size = os.path.getsize(path)
    mapped = torch_io.load_torch_checkpoint(str(path))
    tracemalloc.start()
    params, stats = inception_from_torch(mapped)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sum(v.nbytes for v in jax.tree.leaves((params, stats))) > 0.9 * size
    assert peak < 2 * size, (peak, size)
