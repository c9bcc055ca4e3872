"""Several processes on localhost (gloo, 2 CPU devices each), as on a pod: one process's SIGTERM
stops every process at one agreed step, and a run continues on another number of processes with
the same losses as a run that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np

from lip_jax.config import load_config
from lip_jax.models import dfvqgan
from lip_jax.weights.store import save_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE2 = os.path.join(REPO, "configs", "test_stage2.py")
LAUNCH = os.path.join(REPO, "launch", "local_multiprocess.sh")
TOTAL = 60


def _records(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _start(cmd, env, log):
    # Logs to a file: a pipe nobody reads while waiting could fill and stall the trainer.
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def _finish(proc, log, timeout=900):
    proc.wait(timeout=timeout)
    with open(log) as f:
        return f.read()


def _wait_for_step(proc, workdir, step, log, timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before step {step}: "
                                 + _finish(proc, log)[-3000:])
        recs = _records(workdir)
        if recs and recs[-1]["step"] >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _children(launcher_pid):
    out = subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True).stdout.split()
    return {int(p): open(f"/proc/{p}/cmdline").read().replace("\0", " ") for p in out}


def _steps(workdir):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def test_one_host_preempted_then_resume_on_other_process_counts(tmp_path):
    vq = str(tmp_path / "vq")
    save_params(vq, nn.unbox(dfvqgan.init_params(dfvqgan.from_config(load_config(STAGE2).vqgan), jax.random.key(7))))
    # data.shards fixes the global batch order; mesh.data=4 the program: both are the same on 2 x 2
    # and 1 x 4 devices, so every run below computes the same losses.
    common = [f"--config.vqgan_ckpt={vq}", f"--config.train.total_steps={TOTAL}", "--config.train.log_every=1",
              "--config.train.save_every=1000", "--config.data.shards=2", "--config.mesh.data=4"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    one_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    one_cmd = [sys.executable, "-m", "lip_jax.cli", "train", "--config", STAGE2, *common]

    def two(workdir, port, log):
        return _start(["bash", LAUNCH, "2", "2", STAGE2, workdir, *common], dict(env, PORT=str(port)), log)

    reference = subprocess.run([*one_cmd, "--workdir", str(tmp_path / "ref")], env=one_env, cwd=REPO,
                               capture_output=True, text=True, timeout=900)
    assert reference.returncode == 0, reference.stderr[-3000:]

    # 2 processes; SIGTERM reaches process 1 only (a preempted host).
    run = str(tmp_path / "run")
    base = 20000 + os.getpid() % 15000
    log = str(tmp_path / "preempted.log")
    proc = two(run, base, log)
    _wait_for_step(proc, run, 3, log)
    victim = [p for p, cmd in _children(proc.pid).items() if "process_id=1" in cmd]
    assert len(victim) == 1
    os.kill(victim[0], signal.SIGTERM)
    err = _finish(proc, log)
    assert proc.returncode == 75, err[-3000:]
    assert err.count("checkpoint saved; rerun the same command to resume") == 2, err[-3000:]  # both processes
    assert "Traceback" not in err
    [agreed] = _steps(run)  # one step, saved by both: each wrote the data shard it reads
    assert 3 < agreed < TOTAL
    assert sorted(f for f in os.listdir(os.path.join(run, "checkpoints", str(agreed), "data"))
                  if f.endswith(".json")) == ["shard_0-of-2.json", "shard_1-of-2.json"]
    assert not os.path.exists(os.path.join(run, "params"))

    # 2 -> 1 process: continue, and stop again a few steps later.
    log = str(tmp_path / "shrunk.log")
    proc = _start([*one_cmd, "--workdir", run], one_env, log)
    _wait_for_step(proc, run, agreed + 3, log)
    proc.send_signal(signal.SIGTERM)
    err = _finish(proc, log)
    assert proc.returncode == 75, err[-3000:]
    second = _steps(run)[-1]
    assert agreed + 3 <= second < TOTAL

    # 1 -> 2 processes: to the end.
    log = str(tmp_path / "grown.log")
    proc = two(run, base + 1, log)
    err = _finish(proc, log)
    assert proc.returncode == 0, err[-3000:]
    assert os.path.isdir(os.path.join(run, "params"))

    got, want = _records(run), _records(tmp_path / "ref")
    assert [r["step"] for r in got] == list(range(1, TOTAL + 1))  # every step once: none skipped or repeated
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], rtol=1e-5)
