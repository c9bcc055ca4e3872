"""Two processes on localhost (gloo, 2 CPU devices each) train like one process over 4 devices."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np

from lip_jax.app.config import load_config
from lip_jax.models import dfvqgan
from lip_jax.train.checkpoints import save_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE2 = os.path.join(REPO, "configs", "test_stage2.py")


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def test_two_processes_match_one_process(tmp_path):
    vq = str(tmp_path / "vq")
    save_params(vq, nn.unbox(dfvqgan.init_params(dfvqgan.from_config(load_config(STAGE2).vqgan), jax.random.key(7))))
    common = [f"--config.vqgan_ckpt={vq}", "--config.train.total_steps=20", "--config.train.log_every=5",
              "--config.train.save_every=20", "--config.data.shards=2", "--config.mesh.data=4"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PORT=str(20000 + os.getpid() % 20000),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    two = subprocess.run(["bash", os.path.join(REPO, "launch", "local_multiprocess.sh"), "2", "2", STAGE2,
                          str(tmp_path / "two"), *common], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=900)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "lip_jax.cli", "train", "--config", STAGE2, "--workdir",
                          str(tmp_path / "one"), *common],
                         env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4"), cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    a, b = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert len(a) == len(b) == 4
    np.testing.assert_allclose(a, b, rtol=1e-5)
    # Only process 0 writes logs; both processes wrote their own data state.
    data = [f for f in os.listdir(tmp_path / "two" / "checkpoints" / "20" / "data") if f.endswith(".json")]
    assert sorted(data) == ["process_0-of-2.json", "process_1-of-2.json"]
