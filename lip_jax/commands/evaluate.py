"""`lip-jax eval`: NUWA-LIP on a folder in the evaluation layout, with the paper's metrics. What it
writes, how it resumes and how it shares the work between hosts: lip_jax.app.evaluate.

`--ckpt`: anything lip_jax.weights.load.load_lip reads (a stage-2 training workdir or its
params/, an orbax {mps, vqgan[, clip]} from `lip-jax convert`, the official .pth).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time

from lip_jax.app.outputs import check_dir
from lip_jax.commands.options import OVERRIDES, config_arg
from lip_jax.config import UsageError
from lip_jax.paths import path as as_path


def add_parser(subparsers):
    p = subparsers.add_parser("eval", help="inpaint an evaluation set (MaskCOCO layout), write eval_visu/ and "
                                           "metrics.json",
                              description="Evaluate NUWA-LIP on a folder in the MaskCOCO layout (gt/, "
                                          "mask/NNNN.mask.png, guidance/, mask_img/). Resumable: rerun the same "
                                          "command after an interruption.", epilog=OVERRIDES)
    config_arg(p, "configs/lip_maskcoco.py", required=False)
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
    return p


def run(args) -> None:
    """args: config, ckpt, data, out, clip, clip_config, lpips, fid_weights, fid_stats,
    overrides ("key.path=value" strings, from --config.key.path=value), no_progress."""
    import jax

    from lip_jax.app import inference, pipeline
    from lip_jax.weights.load import config_for, fingerprint, load_clip_any, load_inception_any, load_lip, load_lpips_any
    from lip_jax.app.evaluate import (METRICS, SAMPLING_KEYS, SETTINGS, check_guidance, check_settings, data_root,
                                      eval_settings, generate, on_device, write_json, written_images)
    from lip_jax.data import open_source
    from lip_jax.eval.folder import VISU, barrier, check_masks, compute_metrics, image_path

    config = config_for(args.ckpt, args.config, args.overrides, prepare=inference.with_mesh_section)
    s = eval_settings(config)
    if config.get("distributed", None) is not None:  # as training: flags, or TPU / SLURM environments
        from lip_jax.train.trainer import initialize_distributed

        initialize_distributed(config)
    proc, nproc = jax.process_index(), jax.process_count()

    def say(msg):
        if proc == 0:
            print(f"lip-jax eval: {msg}", file=sys.stderr, flush=True)

    try:
        model, mps_cfg = pipeline.check_models(config.vqgan, config.mps)
    except ValueError as e:
        raise UsageError(f"{args.config or args.ckpt}: {e}") from e
    try:
        mesh = inference.mesh_of(config)
    except ValueError as e:
        raise UsageError(f"--config.mesh: {e}") from e
    root = data_root(args.data)
    source = open_source("mask_eval", root=root)
    n = len(source) if s["max_examples"] <= 0 else min(len(source), s["max_examples"])
    _require_paths(args)
    check_dir(args.out, "--out")  # before anything is read at length: a read-only --out fails now
    ids = list(getattr(source, "names", [])) or [source[i]["id"] for i in range(len(source))]
    ids = ids[:n]
    check_masks(root, ids, mps_cfg.img_size)
    check_guidance(root, ids)
    clip_local = bool(args.clip) and as_path(args.clip).exists()
    clip_spec = (str(as_path(args.clip)) if clip_local else args.clip) if args.clip else None
    # The images depend on the weights' content, not only on where they lie: a checksum of the files.
    settings = dict(config=args.config, overrides=list(args.overrides), checkpoint=str(as_path(args.ckpt)),
                    checkpoint_fingerprint=fingerprint(args.ckpt), data=str(as_path(root)), examples=n,
                    clip=clip_spec or "the checkpoint's clip_sim, if any",
                    clip_fingerprint=fingerprint(args.clip) if clip_local else None,
                    mps=config.mps.to_dict(), vqgan=config.vqgan.to_dict(),
                    decoder=s["decoder"], **{k: s[k] for k in SAMPLING_KEYS})
    check_settings(args.out, settings)

    # Every weight file is read before sampling: a typo must not surface after hours.
    t0 = time.perf_counter()
    weights = on_device(load_lip(args.ckpt, mps_cfg, config.vqgan), model, mps_cfg, mesh)
    clip, clip_from = weights.get("clip"), ("checkpoint clip_sim" if "clip" in weights else None)
    if args.clip:
        clip = on_device({"clip": load_clip_any(args.clip, args.clip_config or s["clip_config"] or None)},
                          model, mps_cfg, mesh)["clip"]
        clip_from = clip_spec
    lpips_params = load_lpips_any(args.lpips) if args.lpips else None
    inception = load_inception_any(args.fid_weights) if args.fid_weights else None
    ref_stats = None
    if args.fid_stats:
        from lip_jax.eval.metrics import load_fid_stats
        from lip_jax.models.inception import FEATURE_DIM

        try:
            ref_stats = load_fid_stats(args.fid_stats)
        except ValueError as e:
            raise UsageError(str(e)) from e
        if inception is not None and ref_stats[0].shape != (FEATURE_DIM,):
            raise UsageError(f"{args.fid_stats}: {ref_stats[0].shape[0]}-d statistics, the Inception pool "
                             f"features are {FEATURE_DIM}-d")
    say(f"{n} examples in {root}; weights loaded ({time.perf_counter() - t0:.1f} s); {mesh.size} device(s), "
        f"mesh {dict(mesh.shape)}; reranking: "
        + (f"CLIP from {clip_from}" if clip else "off (no CLIP weights)"))

    (as_path(args.out) / VISU).mkdir(parents=True, exist_ok=True)
    if proc == 0 and not (as_path(args.out) / SETTINGS).is_file():
        write_json(as_path(args.out) / SETTINGS, settings)
    generated = generate(weights, clip, config, mps_cfg, s, source, ids, args.out,
                         progress=not args.no_progress and proc == 0, say=say, mesh=mesh)
    barrier("lip_jax_eval_images")
    written = written_images(args.out)
    missing = [i for i in ids if image_path(args.out, i, 0) not in written]
    if missing:
        raise UsageError(f"{args.out}: {len(missing)} images missing after sampling (e.g. "
                         f"{image_path(args.out, missing[0], 0)}); is --out on storage shared by every host?")

    result = compute_metrics(source, ids, args.out, s, mps_cfg.img_size, clip=clip, lpips_params=lpips_params,
                             inception=inception, ref_stats=ref_stats, say=say)
    if proc == 0:
        result["settings"] = dict(settings, clip=clip_from, clip_config=clip and dataclasses.asdict(clip[1]),
                                  lpips=args.lpips, fid_weights=args.fid_weights, fid_stats=args.fid_stats,
                                  processes=nproc)
        result["counts"].update(sampled_this_run=generated)
        write_json(as_path(args.out) / METRICS, result)
        m = result["metrics"]
        shown = ", ".join(f"{k} {v:.4g}" if v is not None else f"{k} null" for k, v in m.items())
        say(f"{shown}")
        print(f"wrote {os.path.join(args.out, VISU)}/ ({n} x {s['best_n']} images) and "
              f"{os.path.join(args.out, METRICS)}")
    barrier("lip_jax_eval_done")


def _require_paths(args) -> None:
    need = [(args.ckpt, "checkpoint"), (args.lpips and args.lpips.split(",")[0], "LPIPS weights"),
            (args.lpips and "," in args.lpips and args.lpips.split(",", 1)[1], "LPIPS heads"),
            (args.fid_weights, "Inception weights"), (args.fid_stats, "FID statistics")]
    if args.clip and not re.match(r"^[\w.-]+/[\w.-]+$", args.clip):  # else possibly a hub name
        need.append((args.clip, "CLIP weights"))
    for path, what in need:
        if path and not as_path(path).exists():
            raise UsageError(f"{path}: no such {what} file or directory")
