"""The sequential KV-cached sampler (one hole token per decoder pass) and the official
recompute-everything algorithm (kept as the reference).

Cached sampler (`sample_rows`), one compiled program:
  * the conditioning is computed once per image (lip_jax.sample.common.prepare);
  * decoder self-attention keeps a K/V cache per layer (keys [rows, heads, dim_head, 1 + N],
    values [rows, heads, 1 + N, dim_head]: the layouts XLA's batched matmuls read without a
    transpose), updated in place;
  * step k processes, per row, the decoder positions between the previous hole and hole k (the
    previous hole's sampled token, then the run of known slots, whose inputs are the constant mask
    embedding) in parallel pieces of static lengths BULK_SIZES (one while loop per length), then the
    last position alone, whose logits sample hole k; the loop runs max(#holes) steps;
  * top-k filtering finds the k-th largest logit by a 32-step bit search instead of a sort.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lip_jax.models.mps2s import MPS2S
from lip_jax.sample.common import draw, grid_keys, prepare, repeat
from lip_jax.sharding import constrain_batch


# Piece lengths for the decoder positions between two holes: size i runs while more than size i + 1
# positions remain, the smallest takes the rest.
BULK_SIZES = (64, 16, 4)


def piece(d, toks, caches, s, stop, size):
    """Decoder positions [s, stop] ∩ [s, s + size) per row; logits at `stop`."""
    t = caches[0][1].shape[2]
    s0 = jnp.minimum(s, t - size)  # keep the window inside the cache
    seq = s0[:, None] + jnp.arange(size)[None, :]
    valid = (seq >= s[:, None]) & (seq <= stop[:, None])
    qi = jnp.clip(stop - s0, 0, size - 1)
    return d.model.apply(d.variables, toks, d.mask, seq, valid, qi, d.cross_kv, caches, method=MPS2S.decode_chunk)


def run_up_to(d, toks, caches, s, last):
    """Positions [s, last] per row in pieces of BULK_SIZES, one while loop per size (a lax.switch
    over chunk sizes made XLA copy every cache at every step)."""
    t = caches[0][1].shape[2]
    sizes = sorted({min(size, t) for size in BULK_SIZES}, reverse=True)
    for size, below in zip(sizes, sizes[1:] + [0]):
        s, caches = jax.lax.while_loop(
            lambda st: jnp.any(last - st[0] + 1 > below),
            lambda st, size=size: (st[0] + size, piece(d, toks, st[1], st[0], last, size)[1]), (s, caches))
    return caches


def bulk_passes(length):
    """Decoder passes run_up_to takes for `length` positions (per row)."""
    sizes = sorted(set(BULK_SIZES), reverse=True)
    passes, left = 0, length
    for size, below in zip(sizes, sizes[1:] + [0]):
        k = jnp.maximum(0, -(-(left - below) // size))
        passes, left = passes + k, left - k * size
    return passes


def hole_order(mask):
    """Hole grid positions per row, ascending, then padding (int32 [R, N])."""
    n = mask.shape[1]
    ar = jnp.arange(n)
    return jnp.argsort(jnp.where(mask, ar, n + ar), axis=1).astype(jnp.int32)


def sample_rows(params, tokens, token_mask, image, text_ids, rng, top_k, temperature, *, cfg, num_samples,
                row_multiple: int = 1):
    """The KV-cached sampler's traced body (jitted by lip_jax.sample and, with a mesh's shardings, by
    lip_jax.app.inference) -> int32 [rows, N], rows = B * num_samples rounded up to a multiple of
    `row_multiple`; rows past B * num_samples are padding. Traced on a mesh, rows are split
    over data x fsdp; the per-image encoders run on the B images as their inputs are laid out."""
    d = prepare(params, tokens, token_mask, image, text_ids, rng, cfg=cfg, num_samples=num_samples,
                row_multiple=row_multiple)
    n, mask = cfg.num_tokens, d.mask
    order = hole_order(mask)
    n_holes = mask.sum(axis=1).astype(jnp.int32)

    def body(state):
        k, toks, caches = state
        active = k < n_holes
        g = order[:, jnp.minimum(k, n - 1)]
        prev = order[:, jnp.maximum(k - 1, 0)]
        start = jnp.where(k > 0, prev + 1, 0)
        # positions [start, g - 1] (the previous hole's token, then known slots) in bulk, then g alone:
        # logits at sequence position g predict grid token g
        caches = run_up_to(d, toks, caches, start, jnp.where(active, g - 1, -1))
        logits, caches = piece(d, toks, caches, g, jnp.where(active, g, -1), 1)
        new = draw(logits, grid_keys(d.row_keys, g), top_k, temperature)
        cur = jnp.take_along_axis(toks, g[:, None], axis=1)[:, 0]
        # per row (vmap): a scatter indexed by arange(rows) is all-gathered when rows are split
        toks = jax.vmap(lambda t, i, x: t.at[i].set(x))(toks, g, jnp.where(active, new, cur))
        return k + 1, *constrain_batch((toks, caches))  # XLA loses the row split through loops

    steps = n_holes.max()  # once: in the loop condition it is a cross-device reduction at every step
    _, tokens, _ = jax.lax.while_loop(lambda s: s[0] < steps, body, (jnp.int32(0), d.tokens, d.caches))
    return tokens


def recompute_rows(params, tokens, token_mask, image, text_ids, rng, top_k, temperature, *, cfg, num_samples):
    """The official algorithm: for every grid position holding a hole in some row, run the whole
    model (encoders included) on the current tokens and sample that position. Reference only."""
    model = MPS2S(cfg)
    n = cfg.num_tokens
    tokens = repeat(jnp.where(token_mask, 0, tokens), num_samples)
    mask = repeat(token_mask, num_samples)
    image, text_ids = repeat(image, num_samples), repeat(text_ids, num_samples)
    rows = tokens.shape[0]
    row_keys = jax.random.split(rng, rows)

    def body(g, toks):
        need = mask[:, g]

        def step(toks):
            logits = model.apply({"params": params}, toks, mask, image, text_ids)[:, g]
            new = draw(logits, grid_keys(row_keys, jnp.full((rows,), g)), top_k, temperature)
            return toks.at[:, g].set(jnp.where(need, new, toks[:, g]))

        return jax.lax.cond(need.any(), step, lambda x: x, toks)

    return jax.lax.fori_loop(0, n, body, tokens)
