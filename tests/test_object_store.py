"""gs:// paths end in the object store, never as a local `gs:/...` folder: orbax checkpoints, the
training logs, converter inputs and outputs, evaluation outputs, against a local GCS emulator that
both orbax (tensorstore's gcs driver) and etils.epath (gcsfs) talk to (tests/object_store.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lip_jax.cli import main
from lip_jax.weights.store import load_params, save_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE1 = os.path.join(REPO, "configs", "test_stage1.py")
STAGE2 = os.path.join(REPO, "configs", "test_stage2.py")


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """A fresh working directory: where `os.path.abspath("gs://...")` would have put a `gs:` folder."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not (tmp_path / "gs:").exists(), "a gs:// URL was written as a local path"


def _same(a, b) -> None:
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_gs_url_reaches_orbax_unchanged(gcs, cwd, monkeypatch):
    seen = []
    save = ocp.StandardCheckpointer.save

    def spy(self, directory, *args, **kwargs):
        seen.append(str(directory))
        return save(self, directory, *args, **kwargs)

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", spy)
    tree = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": {"c": np.ones(5, np.int32)}}
    url = f"{gcs.root}/params"
    save_params(url, tree)
    assert seen == [url]
    names = gcs.names("test/params/")
    # orbax's gs:// finalization (a commit file, no rename) and tensorstore's array chunks
    assert {"test/params/_CHECKPOINT_METADATA", "test/params/commit_success.txt"} <= set(names), names
    assert any("/d/" in n for n in names), names
    _same(load_params(url), tree)
    with pytest.raises(Exception, match="already exists"):
        save_params(url, tree)


def test_training_logs_land_in_the_bucket_and_a_resume_truncates_them(gcs, cwd):
    from lip_jax.train.writer import Writer

    w = Writer(gcs.root, 0)
    for step in (1, 2, 3):
        w.scalars(step, {"loss": 1.0 / step})
    w.image(2, np.zeros((4, 6, 3), np.uint8))
    w.close()
    lines = gcs.read("test/metrics.jsonl").decode().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert gcs.read("test/samples/step_0000002.png").startswith(b"\x89PNG")
    events = [n for n in gcs.names("test/tb/") if "tfevents" in n]
    assert events and len(gcs.read(events[0])) > 0

    w = Writer(gcs.root, 2)  # resumed from step 2: step 3 is replayed, logged once
    w.scalars(3, {"loss": 0.5})
    w.close()
    lines = gcs.read("test/metrics.jsonl").decode().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert json.loads(lines[-1])["loss"] == 0.5


def test_convert_reads_and_writes_gs(gcs, cwd, vq_ckpt, capsys):
    pth, back = f"{gcs.root}/vq.pth", f"{gcs.root}/vq"
    assert main(["convert", "--kind", "dfvqgan", "--config", STAGE2, "--from", vq_ckpt, "--to", pth]) == 0
    assert "test/vq.pth" in gcs.names("test/")
    assert main(["convert", "--kind", "dfvqgan", "--config", STAGE2, "--from", pth, "--to", back]) == 0
    assert "test/vq/commit_success.txt" in gcs.names("test/vq/")
    _same(load_params(back), load_params(vq_ckpt))
    # an existing gs:// output is refused in one line, as a local one
    capsys.readouterr()
    assert main(["convert", "--kind", "dfvqgan", "--config", STAGE2, "--from", vq_ckpt, "--to", pth]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lip-jax: error: --to gs://") and "already exists" in err[0], err


def _png(array) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_a_folder_source_lists_and_reads_a_bucket(gcs, cwd):
    from etils import epath

    from lip_jax.data import open_source
    from lip_jax.data.errors import DataError

    root = epath.Path(f"{gcs.root}/images")
    red, blue = np.full((4, 5, 3), (255, 0, 0), np.uint8), np.full((6, 3, 3), (0, 0, 255), np.uint8)
    (root / "a.png").write_bytes(_png(red))
    (root / "a.txt").write_text("\ufeffa red square\nignored\n")
    (root / "sub" / "deeper" / "b.png").write_bytes(_png(blue))
    source = open_source("folder", root=str(root))
    assert [source[i]["id"] for i in range(len(source))] == ["a.png", "sub/deeper/b.png"]
    assert source[0]["text"] == "a red square" and source[1]["text"] == ""
    np.testing.assert_array_equal(source[1]["image"], blue)
    (root / "sub" / "deeper" / "b.mask.png").write_bytes(_png(np.ones((6, 3), np.uint8)))
    with pytest.raises(DataError, match=r"gs://.*/images/a\.mask\.png: mask missing"):
        open_source("folder", root=str(root))


def test_eval_reads_and_writes_gs(gcs, cwd, capsys):
    """Checkpoint, evaluation folder and --out all in the bucket; a rerun finds its images there."""
    from etils import epath

    from random_weights import random_params

    from lip_jax.config import load_config
    from lip_jax.weights import dfvqgan as CV
    from lip_jax.weights import mps2s as CM

    config = os.path.join(REPO, "configs", "lip_maskcoco.py") + ":tiny"
    cfg = load_config(config)
    ckpt, data, out = f"{gcs.root}/lip", epath.Path(f"{gcs.root}/data"), f"{gcs.root}/eval"
    save_params(ckpt, {"mps": random_params(CM.param_template(cfg.mps), 2),
                       "vqgan": random_params(CV.param_template(cfg.vqgan), 1)})
    rng = np.random.default_rng(0)
    for i in range(2):
        hole = np.zeros((32, 32), np.uint8)
        hole[4:20, 6:14 + 4 * i] = 255
        (data / "gt" / f"{i:04d}.png").write_bytes(_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
        (data / "mask" / f"{i:04d}.mask.png").write_bytes(_png(hole))
        (data / "guidance" / f"{i:04d}.txt").write_text("a red circle\n")
    argv = ["eval", "--config", config, "--ckpt", ckpt, "--data", str(data), "--out", out, "--no-progress",
            "--config.eval.sample_K=2", "--config.eval.best_n=2", "--config.eval.batch_size=2"]
    assert main(argv) == 0, capsys.readouterr().err
    names = gcs.names("test/eval/")
    assert {f"test/eval/eval_visu/{i:04d}_{r:04d}.png" for i in range(2) for r in range(2)} <= set(names), names
    metrics = json.loads(gcs.read("test/eval/metrics.json"))
    assert metrics["counts"]["images_scored"] == 2 and metrics["metrics"]["psnr"] is not None
    settings = json.loads(gcs.read("test/eval/eval_settings.json"))
    assert settings["checkpoint"] == ckpt and settings["data"] == str(data)  # URLs kept, not made local
    capsys.readouterr()
    assert main(argv) == 0  # resumable: the images already in the bucket are not sampled again
    assert "resuming: 2 of 2 examples already written" in capsys.readouterr().err


def _train(gcs, cwd, workdir, *overrides):
    env = dict(os.environ, **gcs.env, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "lip_jax.cli", "train", "--config", STAGE2, "--workdir", workdir,
           "--config.train.save_every=5", "--config.train.log_every=1", *overrides]
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _committed(gcs, prefix) -> list[int]:
    """Steps whose checkpoint orbax finished (on gs:// a step is complete once its commit file is)."""
    steps = []
    for name in gcs.names(prefix):
        parts = name[len(prefix):].split("/")
        if len(parts) == 2 and parts[0].isdigit() and parts[1] == "commit_success.txt":
            steps.append(int(parts[0]))
    return sorted(steps)


def test_train_killed_and_resumed_in_a_bucket(gcs, cwd, vq_ckpt):
    workdir, ckpts = f"{gcs.root}/run", "test/run/checkpoints/"
    proc = _train(gcs, cwd, workdir, f"--config.vqgan_ckpt={vq_ckpt}", "--config.train.total_steps=100000")
    deadline = time.time() + 600
    while not _committed(gcs, ckpts):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint in the bucket in time"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, out
    assert "interrupted by SIGTERM at step" in out and "Traceback" not in out
    saved = max(_committed(gcs, ckpts))
    assert not any(n.startswith("test/run/params/") for n in gcs.names("test/run/"))

    resumed = _train(gcs, cwd, workdir, f"--config.vqgan_ckpt={vq_ckpt}", f"--config.train.total_steps={saved + 3}")
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    assert f"resumed from step {saved}" in out
    steps = [json.loads(line)["step"] for line in gcs.read("test/run/metrics.jsonl").decode().splitlines()]
    assert steps == list(range(1, saved + 4)), steps
    names = gcs.names("test/run/")
    assert "test/run/params/commit_success.txt" in names
    assert any(n.startswith("test/run/tb/") and "tfevents" in n for n in names), names
    assert "test/run/.lock" not in names  # released at the end
    assert saved + 3 in _committed(gcs, ckpts)


def test_a_missing_bucket_is_one_line_before_any_work(gcs, cwd, vq_ckpt, capsys):
    dst = "gs://no-such-bucket-here/vq.pth"
    assert main(["convert", "--kind", "dfvqgan", "--config", STAGE2, "--from", vq_ckpt, "--to", dst]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"lip-jax: error: --to {dst}: cannot write in gs://no-such-bucket-here"), err
