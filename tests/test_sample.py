import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lip_jax import sample
from lip_jax.models import mps2s

CFG = mps2s.MPSConfig.from_any("tiny")
S = 2  # candidates per image


def _masks():
    h, w = CFG.grid
    m = np.zeros((5, h, w), bool)
    m[0, 2:6, 3:7] = True                 # rectangle in the middle
    m[1, 0, 0] = True                     # first token is a hole: no known token before it
    m[1, 5:, :] = True                    # ... and a band of full rows at the bottom
    m[2, 4, 4] = True                     # a single hole token
    m[3] = np.random.default_rng(0).random((h, w)) < 0.4  # irregular
    m[4, :, :] = True                     # everything (text + pixel views only)
    return m.reshape(5, -1)


def _random_params(cfg, seed=0):
    """O(1)-scale random weights from the parameter template (faster than compiling Flax init).
    LayerScale is 1 rather than its 0.1 init so each sampled token depends on the cache contents."""
    from lip_jax.weights.mps2s import param_template

    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if len(s.shape) == 3 and name == "scale":  # LayerScale
            return np.ones(s.shape, np.float32)
        if len(s.shape) == 1:
            return ((name == "scale") + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
        fan_in = s.shape[-2] * (np.prod(s.shape[:-2]) if len(s.shape) == 4 else 1)
        scale = 1.0 if name in ("embedding", "positional_embedding") or "emb" in name or "weights" in name else fan_in ** -0.5
        return (scale * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, param_template(cfg))


@pytest.fixture(scope="module")
def setup():
    params = _random_params(CFG)
    b, n = 5, CFG.num_tokens
    inputs = dict(
        tokens=jax.random.randint(jax.random.PRNGKey(1), (b, n), 0, CFG.vqvae_vocab_size),
        token_mask=jnp.asarray(_masks()),
        image=jax.random.uniform(jax.random.PRNGKey(2), (b, CFG.img_size, CFG.img_size, 3), minval=-1, maxval=1),
        text_ids=jax.random.randint(jax.random.PRNGKey(3), (b, CFG.text_len), 0, CFG.text_vocab_size))
    return params, inputs


@pytest.mark.parametrize("top_k,temperature", [(1, 1.0), (8, 0.8), (CFG.vqvae_vocab_size, 1.5)])
def test_cached_equals_recompute(setup, top_k, temperature):
    params, inputs = setup
    kw = dict(rng=jax.random.PRNGKey(42), num_samples=S, top_k=top_k, temperature=temperature, **inputs)
    cached = np.asarray(sample.sample_tokens(params, CFG, **kw))
    ref = np.asarray(sample.sample_tokens_recompute(params, CFG, **kw))
    assert cached.shape == (5 * S, CFG.num_tokens) and cached.dtype == np.int32
    np.testing.assert_array_equal(cached, ref)

    mask = np.repeat(np.asarray(inputs["token_mask"]), S, axis=0)
    tokens = np.repeat(np.asarray(inputs["tokens"]), S, axis=0)
    np.testing.assert_array_equal(cached[~mask], tokens[~mask])  # known tokens kept
    assert cached.min() >= 0 and cached.max() < CFG.vqvae_vocab_size
    assert len(np.unique(cached[mask])) > 5  # the model output is not degenerate
    if top_k == 1:  # greedy: candidates of one image coincide
        np.testing.assert_array_equal(cached[0::S], cached[1::S])
    else:  # sampling: candidates differ
        assert (cached[0::S] != cached[1::S]).any()


def test_seed_determinism_and_topk_support(setup):
    params, inputs = setup
    run = lambda seed, k: np.asarray(sample.sample_tokens(
        params, CFG, rng=jax.random.PRNGKey(seed), num_samples=S, top_k=k, **inputs))
    a = run(5, 4)
    np.testing.assert_array_equal(a, run(5, 4))
    assert (a != run(6, 4)).any()
    # with top_k = 4 every sampled token is among the 4 best under teacher forcing on the sampled sequence
    mask = np.repeat(np.asarray(inputs["token_mask"]), S, axis=0)
    rep = {k: jnp.repeat(v, S, axis=0) for k, v in inputs.items()}
    logits = np.asarray(jax.jit(lambda p, t: mps2s.MPS2S(CFG).apply(
        {"params": p}, t, rep["token_mask"], rep["image"], rep["text_ids"]))(params, jnp.asarray(a)))
    rank = (logits > np.take_along_axis(logits, a[..., None], -1)).sum(-1)
    assert rank[mask].max() < 4


def test_top_k_keep_matches_sort():
    """The bit-search top-k filter keeps exactly logits >= the k-th largest (sorted) logit."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16)).astype(np.float32)
    x[1] = np.round(x[1])                                                  # ties
    x[2, :8] = [0.0, -0.0, np.inf, -np.inf, 3e38, -3e38, 1.0, 1.0]         # signed zeros, infinities
    x[3] = 2.5                                                             # all equal
    x[4] *= 1e-30
    x[5] = -np.abs(x[5]) * 1e30
    ref = jax.jit(lambda v, k: v >= jnp.take_along_axis(-jnp.sort(-v, axis=-1), jnp.full((6, 1), k - 1), axis=-1))
    got = jax.jit(sample.common.top_k_keep)
    for k in range(1, 17):
        keep = np.asarray(got(x, jnp.int32(k)))
        np.testing.assert_array_equal(keep, np.asarray(ref(x, jnp.int32(k))), err_msg=f"k={k}")
        assert (keep.sum(-1) >= k).all()


def test_bad_arguments(setup):
    params, inputs = setup
    kw = dict(rng=jax.random.PRNGKey(0), **inputs)
    with pytest.raises(ValueError, match="top_k"):
        sample.sample_tokens(params, CFG, top_k=0, **kw)
    with pytest.raises(ValueError, match="temperature"):
        sample.sample_tokens(params, CFG, temperature=0.0, **kw)
    with pytest.raises(ValueError, match="num_samples"):
        sample.sample_tokens(params, CFG, num_samples=0, **kw)
    with pytest.raises(ValueError, match="token_mask must be bool"):
        sample.sample_tokens(params, CFG, **dict(kw, token_mask=inputs["token_mask"].astype(jnp.int32)))
    with pytest.raises(ValueError, match="image must be NHWC"):
        sample.sample_tokens(params, CFG, **dict(kw, image=jnp.moveaxis(inputs["image"], -1, 1)))
    with pytest.raises(ValueError, match="text_ids"):
        sample.sample_tokens(params, CFG, **dict(kw, text_ids=inputs["text_ids"][:, :5]))


def test_kv_cache_bytes_official():
    got = sample.kv_cache_bytes("cc", 8)
    # 24 layers x (k, v) x 8 rows x 1025 positions x 1280 channels x 4 bytes
    assert got["self_kv"] == 24 * 2 * 8 * 1025 * 1280 * 4
    assert got["cross_kv"] == 24 * 2 * 8 * (1024 + 256 + 77) * 1280 * 4


def test_kernels_cast_once_give_the_same_bf16_model(setup):
    """The sampler casts matmul / conv kernels to bfloat16 before its loop; every layer casts them to
    its compute dtype anyway, so the model's output must be bit-identical (a layer computing in
    float32 would change)."""
    import dataclasses

    params, inputs = setup
    cfg = dataclasses.replace(CFG, dtype="bfloat16")
    cast = sample.common.compute_kernels(params, cfg)
    kernels = [x.dtype for p, x in jax.tree_util.tree_leaves_with_path(cast) if p[-1].key == "kernel"]
    assert kernels and set(kernels) == {jnp.dtype(jnp.bfloat16)}
    model = mps2s.MPS2S(cfg)
    run = jax.jit(lambda p: model.apply({"params": p}, **inputs))
    ref, got = np.asarray(run(params)), np.asarray(run(cast))
    assert np.array_equal(ref, got)
    assert not np.array_equal(ref, np.asarray(jax.jit(lambda p: mps2s.MPS2S(CFG).apply({"params": p}, **inputs))(params)))
