"""`lip-jax convert`: every weight kind, PyTorch file <-> orbax directory, both directions.

The direction follows `--from`: a file (or a Hugging Face CLIP directory) is read as PyTorch and
written as an orbax directory; an orbax directory is written back as a PyTorch `.pth`.

  dfvqgan    official `{"model": DFVQGAN state dict}` (epoch14-chunk-0.pth) <-> DF-VQGAN params; a
             stage-1 training Net's `discriminator.*` come along (orbax: a "discriminator" entry)
  lip        official NUWA-LIP `{"model": ...}` (vae.model.*, MP-S2S, clip_sim.*)
             <-> {"mps", "vqgan", "clip" (if the file has clip_sim)}
  clip       OpenAI ViT-B-32.pt (TorchScript or state dict) or HF CLIPModel dir <-> CLIP params;
             written back as an OpenAI state dict
  lpips      torchvision VGG16 .pth + --heads LPIPS vgg.pth, or one merged state dict <-> LPIPS params
  inception  pytorch-fid pt_inception-2015-12-05-6726825d.pth <-> {"params", "batch_stats"}

Without `--kind` the kind is read from the keys. Every direction is strict (the converters name
missing, unexpected and mis-shaped keys) and reads PyTorch files memory-mapped, tensor by tensor.
"""

from __future__ import annotations

import os
import re

from lip_jax import ranges
from lip_jax.config import UsageError, apply_overrides, load_config
from lip_jax.app.outputs import check_dir, check_file, distinct
from lip_jax.commands.options import config_arg
from lip_jax.paths import is_url, path as as_path

KINDS = ("dfvqgan", "lip", "clip", "lpips", "inception")


# --- kind detection -------------------------------------------------------------------------------

def kind_of_torch_keys(keys) -> str | None:
    keys = list(keys)
    has = lambda pattern: any(re.search(pattern, k) for k in keys)  # noqa: E731
    if has(r"^vae\.model\."):
        return "lip"
    if has(r"^visual\.conv1\.weight$") or has(r"^(text_model|vision_model)\."):
        return "clip"
    if has(r"^quantize\.embedding\.weight$"):
        return "dfvqgan"
    if has(r"^(Mixed_\w+|Conv2d_\w+)\.") or has(r"^blocks\.\d+\.\d+\.conv\."):
        return "inception"
    if has(r"^lin\d\.model\.\d\.weight$") or has(r"^net\.slice\d\.") or has(r"^features\.\d+\.weight$"):
        return "lpips"
    return None


def kind_of_orbax_keys(keys) -> str | None:
    keys = set(keys)
    if {"mps", "vqgan"} <= keys:
        return "lip"
    if {"params", "batch_stats"} <= keys:
        return "inception"
    if "visual" in keys:
        return "clip"
    if "quantize" in keys:
        return "dfvqgan"
    if "features_0" in keys:
        return "lpips"
    return None


def _is_hf_dir(path: str) -> bool:
    return as_path(path).is_dir() and (as_path(path) / "config.json").is_file()


# --- the command ----------------------------------------------------------------------------------

def add_parser(subparsers):
    p = subparsers.add_parser("convert", help="PyTorch checkpoint <-> orbax directory, every weight kind (needs "
                                              "the torch extra: pip install 'lip-jax[torch]')",
                              description="Convert a PyTorch weight file to an orbax directory (--from is a file) "
                                          "or back (--from is an orbax directory or a training workdir). Kinds: "
                                          + ", ".join(KINDS) + "; without --kind it is read from the keys. Needs "
                                          "PyTorch: pip install 'lip-jax[torch]'.")
    p.add_argument("--kind", choices=KINDS, help="weight kind (default: detected from --from)")
    config_arg(p, "configs/dfvqgan_imagenet.py (dfvqgan) or configs/lip_maskcoco.py (lip)", required=False)
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
    return p


def run(args) -> None:
    from lip_jax.weights.errors import ConversionError

    src, dst = args.src, args.dst
    if not as_path(src).exists():
        raise UsageError(f"{src}: no such file or directory")
    to_orbax = as_path(src).is_file() or _is_hf_dir(src)
    _check_destination(src, dst, to_orbax, args)  # before any weight is read
    kind = args.kind or _detect(src, to_orbax, args.config)
    if args.only and not (kind == "lip" and to_orbax):
        raise UsageError("--only applies to --kind lip, .pth -> orbax")
    if args.heads and kind != "lpips":
        raise UsageError("--heads applies to --kind lpips")
    try:
        if to_orbax:
            _torch_to_orbax(kind, src, dst, args)
        else:
            _orbax_to_torch(kind, src, dst, args)
    except ConversionError as e:
        msg = str(e)
        raise ConversionError(msg if src in msg else f"{src}: {msg}") from e
    print(f"wrote {dst} ({kind})")


def _check_destination(src: str, dst: str, to_orbax: bool, args) -> None:
    """--to (and, orbax -> .pth, the --heads file written beside it) can be written: an existing output
    only with --overwrite (an orbax directory is replaced only by an orbax directory), a folder we
    may write in, never --from itself. Fails in a moment instead of inside the writer."""
    from lip_jax.weights.errors import CheckpointError

    overwrite = getattr(args, "overwrite", False)
    heads_out = args.heads if (args.heads and not to_orbax) else None
    distinct((src, "--from"), (dst, "--to"), (heads_out, "--heads"))
    if not to_orbax:
        check_file(dst, "--to", overwrite, make_parents=True)
        if heads_out:
            check_file(heads_out, "--heads", overwrite, make_parents=True)
        return
    out = as_path(dst)
    if out.exists() or (not is_url(dst) and os.path.lexists(dst)):
        if not out.is_dir():
            raise CheckpointError(f"{dst}: already exists and is a file; --to of an orbax conversion is a "
                                  f"directory")
        if not overwrite:
            raise CheckpointError(f"{dst}: already exists, refusing to overwrite (pass --overwrite to replace "
                                  f"an orbax checkpoint)")
        if not _is_orbax_dir(dst):
            raise CheckpointError(f"{dst}: already exists and is not an orbax checkpoint; not replaced, even "
                                  f"with --overwrite")
    # orbax writes a temporary directory beside --to and renames it (on gs://, into --to itself)
    check_dir(out.parent, "--to", shown=dst)


def _is_orbax_dir(path: str) -> bool:
    return any((as_path(path) / f).is_file() for f in ("_CHECKPOINT_METADATA", "_METADATA"))


def _detect(src: str, to_orbax: bool, config_spec: str | None) -> str:
    """The kind from the keys; failing that, from the config's sections (mps: lip, vqgan: dfvqgan)."""
    from lip_jax.weights import torch_io
    from lip_jax.weights.load import orbax_template

    if _is_hf_dir(src):
        return "clip"
    if to_orbax:
        keys = list(torch_io.load_torch_checkpoint(src))
        kind = kind_of_torch_keys(keys)
    else:
        keys = list(orbax_template(src))
        kind = kind_of_orbax_keys(keys)
    if kind is None and config_spec:
        config = load_config(config_spec)
        kind = "lip" if "mps" in config else "dfvqgan" if "vqgan" in config else None
    if kind is None:
        shown = ", ".join(sorted(keys)[:5])
        raise UsageError(f"{src}: cannot tell which kind of weights this is (keys {shown}, ...); pass --kind "
                         f"({'/'.join(KINDS)})")
    return kind


def _model_config(args, kind: str, saved_from: str | None = None):
    """The model's config: --config (with its overrides), or for an orbax --from the config saved
    with it (a --config given beside it must agree on the model fields)."""
    if saved_from is not None:
        from lip_jax.weights.load import config_for

        config = config_for(saved_from, args.config, args.overrides)
    elif not args.config:
        raise UsageError(f"--kind {kind} needs --config (the model it belongs to)")
    else:
        config = load_config(args.config)
        apply_overrides(config, args.overrides)
    spec = args.config or saved_from
    ranges.check_config(config)
    need = ("vqgan",) if kind == "dfvqgan" else ("mps", "vqgan")
    missing = [s for s in need if s not in config]
    if missing:
        raise UsageError(f"{spec}: no {' and '.join(missing)} section for --kind {kind}")
    if kind == "lip":
        from lip_jax.app.pipeline import check_models

        try:
            check_models(config.vqgan, config.mps)
        except ValueError as e:
            raise UsageError(f"{spec}: {e}") from e
    return config


def _torch_to_orbax(kind: str, src: str, dst: str, args) -> None:
    from lip_jax.weights import torch_io
    from lip_jax.weights.errors import CheckpointError
    from lip_jax.weights.store import save_params

    overwrite = getattr(args, "overwrite", False)
    if as_path(dst).exists() and not overwrite:  # checked in run(); kept for direct callers
        raise CheckpointError(f"{dst}: already exists, refusing to overwrite")
    if kind == "dfvqgan":
        from lip_jax.weights.dfvqgan import training_from_torch

        config = _model_config(args, kind)
        tree, n_lpips = training_from_torch(torch_io.load_torch_checkpoint(src), config.vqgan, what=src)
        if n_lpips:
            print(f"left out {n_lpips} perceptual_loss.* keys (the frozen LPIPS: --kind lpips)")
    elif kind == "lip":
        from lip_jax.weights.clip import clip_from_openai, infer_config
        from lip_jax.weights.mps2s import lip_from_torch
        from lip_jax.models.clip import ClipConfig

        config = _model_config(args, kind)
        full = lip_from_torch(torch_io.load_torch_checkpoint(src), config.mps, config.vqgan)
        tree = {"mps": full["mps"], "vqgan": full["vqgan"]}
        clip_sim = torch_io.subtree(full["clip_sim"], "model")
        if set(full["clip_sim"]) - {f"model.{k}" for k in clip_sim}:
            extra = sorted(k for k in full["clip_sim"] if not k.startswith("model."))
            shown = torch_io._abbrev(["clip_sim." + k for k in extra])
            raise torch_io.ConversionError(f"unexpected clip_sim keys: {shown}")
        if clip_sim:
            cfg = ClipConfig.from_any(args.clip_config) if args.clip_config else infer_config(clip_sim)
            tree["clip"] = clip_from_openai(clip_sim, cfg, what=f"{src} clip_sim")
        if args.only:
            tree = tree[args.only]
    elif kind == "clip":
        from lip_jax.weights.clip import load_clip

        try:
            tree, _ = load_clip(src, args.clip_config)
        except torch_io.ConversionError:
            raise
        except ValueError as e:  # unknown preset, zero heads inferred for a tiny width
            raise torch_io.ConversionError(f"{src}: {e}") from e
    elif kind == "lpips":
        from lip_jax.weights.lpips import load_lpips_checkpoints, lpips_from_torch

        label = src + (f" + {args.heads}" if args.heads else "")
        tree = lpips_from_torch(load_lpips_checkpoints(src, args.heads), what=label)
    else:
        from lip_jax.weights.inception import inception_from_torch

        params, stats = inception_from_torch(torch_io.load_torch_checkpoint(src), what=src)
        tree = {"params": params, "batch_stats": stats}
    # the model's config travels with its weights: inpaint, eval, reconstruct need no --config
    save_params(dst, tree, overwrite=overwrite, config=config if kind in ("dfvqgan", "lip") else None)


def _orbax_to_torch(kind: str, src: str, dst: str, args) -> None:
    from lip_jax.weights import torch_io
    from lip_jax.weights.load import (clip_config_of, load_orbax, load_vqgan_with_discriminator, orbax_template,
                                      to_local)

    wrap = kind in ("dfvqgan", "lip")  # the official releases are {"model": state_dict}
    if kind == "dfvqgan":
        from lip_jax.weights import dfvqgan as conv_vq

        cfg = _model_config(args, kind, saved_from=src).vqgan
        # checked leaf by leaf against the config on load; the discriminator, if stored, comes along
        state = conv_vq.training_to_torch(*to_local(load_vqgan_with_discriminator(src, cfg)), what=src)
    elif kind == "lip":
        from lip_jax.weights import dfvqgan as conv_vq
        from lip_jax.weights import mps2s as conv_mps
        from lip_jax.weights.clip import clip_to_openai
        from lip_jax.weights.errors import CheckpointError

        config = _model_config(args, kind, saved_from=src)
        stored = orbax_template(src)
        if not {"mps", "vqgan"} <= set(stored):
            raise CheckpointError(f"{src}: expected an orbax tree with 'mps' and 'vqgan' (a full NUWA-LIP "
                                  f"checkpoint), got {sorted(stored)}")
        template = {"mps": conv_mps.param_template(config.mps), "vqgan": conv_vq.param_template(config.vqgan)}
        if "clip" in stored:
            template["clip"] = stored["clip"]
        tree = load_orbax(src, template)
        if "clip" in tree:
            sim = clip_to_openai(tree["clip"], clip_config_of(tree["clip"], args.clip_config), what=f"{src} clip")
            tree["clip_sim"] = {f"model.{k}": v for k, v in sim.items()}
        state = conv_mps.lip_to_torch(tree, None, None, args.axial_naming)  # checked by load_orbax
    elif kind == "clip":
        from lip_jax.weights.clip import clip_to_openai

        params = load_orbax(src)
        try:
            state = clip_to_openai(params, clip_config_of(params, args.clip_config), what=src)
        except torch_io.ConversionError:
            raise
        except ValueError as e:
            raise torch_io.ConversionError(f"{src}: {e}") from e
    elif kind == "lpips":
        from lip_jax.weights.lpips import lpips_to_torch, param_template, split_torch_state

        state = lpips_to_torch(load_orbax(src, param_template()), what=src)
        if args.heads:
            vgg, heads = split_torch_state(state)
            _save_torch(heads, args.heads, wrap=False)
            state = vgg
    else:
        from lip_jax.weights.inception import inception_to_torch

        tree = load_orbax(src)
        if set(tree) != {"params", "batch_stats"}:
            raise torch_io.ConversionError(f"expected an orbax tree {{params, batch_stats}}, got {sorted(tree)}")
        state = inception_to_torch(tree["params"], tree["batch_stats"], what=src)
    _save_torch(state, dst, wrap=wrap)


def _save_torch(state, path: str, wrap: bool) -> None:
    """Write through a temporary file, so an interrupted conversion leaves no half file (an object
    store's upload is whole or absent by itself)."""
    from lip_jax.weights.torch_io import save_torch_checkpoint

    out = as_path(path)
    if is_url(out):
        save_torch_checkpoint(state, out, wrap_model=wrap)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    try:
        save_torch_checkpoint(state, tmp, wrap_model=wrap)
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
