"""`lip-jax eval`: NUWA-LIP on a folder in the evaluation layout (MaskCOCO / MaskFlickr / MaskVG /
custom), as the official `eval_visu` action (config/lip4maskcoco, config/lip4custom), plus the
paper's metrics.

For every example, `sample_K` candidates are sampled with the KV-cached sampler (batches of
`batch_size` examples through lip_jax.inpaint.inpaint), reranked by CLIP score when CLIP weights
are available (--clip, else the checkpoint's `clip_sim`; the official reranker resizes with
nearest neighbour), and the best `best_n` are written.

OUT/eval_visu/NNNN_RRRR.png  candidate RRRR (0000 = best) of example NNNN (its gt file name). The
                             official code writes the best one only, named NNNN_0000.png by
                             lip4custom (lip4maskcoco names it NNNN.png).
OUT/eval_settings.json       what the images were made with; a rerun with other settings is refused.
OUT/metrics.json             FID, PSNR (whole / outside the hole, [0, 255]), LPIPS-VGG, CLIP score
                             x100, of the best candidate of each example against its ground truth;
                             a metric without its weights is null, with the reason.

Resuming: the written PNGs are the state (written atomically). Work is done in fixed batches of
examples whose seed depends only on (seed, first example index), so an interrupted run, rerun,
skips finished batches and writes exactly the images an uninterrupted run writes. Hosts: process
i takes its contiguous share of the batches; after a barrier every process computes metrics on
its share (LPIPS and Inception sharded over all devices) and process 0 writes metrics.json.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import os
import re
import sys
import time

import jax
import numpy as np

VISU = "eval_visu"
SETTINGS = "eval_settings.json"
METRICS = "metrics.json"
SAMPLING_KEYS = ("sample_K", "best_n", "top_k", "temperature", "seed", "batch_size", "clip_resize")
# What the written images depend on: a rerun into the same --out must agree on these.
GUARDED = ("checkpoint", "data", "clip", "mps", "vqgan") + SAMPLING_KEYS


# --- command line ---------------------------------------------------------------------------------

def add_parser(subparsers) -> None:
    """Register `lip-jax eval` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "eval", help="inpaint an evaluation set (MaskCOCO layout), write eval_visu/ and metrics.json",
        description="Evaluate NUWA-LIP on a folder in the MaskCOCO layout (gt/, mask/NNNN.mask.png, "
                    "guidance/, mask_img/). Resumable: rerun the same command after an interruption.")
    p.add_argument("--config", required=True, help="config file[:arg], e.g. configs/lip_maskcoco.py")
    p.add_argument("--ckpt", required=True, help="official NUWA-LIP .pth or orbax directory {mps, vqgan[, clip]}")
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
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set eval.seed=0 --set eval.max_examples=100")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=run)


def apply_overrides(config, items) -> None:
    """`key.path=value` onto a ConfigDict; the value is parsed as the field's current type."""
    from lip_jax.cli import UsageError

    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            if name not in node or not hasattr(node[name], "keys"):
                raise UsageError(f"--set {key}: the config has no section {name!r}")
            node = node[name]
        if leaf not in node:
            raise UsageError(f"--set {key}: the config has no field {leaf!r} (have {sorted(node.keys())})")
        old = node[leaf]
        try:
            if isinstance(old, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError("expected true or false")
                value = text.lower() in ("true", "1")
            elif isinstance(old, int):
                value = int(text)
            elif isinstance(old, float):
                value = float(text)
            elif isinstance(old, str):
                value = text
            elif hasattr(old, "keys"):
                raise ValueError("a section, set its fields one by one")
            else:
                value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as e:
            raise UsageError(f"--set {key}={text}: {e}") from e
        node[leaf] = value


def _settings(config) -> dict:
    from lip_jax.cli import UsageError

    if "eval" not in config or "mps" not in config or "vqgan" not in config:
        raise UsageError("config needs `mps`, `vqgan` and `eval` sections (e.g. configs/lip_maskcoco.py)")
    ev = config.eval
    missing = [k for k in SAMPLING_KEYS if k not in ev]
    if missing:
        raise UsageError(f"config eval section lacks {missing}")
    s = {k: ev[k] for k in SAMPLING_KEYS}
    s.update(clip_config=ev.get("clip_config", ""), metric_batch_size=int(ev.get("metric_batch_size", 32)),
             max_examples=int(ev.get("max_examples", 0)))
    if not (1 <= s["best_n"] <= s["sample_K"]):
        raise UsageError(f"need 1 <= eval.best_n <= eval.sample_K (got {s['best_n']}, {s['sample_K']})")
    if s["top_k"] < 1 or not s["temperature"] > 0 or s["batch_size"] < 1 or s["metric_batch_size"] < 1:
        raise UsageError(f"need eval.top_k >= 1, temperature > 0, batch_size >= 1, metric_batch_size >= 1 "
                         f"(got {s['top_k']}, {s['temperature']}, {s['batch_size']}, {s['metric_batch_size']})")
    if s["clip_resize"] not in ("nearest", "bicubic"):
        raise UsageError(f"eval.clip_resize must be nearest or bicubic, got {s['clip_resize']!r}")
    return s


def _data_root(path: str) -> str:
    # The official MaskCOCO archive nests the layout in eval_visu/.
    if not os.path.isdir(os.path.join(path, "gt")) and os.path.isdir(os.path.join(path, VISU, "gt")):
        return os.path.join(path, VISU)
    return path


def _require_paths(args) -> None:
    from lip_jax.cli import UsageError

    need = [(args.ckpt, "checkpoint"), (args.lpips and args.lpips.split(",")[0], "LPIPS weights"),
            (args.lpips and "," in args.lpips and args.lpips.split(",", 1)[1], "LPIPS heads"),
            (args.fid_weights, "Inception weights"), (args.fid_stats, "FID statistics")]
    if args.clip and not re.match(r"^[\w.-]+/[\w.-]+$", args.clip):  # else possibly a hub name
        need.append((args.clip, "CLIP weights"))
    for path, what in need:
        if path and not os.path.exists(path):
            raise UsageError(f"{path}: no such {what} file or directory")


def run(args) -> None:
    from lip_jax.cli import UsageError, load_config
    from lip_jax.data import open_source
    from lip_jax.inpaint import check_models

    config = load_config(args.config)
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
        _, mps_cfg = check_models(config.vqgan, config.mps)
    except ValueError as e:
        raise UsageError(f"{args.config}: {e}") from e
    root = _data_root(args.data)
    source = open_source("mask_eval", root=root)
    n = len(source) if s["max_examples"] <= 0 else min(len(source), s["max_examples"])
    _require_paths(args)
    ids = list(getattr(source, "names", [])) or [source[i]["id"] for i in range(len(source))]
    ids = ids[:n]
    clip_spec = (os.path.abspath(args.clip) if os.path.exists(args.clip) else args.clip) if args.clip else None
    settings = dict(config=args.config, overrides=list(args.overrides), checkpoint=os.path.abspath(args.ckpt),
                    data=os.path.abspath(root), examples=n, clip=clip_spec or "the checkpoint's clip_sim, if any",
                    mps=config.mps.to_dict(), vqgan=config.vqgan.to_dict(),
                    **{k: s[k] for k in SAMPLING_KEYS})
    _check_settings(args.out, settings)
    check_masks(root, ids, mps_cfg.img_size)

    # Every weight file is read before sampling: a typo must not surface after hours.
    t0 = time.perf_counter()
    weights = _load_lip(args.ckpt, mps_cfg, config.vqgan)
    clip, clip_from = weights.get("clip"), ("checkpoint clip_sim" if "clip" in weights else None)
    if args.clip:
        clip, clip_from = load_clip_any(args.clip, args.clip_config or s["clip_config"] or None), clip_spec
    lpips_params = load_lpips_any(args.lpips) if args.lpips else None
    inception = load_inception_any(args.fid_weights) if args.fid_weights else None
    ref_stats = None
    if args.fid_stats:
        from lip_jax.eval.metrics import load_fid_stats

        try:
            ref_stats = load_fid_stats(args.fid_stats)
        except ValueError as e:
            raise UsageError(str(e)) from e
        from lip_jax.models.inception import FEATURE_DIM

        if inception is not None and ref_stats[0].shape != (FEATURE_DIM,):
            raise UsageError(f"{args.fid_stats}: {ref_stats[0].shape[0]}-d statistics, the Inception pool "
                             f"features are {FEATURE_DIM}-d")
    say(f"{n} examples in {root}; weights loaded ({time.perf_counter() - t0:.1f} s); reranking: "
        + (f"CLIP from {clip_from}" if clip else "off (no CLIP weights)"))

    os.makedirs(os.path.join(args.out, VISU), exist_ok=True)
    if proc == 0 and not os.path.isfile(os.path.join(args.out, SETTINGS)):
        _write_json(os.path.join(args.out, SETTINGS), settings)
    generated = generate(weights, clip, config, mps_cfg, s, source, ids, args.out,
                         progress=not args.no_progress and proc == 0, say=say)
    _barrier("lip_jax_eval_images")
    missing = [i for i in ids if not os.path.isfile(image_path(args.out, i, 0))]
    if missing:
        raise UsageError(f"{args.out}: {len(missing)} images missing after sampling (e.g. "
                         f"{image_path(args.out, missing[0], 0)}); is --out on storage shared by every host?")

    result = compute_metrics(source, ids, args.out, s, mps_cfg.img_size, clip=clip, lpips_params=lpips_params,
                             inception=inception, ref_stats=ref_stats, say=say)
    generated = int(_allgather(np.array([generated], np.int64)).sum())
    if proc == 0:
        result["settings"] = dict(settings, clip=clip_from, clip_config=clip and dataclasses.asdict(clip[1]),
                                  lpips=args.lpips, fid_weights=args.fid_weights, fid_stats=args.fid_stats,
                                  processes=nproc)
        result["counts"].update(sampled_this_run=generated)
        _write_json(os.path.join(args.out, METRICS), result)
        m = result["metrics"]
        shown = ", ".join(f"{k} {v:.4g}" if v is not None else f"{k} null" for k, v in m.items())
        say(f"{shown}")
        print(f"wrote {os.path.join(args.out, VISU)}/ ({n} x {s['best_n']} images) and "
              f"{os.path.join(args.out, METRICS)}")
    _barrier("lip_jax_eval_done")


# --- weights --------------------------------------------------------------------------------------

def _load_lip(path: str, mps_cfg, vq_cfg) -> dict:
    """{"mps", "vqgan"[, "clip": (params, ClipConfig)]} on this process's first device."""
    from lip_jax.convert.cli import clip_config_of, load_orbax, orbax_template
    from lip_jax.inpaint import load_lip_checkpoint
    from lip_jax.train.checkpoints import CheckpointError

    if os.path.isdir(path):  # read with a template: works on several processes too
        stored = orbax_template(path)
        if not {"mps", "vqgan"} <= set(stored):
            raise CheckpointError(f"{path}: expected an orbax tree with 'mps' and 'vqgan', got {sorted(stored)}")
        template = dict(_templates(mps_cfg, json.dumps(vq_cfg.to_dict(), sort_keys=True)))
        if "clip" in stored:
            template["clip"] = stored["clip"]
        tree = load_orbax(path, template)
        out = {"mps": tree["mps"], "vqgan": tree["vqgan"]}
        if "clip" in tree:
            out["clip"] = (tree["clip"], clip_config_of(tree["clip"]))
    else:
        from lip_jax.convert.common import ConversionError

        try:
            out = load_lip_checkpoint(path, mps_cfg, vq_cfg)
        except ConversionError as e:
            raise ConversionError(str(e) if path in str(e) else f"{path}: {e}") from e
    # On the default (first local) device once, not at every batch; uncommitted, so compiled
    # programs are shared with callers passing numpy.
    put = jax.device_put
    return {k: ((put(v[0]), v[1]) if k == "clip" else put(v)) for k, v in out.items()}


@functools.lru_cache(maxsize=4)
def _templates(mps_cfg, vq_json: str) -> tuple:
    """Parameter shapes of both models (tracing DF-VQGAN's init costs seconds: once per process)."""
    from lip_jax.convert import dfvqgan as conv_vq
    from lip_jax.convert import mps2s as conv_mps

    return (("mps", conv_mps.param_template(mps_cfg)), ("vqgan", conv_vq.param_template(json.loads(vq_json))))


def load_clip_any(path: str, preset=None):
    """(params, ClipConfig) from an OpenAI file, an HF directory or hub name, or an orbax directory."""
    from lip_jax.cli import UsageError
    from lip_jax.convert.cli import clip_config_of, load_orbax
    from lip_jax.convert.clip import load_clip
    from lip_jax.convert.common import ConversionError

    try:
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            params = load_orbax(path)
            return params, clip_config_of(params, preset)
        return load_clip(path, preset)
    except ConversionError:
        raise
    except ValueError as e:  # unknown preset, zero heads inferred for a tiny width
        raise UsageError(f"{path}: {e}") from e


def load_lpips_any(spec: str):
    from lip_jax.convert.cli import load_orbax
    from lip_jax.convert.lpips import load_lpips_params, param_template

    if os.path.isdir(spec):
        return load_orbax(spec, param_template())
    vgg, _, heads = spec.partition(",")
    return load_lpips_params(vgg, heads or None)


def load_inception_any(path: str):
    from lip_jax.convert.cli import load_orbax
    from lip_jax.convert.inception import load_inception_variables

    if os.path.isdir(path):
        tree = load_orbax(path)
        if set(tree) != {"params", "batch_stats"}:
            from lip_jax.train.checkpoints import CheckpointError

            raise CheckpointError(f"{path}: expected an orbax tree {{params, batch_stats}}, got {sorted(tree)}")
        return tree
    return load_inception_variables(path)


# --- sampling -------------------------------------------------------------------------------------

def image_path(out: str, example_id: str, rank: int) -> str:
    return os.path.join(out, VISU, f"{example_id}_{rank:04d}.png")


def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def share(items: list, index: int, count: int) -> list:
    """Contiguous part `index` of `count` (sizes differ by at most one)."""
    bounds = np.linspace(0, len(items), count + 1).round().astype(int)
    return items[bounds[index]:bounds[index + 1]]


def batch_seed(seed: int, first: int) -> int:
    """Seed of the batch starting at example `first`: independent of hosts and of resumption."""
    return int(np.random.SeedSequence([int(seed), int(first)]).generate_state(1)[0] & 0x7FFFFFFF)


def load_example(source, i: int, size: int) -> dict:
    """Example i at the model resolution: gt and masked image uint8, mask bool, text, id."""
    from PIL import Image

    from lip_jax.data.errors import DataError

    ex = source[i]
    image, masked, mask = ex["image"], ex["masked_image"], ex["mask"]
    resized = image.shape[:2] != (size, size)
    if resized:
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
        masked = np.asarray(Image.fromarray(masked).resize((size, size), Image.BICUBIC))
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0
    if not mask.any():
        where = os.path.join(getattr(source, "root", ""), "mask", f"{ex['id']}.mask.png")
        raise DataError(f"{where}: the mask has no hole" + (" at the model resolution" if ex["mask"].any() else ""))
    return dict(image=image, masked=masked, mask=mask, text=ex["text"], id=ex["id"], resized=resized)


def check_masks(root: str, ids, size: int) -> None:
    """Every mask has a hole at the model resolution: checked before any weight is read."""
    from PIL import Image

    from lip_jax.data.errors import DataError
    from lip_jax.data.masks import load_mask

    for i in ids:
        path = os.path.join(root, "mask", f"{i}.mask.png")
        mask = load_mask(path)
        if mask.shape != (size, size):
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0
        if not mask.any():
            raise DataError(f"{path}: the mask has no hole" + (f" at the model resolution {size}" if
                                                                 load_mask(path).any() else ""))


def _write_png(array: np.ndarray, path: str) -> None:
    from PIL import Image

    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)  # atomic: a file with the final name is always complete


def generate(weights, clip, config, mps_cfg, s, source, ids, out, progress=True, say=print) -> int:
    """Sample this process's share of batches that are not finished; returns how many examples it sampled."""
    from tqdm import tqdm

    from lip_jax.cli import to_uint8, to_unit
    from lip_jax.inpaint import inpaint

    size, best_n = mps_cfg.img_size, s["best_n"]
    mine = share(batches(len(ids), s["batch_size"]), jax.process_index(), jax.process_count())
    todo = [(a, b) for a, b in mine
            if not all(os.path.isfile(image_path(out, ids[i], r)) for i in range(a, b) for r in range(best_n))]
    total = sum(b - a for a, b in mine)
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
        res = inpaint(weights["vqgan"], config.vqgan, weights["mps"], mps_cfg,
                      np.stack([to_unit(e["masked"]) for e in exs]), np.stack([e["mask"] for e in exs]),
                      [e["text"] for e in exs], num_samples=s["sample_K"], top_k=s["top_k"],
                      temperature=s["temperature"], seed=batch_seed(s["seed"], a), clip=clip,
                      clip_resize=s["clip_resize"])
        for j, i in enumerate(range(a, b)):
            for r in range(best_n):
                path = image_path(out, ids[i], r)
                if not os.path.isfile(path):
                    _write_png(to_uint8(res["candidates"][j, r]), path)
        sampled += b - a
        bar.update(b - a)
    bar.close()
    return sampled


# --- metrics --------------------------------------------------------------------------------------

def _allgather(x: np.ndarray) -> np.ndarray:
    """[P, ...] of every process's equally shaped array (no-op on one process)."""
    if jax.process_count() == 1:
        return np.asarray(x)[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def inception_features_fn(variables):
    """run(images [b, H, W, 3] in [-1, 1], every process the same b) -> 2048-d features, every process's."""
    from lip_jax.eval.metrics import inception_feature_fn

    return inception_feature_fn(variables)


def compute_metrics(source, ids, out, s, size, *, clip=None, lpips_params=None, inception=None,
                    ref_stats=None, say=print) -> dict:
    """Metrics of the best candidate (rank 0) of every example against its ground truth."""
    from lip_jax.cli import to_unit
    from lip_jax.data.sources import read_image
    from lip_jax.eval import metrics as M

    n, proc, nproc = len(ids), jax.process_index(), jax.process_count()
    parts = [share(list(range(n)), p, nproc) for p in range(nproc)]
    mine, m = parts[proc], max(len(p) for p in parts)
    chunk = max(1, min(s["metric_batch_size"], m))
    steps = -(-m // chunk)
    lpips_run = M.lpips_distance_fn(lpips_params) if lpips_params is not None else None
    inc_run = inception_features_fn(inception) if inception is not None else None
    cols = {k: [] for k in ("psnr", "psnr_outside_hole", "lpips", "clip", "feat", "gt_feat")}
    cols["dim"] = (2048,)
    t0 = time.perf_counter()
    for step in range(steps):  # every process runs the same number of equally sized steps
        idx = mine[step * chunk:(step + 1) * chunk]
        real = len(idx)
        idx = idx + [idx[-1] if idx else (mine[-1] if mine else 0)] * (chunk - real)
        exs = [load_example(source, i, size) for i in idx] if n else []
        pred = np.stack([read_image(image_path(out, ids[i], 0)) for i in idx])
        if pred.shape[1:3] != (size, size):
            from lip_jax.data.errors import DataError

            raise DataError(f"{image_path(out, ids[idx[0]], 0)}: {pred.shape[1:3]} is not the model resolution")
        gt = np.stack([e["image"] for e in exs])
        mask = np.stack([e["mask"] for e in exs])
        keep = slice(0, real)
        cols["psnr"].append(np.asarray(M.psnr(pred.astype(np.float32), gt.astype(np.float32)))[keep])
        cols["psnr_outside_hole"].append(
            np.asarray(M.psnr(pred.astype(np.float32), gt.astype(np.float32), mask))[keep])
        x, y = to_unit(pred), to_unit(gt)
        if lpips_run is not None:
            cols["lpips"].append(lpips_run(x, y)[proc * chunk:(proc + 1) * chunk][keep])
        if clip is not None:
            cols["clip"].append(_clip_scores(clip, x, [e["text"] for e in exs], s)[keep])
        if inc_run is not None:
            cols["feat"].append(inc_run(x)[proc * chunk:(proc + 1) * chunk][keep])
            cols["dim"] = cols["feat"][-1].shape[1:]
            if ref_stats is None:
                cols["gt_feat"].append(inc_run(y)[proc * chunk:(proc + 1) * chunk][keep])
    say(f"metrics on {n} images ({time.perf_counter() - t0:.1f} s)")

    def gathered(name):  # float32 as computed (and as gathered across processes), in example order
        local = [np.asarray(c, np.float32) for c in cols[name]]
        local = np.concatenate(local) if local else np.zeros((0,) + (cols["dim"] if name.endswith("feat") else ()))
        padded = np.zeros((m,) + local.shape[1:], np.float32)
        padded[:len(local)] = local
        every = _allgather(padded)
        return np.concatenate([every[p][:len(parts[p])] for p in range(nproc)])

    values, reasons = {}, {}
    psnr, psnr_out = gathered("psnr"), gathered("psnr_outside_hole")
    values["psnr"], values["psnr_outside_hole"] = _mean(psnr), _mean(psnr_out)
    for name, arr in (("psnr", psnr), ("psnr_outside_hole", psnr_out)):
        if not np.isfinite(arr).all():
            reasons[name] = f"mean over the {int(np.isfinite(arr).sum())} images with a finite value " \
                            f"({int((~np.isfinite(arr)).sum())} identical to their ground truth)"
    if lpips_run is not None:
        values["lpips"] = _mean(gathered("lpips"))
    else:
        values["lpips"], reasons["lpips"] = None, "no LPIPS weights given (--lpips)"
    if clip is not None:
        values["clip_score_x100"] = _mean(gathered("clip"))
    else:
        values["clip_score_x100"] = None
        reasons["clip_score_x100"] = "no CLIP weights (--clip, and the checkpoint has no clip_sim)"
    if inc_run is None:
        values["fid"], reasons["fid"] = None, "no Inception weights given (--fid-weights)"
    elif n < 2:
        values["fid"], reasons["fid"] = None, f"FID needs at least 2 images, have {n}"
    else:
        feats = gathered("feat")
        dim = feats.shape[1]  # 2048 (Inception pool3)
        mu, sigma = M.FeatureStats(dim).update(feats).mu_sigma()
        ref = ref_stats if ref_stats is not None else M.FeatureStats(dim).update(gathered("gt_feat")).mu_sigma()
        if ref[0].shape != (dim,):
            from lip_jax.cli import UsageError

            raise UsageError(f"--fid-stats: {ref[0].shape[0]}-d statistics, but the features are {dim}-d")
        values["fid"] = M.frechet_distance(mu, sigma, *ref)
    return {
        "metrics": {k: values[k] for k in ("fid", "psnr", "psnr_outside_hole", "lpips", "clip_score_x100")},
        "null_reasons": reasons,
        "notes": {
            "images": "the best candidate (eval_visu/*_0000.png) of every example vs its ground truth, "
                      "at the model resolution",
            "psnr": "dB on [0, 255] pixels, mean of per-image values; psnr_outside_hole: MSE over the "
                    "known pixels only",
            "lpips": "VGG16 LPIPS (taming / NUWA-LIP), inputs in [-1, 1], mean over images",
            "clip_score_x100": f"100 x cosine of CLIP image and guidance-text features (image resized "
                               f"{s['clip_resize']} to the CLIP resolution), mean over images",
            "fid": "pytorch-fid Inception-V3 pool features; reference: "
                   + ("--fid-stats" if ref_stats is not None else "the ground-truth images"),
        },
        "counts": {"examples": n, "candidates_sampled": n * s["sample_K"], "images_written": n * s["best_n"],
                   "images_scored": n},
    }


def _clip_scores(clip, images, texts, s) -> np.ndarray:
    """CLIP score x100 in batches of the reranker's size (batch_size x sample_K): one compiled program."""
    from lip_jax.eval.clip_score import clip_score

    rb, n = s["batch_size"] * s["sample_K"], len(texts)
    pad = (-n) % rb
    if pad:
        images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        texts = list(texts) + [texts[-1]] * pad
    return clip_score(clip[0], clip[1], images, texts, batch_size=rb, resize=s["clip_resize"])[:n]


def _mean(a: np.ndarray):
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


# --- files ----------------------------------------------------------------------------------------

def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, allow_nan=False, default=_jsonable)
        f.write("\n")
    os.replace(tmp, path)


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    return str(x)


def _check_settings(out: str, settings: dict) -> None:
    """Refuse to mix images made with other settings into one output directory."""
    from lip_jax.cli import UsageError

    path = os.path.join(out, SETTINGS)
    if not os.path.isfile(path):
        return
    want = json.loads(json.dumps(settings, default=_jsonable))
    try:
        with open(path) as f:
            have = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable ({e}); use another --out or delete it") from e
    diff = [k for k in GUARDED if have.get(k) != want.get(k)]
    if diff:
        k = diff[0]
        raise UsageError(f"{path}: {out} holds images made with other settings ({k}: {have.get(k)!r} "
                         f"then, {want.get(k)!r} now); use another --out or delete it")
