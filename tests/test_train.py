"""Training: losses fall, exact resume after SIGKILL, SIGTERM, resharding restore, NaN steps."""

import json
import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from lip_jax.config import load_config
from lip_jax.models import dfvqgan
from lip_jax.train import faults, stage1, stage2
from lip_jax.weights.store import load_params
from lip_jax.train.trainer import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE1 = os.path.join(REPO, "configs", "test_stage1.py")
STAGE2 = os.path.join(REPO, "configs", "test_stage2.py")


def logged(workdir, key):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)[key] for line in f]


def test_stage1_loss_falls_and_encoder_stays_defect_free(tmp_path):
    c = load_config(STAGE1)
    c.train.update(perceptual_weight=0.0, disc_start=100, log_every=20)  # LPIPS: see the test below
    out = train(c, str(tmp_path))
    assert out["step"] == 200
    rec = logged(tmp_path, "rec_loss")
    assert len(rec) == 10 and all(np.isfinite(rec))
    assert np.mean(rec[-2:]) < 0.8 * np.mean(rec[:2]), rec
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        d_loss = [r.get("d_loss") for r in map(json.loads, f)]
    assert d_loss[:5] == [None] * 5 and all(np.isfinite(d_loss[5:]))  # discriminator from step 100
    _guard_never_tripped(tmp_path)
    # The trained encoder is still exactly defect-free.
    model = dfvqgan.from_config(c.vqgan)
    rng = np.random.default_rng(0)
    x1 = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    mask = np.zeros((2, 32, 32), bool)
    mask[0, 3:19, 5:13] = True
    mask[1, 10:30, 2:31] = True
    x2 = np.where(mask[..., None], rng.uniform(-1, 1, x1.shape), x1).astype(np.float32)
    enc = jax.jit(lambda x: model.apply({"params": out["state"].params}, x, jnp.asarray(mask),
                                        method=dfvqgan.DFVQGAN.encode))
    e1, e2 = enc(x1), enc(x2)
    for f1, f2, m in zip(e1["skips"], e2["skips"], e1["skip_masks"]):
        known = ~np.asarray(m)
        np.testing.assert_array_equal(np.asarray(f1)[known], np.asarray(f2)[known])


def test_stage1_lpips_loss_is_the_official_distance():
    """The perceptual term is LPIPS with its heads' dropout on (official training mode)."""
    from lip_jax.models import lpips

    c = load_config(STAGE1)
    net = lpips.LPIPS()
    params = nn.unbox(lpips.init_params(net, jax.random.key(0)))
    rng = np.random.default_rng(1)
    x, y = (jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)) for _ in range(2))
    dist = stage1.lpips_distance(c, params)
    d1, d2 = dist(x, y, jax.random.key(1)), dist(x, y, jax.random.key(2))
    assert d1.shape == (2,) and not np.allclose(d1, d2)  # dropout active
    c.train.lpips_dropout = False
    exact = net.apply({"params": params}, x, y).reshape(2)
    np.testing.assert_array_equal(stage1.lpips_distance(c, params)(x, y, jax.random.key(1)), exact)


def test_stage2_loss_falls(tmp_path, vq_ckpt):
    c = load_config(STAGE2)
    c.vqgan_ckpt = vq_ckpt
    c.train.log_every = 20
    out = train(c, str(tmp_path))
    loss = logged(tmp_path, "loss")
    assert out["step"] == 200 and all(np.isfinite(loss))
    assert np.mean(loss[-2:]) < 0.85 * np.mean(loss[:2]), loss
    _guard_never_tripped(tmp_path)


def _guard_never_tripped(workdir):
    """A healthy recipe (the official structure, the tiny presets) never trips the divergence
    guard: no step skipped, updates a small fraction of its update bound."""
    from lip_jax.train.faults import MAX_UPDATE_RATIO

    assert sum(logged(workdir, "skipped")) == 0
    ratios = logged(workdir, "update_ratio")
    assert all(0 < r < MAX_UPDATE_RATIO / 10 for r in ratios), ratios


def test_nonfinite_step_changes_nothing(vq_ckpt):
    c = load_config(STAGE2)
    c.vqgan_ckpt = vq_ckpt
    vq = load_params(vq_ckpt)
    state = nn.unbox(stage2.init_boxed_state(c, jax.random.key(0)))
    # The trainer's step: the guard keeps the old state (the step itself selects nothing).
    step = jax.jit(faults.guard(stage2.make_train_step(c), float(c.train.skip_grad_norm)))
    b = 8
    nan = jnp.full((b, 32, 32, 3), jnp.nan)  # e.g. a corrupt decode that slipped through
    batch = dict(image=nan, mask=jnp.ones((b, 32, 32), bool), masked_image=nan,
                 text_ids=jnp.zeros((b, 24), jnp.int32))
    new, metrics = step(state, vq, batch)
    assert not bool(metrics["finite"])
    for a, o in zip(jax.tree_util.tree_leaves((new.params, new.opt)), jax.tree_util.tree_leaves((state.params, state.opt))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(o))
    assert int(new.step) == 1


def test_state_does_not_alias_the_codebook_it_starts_from(vq_ckpt):
    """Train steps donate the state; a vae_emb sharing the frozen DF-VQGAN's codebook buffer would
    make `step(donate(state), vq, ...)` fail (or the codebook be freed)."""
    c = load_config(STAGE2)
    codebook = jnp.asarray(load_params(vq_ckpt)["quantize"]["embedding"]["embedding"])
    state = nn.unbox(stage2.init_boxed_state(c, jax.random.key(0), codebook))
    emb = state.params["vae_emb"]["embedding"]
    np.testing.assert_array_equal(np.asarray(emb), np.asarray(codebook))
    assert emb.unsafe_buffer_pointer() != codebook.unsafe_buffer_pointer()


def _cli(workdir, config, *overrides, devices=1, **popen):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "lip_jax.cli", "train", "--config", config, "--workdir", str(workdir), *overrides]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def _params_at(workdir, step):
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(os.path.join(str(workdir), "checkpoints", str(step), "state"))["params"]


def _wait_for_checkpoint(proc, workdir, step, timeout=300):
    path = os.path.join(str(workdir), "checkpoints", str(step))
    deadline = time.time() + timeout
    while not os.path.isdir(path):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.2)


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path, vq_ckpt):
    args = (f"--config.vqgan_ckpt={vq_ckpt}", "--config.train.total_steps=40", "--config.train.save_every=10")
    straight = _cli(tmp_path / "a", STAGE2, *args)
    killed = _cli(tmp_path / "b", STAGE2, *args)
    _wait_for_checkpoint(killed, tmp_path / "b", 20)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert straight.wait(timeout=600) == 0, straight.stdout.read()
    resumed = _cli(tmp_path / "b", STAGE2, *args)
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    assert "resumed from step" in out
    a, b = _params_at(tmp_path / "a", 40), _params_at(tmp_path / "b", 40)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_save_exit_75_and_resume_without_duplicate_logs(tmp_path, vq_ckpt, signum):
    proc = _cli(tmp_path, STAGE2, f"--config.vqgan_ckpt={vq_ckpt}", "--config.train.total_steps=100000",
                "--config.train.save_every=10", "--config.train.log_every=1")
    _wait_for_checkpoint(proc, tmp_path, 10)
    proc.send_signal(signum)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, out
    assert f"interrupted by {signal.Signals(signum).name} at step" in out and "Traceback" not in out
    assert not os.path.exists(tmp_path / "params")  # an interrupted run is not a finished one
    saved = max(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    # Steps logged after the checkpoint are replayed by the resumed run: logged once, not twice.
    resumed = _cli(tmp_path, STAGE2, f"--config.vqgan_ckpt={vq_ckpt}", f"--config.train.total_steps={saved + 3}",
                   "--config.train.save_every=10", "--config.train.log_every=1")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    steps = [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")]
    assert steps == list(range(1, saved + 4)), steps
    assert os.path.isdir(tmp_path / "params")


RESHARD = """
import sys, jax
from lip_jax.config import load_config
from lip_jax.train.trainer import train
c = load_config(sys.argv[1]); c.vqgan_ckpt = sys.argv[2]; c.train.total_steps = 20; c.train.save_every = 10
c.mesh = dict(data=4, fsdp=1, tensor=1)
assert train(c, sys.argv[3], max_steps=10)["step"] == 10
c.mesh = dict(data=1, fsdp=2, tensor=2)
out = train(c, sys.argv[3])
emb = out["state"].params["vae_emb"]["embedding"]
print("step", out["step"], "sharding", tuple(emb.sharding.spec), "loss", out["metrics"]["loss"])
"""


def test_checkpoint_restores_on_another_mesh(tmp_path, vq_ckpt):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", RESHARD, STAGE2, vq_ckpt, str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resumed from step 10" in proc.stdout + proc.stderr
    line = [l for l in proc.stdout.splitlines() if l.startswith("step ")][-1]
    assert line.startswith("step 20 sharding ('tensor', 'fsdp')"), line
    assert np.isfinite(float(line.split()[-1]))


def test_stage1_starts_from_an_official_training_checkpoint(tmp_path):
    """Official {"model": Net state dict, "optimizer", "epoch"} -> `lip-jax convert` -> `lip-jax train`
    with train.init_ckpt: the autoencoder and the discriminator (weights and BatchNorm statistics)
    continue from the checkpoint."""
    from lip_jax.cli import main
    from lip_jax.weights.discriminator import discriminator_from_torch
    from test_discriminator import official_training_state, write_official_checkpoint

    pth, ckpt = str(tmp_path / "net.pth"), str(tmp_path / "orbax")
    write_official_checkpoint(pth, seed=5)
    assert main(["convert", "--kind", "dfvqgan", "--config", STAGE1, "--from", pth, "--to", ckpt]) == 0
    proc = _cli(tmp_path / "run", STAGE1, f"--config.train.init_ckpt={ckpt}", "--config.train.total_steps=2",
                "--config.train.disc_start=0", "--config.train.perceptual_weight=0.0",
                "--config.train.log_every=1", "--config.train.log_details=True")
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out
    with ocp.StandardCheckpointer() as ckpt_reader:
        state = ckpt_reader.restore(os.path.join(str(tmp_path / "run"), "checkpoints", "2", "state"))
    sd = official_training_state(seed=5)
    disc = discriminator_from_torch({k[len("discriminator."):]: v for k, v in sd.items() if k.startswith("discriminator.")})
    # Two Adam steps at lr 1e-4 move each weight by at most ~2e-4; a fresh init differs by ~0.02.
    for a, b in zip(jax.tree_util.tree_leaves(state["disc_params"]), jax.tree_util.tree_leaves(disc["params"])):
        assert np.abs(np.asarray(a) - b).max() < 1e-3
    for name in ("main_3", "main_6", "main_9"):  # 7 in the checkpoint + 3 training passes per step
        assert int(state["disc_stats"][name]["num_batches_tracked"]) == 13
    w = np.asarray(state["params"]["decoder"]["conv_out"]["kernel"])
    ref = sd["decoder.conv_out.weight"].numpy().transpose(2, 3, 1, 0)
    assert np.abs(w - ref).max() < 1e-3
    rows = [json.loads(line) for line in open(os.path.join(str(tmp_path / "run"), "metrics.jsonl"))]
    assert {"lr", "d_loss", "grad_norm/encoder", "grad_norm/decoder", "grad_norm/discriminator"} <= set(rows[-1])
    assert rows[-1]["lr"] == pytest.approx(2.5e-5 * 4)


def test_stage1_rejects_grad_accum():
    """One rule for both stages: data.batch_size is the batch of one update (lr = base_lr x it)."""
    from lip_jax.train.faults import ConfigError

    c = load_config(STAGE1)
    assert stage1.learning_rate(c) == pytest.approx(2.5e-5 * 4)
    c.train.grad_accum = 2
    with pytest.raises(ConfigError, match="grad_accum"):
        stage1.learning_rate(c)


def test_stage1_cosine_decay_is_opt_in_and_the_default_state_is_the_official_one():
    """`train.lr_decay="cosine"` (the demo's short runs) decays the rate to zero over the run; the
    default keeps a float rate, so the optimizer state (and checkpoints) of the official recipe
    are unchanged; a misspelt value is refused."""
    from lip_jax.train.faults import ConfigError

    c = load_config(STAGE1)
    peak = stage1.learning_rate(c)
    assert stage1.schedule(c) == peak
    c.train.update(lr_decay="cosine", total_steps=100)
    rate = stage1.schedule(c)
    assert float(rate(0)) == pytest.approx(peak)
    assert float(rate(50)) == pytest.approx(peak / 2, rel=1e-5)
    assert float(rate(100)) == pytest.approx(0.0, abs=1e-12)
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.ones(3)}
    tx = stage1.optimizer(c)
    opt = tx.init(params)
    for _ in range(60):
        _, opt = tx.update(grads, opt, params)
    step = tx.update(grads, opt, params)[0]["w"]
    assert float(jnp.abs(step).max()) < 0.5 * peak  # the 61st update, at under half the peak rate
    c.train.lr_decay = "linear-ish"
    with pytest.raises(ConfigError, match="lr_decay"):
        stage1.schedule(c)


def test_step_details_show_lr_and_gradient_norms(vq_ckpt):
    """`details` adds the learning rate and per-group gradient norms of the update and changes
    nothing else; the default step does not compute them."""
    c = load_config(STAGE2)
    c.train.update(total_steps=40)  # warm-up int(0.05 x 40) = 2 updates
    vq = load_params(vq_ckpt)
    state = nn.unbox(stage2.init_boxed_state(c, jax.random.key(0)))
    rng = np.random.default_rng(0)
    b = 8
    image = jnp.asarray(rng.uniform(-1, 1, (b, 32, 32, 3)).astype(np.float32))
    mask = jnp.asarray(rng.uniform(size=(b, 32, 32)) < 0.5)
    batch = dict(image=image, mask=mask, masked_image=jnp.where(mask[..., None], 0.0, image),
                 text_ids=jnp.asarray(rng.integers(0, 259, (b, 24)), jnp.int32))
    plain = jax.jit(stage2.make_train_step(c))
    detailed = jax.jit(stage2.make_train_step(c, details=True))
    s1, m1 = plain(state, vq, batch)
    s2, m2 = detailed(state, vq, batch)
    assert not any(k.startswith(("grad_norm", "lr")) for k in m1)
    for x, y in zip(jax.tree_util.tree_leaves((s1.params, s1.opt)), jax.tree_util.tree_leaves((s2.params, s2.opt))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert float(m2["lr"]) == 0.0  # first update of the warm-up
    # After one update the first moment is (1 - b1) x gradient.
    for group, mu in s2.opt.mu.items():
        want = float(optax.tree.norm(mu)) / 0.1
        assert float(m2[f"grad_norm/{group}"]) == pytest.approx(want, rel=1e-5), group
    _, m3 = detailed(s2, vq, batch)
    assert float(m3["lr"]) == pytest.approx(c.train.lr / 2)
