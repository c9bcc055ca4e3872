"""Training under faults: unusable settings refused before any work, a divergence guard that stops
the run (exit 3) with nothing non-finite checkpointed, checkpoints verified at load (a flipped byte is
refused; a resume falls back to the newest checkpoint that verifies), one trainer per workdir."""

import glob
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lip_jax.config import load_config
from lip_jax.cli import main
from lip_jax.train import faults
from lip_jax.weights.store import CheckpointError, load_params, save_params
from lip_jax.train.trainer import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE2 = os.path.join(REPO, "configs", "test_stage2.py")


@pytest.mark.parametrize("override,match", [
    ("train.keep=0", "config.train.keep=0: out of range [1, 65536]"),
    ("train.save_every=0", "config.train.save_every=0: out of range [1, 2147483647]"),
    ("train.log_every=0", "config.train.log_every=0: out of range [1, "),
    ("train.total_steps=-3", "config.train.total_steps=-3: out of range [1, "),
    ("data.batch_size=0", "config.data.batch_size=0: out of range [1, "),
    ("seed=-1", "config.seed=-1: out of range [0, 4294967295]"),
    ("train.max_update_ratio=0", "config: need train.max_update_ratio finite and > 0"),
])
def test_unusable_settings_are_one_line_before_any_work(tmp_path, capsys, override, match):
    workdir = tmp_path / "run"
    assert main(["train", "--config", STAGE2, "--workdir", str(workdir), f"--config.{override}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lip-jax: error: ") and match in err[0], err
    assert not workdir.exists()  # nothing was started


def test_a_workdir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "run").write_text("x")
    assert main(["train", "--config", STAGE2, "--workdir", str(tmp_path / "run")]) == 2
    assert "the workdir is a file" in capsys.readouterr().err


def test_exploding_learning_rate_stops_the_run_and_checkpoints_nothing_blown_up(tmp_path, vq_ckpt, capsys):
    """lr 1e30: the first update is finite but moves the weights to ~1e30 (a non-finite check sees
    it only a step later, after it was saved); the update guard keeps every step out."""
    workdir = tmp_path / "run"
    rc = main(["train", "--config", STAGE2, "--workdir", str(workdir), f"--config.vqgan_ckpt={vq_ckpt}",
               "--config.train.lr=1e30", "--config.train.warmup_fraction=0", "--config.train.total_steps=40",
               "--config.train.save_every=1", "--config.train.max_skipped_steps=3"])
    err = capsys.readouterr().err
    assert rc == faults.DIVERGED_EXIT, err
    assert not (workdir / "params").exists()
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert steps == []  # every step failed the guard: none is a checkpoint
    assert "training diverged: 3 consecutive steps skipped" in err and "train.max_update_ratio" in err


def test_update_ratio_is_relative_to_the_weights():
    import flax

    @flax.struct.dataclass
    class S:
        step: int
        params: dict
        disc_params: dict
        opt: dict
        rng: int

    old = S(0, {"w": jax.numpy.full(4, 2.0)}, {"d": jax.numpy.ones(9)}, {"m": jax.numpy.zeros(4)}, 0)
    new = old.replace(params={"w": jax.numpy.full(4, 3.0)}, opt={"m": jax.numpy.ones(4)})
    assert np.isclose(float(faults.update_ratio(old, new)), 0.5)  # the optimizer moments do not count
    new = new.replace(disc_params={"d": jax.numpy.full(9, 3.0)})
    assert np.isclose(float(faults.update_ratio(old, new)), 2.0)  # the largest field's ratio


def _flip_a_byte(directory: str) -> None:
    files = [f for f in glob.glob(os.path.join(directory, "**", "*"), recursive=True)
             if os.path.isfile(f) and "/d/" in f]
    target = max(files, key=os.path.getsize)  # the array data, not the metadata
    data = bytearray(open(target, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(target, "wb").write(bytes(data))


def test_a_flipped_byte_is_refused_by_every_parameter_loader(tmp_path):
    tree = {"mps": {"w": np.arange(4096, dtype=np.float32)}, "vqgan": {"b": np.ones((64, 64), np.float32)}}
    path = str(tmp_path / "params")
    save_params(path, tree)
    assert np.array_equal(load_params(path)["mps"]["w"], tree["mps"]["w"])  # intact: verifies
    _flip_a_byte(path)
    with pytest.raises(CheckpointError, match="params"):
        load_params(path)
    from lip_jax.weights.load import load_orbax

    with pytest.raises(CheckpointError, match="params"):
        load_orbax(path)


def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path, vq_ckpt, caplog):
    c = load_config(STAGE2)
    c.vqgan_ckpt = vq_ckpt
    c.train.update(total_steps=6, save_every=2, keep=3)
    workdir = str(tmp_path / "run")
    assert train(c, workdir, max_steps=4)["step"] == 4
    _flip_a_byte(os.path.join(workdir, "checkpoints", "4", "state"))
    out = train(c, workdir)
    assert out["step"] == 6
    assert "checkpoint step 4 does not verify" in caplog.text and "resumed from step 2" in caplog.text


def test_a_second_trainer_on_a_workdir_is_refused_and_a_stale_lock_recovered(tmp_path):
    workdir = tmp_path / "run"
    os.makedirs(workdir)
    (workdir / ".lock").write_text(f"{socket.gethostname()} {os.getpid()}")  # a live trainer: this process
    with pytest.raises(faults.ConfigError, match="in use by another trainer"):
        with faults.WorkdirLock(str(workdir)):
            pass
    (workdir / ".lock").write_text(f"{socket.gethostname()} 999999999")  # its process is gone
    with faults.WorkdirLock(str(workdir)):
        assert open(workdir / ".lock").read() == f"{socket.gethostname()} {os.getpid()}"
    assert not (workdir / ".lock").exists()


def test_checksum_is_the_same_on_host_and_device_and_sees_every_bit():
    from lip_jax.weights import store as C

    rng = np.random.default_rng(0)
    leaves = [rng.standard_normal((3, (1 << 20) + 3)).astype(np.float32), rng.standard_normal(77).astype(jax.numpy.bfloat16),
              rng.integers(0, 9, (5, 7)).astype(np.int32), rng.random(13) > 0.5, jax.random.key(3),
              rng.integers(0, 255, 31).astype(np.uint8)]
    for x in leaves:
        assert C._sum32_host(x) == int(C._sum32(x if isinstance(x, jax.Array) else jax.numpy.asarray(x)))
    x = leaves[0]
    base = C._sum32_host(x)
    for flat_index, bit in ((0, 0), (5, 31), (x.size - 1, 7), ((1 << 20) + 1, 12)):
        y = x.copy().reshape(-1).view(np.uint32)
        y[flat_index] ^= np.uint32(1 << bit)
        assert C._sum32_host(y.view(np.float32)) != base
    swapped = x.copy().reshape(-1)
    swapped[[0, 1]] = swapped[[1, 0]]
    assert C._sum32_host(swapped) != base  # positions count, not only values


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_start_up_ends_the_run_within_seconds(tmp_path, vq_ckpt, signum):
    """Before the first step (config, weights, compilation) there is nothing new to save: a signal
    ends the run at once, even while compilation holds the main thread in native code."""
    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=REPO, LIP_JAX_CACHE_DIR="")
    proc = subprocess.Popen([sys.executable, "-m", "lip_jax.cli", "train", "--config", STAGE2, "--workdir",
                             str(workdir), f"--config.vqgan_ckpt={vq_ckpt}"], stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while not (workdir / ".lock").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # into the state's initialisation and the step's compilation
    t0 = time.monotonic()
    proc.send_signal(signum)
    err = proc.communicate(timeout=120)[1].decode()
    took = time.monotonic() - t0
    assert proc.returncode == faults.INTERRUPTED_EXIT and took < 5, (proc.returncode, took, err[-2000:])
    lines = [ln for ln in err.splitlines() if ln.startswith("lip-jax")]
    assert lines == [f"lip-jax: interrupted by {signal.Signals(signum).name} during start-up, before the first "
                     f"step: nothing new to save; rerun the same command to resume"], err[-2000:]
    assert "Traceback" not in err and not (workdir / ".lock").exists()  # the lock is released
    saved = os.listdir(workdir / "checkpoints") if (workdir / "checkpoints").exists() else []
    assert not [s for s in saved if s.isdigit()]
