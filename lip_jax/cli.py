"""`lip-jax`: NUWA-LIP from the command line — train, inpaint, eval, reconstruct, convert, demo.

Every command that takes `--config FILE[:arg]` also takes `--config.key.path=value` overrides.
Exit codes: 0 the work finished; 2 bad input (one line `lip-jax: error: ...`, never a traceback,
caught before the work starts); 3 training diverged; 74 a checkpoint could not be written (disk
full; the previous one is intact); 75 interrupted (SIGTERM or Ctrl-C, within seconds at any phase;
training saves a checkpoint once its first step ran): rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import os
import sys

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "shapes_demo.py")
OVERRIDES = "--config.KEY=VALUE overrides any config field (typed like the field), e.g. --config.train.lr=1e-4"


def _config_arg(p, example: str, required: bool = True) -> None:
    p.add_argument("--config", required=required, help=f"config file[:arg], e.g. {example}. {OVERRIDES}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lip-jax", description=__doc__.splitlines()[0],
                                     epilog=OVERRIDES)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train stage 1 (DF-VQGAN) or stage 2 (MP-S2S); resumes from WORKDIR",
                       description="Train (or resume) one stage. Checkpoints go to WORKDIR/checkpoints; a run "
                                   "that reaches its last step writes WORKDIR/params, the weights every other "
                                   "command takes (stage 1: DF-VQGAN; stage 2: MP-S2S with its DF-VQGAN).",
                       epilog="Print the resolved config (overrides applied) with --print-config. " + OVERRIDES)
    _config_arg(p, "configs/mps_cc.py or configs/shapes_demo.py:stage1")
    p.add_argument("--workdir", help="run directory: checkpoints/, params/, metrics.jsonl, tb/, samples/")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    p.set_defaults(fn="commands.train")

    p = sub.add_parser("inpaint", help="fill the masked region of an image following a text",
                       description="Language-guided inpainting with NUWA-LIP. The image comes back at its own "
                                   "size: a window of the model's resolution around the hole is inpainted and "
                                   "only the hole is pasted back (--no-composite: the window's whole output). "
                                   "A mask covering the whole image generates from the text alone; an empty "
                                   "--text is unconditional on text.", epilog=OVERRIDES)
    _config_arg(p, "configs/mps_coco.py")
    p.add_argument("--ckpt", required=True, help="stage-2 workdir (or its params/), orbax {mps, vqgan} from "
                                                 "lip-jax convert, or the official NUWA-LIP .pth")
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
    p.set_defaults(fn="commands.inpaint")

    p = sub.add_parser("eval", help="inpaint an evaluation set (MaskCOCO layout), write eval_visu/ and metrics.json",
                       description="Evaluate NUWA-LIP on a folder in the MaskCOCO layout (gt/, mask/NNNN.mask.png, "
                                   "guidance/, mask_img/). Resumable: rerun the same command after an "
                                   "interruption.", epilog=OVERRIDES)
    _config_arg(p, "configs/lip_maskcoco.py")
    p.add_argument("--ckpt", required=True, help="stage-2 workdir, orbax {mps, vqgan[, clip]} or official .pth")
    p.add_argument("--data", required=True, help="evaluation folder (gt/, mask/, guidance/[, mask_img/]), "
                                                 "or its parent holding eval_visu/")
    p.add_argument("--out", required=True, help="output directory (eval_visu/, metrics.json)")
    p.add_argument("--clip", help="CLIP for reranking and the CLIP score: OpenAI ViT-B-32.pt, HF CLIPModel dir, "
                                  "orbax dir (lip-jax convert --kind clip) (default: the checkpoint's clip_sim)")
    p.add_argument("--clip-config", help="CLIP preset when the head counts are not width / 64 "
                                         "(default: config eval.clip_config)")
    p.add_argument("--lpips", help="LPIPS weights: orbax dir (lip-jax convert --kind lpips), a merged .pth, "
                                   "or VGG16.pth,HEADS.pth")
    p.add_argument("--fid-weights", help="pytorch-fid Inception weights: .pth or orbax dir (--kind inception)")
    p.add_argument("--fid-stats", help="reference statistics .npz (mu, sigma; pytorch-fid format); "
                                       "default: computed from the ground-truth images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn="evaluate.run")

    p = sub.add_parser("reconstruct", help="encode a defective image with DF-VQGAN and decode it",
                       epilog=OVERRIDES)
    _config_arg(p, "configs/dfvqgan_imagenet.py")
    p.add_argument("--ckpt", required=True, help="stage-1 workdir (or its params/), orbax DF-VQGAN or official .pth")
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True, help="image file, non-zero = defective (alpha is ignored)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--npy", help="also write the raw float32 NHWC output in [-1, 1]")
    p.add_argument("--overwrite", action="store_true", help="replace --out / --npy if they exist")
    p.set_defaults(fn="commands.reconstruct")

    from lip_jax.app.convert import KINDS
    p = sub.add_parser("convert", help="PyTorch checkpoint <-> orbax directory, every weight kind (needs the "
                                       "torch extra: pip install 'lip-jax[torch]')",
                       description="Convert a PyTorch weight file to an orbax directory (--from is a file) or back "
                                   "(--from is an orbax directory or a training workdir). Kinds: "
                                   + ", ".join(KINDS) + "; without --kind it is read from the keys. Needs "
                                   "PyTorch: pip install 'lip-jax[torch]'.")
    p.add_argument("--kind", choices=KINDS, help="weight kind (default: detected from --from)")
    _config_arg(p, "configs/dfvqgan_imagenet.py (dfvqgan) or configs/lip_maskcoco.py (lip)", required=False)
    p.add_argument("--from", dest="src", required=True, help="PyTorch file (or HF CLIP directory), orbax "
                                                             "directory or training workdir")
    p.add_argument("--to", dest="dst", required=True, help="orbax directory or .pth file (must not exist, "
                                                           "unless --overwrite)")
    p.add_argument("--heads", help="lpips: the LPIPS heads file (lpips/taming vgg.pth), read with the "
                                   "torchvision VGG16 --from, or written beside --to")
    p.add_argument("--clip-config", help="clip (and the lip checkpoint's clip_sim): CLIP preset when the "
                                         "head counts are not width / 64, e.g. tiny")
    p.add_argument("--only", choices=("mps", "vqgan"),
                   help="lip, .pth -> orbax: write only this part (mps: for train.init_ckpt; vqgan: for vqgan_ckpt)")
    p.add_argument("--axial-naming", choices=("underscore", "dot"), default="underscore",
                   help="lip, orbax -> .pth: axial positional embedding keys weights_0 (release) or weights.0")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --to (a .pth file, or an "
                                                            "orbax directory; nothing else)")
    p.set_defaults(fn="convert.run")

    p = sub.add_parser("demo", help="train both stages on synthetic shapes and inpaint with true and "
                                    "counterfactual captions (CPU, minutes)")
    p.add_argument("--workdir", help="run directory (default: runs/demo, with --quality runs/demo-quality)")
    p.add_argument("--config", default=DEMO_CONFIG, help="demo config file (default: configs/shapes_demo.py)")
    p.add_argument("--images", type=int, help="held-out images to inpaint (default: from the config)")
    p.add_argument("--quality", action="store_true",
                   help="train longer (the config's :quality entry; the README gives its time and numbers)")
    p.set_defaults(fn="demo.run")
    return parser


def _enable_compilation_cache() -> None:
    """Compiled programs persist across commands: a second `lip-jax inpaint` with the same shapes
    loads them instead of compiling again (LIP_JAX_CACHE_DIR moves the cache; empty turns it off)."""
    import jax

    path = os.environ.get("LIP_JAX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "lip-jax", "xla"))
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _collect_background_errors() -> list:
    """Errors raised in background threads (orbax's writers after a failed save raise hundreds,
    one per pending write) are gathered and reported in one line instead of as tracebacks."""
    import threading

    import logging

    errors: list = []
    sys.unraisablehook = lambda u: errors.append(u.exc_value)
    threading.excepthook = lambda a: errors.append(a.exc_value)
    # orbax logs each failed background write with its traceback through absl; the command's own
    # one-line error names the cause.
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # its "Task exception was never retrieved"
    return errors


def main(argv: list[str] | None = None) -> int:
    background = _collect_background_errors()
    try:
        rc = _main(argv)
    except KeyboardInterrupt:  # Ctrl-C outside training's own handling (libraries loading too): one line
        print("lip-jax: interrupted by SIGINT", file=sys.stderr)
        rc = 130  # the shell's code for SIGINT
    if background:
        first = " ".join(str(background[0]).split())[:200]
        print(f"lip-jax: note: {len(background)} error(s) in background threads (first: "
              f"{type(background[0]).__name__}: {first})", file=sys.stderr)
    return rc


def _check_int_flags(parser, args) -> None:
    """Every integer flag of the command against its range (lip_jax.ranges), before any work."""
    from lip_jax.ranges import check

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    for action in sub._actions:
        value = getattr(args, action.dest, None)
        if action.type is int and value is not None and action.option_strings:
            check(action.dest, value, what=action.option_strings[0])


def _main(argv: list[str] | None) -> int:
    import importlib

    from lip_jax.config import UsageError, split_overrides
    from lip_jax.ranges import RangeError
    from lip_jax.weights.errors import ConversionError
    from lip_jax.data.errors import DataError
    from lip_jax.weights.errors import CheckpointError
    from lip_jax.train.faults import (DIVERGED_EXIT, INTERRUPTED_EXIT, SAVE_FAILED_EXIT, ConfigError, Diverged,
                                      Interrupted, SaveFailed, StopSignals)

    argv = sys.argv[1:] if argv is None else argv
    try:
        rest, overrides = split_overrides(argv)
        parser = build_parser()
        args = parser.parse_args(rest)
        _check_int_flags(parser, args)
        if overrides and args.command == "demo":
            raise UsageError("demo takes no --config.* overrides; edit a copy of configs/shapes_demo.py")
        args.overrides = overrides
        _enable_compilation_cache()
        module, _, fn = args.fn.rpartition(".")
        # A signal ends any command within seconds, even mid-compilation; training takes over
        # once its first step ran (a checkpoint, then exit 75).
        with StopSignals(message="interrupted by {signal}; rerun the same command"):
            getattr(importlib.import_module(f"lip_jax.app.{module}"), fn)(args)
    except (UsageError, RangeError, ConversionError, CheckpointError, DataError, ConfigError) as e:
        print(f"lip-jax: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"lip-jax: {e}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Diverged as e:
        print(f"lip-jax: error: {e}", file=sys.stderr)
        return DIVERGED_EXIT
    except SaveFailed as e:
        print(f"lip-jax: error: {e}", file=sys.stderr)
        return SAVE_FAILED_EXIT
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        print(f"lip-jax: error: {args.command} needs PyTorch for this file: pip install 'lip-jax[torch]'",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
