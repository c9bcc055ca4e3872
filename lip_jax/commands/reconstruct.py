"""`lip-jax reconstruct`: encode a defective image with DF-VQGAN and decode it."""

from __future__ import annotations

import sys

import numpy as np

from lip_jax.app.outputs import check_file, distinct, save_image, save_npy
from lip_jax.commands._args import OVERRIDES, config_arg, config_of
from lip_jax.config import UsageError


def add_parser(subparsers):
    p = subparsers.add_parser("reconstruct", help="encode a defective image with DF-VQGAN and decode it",
                              epilog=OVERRIDES)
    config_arg(p, "configs/dfvqgan_imagenet.py")
    p.add_argument("--ckpt", required=True, help="stage-1 workdir (or its params/), orbax DF-VQGAN or official "
                                                 ".pth")
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True, help="image file, non-zero = defective (alpha is ignored)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--npy", help="also write the raw float32 NHWC output in [-1, 1]")
    p.add_argument("--overwrite", action="store_true", help="replace --out / --npy if they exist")
    return p


def run(args) -> None:
    from lip_jax.app.checkpoints import load_vqgan
    from lip_jax.app.pipeline import reconstruct as run_reconstruct
    from lip_jax.data.images import read_image, read_mask, to_uint8

    cfg = config_of(args).vqgan
    overwrite = getattr(args, "overwrite", False)
    distinct((args.out, "--out"), (args.npy, "--npy"))
    check_file(args.out, "--out", overwrite)
    if args.npy:
        check_file(args.npy, "--npy", overwrite)
    image = read_image(args.image)
    mask = read_mask(args.mask)
    if mask.shape != image.shape[:2]:
        raise UsageError(f"{args.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                         f"{image.shape[1]}x{image.shape[0]}")
    if not mask.any():
        raise UsageError(f"{args.mask}: mask has no defective (non-zero) pixel")
    image, mask = to_model_size(image, mask, cfg.resolution, args.image)
    params = load_vqgan(args.ckpt, cfg)
    out = run_reconstruct(params, cfg, image, mask)
    save_image(to_uint8(out), args.out)
    if args.npy:
        save_npy(out[None].astype(np.float32), args.npy)
    print(f"wrote {args.out}" + (f" and {args.npy}" if args.npy else ""))


def to_model_size(image: np.ndarray, mask: np.ndarray, size: int, what: str):
    """Resize image (bicubic) and mask (nearest) to the model resolution, with a note."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image, mask
    print(f"note: {what}: resizing {image.shape[1]}x{image.shape[0]} to the model resolution {size}x{size}",
          file=sys.stderr)
    image = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
    mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0
    if not mask.any():
        raise UsageError(f"{what}: the hole vanishes when the mask is resized to {size}x{size}")
    return image, mask
