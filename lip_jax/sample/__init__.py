"""Autoregressive inpainting of VQ tokens with MP-S2S: the hole tokens are sampled in raster order,
the known ones kept, with top-k filtering and temperature (greedy when top_k = 1; top_k above the
codebook size means no filtering).

Two decoders of the same distribution, each one compiled program over a KV cache:
  * "sequential" (lip_jax.sample.sequential): one decoder pass per hole token;
  * "parallel" (lip_jax.sample.jacobi): speculative Jacobi decoding, several hole tokens per pass,
    the same tokens as "sequential" under greedy decoding, the same distribution under sampling;
  * "auto" (the default) resolves to one of them for the backend (`decoder_id`).
A seed fixes the result of each decoder; the two draw different streams, so under sampling the same
seed gives different (equally distributed) tokens: `sample.decoder: sequential` reproduces earlier
results. Rows are image-major: row b * num_samples + s is candidate s of image b. On a mesh
(lip_jax.app.inference) the rows are split over data x fsdp, padded to a multiple of the row
shards (`row_multiple`) with rows the caller drops.
The caller encodes images to tokens and decodes tokens to pixels (DF-VQGAN is not used here); the
official evaluation gives the known tokens and `image` from the masked image (holes set to 0).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lip_jax.models.mps2s import MPSConfig, check_inputs
from lip_jax.sample.common import check_args, kv_cache_bytes, padded_rows, to_rows
from lip_jax.sample.jacobi import DRAFTS, jacobi_rows
from lip_jax.sample.sequential import recompute_rows, sample_rows as sequential_rows

__all__ = ["DECODERS", "DRAFTS", "check_args", "kv_cache_bytes", "decoder_id", "jacobi_tokens", "padded_rows",
           "sample_rows", "sample_tokens", "sample_tokens_recompute", "to_rows"]

DECODERS = ("auto", "sequential", "parallel")
DEFAULT_WINDOW = 32
# Where "auto" runs the parallel decoder. On XLA:CPU a window pass costs about as many tokens as it
# accepts (a 16-position pass of the demo's model takes 3.9x a one-position pass, and accepts ~2.8
# tokens): no wall-time gain was measured, so the CPU keeps the sequential decoder. A GPU or TPU
# pass is launch-bound (README, "On a GPU"), so fewer passes are less time there; not yet measured.
AUTO_PARALLEL_BACKENDS = ("gpu", "tpu")


def decoder_id(decoder: str = "auto") -> str:
    """What runs for `decoder` (a DECODERS name, or an id this returned): "sequential" or
    "parallel-w<window>". Eval records it: two ids draw different tokens from one seed."""
    if decoder.startswith("parallel-w") and decoder[10:].isdigit() and int(decoder[10:]) >= 1:
        return decoder
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "auto":
        decoder = "parallel" if jax.default_backend() in AUTO_PARALLEL_BACKENDS else "sequential"
    return f"parallel-w{DEFAULT_WINDOW}" if decoder == "parallel" else decoder


def sample_rows(params, tokens, token_mask, image, text_ids, rng, top_k, temperature, *, cfg, num_samples,
                row_multiple: int = 1, decoder: str = "auto"):
    """The chosen decoder's traced body -> int32 [rows, N] (rows = B * num_samples rounded up to a
    multiple of `row_multiple`)."""
    decoder = decoder_id(decoder)
    if decoder == "sequential":
        return sequential_rows(params, tokens, token_mask, image, text_ids, rng, top_k, temperature, cfg=cfg,
                               num_samples=num_samples, row_multiple=row_multiple)
    return jacobi_rows(params, tokens, token_mask, image, text_ids, rng, top_k, temperature, cfg=cfg,
                       num_samples=num_samples, row_multiple=row_multiple, window=int(decoder[10:]))


def _api(fn):
    @functools.wraps(fn)
    def wrapper(params, cfg, *, tokens, token_mask, image, text_ids, rng, num_samples: int = 1,
                top_k: int = 128, temperature: float = 1.0, **options):
        cfg = MPSConfig.from_any(cfg)
        tokens, token_mask = check_inputs(cfg, tokens, token_mask, image, text_ids)
        check_args(cfg, num_samples, top_k, temperature)
        return fn(params, tokens, token_mask, jnp.asarray(image, jnp.float32), jnp.asarray(text_ids, jnp.int32),
                  rng, jnp.int32(min(int(top_k), cfg.vqvae_vocab_size)), jnp.float32(temperature), cfg=cfg,
                  num_samples=int(num_samples), **options)
    return wrapper


sample_tokens = _api(jax.jit(sample_rows, static_argnames=("cfg", "num_samples", "row_multiple", "decoder")))
sample_tokens.__doc__ = ("Hole tokens sampled, known tokens kept -> int32 [B * num_samples, N]; "
                         "decoder: 'auto' | 'sequential' | 'parallel' (or a decoder_id).")

jacobi_tokens = _api(jax.jit(jacobi_rows, static_argnames=("cfg", "num_samples", "row_multiple", "window", "draft",
                                                          "coupled", "rule", "with_stats")))
jacobi_tokens.__doc__ = ("The parallel decoder with every option (window, draft, coupled, with_stats): "
                         "benchmarks and tests.")

sample_tokens_recompute = _api(jax.jit(recompute_rows, static_argnames=("cfg", "num_samples")))
sample_tokens_recompute.__doc__ = "The official recompute-everything algorithm (reference only)."
