"""Weights carry their config: what `lip-jax train` and `lip-jax convert` save records the resolved
config (with its own checksum), `--config` becomes optional wherever it is recorded, and a config
given beside it must agree on every model field."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from random_weights import save_stage2
from lip_jax.cli import main
from lip_jax.config import UsageError, load_config
from lip_jax.weights.errors import CheckpointError
from lip_jax.weights.load import config_for, model_differences
from lip_jax.weights.store import load_params, save_params, saved_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "shapes_demo.py:stage2")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A stage-2 orbax tree saved with its config, as `lip-jax train` leaves WORKDIR/params."""
    config = load_config(CONFIG)
    root = tmp_path_factory.mktemp("w")
    save_stage2(root / "params", config)
    return root, config


def test_the_config_round_trips_and_is_verified(ckpt, tmp_path):
    root, config = ckpt
    record = saved_config(root)  # the workdir stands for its params/
    assert record["mps"]["dim"] == config.mps.dim and record["vqgan"]["ch_mult"] == list(config.vqgan.ch_mult)
    assert model_differences(config_for(root), config) == []
    # a flipped value in the recorded config is refused like a flipped array
    bad = tmp_path / "bad"
    save_params(bad, {"w": np.ones(3, np.float32)}, config=config)
    meta = bad / "_CHECKPOINT_METADATA"
    text = meta.read_text()
    assert '"dim": 96' in text
    meta.write_text(text.replace('"dim": 96', '"dim": 97'))
    with pytest.raises(CheckpointError, match="recorded config fails its checksum"):
        saved_config(bad)
    np.testing.assert_array_equal(np.asarray(load_params(bad)["w"]), np.ones(3))  # the arrays still verify


def test_config_for_takes_the_saved_config_and_refuses_another_model(ckpt, tmp_path):
    root, config = ckpt
    assert config_for(root).mps.dim == config.mps.dim
    assert config_for(root, CONFIG, ["mps.dtype=bfloat16"]).mps.dtype == "bfloat16"  # compute-only field
    with pytest.raises(UsageError, match=r"mps\.dim is 64, the checkpoint's 96"):
        config_for(root, CONFIG, ["mps.dim=64"])
    other = load_config(CONFIG)
    other.vqgan.n_e = 128
    with pytest.raises(UsageError, match=r"vqgan\.n_e is 128, the checkpoint's 256"):
        config_for(root, other)
    save_params(tmp_path / "bare", {"w": np.ones(2, np.float32)})
    with pytest.raises(UsageError, match="records no config.*pass --config"):
        config_for(tmp_path / "bare")


def test_inpaint_without_config_and_with_a_disagreeing_one(ckpt, tmp_path, capsys):
    root, _ = ckpt
    photo = np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)
    hole = np.zeros((40, 50), np.uint8)
    hole[10:20, 15:30] = 255
    Image.fromarray(photo).save(tmp_path / "p.png")
    Image.fromarray(hole).save(tmp_path / "h.png")
    args = ["inpaint", "--ckpt", str(root), "--image", str(tmp_path / "p.png"), "--mask", str(tmp_path / "h.png"),
            "--text", "a red circle"]
    assert main(args + ["--out", str(tmp_path / "o.png")]) == 0, capsys.readouterr().err
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == photo.shape and (out[hole == 0] == photo[hole == 0]).all()
    capsys.readouterr()
    rc = main(args + ["--out", str(tmp_path / "o2.png"), "--config", CONFIG, "--config.mps.heads=2",
                      "--config.mps.dim_head=48"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"lip-jax: error: {CONFIG}: does not match the config")
    assert "mps.heads is 2, the checkpoint's 3" in err[0] and not (tmp_path / "o2.png").exists()


def test_convert_records_the_config_and_reads_it_back(ckpt, tmp_path, capsys):
    root, config = ckpt
    assert main(["convert", "--from", str(root), "--to", str(tmp_path / "lip.pth")]) == 0, capsys.readouterr().err
    assert main(["convert", "--config", CONFIG, "--from", str(tmp_path / "lip.pth"), "--to",
                 str(tmp_path / "back")]) == 0, capsys.readouterr().err
    assert json.dumps(saved_config(tmp_path / "back")["mps"], sort_keys=True) == \
        json.dumps(saved_config(root)["mps"], sort_keys=True)
    # the .pth itself carries no config: one line naming the file
    capsys.readouterr()
    rc = main(["reconstruct", "--ckpt", str(tmp_path / "lip.pth"), "--image", "x.png", "--mask", "y.png",
               "--out", str(tmp_path / "r.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "records no config" in err[0]


def test_stage2_refuses_a_dfvqgan_saved_for_another_model(ckpt, tmp_path, capsys):
    root, _ = ckpt
    rc = main(["train", "--config", CONFIG, "--workdir", str(tmp_path / "run"), f"--config.vqgan_ckpt={root}",
               "--config.vqgan.n_e=128", "--config.mps.vqvae_vocab_size=128", "--config.train.total_steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "vqgan.n_e is 128, the checkpoint's 256" in err[-1] and "saved for another model" in err[-1]
