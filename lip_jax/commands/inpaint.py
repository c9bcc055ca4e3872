"""`lip-jax inpaint`: fill the masked region of an image following a text.

Every input is read and checked before the work starts; outputs are written at the end.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from lip_jax.app.outputs import check_file, distinct
from lip_jax.images import write_image
from lip_jax.commands.options import OVERRIDES, config_arg, lip_ckpt_arg
from lip_jax.config import UsageError


def add_parser(subparsers):
    p = subparsers.add_parser("inpaint", help="fill the masked region of an image following a text",
                              description="Language-guided inpainting with NUWA-LIP. The image comes back at its "
                                          "own size: a window of the model's resolution around the hole is "
                                          "inpainted and only the hole is pasted back (--no-composite: the "
                                          "window's whole output). A mask covering the whole image generates from "
                                          "the text alone; an empty --text is unconditional on text.",
                              epilog=OVERRIDES)
    config_arg(p, "configs/mps_coco.py", required=False)
    lip_ckpt_arg(p)
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True, help="image file, non-zero = region to fill (alpha is ignored)")
    p.add_argument("--invert-mask", action="store_true", help="the mask marks the region to keep")
    p.add_argument("--text", required=True, help='guidance text ("" = none)')
    p.add_argument("--num-samples", type=int, help="candidates (default: config sample.num_samples)")
    p.add_argument("--top-k", type=int, help="top-k filtering (default: config sample.top_k)")
    p.add_argument("--temperature", type=float, help="(default: config sample.temperature)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--composite", action=argparse.BooleanOptionalAction, default=True,
                   help="paste only the hole back into the image (default: on)")
    p.add_argument("--clip", help="CLIP reranker: OpenAI ViT-B-32.pt, HF CLIPModel dir or hub name, orbax dir "
                                  "(default: the checkpoint's clip_sim if it has one, else no reranking)")
    p.add_argument("--clip-config", help="CLIP preset when the sizes cannot be read from --clip")
    p.add_argument("--out", required=True, help="output PNG: the best candidate, at the image's size")
    p.add_argument("--grid", help="also write a PNG: input with hole, mask, every candidate (best first)")
    p.add_argument("--overwrite", action="store_true", help="replace --out / --grid if they exist")
    return p


def run(args) -> None:
    from lip_jax.app import inference
    from lip_jax.app.pipeline import Inpainter, check_config, check_text, read_inputs, sampling

    def say(msg):
        print(f"lip-jax inpaint: {msg}", file=sys.stderr, flush=True)

    # every input and output is checked before the weights are read
    check_text(args.text)  # first: it needs no file
    from lip_jax.weights.load import config_for

    # --config.mesh.*: the candidates' layout over the devices
    config = config_for(args.ckpt, args.config, args.overrides, prepare=inference.with_mesh_section)
    check_config(config, args.config or args.ckpt)
    try:
        mesh = inference.mesh_of(config)
    except ValueError as e:
        raise UsageError(f"--config.mesh: {e}") from e
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


def _row(tiles: list[np.ndarray], gap: int = 2) -> np.ndarray:
    h = tiles[0].shape[0]
    sep = np.full((h, gap, 3), 255, np.uint8)
    parts = [p for t in tiles for p in (t, sep)][:-1]
    return np.concatenate(parts, axis=1)
