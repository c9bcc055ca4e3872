"""Language-guided inpainting with NUWA-LIP: `Inpainter` (load once, call on photos of any size),
the model-resolution core `inpaint`, and `reconstruct` (DF-VQGAN alone).

    from lip_jax.app.pipeline import Inpainter
    inpainter = Inpainter.load("runs/stage2", "configs/mps_coco.py")
    out = inpainter("photo.jpg", "hole.png", "a red car")   # out.images[0]: uint8, the photo's size

A photo is inpainted in a window of the model's resolution around its hole (lip_jax.app.photo), and
only the hole is pasted back (`composite`), so the rest of the photo is returned bit for bit.

Core (`inpaint`), as the official evaluation (config/mps4coco/base.py `Net.forward`, eval branch):
  1. the defective image (hole set to 0) goes through DF-VQGAN's defect-free encoder: known tokens
     and the skip features of the masked image; the latent hole mask is the encoder's last skip mask;
  2. MP-S2S samples the hole tokens (holes start at token 0), K candidates per image, with the
     KV-cached sampler (one compiled program);
  3. every candidate is decoded with the masked image's skip features (one compiled program);
  4. with CLIP, candidates are reranked by text-image cosine (best first); without, kept in order.
Steps 1-3 run on every device: the B x K rows are split over the mesh (the config's `mesh`, data
parallel by default), the weights by their logical axes (lip_jax.app.inference).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lip_jax import ranges
from lip_jax.app import inference, photo
from lip_jax.config import UsageError
from lip_jax.images import check_mask, from_uint8, read_image, read_mask, to_uint8
from lip_jax.models import dfvqgan
from lip_jax.models.mps2s import MPSConfig

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
            clip: tuple | None = None, clip_resize: str = "bicubic", mesh=None, decoder: str = "auto",
            log: Callable[[str], None] | None = None) -> dict:
    """Fill the hole of `image` following `text`.

    image [B, H, W, 3] (or [H, W, 3]) in [-1, 1] at the model resolution; mask [B, H, W] bool,
    True = hole (every image needs one; an all-hole mask generates from the text alone); text: one
    string for all images or B strings ("" = unconditional on text). clip: (params, ClipConfig or
    preset) to rerank candidates by CLIP score, else candidates keep their sampling order.
    decoder: the token decoder (lip_jax.sample.DECODERS; "auto" picks the faster for the config).
    mesh: the devices (default: every device, data parallel); the B x K rows are split over its
    data x fsdp axes (lip_jax.app.inference), the weights by their logical axes (placed once if
    already there: `inference.place`). Several processes: every process passes the same inputs
    and gets every row back.
    Returns numpy: best [B, H, W, 3], candidates [B, K, H, W, 3] (best first), scores [B, K]
    (CLIP score x100, or None), order [B, K] (sampling index of each returned candidate),
    tokens [B, K, h*w], token_mask [B, h*w].
    """
    log = log or (lambda msg: None)
    num_samples, top_k, seed = (ranges.check(n, v) for n, v in (("num_samples", num_samples), ("top_k", top_k),
                                                                 ("seed", seed)))
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
    from lip_jax.sample import check_args, decoder_id

    check_args(mps_cfg, k, top_k, temperature)
    decoder = decoder_id(decoder)
    mesh = mesh if mesh is not None else inference.mesh_of()
    prog = inference.programs(model, mps_cfg, mesh, b, k, decoder)
    where = f"{mesh.size} device(s)" + (f", {prog.rows - b * k} padding row(s)" if prog.rows > b * k else "")

    t0 = time.perf_counter()
    vq, mps = inference.place(vq_params, prog.vq_shardings), inference.place(mps_params, prog.mps_shardings)
    x = np.where(mask[..., None], 0.0, image).astype(np.float32)  # official: hole pixels are 0
    x = inference.put(x, prog.image_sharding(4))
    indices, token_mask, skips, skip_masks = prog.encode(vq, x, inference.put(mask, prog.image_sharding(3)))
    token_mask_host = inference.to_host(token_mask)
    log(f"encode: {b} image(s), {token_mask_host.sum(axis=1).tolist()} of {mps_cfg.num_tokens} tokens to "
        f"fill ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    put_rep = lambda v: inference.put(v, prog.replicated)  # noqa: E731
    text_ids = inference.put(get_tokenizer(mps_cfg.tokenizer, mps_cfg.text_len)(texts), prog.image_sharding(2))
    tokens = prog.sample(mps, indices, token_mask, x, text_ids, put_rep(jax.random.PRNGKey(seed)),
                         put_rep(np.int32(min(int(top_k), mps_cfg.vqvae_vocab_size))),
                         put_rep(np.float32(temperature)))
    tokens = jax.block_until_ready(tokens)
    log(f"sample: {b * k} candidate(s) on {where}, {decoder} decoder, top_k {top_k}, temperature {temperature} "
        f"({time.perf_counter() - t0:.1f} s, compilation included)")

    t0 = time.perf_counter()
    images = prog.decode(vq, tokens, skips, skip_masks)
    candidates = inference.to_host(images)[:b * k].reshape(b, k, r, r, 3)  # the padding rows go
    log(f"decode: {b * k} candidate(s) ({time.perf_counter() - t0:.1f} s)")
    tokens = inference.to_host(tokens)[:b * k].reshape(b, k, -1)

    order, scores = np.broadcast_to(np.arange(k), (b, k)), None
    if clip is not None:  # one CLIP pass over the candidates, on each process's first device
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
                tokens=tokens, token_mask=token_mask_host)


# --- photos of any size ---------------------------------------------------------------------------

@dataclasses.dataclass
class InpaintOutput:
    """Per input, at the input's own size: `images` the best candidate (uint8 [H, W, 3]),
    `candidates` every candidate best first (uint8 [K, H, W, 3]); `scores` [B, K] CLIP score x100
    (None without a reranker); `windows` where each photo was cut for the model."""

    images: list
    candidates: list
    scores: np.ndarray | None
    windows: list


class Inpainter:
    """NUWA-LIP loaded once; call it on images (paths, PIL images or uint8 arrays) and masks."""

    def __init__(self, weights: dict, config, mesh=None):
        """`mesh`: default the config's `mesh` section (data parallel over every device without one).
        Several processes: every process builds it and calls it with the same inputs."""
        ranges.check_config(config)
        self.config = config
        self.model, self.mps_cfg = check_models(config.vqgan, config.mps)
        self.mesh = mesh if mesh is not None else inference.mesh_of(config)
        vq_sh, mps_sh = inference.weight_shardings(self.model, self.mps_cfg, self.mesh)
        # once, not at every call
        self.vq, self.mps = inference.place(weights["vqgan"], vq_sh), inference.place(weights["mps"], mps_sh)
        put = jax.device_put  # the reranker runs on the first device (lip_jax.eval.clip_score)
        self.clip = (put(weights["clip"][0]), weights["clip"][1]) if weights.get("clip") else None

    @classmethod
    def load(cls, ckpt: str, config=None, *, clip: str | None = None, clip_config: str | None = None,
             mesh=None) -> "Inpainter":
        """`ckpt`: a stage-2 workdir (or its params/), an orbax {mps, vqgan} or the official .pth;
        `config`: a ConfigDict or a config file spec with `mps` and `vqgan` sections, optional where
        the checkpoint records its config (it must then agree on every model field); `clip`: a
        reranker (default: the checkpoint's clip_sim, if it has one)."""
        from lip_jax.weights.load import config_for, load_clip_any, load_lip

        spec = config if isinstance(config, str) else str(ckpt) if config is None else "config"
        config = config_for(ckpt, config)
        check_config(config, spec)
        weights = load_lip(ckpt, config.mps, config.vqgan)
        if clip:
            weights["clip"] = load_clip_any(clip, clip_config)
        return cls(weights, config, mesh)

    def __call__(self, image, mask, text: str | Sequence[str], *, num_samples: int | None = None,
                 top_k: int | None = None, temperature: float | None = None, seed: int = 0,
                 composite: bool = True, invert_mask: bool = False, context: float = 1.5,
                 log: Callable[[str], None] | None = None) -> InpaintOutput:
        """Fill each image's hole (mask True / non-zero = hole; `invert_mask`: the mask marks what
        to keep). One image or a list; text: one string for all or one per image. Sampling
        settings default to the config's `sample` section."""
        seed = ranges.check("seed", seed)  # before the images are read
        photos, holes = read_inputs(image, mask, invert_mask)
        k, top_k, temperature, decoder = sampling(self.config, num_samples, top_k, temperature)
        if log and any(h.all() for h in holes):
            log("note: a mask covers its whole image: generating from the text alone")
        size = self.mps_cfg.img_size
        cuts = [photo.to_model(p, h, size, context) for p, h in zip(photos, holes)]
        out = inpaint(self.vq, self.config.vqgan, self.mps, self.mps_cfg, from_uint8(np.stack([c[0] for c in cuts])),
                      np.stack([c[1] for c in cuts]), text, num_samples=k, top_k=top_k, temperature=temperature,
                      seed=seed, clip=self.clip, mesh=self.mesh, decoder=decoder, log=log)
        candidates = [np.stack([photo.paste(p, to_uint8(c), cut[2], h, composite=composite) for c in cands])
                      for p, h, cut, cands in zip(photos, holes, cuts, out["candidates"])]
        return InpaintOutput(images=[c[0] for c in candidates], candidates=candidates, scores=out["scores"],
                             windows=[c[2] for c in cuts])


def check_config(config, spec: str) -> None:
    """The config has both models, and they fit each other (a one-line UsageError if not)."""
    if "mps" not in config or "vqgan" not in config:
        raise UsageError(f"{spec}: needs `mps` and `vqgan` sections (e.g. configs/mps_coco.py)")
    ranges.check_config(config)
    try:
        check_models(config.vqgan, config.mps)
    except ValueError as e:
        raise UsageError(f"{spec}: {e}") from e


def check_text(text, what: str = "--text") -> str:
    """The caption is a string the tokenizer can encode as UTF-8: bytes that are not UTF-8 (kept by
    Python as lone surrogates, from a command line) are a one-line UsageError naming `what`, not a
    traceback mid-sampling."""
    if not isinstance(text, str):
        raise UsageError(f"{what}: must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start]
        shown = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        raise UsageError(f"{what}: not valid UTF-8 ({shown} at character {e.start}); pass the text in UTF-8") from None
    return text


def text_tokens(mps_cfg, text: str) -> tuple[int, int]:
    """(tokens the caption takes with its start and end tokens, the most the model reads): the
    tokenizer cuts a longer caption silently (as CLIP's does), so a caller can refuse it instead."""
    from lip_jax.models.tokenizer import get_tokenizer

    cfg = MPSConfig.from_any(mps_cfg)
    return len(get_tokenizer(cfg.tokenizer, cfg.text_len).encode(text)) + 2, cfg.text_len


def read_inputs(image, mask, invert_mask: bool = False) -> tuple[list, list]:
    """Images and masks (one or a list each) -> uint8 photos and bool holes, checked pairwise."""
    images, masks = _as_list(image), _as_list(mask)
    if len(images) != len(masks):
        raise UsageError(f"{len(images)} images but {len(masks)} masks")
    photos = [_read_photo(im) for im in images]
    return photos, [_read_hole(m, p.shape[:2], invert_mask) for m, p in zip(masks, photos)]


def sampling(config, num_samples=None, top_k=None, temperature=None) -> tuple[int, int, float, str]:
    """(num_samples, top_k, temperature, decoder): the given values, else the config's `sample`
    section (the decoder always from there)."""
    sample = config.sample.to_dict() if "sample" in config else {}
    k = ranges.check("num_samples", sample.get("num_samples", 2) if num_samples is None else num_samples, config)
    top_k = ranges.check("top_k", sample.get("top_k", 128) if top_k is None else top_k, config)
    temperature = float(sample.get("temperature", 1.0) if temperature is None else temperature)
    if not 0 < temperature < float("inf"):
        raise UsageError(f"need a finite temperature > 0 (got {temperature})")
    return k, top_k, temperature, config_decoder(config)


def config_decoder(config) -> str:
    """The config's `sample.decoder` (default "auto"), checked: a one-line UsageError if unknown."""
    from lip_jax.sample import DECODERS

    decoder = config.sample.get("decoder", "auto") if "sample" in config else "auto"
    if decoder not in DECODERS:
        raise UsageError(f"sample.decoder={decoder!r}: not one of {', '.join(DECODERS)}")
    return decoder


def _as_list(x) -> list:
    if isinstance(x, (list, tuple)):
        return list(x)
    if isinstance(x, np.ndarray) and x.ndim == 4:  # a batch of images
        return list(x)
    return [x]


def _read_photo(image) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if hasattr(image, "convert"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise UsageError(f"an image array must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    return image


def _read_hole(mask, shape: tuple[int, int], invert: bool) -> np.ndarray:
    name = mask if isinstance(mask, (str, os.PathLike)) else "mask"
    if isinstance(mask, (str, os.PathLike)):
        mask = read_mask(mask)
    elif hasattr(mask, "convert"):
        mask = np.asarray(mask.convert("RGB")).any(axis=-1)
    else:
        mask = np.asarray(mask)
        mask = mask.any(axis=-1) if mask.ndim == 3 else mask.astype(bool)
    return check_mask(~mask if invert else mask, shape, name, inverted=invert)


# --- DF-VQGAN alone -------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("model",))
def _reconstruct(params, x, mask, *, model):
    enc = model.apply({"params": params}, x, mask, method=dfvqgan.DFVQGAN.encode)
    return model.apply({"params": params}, enc["quant"], enc["skips"], enc["skip_masks"],
                       method=dfvqgan.DFVQGAN.decode)


def reconstruct(params, vq_cfg, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Encode the defective image (hole unknown) and decode it with its skips: float [H, W, 3] in
    [-1, 1] at the model resolution (image uint8 and mask bool at that size)."""
    x = np.where(mask[..., None], 0.0, from_uint8(image))[None]
    out = _reconstruct(params, jnp.asarray(x), jnp.asarray(mask[None]), model=dfvqgan.from_config(vq_cfg))
    return np.asarray(out[0])
