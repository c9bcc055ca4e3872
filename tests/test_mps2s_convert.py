import numpy as np
import pytest
import torch

from lip_jax.weights import torch_io
from lip_jax.weights import mps2s as conv
from lip_jax.models import mps2s
from test_mps2s_parity import RefNet

CFG = mps2s.MPSConfig.from_any("tiny")


@pytest.fixture(scope="module")
def official_state():
    torch.manual_seed(0)
    return {k: v.detach().numpy().copy() for k, v in RefNet(CFG).state_dict().items()}


def test_round_trip_bit_exact_and_loadable(official_state):
    params = conv.mps2s_from_torch(official_state, CFG)
    back = conv.mps2s_to_torch(params, CFG)
    assert set(back) == set(official_state)
    for k, v in official_state.items():
        assert back[k].shape == v.shape and back[k].dtype == v.dtype, k
        assert np.array_equal(back[k], v), k
    net = RefNet(CFG)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    # the table really renames: these official names exist and were mapped
    for key in ["encoder.transformer.resblocks.0.ln_1.weight", "encoder.transformer.resblocks.0.attn.in_proj_weight",
                "transformer_dec.layers.3.attention_scale_cond.scale", "image_pos_emb_vae.weights_2",
                "to_logits_img.1.weight", "patch_emb.weight"]:
        assert key in back


def test_axial_naming_both_accepted(official_state):
    dotted = {k.replace(".weights_", ".weights."): v for k, v in official_state.items()}
    assert any(".weights.1" in k for k in dotted)
    a = conv.mps2s_from_torch(official_state, CFG)
    b = conv.mps2s_from_torch(dotted, CFG)
    np.testing.assert_array_equal(a["image_pos_emb_vit"]["weights_1"], b["image_pos_emb_vit"]["weights_1"])
    assert set(conv.mps2s_to_torch(b, CFG, axial_naming="dot")) == set(dotted)
    with pytest.raises(ValueError, match="axial_naming"):
        conv.mps2s_to_torch(b, CFG, axial_naming="both")


def test_strict_errors(official_state):
    missing = dict(official_state)
    del missing["transformer_dec.layers.1.attention.k_linear.weight"]
    with pytest.raises(torch_io.ConversionError, match="missing 1 keys.*k_linear"):
        conv.mps2s_from_torch(missing, CFG)
    extra = dict(official_state, **{"transformer_enc.layers.9.ff_norm.weight": np.zeros(CFG.dim, np.float32)})
    with pytest.raises(torch_io.ConversionError, match="unexpected 1 keys"):
        conv.mps2s_from_torch(extra, CFG)
    bad = dict(official_state)
    bad["image_msk_emb"] = np.zeros((2, CFG.dim), np.float32)
    with pytest.raises(torch_io.ConversionError, match="mis-shaped.*image_msk_emb"):
        conv.mps2s_from_torch(bad, CFG)
    mixed = dict(official_state)
    mixed["image_pos_emb_vae.weights.0"] = mixed.pop("image_pos_emb_vae.weights_0")
    with pytest.raises(torch_io.ConversionError):
        conv.mps2s_from_torch(mixed, CFG)
    params = conv.mps2s_from_torch(official_state, CFG)
    with pytest.raises(torch_io.ConversionError):  # params of another config
        conv.mps2s_to_torch(params, mps2s.MPSConfig.from_any("mid"))


def test_full_release_checkpoint(official_state, tmp_path):
    from lip_jax.weights import dfvqgan as vconv
    from lip_jax.models import dfvqgan

    vq_cfg = dfvqgan.PRESETS["tiny"]
    vq_state = vconv.dfvqgan_to_torch(_random_vq(vq_cfg), vq_cfg)
    full = dict(official_state)
    full.update({f"vae.model.{k}": v for k, v in vq_state.items()})
    full["clip_sim.model.logit_scale"] = np.array(4.6, np.float32)
    torch_io.save_torch_checkpoint(full, str(tmp_path / "lip.pth"))
    loaded = torch_io.load_torch_checkpoint(str(tmp_path / "lip.pth"))
    tree = conv.lip_from_torch(loaded, CFG, vq_cfg)
    assert set(tree) == {"mps", "vqgan", "clip_sim"}
    back = conv.lip_to_torch(tree, CFG, vq_cfg)
    assert set(back) == set(full)
    assert all(np.array_equal(back[k], full[k]) for k in full)
    stray = dict(full, **{"vae.quantize.embedding.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(torch_io.ConversionError, match="unexpected"):
        conv.lip_from_torch(stray, CFG, vq_cfg)


def _random_vq(vq_cfg):
    import jax
    from lip_jax.weights import dfvqgan as vconv

    tmpl = vconv.param_template(vq_cfg)
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32), tmpl)
