"""CLIP score: text-image agreement of inpainted images (NUWA-LIP's `metric_clip` and reranker).

score = 100 * cos(image_features, text_features) with both features L2-normalised, one score per
(image, text) pair. The official code (`CLIPSimilarity` with logit_scale fixed to 1.0) computes the
raw cosine; the paper's tables report it x100, which is what this module returns.

Images are ours: NHWC in [-1, 1], any size; `resize` picks the preprocessing (see
lip_jax.models.clip.preprocess): "bicubic" is OpenAI's transform, "nearest" reproduces the official
reranker's `F.interpolate(image, size=224)`. Texts are strings (tokenised with the config's
tokenizer) or ids [N, context_length].
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lip_jax.models.clip import CLIP, ClipConfig, preprocess


@functools.lru_cache(maxsize=16)
def _score_fn(cfg: ClipConfig, resize: str):
    model = CLIP(cfg)

    @jax.jit
    def score(params, images, ids):
        pixels = preprocess(images, cfg.image_resolution, resize)
        img = model.apply({"params": params}, pixels, method=CLIP.encode_image)
        txt = model.apply({"params": params}, ids, method=CLIP.encode_text)
        img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
        txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
        return 100.0 * jnp.sum(img * txt, axis=-1)

    return score


def tokenize(cfg, texts: Sequence[str] | np.ndarray) -> np.ndarray:
    """Strings (tokenised with cfg.tokenizer, truncated like clip.tokenize(truncate=True)) or ids -> int32 ids."""
    from lip_jax.models.tokenizer import get_tokenizer

    cfg = ClipConfig.from_any(cfg)
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, np.ndarray) and np.issubdtype(texts.dtype, np.integer):
        ids = texts
    else:
        ids = get_tokenizer(cfg.tokenizer, cfg.context_length)(list(texts))
    ids = np.asarray(ids, np.int32)
    if ids.ndim != 2 or ids.shape[1] != cfg.context_length:
        raise ValueError(f"text ids must be [N, {cfg.context_length}], got {ids.shape}")
    return ids


def clip_score(params, cfg, images, texts, *, batch_size: int = 64, resize: str = "bicubic") -> np.ndarray:
    """100 * cosine similarity of CLIP features for each (images[i], texts[i]) pair -> float32 [N].

    Runs in batches of `batch_size` (the last one padded, so one compiled program serves all)."""
    cfg = ClipConfig.from_any(cfg)
    images = np.asarray(images, np.float32)
    ids = tokenize(cfg, texts)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be NHWC [N, H, W, 3], got {images.shape}")
    n = images.shape[0]
    if ids.shape[0] != n:
        raise ValueError(f"{n} images but {ids.shape[0]} texts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fn = _score_fn(cfg, resize)
    bs = min(batch_size, n) if n else 1
    out = []
    for start in range(0, n, bs):
        img, tid = images[start:start + bs], ids[start:start + bs]
        pad = bs - img.shape[0]
        if pad:
            img = np.concatenate([img, np.zeros((pad,) + img.shape[1:], img.dtype)])
            tid = np.concatenate([tid, np.repeat(tid[-1:], pad, axis=0)])
        out.append(np.asarray(fn(params, img, tid))[:bs - pad])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)
