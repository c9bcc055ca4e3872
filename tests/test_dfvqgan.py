"""DF-VQGAN: defect-free property (exact), parity with the official structure, weight round trips."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lip_jax.weights import torch_dfvqgan as T
from lip_jax.weights.errors import ConversionError
from lip_jax.weights.dfvqgan import dfvqgan_from_torch, dfvqgan_to_torch
from lip_jax.models import dfvqgan as D
from lip_jax.ops import defect_free as ops


def irregular_masks(batch: int, size: int, seed: int) -> np.ndarray:
    """Random brush strokes plus a box: irregular holes touching several latent cells."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((batch, size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    for b in range(batch):
        y, x = rng.uniform(0, size, 2)
        for _ in range(12):
            y = np.clip(y + rng.normal(0, size / 6), 0, size - 1)
            x = np.clip(x + rng.normal(0, size / 6), 0, size - 1)
            masks[b] |= (yy - y) ** 2 + (xx - x) ** 2 <= rng.uniform(1, size / 10) ** 2
        y0, x0 = rng.integers(0, size - 6, 2)
        masks[b, y0:y0 + rng.integers(2, 6), x0:x0 + rng.integers(2, 6)] = True
    return masks


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@functools.lru_cache(maxsize=None)
def setup(preset: str):
    """Random-weight official-structure torch model, its converted Flax params and jitted fns."""
    cfg = D.PRESETS[preset]
    tm = T.randomize_(T.DFVQGAN(cfg), seed=1).eval()
    params = dfvqgan_from_torch(tm.state_dict(), cfg)
    model = D.from_config(cfg)
    encode = jax.jit(lambda p, x, m: model.apply({"params": p}, x, m, method=D.DFVQGAN.encode))
    encode_plain = jax.jit(lambda p, x: model.apply({"params": p}, x, None, method=D.DFVQGAN.encode))
    decode = jax.jit(lambda p, q, s, sm: model.apply({"params": p}, q, s, sm, method=D.DFVQGAN.decode))
    return cfg, tm, params, encode, encode_plain, decode


def images(batch, size, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("preset", ["tiny", "reduced"])
def test_defect_free_exact(preset):
    """Inputs that agree outside the hole give bit-identical features outside it, at every level."""
    cfg, _, params, encode, _, _ = setup(preset)
    size = cfg["resolution"]
    mask = irregular_masks(3, size, seed=2)
    x1 = images(3, size, 3)
    x2 = np.where(mask[..., None], images(3, size, 4) * 5, x1)  # other hole contents, other scale
    x3 = np.where(mask[..., None], 0.0, x1).astype(np.float32)  # the defective image (inference input)
    outs = [encode(params, jnp.asarray(x), jnp.asarray(mask)) for x in (x1, x2, x3)]
    for e in outs[1:]:
        assert len(e["skips"]) == len(outs[0]["skips"])
        for f_ref, f, m in zip(outs[0]["skips"], e["skips"], outs[0]["skip_masks"]):
            known = ~np.asarray(m)
            assert known.any()
            np.testing.assert_array_equal(np.asarray(f)[known], np.asarray(f_ref)[known])
        token_known = ~np.asarray(outs[0]["skip_masks"][-1])
        np.testing.assert_array_equal(np.asarray(e["indices"])[token_known], np.asarray(outs[0]["indices"])[token_known])
        np.testing.assert_array_equal(np.asarray(e["quant"])[token_known], np.asarray(outs[0]["quant"])[token_known])
    # The hole content does reach the features inside the hole (the test can tell the inputs apart).
    inside = np.asarray(outs[0]["skip_masks"][1])
    assert not np.array_equal(np.asarray(outs[1]["skips"][1])[inside], np.asarray(outs[0]["skips"][1])[inside])


def test_plain_encoder_is_not_defect_free():
    cfg, _, params, _, encode_plain, _ = setup("tiny")
    size = cfg["resolution"]
    mask = irregular_masks(2, size, seed=5)
    x1 = images(2, size, 6)
    x2 = np.where(mask[..., None], images(2, size, 7), x1)
    e1, e2 = encode_plain(params, jnp.asarray(x1)), encode_plain(params, jnp.asarray(x2))
    known = ~np.asarray(ops.mask_pyramid_level(jnp.asarray(mask), len(cfg["ch_mult"]) - 2))
    assert not np.array_equal(np.asarray(e1["skips"][-1])[known], np.asarray(e2["skips"][-1])[known])


def test_all_hole_mask_equals_plain_encoder():
    cfg, _, params, encode, encode_plain, _ = setup("reduced")
    x = jnp.asarray(images(2, cfg["resolution"], 8))
    full = encode(params, x, jnp.ones(x.shape[:3], bool))
    plain = encode_plain(params, x)
    np.testing.assert_array_equal(np.asarray(full["indices"]), np.asarray(plain["indices"]))
    np.testing.assert_array_equal(np.asarray(full["quant"]), np.asarray(plain["quant"]))
    for a, b in zip(full["skips"], plain["skips"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_decoder_without_skips_equals_all_hole_skips():
    cfg, _, params, encode, _, decode = setup("tiny")
    x = jnp.asarray(images(2, cfg["resolution"], 9))
    enc = encode(params, x, jnp.asarray(irregular_masks(2, cfg["resolution"], 10)))
    none = decode(params, enc["quant"], None, None)
    all_hole = decode(params, enc["quant"], enc["skips"], [jnp.ones_like(m) for m in enc["skip_masks"]])
    with_skips = decode(params, enc["quant"], enc["skips"], enc["skip_masks"])
    np.testing.assert_array_equal(np.asarray(none), np.asarray(all_hole))
    assert not np.array_equal(np.asarray(none), np.asarray(with_skips))


@pytest.mark.parametrize("preset", ["tiny", "reduced"])
def test_parity_with_official_structure(preset):
    cfg, tm, params, encode, encode_plain, decode = setup(preset)
    size = cfg["resolution"]
    x = images(2, size, 11)
    mask = irregular_masks(2, size, seed=12)
    with torch.no_grad():
        xt, mt = torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(mask)
        q_t, loss_t, idx_t, hs_t, hms_t = tm.encode(xt, mt)
        dec_t = tm.decode(q_t, hs_t, hms_t)
        q_plain_t, _, idx_plain_t, _, _ = tm.encode(xt, None, skip_mask=True)
        dec_plain_t = tm.decode(q_plain_t)
    enc = encode(params, jnp.asarray(x), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(enc["indices"]), idx_t.numpy())
    assert rel_err(enc["quant"], q_t.permute(0, 2, 3, 1)) < 1e-4
    assert rel_err(enc["loss"], loss_t) < 1e-4
    assert len(enc["skips"]) == len(hs_t)
    for f, f_t, m, m_t in zip(enc["skips"], hs_t, enc["skip_masks"], hms_t):
        np.testing.assert_array_equal(np.asarray(m), m_t.numpy())
        assert rel_err(f, f_t.permute(0, 2, 3, 1)) < 1e-4
    dec = decode(params, enc["quant"], enc["skips"], enc["skip_masks"])
    assert rel_err(dec, dec_t.permute(0, 2, 3, 1)) < 1e-4
    plain = encode_plain(params, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(plain["indices"]), idx_plain_t.numpy())
    assert rel_err(decode(params, plain["quant"], None, None), dec_plain_t.permute(0, 2, 3, 1)) < 1e-4


@pytest.mark.parametrize("kind", ["irregular", "all_hole"])
def test_training_forward_gradients_are_finite(kind):
    """Also for the official mixture's full-hole masks (an XLA constant fold once made them NaN)."""
    cfg, _, params, _, _, _ = setup("tiny")
    model = D.from_config(cfg)
    x = jnp.asarray(images(2, cfg["resolution"], 13))
    mask = jnp.asarray(irregular_masks(2, cfg["resolution"], 14) if kind == "irregular"
                       else np.ones((2, cfg["resolution"], cfg["resolution"]), bool))

    def loss_fn(p):
        rec, enc = model.apply({"params": p}, x, mask, jnp.array([False, True]))
        return jnp.mean(jnp.abs(rec - x)) + enc["loss"]

    grads = jax.jit(jax.grad(loss_fn))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    # The straight-through estimator reaches the encoder's first conv.
    assert np.abs(np.asarray(grads["encoder"]["conv_in"]["conv"]["kernel"])).max() > 0


def test_round_trip_bit_exact_and_strict_load():
    cfg, tm, params, *_ = setup("reduced")
    sd = tm.state_dict()
    back = dfvqgan_to_torch(params, cfg)
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        assert back[k].dtype == np.float32
        np.testing.assert_array_equal(back[k], v.numpy())
    fresh = T.DFVQGAN(cfg)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_training_checkpoint_keys_are_set_aside():
    """The released stage-1 checkpoint also holds the discriminator and LPIPS of the training Net."""
    cfg, tm, params, *_ = setup("tiny")
    sd = dict(tm.state_dict())
    sd["discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)
    sd["perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    got = dfvqgan_from_torch(sd, cfg)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", ["missing", "unexpected", "misshaped"])
def test_strict_conversion_errors_name_the_keys(damage):
    cfg, tm, *_ = setup("tiny")
    sd = dict(tm.state_dict())
    key = "encoder.down.0.block.0.norm1.norm.weight"
    if damage == "missing":
        del sd[key]
    elif damage == "unexpected":
        sd["encoder.extra.weight"] = torch.zeros(3)
        key = "encoder.extra.weight"
    else:
        sd[key] = torch.zeros(5)
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        dfvqgan_from_torch(sd, cfg)


def test_official_preset_structure_matches_official_keys():
    """The 256 px preset builds the official key set (no weights are allocated)."""
    from lip_jax.weights.torch_io import expected_torch_shapes
    from lip_jax.weights.dfvqgan import KEY_RULES, SHAPE_RULES, param_template

    cfg = D.PRESETS["imagenet8192"]
    with torch.device("meta"):
        official = {k: tuple(v.shape) for k, v in T.DFVQGAN(cfg).state_dict().items()}
    ours = {k: s for k, (_, s) in expected_torch_shapes(param_template(cfg), SHAPE_RULES, KEY_RULES).items()}
    assert ours == official


@pytest.mark.parametrize("size", [32, 30, 17])
def test_mask_pyramid_matches_official_pooling(size):
    mask = irregular_masks(2, size, seed=size)
    for level in range(3):
        k = 2 ** (level + 1)
        padded = torch.nn.functional.pad(torch.from_numpy(mask), (0, k - 1, 0, k - 1))
        ref = torch.nn.functional.max_pool2d(padded[:, None].float(), k, k)[:, 0].bool().numpy()
        np.testing.assert_array_equal(np.asarray(ops.mask_pyramid_level(jnp.asarray(mask), level)), ref)


@pytest.mark.parametrize("minor", [True, False], ids=["stats-minor", "nhwc"])
def test_masked_group_norm_matches_official_for_many_channels(minor, monkeypatch):
    """64 channels, 2 per group: the shape where the official einops-0.3 code path matters; in
    both layouts of the statistics (the CPU's, groups made minor, and the other backends' NHWC)."""
    monkeypatch.setattr(ops, "STATS_MINOR_ON", (jax.default_backend(),) if minor else ())
    rng = np.random.default_rng(15)
    x = rng.normal(size=(2, 16, 16, 64)).astype(np.float32) * 3 + 1
    mask = irregular_masks(2, 16, seed=16)
    ref = T.MaskNormalize(64)
    with torch.no_grad():
        ref.norm.weight.copy_(torch.from_numpy(rng.normal(size=(1, 64, 1)).astype(np.float32)))
        ref.norm.bias.copy_(torch.from_numpy(rng.normal(size=(1, 64, 1)).astype(np.float32)))
        want = ref(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(mask)).permute(0, 2, 3, 1).numpy()
    params = {"norm": {"scale": ref.norm.weight.detach().numpy().reshape(64),
                       "bias": ref.norm.bias.detach().numpy().reshape(64)}}
    got = ops.MaskNormalize().apply({"params": params}, jnp.asarray(x), jnp.asarray(mask))
    assert rel_err(got, want) < 1e-5
    # Gradients of the two layouts agree (the official parity tests run the CPU's layout only).
    ct = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
    grad = lambda: jax.grad(lambda v: jnp.sum(ops.MaskNormalize().apply({"params": params}, v, jnp.asarray(mask)) * ct))(  # noqa: E731
        jnp.asarray(x))
    mine = grad()
    monkeypatch.setattr(ops, "STATS_MINOR_ON", () if minor else (jax.default_backend(),))
    assert rel_err(mine, grad()) < 1e-5


def test_masked_attention_blocks_known_to_hole_only():
    rng = np.random.default_rng(17)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 4, 4, 8)).astype(np.float32)) for _ in range(3))
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 1:3, 1:3] = True
    v_other = jnp.where(jnp.asarray(mask)[..., None], v * 7 + 3, v)
    k_other = jnp.where(jnp.asarray(mask)[..., None], k * -2, k)
    out = np.asarray(ops.masked_self_attention(q, k, v, jnp.asarray(mask)))
    out2 = np.asarray(ops.masked_self_attention(q, k_other, v_other, jnp.asarray(mask)))
    known = ~mask
    np.testing.assert_array_equal(out[known], out2[known])
    assert not np.allclose(out[mask], out2[mask])  # hole queries still see everything


def test_bad_input_shapes_are_clear_errors():
    cfg, _, params, *_ = setup("tiny")
    model = D.from_config(cfg)
    with pytest.raises(ValueError, match="mask shape"):
        model.apply({"params": params}, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 16, 16), bool),
                    method=D.DFVQGAN.encode)
    with pytest.raises(ValueError, match="not divisible"):
        model.apply({"params": params}, jnp.zeros((1, 31, 31, 3)), None, method=D.DFVQGAN.encode)


def test_init_params_carry_logical_axes():
    cfg = D.PRESETS["tiny"]
    boxed = D.init_params(D.from_config(cfg), jax.random.key(0))
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
