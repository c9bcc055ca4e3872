"""CLIP vision tower, full CLIP model and image preprocessing against the PyTorch reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import linen as nn

import torch_clip as T
from lip_jax.weights.clip import clip_from_openai
from lip_jax.models import clip as C
from lip_jax.models.tokenizer import get_tokenizer

CFG = C.ClipConfig.from_any("tiny")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ref = T.randomize_(T.CLIP(C.PRESETS["tiny"]), seed=1)
    params = jax.tree_util.tree_map(jnp.asarray, clip_from_openai(ref.state_dict(), CFG))
    return ref, params


def rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def test_encode_image_text_and_logits_match_torch(models):
    ref, params = models
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    ids = get_tokenizer("bytes", CFG.context_length)(["a red car", "two cats", ""])
    model = C.CLIP(CFG)
    v = {"params": params}
    with torch.no_grad():
        t_px, t_ids = torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(ids).long()
        want_img, want_txt, want_logits = ref.encode_image(t_px), ref.encode_text(t_ids), ref(t_px, t_ids)
    assert rel(model.apply(v, jnp.asarray(pixels), method=C.CLIP.encode_image), want_img.numpy()) < 1e-4
    assert rel(model.apply(v, jnp.asarray(ids), method=C.CLIP.encode_text), want_txt.numpy()) < 1e-4
    per_image, per_text = model.apply(v, jnp.asarray(pixels), jnp.asarray(ids))
    assert rel(per_image, want_logits.numpy()) < 1e-4
    np.testing.assert_array_equal(np.asarray(per_text), np.asarray(per_image).T)


def test_vision_tower_alone_is_the_visual_subtree(models):
    ref, params = models
    tower = C.ClipVision(32, 8, 32, 2, 4, 24)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    got = tower.apply({"params": params["visual"]}, jnp.asarray(x))
    with torch.no_grad():
        want = ref.visual(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert rel(got, want) < 1e-4
    with pytest.raises(ValueError, match=r"\[B, 32, 32, 3\]"):
        tower.apply({"params": params["visual"]}, jnp.zeros((1, 64, 64, 3)))


def test_every_parameter_has_logical_axis_names():
    r = CFG.image_resolution
    boxed = jax.eval_shape(lambda k: C.CLIP(CFG).init(k, jnp.zeros((1, r, r, 3)), jnp.zeros((1, 16), jnp.int32)),
                           jax.random.PRNGKey(0))["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) and len(x.names) == len(x.value.shape) for x in leaves)
    names = {n for x in leaves for n in x.names}
    assert names <= {"vocab", "ctx", "embed", "qkv", "mlp", "norm", "proj", "patch_h", "patch_w", "rgb"}


def _torch_preprocess(x, size, mode):
    t = (torch.from_numpy(x).clamp(-1, 1) + 1) / 2
    t = t.permute(0, 3, 1, 2)
    if mode == "nearest":
        t = F.interpolate(t, size=size)
    else:
        h, w = t.shape[-2:]
        nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        t = F.interpolate(t, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
        t = t[..., top:top + size, left:left + size]
    mean, std = torch.tensor(C.IMAGE_MEAN)[:, None, None], torch.tensor(C.IMAGE_STD)[:, None, None]
    return ((t - mean) / std).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("shape", [(2, 48, 64, 3), (1, 64, 40, 3), (1, 32, 32, 3)])
def test_preprocess_bicubic_matches_torch_antialiased_bicubic(shape):
    x = np.random.default_rng(2).uniform(-1.1, 1.1, shape).astype(np.float32)
    got = np.asarray(C.preprocess(jnp.asarray(x), 32))
    want = _torch_preprocess(x, 32, "bicubic")
    assert got.shape == (shape[0], 32, 32, 3)
    assert np.abs(got - want).max() < 1e-5  # same antialiased Keys (a = -0.5) kernel


def test_preprocess_nearest_matches_the_official_reranker_resize():
    x = np.random.default_rng(3).uniform(-1.1, 1.1, (2, 40, 56, 3)).astype(np.float32)
    got = np.asarray(C.preprocess(jnp.asarray(x), 32, resize="nearest"))
    np.testing.assert_allclose(got, _torch_preprocess(x, 32, "nearest"), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="resize"):
        C.preprocess(jnp.asarray(x), 32, resize="bilinear")
