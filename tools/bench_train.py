"""Train-step throughput of both stages: steps/s, images/s, tokens/s, FLOPs and FLOP utilisation.

    python tools/bench_train.py                          # demo and mid sizes (CPU-friendly)
    python tools/bench_train.py --sizes official --batch 8 --peak-tflops 989   # on an accelerator
    python tools/bench_train.py --sizes official --stages 2 --config.mps.dtype=bfloat16 --config.mps.attention=xla

Runs the real jitted train steps (lip_jax.train.stage1 / stage2, the same functions `lip-jax train`
uses) on random data with all devices in one data-parallel mesh, after one warm-up call that
compiles. FLOPs per step are the matmul + convolution FLOPs of the compiled step's HLO
(lip_jax/perf/hlo_cost.py, loop trip counts applied; on GPU the cuBLAS / cuDNN calls count as the math
they replace); HFU (hardware FLOP utilisation) is reported when --peak-tflops (the accelerator's
dense peak for the dtype) is given. It counts what the step executes, rematerialised recomputation
included: MFU is HFU x (FLOPs of the step with remat "none") / (FLOPs with the configured remat). Sizes:
  demo      configs/shapes_demo.py (32 px, 8x8 tokens)
  mid       stage 1: the official DF-VQGAN at 128 px; stage 2: the "mid" MP-S2S (dim 256, 32x32 tokens)
  official  stage 1: 256 px DF-VQGAN (imagenet8192); stage 2: dim 1280, 24/12/12 layers (mps_cc)
With --trace DIR the timed steps run once more under the JAX profiler and tools/trace_summary.py
reports, per step, where the device time went. Prints a Markdown table and one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lip_jax.perf.hlo_cost import parse_hlo, peak_bytes  # noqa: E402
from lip_jax.perf.trace_summary import profile  # noqa: E402
from lip_jax.config import UsageError, apply_overrides, load_config, split_overrides  # noqa: E402
from lip_jax.models import dfvqgan  # noqa: E402
from lip_jax import sharding  # noqa: E402
from lip_jax.train import stage1, stage2  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(stage: int, size: str):
    if size == "demo":
        return load_config(os.path.join(ROOT, "configs", f"shapes_demo.py:stage{stage}"))
    if stage == 1:
        c = load_config(os.path.join(ROOT, "configs", "dfvqgan_imagenet.py"))
        if size == "mid":
            c.vqgan.resolution = 128
        c.train.perceptual_weight = 0.0  # LPIPS is a separate frozen network; timed by bench_dfvqgan
        return c
    return load_config(os.path.join(ROOT, "configs", "mps_cc.py:" + {"mid": "mid", "official": "cc"}[size]))


def batch_for(c, stage: int, batch: int, rng):
    r = c.vqgan.resolution
    image = rng.uniform(-1, 1, (batch, r, r, 3)).astype(np.float32)
    mask = np.zeros((batch, r, r), bool)
    mask[:, r // 4: 3 * r // 4, r // 4: 3 * r // 4] = True
    if stage == 1:
        return dict(image=image, mask=mask, decoder_none=np.zeros((batch,), bool))
    return dict(image=image, mask=mask, masked_image=np.where(mask[..., None], 0, image).astype(np.float32),
                text_ids=rng.integers(1, c.mps.text_vocab_size, (batch, c.mps.text_len)).astype(np.int32))


def bench(stage: int, size: str, batch: int, iters: int, peak: float | None, overrides=(), dump_hlo=None,
          trace=None) -> dict:
    c = config(stage, size)
    c.data.batch_size = batch
    apply_overrides(c, [o for o in overrides if o.split(".")[0] in c])
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    rng = np.random.default_rng(0)
    with jax.set_mesh(mesh):
        if stage == 1:
            state = nn.unbox(stage1.init_boxed_state(c, jax.random.key(0)))
            step = stage1.make_train_step(c, lambda x, y, r: jnp.zeros(x.shape[0]), use_disc=True)
            extra = ()
        else:
            vq = nn.unbox(dfvqgan.init_params(dfvqgan.from_config(c.vqgan), jax.random.key(1)))
            state = nn.unbox(stage2.init_boxed_state(c, jax.random.key(0), vq["quantize"]["embedding"]["embedding"]))
            step = stage2.make_train_step(c)
            extra = (vq,)
        data = sharding.global_batch(batch_for(c, stage, batch, rng), mesh)
        fn = jax.jit(step, donate_argnums=0)
        t0 = time.perf_counter()
        compiled = fn.lower(state, *extra, data).compile()
        compile_s = time.perf_counter() - t0
        if dump_hlo:
            import gzip

            with gzip.open(os.path.join(dump_hlo, f"stage{stage}_{size}.hlo.txt.gz"), "wt") as f:
                f.write(compiled.as_text())
        # matmul / conv FLOPs with loop trip counts (cost_analysis counts a scanned layer once)
        flops = float(parse_hlo(compiled.as_text())["matmul_flops"])
        mem = compiled.memory_analysis()
        peak_gib = None if mem is None else peak_bytes(mem) / 2**30
        state, m = compiled(state, *extra, data)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(iters):
            state, m = compiled(state, *extra, data)
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t0) / iters
        trace_text = trace_summary = None
        if trace:  # after the timing, so the profiler's overhead stays out of it
            def steps():
                nonlocal state
                for _ in range(iters):
                    state, m = compiled(state, *extra, data)
                jax.block_until_ready(m)

            trace_text, trace_summary = profile(os.path.join(trace, f"stage{stage}_{size}_b{batch}"), steps, iters)
    tokens = batch * (c.mps.img_size // c.mps.vae_patch_size) ** 2 if stage == 2 else 0
    row = dict(stage=stage, size=size, batch=batch, resolution=int(c.vqgan.resolution), s_per_step=dt,
               steps_per_s=1 / dt, images_per_s=batch / dt, tokens_per_s=tokens / dt if tokens else None,
               gflop_per_step=flops / 1e9, achieved_tflops=flops / dt / 1e12, compile_s=compile_s,
               peak_gib=peak_gib)
    row["hfu"] = row["achieved_tflops"] / peak if peak else None
    if trace:
        row.update(trace_text=trace_text, trace=trace_summary)
    if stage == 2:
        row.update(dtype=c.mps.dtype, attention=c.mps.get("attention", "auto"), remat=c.mps.remat)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="--config.KEY=VALUE overrides a config field where the stage's config has "
                                       "that section (e.g. --config.mps.dtype=bfloat16)")
    p.add_argument("--sizes", nargs="+", default=["demo", "mid"], choices=["demo", "mid", "official"])
    p.add_argument("--stages", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    p.add_argument("--batch", type=int, default=0, help="global batch (default: 8 demo, 2 otherwise)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, help="device peak TFLOP/s for HFU (e.g. 989 for H100 bf16 dense)")
    p.add_argument("--dump-hlo", metavar="DIR", help="write each compiled step's HLO text (gzip) into DIR")
    p.add_argument("--trace", metavar="DIR", help="profile the timed steps into DIR and summarise the device time")
    try:
        rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        p.error(str(e))
    args = p.parse_args(rest)
    sections = set().union(*(config(st, sz).keys() for sz in args.sizes for st in args.stages))
    unknown = [o for o in overrides if o.split("=")[0].split(".")[0] not in sections]
    if unknown:
        p.error(f"--config.{unknown[0]}: no config section {unknown[0].split('.')[0]!r} in the stages run "
                f"(sections: {', '.join(sorted(sections))})")
    rows = []
    for size in args.sizes:
        for stage in args.stages:
            batch = args.batch or (8 if size == "demo" else 2)
            rows.append(bench(stage, size, batch, args.iters, args.peak_tflops, overrides, args.dump_hlo,
                              args.trace))
            print(f"# stage {stage} {size}: {rows[-1]['s_per_step']:.3f} s/step", file=sys.stderr, flush=True)
    dev = jax.devices()[0]
    env = dict(backend=jax.default_backend(), device_kind=dev.device_kind, devices=jax.device_count(),
               jax=jax.__version__, machine=platform.machine(), cpus=os.cpu_count())
    print(f"\nTrain steps on {env['devices']} x {env['device_kind']} ({env['backend']}), JAX {env['jax']}\n")
    print("| stage | size | compute | resolution | batch | s/step | images/s | tokens/s | GFLOP/step | TFLOP/s | HFU "
          "| memory GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tok = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "-"
        hfu = f"{100 * r['hfu']:.1f}%" if r["hfu"] else "-"
        mem = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        compute = f"{r['dtype']}, {r['attention']} attention, remat {r['remat']}" if r["stage"] == 2 else "float32"
        print(f"| {r['stage']} | {r['size']} | {compute} | {r['resolution']} | {r['batch']} | {r['s_per_step']:.3f} "
              f"| {r['images_per_s']:.2f} | {tok} | {r['gflop_per_step']:.1f} | {r['achieved_tflops']:.3f} | {hfu} "
              f"| {mem} |")
    for r in rows:
        if "trace_text" in r:
            print(f"\nstage {r['stage']} {r['size']}, batch {r['batch']}, per step:" + r.pop("trace_text"))
    print(json.dumps({"bench": "train", **env, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
