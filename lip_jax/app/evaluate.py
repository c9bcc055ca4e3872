"""The work of `lip-jax eval` (its arguments: lip_jax.commands.evaluate): NUWA-LIP on a folder in
the evaluation layout (MaskCOCO / MaskFlickr / MaskVG / custom), as the official `eval_visu` action
(config/lip4maskcoco, config/lip4custom), plus the paper's metrics (lip_jax.eval.folder).

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

import json
import math
import os
import sys

import jax
import numpy as np

from lip_jax import ranges
from lip_jax.app import inference, pipeline
from lip_jax.config import UsageError
from lip_jax.paths import path as as_path
from lip_jax.sample import decoder_id
from lip_jax.images import from_uint8, to_uint8, write_atomic, write_image
from lip_jax.eval.folder import VISU, allgather, image_path, load_example, share

SETTINGS = "eval_settings.json"
METRICS = "metrics.json"
SAMPLING_KEYS = ("sample_K", "best_n", "top_k", "temperature", "seed", "batch_size", "clip_resize")
# What the written images depend on: a rerun into the same --out must agree on these.
GUARDED = ("checkpoint", "checkpoint_fingerprint", "data", "clip", "clip_fingerprint", "mps",
           "vqgan", "decoder") + SAMPLING_KEYS


# --- settings -------------------------------------------------------------------------------------

def eval_settings(config) -> dict:
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


def data_root(path: str) -> str:
    # The official MaskCOCO archive nests the layout in eval_visu/.
    if not (as_path(path) / "gt").is_dir() and (as_path(path) / VISU / "gt").is_dir():
        return os.path.join(path, VISU)  # a string join: a URL stays one
    return path


def check_guidance(root: str, ids) -> None:
    """Every guidance text decodes (UTF-8), read as sampling reads it: a bad file fails now, not
    after hours of sampling."""
    from lip_jax.data.sources import read_text

    for i in ids:
        read_text(os.path.join(root, "guidance", f"{i}.txt"))


def check_settings(out: str, settings: dict) -> None:
    """Refuse to mix images made with other settings into one output directory."""
    path = as_path(out) / SETTINGS
    if not path.is_file():
        return
    want = json.loads(json.dumps(settings, default=jsonable))
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable ({e}); use another --out or delete it") from e
    diff = [k for k in GUARDED if have.get(k) != want.get(k)]
    if diff:
        k = diff[0]
        raise UsageError(f"{path}: {out} holds images made with other settings ({k}: {have.get(k)!r} "
                         f"then, {want.get(k)!r} now); use another --out or delete it")


def on_device(weights: dict, model, mps_cfg, mesh) -> dict:
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
    written = written_images(out)
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

def written_images(out) -> set[str]:
    """The images already in OUT/eval_visu, as `image_path` names them: one listing, not a request
    per image (on an object store each would be one)."""
    from etils import epath

    visu = epath.Path(image_path(out, "x", 0)).parent
    return {str(visu / p.name) for p in visu.iterdir()} if visu.is_dir() else set()


def write_json(path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=jsonable) + "\n"
    write_atomic(path, text.encode())


def jsonable(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    return str(x)
