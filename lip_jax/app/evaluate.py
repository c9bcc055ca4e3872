"""`lip-jax eval`: NUWA-LIP on a folder in the evaluation layout (MaskCOCO / MaskFlickr / MaskVG /
custom), as the official `eval_visu` action (config/lip4maskcoco, config/lip4custom), plus the
paper's metrics (lip_jax.eval.folder).

For every example, `sample_K` candidates are sampled with the KV-cached sampler (batches of
`batch_size` examples through lip_jax.app.pipeline.inpaint, their batch_size x sample_K rows split
over every device of the config's `mesh`, data parallel by default; e.g. `--config.mesh.fsdp=-1
--config.mesh.tensor=4` for FSDP x tensor), reranked by CLIP score when CLIP
weights are available (--clip, else the checkpoint's `clip_sim`; the official reranker resizes with
nearest neighbour), and the best `best_n` are written.

OUT/eval_visu/NNNN_RRRR.png  candidate RRRR (0000 = best) of example NNNN (its gt file name). The
                             official code writes the best one only, named NNNN_0000.png by
                             lip4custom (lip4maskcoco names it NNNN.png).
OUT/eval_settings.json       what the images were made with (the checkpoint by path and by a checksum
                             of its content); a rerun with other settings is refused.
OUT/metrics.json             FID, PSNR (whole / outside the hole, [0, 255]), LPIPS-VGG, CLIP score
                             x100, of the best candidate of each example against its ground truth;
                             a metric without its weights is null, with the reason.

Resuming: the written PNGs are the state (written atomically). Work is done in fixed batches of
examples whose seed depends only on (seed, first example index), so an interrupted run, rerun,
skips finished batches and writes exactly the images an uninterrupted run writes. Hosts: every
process reads every example of a batch and runs the same sharded programs over all devices
(`batch_size` is the global batch, so the images do not depend on the number of hosts), then writes
its contiguous share of the batch's images; after a barrier every process computes metrics on its
share (LPIPS and Inception sharded over all devices) and process 0 writes metrics.json.

`--ckpt`: anything lip_jax.weights.load.load_lip reads (a stage-2 training workdir or its
params/, an orbax {mps, vqgan[, clip]} from `lip-jax convert`, the official .pth).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time

import jax
import numpy as np

from lip_jax import ranges
from lip_jax.app import inference, pipeline
from lip_jax.weights.load import fingerprint, load_clip_any, load_inception_any, load_lip, load_lpips_any
from lip_jax.config import UsageError, apply_overrides, load_config
from lip_jax.app.outputs import check_dir
from lip_jax.paths import path as as_path
from lip_jax.sample import decoder_id
from lip_jax.images import from_uint8, to_uint8, write_atomic, write_image
from lip_jax.eval.folder import (VISU, allgather, barrier, check_masks, compute_metrics, image_path,
                                 load_example, share)

SETTINGS = "eval_settings.json"
METRICS = "metrics.json"
SAMPLING_KEYS = ("sample_K", "best_n", "top_k", "temperature", "seed", "batch_size", "clip_resize")
# What the written images depend on: a rerun into the same --out must agree on these.
GUARDED = ("checkpoint", "checkpoint_fingerprint", "data", "clip", "clip_fingerprint", "mps",
           "vqgan", "decoder") + SAMPLING_KEYS


def run(args) -> None:
    """args: config, ckpt, data, out, clip, clip_config, lpips, fid_weights, fid_stats,
    overrides ("key.path=value" strings, from --config.key.path=value), no_progress."""
    from lip_jax.data import open_source

    config = load_config(args.config)
    inference.with_mesh_section(config)
    apply_overrides(config, args.overrides)
    s = _settings(config)
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
        raise UsageError(f"{args.config}: {e}") from e
    try:
        mesh = inference.mesh_of(config)
    except ValueError as e:
        raise UsageError(f"--config.mesh: {e}") from e
    root = _data_root(args.data)
    source = open_source("mask_eval", root=root)
    n = len(source) if s["max_examples"] <= 0 else min(len(source), s["max_examples"])
    _require_paths(args)
    check_dir(args.out, "--out")  # before anything is read at length: a read-only --out fails now
    ids = list(getattr(source, "names", [])) or [source[i]["id"] for i in range(len(source))]
    ids = ids[:n]
    check_masks(root, ids, mps_cfg.img_size)
    _check_guidance(root, ids)
    clip_local = bool(args.clip) and as_path(args.clip).exists()
    clip_spec = (str(as_path(args.clip)) if clip_local else args.clip) if args.clip else None
    # The images depend on the weights' content, not only on where they lie: a checksum of the files.
    settings = dict(config=args.config, overrides=list(args.overrides), checkpoint=str(as_path(args.ckpt)),
                    checkpoint_fingerprint=fingerprint(args.ckpt), data=str(as_path(root)), examples=n,
                    clip=clip_spec or "the checkpoint's clip_sim, if any",
                    clip_fingerprint=fingerprint(args.clip) if clip_local else None,
                    mps=config.mps.to_dict(), vqgan=config.vqgan.to_dict(),
                    decoder=s["decoder"], **{k: s[k] for k in SAMPLING_KEYS})
    _check_settings(args.out, settings)

    # Every weight file is read before sampling: a typo must not surface after hours.
    t0 = time.perf_counter()
    weights = _on_device(load_lip(args.ckpt, mps_cfg, config.vqgan), model, mps_cfg, mesh)
    clip, clip_from = weights.get("clip"), ("checkpoint clip_sim" if "clip" in weights else None)
    if args.clip:
        clip = _on_device({"clip": load_clip_any(args.clip, args.clip_config or s["clip_config"] or None)},
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
        _write_json(as_path(args.out) / SETTINGS, settings)
    generated = generate(weights, clip, config, mps_cfg, s, source, ids, args.out,
                         progress=not args.no_progress and proc == 0, say=say, mesh=mesh)
    barrier("lip_jax_eval_images")
    written = _written(args.out)
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
        _write_json(as_path(args.out) / METRICS, result)
        m = result["metrics"]
        shown = ", ".join(f"{k} {v:.4g}" if v is not None else f"{k} null" for k, v in m.items())
        say(f"{shown}")
        print(f"wrote {os.path.join(args.out, VISU)}/ ({n} x {s['best_n']} images) and "
              f"{os.path.join(args.out, METRICS)}")
    barrier("lip_jax_eval_done")


# --- settings -------------------------------------------------------------------------------------

def _settings(config) -> dict:
    """The eval section's values, every one checked (nothing is read or written before this)."""
    if "eval" not in config or "mps" not in config or "vqgan" not in config:
        raise UsageError("config needs `mps`, `vqgan` and `eval` sections (e.g. configs/lip_maskcoco.py)")
    ev = config.eval
    missing = [k for k in SAMPLING_KEYS if k not in ev]
    if missing:
        raise UsageError(f"config eval section lacks {missing}")
    s = {k: ev[k] for k in SAMPLING_KEYS}
    s.update(clip_config=ev.get("clip_config", ""), metric_batch_size=ev.get("metric_batch_size", 32),
             max_examples=ev.get("max_examples", 0))
    for key in ("sample_K", "best_n", "top_k", "batch_size", "metric_batch_size", "max_examples", "seed"):
        s[key] = ranges.check(key, s[key], config, what=f"config.eval.{key}")  # the rule of every integer
    t = s["temperature"]
    if isinstance(t, bool) or not isinstance(t, (int, float, np.number)) or not (math.isfinite(t) and t > 0):
        raise UsageError(f"need a finite eval.temperature > 0 (got {t!r})")
    if not s["best_n"] <= s["sample_K"]:
        raise UsageError(f"need 1 <= eval.best_n <= eval.sample_K (got {s['best_n']}, {s['sample_K']})")
    # the decoder that runs (config.sample.decoder resolved): a resume must not mix two decoders' images
    s["decoder"] = decoder_id(pipeline.config_decoder(config))
    if s["clip_resize"] not in ("nearest", "bicubic"):
        raise UsageError(f"eval.clip_resize must be nearest or bicubic, got {s['clip_resize']!r}")
    return s


def _data_root(path: str) -> str:
    # The official MaskCOCO archive nests the layout in eval_visu/.
    if not (as_path(path) / "gt").is_dir() and (as_path(path) / VISU / "gt").is_dir():
        return os.path.join(path, VISU)  # a string join: a URL stays one
    return path


def _require_paths(args) -> None:
    need = [(args.ckpt, "checkpoint"), (args.lpips and args.lpips.split(",")[0], "LPIPS weights"),
            (args.lpips and "," in args.lpips and args.lpips.split(",", 1)[1], "LPIPS heads"),
            (args.fid_weights, "Inception weights"), (args.fid_stats, "FID statistics")]
    if args.clip and not re.match(r"^[\w.-]+/[\w.-]+$", args.clip):  # else possibly a hub name
        need.append((args.clip, "CLIP weights"))
    for path, what in need:
        if path and not as_path(path).exists():
            raise UsageError(f"{path}: no such {what} file or directory")


def _check_guidance(root: str, ids) -> None:
    """Every guidance text decodes (UTF-8), read as sampling reads it: a bad file fails now, not
    after hours of sampling."""
    from lip_jax.data.sources import _read_text

    for i in ids:
        _read_text(os.path.join(root, "guidance", f"{i}.txt"))


def _check_settings(out: str, settings: dict) -> None:
    """Refuse to mix images made with other settings into one output directory."""
    path = as_path(out) / SETTINGS
    if not path.is_file():
        return
    want = json.loads(json.dumps(settings, default=_jsonable))
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable ({e}); use another --out or delete it") from e
    diff = [k for k in GUARDED if have.get(k) != want.get(k)]
    if diff:
        k = diff[0]
        raise UsageError(f"{path}: {out} holds images made with other settings ({k}: {have.get(k)!r} "
                         f"then, {want.get(k)!r} now); use another --out or delete it")


def _on_device(weights: dict, model, mps_cfg, mesh) -> dict:
    """Placed once, not at every batch: MP-S2S and DF-VQGAN split over the mesh by their logical
    axes; the reranker ("clip": (params, ClipConfig)) on the first local device, uncommitted, so
    its program is shared with the CLIP-score metric."""
    shardings = dict(zip(("vqgan", "mps"), inference.weight_shardings(model, mps_cfg, mesh)))
    return {k: ((jax.device_put(v[0]), v[1]) if k == "clip" else inference.place(v, shardings[k]))
            for k, v in weights.items()}


# --- sampling -------------------------------------------------------------------------------------

def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def batch_seed(seed: int, first: int) -> int:
    """Seed of the batch starting at example `first`: independent of hosts and of resumption."""
    return int(np.random.SeedSequence([int(seed), int(first)]).generate_state(1)[0] & 0x7FFFFFFF)


def generate(weights, clip, config, mps_cfg, s, source, ids, out, progress=True, say=print, mesh=None) -> int:
    """Sample the batches that are not finished, every process every batch (one global program,
    its rows over every device of `mesh`); returns how many examples were sampled."""
    from tqdm import tqdm

    size, best_n = mps_cfg.img_size, s["best_n"]
    proc, nproc = jax.process_index(), jax.process_count()
    every = batches(len(ids), s["batch_size"])
    written = _written(out)
    unfinished = np.array([not all(image_path(out, ids[i], r) in written for i in range(a, b)
                                   for r in range(best_n)) for a, b in every], bool)
    # Every process must run the same batches: one that any process misses a file of is redone.
    unfinished = allgather(unfinished).any(axis=0)
    todo = [ab for ab, u in zip(every, unfinished) if u]
    total = len(ids)
    done = total - sum(b - a for a, b in todo)
    if done:
        say(f"resuming: {done} of {total} examples already written")
    bar = tqdm(total=total, initial=done, unit="img", desc="eval", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    resized = False
    sampled = 0
    for a, b in todo:
        exs = [load_example(source, i, size) for i in range(a, b)]
        if not resized and any(e["resized"] for e in exs):
            resized = True
            say(f"note: resizing the evaluation images to the model resolution {size}x{size}")
        exs += [exs[-1]] * (s["batch_size"] - len(exs))  # one compiled shape for every batch
        res = pipeline.inpaint(weights["vqgan"], config.vqgan, weights["mps"], mps_cfg,
                               np.stack([from_uint8(e["masked"]) for e in exs]), np.stack([e["mask"] for e in exs]),
                               [e["text"] for e in exs], num_samples=s["sample_K"], top_k=s["top_k"],
                               temperature=s["temperature"], seed=batch_seed(s["seed"], a), clip=clip,
                               clip_resize=s["clip_resize"], mesh=mesh, decoder=s["decoder"])
        for i in share(list(range(a, b)), proc, nproc):  # each process writes its share
            j = i - a
            for r in range(best_n):
                path = image_path(out, ids[i], r)
                if path not in written:
                    write_image(to_uint8(res["candidates"][j, r]), path)
        sampled += b - a
        bar.update(b - a)
    bar.close()
    return sampled


# --- files ----------------------------------------------------------------------------------------

def _written(out) -> set[str]:
    """The images already in OUT/eval_visu, as `image_path` names them: one listing, not a request
    per image (on an object store each would be one)."""
    from etils import epath

    visu = epath.Path(image_path(out, "x", 0)).parent
    return {str(visu / p.name) for p in visu.iterdir()} if visu.is_dir() else set()


def _write_json(path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=_jsonable) + "\n"
    write_atomic(path, text.encode())


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    return str(x)
