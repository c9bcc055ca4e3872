"""Metrics over a folder of written inpaintings in the evaluation layout (MaskCOCO / MaskFlickr /
MaskVG / custom), and the helpers the `lip-jax eval` command (lip_jax.commands.evaluate and its work,
lip_jax.app.evaluate) shares with them.

OUT/eval_visu/NNNN_RRRR.png is candidate RRRR (0000 = best) of example NNNN. `compute_metrics`
scores the best candidate of every example against its ground truth: FID, PSNR (whole / outside the
hole, [0, 255]), LPIPS-VGG, CLIP score x100. Hosts: process i scores its contiguous share of the
examples (LPIPS and Inception sharded over all devices); the per-image values are gathered on every
process, in example order.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from etils import epath

from lip_jax.images import DataError, from_uint8, read_image, read_mask
from lip_jax.images.resize import eval_to_model, mask_nearest

VISU = "eval_visu"


def image_path(out, example_id: str, rank: int) -> str:
    """Where candidate `rank` of an example is written: under `out` as the user spelled it, a URL
    (gs://...) staying one; read and written through epath."""
    return str(epath.Path(out) / VISU / f"{example_id}_{rank:04d}.png")


def share(items: list, index: int, count: int) -> list:
    """Contiguous part `index` of `count` (sizes differ by at most one)."""
    bounds = np.linspace(0, len(items), count + 1).round().astype(int)
    return items[bounds[index]:bounds[index + 1]]


def load_example(source, i: int, size: int) -> dict:
    """Example i at the model resolution: gt and masked image uint8, mask bool, text, id."""
    ex = source[i]
    image, masked, mask = ex["image"], ex["masked_image"], ex["mask"]
    resized = image.shape[:2] != (size, size)
    if resized:
        image, masked = eval_to_model(image, size), eval_to_model(masked, size)
        mask = mask_nearest(mask, size)
    if not mask.any():
        where = str(epath.Path(getattr(source, "root", "") or ".") / "mask" / f"{ex['id']}.mask.png")
        raise DataError(f"{where}: the mask has no hole" + (" at the model resolution" if ex["mask"].any() else ""))
    return dict(image=image, masked=masked, mask=mask, text=ex["text"], id=ex["id"], resized=resized)


def check_masks(root, ids, size: int) -> None:
    """Every mask has a hole at the model resolution: checked before any weight is read."""
    for i in ids:
        path = str(epath.Path(root) / "mask" / f"{i}.mask.png")
        original = read_mask(path)
        mask = original if original.shape == (size, size) else mask_nearest(original, size)
        if not mask.any():
            raise DataError(f"{path}: the mask has no hole"
                            + (f" at the model resolution {size}" if original.any() else ""))


# --- several processes ----------------------------------------------------------------------------

def allgather(x: np.ndarray) -> np.ndarray:
    """[P, ...] of every process's equally shaped array (no-op on one process)."""
    if jax.process_count() == 1:
        return np.asarray(x)[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# --- metrics --------------------------------------------------------------------------------------

def inception_features_fn(variables):
    """run(images [b, H, W, 3] in [-1, 1], every process the same b) -> 2048-d features, every process's."""
    from lip_jax.eval.metrics import inception_feature_fn

    return inception_feature_fn(variables)


def compute_metrics(source, ids, out, s, size, *, clip=None, lpips_params=None, inception=None,
                    ref_stats=None, say=print) -> dict:
    """Metrics of the best candidate (rank 0) of every example against its ground truth.

    `s`: the eval settings (metric_batch_size; batch_size, sample_K and clip_resize: the CLIP
    scorer runs the reranker's program). Every process calls this with the same arguments."""
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
            raise DataError(f"{image_path(out, ids[idx[0]], 0)}: {pred.shape[1:3]} is not the model resolution")
        gt = np.stack([e["image"] for e in exs])
        mask = np.stack([e["mask"] for e in exs])
        keep = slice(0, real)
        cols["psnr"].append(np.asarray(M.psnr(pred.astype(np.float32), gt.astype(np.float32)))[keep])
        cols["psnr_outside_hole"].append(
            np.asarray(M.psnr(pred.astype(np.float32), gt.astype(np.float32), mask))[keep])
        x, y = from_uint8(pred), from_uint8(gt)
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
        every = allgather(padded)
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
            raise DataError(f"--fid-stats: {ref[0].shape[0]}-d statistics, but the features are {dim}-d")
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
