"""Speculative Jacobi decoding of the hole tokens: several hole tokens per decoder pass, the same
distribution as the sequential sampler (the same tokens under greedy decoding).

Each pass runs a window of W decoder positions from the cache frontier s (the first position whose
input is not final) over the KV cache: the known slots in it are free context, each hole in it
reads its current draft. Position s + i gives the logits p_i of grid token s + i. Then, per row:
  * holes are verified in raster order: draft x_i, drawn from q_i, is accepted with probability
    min(1, p_i(x_i) / q_i(x_i)) (speculative sampling); p_i is exact while every earlier hole of
    the window was accepted;
  * the first rejected hole is resampled from norm(max(0, p_i - q_i)); a hole whose draft no
    position of the window read (the window's last slot) is drawn from p_i directly;
  * holes after that stop are redrafted from this pass's p_i, which becomes their q_i;
  * the window slides to just after the stop (or by W), keeping the drafts and their q_i.
So every hole's final token is drawn from its exact conditional: the output has the sequential
sampler's distribution, and with top_k = 1 (p and q one-hot) it is Jacobi iteration, whose fixed
point is the greedy sequence. A hole that enters a window without a q_i gets a deterministic draft
(`draft`: the token to its left, the token above, or 0) and q_i = that point mass. Draws are by
inverse CDF, one uniform each; with `coupled` drafts a hole's redraws reuse one uniform, so a
redraft from a barely changed p_i repeats the last draft (the coupling of MC-SJD).

A run of known slots at least W long before the next hole is run in the sequential decoder's bulk
pieces (64 positions) instead. Cache entries past the frontier are written by each pass and
overwritten by the next; attention never reads them (keys from the cache stop at the window's
start). Rows accept independently; the loop runs until every row has filled its holes. Uniforms:
per (row, grid position, use), drawn once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lip_jax.models.mps2s import MPS2S
from lip_jax.sample.common import filtered_logits, prepare
from lip_jax.sample.sequential import bulk_passes, run_up_to
from lip_jax.sharding import constrain_batch

DRAFTS = ("left", "above", "zero")
# Test-only broken acceptance rules (each must fail the distribution test): accept a draft that
# equals the argmax, resample a rejected hole from p instead of the residual, accept the window's
# first hole untested.
RULES = ("exact", "accept_argmax", "resample_from_p", "skip_first_test")
_DRAFT, _ACCEPT, _RESIDUAL = 1, 2, 3


def _take(a, idx):
    """a [R, N, ...] at per-row indices idx [R, C] -> [R, C, ...]."""
    return jnp.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=1)


def _put(toks, idx, vals, where):
    """toks [R, N] with toks[r, idx[r, i]] = vals[r, i] where where[r, i] (per row: see sequential)."""
    n = toks.shape[1]
    return jax.vmap(lambda t, i, v: t.at[i].set(v, mode="drop"))(toks, jnp.where(where, idx, n), vals)


def _uniforms(row_keys, n: int, tag: int):
    """One uniform per (row, grid position) for one use, drawn once before the loop: [R, N]."""
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, tag), (n,)))(row_keys)


def _inverse_cdf(logp, u):
    """The token whose cumulative-probability interval holds u * total, per row of logp [..., V]:
    one uniform per draw (V random numbers per draw for Gumbel-max cost more than the decoder pass at
    8192 codes), and a fixed u moves the token only as far as the distribution moved (coupling)."""
    p = jnp.exp(logp - jnp.max(logp, axis=-1, keepdims=True))
    c = jnp.cumsum(p, axis=-1)
    idx = jnp.sum(c <= u[..., None] * c[..., -1:], axis=-1)
    last = p.shape[-1] - 1 - jnp.argmax(jnp.flip(p > 0, axis=-1), axis=-1)  # u * total rounded up to total
    return jnp.minimum(idx, last).astype(jnp.int32)


def _first_drafts(toks, g, fresh, rule: str, width: int):
    """Drafts of holes entering the window: the nearest token to the left that is not itself new
    (the token before the window at worst), the token above, or 0."""
    if rule == "zero":
        return jnp.zeros(g.shape, jnp.int32)
    c = g.shape[1]
    cur = _take(toks, jnp.clip(g, 0, toks.shape[1] - 1))
    before = jnp.where(g[:, :1] > 0, _take(toks, jnp.maximum(g[:, :1] - 1, 0)), 0)  # [R, 1]
    last = jax.lax.cummax(jnp.where(fresh, -1, jnp.arange(c)), axis=1)
    left = jnp.where(last >= 0, jnp.take_along_axis(cur, jnp.maximum(last, 0), axis=1), before)
    if rule == "left":
        return left
    above = _take(toks, jnp.clip(g - width, 0, toks.shape[1] - 1))
    return jnp.where(g >= width, above, left)


def jacobi_rows(params, tokens, token_mask, image, text_ids, rng, top_k, temperature, *, cfg, num_samples,
                row_multiple: int = 1, window: int = 32, draft: str = "above", coupled: bool = True,
                rule: str = "exact", with_stats: bool = False):
    """Traced body of the parallel sampler -> int32 [rows, N] (as lip_jax.sample.sequential.sample_rows);
    with_stats also returns the decoder passes each row took, int32 [rows]."""
    if draft not in DRAFTS or rule not in RULES:
        raise ValueError(f"draft must be one of {DRAFTS} and rule one of {RULES}, got {draft!r}, {rule!r}")
    n, v = cfg.num_tokens, cfg.vqvae_vocab_size
    w = max(1, min(int(window), n))
    # the window may run past the last grid token: cache room for it rather than a shifted window
    d = prepare(params, tokens, token_mask, image, text_ids, rng, cfg=cfg, num_samples=num_samples,
                row_multiple=row_multiple, cache_len=n + w)
    rows, slots = d.mask.shape[0], jnp.arange(w)
    last_hole = jnp.max(jnp.where(d.mask, jnp.arange(n), -1), axis=1)
    point = lambda x: jnp.where(jnp.arange(v) == x[..., None], 0.0, -jnp.inf)  # noqa: E731  log of a point mass
    u_accept, u_residual, u_draft = (_uniforms(d.row_keys, n, tag) for tag in (_ACCEPT, _RESIDUAL, _DRAFT))

    def one_pass(state):
        s, toks, caches, logq, has_q, it, passes = state
        active = s <= last_hole
        # a known run longer than the window goes through the sequential decoder's bulk pieces
        nxt = jnp.min(jnp.where(d.mask & (jnp.arange(n) >= s[:, None]), jnp.arange(n), n), axis=1)
        far = active & (nxt - s >= w)
        caches = run_up_to(d, toks, caches, s, jnp.where(far, nxt - 1, -1))
        passes += jnp.where(far, bulk_passes(nxt - s), 0)
        s, has_q = jnp.where(far, nxt, s), has_q & ~far[:, None]  # no hole in the skipped window: no q lost
        g = s[:, None] + slots  # sequence position of slot i = the grid token its logits give
        inside = g < n
        gc = jnp.minimum(g, n - 1)
        hole = jnp.take_along_axis(d.mask, gc, axis=1) & inside & active[:, None]  # every hole >= s is open
        fresh = hole & ~has_q
        x = jnp.where(fresh, _first_drafts(toks, g, fresh, draft, cfg.grid[1]), _take(toks, gc))
        toks = _put(toks, gc, x, hole)
        logq = jnp.where(fresh[..., None], point(x), logq)

        logits, caches = d.model.apply(d.variables, toks, d.mask, g, inside & active[:, None], None, d.cross_kv,
                                       caches, method=MPS2S.decode_chunk)
        logp = jax.nn.log_softmax(filtered_logits(logits, top_k, temperature), axis=-1)  # [R, W, V]

        lp_x, lq_x = (jnp.take_along_axis(a, x[..., None], axis=-1)[..., 0] for a in (logp, logq))
        accept = jnp.log(jnp.take_along_axis(u_accept, gc, axis=1)) < lp_x - lq_x
        if rule == "accept_argmax":
            accept |= x == jnp.argmax(logp, axis=-1)
        if rule == "skip_first_test":
            accept |= hole & (jnp.cumsum(hole, axis=1) == 1)
        read = (slots < w - 1) & (g < n - 1)  # the slot after a hole reads its draft
        stop = hole & ~(accept & read)
        any_stop = stop.any(axis=1)
        j = jnp.where(any_stop, jnp.argmax(stop, axis=1), w)
        jc = jnp.minimum(j, w - 1)[:, None]

        # the stop's token: from the residual after a rejection, from p where no slot read the draft
        lp_j, lq_j = (jnp.take_along_axis(a, jc[..., None], axis=1)[:, 0] for a in (logp, logq))
        res = jnp.maximum(jnp.exp(lp_j) - jnp.exp(lq_j), 0.0)
        use_res = jnp.take_along_axis(read, jc, axis=1)[:, 0] & (res.sum(-1) > 0) & (rule != "resample_from_p")
        u_j = jnp.take_along_axis(u_residual, jnp.take_along_axis(gc, jc, axis=1), axis=1)[:, 0]
        new = _inverse_cdf(jnp.where(use_res[:, None], jnp.log(res), lp_j), u_j)

        after = hole & (slots > j[:, None])
        if coupled:  # one uniform per hole for all its redraws
            u = jnp.take_along_axis(u_draft, gc, axis=1)
        else:
            fresh_key = lambda k: jax.random.fold_in(jax.random.fold_in(k, _DRAFT), it)  # noqa: E731
            u = jax.vmap(lambda k: jax.random.uniform(fresh_key(k), (w,)))(d.row_keys)
        redraft = _inverse_cdf(logp, u)
        x = jnp.where(after, redraft, x)
        x = jnp.where((slots == j[:, None]) & hole, new[:, None], x)
        toks = _put(toks, gc, x.astype(toks.dtype), hole)
        logq = jnp.where(after[..., None], logp, logq)
        has_q = has_q | after

        adv = jnp.where(active, jnp.where(any_stop, j + 1, w), 0)  # slide the window (and q) to the frontier
        src = slots + adv[:, None]
        logq = jnp.take_along_axis(logq, jnp.minimum(src, w - 1)[..., None], axis=1)
        has_q = jnp.take_along_axis(has_q, jnp.minimum(src, w - 1), axis=1) & (src < w)
        s, toks, caches, logq, has_q = constrain_batch((s + adv, toks, caches, logq, has_q))
        return s, toks, caches, logq, has_q, it + 1, passes + active

    state = (jnp.zeros(rows, jnp.int32), d.tokens, d.caches, jnp.full((rows, w, v), -jnp.inf),
             jnp.zeros((rows, w), bool), jnp.int32(0), jnp.zeros(rows, jnp.int32))
    end = jax.lax.while_loop(lambda st: jnp.any(st[0] <= last_hole), one_pass, state)
    return (end[1], end[6]) if with_stats else end[1]
