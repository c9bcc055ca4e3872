import importlib.util
import os

import jax
import pytest

from lip_jax.models import mps2s, mps2s_layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["mps_cc", "mps_coco"])
def test_official_configs(name):
    config = _load(name).get_config()
    cfg = mps2s.MPSConfig.from_any(config.mps)
    assert (cfg.dim, cfg.dec_depth, cfg.enc_depth, cfg.heads, cfg.dim_head) == (1280, 24, 12, 20, 64)
    assert (cfg.vae_patch_size, cfg.vit_patch_size, cfg.img_size, cfg.kernel_size) == (8, 16, 256, 11)
    assert cfg.attn_types_dec == ("full", "nearby", "nearby", "nearby") and cfg.attn_dropout == 0.1
    assert cfg.grid == (32, 32) and cfg.cond_len == 1024 + 256 + 77 and cfg.pth_layout == "torch"
    assert config.vqgan.n_e == cfg.vqvae_vocab_size and config.vqgan.e_dim == cfg.vae_emb_dim
    assert config.sample.top_k == 128
    # parameter count of the official network without DF-VQGAN and the reranker
    n = sum(x.size for x in jax.tree_util.tree_leaves(
        jax.eval_shape(lambda r: mps2s.init_params(cfg, r), jax.random.PRNGKey(0))))
    assert 1.4e9 < n < 1.6e9, n


def test_config_validation():
    with pytest.raises(ValueError, match="unknown MP-S2S preset"):
        mps2s.MPSConfig.from_any("huge")
    with pytest.raises(ValueError, match="unknown MP-S2S config fields"):
        mps2s.MPSConfig.from_any(dict(mps2s.PRESETS["tiny"], depth=3))
    with pytest.raises(ValueError, match="attn_types_dec"):
        mps2s.MPSConfig.from_any(dict(mps2s.PRESETS["tiny"], attn_types_dec=("full", "axial")))
    with pytest.raises(ValueError, match="pth_layout"):
        mps2s.MPSConfig.from_any(dict(mps2s.PRESETS["tiny"], pth_layout="nchw"))
    with pytest.raises(ValueError, match="divisible"):
        mps2s.MPSConfig.from_any(dict(mps2s.PRESETS["tiny"], img_size=60))
    assert mps2s_layers.layer_scale_init(18) == 0.1 and mps2s_layers.layer_scale_init(19) == 1e-5
    assert mps2s_layers.layer_scale_init(24) == 1e-5 and mps2s_layers.layer_scale_init(25) == 1e-6


def test_logical_axes_cover_every_parameter():
    cfg = mps2s.MPSConfig.from_any("tiny")
    axes = mps2s.logical_axes(cfg)
    shapes = jax.eval_shape(lambda r: mps2s.init_params(cfg, r), jax.random.PRNGKey(0))
    flat_axes = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree_util.tree_leaves(shapes)
    assert len(flat_axes) == len(flat_shapes)
    for spec, s in zip(flat_axes, flat_shapes):
        assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) == len(s.shape)
