"""The parallel (speculative Jacobi) decoder: the sequential decoder's tokens under greedy decoding,
its distribution under sampling (checked against the exact joint by enumeration, with three broken
acceptance rules shown to fail the same check), known tokens kept, a seed fixing the result."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lip_jax import sample
from lip_jax.models import mps2s
from lip_jax.sample.common import filtered_logits
from test_sample import _masks, _random_params

TINY = mps2s.MPSConfig.from_any("tiny")


def _inputs(cfg, masks, seed=0):
    b, n = masks.shape
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return dict(tokens=jax.random.randint(keys[0], (b, n), 0, cfg.vqvae_vocab_size), token_mask=jnp.asarray(masks),
                image=jax.random.uniform(keys[1], (b, cfg.img_size, cfg.img_size, 3), minval=-1, maxval=1),
                text_ids=jax.random.randint(keys[2], (b, cfg.text_len), 0, cfg.text_vocab_size))


def _sequential_passes(mask):
    """Decoder passes of the sequential decoder on one row: bulk pieces for each known run, then one."""
    from lip_jax.sample.sequential import bulk_passes

    holes = np.flatnonzero(mask)
    gaps = np.diff(np.concatenate([[-1], holes])) - 1
    return int(sum(int(bulk_passes(int(g))) + 1 for g in gaps))


def _greedy_equal(cfg, masks, params, **options):
    kw = dict(rng=jax.random.PRNGKey(3), num_samples=2, top_k=1, **_inputs(cfg, masks))
    seq = np.asarray(sample.sample_tokens(params, cfg, decoder="sequential", **kw))
    par, passes = sample.jacobi_tokens(params, cfg, with_stats=True, **kw, **options)
    np.testing.assert_array_equal(np.asarray(par), seq)
    return np.asarray(passes), np.repeat(masks.sum(1), 2)


@pytest.mark.parametrize("window,draft", [(16, "left"), (4, "above"), (64, "zero")])
def test_greedy_tokens_equal_the_sequential_decoders(window, draft):
    """Rows of different hole counts and layouts: a block, a first-token hole with a band ending the
    grid, a single token, scattered holes, everything."""
    passes, holes = _greedy_equal(TINY, _masks(), _random_params(TINY), window=window, draft=draft)
    assert (passes <= np.maximum(holes, 1) + TINY.num_tokens // window + 1).all()
    if window >= 16:  # speculation pays even on random weights: fewer passes than hole tokens
        assert passes[holes > 8].sum() < holes[holes > 8].sum()


@pytest.mark.parametrize("spec", ["configs/test_stage2.py", "configs/shapes_demo.py:stage2",
                                  "configs/lip_maskcoco.py:tiny"])
def test_greedy_on_every_test_config(spec):
    from lip_jax.config import load_config

    cfg = mps2s.MPSConfig.from_any(load_config(spec).mps.to_dict())
    h, w = cfg.grid
    m = np.zeros((3, h, w), bool)
    m[0, h // 4:3 * h // 4, w // 4:3 * w // 4] = True
    m[1] = np.random.default_rng(1).random((h, w)) < 0.3
    m[2, -1, -2:] = True  # a hole ending the grid
    _greedy_equal(cfg, m.reshape(3, -1), _random_params(cfg, seed=2))


def test_greedy_on_the_mps_coco_shape_family():
    """The official geometry (32 x 32 tokens, 8192 codes, kernel 11, full + 3 nearby layers, 77 text
    positions), narrowed in width and depth to fit the test time."""
    cfg = mps2s.MPSConfig.from_any(dict(mps2s.PRESETS["coco"], dim=32, heads=2, dim_head=16, dec_depth=4,
                                        enc_depth=1, text_width=32, text_layers=1, text_heads=2))
    h, w = cfg.grid
    m = np.zeros((2, h, w), bool)
    m[0, 12:18, 10:19] = True
    m[1, 30:, 20:] = True  # the bottom-right corner: the hole ends the grid
    passes, _ = _greedy_equal(cfg, m.reshape(2, -1), _random_params(cfg, seed=3))
    assert (passes[::2] <= [_sequential_passes(r) for r in m.reshape(2, -1)]).all()


# --- the distribution -----------------------------------------------------------------------------

SMALL = mps2s.MPSConfig.from_any(dict(mps2s.PRESETS["tiny"], img_size=16, vae_patch_size=8, vit_patch_size=8,
                                      vqvae_vocab_size=8, text_len=4, dec_depth=2))
HOLES = np.array([True, True, False, True])  # three holes around one known slot
TOP_K, TEMPERATURE, ROWS = 6, 1.0, 20_000


@pytest.fixture(scope="module")
def exact():
    """The exact joint law of the three hole tokens (8**3 cells), from teacher-forced logits with
    top-k and temperature applied, and the inputs it is for."""
    params = _random_params(SMALL)
    x = dict(tokens=jnp.array([[5, 1, 2, 7]]), token_mask=jnp.asarray(HOLES[None]),
             image=jax.random.uniform(jax.random.PRNGKey(2), (1, 16, 16, 3), minval=-1, maxval=1),
             text_ids=jnp.array([[3, 4, 5, 6]]))
    v = SMALL.vqvae_vocab_size
    cells = np.array(list(itertools.product(range(v), repeat=3)))
    toks = np.tile(np.asarray(x["tokens"]), (len(cells), 1))
    toks[:, HOLES] = cells
    rep = lambda a: jnp.repeat(a, len(cells), axis=0)  # noqa: E731
    logits = mps2s.MPS2S(SMALL).apply({"params": params}, jnp.asarray(toks), rep(x["token_mask"]), rep(x["image"]),
                                      rep(x["text_ids"]))
    logp = np.asarray(jax.nn.log_softmax(filtered_logits(logits, TOP_K, TEMPERATURE), -1))
    joint = np.exp(sum(logp[np.arange(len(cells)), g, cells[:, i]] for i, g in enumerate(np.where(HOLES)[0])))
    return params, x, joint


def _chi2(tokens, joint):
    """Pearson's statistic of ROWS draws against the exact law, its degrees of freedom, and the
    number of draws outside the law's support."""
    t = np.asarray(tokens)[:, HOLES]
    counts = np.bincount((t[:, 0] * 8 + t[:, 1]) * 8 + t[:, 2], minlength=joint.size)
    e = joint * len(t)
    return float(((counts[e > 0] - e[e > 0]) ** 2 / e[e > 0]).sum()), int((e > 0).sum()) - 1, int(counts[e == 0].sum())


@pytest.mark.parametrize("rule", sample.jacobi.RULES)
def test_distribution_is_the_sequential_samplers(exact, rule):
    """20,000 draws against the exact joint: the exact rule passes a chi-square test at p = 1e-6 (as
    the sequential sampler does); each broken rule fails it."""
    params, x, joint = exact
    kw = dict(rng=jax.random.PRNGKey(7), num_samples=ROWS, top_k=TOP_K, temperature=TEMPERATURE, **x)
    bound = stats.chi2.ppf(1 - 1e-6, (joint > 0).sum() - 1)
    chi2, _, outside = _chi2(sample.jacobi_tokens(params, SMALL, window=4, rule=rule, **kw), joint)
    if rule == "exact":
        assert outside == 0 and chi2 < bound, (chi2, bound)
        seq, _, outside = _chi2(sample.sample_tokens(params, SMALL, decoder="sequential", **kw), joint)
        assert outside == 0 and seq < bound, (seq, bound)  # the same test, passed by the reference
    else:
        assert chi2 > 1.5 * bound, (rule, chi2, bound)


def test_known_tokens_kept_and_a_seed_fixes_the_result():
    params, masks = _random_params(TINY), _masks()
    x = _inputs(TINY, masks)
    run = lambda seed: np.asarray(sample.sample_tokens(params, TINY, rng=jax.random.PRNGKey(seed), num_samples=2,  # noqa: E731
                                                      top_k=8, temperature=1.2, decoder="parallel", **x))
    a = run(5)
    keep = ~np.repeat(masks, 2, axis=0)
    np.testing.assert_array_equal(a[keep], np.repeat(np.asarray(x["tokens"]), 2, axis=0)[keep])
    np.testing.assert_array_equal(a, run(5))
    assert (a != run(6)).any()
    assert (a[0::2] != a[1::2]).any()  # candidates of one image differ


def test_decoder_ids():
    assert sample.decoder_id("parallel") == "parallel-w32"
    assert sample.decoder_id("auto") == "sequential"  # on the CPU (sample.AUTO_PARALLEL_BACKENDS)
    assert sample.decoder_id("sequential") == "sequential"
    assert sample.decoder_id("parallel-w4") == "parallel-w4"
    with pytest.raises(ValueError, match="decoder"):
        sample.decoder_id("jacobi")
