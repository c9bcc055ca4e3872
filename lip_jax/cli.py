"""`lip-jax` command line: reconstruct, convert (more subcommands arrive with their features).

Bad input ends with one line `lip-jax: error: ...` and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np


class UsageError(ValueError):
    """Bad input from the user: reported in one line, exit code 2."""


def load_config(spec: str):
    """`path/to/config.py[:arg]` -> the ConfigDict its `get_config(arg)` returns."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: config file not found")
    module_spec = importlib.util.spec_from_file_location(f"lip_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(arg or None)
    except ValueError as e:
        raise UsageError(f"{path}: {e}") from e
    except AttributeError as e:
        raise UsageError(f"{path}: not a config file (needs get_config): {e}") from e


def read_image(path: str):
    """RGB image file -> uint8 [H, W, 3]."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise UsageError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"{path}: not a readable image ({e})") from e


def read_mask(path: str, image_shape: tuple[int, int]) -> np.ndarray:
    """Mask image file (any mode; non-zero = defective) -> bool [H, W], validated against the image."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise UsageError(f"{path}: mask file not found")
    try:
        with Image.open(path) as im:
            mask = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"{path}: not a readable mask image ({e})") from e
    mask = mask.any(axis=-1) if mask.ndim == 3 else mask.astype(bool)
    if mask.shape != tuple(image_shape):
        raise UsageError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                         f"{image_shape[1]}x{image_shape[0]}")
    if not mask.any():
        raise UsageError(f"{path}: mask has no defective (non-zero) pixel")
    return mask


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


def to_unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 127.5 - 1.0


def to_uint8(image) -> np.ndarray:
    return np.clip(np.round((np.asarray(image) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def cmd_reconstruct(args) -> None:
    import jax
    import jax.numpy as jnp
    from PIL import Image

    from lip_jax.convert.dfvqgan import load_orbax
    from lip_jax.models import dfvqgan

    cfg = load_config(args.config).vqgan
    image = read_image(args.image)
    mask = read_mask(args.mask, image.shape[:2])
    image, mask = to_model_size(image, mask, cfg.resolution, args.image)
    params = load_orbax(args.ckpt, cfg)
    model = dfvqgan.from_config(cfg)

    @jax.jit
    def run(params, x, m):
        enc = model.apply({"params": params}, x, m, method=dfvqgan.DFVQGAN.encode)
        return model.apply({"params": params}, enc["quant"], enc["skips"], enc["skip_masks"],
                           method=dfvqgan.DFVQGAN.decode)

    x = np.where(mask[..., None], 0.0, to_unit(image))[None]  # the defective image: hole unknown
    out = np.asarray(run(params, jnp.asarray(x), jnp.asarray(mask[None])))
    Image.fromarray(to_uint8(out[0])).save(args.out)
    if args.npy:
        np.save(args.npy, out.astype(np.float32))
    print(f"wrote {args.out}" + (f" and {args.npy}" if args.npy else ""))


def run_train(argv: list[str]) -> int:
    """`lip-jax train --config FILE[:arg] --workdir DIR [--config.key=value ...]` (absl flags)."""
    from absl import app, flags
    from ml_collections import config_flags

    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "training config file[:arg]", flag_values=flag_values,
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs)", flag_values=flag_values)
    try:
        flag_values(["lip-jax train", *argv])
        config = flag_values.config
        if config is not None:
            config.keys()  # a config file that failed to load raises only when used
    except (KeyError, AttributeError) as e:
        raise UsageError(f"--config override names a field the config does not have: {e}") from e
    except (flags.Error, ValueError, OSError) as e:
        raise UsageError(" ".join(str(e).split())[:300]) from e
    if config is None or not flag_values.workdir:
        raise UsageError("train needs --config FILE[:arg] and --workdir DIR")
    from lip_jax.train.trainer import train

    train(config, flag_values.workdir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lip-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("train", help="train stage 1 or 2: --config FILE[:arg] --workdir DIR [--config.k=v ...]",
                   add_help=False)

    p = sub.add_parser("reconstruct", help="encode a defective image with DF-VQGAN and decode it")
    p.add_argument("--config", required=True, help="config file[:arg], e.g. configs/dfvqgan_imagenet.py")
    p.add_argument("--ckpt", required=True, help="orbax parameter checkpoint directory")
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True, help="PNG, non-zero = defective")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--npy", help="also write the raw float32 NHWC output in [-1, 1]")
    p.set_defaults(fn=cmd_reconstruct)

    from lip_jax.convert import cli as convert_cli
    convert_cli.add_parser(sub)

    from lip_jax import demo, inpaint
    inpaint.add_parser(sub)
    demo.add_parser(sub)
    from lip_jax.eval import runner
    runner.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from lip_jax.convert.common import ConversionError
    from lip_jax.data.errors import DataError
    from lip_jax.train.checkpoints import CheckpointError

    try:
        if argv and argv[0] == "train":
            return run_train(argv[1:])
        args = build_parser().parse_args(argv)
        args.fn(args)
    except (UsageError, ConversionError, CheckpointError, DataError) as e:
        print(f"lip-jax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
