"""`lip-jax reconstruct`: encode a defective image with DF-VQGAN and decode it."""

from __future__ import annotations

import sys

import numpy as np

from lip_jax.app.outputs import check_file, distinct, save_npy
from lip_jax.commands.options import OVERRIDES, config_arg


def add_parser(subparsers):
    p = subparsers.add_parser("reconstruct", help="encode a defective image with DF-VQGAN and decode it",
                              epilog=OVERRIDES)
    config_arg(p, "configs/dfvqgan_imagenet.py", required=False)
    p.add_argument("--ckpt", required=True, help="stage-1 workdir (or its params/), orbax DF-VQGAN or official "
                                                 ".pth")
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True, help="image file, non-zero = defective (alpha is ignored)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--npy", help="also write the raw float32 NHWC output in [-1, 1]")
    p.add_argument("--overwrite", action="store_true", help="replace --out / --npy if they exist")
    return p


def run(args) -> None:
    from lip_jax.app import photo
    from lip_jax.app.pipeline import reconstruct as run_reconstruct
    from lip_jax.images import check_mask, read_image, read_mask, to_uint8, write_image
    from lip_jax.weights.load import config_for, load_vqgan

    cfg = config_for(args.ckpt, args.config, args.overrides).vqgan
    overwrite = getattr(args, "overwrite", False)
    distinct((args.out, "--out"), (args.npy, "--npy"))
    check_file(args.out, "--out", overwrite)
    if args.npy:
        check_file(args.npy, "--npy", overwrite)
    image = read_image(args.image)
    mask = check_mask(read_mask(args.mask), image.shape[:2], args.mask)
    # The same window and resize rule as `lip-jax inpaint`, so both commands see the same pixels.
    pixels, holes, window = photo.to_model(image, mask, cfg.resolution)
    if image.shape[:2] != (cfg.resolution, cfg.resolution):
        print(f"note: {args.image}: reconstructing the {window.side}x{window.side} window at ({window.left}, "
              f"{window.top}) of the {image.shape[1]}x{image.shape[0]} image"
              + (f", resized to the model resolution {cfg.resolution}x{cfg.resolution}"
                 if window.side != cfg.resolution else "") + "; written back at the image's size", file=sys.stderr)
    params = load_vqgan(args.ckpt, cfg)
    out = run_reconstruct(params, cfg, pixels, holes)
    write_image(photo.paste(image, to_uint8(out), window, mask, composite=False), args.out)
    if args.npy:
        save_npy(out[None].astype(np.float32), args.npy)
    print(f"wrote {args.out}" + (f" and {args.npy}" if args.npy else ""))
