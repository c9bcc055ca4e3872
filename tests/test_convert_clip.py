"""CLIP converters: OpenAI state dict / TorchScript archive / Hugging Face CLIPModel <-> Flax."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import torch_clip as T
from lip_jax.weights import clip as CC
from lip_jax.weights.torch_io import load_torch_checkpoint, ConversionError
from lip_jax.models import clip as C
from lip_jax.models.tokenizer import get_tokenizer

CFG = C.ClipConfig.from_any("tiny")


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    return T.randomize_(T.CLIP(C.PRESETS["tiny"]), seed=2)


def _inputs(n=3):
    pixels = np.random.default_rng(0).normal(size=(n, 32, 32, 3)).astype(np.float32)
    ids = get_tokenizer("bytes", CFG.context_length)(["a red car", "two cats on a mat", "x"][:n])
    return pixels, ids


def _features(params, cfg, pixels, ids):
    m, v = C.CLIP(cfg), {"params": params}
    return (np.asarray(m.apply(v, jnp.asarray(pixels), method=C.CLIP.encode_image)),
            np.asarray(m.apply(v, jnp.asarray(ids), method=C.CLIP.encode_text)))


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _check_parity(params, ref_model, cfg=CFG):
    pixels, ids = _inputs()
    img, txt = _features(params, cfg, pixels, ids)
    with torch.no_grad():
        want_img = ref_model.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
        want_txt = ref_model.encode_text(torch.from_numpy(ids).long()).numpy()
    assert rel(img, want_img) < 1e-4 and rel(txt, want_txt) < 1e-4


def test_openai_state_dict_parity_and_bit_exact_round_trip(ref, tmp_path):
    path = str(tmp_path / "clip.pt")
    torch.save(ref.state_dict(), path)
    params, cfg = CC.load_clip(path, "tiny")
    assert cfg == CFG
    _check_parity(params, ref)
    back = CC.clip_to_openai(params, CFG)
    sd = ref.state_dict()
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].shape == tuple(v.shape) and np.array_equal(back[k], v.numpy()), k
    fresh = T.CLIP(C.PRESETS["tiny"])
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def _save_torchscript(module, path, how):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, still OpenAI's format
        if how == "trace":  # OpenAI's releases are traced
            ex = (torch.zeros(1, 3, 32, 32), torch.zeros(1, CFG.context_length, dtype=torch.long))
            torch.jit.trace(module.eval(), ex).save(path)
        else:
            scripted = torch.jit.script(module)
            (scripted.half() if how == "half" else scripted).save(path)
        return dict(torch.jit.load(path).state_dict())  # the test's reference: the library never runs torch.jit


@pytest.mark.parametrize("how", ["script", "trace", "half"])
def test_torchscript_archive_like_openai_release(ref, tmp_path, how, monkeypatch):
    path = str(tmp_path / "ViT-tiny.pt")
    want = _save_torchscript(ref, path, how)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load called"))
    got = load_torch_checkpoint(path)  # read as data: keys, order, dtypes and values of state_dict()
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.numpy().dtype and np.array_equal(got[k], v.numpy()), k
    params, _ = CC.load_clip(path, CFG)
    sd_path = str(tmp_path / "state_dict.pt")
    torch.save(want, sd_path)
    same, _ = CC.load_clip(sd_path, CFG)  # the same weights as a plain state dict convert identically
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(same)):
        np.testing.assert_array_equal(a, b)
    if how != "half":
        _check_parity(params, ref)


def test_fp16_weights_and_extra_scalars_as_in_the_release(ref):
    state = {k: v.half() for k, v in ref.state_dict().items()}
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(16), vocab_size=torch.tensor(259))
    params = CC.clip_from_openai(state, CFG)
    assert all(np.asarray(x).dtype == np.float32 for x in jax.tree_util.tree_leaves(params))
    np.testing.assert_array_equal(params["visual"]["proj"], state["visual.proj"].float().numpy())


def test_strict_errors_name_the_keys(ref):
    sd = dict(ref.state_dict())
    bad = dict(sd)
    del bad["visual.ln_post.bias"]
    bad["visual.extra.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError,
                       match=r"missing 1 keys: visual\.ln_post\.bias.*unexpected 1 keys: visual\.extra\.weight"):
        CC.clip_from_openai(bad, CFG)
    bad = dict(sd)
    bad["visual.proj"] = torch.zeros(32, 7)
    with pytest.raises(ConversionError, match=r"visual\.proj \(32, 7\) != \(32, 24\)"):
        CC.clip_from_openai(bad, CFG)
    with pytest.raises(ConversionError, match="no such CLIP checkpoint"):
        CC.load_clip("/nonexistent/dir/clip.pt")


def test_infer_config_follows_openai_build_model():
    c = dict(C.PRESETS["tiny"], vision_width=128, vision_heads=2, transformer_width=64, transformer_heads=1,
             vision_layers=3)
    state = T.CLIP(c).state_dict()
    got = CC.infer_config(state)
    assert got == C.ClipConfig(**c)
    assert CC.infer_config(state, tokenizer="clip").tokenizer == "clip"
    with pytest.raises(ConversionError, match="not an OpenAI CLIP state dict"):
        CC.infer_config({"foo": np.zeros(1)})


def _hf_model(seed=0):
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=259, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=258, bos_token_id=257,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=24)
    torch.manual_seed(seed)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # HF's init leaves biases at 0 and LayerNorm at 1: make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _hf_features(model, pixels, ids):
    with torch.no_grad():
        img = model.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
        txt = model.get_text_features(input_ids=torch.from_numpy(ids).long())
    pick = lambda o: (o if torch.is_tensor(o) else o.pooler_output).numpy()  # noqa: E731
    return pick(img), pick(txt)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hugging_face_clipmodel_directory(tmp_path, fmt):
    model = _hf_model()
    d = tmp_path / "hf"
    model.save_pretrained(d)
    if fmt == "bin":
        (d / "model.safetensors").unlink()
        torch.save(model.state_dict(), d / "pytorch_model.bin")
    params, cfg = CC.load_clip(str(d))
    assert cfg == CFG
    pixels, ids = _inputs()
    img, txt = _features(params, cfg, pixels, ids)
    want_img, want_txt = _hf_features(model, pixels, ids)
    assert rel(img, want_img) < 1e-4 and rel(txt, want_txt) < 1e-4
    assert float(params["logit_scale"]) == float(model.logit_scale.detach())
    # HF -> OpenAI layout -> Flax -> OpenAI layout is bit-exact
    oa = CC.hf_to_openai(model.state_dict())
    back = CC.clip_to_openai(params, cfg)
    assert set(back) == set(oa) and all(np.array_equal(back[k], oa[k]) for k in oa)


def test_hugging_face_errors(tmp_path):
    model = _hf_model()
    sd = dict(model.state_dict())
    sd["vision_model.encoder.layers.0.self_attn.q_proj.weight_extra"] = torch.zeros(1)
    with pytest.raises(ConversionError,
                       match="unexpected 1 keys: vision_model.encoder.layers.0.self_attn.q_proj.weight_extra"):
        CC.hf_to_openai(sd)
    sd = dict(model.state_dict())
    del sd["text_model.encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(ConversionError, match=r"text_model layer 1 bias: have only \['q', 'v'\]"):
        CC.hf_to_openai(sd)
    cfg = model.config.to_dict()
    cfg["vision_config"]["hidden_act"] = "gelu"
    with pytest.raises(ConversionError, match="hidden_act"):
        CC.hf_config_to_clip(cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no config.json"):
        CC.load_clip(str(tmp_path / "empty"))
