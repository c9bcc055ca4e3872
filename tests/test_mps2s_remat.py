"""MP-S2S per-layer rematerialisation (same loss and gradients) and bfloat16 compute (close)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax.models import mps2s
from random_weights import random_params

# Two decoder layers (full + nearby attention) keep the compiles short.
CFG = dataclasses.replace(mps2s.MPSConfig.from_any("tiny"), dec_depth=2, attn_dropout=0.1, ff_dropout=0.1)
# LLVM at -O0 and the classic emitters: about half the CPU compile time; same numbers.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _params(cfg, seed=0):
    """Random weights from the parameter template (no compiled Flax init)."""
    from lip_jax.weights.mps2s import param_template

    return jax.tree_util.tree_map(jnp.asarray, random_params(param_template(cfg), seed))


def _inputs(b=2, seed=0):
    rng = np.random.default_rng(seed)
    n = CFG.num_tokens
    return (jnp.asarray(rng.integers(0, CFG.vqvae_vocab_size, (b, n)), jnp.int32),
            jnp.asarray(rng.random((b, n)) < 0.5),
            jnp.asarray(rng.uniform(-1, 1, (b, CFG.img_size, CFG.img_size, 3)), jnp.float32),
            jnp.asarray(rng.integers(1, CFG.text_vocab_size, (b, CFG.text_len)), jnp.int32))


def _loss_and_grad(cfg, params, inputs):
    model = mps2s.MPS2S(cfg)
    tokens, mask = inputs[0], inputs[1]

    def loss(p):  # dropout on: remat must replay the same dropout masks
        logits = model.apply({"params": p}, *inputs, deterministic=False, rngs={"dropout": jax.random.key(3)})
        return mps2s.hole_loss(logits, tokens, mask), logits

    fn = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params).compile(compiler_options=FAST)
    (value, logits), grads = fn(params)
    return value, logits, grads


@pytest.fixture(scope="module")
def reference():
    params = _params(CFG)
    inputs = _inputs()
    return params, inputs, _loss_and_grad(CFG, params, inputs)


def test_remat_gives_the_same_loss_and_gradients(reference):
    params, inputs, (loss, _, grads) = reference
    cfg = dataclasses.replace(CFG, remat="full")
    # Same parameter tree (names unchanged: the converter and checkpoints keep working).
    from lip_jax.weights.mps2s import param_template
    assert jax.tree_util.tree_structure(param_template(cfg)) == jax.tree_util.tree_structure(params)
    loss_r, _, grads_r = _loss_and_grad(cfg, params, inputs)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g_r = grads_r
        for k in path:
            g_r = g_r[k.key]
        # same math, float32 summation order may differ: tight bound relative to the leaf's scale
        err = float(jnp.max(jnp.abs(g_r - g)))
        assert err <= 1e-5 * float(jnp.max(jnp.abs(g))) + 1e-9, (jax.tree_util.keystr(path), err)


def test_remat_is_applied():
    """The rematerialised program really recomputes: its jaxpr carries a remat (checkpoint) op."""
    cfg = dataclasses.replace(CFG, remat="full")
    params = _params(cfg)
    inputs = _inputs(1)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(mps2s.MPS2S(cfg).apply({"params": p}, *inputs))))(params))
    assert "checkpoint" in jaxpr or "remat" in jaxpr


def test_bfloat16_compute_is_close(reference):
    params, inputs, (loss, logits, grads) = reference
    cfg = dataclasses.replace(CFG, dtype="bfloat16", remat="dots")  # the matmul-saving policy runs too
    loss_b, logits_b, grads_b = _loss_and_grad(cfg, params, inputs)
    assert logits_b.dtype == jnp.float32 and loss_b.dtype == jnp.float32  # logits / loss in float32
    # master weights stay float32: gradients come back float32
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads_b))
    assert np.isfinite(float(loss_b))
    np.testing.assert_allclose(loss_b, loss, rtol=2e-2)
    assert np.abs(np.asarray(logits_b) - np.asarray(logits)).max() < 0.1 * np.abs(np.asarray(logits)).max()
    flat, flat_b = jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_b)
    num = np.sqrt(sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(flat, flat_b)))
    den = np.sqrt(sum(float(jnp.sum(a ** 2)) for a in flat))
    assert num < 0.1 * den, num / den
    # ... and it really computes in bfloat16 (it is not the float32 program)
    assert float(jnp.abs(loss_b - loss)) > 0


def test_scan_layers_is_the_same_function():
    """scan_layers (lax.scan over layer groups, parameters still stored per layer) with per-layer
    remat: same loss and gradients as the unrolled loop; dropout still draws inside the scan."""
    cfg = dataclasses.replace(CFG, dec_depth=4, enc_depth=2, attn_types_dec=("full", "nearby"),
                              attn_dropout=0.0, ff_dropout=0.0)
    params = _params(cfg)
    inputs = _inputs()
    loss, logits, grads = _loss_and_grad(cfg, params, inputs)
    scan = dataclasses.replace(cfg, scan_layers=True, remat="full")
    jaxpr = str(jax.make_jaxpr(lambda p: mps2s.MPS2S(scan).apply({"params": p}, *inputs))(params))
    assert jaxpr.count("scan[") >= 3  # decoder, token view, pixel view
    loss_s, logits_s, grads_s = _loss_and_grad(scan, params, inputs)
    np.testing.assert_allclose(np.asarray(logits_s), np.asarray(logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss_s, loss, rtol=1e-6)
    for (path, g), g_s in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(grads_s)):
        err = float(jnp.max(jnp.abs(g_s - g)))
        assert err <= 1e-5 * float(jnp.max(jnp.abs(g))) + 1e-9, (jax.tree_util.keystr(path), err)
    drop = dataclasses.replace(scan, attn_dropout=0.5, ff_dropout=0.5)
    out = jax.jit(lambda p, r: mps2s.MPS2S(drop).apply({"params": p}, *inputs, deterministic=False,
                                                         rngs={"dropout": r}))
    a, b = out(params, jax.random.key(1)), out(params, jax.random.key(2))
    assert np.isfinite(np.asarray(a)).all() and not np.allclose(np.asarray(a), np.asarray(b))


def test_config_validation():
    with pytest.raises(ValueError, match="remat"):
        mps2s.MPSConfig.from_any(dict(mps2s.PRESETS["tiny"], remat="some"))
    with pytest.raises(ValueError, match="dtype"):
        mps2s.MPSConfig.from_any(dict(mps2s.PRESETS["tiny"], dtype="float16"))
