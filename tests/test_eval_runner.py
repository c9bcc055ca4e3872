"""`lip-jax eval` end to end on a generated MaskCOCO-layout set (5 images, 32 px) with the tiny
config (`reduced` DF-VQGAN + small MP-S2S, random weights as an orbax {mps, vqgan} directory and
as an official-format .pth; the tiny CLIP as an OpenAI state dict): layout, metrics recomputed
independently, interruption and resumption, bad input."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from eval_data import write_dataset
from random_weights import random_params

from lip_jax.weights import load as AC
from lip_jax.app import evaluate as E
from lip_jax.app import pipeline as P
from lip_jax.config import load_config
from lip_jax.cli import main
from lip_jax.weights import clip as CC
from lip_jax.weights import dfvqgan as CV
from lip_jax.weights import lpips as CL
from lip_jax.weights import mps2s as CM
from lip_jax.weights.torch_io import save_torch_checkpoint
from lip_jax.data import open_source
from lip_jax.images import from_uint8, to_uint8
from lip_jax.eval import metrics as M
from lip_jax.eval import folder as F
from lip_jax.eval.clip_score import clip_score
from lip_jax.models import clip as C
from lip_jax.models.lpips import LPIPS
from lip_jax.weights.store import save_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "lip_maskcoco.py") + ":tiny"
N = 5
# Compilation dominates: sample_K 3, batches of 2, the tiny CLIP resized bicubic are the programs
# tests/test_inpaint.py compiles too (one pytest process shares them).
SETTINGS = ["--config.eval.sample_K=3", "--config.eval.best_n=2", "--config.eval.batch_size=2",
            "--config.eval.clip_resize=bicubic"]
CLIP_CFG = C.ClipConfig.from_any("tiny")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    cfg = load_config(CONFIG)
    vq = random_params(CV.param_template(cfg.vqgan), 1)
    mps = random_params(CM.param_template(cfg.mps), 2)
    clip = random_params(CC.param_template(CLIP_CFG), 3)
    save_torch_checkpoint(CC.clip_to_openai(clip), str(root / "clip.pt"), wrap_model=False)
    pth = str(root / "lip.pth")
    save_torch_checkpoint(CM.lip_to_torch({"mps": mps, "vqgan": vq}, None, None), pth)
    ckpt = str(root / "lip")
    save_params(ckpt, {"mps": mps, "vqgan": vq})
    lp = random_params(CL.param_template(), 4)
    save_params(str(root / "lpips"), lp)
    write_dataset(str(root / "data"))
    return dict(root=root, cfg=cfg, vq=vq, mps=mps, clip=clip, lpips=lp, ckpt=ckpt, pth=pth, data=str(root / "data"))


def argv(env, out, *extra):
    return ["eval", "--config", CONFIG, "--ckpt", env["ckpt"], "--data", env["data"], "--out", str(out),
            "--clip", str(env["root"] / "clip.pt"), "--clip-config", "tiny", *SETTINGS, *extra]


W = np.random.default_rng(7).standard_normal((32 * 32 * 3, 16)).astype(np.float32) / 50


def stub_features(images):
    """Stand-in for the Inception network (tested in test_inception_fid.py), 16-d so that the
    float64 Frechet distance is instant: the FID plumbing."""
    return np.asarray(images, np.float32).reshape(len(images), -1) @ W


@pytest.fixture(scope="module")
def full_run(env):
    """One uninterrupted run with every metric (FID through the stub feature network)."""
    out = env["root"] / "full"
    mp = pytest.MonkeyPatch()
    mp.setattr(AC, "load_inception_any", lambda path: {"stub": path})
    mp.setattr(F, "inception_features_fn", lambda variables: stub_features)
    try:
        (env["root"] / "stub.pth").write_bytes(b"")
        rc = main(argv(env, out, "--lpips", str(env["root"] / "lpips"), "--fid-weights",
                       str(env["root"] / "stub.pth"), "--no-progress"))
    finally:
        mp.undo()
    assert rc == 0
    return out


def read(path):
    return np.asarray(Image.open(path))


def test_layout_and_images_match_the_pipeline(env, full_run):
    names = sorted(os.listdir(full_run / "eval_visu"))
    assert names == [f"{i:04d}_{r:04d}.png" for i in range(N) for r in range(2)]
    assert sorted(os.listdir(full_run)) == ["eval_settings.json", "eval_visu", "metrics.json"]
    # First batch (examples 0, 1) recomputed with the pipeline: NNNN = example, RRRR = rank after reranking.
    cfg = env["cfg"]
    source = open_source("mask_eval", root=env["data"])
    exs = [F.load_example(source, i, 32) for i in range(2)]
    res = P.inpaint(env["vq"], cfg.vqgan, env["mps"], cfg.mps, np.stack([from_uint8(e["masked"]) for e in exs]),
                    np.stack([e["mask"] for e in exs]), [e["text"] for e in exs], num_samples=3,
                    seed=E.batch_seed(42, 0), clip=(env["clip"], CLIP_CFG), clip_resize="bicubic")
    assert [e["text"] for e in exs] == ["a red circle", "a green circle"]  # first line of guidance/
    assert (np.diff(res["scores"], axis=1) <= 0).all()
    for i in range(2):
        for r in range(2):
            np.testing.assert_array_equal(read(full_run / "eval_visu" / f"{i:04d}_{r:04d}.png"),
                                          to_uint8(res["candidates"][i, r]))


def test_metrics_equal_independent_values(env, full_run):
    result = json.loads((full_run / "metrics.json").read_text())
    m = result["metrics"]
    assert result["counts"] == {"examples": N, "candidates_sampled": 3 * N, "images_written": 2 * N,
                                "images_scored": N, "sampled_this_run": N}
    s = result["settings"]
    assert (s["sample_K"], s["best_n"], s["top_k"], s["temperature"], s["seed"]) == (3, 2, 128, 1.0, 42)
    assert s["checkpoint"] == os.path.abspath(env["ckpt"]) and s["clip"] == str(env["root"] / "clip.pt")
    assert s["clip_resize"] == "bicubic" and s["clip_config"]["transformer_width"] == 32
    assert result["null_reasons"] == {}
    pred = np.stack([read(full_run / "eval_visu" / f"{i:04d}_0000.png") for i in range(N)]).astype(np.float32)
    gt = np.stack([read(os.path.join(env["data"], "gt", f"{i:04d}.png")) for i in range(N)]).astype(np.float32)
    mask = np.stack([read(os.path.join(env["data"], "mask", f"{i:04d}.mask.png")) > 0 for i in range(N)])
    np.testing.assert_allclose(m["psnr"], np.mean(np.asarray(M.psnr(pred, gt))), rtol=1e-6)
    np.testing.assert_allclose(m["psnr_outside_hole"], np.mean(np.asarray(M.psnr(pred, gt, mask))), rtol=1e-6)
    x, y = pred / 127.5 - 1, gt / 127.5 - 1
    want_lpips = np.asarray(jax.jit(LPIPS().apply)({"params": env["lpips"]}, x, y)).reshape(-1)
    np.testing.assert_allclose(m["lpips"], want_lpips.mean(), rtol=1e-5)
    texts = [open(os.path.join(env["data"], "guidance", f"{i:04d}.txt")).readline().strip() for i in range(N)]
    # padded to the reranker's batch (2 x 3): the program the runner compiled
    want_cs = clip_score(env["clip"], CLIP_CFG, np.concatenate([x, x[-1:]]), texts + texts[-1:], batch_size=6,
                         resize="bicubic")[:N]
    np.testing.assert_allclose(m["clip_score_x100"], want_cs.mean(), rtol=1e-5, atol=1e-4)
    want_fid = M.fid_from_features(stub_features(x), stub_features(y))
    np.testing.assert_allclose(m["fid"], want_fid, rtol=1e-6)
    assert result["notes"]["clip_score_x100"].startswith("100 x cosine")


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_without_redoing_finished_images(env, full_run, monkeypatch, capsys):
    out = env["root"] / "resumed"
    calls, real = [], P.inpaint
    fail = {"on": 3}

    def counting(*a, **kw):  # the runner samples every batch through lip_jax.app.pipeline.inpaint
        calls.append(kw["seed"])
        if len(calls) == fail["on"]:
            raise Interrupt("simulated kill")
        return real(*a, **kw)

    monkeypatch.setattr(P, "inpaint", counting)
    with pytest.raises(Interrupt):  # killed while sampling the third batch
        main(argv(env, out))
    first = sorted(os.listdir(out / "eval_visu"))
    assert first == [f"{i:04d}_{r:04d}.png" for i in range(4) for r in range(2)]  # batches 0 and 1
    assert not (out / "metrics.json").exists()
    os.remove(out / "eval_visu" / "0001_0001.png")  # as if killed while writing batch 0
    kept = {f: os.stat(out / "eval_visu" / f).st_mtime_ns for f in first if f != "0001_0001.png"}

    calls.clear()
    fail["on"] = None
    assert main(argv(env, out)) == 0
    # batch [2, 4) was finished: not sampled again; batch 0 lost a file: redone, only that file written
    assert calls == [E.batch_seed(42, 0), E.batch_seed(42, 4)]
    assert "resuming: 2 of 5 examples already written" in capsys.readouterr().err
    assert {f: os.stat(out / "eval_visu" / f).st_mtime_ns for f in kept} == kept
    names = sorted(os.listdir(full_run / "eval_visu"))
    assert sorted(os.listdir(out / "eval_visu")) == names
    for f in names:  # the same images as the uninterrupted run, hence the same metrics
        np.testing.assert_array_equal(read(out / "eval_visu" / f), read(full_run / "eval_visu" / f), err_msg=f)
    result = json.loads((out / "metrics.json").read_text())
    want = json.loads((full_run / "metrics.json").read_text())["metrics"]
    for k in ("psnr", "psnr_outside_hole", "clip_score_x100"):
        assert result["metrics"][k] == want[k], k
    assert result["metrics"]["lpips"] is None and result["metrics"]["fid"] is None
    assert "--lpips" in result["null_reasons"]["lpips"] and "--fid-weights" in result["null_reasons"]["fid"]
    assert result["counts"]["sampled_this_run"] == 3

    # Other settings into the same directory are refused (before any weight is read).
    assert main(argv(env, out, "--config.eval.seed=1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings (seed: 42 then, 1 now)" in err[0], err


def test_a_stage2_training_workdir_is_a_checkpoint(env, full_run, tmp_path):
    """--ckpt WORKDIR (what `lip-jax train` stage 2 leaves: checkpoints/ and params/) reads params/."""
    work = tmp_path / "stage2"
    os.makedirs(work / "checkpoints")
    save_params(str(work / "params"), {"mps": env["mps"], "vqgan": env["vq"]})
    out = tmp_path / "out"
    args = argv(env, out, "--config.eval.max_examples=2", "--no-progress")
    args[args.index("--ckpt") + 1] = str(work)
    assert main(args) == 0
    names = [f"{i:04d}_{r:04d}.png" for i in range(2) for r in range(2)]
    assert sorted(os.listdir(out / "eval_visu")) == names
    for f in names:  # the same weights as the orbax directory: the same images
        np.testing.assert_array_equal(read(out / "eval_visu" / f), read(full_run / "eval_visu" / f), err_msg=f)
    result = json.loads((out / "metrics.json").read_text())
    assert result["counts"]["examples"] == 2 and result["settings"]["checkpoint"] == str(work)


@pytest.mark.parametrize("case,match", [
    ("missing_data", "evaluation set directory does not exist"),
    ("empty_layout", "no ground-truth .png images found"),
    ("missing_ckpt", "no such checkpoint"),
    ("missing_lpips", "nope/vgg.pth: no such LPIPS weights"),
    ("config_mismatch", "codebook 64 != MP-S2S vqvae_vocab_size 128"),
    ("ckpt_mismatch", "lip.pth: MP-S2S: checkpoint does not match the model; mis-shaped"),
    ("bad_override", "has no field 'sample_k'"),
    ("best_n", "best_n <= eval.sample_K"),
    ("no_hole", "0002.mask.png: the mask has no hole"),
    ("small_hole", "0001.mask.png: the mask has no hole at the model resolution 32"),
])
def test_bad_inputs_exit_2_with_one_line(env, tmp_path, capsys, case, match):
    data = env["data"]
    extra = []
    ckpt = env["ckpt"]
    if case == "missing_data":
        data = str(tmp_path / "nope")
    elif case == "empty_layout":
        os.makedirs(tmp_path / "empty" / "gt")
        data = str(tmp_path / "empty")
    elif case == "missing_ckpt":
        ckpt = str(tmp_path / "nope.pth")
    elif case == "missing_lpips":
        extra = ["--lpips", str(tmp_path / "nope" / "vgg.pth")]
    elif case == "config_mismatch":
        extra = ["--config.vqgan.n_e=64"]
    elif case == "ckpt_mismatch":  # the official .pth read with a config of another size
        ckpt, extra = env["pth"], ["--config.mps.dim=64"]
    elif case == "bad_override":
        extra = ["--config.eval.sample_k=3"]
    elif case == "best_n":
        extra = ["--config.eval.best_n=4"]
    elif case == "no_hole":
        data = str(tmp_path / "nohole")
        write_dataset(data, n=3)
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(os.path.join(data, "mask", "0002.mask.png"))
    elif case == "small_hole":  # 64 px set: a one-pixel hole vanishes at 32 px (nearest)
        data = str(tmp_path / "smallhole")
        write_dataset(data, n=2, size=64)
        m = np.zeros((64, 64), np.uint8)
        m[0, 0] = 255  # nearest sampling to 32 px reads odd rows and columns
        Image.fromarray(m).save(os.path.join(data, "mask", "0001.mask.png"))
    args = ["eval", "--config", CONFIG, "--ckpt", ckpt, "--data", data, "--out", str(tmp_path / "out"),
            *SETTINGS, "--no-progress", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [e for e in err if not e.startswith("lip-jax eval:")]  # progress notes before the failure
    assert len(err) == 1 and err[0].startswith("lip-jax: error: ") and match in err[0], err
