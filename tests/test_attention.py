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
    assert resolve("auto", jnp.float32, 64, 1024, 1024) == "xla"
    if jax.default_backend() != "gpu":
        assert resolve("auto", jnp.bfloat16, 64, 1024, 1024) == "xla"
    else:
        assert resolve("auto", jnp.bfloat16, 64, 1024, 1024) == "cudnn"
        assert resolve("auto", jnp.bfloat16, 64, 77, 77) == "xla"  # odd lengths: cuDNN's backward refuses
        assert resolve("auto", jnp.bfloat16, 64, 1024, 1357) == "xla"
        assert resolve("auto", jnp.bfloat16, 256, 1024, 1024) == "xla"
    assert resolve("cudnn", jnp.float32, 64, 8, 8) == "cudnn"
    with pytest.raises(ValueError, match="attention implementation"):
        resolve("flash", jnp.float32, 64, 8, 8)
    with pytest.raises(ValueError, match="attention must be one of"):
        MPSConfig(attention="flash")


# The official-size shapes: decoder self-attention (causal / nearby, BOS + 1023 tokens), decoder
# cross-attention over the 1024 + 256 + 77 condition, encoders, CLIP text (77, causal).
GPU_SHAPES = {"causal": (1024, 1024, "causal"), "nearby": (1024, 1024, "nearby"), "cross": (1024, 1357, "none"),
              "encoder": (256, 256, "none"), "clip_text": (77, 77, "causal")}


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs a GPU")
@pytest.mark.parametrize("name", sorted(GPU_SHAPES))
def test_auto_on_gpu_matches_float32_xla_with_gradients(name):
    """Whatever "auto" picks for each shape the model uses, forward and gradients run and agree
    with float32 XLA attention to bf16 accuracy."""
    nq, nk, kind = GPU_SHAPES[name]
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((2, nq, 4, 64)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.standard_normal((2, nk, 4, 64)), jnp.bfloat16) for _ in range(2))
    qp, kp = np.arange(nq)[:, None], np.arange(nk)[None, :]
    mask = decoder_allowed(qp, kp, "nearby", (32, 32), 11) if kind == "nearby" else None
    kw = dict(mask=mask, causal=kind != "none")

    def loss(impl, q, k, v):
        out = attention(q, k, v, implementation=impl, **kw).astype(jnp.float32)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

    grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3), has_aux=True), static_argnums=0)
    (gref, ref) = grad("xla", *(t.astype(jnp.float32) for t in (q, k, v)))
    (got_g, got) = grad("auto", q, k, v)
    rel = lambda a, b: float(jnp.linalg.norm(jnp.asarray(a, jnp.float32) - b) / jnp.linalg.norm(b))  # noqa: E731
    assert rel(got, ref) < 1e-2
    for a, b in zip(got_g, gref):
        assert rel(a, b) < 2e-2
