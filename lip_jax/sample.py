"""Autoregressive inpainting of VQ tokens with MP-S2S: a KV-cached sampler and the official
recompute-everything algorithm (kept as the reference).

Both sample the hole tokens in raster order and keep the known ones, with top-k filtering and
temperature (greedy when top_k = 1; top_k above the codebook size means no filtering). Randomness: the token at grid position g of output row r is
drawn with fold_in(split(rng, rows)[r], g), so both samplers consume the same random stream and a
seed fixes the result. Rows are image-major: row b * num_samples + s is candidate s of image b.
On a mesh (lip_jax.app.inference) the rows are split over data x fsdp, padded to a multiple of the
row shards (`sample_rows`' row_multiple) with rows the caller drops.

Cached sampler (`sample_tokens`), one compiled program:
  * the token view, pixel view, text encoder and every decoder layer's cross-attention K/V run
    once per image (then broadcast to the candidates);
  * decoder self-attention keeps a K/V cache per layer (keys [rows, heads, dim_head, 1 + N],
    values [rows, heads, 1 + N, dim_head]: the layouts XLA's batched matmuls read without a
    transpose), updated in place;
  * step k processes, per row, the decoder positions between the previous hole and hole k (the
    previous hole's sampled token, then the run of known slots, whose inputs are the constant mask
    embedding) in parallel pieces of static lengths BULK_SIZES (one while loop per length), then the
    last position alone, whose logits sample hole k; the loop runs max(#holes) steps;
  * top-k filtering finds the k-th largest logit by a 32-step bit search instead of a sort.
The caller encodes images to tokens and decodes tokens to pixels (DF-VQGAN is not used here); the
official evaluation gives the known tokens and `image` from the masked image (holes set to 0).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lip_jax.models.mps2s import MPS2S, MPSConfig, check_inputs
from lip_jax.models.mps2s_layers import kv_heads
from lip_jax.sharding import constrain_batch


def check_args(cfg: MPSConfig, num_samples: int, top_k: int, temperature: float):
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if int(top_k) < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _top_k_keep(logits, k):
    """logits >= (k-th largest logit of the row), for a traced k in [1, vocab], without a sort: the
    k-th largest value's order-preserving uint32 image is built bit by bit (32 counting passes,
    much cheaper on CPU than sorting the vocabulary at every step)."""
    x = jnp.where(jnp.abs(logits) < jnp.finfo(jnp.float32).tiny, 0.0, logits)  # -0.0 == 0.0 == denormals
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    key = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))  # monotone in x
    tau = jnp.zeros(logits.shape[:-1] + (1,), jnp.uint32)
    for bit in range(31, -1, -1):  # largest tau with count(key >= tau) >= k
        cand = tau | jnp.uint32(1 << bit)
        tau = jnp.where(jnp.sum(key >= cand, axis=-1, keepdims=True) >= k, cand, tau)
    return key >= tau


def _draw(logits, keys, top_k, temperature):
    """Sample from softmax(top-k logits / temperature), one key per row: int32 [R].
    top_k may be traced (one compiled program serves every k); ties at the k-th value are kept."""
    logits = logits.astype(jnp.float32)
    filtered = jnp.where(_top_k_keep(logits, top_k), logits / temperature, -jnp.inf)
    return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)


# Piece lengths for the decoder positions between two holes: size i runs while more than size i + 1
# positions remain, the smallest takes the rest.
BULK_SIZES = (64, 16, 4)


def _grid_keys(row_keys, g):
    """Per-row key for grid positions g [R]."""
    return jax.vmap(jax.random.fold_in)(row_keys, g)


def _repeat(x, s):
    return jnp.repeat(x, s, axis=0) if s > 1 else x


def to_rows(x, num_samples: int, rows: int | None = None):
    """Per-image [B, ...] -> image-major rows [rows, ...] (row r: candidate r % K of image r // K).
    Rows past B * K are padding (copies of the last row) that fill a mesh's row shards; callers
    drop them. Without padding this is the plain repeat."""
    real = x.shape[0] * num_samples
    if rows is None or rows == real:
        return _repeat(x, num_samples)
    return x[jnp.minimum(jnp.arange(rows), real - 1) // num_samples]


def padded_rows(batch: int, num_samples: int, row_multiple: int) -> int:
    """B * K rounded up to a multiple of the row shards."""
    return -(-batch * num_samples // row_multiple) * row_multiple


def _api(fn):
    @functools.wraps(fn)
    def wrapper(params, cfg, *, tokens, token_mask, image, text_ids, rng, num_samples: int = 1,
                top_k: int = 128, temperature: float = 1.0):
        cfg = MPSConfig.from_any(cfg)
        tokens, token_mask = check_inputs(cfg, tokens, token_mask, image, text_ids)
        check_args(cfg, num_samples, top_k, temperature)
        return fn(params, tokens, token_mask, jnp.asarray(image, jnp.float32), jnp.asarray(text_ids, jnp.int32),
                  rng, jnp.int32(min(int(top_k), cfg.vqvae_vocab_size)), jnp.float32(temperature), cfg=cfg, num_samples=int(num_samples))
    return wrapper


def _compute_kernels(params, cfg: MPSConfig):
    """Matmul / conv kernels cast to the compute dtype once, not at every decoding step (each layer
    casts them to that dtype anyway, so the results are the same): each step then reads 16-bit weights."""
    if cfg.jnp_dtype == jnp.float32:
        return params
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.astype(cfg.jnp_dtype) if path[-1].key == "kernel" else x, params)


def sample_rows(params, tokens, token_mask, image, text_ids, rng, top_k, temperature, *, cfg, num_samples,
                row_multiple: int = 1):
    """The KV-cached sampler's traced body (`sample_tokens` jits it; lip_jax.app.inference jits it
    with a mesh's shardings) -> int32 [rows, N], rows = B * num_samples rounded up to a multiple of
    `row_multiple`; rows past B * num_samples are padding. Traced on a mesh, rows are split
    over data x fsdp; the per-image encoders run on the B images as their inputs are laid out."""
    model = MPS2S(cfg)
    variables = {"params": _compute_kernels(params, cfg)}
    n, t = cfg.num_tokens, cfg.num_tokens + 1
    real = tokens.shape[0] * num_samples
    rows = padded_rows(tokens.shape[0], num_samples, row_multiple)
    to_r = lambda x: constrain_batch(to_rows(x, num_samples, rows))  # noqa: E731
    tokens = jnp.where(token_mask, 0, tokens)  # official: holes start at token 0
    cond = model.apply(variables, tokens, token_mask, image, text_ids, method=MPS2S.encode)
    cross_kv = [tuple(to_r(a) for a in kv_heads(k, v, cfg.heads))
                for k, v in model.apply(variables, cond, method=MPS2S.cross_kv)]
    tokens, mask = to_r(tokens), to_r(token_mask)
    row_keys = jax.random.split(rng, real)  # the padding's keys copy the last row's: real rows never change
    if rows > real:
        row_keys = row_keys[jnp.minimum(jnp.arange(rows), real - 1)]

    # hole grid positions per row, ascending, then padding
    ar = jnp.arange(n)
    order = jnp.argsort(jnp.where(mask, ar, n + ar), axis=1).astype(jnp.int32)
    n_holes = mask.sum(axis=1).astype(jnp.int32)
    dt = cfg.jnp_dtype
    h, dh = cfg.heads, cfg.dim_head
    caches = constrain_batch([(jnp.zeros((rows, h, dh, t), dt), jnp.zeros((rows, h, t, dh), dt))
                              for _ in range(cfg.dec_depth)])

    def piece(toks, caches, s, stop, size):
        """Decoder positions [s, stop] ∩ [s, s + size) per row; logits at `stop`."""
        s0 = jnp.minimum(s, t - size)  # keep the window inside the cache
        seq = s0[:, None] + jnp.arange(size)[None, :]
        valid = (seq >= s[:, None]) & (seq <= stop[:, None])
        qi = jnp.clip(stop - s0, 0, size - 1)
        return model.apply(variables, toks, mask, seq, valid, qi, cross_kv, caches, method=MPS2S.decode_chunk)

    def run_up_to(toks, caches, s, last):
        """Positions [s, last] per row in pieces of BULK_SIZES, one while loop per size (a lax.switch
        over chunk sizes made XLA copy every cache at every step)."""
        sizes = sorted({min(size, t) for size in BULK_SIZES}, reverse=True)
        for size, below in zip(sizes, sizes[1:] + [0]):
            s, caches = jax.lax.while_loop(
                lambda st: jnp.any(last - st[0] + 1 > below),
                lambda st, size=size: (st[0] + size, piece(toks, st[1], st[0], last, size)[1]), (s, caches))
        return caches

    def body(state):
        k, toks, caches = state
        active = k < n_holes
        g = order[:, jnp.minimum(k, n - 1)]
        prev = order[:, jnp.maximum(k - 1, 0)]
        start = jnp.where(k > 0, prev + 1, 0)
        # positions [start, g - 1] (the previous hole's token, then known slots) in bulk, then g alone:
        # logits at sequence position g predict grid token g
        caches = run_up_to(toks, caches, start, jnp.where(active, g - 1, -1))
        logits, caches = piece(toks, caches, g, jnp.where(active, g, -1), 1)
        new = _draw(logits, _grid_keys(row_keys, g), top_k, temperature)
        cur = jnp.take_along_axis(toks, g[:, None], axis=1)[:, 0]
        # per row (vmap): a scatter indexed by arange(rows) is all-gathered when rows are split
        toks = jax.vmap(lambda t, i, x: t.at[i].set(x))(toks, g, jnp.where(active, new, cur))
        return k + 1, *constrain_batch((toks, caches))  # XLA loses the row split through loops

    steps = n_holes.max()  # once: in the loop condition it is a cross-device reduction at every step
    _, tokens, _ = jax.lax.while_loop(lambda s: s[0] < steps, body, (jnp.int32(0), tokens, caches))
    return tokens


sample_tokens = _api(jax.jit(sample_rows, static_argnames=("cfg", "num_samples", "row_multiple")))
sample_tokens.__doc__ = "KV-cached sampler -> int32 [B * num_samples, N] (holes sampled, known tokens kept)."


@_api
@functools.partial(jax.jit, static_argnames=("cfg", "num_samples"))
def sample_tokens_recompute(params, tokens, token_mask, image, text_ids, rng, top_k, temperature, *, cfg,
                            num_samples):
    """The official algorithm: for every grid position holding a hole in some row, run the whole
    model (encoders included) on the current tokens and sample that position. Reference only."""
    model = MPS2S(cfg)
    n = cfg.num_tokens
    tokens = _repeat(jnp.where(token_mask, 0, tokens), num_samples)
    mask = _repeat(token_mask, num_samples)
    image, text_ids = _repeat(image, num_samples), _repeat(text_ids, num_samples)
    rows = tokens.shape[0]
    row_keys = jax.random.split(rng, rows)

    def body(g, toks):
        need = mask[:, g]

        def step(toks):
            logits = model.apply({"params": params}, toks, mask, image, text_ids)[:, g]
            new = _draw(logits, _grid_keys(row_keys, jnp.full((rows,), g)), top_k, temperature)
            return toks.at[:, g].set(jnp.where(need, new, toks[:, g]))

        return jax.lax.cond(need.any(), step, lambda x: x, toks)

    return jax.lax.fori_loop(0, n, body, tokens)


def kv_cache_bytes(cfg, batch: int, dtype=None) -> dict:
    """Memory of the cached sampler's decoder state for `batch` rows (images x candidates)."""
    cfg = MPSConfig.from_any(cfg)
    item = jnp.dtype(dtype or cfg.dtype).itemsize
    per = 2 * cfg.dec_depth * batch * cfg.inner_dim * item
    return {"self_kv": per * (cfg.num_tokens + 1), "cross_kv": per * cfg.cond_len}
