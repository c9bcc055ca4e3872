"""lip_jax.ops.attention: jax.nn.dot_product_attention with our mask convention equals the plain math."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax.models.mps2s import MPSConfig, decoder_allowed
from lip_jax.ops.attention import attention, resolve


def reference(q, k, v, allowed):
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(allowed, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhd->bqhd", w / w.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("kind", ["none", "causal", "nearby", "nearby+causal"])
def test_attention_matches_masked_softmax(kind):
    rng = np.random.default_rng(0)
    n, grid = 17, (4, 4)  # BOS + 4x4 tokens, as the MP-S2S decoder
    q, k, v = (rng.standard_normal((2, n, 3, 8)).astype(np.float64) for _ in range(3))
    qp, kp = np.arange(n)[:, None], np.arange(n)[None, :]
    causal = kind != "none" and kind != "nearby"
    mask = decoder_allowed(qp, kp, "nearby", grid, 3) if kind.startswith("nearby") else None
    allowed = np.ones((n, n), bool) if mask is None else mask
    allowed = allowed & (kp <= qp) if causal else allowed
    out = attention(*(jnp.asarray(t, jnp.float32) for t in (q, k, v)), mask=mask, causal=causal)
    ref = reference(q, k, v, allowed)
    assert np.abs(np.asarray(out) - ref).max() / np.abs(ref).max() < 1e-5
    if kind != "none":  # the mask is really applied
        assert np.abs(np.asarray(out) - reference(q, k, v, np.ones((n, n), bool))).max() > 1e-2


def test_implementation_choice():
    assert resolve("auto", jnp.float32, 64) == "xla"
    if jax.default_backend() != "gpu":
        assert resolve("auto", jnp.bfloat16, 64) == "xla"
    assert resolve("cudnn", jnp.float32, 64) == "cudnn"
    with pytest.raises(ValueError, match="attention implementation"):
        resolve("flash", jnp.float32, 64)
    with pytest.raises(ValueError, match="attention must be one of"):
        MPSConfig(attention="flash")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs a GPU")
@pytest.mark.parametrize("kind", ["none", "causal", "nearby+causal"])
def test_cudnn_matches_xla_on_gpu(kind):
    rng = np.random.default_rng(1)
    n, grid = 1025, (32, 32)  # the official decoder: BOS + 32x32 tokens, 64-wide heads
    q, k, v = (jnp.asarray(rng.standard_normal((2, n, 4, 64)), jnp.bfloat16) for _ in range(3))
    qp, kp = np.arange(n)[:, None], np.arange(n)[None, :]
    mask = decoder_allowed(qp, kp, "nearby", grid, 11) if kind.startswith("nearby") else None
    kw = dict(mask=mask, causal=kind != "none")
    assert resolve("auto", jnp.bfloat16, 64) == "cudnn"
    ref = np.asarray(attention(*(t.astype(jnp.float32) for t in (q, k, v)), implementation="xla", **kw))
    got = np.asarray(attention(q, k, v, implementation="cudnn", **kw), np.float32)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-2
