"""Inpainting metrics: PSNR (whole image / outside the hole), FID statistics and distance, LPIPS.

Conventions: images NHWC; the networks take [-1, 1]; PSNR takes [0, 255] pixel values (convert
[-1, 1] images with `lip_jax.images.to_uint8`); mask [B, H, W] bool, True = hole.

The networks run batched and sharded: `sharded_batch_fn` jits a per-example function over a mesh
of every device of every host (batch over data x fsdp, variables replicated) and returns the
global result as numpy on every host, so FID statistics accumulate identically everywhere.
FID statistics and the Fréchet distance are host-side float64 (numpy/scipy), independent of
`jax_enable_x64`; `.npz` files hold `mu` [D] and `sigma` [D, D] like pytorch-fid's.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# ----------------------------------------------------------------------------------------- PSNR


def psnr(pred: Array, target: Array, mask: Array | None = None, data_range: float = 255.0) -> Array:
    """Per-image PSNR in dB, [B]; pixel values in [0, data_range] (default [0, 255]).

    With `mask` ([B, H, W], True = hole) the mean squared error is taken over the known pixels
    only (outside the hole). Identical images give +inf; a mask with no known pixel gives NaN.
    """
    pred, target = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"psnr expects two NHWC batches of one shape, got {pred.shape} and {target.shape}")
    sq = jnp.square(pred - target)
    if mask is None:
        mse = jnp.mean(sq, axis=(1, 2, 3))
    else:
        mask = jnp.asarray(mask)
        if mask.shape != pred.shape[:3]:
            raise ValueError(f"psnr mask must be [B, H, W] = {pred.shape[:3]}, got {mask.shape}")
        known = (~mask.astype(bool))[..., None].astype(jnp.float32)
        mse = jnp.sum(sq * known, axis=(1, 2, 3)) / (jnp.sum(known, axis=(1, 2, 3)) * pred.shape[-1])
    return 10.0 * jnp.log10(data_range ** 2 / mse)


def psnr_whole(pred: Array, target: Array) -> Array:
    return psnr(pred, target)


def psnr_outside_hole(pred: Array, target: Array, mask: Array) -> Array:
    return psnr(pred, target, mask)


# ------------------------------------------------------------------------------ Fréchet distance


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), in float64.

    tr((S1 S2)^1/2) is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix S1^1/2 S2 S1^1/2 (same eigenvalues as S1 S2): no complex parts, no
    failure for singular covariances (fewer samples than dimensions), and about twice as fast as
    pytorch-fid's `scipy.linalg.sqrtm`, whose value it matches (see tests/test_metrics.py).
    """
    mu1, mu2 = np.asarray(mu1, np.float64).reshape(-1), np.asarray(mu2, np.float64).reshape(-1)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape} "
                         f"do not describe one dimension")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"frechet_distance: {name} has non-finite entries")
    r1 = _psd_sqrt((s1 + s1.T) / 2)
    inner = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


# ---------------------------------------------------------------------------------- statistics


class FeatureStats:
    """Streaming float64 mean and covariance of feature vectors (np.cov's estimate, ddof=1)."""

    def __init__(self, dim: int = 2048):
        self.dim = dim
        self.n = 0
        self.total = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def update(self, features) -> "FeatureStats":
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"FeatureStats({self.dim}): features must be [N, {self.dim}], got {f.shape}")
        self.n += f.shape[0]
        self.total += f.sum(axis=0)
        self.outer += f.T @ f
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        if other.dim != self.dim:
            raise ValueError(f"FeatureStats: cannot merge dim {other.dim} into {self.dim}")
        self.n += other.n
        self.total += other.total
        self.outer += other.outer
        return self

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"FeatureStats: need at least 2 feature vectors for a covariance, have {self.n}")
        mu = self.total / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, (sigma + sigma.T) / 2


def fid_from_features(features1, features2) -> float:
    s1 = FeatureStats(np.shape(features1)[1]).update(features1)
    s2 = FeatureStats(np.shape(features2)[1]).update(features2)
    return frechet_distance(*s1.mu_sigma(), *s2.mu_sigma())


def save_fid_stats(path: str, mu, sigma) -> str:
    """Write reference statistics as pytorch-fid does (`np.savez(path, mu=, sigma=)`); returns the path.

    numpy appends `.npz` to a path without it; the returned path is the file written.
    """
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    _check_stats(mu, sigma, path)
    path = os.fspath(path)
    path = path if path.endswith(".npz") else path + ".npz"
    np.savez(path, mu=mu, sigma=sigma)
    return path


def load_fid_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) float64 from a `.npz` with `mu` and `sigma` (ours or pytorch-fid's)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("mu", "sigma") if k not in f.files]
            if missing:
                raise ValueError(f"{path}: FID statistics need arrays 'mu' and 'sigma', missing {missing} "
                                 f"(has {sorted(f.files)})")
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    except ValueError:
        raise
    except Exception as e:  # missing file, not a zip, truncated archive
        raise ValueError(f"{path}: cannot read FID statistics ({type(e).__name__}: {e})") from e
    _check_stats(mu, sigma, path)
    return mu, sigma


def _check_stats(mu: np.ndarray, sigma: np.ndarray, what: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{what}: FID statistics need mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{what}: FID statistics have non-finite entries")


# --------------------------------------------------------------------------- sharded evaluation


def sharded_batch_fn(fn: Callable, variables, mesh=None) -> Callable:
    """Batched, sharded evaluation of `fn(variables, *batch) -> array or dict of arrays`.

    Returns `run(*local_batch)`: each host passes its own numpy batch (same size on every host);
    it is padded to a multiple of the local device count, placed as one global array sharded over
    the mesh's data x fsdp axes (default mesh: every device of every host on `data`), `fn` runs
    jitted with `variables` replicated, and the global result comes back as numpy on every host,
    host-major, padding removed.
    """
    from jax.experimental import multihost_utils

    from lip_jax import sharding

    mesh = mesh if mesh is not None else sharding.make_mesh({"data": -1})
    variables = jax.device_put(nn.unbox(variables), sharding.replicated(mesh))
    compiled = jax.jit(fn)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    per_host = max(1, shards // jax.process_count())

    def run(*batch):
        batch = [np.asarray(b) for b in batch]
        n = batch[0].shape[0]
        if any(b.shape[0] != n for b in batch):
            raise ValueError(f"sharded_batch_fn: inputs disagree on the batch size: {[b.shape for b in batch]}")
        padded = -(-max(n, 1) // per_host) * per_host
        pad = [np.concatenate([b, np.zeros((padded - n,) + b.shape[1:], b.dtype)]) if padded > n else b
               for b in batch]
        valid = np.arange(padded) < n
        arrays = sharding.global_batch({str(i): b for i, b in enumerate(pad)}, mesh)
        out = compiled(variables, *[arrays[str(i)] for i in range(len(pad))])
        out = jax.tree.map(lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)), out)
        keep = np.asarray(multihost_utils.process_allgather(valid, tiled=False)).reshape(-1)
        return jax.tree.map(lambda a: a[keep], out)

    return run


def inception_feature_fn(variables: Mapping, mesh=None, resize_input: bool = True) -> Callable:
    """run(images [b, H, W, 3] in [-1, 1]) -> pool3 features [global B, 2048] float32 numpy."""
    from lip_jax.models.inception import FIDInceptionV3

    model = FIDInceptionV3(resize_input=resize_input)
    variables = nn.unbox(variables)
    params = {k: v for k, v in dict(variables["params"]).items() if k != "fc"}  # logits unused
    variables = {"params": params, "batch_stats": variables["batch_stats"]}
    return sharded_batch_fn(lambda v, x: model.apply(v, x)["pool"], variables, mesh)


def lpips_distance_fn(params: Mapping, mesh=None) -> Callable:
    """run(images, references) both [b, H, W, 3] in [-1, 1] -> LPIPS-VGG per image [global B]."""
    from lip_jax.models.lpips import LPIPS

    model = LPIPS()
    return sharded_batch_fn(lambda p, x, y: model.apply({"params": p}, x, y)[:, 0, 0, 0], params, mesh)
