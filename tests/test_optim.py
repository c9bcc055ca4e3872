"""Stage 2's optimizer is the official `transformers.AdamW` under `get_linear_schedule_with_warmup`
(reference: tests/torch_discriminator.py, written from the formula); optax.adamw is not."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import torch_discriminator as T
from lip_jax.config import load_config
from lip_jax.train.faults import ConfigError
from lip_jax.train import optim, stage2

SHAPES = {"a": (16, 8), "b": (8,), "c": (4, 4, 3, 2)}
SCALES = {"a": 1.0, "b": 1e-7, "c": 1e-3}  # b: gradients near eps, where the rule's eps placement shows


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))


def grads_at(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {k: (SCALES[k] * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}


def torch_updates(steps, check, make_opt):
    """Updates of the reference at the steps in `check` (1-based). Parameters are zeroed before
    each step, so with no weight decay the parameter after the step is the update, unrounded by p."""
    params = {k: torch.nn.Parameter(torch.zeros(s)) for k, s in SHAPES.items()}
    opt, sched = make_opt(list(params.values()))
    out = {}
    for t in range(1, steps + 1):
        with torch.no_grad():
            for k, p in params.items():
                p.zero_()
                p.grad = torch.from_numpy(grads_at(t)[k])
        opt.step()
        if sched is not None:
            sched.step()
        if t in check:
            out[t] = {k: p.detach().numpy().copy() for k, p in params.items()}
    return out


def jax_updates(tx, steps, check):
    params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = {}
    for t in range(1, steps + 1):
        u, state = update({k: jnp.asarray(v) for k, v in grads_at(t).items()}, state, params)
        if t in check:
            out[t] = jax.device_get(u)
    return out


def test_transformers_adamw_rule_matches_reference():
    check = (1, 2, 100)
    ref = torch_updates(100, check, lambda p: (T.TransformersAdamW(p, lr=5e-4, eps=1e-8), None))
    ours = jax_updates(optim.transformers_adamw(5e-4, eps=1e-8), 100, check)
    for t in check:
        for k in SHAPES:
            err = rel_err(ours[t][k], ref[t][k])
            assert err < 1e-6, (t, k, err)
    # optax.adamw puts eps inside the bias-corrected root: far off where |g| ~ eps.
    theirs = jax_updates(optax.adamw(5e-4, eps=1e-8, weight_decay=0.0), 100, check)
    assert rel_err(theirs[1]["b"], ref[1]["b"]) > 1e-2


def test_transformers_adamw_weight_decay_matches_reference():
    """Decoupled decay on the updated parameter, scaled by lr (not the step size)."""
    rng = np.random.default_rng(0)
    p0 = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in p0.items()}
    opt = T.TransformersAdamW(list(tparams.values()), lr=1e-2, eps=1e-8, weight_decay=0.1)
    tx = optim.transformers_adamw(1e-2, eps=1e-8, weight_decay=0.1)
    params = {k: jnp.asarray(v) for k, v in p0.items()}
    state = tx.init(params)
    for t in range(1, 4):
        for k, p in tparams.items():
            p.grad = torch.from_numpy(grads_at(t)[k])
        opt.step()
        u, state = tx.update({k: jnp.asarray(v) for k, v in grads_at(t).items()}, state, params)
        params = optax.apply_updates(params, u)
    for k in SHAPES:
        assert rel_err(params[k], tparams[k].detach().numpy()) < 1e-6, k


def test_bias_correction_table_is_float64_exact():
    table = optim.bias_correction_table(0.9, 0.999)
    for t in (1, 2, 3, 100, 5000):
        exact = np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        assert table[t] == np.float32(exact), t
    assert table[-1] == 1.0 and len(table) < 20_000


@pytest.mark.parametrize("total", [30, 200])
def test_schedule_matches_transformers_linear_warmup(total):
    """Warm-up int(0.05 x total) as finetune.py (total 30: 1 step, where round() gave 2)."""
    c = load_config("configs/test_stage2.py")
    c.train.total_steps = total
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=c.train.lr)
    sched = T.linear_schedule_with_warmup(opt, int(total * 0.05), total)
    want = []
    for _ in range(total + 2):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    got = jax.vmap(stage2.schedule(c))(jnp.arange(total + 2))
    assert rel_err(got, want) < 1e-6
    assert float(got[0]) == 0.0 and float(got[total]) == 0.0


def test_stage2_optimizer_is_the_official_one():
    c = load_config("configs/test_stage2.py")
    c.train.update(total_steps=30, lr=5e-4)
    check = (1, 2, 3, 30)
    ref = torch_updates(30, check, lambda p: (lambda o: (o, T.linear_schedule_with_warmup(o, 1, 30)))(
        T.TransformersAdamW(p, lr=5e-4, eps=1e-8)))
    ours = jax_updates(stage2.optimizer(c), 30, check)
    for k in SHAPES:
        assert not np.any(ours[1][k]) and not np.any(ref[1][k])  # lr 0 on the first update (warm-up)
        for t in check[1:]:
            assert rel_err(ours[t][k], ref[t][k]) < 1e-6, (t, k)
    c.train.optimizer = "optax_adamw"
    theirs = jax_updates(stage2.optimizer(c), 30, check)
    assert rel_err(theirs[2]["b"], ref[2]["b"]) > 1e-2
    c.train.optimizer = "adam"
    with pytest.raises(ConfigError, match="transformers_adamw, optax_adamw"):
        stage2.optimizer(c)
