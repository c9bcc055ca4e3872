"""The README's chain, run as written: train stage 1 -> train stage 2 -> inpaint -> eval -> convert to
.pth -> inpaint from the .pth, on the demo's small models (each line through `lip_jax.cli.main`)."""

import json
import os
import re
import shlex

import numpy as np
import pytest
from PIL import Image

from lip_jax.cli import main
from lip_jax.data.shapes import Shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block(marker: str, lang: str = "") -> list[str]:
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(rf"<!-- {marker} -->\n```{lang}\n(.*?)```\n<!-- /{marker} -->", text, re.S)
    assert block, f"README.md has no {marker} block"
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A user's directory: the repository's configs, a photo with a hole, an evaluation folder."""
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    scenes = Shapes(num_examples=3, image_size=32, seed=7, max_objects=1, object_hole=4)
    photo = np.asarray(Image.fromarray(scenes[0]["image"]).resize((60, 45), Image.BICUBIC))
    Image.fromarray(photo).save(tmp_path / "photo.png")
    hole = np.zeros((45, 60), np.uint8)
    hole[10:22, 25:40] = 255
    Image.fromarray(hole).save(tmp_path / "hole.png")
    for sub in ("gt", "mask", "guidance"):
        os.makedirs(tmp_path / "evalset" / sub)
    for i in (1, 2):
        ex = scenes[i]
        Image.fromarray(ex["image"]).save(tmp_path / "evalset" / "gt" / f"{i:04d}.png")
        Image.fromarray(ex["mask"].astype(np.uint8) * 255).save(tmp_path / "evalset" / "mask" / f"{i:04d}.mask.png")
        (tmp_path / "evalset" / "guidance" / f"{i:04d}.txt").write_text(ex["text"] + "\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path, photo, hole > 0


def test_readme_chain_runs_as_written(user_dir, capsys):
    root, photo, hole = user_dir
    lines = readme_block("chain")
    assert [shlex.split(l)[1] for l in lines] == ["train", "train", "inpaint", "eval", "convert", "inpaint"]
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "lip-jax"
        assert main(argv[1:]) == 0, f"{line}\n{capsys.readouterr().err[-2000:]}"
    for d in ("runs/chain/stage1/params", "runs/chain/stage2/params"):
        assert os.path.isdir(root / d)
    filled = np.asarray(Image.open(root / "filled.png"))
    assert filled.shape == photo.shape
    np.testing.assert_array_equal(filled[~hole], photo[~hole])
    assert (filled[hole] != photo[hole]).any()
    # The .pth holds the same weights: the same picture.
    np.testing.assert_array_equal(np.asarray(Image.open(root / "filled_from_pth.png")), filled)
    metrics = json.load(open(root / "runs/chain/eval/metrics.json"))
    assert metrics["counts"]["examples"] == 2 and metrics["metrics"]["psnr"] is not None
    # The Python example, as written, on the chain's workdir (its weights carry their config).
    scope: dict = {}
    exec("\n".join(readme_block("python", "python")), scope)
    assert scope["out"].images[0].shape == photo.shape
    np.testing.assert_array_equal(scope["out"].images[0][~hole], photo[~hole])


def test_train_help_lists_its_flags_and_the_config_printer(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for flag in ("--config", "--workdir", "--print-config", "--config.KEY=VALUE"):
        assert flag in out


def test_print_config_applies_overrides_and_a_misspelt_key_is_one_line(capsys):
    cfg = os.path.join(ROOT, "configs", "shapes_demo.py:stage2")
    assert main(["train", "--config", cfg, "--config.train.lr=0.25", "--print-config"]) == 0
    assert re.search(r"lr: 0\.25", capsys.readouterr().out)
    assert main(["train", "--config", cfg, "--config.train.lrr=1", "--workdir", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no field 'lrr'" in err[0]


def test_a_command_that_needs_torch_says_which_extra(tmp_path, monkeypatch, capsys):
    (tmp_path / "w.pth").write_bytes(b"x")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # as on an install without the extra
    assert main(["convert", "--kind", "clip", "--from", str(tmp_path / "w.pth"), "--to", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lip-jax: error: convert needs PyTorch for this file: pip install 'lip-jax[torch]'"]
