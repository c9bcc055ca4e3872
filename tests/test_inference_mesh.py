"""Inference over every device: the Python API, `lip-jax inpaint` with several candidates and
`lip-jax eval` on 4 simulated CPU devices give the 1-device results, with the rows (images x
candidates) split over the 4 devices; and `tools/plan.py --recipe sample` lowers exactly the
programs the pipeline runs.

One subprocess (the device count is fixed when JAX starts) runs every 4-device entry point while
this process computes the 1-device ones. The tiny eval model (configs/lip_maskcoco.py:tiny,
random weights). Shapes: the API and eval 4 images x 3 candidates on data=4 (images and rows
split: one compiled set for both), the CLI 1 image x 3 candidates on fsdp=2 x tensor=2 (3 rows
padded to 4 over the data x fsdp row shards, the image replicated, the weights split by their
logical axes).

Token indices must be equal. Images agree to ~1e-5, not bit for bit: XLA's CPU convolutions
accumulate in an order that depends on the batch they see (2 rows per device instead of 6 or 8 on
one device; the same happens on one device when a batch is split in two), so a PNG pixel may
round to the neighbouring uint8 value.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from eval_data import write_dataset
from random_weights import random_params

from lip_jax.app import pipeline as P
from lip_jax.weights.load import load_lip
from lip_jax.config import load_config
from lip_jax.cli import main
from lip_jax.weights import dfvqgan as CV
from lip_jax.weights import mps2s as CM
from lip_jax.weights.store import save_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "lip_maskcoco.py") + ":tiny"
EVAL = ["--config.eval.batch_size=4", "--config.eval.sample_K=3", "--config.eval.best_n=2", "--no-progress"]
TEXTS = ["a red car", "two cats", "", "a blue circle"]
SEED = 4

CHILD = r"""
import dataclasses, json, os, sys, time
sys.path.insert(0, os.path.join(sys.argv[1], "tools"))
import jax
import numpy as np
jax.config.update("jax_default_matmul_precision", "highest")
from lip_jax.app import inference, pipeline
from lip_jax.weights.load import load_lip
from lip_jax.config import load_config
from lip_jax.cli import main
root, config = sys.argv[2], sys.argv[3]
spec = json.loads(sys.argv[4])
calls, built = [], inference.programs

def spy(model, cfg, mesh, batch, k, decoder="auto"):  # what each program returned, and the program it ran
    prog = built(model, cfg, mesh, batch, k, decoder)
    def wrap(name, fn):
        def run(*args):
            out = fn(*args)
            if not any((c["program"], c["batch"], c["k"]) == (name, batch, k) for c in calls):
                leaf = jax.tree.leaves(out)[0]
                weights = [str(s.spec) for s in jax.tree.leaves(jax.tree.map(lambda a: a.sharding, args[0]))]
                calls.append(dict(program=name, batch=batch, k=k, mesh=dict(mesh.shape), spec=str(leaf.sharding.spec),
                                  devices=len(leaf.sharding.device_set), weights=weights,
                                  shards=[list(s.data.shape) for s in leaf.addressable_shards],
                                  lowered=fn.lower(*args).as_text() if batch == 4 else None))
            return out
        return run
    return dataclasses.replace(prog, **{n: wrap(n, getattr(prog, n)) for n in ("encode", "sample", "decode")})

inference.programs = spy
times = {}
t0 = time.perf_counter()
cfg = load_config(config)
w = load_lip(os.path.join(root, "ckpt"), cfg.mps, cfg.vqgan)
d = np.load(os.path.join(root, "api_inputs.npz"))
out = pipeline.inpaint(w["vqgan"], cfg.vqgan, w["mps"], cfg.mps, d["image"], d["mask"], spec["texts"],
                       num_samples=3, seed=spec["seed"])
par = pipeline.inpaint(w["vqgan"], cfg.vqgan, w["mps"], cfg.mps, d["image"], d["mask"], spec["texts"],
                       num_samples=3, seed=spec["seed"], decoder="parallel")
np.savez(os.path.join(root, "api_4.npz"), tokens=out["tokens"], candidates=out["candidates"],
         parallel_tokens=par["tokens"])
times["api"] = time.perf_counter() - t0
t0 = time.perf_counter()
assert main(spec["inpaint"]) == 0
times["inpaint"] = time.perf_counter() - t0
t0 = time.perf_counter()
assert main(spec["eval"]) == 0
times["eval"] = time.perf_counter() - t0
inference.programs = built

import plan
mesh = inference.mesh_of(None)
with jax.set_mesh(mesh):  # as plan.plan_one lowers
    programs, info = plan._sample(cfg, mesh, 4, 3)  # the API's and eval's 4 images x 3 candidates
    planned = {name: fn.lower(*abstract).as_text() for name, fn, abstract, _ in programs}
print("RESULT " + json.dumps(dict(calls=calls, planned=planned, info=info, times=times, devices=jax.device_count())))
"""


def _inpaint_argv(root, tag, *extra):
    return ["inpaint", "--config", CONFIG, "--ckpt", str(root / "ckpt"), "--image", str(root / "img.png"),
            "--mask", str(root / "mask.png"), "--text", "a red car", "--num-samples", "3", "--seed", str(SEED),
            "--out", str(root / f"out_{tag}.png"), "--grid", str(root / f"grid_{tag}.png"), *extra]


def _eval_argv(root, tag, *extra):
    return ["eval", "--config", CONFIG, "--ckpt", str(root / "ckpt"), "--data", str(root / "data"),
            "--out", str(root / f"eval_{tag}"), *EVAL, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mesh")
    cfg = load_config(CONFIG)
    save_params(str(root / "ckpt"), {"mps": random_params(CM.param_template(cfg.mps), 2),
                                     "vqgan": random_params(CV.param_template(cfg.vqgan), 1)})
    rng = np.random.default_rng(1)
    image = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    mask = np.zeros((4, 32, 32), bool)
    mask[0, 4:14, 9:30] = True
    mask[1, 20:32, 0:5] = True
    mask[2] = True  # from the text alone
    mask[3, 0:3, 0:3] = True  # one token
    np.savez(root / "api_inputs.npz", image=image, mask=mask)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "img.png")
    m = np.zeros((32, 32), np.uint8)
    m[10:20, 3:17] = 255
    Image.fromarray(m).save(root / "mask.png")
    write_dataset(str(root / "data"))

    spec = dict(seed=SEED, texts=TEXTS, inpaint=_inpaint_argv(root, "4", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"),
                eval=_eval_argv(root, "4"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    child = subprocess.Popen([sys.executable, "-c", CHILD, REPO, str(root), CONFIG, json.dumps(spec)], env=env,
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    times = {}
    try:  # meanwhile, one device here
        t0 = time.perf_counter()
        w = load_lip(str(root / "ckpt"), cfg.mps, cfg.vqgan)
        one = P.inpaint(w["vqgan"], cfg.vqgan, w["mps"], cfg.mps, image, mask, TEXTS, num_samples=3, seed=SEED)
        one["parallel_tokens"] = P.inpaint(w["vqgan"], cfg.vqgan, w["mps"], cfg.mps, image, mask, TEXTS, num_samples=3,
                                           seed=SEED, decoder="parallel")["tokens"]
        times["api"] = time.perf_counter() - t0
        assert main(_inpaint_argv(root, "1")) == 0
        times["inpaint"] = time.perf_counter() - t0 - times["api"]
        assert main(_eval_argv(root, "1")) == 0
        times["eval"] = time.perf_counter() - t0 - times["api"] - times["inpaint"]
    finally:
        out, err = child.communicate(timeout=900)
    assert child.returncode == 0, err[-4000:]
    result = json.loads([line for line in out.splitlines() if line.startswith("RESULT ")][-1][len("RESULT "):])
    print(f"seconds, compilation included: 1 device {times}, 4 devices {result['times']}")
    result["four"] = dict(np.load(root / "api_4.npz"))
    return dict(root=root, one=one, **result)


def _close_uint8(a, b, what):
    """uint8 images from float outputs that differ by ~1e-5: at most one level apart, rarely."""
    a, b = np.asarray(a, np.int16), np.asarray(b, np.int16)
    assert a.shape == b.shape, what
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01, what


def test_api_on_four_devices_gives_the_one_device_tokens_and_images(runs):
    one, four = runs["one"], runs["four"]
    assert runs["devices"] == 4
    np.testing.assert_array_equal(four["tokens"], one["tokens"])
    np.testing.assert_allclose(four["candidates"], one["candidates"], rtol=0, atol=5e-5)


def test_parallel_decoder_on_four_devices_gives_the_one_device_tokens(runs):
    """The speculative Jacobi decoder on the mesh path: rows split over 4 devices, each accepting
    on its own, draw the tokens one device draws (same seed, same per-row uniforms)."""
    one, four = runs["one"], runs["four"]
    np.testing.assert_array_equal(four["parallel_tokens"], one["parallel_tokens"])
    assert (one["parallel_tokens"] != one["tokens"]).any()  # another decoder: another draw from one seed


def test_rows_are_split_over_every_device(runs):
    calls = {(c["program"], c["batch"], c["k"]): c for c in runs["calls"]}
    # API and eval: 4 images x 3 candidates on data=4, 3 rows per device, the images split too
    api = calls[("sample", 4, 3)]
    assert api["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1} and api["devices"] == 4
    assert api["spec"] == "P(('data', 'fsdp'), None)" and api["shards"] == [[3, 16]] * 4
    assert calls[("encode", 4, 3)]["shards"] == [[1, 16]] * 4
    assert calls[("decode", 4, 3)]["shards"] == [[3, 32, 32, 3]] * 4
    # CLI with --config.mesh.fsdp=2 --config.mesh.tensor=2: 3 rows padded to 4 over data x fsdp = 2
    # (2 rows per device, a tensor pair sharing them), the one image replicated, the weights split
    # by the rule table (FSDP on the model width, Megatron on heads / hidden)
    cli = calls[("sample", 1, 3)]
    assert cli["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2} and cli["devices"] == 4
    assert cli["spec"] == "P(('data', 'fsdp'), None)" and cli["shards"] == [[2, 16]] * 4
    assert calls[("encode", 1, 3)]["spec"] == "P()"
    assert any("'fsdp'" in s for s in cli["weights"]) and any("'tensor'" in s for s in cli["weights"])


def test_cli_inpaint_candidates_on_fsdp_x_tensor_match_one_device(runs):
    root = runs["root"]
    for name in ("out", "grid"):
        _close_uint8(Image.open(root / f"{name}_4.png"), Image.open(root / f"{name}_1.png"), name)


def test_eval_on_four_devices_writes_the_one_device_images(runs):
    root = runs["root"]
    names = sorted(os.listdir(root / "eval_1" / "eval_visu"))
    assert names == [f"{i:04d}_{r:04d}.png" for i in range(5) for r in range(2)]
    assert sorted(os.listdir(root / "eval_4" / "eval_visu")) == names
    for f in names:
        _close_uint8(Image.open(root / "eval_4" / "eval_visu" / f), Image.open(root / "eval_1" / "eval_visu" / f), f)
    metrics = json.loads((root / "eval_4" / "metrics.json").read_text())
    assert metrics["counts"]["sampled_this_run"] == 5


def test_plan_sample_lowers_the_programs_the_pipeline_ran(runs):
    """tools/plan.py --recipe sample: the same functions, shardings and shapes as `lip-jax eval`."""
    assert runs["info"] == {"global_batch": 4, "candidates": 3, "rows": 12}
    ran = {c["program"]: c["lowered"] for c in runs["calls"] if (c["batch"], c["k"]) == (4, 3)}
    assert set(ran) == set(runs["planned"]) == {"encode", "sample", "decode"}
    for name, text in runs["planned"].items():
        assert text == ran[name], name
