"""`lip-jax convert` for every weight kind: .pth -> orbax -> .pth bit-exact through the CLI (kind
detected from the keys), and one-line exit-2 errors naming the key for truncated or foreign files."""

import os

import jax
import numpy as np
import pytest
import torch

from lip_jax.weights import load as AC
from lip_jax.config import load_config
from lip_jax.cli import main
from lip_jax.weights import clip as CC
from lip_jax.weights import dfvqgan as CV
from lip_jax.weights import inception as CI
from lip_jax.weights import lpips as CL
from lip_jax.weights import mps2s as CM
from lip_jax.weights.torch_io import save_torch_checkpoint
from lip_jax.models import clip as C
from lip_jax.weights.store import load_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VQ_CONFIG = os.path.join(REPO, "configs", "dfvqgan_imagenet.py") + ":tiny"
LIP_CONFIG = os.path.join(REPO, "configs", "lip_maskcoco.py") + ":tiny"
# Width 64, one head: OpenAI's head rule (width / 64) reads the lip checkpoint's clip_sim back.
SIM_CFG = C.ClipConfig(**dict(C.PRESETS["tiny"], vision_width=64, vision_heads=1, transformer_width=64,
                              transformer_heads=1))


def random_tree(template, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda t: rng.standard_normal(t.shape, dtype=np.float32), template)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One official-layout PyTorch file per kind, random weights: kind -> (path, state dict, extra args)."""
    root = tmp_path_factory.mktemp("convert")
    out = {}

    vq_cfg = load_config(VQ_CONFIG).vqgan
    state = CV.dfvqgan_to_torch(random_tree(CV.param_template(vq_cfg), 1))
    save_torch_checkpoint(state, str(root / "epoch14-chunk-0.pth"))
    out["dfvqgan"] = (root / "epoch14-chunk-0.pth", state, ["--config", VQ_CONFIG])

    cfg = load_config(LIP_CONFIG)
    sim = {f"model.{k}": v for k, v in CC.clip_to_openai(random_tree(CC.param_template(SIM_CFG), 2)).items()}
    tree = {"mps": random_tree(CM.param_template(cfg.mps), 3), "vqgan": random_tree(CV.param_template(cfg.vqgan), 4),
            "clip_sim": sim}
    state = CM.lip_to_torch(tree, None, None)  # built from the templates: no second check
    save_torch_checkpoint(state, str(root / "epoch140-chunk-0.pth"))
    out["lip"] = (root / "epoch140-chunk-0.pth", state, ["--config", LIP_CONFIG])
    out["lip_tree"] = tree

    state = CC.clip_to_openai(random_tree(CC.param_template("tiny"), 5))
    save_torch_checkpoint(state, str(root / "ViT-tiny.pt"), wrap_model=False)
    out["clip"] = (root / "ViT-tiny.pt", state, ["--clip-config", "tiny"])

    state = CL.lpips_to_torch(random_tree(CL.param_template(), 6))
    vgg, heads = CL.split_torch_state(state)  # as released: torchvision VGG16 + the lpips heads
    save_torch_checkpoint(vgg, str(root / "vgg16-397923af.pth"), wrap_model=False)
    save_torch_checkpoint(heads, str(root / "vgg.pth"), wrap_model=False)
    out["lpips"] = (root / "vgg16-397923af.pth", vgg, ["--heads", str(root / "vgg.pth")])

    v = random_tree(CI.variables_template(1008), 7)
    state = CI.inception_to_torch(v["params"], v["batch_stats"])
    save_torch_checkpoint(state, str(root / "pt_inception.pth"), wrap_model=False)
    out["inception"] = (root / "pt_inception.pth", state, [])
    return out


def load_state(path, wrapped):
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj["model"] if wrapped else obj


def assert_same(state, back, what):
    assert sorted(back) == sorted(state), what
    for k, v in state.items():
        got = back[k].numpy()
        assert got.dtype == np.asarray(v).dtype and got.shape == np.shape(v), (what, k)
        np.testing.assert_array_equal(got, np.asarray(v), err_msg=f"{what} {k}")


@pytest.mark.parametrize("kind", ["dfvqgan", "lip", "clip", "lpips", "inception"])
def test_round_trip_through_the_cli_is_bit_exact(files, tmp_path, capsys, kind):
    pth, state, extra = files[kind]
    orbax, back = str(tmp_path / "orbax"), str(tmp_path / "back.pth")
    assert main(["convert", "--from", str(pth), "--to", orbax, *extra]) == 0  # kind read from the keys
    if kind == "lpips":  # written back as the two files it came from
        extra = ["--heads", str(tmp_path / "heads.pth")]
    assert main(["convert", "--from", orbax, "--to", back, *extra]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {orbax} ({kind})", f"wrote {back} ({kind})"]
    assert_same(state, load_state(back, wrapped=kind in ("dfvqgan", "lip")), kind)
    if kind == "lpips":
        _, heads = files["lpips"][2]
        assert_same(torch.load(heads), torch.load(tmp_path / "heads.pth"), "lpips heads")
    if kind == "lip":  # the orbax tree is what inpaint loads, reranker included
        cfg = load_config(LIP_CONFIG)
        got = AC.load_lip(orbax, cfg.mps, cfg.vqgan)
        assert set(got) == {"mps", "vqgan", "clip"} and got["clip"][1] == SIM_CFG
    if kind == "inception":
        assert set(load_params(orbax)) == {"params", "batch_stats"}


def test_lip_part_for_training(files, tmp_path):
    """`--only mps`: the MP-S2S of a release, as train.init_ckpt reads it."""
    pth, _, extra = files["lip"]
    assert main(["convert", "--from", str(pth), "--to", str(tmp_path / "mps"), "--only", "mps", *extra]) == 0
    got, want = load_params(str(tmp_path / "mps")), files["lip_tree"]["mps"]
    paths = lambda t: [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(t)[0]]  # noqa: E731
    assert paths(got) == paths(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.parametrize("kind,drop", [
    ("dfvqgan", "quantize.embedding.weight"),
    ("lip", "transformer_dec.layers.1.attention_scale.scale"),
    ("clip", "visual.ln_post.bias"),
    ("lpips", "features.7.bias"),
])
def test_truncated_checkpoint_names_the_key(files, tmp_path, capsys, kind, drop):
    pth, state, extra = files[kind]
    assert drop in state, sorted(state)[:20]
    cut = str(tmp_path / "cut.pth")
    save_torch_checkpoint({k: v for k, v in state.items() if k != drop}, cut, wrap_model=kind in ("dfvqgan", "lip"))
    assert main(["convert", "--kind", kind, "--from", cut, "--to", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lip-jax: error: ") and cut in err[0], err
    assert "missing 1 keys: " + drop in err[0], err
    assert not os.path.exists(tmp_path / "o")


def test_foreign_truncated_and_undetectable_files(files, tmp_path, capsys):
    vq_pth = str(files["dfvqgan"][0])

    def error(*args):
        assert main(["convert", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lip-jax: error: "), err
        return err[0]

    # a DF-VQGAN file read as another kind: the keys are named
    assert "missing visual.conv1.weight" in error("--kind", "clip", "--from", vq_pth, "--to", str(tmp_path / "a"))
    msg = error("--kind", "inception", "--from", vq_pth, "--to", str(tmp_path / "b"))
    assert vq_pth in msg and "unexpected" in msg and "decoder.conv_in.weight" in msg
    # bytes cut off
    data = open(vq_pth, "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    cut = str(tmp_path / "cut.pth")
    assert "cannot read as a PyTorch checkpoint" in error("--from", cut, "--to", str(tmp_path / "c"))
    # keys of no known kind
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "foo.pth")
    assert "cannot tell which kind" in error("--from", str(tmp_path / "foo.pth"), "--to", str(tmp_path / "d"))
    # model kinds need their config; a config for another model is refused with the keys
    lip = str(files["lip"][0])
    assert "--kind lip needs --config" in error("--kind", "lip", "--from", lip, "--to", str(tmp_path / "e"))
    msg = error("--kind", "lip", "--config", LIP_CONFIG, "--from", vq_pth, "--to", str(tmp_path / "f"))
    assert "missing" in msg and vq_pth in msg
    assert "no such file" in error("--from", str(tmp_path / "none.pth"), "--to", str(tmp_path / "g"))
    # an existing output directory is never overwritten
    os.makedirs(tmp_path / "exists")
    assert "already exists" in error("--from", vq_pth, "--to", str(tmp_path / "exists"), "--config", VQ_CONFIG)
