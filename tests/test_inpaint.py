"""Inpainting pipeline and `lip-jax inpaint` end to end on tiny random models: DF-VQGAN "reduced"
at 32 px (4x4 tokens over a 128 codebook), a matching MP-S2S and the tiny CLIP.

Photos of any size: the CLI and `Inpainter` cut a window of the model's size around the hole and paste
only the hole back."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

import torch_clip as T
from random_weights import random_params
from lip_jax.weights import load as AC
from lip_jax.app import pipeline as I
from lip_jax.cli import main
from lip_jax.images import to_uint8
from lip_jax.weights import clip as CC
from lip_jax.weights.torch_io import save_torch_checkpoint
from lip_jax.weights.mps2s import lip_to_torch
from lip_jax.models import clip as C
from lip_jax.models import dfvqgan as D
from lip_jax.weights.store import save_params

VQ = dict(D.PRESETS["reduced"])
MPS = dict(img_size=32, vae_patch_size=8, vit_patch_size=16, vqvae_vocab_size=128, vae_emb_dim=16, dim=32,
           dec_depth=2, enc_depth=1, heads=2, dim_head=16, ff_mult=4, attn_dropout=0.0, ff_dropout=0.0,
           kernel_size=3, text_vocab_size=259, text_len=16, text_width=32, text_layers=1, text_heads=2,
           tokenizer="bytes")
CONFIG_PY = f"""import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.mps = ml_collections.ConfigDict({MPS!r})
    c.vqgan = ml_collections.ConfigDict({VQ!r})
    if arg == "mismatch":
        c.vqgan.n_e = 64
    c.sample = ml_collections.ConfigDict(dict(top_k=128, temperature=1.0, num_samples=3))
    return c
"""


@pytest.fixture(scope="module")
def models():
    from lip_jax.weights import dfvqgan as CV
    from lip_jax.weights import mps2s as CM

    vq = random_params(CV.param_template(VQ), 1)
    mps = random_params(CM.param_template(MPS), 2)
    clip = random_params(CC.param_template("tiny"), 3)
    return vq, mps, clip


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    mask = np.zeros((2, 32, 32), bool)
    mask[0, 4:14, 9:30] = True
    mask[1, 20:32, 0:5] = True
    return image, mask


def run(models, data, texts=("a red car", "two cats"), **kw):
    vq, mps, _ = models
    kw = dict(dict(num_samples=3, top_k=128, temperature=1.0, seed=0), **kw)
    return I.inpaint(vq, VQ, mps, MPS, *data, list(texts), **kw)


def test_known_tokens_kept_shapes_and_masked_skip_decoding(models, data):
    vq, _, _ = models
    image, mask = data
    out = run(models, data)
    assert out["best"].shape == (2, 32, 32, 3) and out["candidates"].shape == (2, 3, 32, 32, 3)
    assert out["tokens"].shape == (2, 3, 16) and out["scores"] is None
    np.testing.assert_array_equal(out["order"], np.broadcast_to(np.arange(3), (2, 3)))
    np.testing.assert_array_equal(out["best"], out["candidates"][:, 0])
    # latent hole = any pixel of the 8x8 cell is a hole
    want_tm = mask.reshape(2, 4, 8, 4, 8).any(axis=(2, 4)).reshape(2, 16)
    np.testing.assert_array_equal(out["token_mask"], want_tm)
    # independently: encode the defective image, decode each candidate with its skips
    model = D.from_config(VQ)
    x = jnp.asarray(np.where(mask[..., None], 0.0, image))
    enc = model.apply({"params": vq}, x, jnp.asarray(mask), method=D.DFVQGAN.encode)
    known = np.asarray(enc["indices"]).reshape(2, 16)
    for b in range(2):
        for s in range(3):
            t = out["tokens"][b, s]
            np.testing.assert_array_equal(t[~want_tm[b]], known[b][~want_tm[b]])
            one = lambda a: a[b:b + 1]  # noqa: E731
            img = model.apply({"params": vq}, jnp.asarray(t.reshape(1, 4, 4)), [one(h) for h in enc["skips"]],
                              [one(m) for m in enc["skip_masks"]], method=D.DFVQGAN.decode_indices)
            want = np.asarray(img)[0]
            assert np.abs(out["candidates"][b, s] - want).max() <= 1e-4 * np.abs(want).max()
    # samples differ somewhere in the holes (random model, top_k 128)
    assert any(not np.array_equal(out["tokens"][b, 0], out["tokens"][b, s]) for b in range(2) for s in (1, 2))


def test_seed_determinism_and_batch_of_one(models, data):
    a, b = run(models, data, seed=5), run(models, data, seed=5)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["candidates"], b["candidates"])
    c = run(models, data, seed=6)
    assert not np.array_equal(a["tokens"], c["tokens"])
    vq, mps, _ = models
    single = I.inpaint(vq, VQ, mps, MPS, data[0][0], data[1][0], "", num_samples=3, seed=1)
    assert single["candidates"].shape == (1, 3, 32, 32, 3)


def test_greedy_candidates_identical(models, data):
    out = run(models, data, top_k=1, num_samples=3)
    for s in (1, 2):
        np.testing.assert_array_equal(out["tokens"][:, 0], out["tokens"][:, s])
        np.testing.assert_array_equal(out["candidates"][:, 0], out["candidates"][:, s])


def test_clip_reranking_follows_independent_torch_scores(models, data):
    _, _, clip = models
    texts = ("a red car", "two cats")
    plain = run(models, data, texts, seed=3)
    ranked = run(models, data, texts, seed=3, clip=(clip, "tiny"))
    # independent CLIP scores of the unranked candidates, with the PyTorch reference
    ref = T.CLIP(C.PRESETS["tiny"]).eval()
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in CC.clip_to_openai(clip).items()})
    from lip_jax.models.tokenizer import get_tokenizer

    ids = torch.from_numpy(get_tokenizer("bytes", 16)(list(texts))).long()
    cands = np.clip(plain["candidates"], -1, 1)
    mean, std = np.asarray(C.IMAGE_MEAN), np.asarray(C.IMAGE_STD)
    with torch.no_grad():
        txt = ref.encode_text(ids)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        px = torch.from_numpy((((cands + 1) / 2 - mean) / std).astype(np.float32).reshape(6, 32, 32, 3))
        img = ref.encode_image(px.permute(0, 3, 1, 2))
        img = (img / img.norm(dim=-1, keepdim=True)).reshape(2, 3, -1)
        want = 100 * (img * txt[:, None]).sum(-1).numpy()
    order = np.argsort(-want, axis=1, kind="stable")
    np.testing.assert_array_equal(ranked["order"], order)
    np.testing.assert_allclose(ranked["scores"], np.take_along_axis(want, order, axis=1), rtol=1e-4, atol=1e-4)
    assert (np.diff(ranked["scores"], axis=1) <= 0).all()
    for b in range(2):
        np.testing.assert_array_equal(ranked["candidates"][b], plain["candidates"][b][order[b]])
    np.testing.assert_array_equal(ranked["best"], ranked["candidates"][:, 0])


def test_clip_score_batching_matches_one_batch(models, data):
    from lip_jax.eval.clip_score import clip_score

    _, _, clip = models
    imgs = np.concatenate([data[0], data[0][::-1], data[0][:1]])
    texts = ["a", "b", "c", "", "e"]
    full = clip_score(clip, "tiny", imgs, texts, batch_size=64)
    np.testing.assert_allclose(clip_score(clip, "tiny", imgs, texts, batch_size=2), full, rtol=1e-5, atol=1e-4)
    assert full.shape == (5,) and np.all(np.abs(full) <= 100)
    with pytest.raises(ValueError, match="5 images but 4 texts"):
        clip_score(clip, "tiny", imgs, texts[:4])


def test_bad_pipeline_inputs(models, data):
    vq, mps, _ = models
    image, mask = data
    with pytest.raises(ValueError, match="needs a hole"):
        I.inpaint(vq, VQ, mps, MPS, image, np.zeros_like(mask), "x")
    with pytest.raises(ValueError, match="codebook 64 != MP-S2S vqvae_vocab_size 128"):
        I.inpaint(vq, dict(VQ, n_e=64), mps, MPS, image, mask, "x")
    with pytest.raises(ValueError, match="2 strings"):
        I.inpaint(vq, VQ, mps, MPS, image, mask, ["only one"])


def test_load_lip_checkpoint_orbax_and_official_pth(models, tmp_path):
    vq, mps, clip = models
    d = str(tmp_path / "orbax")
    save_params(d, {"mps": mps, "vqgan": vq})
    got = AC.load_lip(d, MPS, VQ)
    assert set(got) == {"mps", "vqgan"}
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves({"mps": mps, "vqgan": vq})):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # official layout, with a clip_sim reranker (width 64: OpenAI's head count rule gives 1 head)
    ccfg = C.ClipConfig(**dict(C.PRESETS["tiny"], vision_width=64, vision_heads=1, transformer_width=64,
                               transformer_heads=1))
    cparams = random_params(CC.param_template(ccfg), 4)
    sim = {f"model.{k}": v for k, v in CC.clip_to_openai(cparams).items()}
    pth = str(tmp_path / "lip.pth")
    save_torch_checkpoint(lip_to_torch({"mps": mps, "vqgan": vq, "clip_sim": sim}, MPS, VQ), pth)
    got = AC.load_lip(pth, MPS, VQ)
    assert got["clip"][1] == ccfg
    for a, b in zip(jax.tree_util.tree_leaves((got["mps"], got["vqgan"], got["clip"][0])),
                    jax.tree_util.tree_leaves((mps, vq, cparams))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    from lip_jax.weights.errors import CheckpointError

    wrong = str(tmp_path / "wrong")
    save_params(wrong, {"mps": mps, "vqgan": {"x": np.zeros(2)}})
    with pytest.raises(CheckpointError, match=r"parameters do not match.*\['vqgan'\]"):
        AC.load_lip(wrong, MPS, VQ)


# --- command line ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    vq, mps, clip = models
    root = tmp_path_factory.mktemp("cli")
    (root / "cfg.py").write_text(CONFIG_PY)
    save_params(str(root / "ckpt"), {"mps": mps, "vqgan": vq})
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in CC.clip_to_openai(clip).items()}, root / "clip.pt")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "img.png")
    m = np.zeros((32, 32), np.uint8)
    m[10:20, 3:17] = 255
    Image.fromarray(m).save(root / "mask.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "nohole.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(root / "full.png")
    Image.fromarray(np.full((24, 32), 255, np.uint8)).save(root / "small.png")
    return root


def _argv(root, *extra, mask="mask.png", config="cfg.py"):
    # every test writes the module's out.png again: --overwrite (an existing --out is refused without it)
    return ["inpaint", "--config", str(root / config), "--ckpt", str(root / "ckpt"), "--image", str(root / "img.png"),
            "--mask", str(root / mask), "--text", "a red car", "--out", str(root / "out.png"), "--overwrite", *extra]


def test_cli_writes_best_and_grid_like_the_pipeline(models, files, capsys):
    root = files
    rc = main(_argv(root, "--clip", str(root / "clip.pt"), "--clip-config", "tiny", "--grid", str(root / "grid.png"),
                    "--seed", "4"))
    err = capsys.readouterr().err
    assert rc == 0, err
    for stage in ("encode:", "sample:", "decode:", "rerank:"):
        assert stage in err
    best = np.asarray(Image.open(root / "out.png"))
    grid = np.asarray(Image.open(root / "grid.png"))
    assert best.shape == (32, 32, 3) and grid.shape == (32, 5 * 32 + 4 * 2, 3)  # input, mask, 3 candidates
    vq, mps, clip = models
    image = np.asarray(Image.open(root / "img.png")).astype(np.float32) / 127.5 - 1
    mask = np.asarray(Image.open(root / "mask.png")) > 0
    want = I.inpaint(vq, VQ, mps, MPS, image, mask, "a red car", num_samples=3, seed=4, clip=(clip, "tiny"))
    # At the model's size the window is the whole image; only the hole is pasted back.
    pasted = lambda x: np.where(mask[..., None], to_uint8(x), np.asarray(Image.open(root / "img.png")))  # noqa: E731
    np.testing.assert_array_equal(best, pasted(want["best"][0]))
    np.testing.assert_array_equal(grid[:, -32:], pasted(want["candidates"][0, -1]))


def test_cli_all_hole_mask_and_empty_text_are_allowed(files, capsys):
    root = files
    argv = _argv(root, mask="full.png")
    argv[argv.index("--text") + 1] = ""
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "generating from the text alone" in err and "unconditional on text" in err
    assert np.asarray(Image.open(root / "out.png")).shape == (32, 32, 3)


@pytest.mark.parametrize("case,match", [
    ("missing_image", "image file not found"),
    ("mask_size", "mask is 32x24 but the image is 32x32"),
    ("no_hole", "mask has no hole"),
    ("missing_ckpt", "no such checkpoint"),
    ("config_mismatch", "codebook 64 != MP-S2S"),
    ("bad_top_k", "--top-k=0: out of range [1, 2147483647]"),
])
def test_cli_bad_inputs_exit_2_with_one_line(files, capsys, case, match):
    root = files
    argv = {
        "missing_image": lambda: [a.replace("img.png", "nope.png") for a in _argv(root)],
        "mask_size": lambda: _argv(root, mask="small.png"),
        "no_hole": lambda: _argv(root, mask="nohole.png"),
        "missing_ckpt": lambda: [a.replace(os.sep + "ckpt", os.sep + "nockpt") for a in _argv(root)],
        "config_mismatch": lambda: _argv(root, config="cfg.py:mismatch"),
        "bad_top_k": lambda: _argv(root, "--top-k", "0"),
    }[case]()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lip-jax: error: ") and match in err[0], err


# --- photos at their own size ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo(files):
    """A 1000x750 photo with a small hole, and a hole larger than the model's 32 px window."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (750, 1000, 3), dtype=np.uint8)
    Image.fromarray(image).save(files / "photo.png")
    small = np.zeros((750, 1000), np.uint8)
    small[400:412, 600:615] = 255
    Image.fromarray(small).save(files / "photo_hole.png")
    large = np.zeros((750, 1000), np.uint8)
    large[100:400, 200:700] = 255
    Image.fromarray(large).save(files / "photo_big_hole.png")
    return image, small > 0, large > 0


@pytest.mark.parametrize("hole", ["photo_hole.png", "photo_big_hole.png"])
def test_cli_photo_comes_back_at_its_size_unchanged_outside_the_hole(files, photo, hole, capsys):
    image, small, large = photo
    mask = small if hole == "photo_hole.png" else large
    argv = _argv(files, "--num-samples", "1", mask=hole)
    argv[argv.index("--image") + 1] = str(files / "photo.png")
    assert main(argv) == 0, capsys.readouterr().err
    out = np.asarray(Image.open(files / "out.png"))
    assert out.shape == (750, 1000, 3)
    np.testing.assert_array_equal(out[~mask], image[~mask])  # bit-identical outside the hole
    assert (out[mask] != image[mask]).any(axis=-1).mean() > 0.5


def test_inpainter_equals_the_cli_and_no_composite_replaces_the_window(models, files, photo, capsys):
    vq, mps, _ = models
    image, small, _ = photo
    from lip_jax.config import load_config

    inpainter = I.Inpainter({"mps": mps, "vqgan": vq}, load_config(str(files / "cfg.py")))
    out = inpainter(str(files / "photo.png"), str(files / "photo_hole.png"), "a red car", num_samples=1, seed=3)
    argv = _argv(files, "--num-samples", "1", "--seed", "3", mask="photo_hole.png")
    argv[argv.index("--image") + 1] = str(files / "photo.png")
    assert main(argv) == 0, capsys.readouterr().err
    np.testing.assert_array_equal(out.images[0], np.asarray(Image.open(files / "out.png")))
    # --invert-mask: the inverted file marks what to keep, so the same hole is filled.
    Image.fromarray(((~small) * 255).astype(np.uint8)).save(files / "keep.png")
    inverted = inpainter(image, str(files / "keep.png"), "a red car", num_samples=1, seed=3, invert_mask=True)
    np.testing.assert_array_equal(inverted.images[0], out.images[0])
    # Without paste-back the whole window is the model's output, and nothing outside it changes.
    raw = inpainter(image, small, "a red car", num_samples=1, seed=3, composite=False)
    w = raw.windows[0]
    assert w.side == 32
    outside = np.ones(small.shape, bool)
    outside[w.top:w.bottom, w.left:w.right] = False
    np.testing.assert_array_equal(raw.images[0][outside], image[outside])
    np.testing.assert_array_equal(raw.images[0][small], out.images[0][small])


def test_opaque_rgba_mask_and_16_bit_image_read_like_their_plain_twins(files, photo, capsys):
    """One reading rule for every command: alpha is transparency (never "hole"), 16-bit is scaled."""
    from lip_jax.images import read_image, read_mask

    m = np.zeros((32, 32), np.uint8)
    m[10:20, 3:17] = 255
    rgba = np.dstack([m, m, m, np.full_like(m, 255)])  # opaque everywhere, white = hole
    Image.fromarray(rgba, "RGBA").save(files / "mask_rgba.png")
    np.testing.assert_array_equal(read_mask(files / "mask_rgba.png"), m > 0)
    grey = np.random.default_rng(2).integers(0, 256, (32, 32)).astype(np.uint16)
    Image.fromarray(grey * 257).save(files / "img16.png")  # 16-bit PNG, same picture
    Image.fromarray(grey.astype(np.uint8)).save(files / "img8.png")
    np.testing.assert_array_equal(read_image(files / "img16.png"), read_image(files / "img8.png"))
    outs = []
    for image, mask in (("img8.png", "mask.png"), ("img16.png", "mask_rgba.png")):
        argv = _argv(files, "--num-samples", "1", mask=mask)
        argv[argv.index("--image") + 1] = str(files / image)
        assert main(argv) == 0, capsys.readouterr().err
        outs.append(np.asarray(Image.open(files / "out.png")))
    np.testing.assert_array_equal(outs[0], outs[1])
