"""The work behind `lip-jax train`, `inpaint` and `reconstruct` (argument parsing stays in cli.py).

Every input is read and checked before the work starts; outputs are written at the end.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from lip_jax.config import UsageError, apply_overrides, load_config
from lip_jax.app.outputs import check_file, distinct, save_npy
from lip_jax.images import check_mask, read_image, read_mask, to_uint8, write_image
from lip_jax.paths import path


def config_of(args):
    """The command's config file with its `--config.k=v` overrides applied."""
    config = load_config(args.config)
    apply_overrides(config, args.overrides)
    return config


def train(args) -> None:
    config = config_of(args)
    if args.print_config:
        print(config)
        return
    if not args.workdir:
        raise UsageError("train needs --workdir DIR")
    if "stage" not in config or "train" not in config:
        raise UsageError(f"{args.config}: not a training config (needs `stage` and `train`; "
                         f"configs/shapes_demo.py takes :stage1 or :stage2)")
    from lip_jax.train.trainer import train as run_training

    result = run_training(config, args.workdir)
    print(f"trained to step {result['step']}; inference weights in {path(args.workdir) / 'params'}")


def inpaint(args) -> None:
    from lip_jax.app import inference
    from lip_jax.app.pipeline import Inpainter, check_config, read_inputs, sampling

    def say(msg):
        print(f"lip-jax inpaint: {msg}", file=sys.stderr, flush=True)

    # every input and output is checked before the weights are read
    config = load_config(args.config)
    inference.with_mesh_section(config)  # --config.mesh.*: the candidates' layout over the devices
    apply_overrides(config, args.overrides)
    check_config(config, args.config)
    try:
        mesh = inference.mesh_of(config)
    except ValueError as e:
        raise UsageError(f"--config.mesh: {e}") from e
    _check_text(args.text)
    if args.temperature is not None and not math.isfinite(args.temperature):
        raise UsageError(f"--temperature {args.temperature}: not a finite number")
    overwrite = getattr(args, "overwrite", False)
    distinct((args.out, "--out"), (args.grid, "--grid"))
    check_file(args.out, "--out", overwrite)
    if args.grid:
        check_file(args.grid, "--grid", overwrite)
    (image,), (hole,) = read_inputs(args.image, args.mask, args.invert_mask)
    sampling(config, args.num_samples, args.top_k, args.temperature)
    t0 = time.perf_counter()
    inpainter = Inpainter.load(args.ckpt, config, clip=args.clip, clip_config=args.clip_config, mesh=mesh)
    say(f"loaded weights ({time.perf_counter() - t0:.1f} s); reranking: "
        + ("off" if inpainter.clip is None else "CLIP" + (f" from {args.clip}" if args.clip else
                                                          " from the checkpoint's clip_sim")))
    if not args.text.strip():
        say("note: empty --text: unconditional on text")
    out = inpainter(image, hole, args.text, num_samples=args.num_samples, top_k=args.top_k,
                    temperature=args.temperature, seed=args.seed, composite=args.composite, log=say)
    window = out.windows[0]
    say(f"inpainted a {window.side}x{window.side} window at ({window.left}, {window.top}) of the "
        f"{image.shape[1]}x{image.shape[0]} image" + (", pasted back into the hole" if args.composite else ""))
    write_image(out.images[0], args.out)
    written = [args.out]
    if args.grid:
        tiles = [np.where(hole[..., None], 0, image).astype(np.uint8),
                 np.repeat((hole * 255).astype(np.uint8)[..., None], 3, axis=-1), *out.candidates[0]]
        write_image(_row(tiles), args.grid)
        written.append(args.grid)
    if out.scores is not None:
        say(f"best CLIP score {out.scores[0, 0]:.2f}")
    print("wrote " + " and ".join(written))


def reconstruct(args) -> None:
    from lip_jax.weights.load import load_vqgan
    from lip_jax.app.pipeline import reconstruct as run_reconstruct

    cfg = config_of(args).vqgan
    overwrite = getattr(args, "overwrite", False)
    distinct((args.out, "--out"), (args.npy, "--npy"))
    check_file(args.out, "--out", overwrite)
    if args.npy:
        check_file(args.npy, "--npy", overwrite)
    image = read_image(args.image)
    mask = check_mask(read_mask(args.mask), image.shape[:2], args.mask)
    image, mask = to_model_size(image, mask, cfg.resolution, args.image)
    params = load_vqgan(args.ckpt, cfg)
    out = run_reconstruct(params, cfg, image, mask)
    write_image(to_uint8(out), args.out)
    if args.npy:
        save_npy(out[None].astype(np.float32), args.npy)
    print(f"wrote {args.out}" + (f" and {args.npy}" if args.npy else ""))


def _check_text(text: str) -> None:
    """--text is encoded as UTF-8 by the tokenizer: bytes that are not UTF-8 in the command line
    (kept by Python as lone surrogates) are a one-line error, not a traceback mid-sampling."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start]
        shown = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        raise UsageError(f"--text: not valid UTF-8 ({shown} at character {e.start}); pass the text in UTF-8") from None


def to_model_size(image: np.ndarray, mask: np.ndarray, size: int, what: str):
    """The model-resolution window around the hole, cut and resized exactly as `lip-jax inpaint`
    cuts it (lip_jax.app.photo.to_model), so both commands see the same pixels; a note when the
    window is not the whole image."""
    from lip_jax.app import photo

    pixels, holes, window = photo.to_model(image, mask, size)
    if image.shape[:2] != (size, size):
        print(f"note: {what}: reconstructing the {window.side}x{window.side} window at ({window.left}, "
              f"{window.top}) of the {image.shape[1]}x{image.shape[0]} image"
              + (f", resized to the model resolution {size}x{size}" if window.side != size else ""),
              file=sys.stderr)
    return pixels, holes


def _row(tiles: list[np.ndarray], gap: int = 2) -> np.ndarray:
    h = tiles[0].shape[0]
    sep = np.full((h, gap, 3), 255, np.uint8)
    parts = [p for t in tiles for p in (t, sep)][:-1]
    return np.concatenate(parts, axis=1)
