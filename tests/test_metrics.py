"""PSNR, Fréchet distance (vs a pytorch-fid-style float64 sqrtm reference), FID stats, sharding."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from lip_jax.eval import metrics as M
from lip_jax.images import to_uint8


def reference_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance algorithm: scipy sqrtm of the product, float64."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def features(n, d, seed, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return ((rng.normal(size=(n, d)) @ mix) * scale + shift).astype(np.float32)


# ----------------------------------------------------------------------------------------- PSNR


def test_psnr_known_values_and_reference():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 256, (3, 8, 10, 3)).astype(np.float32)
    pred = np.clip(target + rng.normal(0, 5, target.shape), 0, 255).astype(np.float32)
    mse = ((pred.astype(np.float64) - target) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(M.psnr_whole(pred, target)), 10 * np.log10(255.0 ** 2 / mse), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(M.psnr(target + 1, target)), 20 * np.log10(255.0), rtol=1e-6)
    assert np.isinf(np.asarray(M.psnr(target, target))).all()


def test_psnr_outside_hole_ignores_the_hole():
    rng = np.random.default_rng(1)
    target = rng.uniform(0, 255, (2, 12, 12, 3)).astype(np.float32)
    mask = np.zeros((2, 12, 12), bool)
    mask[:, 3:7, 2:9] = True
    pred = np.where(mask[..., None], 255 - target, target + 2).astype(np.float32)
    other = np.where(mask[..., None], 0.0, pred).astype(np.float32)
    out = np.asarray(M.psnr_outside_hole(pred, target, mask))
    np.testing.assert_allclose(out, 10 * np.log10(255.0 ** 2 / 4.0), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(M.psnr_outside_hole(other, target, mask)), out)
    assert (np.asarray(M.psnr_whole(pred, target)) < out - 10).all()
    with pytest.raises(ValueError, match="mask must be"):
        M.psnr(pred, target, mask[:, :6])
    with pytest.raises(ValueError, match="one shape"):
        M.psnr(pred, target[:1])


def test_pixels_for_psnr_round_like_a_saved_png():
    """PSNR's [0, 255] pixels come from lip_jax.images.to_uint8, on the host and inside jit alike."""
    x = np.array([-1.0, -0.999, 0.0, 0.5, 1.0, 1.2], np.float32).reshape(1, 1, 6, 1)
    np.testing.assert_array_equal(to_uint8(x).ravel(), [0, 0, 128, 191, 255, 255])
    np.testing.assert_array_equal(np.asarray(jax.jit(to_uint8)(jnp.asarray(x))).ravel(), [0, 0, 128, 191, 255, 255])


# ------------------------------------------------------------------------------ Fréchet distance


@pytest.mark.parametrize("n,d", [(600, 64), (40, 96), (300, 128)])
def test_frechet_distance_matches_sqrtm_reference(n, d):
    """Full-rank and rank-deficient (n < d) covariances, float64, relative error < 1e-6."""
    f1, f2 = features(n, d, 1), features(n, d, 2, scale=1.3, shift=0.2)
    mu1, s1 = f1.mean(0, dtype=np.float64), np.cov(f1, rowvar=False)
    mu2, s2 = f2.mean(0, dtype=np.float64), np.cov(f2, rowvar=False)
    ref = reference_frechet(mu1, s1, mu2, s2)
    got = M.frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(got, float) and ref > 1.0
    assert abs(got - ref) / abs(ref) < 1e-6, (got, ref)


def test_frechet_distance_identity_and_errors():
    f = features(200, 32, 3)
    mu, s = f.mean(0, dtype=np.float64), np.cov(f, rowvar=False)
    assert abs(M.frechet_distance(mu, s, mu, s)) < 1e-9 * np.trace(s)
    with pytest.raises(ValueError, match="one dimension"):
        M.frechet_distance(mu, s, mu[:5], s)
    with pytest.raises(ValueError, match="non-finite"):
        M.frechet_distance(mu * np.nan, s, mu, s)


def test_feature_stats_streaming_equals_numpy():
    f = features(257, 48, 4, shift=3.0)
    st = M.FeatureStats(48)
    for chunk in np.array_split(f, 5):
        st.update(chunk)
    mu, sigma = st.mu_sigma()
    np.testing.assert_allclose(mu, f.astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-11)
    other = M.FeatureStats(48).update(f[:100]).merge(M.FeatureStats(48).update(f[100:]))
    np.testing.assert_allclose(other.mu_sigma()[1], sigma, rtol=1e-12, atol=1e-13)
    f2 = features(300, 48, 5)
    ref = reference_frechet(mu, sigma, f2.mean(0, dtype=np.float64), np.cov(f2, rowvar=False))
    assert abs(M.fid_from_features(f, f2) - ref) / ref < 1e-6
    with pytest.raises(ValueError, match=r"\[N, 48\]"):
        st.update(f[:, :10])
    with pytest.raises(ValueError, match="at least 2"):
        M.FeatureStats(48).update(f[:1]).mu_sigma()


def test_fid_stats_npz_round_trip_and_errors(tmp_path):
    f = features(100, 16, 6)
    mu, sigma = M.FeatureStats(16).update(f).mu_sigma()
    path = M.save_fid_stats(str(tmp_path / "ref"), mu, sigma)
    assert path.endswith("ref.npz")
    with np.load(path) as raw:  # what pytorch-fid reads: f["mu"][:], f["sigma"][:]
        np.testing.assert_array_equal(raw["mu"][:], mu)
        np.testing.assert_array_equal(raw["sigma"][:], sigma)
    mu2, sigma2 = M.load_fid_stats(path)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    np.savez(tmp_path / "pytorch_fid_style.npz", mu=mu.astype(np.float32), sigma=sigma)
    assert M.load_fid_stats(str(tmp_path / "pytorch_fid_style.npz"))[0].dtype == np.float64
    np.savez(tmp_path / "wrong.npz", mean=mu, sigma=sigma)
    with pytest.raises(ValueError, match=r"missing \['mu'\]"):
        M.load_fid_stats(str(tmp_path / "wrong.npz"))
    np.savez(tmp_path / "shape.npz", mu=mu, sigma=sigma[:4])
    with pytest.raises(ValueError, match=r"mu \[D\] and sigma \[D, D\]"):
        M.load_fid_stats(str(tmp_path / "shape.npz"))
    data = open(path, "rb").read()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz: cannot read FID statistics"):
        M.load_fid_stats(str(tmp_path / "cut.npz"))
    with pytest.raises(ValueError, match="cannot read FID statistics"):
        M.load_fid_stats(str(tmp_path / "absent.npz"))


def test_sharded_batch_fn_over_four_devices():
    """Four host devices: a 5-image batch is padded to 8, sharded, gathered and trimmed."""
    code = textwrap.dedent("""
        import numpy as np, jax, jax.numpy as jnp
        from lip_jax.eval import metrics as M
        assert jax.device_count() == 4
        from lip_jax import sharding
        w = {"w": jnp.arange(3.0)}
        seen = []
        real_global_batch = sharding.global_batch
        def spy(local, mesh):
            out = real_global_batch(local, mesh)
            seen.extend(a.sharding for a in out.values())
            return out
        sharding.global_batch = spy
        def fn(v, x, y):
            return {"s": jnp.sum(x * v["w"], axis=(1, 2, 3)) + y, "psnr": M.psnr(x, x + 1.0)}
        run = M.sharded_batch_fn(fn, w)
        x = np.random.default_rng(0).uniform(size=(5, 4, 4, 3)).astype(np.float32)
        y = np.arange(5, dtype=np.float32)
        out = run(x, y)
        assert len(seen) == 2 and all(len(sh.device_set) == 4 and not sh.is_fully_replicated for sh in seen), seen
        np.testing.assert_allclose(out["s"], (x * np.arange(3.0)).sum(axis=(1, 2, 3)) + y, rtol=1e-6)
        assert out["psnr"].shape == (5,)
        print("OK")
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]
