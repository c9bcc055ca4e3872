"""The demo's pieces (object holes, counterfactual captions, the follow score) and its whole code
path at smoke size: both stages train, the report and grid are written, a rerun trains nothing."""

import json
import os

import numpy as np
import pytest

from lip_jax.config import load_config
from lip_jax.cli import main
from lip_jax.data import DataError
from lip_jax.data.shapes import COLOURS, Shapes, caption, dominant, object_mask, scene
from lip_jax.app.demo import counterfactual, follow_rates, held_out
from lip_jax.commands.demo import demo_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "shapes_demo.py")


def test_object_hole_hides_the_object_on_the_token_grid():
    src = Shapes(num_examples=40, image_size=32, seed=3, max_objects=2, object_hole=4)
    for i in range(len(src)):
        ex = src[i]
        mask, target = ex["mask"], ex["target"]
        assert mask.dtype == bool and mask.shape == (32, 32)
        # Whole 4x4 cells only, so the token hole equals the pixel hole.
        cells = mask.reshape(8, 4, 8, 4).transpose(0, 2, 1, 3).reshape(64, 16)
        assert np.all(cells.all(axis=1) | ~cells.any(axis=1))
        # Every pixel of the target object lies in the hole.
        alone = Shapes(num_examples=40, image_size=32, seed=3, max_objects=2)[i]["image"]
        assert target in scene(3, i, 2)
        left, top, right, bottom = (int(v * 32) for v in target.box)
        assert mask[top:bottom, left:right].all()
        assert np.array_equal(alone, ex["image"])
    assert object_mask(target, 32, 4).sum() <= mask.sum()
    with pytest.raises(DataError, match="object_hole"):
        Shapes(image_size=32, object_hole=5)


def test_hide_all_covers_every_object_and_keeps_the_target():
    one = Shapes(num_examples=30, image_size=32, seed=3, max_objects=3, object_hole=4)
    every = Shapes(num_examples=30, image_size=32, seed=3, max_objects=3, object_hole=4, hide_all=True)
    grown = 0
    for i in range(len(one)):
        a, b = one[i], every[i]
        assert a["target"] == b["target"] and np.array_equal(a["image"], b["image"])
        assert np.all(b["mask"] >= a["mask"])  # the one-object hole is part of it
        for obj in scene(3, i, 3, 1.0):
            left, top, right, bottom = (int(v * 32) for v in obj.box)
            assert b["mask"][top:bottom, left:right].all()
        cells = b["mask"].reshape(8, 4, 8, 4).transpose(0, 2, 1, 3).reshape(64, 16)
        assert np.all(cells.all(axis=1) | ~cells.any(axis=1))
        grown += int(b["mask"].sum() > a["mask"].sum())
    assert grown > 0  # scenes with several objects hide more than one


def test_counterfactual_changes_colour_and_shape():
    rng = np.random.default_rng(0)
    for i in range(30):
        target = scene(0, i, 1)[0]
        other = counterfactual(target, rng)
        assert other.colour != target.colour and other.shape != target.shape
        assert (other.size, other.cell, other.box) == (target.size, target.cell, target.box)
        assert other.colour in COLOURS


def test_follow_rates_reads_the_hole():
    cfg = load_config(CONFIG)
    data = held_out(cfg, 24)
    assert data["true_text"][0] == caption([data["true"][0]])
    # The reader is exact on the ground truth at the demo's resolution...
    assert follow_rates(data["image"], data["mask"], data["true"]) == {"colour": 1.0, "shape": 1.0,
                                                                       "colour_and_shape": 1.0}
    # ...and never credits the true image for the counterfactual object.
    assert follow_rates(data["image"], data["mask"], data["counter"])["colour"] == 0.0
    # An empty (background) hole follows nothing.
    blank = np.full_like(data["image"], 128)
    assert follow_rates(blank, data["mask"], data["true"])["colour"] == 0.0
    assert dominant(blank[0], data["mask"][0]) == (None, None)


def test_demo_smoke_end_to_end(tmp_path, capsys):
    work = str(tmp_path / "demo")
    assert main(["demo", "--config", CONFIG + ":smoke", "--workdir", work]) == 0
    for name in ("demo.png", "report.md", "report.json", "stage1/params", "stage2/params"):
        assert os.path.exists(os.path.join(work, name)), name
    report = json.load(open(os.path.join(work, "report.json")))
    assert report["images"] == 4 and report["config"] == "shapes_demo.py:smoke"
    for which in ("true_caption", "counterfactual_caption"):
        assert set(report[which]["follows"]) == {"colour", "shape", "colour_and_shape"}
        assert np.isfinite(report[which]["psnr_outside_hole"])
    assert report["reader_on_ground_truth"]["colour"] == 1.0
    # The demo recipes' first steps (the highest learning rates of any recipe here) stay far below
    # the divergence guard's update bound: nothing skipped.
    from lip_jax.train.faults import MAX_UPDATE_RATIO

    for stage in ("stage1", "stage2"):
        rows = [json.loads(line) for line in open(os.path.join(work, stage, "metrics.jsonl"))]
        assert rows and all(r["skipped"] == 0 and 0 < r["update_ratio"] < MAX_UPDATE_RATIO / 10 for r in rows), rows
    from PIL import Image
    grid = np.asarray(Image.open(os.path.join(work, "demo.png")))
    # 2 rows x 6 cells of 32 px at x6: ground truth, input, and per caption the pasted result and
    # the raw model output
    assert grid.shape[0] > 2 * 192 and grid.shape[1] > 6 * 192
    for which in ("true_caption", "counterfactual_caption"):
        for key, (lo, hi) in report[which]["follows_95"].items():
            assert 0 <= lo <= report[which]["follows"][key] <= hi <= 1
    # A rerun finds both stages trained and only evaluates.
    capsys.readouterr()
    assert main(["demo", "--config", CONFIG + ":smoke", "--workdir", work]) == 0
    err = capsys.readouterr().err
    assert "stage1 already trained" in err and "stage2 already trained" in err
    # A stage whose run did not reach its last step (no params/, as after an interruption) is not
    # taken as trained: the rerun trains it, resuming from its checkpoints.
    import shutil

    shutil.rmtree(os.path.join(work, "stage2", "params"))
    assert main(["demo", "--config", CONFIG + ":smoke", "--workdir", work]) == 0
    err = capsys.readouterr().err
    assert "stage1 already trained" in err and "demo: training stage2" in err
    assert os.path.isdir(os.path.join(work, "stage2", "params"))
    # Another config (as the default demo's workdir under --quality) is refused before any work: its
    # stages would otherwise be taken for this config's.
    other = tmp_path / "other_demo.py"
    other.write_text(f"""import importlib.util
spec = importlib.util.spec_from_file_location("shapes_demo", {CONFIG!r})
shapes_demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shapes_demo)


def get_config(arg=None):
    c = shapes_demo.smoke()
    c.stage2.train.update(total_steps=3, save_every=3)
    return c
""")
    before = sorted(os.listdir(os.path.join(work, "stage2")))
    assert main(["demo", "--config", str(other), "--workdir", work]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lip-jax: error: {os.path.join(work, 'stage2')}: trained with another demo config")
    assert len(err.strip().splitlines()) == 1 and sorted(os.listdir(os.path.join(work, "stage2"))) == before
    # --seed is part of each stage's recipe: the same workdir under another seed is refused too.
    assert main(["demo", "--config", CONFIG + ":smoke", "--workdir", work, "--seed", "5"]) == 2
    assert "trained with another demo config" in capsys.readouterr().err
    assert sorted(os.listdir(os.path.join(work, "stage2"))) == before


def test_wilson_interval():
    from lip_jax.app.demo import wilson_interval

    lo, hi = wilson_interval(0.5, 100)
    assert abs(lo - 0.4038) < 1e-4 and abs(hi - 0.5962) < 1e-4
    lo, hi = wilson_interval(1.0, 256)  # not empty at 100%, and inside [0, 1]
    assert 0.98 < lo < 1.0 and hi == 1.0
    assert wilson_interval(0.0, 256)[0] == 0.0


def test_demo_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--config", str(tmp_path / "none.py"), "--workdir", str(tmp_path)]) == 2
    assert "demo config not found" in capsys.readouterr().err
    assert main(["demo", "--config", CONFIG + ":smoke", "--images", "0", "--workdir", str(tmp_path)]) == 2


def test_quality_picks_the_longer_entry(capsys):
    from lip_jax.cli import build_parser

    default, name = demo_config(CONFIG)
    quality, qname = demo_config(CONFIG, quality=build_parser().parse_args(["demo", "--quality"]).quality)
    assert (name, qname) == ("shapes_demo.py:demo", "shapes_demo.py:quality")
    assert quality.stage1.train.total_steps > default.stage1.train.total_steps
    for stage in ("stage1", "stage2"):
        assert quality[stage].train.total_steps >= default[stage].train.total_steps
        assert quality[stage].train.save_every == quality[stage].train.total_steps  # one save, at the end
    assert quality.eval == default.eval  # the same held-out scenes, read the same way
    assert main(["demo", "--config", CONFIG + ":smoke", "--quality"]) == 2
    assert "--quality picks the :quality entry" in capsys.readouterr().err


def test_demo_seeds_tool_reports_each_seed(tmp_path):
    """tools/demo_seeds.py as the README runs it, on the smoke config: one demo per seed, a table
    with the worst row, and the JSON line; the seed reaches both stages (the report says it)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo_seeds.py"), "--seeds", "3",
                          "--config", CONFIG + ":smoke", "--root", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["bench"] == "demo_seeds" and list(line["seeds"]) == ["3"] and line["images"] == 4
    assert "| 3 |" in out.stdout and "| worst |" in out.stdout
    assert json.load(open(tmp_path / "seed3" / "report.json"))["seed"] == 3
    for stage in ("stage1", "stage2"):
        assert json.load(open(tmp_path / "seed3" / stage / "demo_config.json"))["seed"] == 3
