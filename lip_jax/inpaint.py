"""Language-guided inpainting with NUWA-LIP: the pipeline (`inpaint`), checkpoint loading and the
`lip-jax inpaint` subcommand (`add_parser`, `run`).

Pipeline, as the official evaluation (config/mps4coco/base.py `Net.forward`, eval branch):
  1. the defective image (hole set to 0) goes through DF-VQGAN's defect-free encoder: known tokens
     and the skip features of the masked image; the latent hole mask is the encoder's last skip mask;
  2. MP-S2S samples the hole tokens (holes start at token 0), K candidates per image, with the
     KV-cached sampler (one compiled program);
  3. every candidate is decoded with the masked image's skip features (one compiled program);
  4. with CLIP, candidates are reranked by text-image cosine (best first); without, kept in order.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lip_jax.models import dfvqgan
from lip_jax.models.mps2s import MPSConfig


# --- pipeline -------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("model",))
def _encode(params, x, mask, *, model):
    enc = model.apply({"params": params}, x, mask, method=dfvqgan.DFVQGAN.encode)
    return enc["indices"], enc["skips"], enc["skip_masks"]


@functools.partial(jax.jit, static_argnames=("model", "k"))
def _decode(params, tokens, skips, skip_masks, *, model, k):
    """Decode [B * k, h, w] tokens, candidate rows sharing their image's skip features."""
    rep = lambda t: jnp.repeat(t, k, axis=0)  # noqa: E731  image-major rows, as sample_tokens
    return model.apply({"params": params}, tokens, [rep(s) for s in skips], [rep(m) for m in skip_masks],
                       method=dfvqgan.DFVQGAN.decode_indices)


def check_models(vq_cfg, mps_cfg) -> tuple[dfvqgan.DFVQGAN, MPSConfig]:
    """The DF-VQGAN and MP-S2S configs must agree on resolution, token grid and codebook size."""
    model, mps_cfg = dfvqgan.from_config(vq_cfg), MPSConfig.from_any(mps_cfg)
    factor = 2 ** (len(model.ch_mult) - 1)
    if model.resolution != mps_cfg.img_size:
        raise ValueError(f"DF-VQGAN resolution {model.resolution} != MP-S2S img_size {mps_cfg.img_size}")
    if (model.resolution // factor,) * 2 != mps_cfg.grid:
        raise ValueError(f"DF-VQGAN token grid {model.resolution // factor} != MP-S2S grid {mps_cfg.grid}")
    if model.n_e != mps_cfg.vqvae_vocab_size:
        raise ValueError(f"DF-VQGAN codebook {model.n_e} != MP-S2S vqvae_vocab_size {mps_cfg.vqvae_vocab_size}")
    return model, mps_cfg


def _texts(text, b: int) -> list[str]:
    texts = [text] * b if isinstance(text, str) else list(text)
    if len(texts) != b or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"text must be a string or {b} strings, got {text!r}")
    return texts


def inpaint(vq_params, vq_cfg, mps_params, mps_cfg, image, mask, text: str | Sequence[str], *,
            num_samples: int = 2, top_k: int = 128, temperature: float = 1.0, seed: int = 0,
            clip: tuple | None = None, clip_resize: str = "bicubic",
            log: Callable[[str], None] | None = None) -> dict:
    """Fill the hole of `image` following `text`.

    image [B, H, W, 3] (or [H, W, 3]) in [-1, 1] at the model resolution; mask [B, H, W] bool,
    True = hole (every image needs one; an all-hole mask generates from the text alone); text: one
    string for all images or B strings ("" = unconditional on text). clip: (params, ClipConfig or
    preset) to rerank candidates by CLIP score, else candidates keep their sampling order.
    Returns numpy: best [B, H, W, 3], candidates [B, K, H, W, 3] (best first), scores [B, K]
    (CLIP score x100, or None), order [B, K] (sampling index of each returned candidate),
    tokens [B, K, h*w], token_mask [B, h*w].
    """
    log = log or (lambda msg: None)
    model, mps_cfg = check_models(vq_cfg, mps_cfg)
    image, mask = np.asarray(image, np.float32), np.asarray(mask)
    if image.ndim == 3:
        image, mask = image[None], mask[None]
    b, r = image.shape[0], mps_cfg.img_size
    if image.shape != (b, r, r, 3):
        raise ValueError(f"image must be [B, {r}, {r}, 3] at the model resolution, got {image.shape}")
    if mask.shape != image.shape[:3] or mask.dtype != bool:
        raise ValueError(f"mask must be bool {image.shape[:3]}, got {mask.dtype} {mask.shape}")
    if not mask.reshape(b, -1).any(axis=1).all():
        raise ValueError("every mask needs a hole (True pixels)")
    texts = _texts(text, b)
    k = int(num_samples)

    from lip_jax.models.tokenizer import get_tokenizer
    from lip_jax.sample import sample_tokens

    t0 = time.perf_counter()
    x = np.where(mask[..., None], 0.0, image).astype(np.float32)  # official: hole pixels are 0
    indices, skips, skip_masks = _encode(vq_params, jnp.asarray(x), jnp.asarray(mask), model=model)
    token_mask = skip_masks[-1].reshape(b, -1)
    holes = np.asarray(token_mask.sum(axis=1))
    log(f"encode: {b} image(s), {holes.tolist()} of {mps_cfg.num_tokens} tokens to fill "
        f"({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    text_ids = get_tokenizer(mps_cfg.tokenizer, mps_cfg.text_len)(texts)
    tokens = sample_tokens(mps_params, mps_cfg, tokens=indices.reshape(b, -1), token_mask=token_mask,
                           image=x, text_ids=text_ids, rng=jax.random.PRNGKey(seed), num_samples=k,
                           top_k=top_k, temperature=temperature)
    tokens = jax.block_until_ready(tokens)
    log(f"sample: {b * k} candidate(s), top_k {top_k}, temperature {temperature} "
        f"({time.perf_counter() - t0:.1f} s, compilation included)")

    t0 = time.perf_counter()
    h, w = mps_cfg.grid
    images = _decode(vq_params, tokens.reshape(b * k, h, w), skips, skip_masks, model=model, k=k)
    candidates = np.asarray(images).reshape(b, k, r, r, 3)
    log(f"decode: {b * k} candidate(s) ({time.perf_counter() - t0:.1f} s)")

    tokens = np.asarray(tokens).reshape(b, k, -1)
    order, scores = np.broadcast_to(np.arange(k), (b, k)), None
    if clip is not None:
        from lip_jax.eval.clip_score import clip_score

        t0 = time.perf_counter()
        clip_params, clip_cfg = clip
        flat = clip_score(clip_params, clip_cfg, candidates.reshape(b * k, r, r, 3),
                          [t for t in texts for _ in range(k)], resize=clip_resize).reshape(b, k)
        order = np.argsort(-flat, axis=1, kind="stable")
        scores = np.take_along_axis(flat, order, axis=1)
        log(f"rerank: CLIP scores {np.round(scores, 2).tolist()} ({time.perf_counter() - t0:.1f} s)")
    take = lambda a: np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)  # noqa: E731
    candidates, tokens = take(candidates), take(tokens)
    return dict(best=candidates[:, 0], candidates=candidates, scores=scores, order=np.array(order),
                tokens=tokens, token_mask=np.asarray(token_mask))


# --- checkpoints ----------------------------------------------------------------------------------

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def load_lip_checkpoint(path: str, mps_cfg, vq_cfg) -> dict:
    """Official NUWA-LIP `.pth` (through lip_from_torch) or an orbax directory written by
    `save_params({"mps": ..., "vqgan": ...[, "clip": ...]})` -> {"mps", "vqgan"} params, plus
    "clip" = (params, ClipConfig) when the `.pth` carries the `clip_sim` reranker (or the
    directory a "clip" tree)."""
    from lip_jax.convert import common
    from lip_jax.convert import dfvqgan as conv_vq
    from lip_jax.convert import mps2s as conv_mps
    from lip_jax.train.checkpoints import CheckpointError, load_params

    templates = {"mps": conv_mps.param_template(mps_cfg), "vqgan": conv_vq.param_template(vq_cfg)}
    if os.path.isdir(path):
        tree = load_params(path)
        if not isinstance(tree, Mapping) or not {"mps", "vqgan"} <= set(tree):
            raise CheckpointError(f"{path}: expected an orbax tree with 'mps' and 'vqgan', got "
                                  f"{sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__}")
        for name, template in templates.items():
            _check_tree(path, name, tree[name], template)
        out = {"mps": tree["mps"], "vqgan": tree["vqgan"]}
        if "clip" in tree:  # `lip-jax convert --kind lip` of a release carrying clip_sim
            from lip_jax.convert.cli import clip_config_of

            out["clip"] = (tree["clip"], clip_config_of(tree["clip"]))
        return out
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    tree = conv_mps.lip_from_torch(common.load_torch_checkpoint(path), mps_cfg, vq_cfg)
    out = {"mps": tree["mps"], "vqgan": tree["vqgan"]}
    clip_sim = common.subtree(tree.get("clip_sim", {}), "model")
    if clip_sim:
        from lip_jax.convert.clip import clip_from_openai, infer_config

        cfg = infer_config(clip_sim)
        out["clip"] = (clip_from_openai(clip_sim, cfg, what=f"{path} clip_sim"), cfg)
    return out


def _check_tree(path, name, got, template):
    from lip_jax.train.checkpoints import CheckpointError

    want = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(template)[0]}
    have = {jax.tree_util.keystr(p): tuple(np.shape(v)) for p, v in jax.tree_util.tree_flatten_with_path(got)[0]}
    bad = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if bad:
        raise CheckpointError(f"{path}: '{name}' parameters do not match the config "
                              f"({len(bad)} missing, extra or mis-shaped, e.g. {bad[:3]})")


# --- command line ---------------------------------------------------------------------------------

def add_parser(subparsers) -> None:
    """Register `lip-jax inpaint` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "inpaint", help="fill the masked region of an image following a text",
        description="Language-guided inpainting with NUWA-LIP. --num-samples, --top-k and --temperature "
                    "default to the config's `sample` section. A mask covering the whole image generates "
                    "from the text alone; an empty --text is unconditional on text. Output is at the model "
                    "resolution.")
    p.add_argument("--config", required=True, help="config file[:arg], e.g. configs/mps_coco.py")
    p.add_argument("--ckpt", required=True, help="official NUWA-LIP .pth or orbax directory {mps, vqgan}")
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True, help="PNG, non-zero = region to fill")
    p.add_argument("--text", required=True, help='guidance text ("" = none)')
    p.add_argument("--num-samples", type=int, help="candidates (default: config sample.num_samples)")
    p.add_argument("--top-k", type=int, help="top-k filtering (default: config sample.top_k)")
    p.add_argument("--temperature", type=float, help="(default: config sample.temperature)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip", help="CLIP reranker: OpenAI ViT-B-32.pt, HF CLIPModel dir or hub name "
                                  "(default: the checkpoint's clip_sim if it has one, else no reranking)")
    p.add_argument("--clip-config", help="CLIP preset name when the sizes cannot be read from --clip")
    p.add_argument("--out", required=True, help="output PNG: the best candidate")
    p.add_argument("--grid", help="also write a PNG: input with hole, mask, every candidate (best first)")
    p.set_defaults(fn=run)


def run(args) -> None:
    from PIL import Image

    from lip_jax.cli import UsageError, load_config, read_image, read_mask, to_model_size, to_uint8, to_unit

    def say(msg):
        print(f"lip-jax inpaint: {msg}", file=sys.stderr, flush=True)

    config = load_config(args.config)
    if "mps" not in config or "vqgan" not in config:
        raise UsageError(f"{args.config}: needs `mps` and `vqgan` sections (e.g. configs/mps_coco.py)")
    sample = config.sample.to_dict() if "sample" in config else {}
    num_samples = args.num_samples if args.num_samples is not None else int(sample.get("num_samples", 2))
    top_k = args.top_k if args.top_k is not None else int(sample.get("top_k", 128))
    temperature = args.temperature if args.temperature is not None else float(sample.get("temperature", 1.0))
    if num_samples < 1 or top_k < 1 or not temperature > 0:
        raise UsageError(f"need --num-samples >= 1, --top-k >= 1, --temperature > 0 "
                         f"(got {num_samples}, {top_k}, {temperature})")
    try:
        _, mps_cfg = check_models(config.vqgan, config.mps)
    except ValueError as e:
        raise UsageError(f"{args.config}: {e}") from e

    image = read_image(args.image)
    mask = read_mask(args.mask, image.shape[:2])
    image, mask = to_model_size(image, mask, mps_cfg.img_size, args.image)
    if mask.all():
        say("note: the mask covers the whole image: generating from the text alone")
    if not args.text.strip():
        say("note: empty --text: unconditional on text")

    t0 = time.perf_counter()
    weights = load_lip_checkpoint(args.ckpt, mps_cfg, config.vqgan)
    clip = weights.get("clip")
    if args.clip:
        from lip_jax.convert.clip import load_clip

        try:
            clip = load_clip(args.clip, args.clip_config)
        except ValueError as e:  # unknown preset, zero heads inferred for a tiny width
            raise UsageError(f"{args.clip}: {e}") from e
    say(f"loaded weights ({time.perf_counter() - t0:.1f} s); reranking: "
        + ("CLIP" + (f" from {args.clip}" if args.clip else " from the checkpoint's clip_sim") if clip else "off"))

    out = inpaint(weights["vqgan"], config.vqgan, weights["mps"], mps_cfg, to_unit(image), mask, args.text,
                  num_samples=num_samples, top_k=top_k, temperature=temperature, seed=args.seed, clip=clip,
                  log=say)
    Image.fromarray(to_uint8(out["best"][0])).save(args.out)
    written = [args.out]
    if args.grid:
        masked = np.where(mask[..., None], 0.0, to_unit(image))
        tiles = [to_uint8(masked), np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=-1)]
        tiles += [to_uint8(c) for c in out["candidates"][0]]
        Image.fromarray(_row(tiles)).save(args.grid)
        written.append(args.grid)
    if out["scores"] is not None:
        say(f"best CLIP score {out['scores'][0, 0]:.2f}")
    print("wrote " + " and ".join(written))


def _row(tiles: list[np.ndarray], gap: int = 2) -> np.ndarray:
    h = tiles[0].shape[0]
    sep = np.full((h, gap, 3), 255, np.uint8)
    parts = [p for t in tiles for p in (t, sep)][:-1]
    return np.concatenate(parts, axis=1)
