"""Stage-1 discriminator: parity with the official structure (BatchNorm2d running statistics
included), and the official stage-1 training checkpoint through `lip-jax convert` both ways."""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lip_jax.weights import torch_dfvqgan as TD
import torch_discriminator as T
from lip_jax.config import load_config
from lip_jax.cli import main
from lip_jax.weights import torch_io
from lip_jax.weights import dfvqgan as conv_vq
from lip_jax.weights.discriminator import discriminator_from_torch, discriminator_to_torch
from lip_jax.models import dfvqgan
from lip_jax.models.discriminator import NLayerDiscriminator
from lip_jax.train import stage1

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE1 = os.path.join(REPO, "configs", "test_stage1.py")
BN = ("main_3", "main_6", "main_9")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def torch_disc(ndf=8, n_layers=3, seed=0):
    return T.weights_init_(T.NLayerDiscriminator(ndf=ndf, n_layers=n_layers), seed)


def nchw(x):
    return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)


def images(n, seed, size=32):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def test_forward_and_running_statistics_match_batchnorm2d():
    td = torch_disc()
    tree = discriminator_from_torch(td.state_dict())
    disc = NLayerDiscriminator(ndf=8, n_layers=3)
    x = images(4, 1)
    out, upd = disc.apply(tree, jnp.asarray(x), train=True, mutable=["batch_stats"])
    td.train()
    with torch.no_grad():
        ref = td(nchw(x)).permute(0, 2, 3, 1).numpy()
    assert rel_err(out, ref) < 1e-5
    got = discriminator_to_torch({"params": tree["params"], "batch_stats": upd["batch_stats"]})
    for k, v in td.state_dict().items():
        if "running" in k:
            assert rel_err(got[k], v.numpy()) < 1e-6, k
        elif k.endswith("num_batches_tracked"):
            assert int(got[k]) == int(v) == 8
    td.eval()
    with torch.no_grad():
        ref = td(nchw(x)).permute(0, 2, 3, 1).numpy()
    trained = {"params": tree["params"], "batch_stats": upd["batch_stats"]}  # torch's after the train pass
    assert rel_err(disc.apply(trained, jnp.asarray(x), train=False), ref) < 1e-5


def test_running_statistics_after_one_training_step_match_torch():
    """One stage-1 step with the discriminator on runs it three times in training mode (generator
    pass on the reconstruction, then real and fresh fake): BatchNorm2d's statistics after the same."""
    c = load_config(STAGE1)
    c.train.perceptual_weight = 0.0
    td = torch_disc(seed=3)
    state = nn.unbox(stage1.init_boxed_state(c, jax.random.key(0)))
    tree = discriminator_from_torch(td.state_dict())
    state = state.replace(disc_params=tree["params"], disc_stats=tree["batch_stats"])
    x = jnp.asarray(images(4, 2))
    mask = np.zeros((4, 32, 32), bool)
    mask[:2, 4:20, 6:26] = True
    batch = dict(image=x, mask=jnp.asarray(mask), decoder_none=jnp.array([False, True, False, False]))
    step = jax.jit(stage1.make_train_step(c, lambda a, b, k: jnp.zeros(a.shape[0]), use_disc=True))
    new, metrics = step(state, batch)
    assert bool(metrics["finite"])
    model = dfvqgan.from_config(c.vqgan)
    rec = jax.jit(lambda p: model.apply({"params": p}, x, batch["mask"], batch["decoder_none"])[0])
    td.train()
    with torch.no_grad():
        for inp in (rec(state.params), x, rec(new.params)):
            td(nchw(inp))
    got = discriminator_to_torch({"params": new.disc_params, "batch_stats": new.disc_stats})
    errs = {k: rel_err(got[k], v.numpy()) for k, v in td.state_dict().items() if "running" in k}
    assert max(errs.values()) < 1e-6, errs
    assert all(int(got[f"main.{i}.num_batches_tracked"]) == 10 for i in (3, 6, 9))


@functools.lru_cache(maxsize=None)
def official_training_state(seed=0):
    """An official-format stage-1 training Net state dict: tiny DF-VQGAN, discriminator (ndf 8),
    and a few frozen LPIPS keys."""
    cfg = load_config(STAGE1).vqgan
    sd = {k: v.clone() for k, v in TD.randomize_(TD.DFVQGAN(dict(cfg)), seed=seed).state_dict().items()}
    sd.update({"discriminator." + k: v.clone() for k, v in torch_disc(seed=seed).state_dict().items()})
    sd["perceptual_loss.lin0.model.1.weight"] = torch.ones(1, 64, 1, 1)
    sd["perceptual_loss.scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    return sd


def write_official_checkpoint(path, seed=0):
    """As the official Trainer.save_checkpoint: {"model", "optimizer": [ae, disc], "epoch"}."""
    torch.save({"model": official_training_state(seed), "optimizer": [{"state": {}, "param_groups": []}] * 2,
                "epoch": 3}, path)


def test_training_checkpoint_round_trip_is_bit_exact_and_strict(tmp_path, capsys):
    pth, ckpt, back = str(tmp_path / "net.pth"), str(tmp_path / "orbax"), str(tmp_path / "back.pth")
    write_official_checkpoint(pth)
    assert main(["convert", "--kind", "dfvqgan", "--config", STAGE1, "--from", pth, "--to", ckpt]) == 0
    assert "left out 2 perceptual_loss.* keys" in capsys.readouterr().out
    assert main(["convert", "--config", STAGE1, "--from", ckpt, "--to", back]) == 0  # kind detected
    sd = official_training_state()
    got = torch_io.load_torch_checkpoint(back)
    assert sorted(got) == sorted(k for k in sd if not k.startswith("perceptual_loss."))
    for k, v in got.items():
        assert v.dtype == sd[k].dtype, k
        assert torch.equal(v, sd[k]), k
    td = T.NLayerDiscriminator(ndf=8, n_layers=3)
    td.load_state_dict(torch_io.subtree(got, "discriminator"), strict=True)
    TD.DFVQGAN(dict(load_config(STAGE1).vqgan)).load_state_dict(
        {k: v for k, v in got.items() if not k.startswith("discriminator.")}, strict=True)
    # The same directory is a DF-VQGAN checkpoint for every reader of one (stage 2, reconstruct).
    from lip_jax.weights.store import load_part

    params = load_part(ckpt, "vqgan", conv_vq.param_template(load_config(STAGE1).vqgan))
    assert "discriminator" not in params and "quantize" in params


@pytest.mark.parametrize("damage", ["missing", "misshaped"])
def test_discriminator_conversion_is_strict(damage):
    sd = dict(torch_disc().state_dict())
    if damage == "missing":
        del sd["main.6.running_var"]
    else:
        sd["main.6.running_var"] = torch.ones(5)
    with pytest.raises(torch_io.ConversionError, match=r"main\.6\.running_var"):
        discriminator_from_torch(sd)
