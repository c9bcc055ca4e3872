"""DF-VQGAN speed: JAX vs the PyTorch reference of the official structure, same weights, same run.

Measures images/s of inference (defect-free encode + decode with symmetrical connections) and of a
training step's forward+backward (L1 + codebook loss), at the official preset's architecture for
each resolution. Prints a Markdown table and one JSON line.

    python tools/bench_dfvqgan.py [--res 128 256] [--batch 2] [--iters 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from lip_jax.weights import torch_dfvqgan as T
from lip_jax.weights.dfvqgan import dfvqgan_from_torch
from lip_jax.models import dfvqgan as D


def timed(fn, iters: int) -> float:
    """Seconds per call after one warm-up (compilation) call."""
    fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def bench(res: int, batch: int, iters: int) -> list[dict]:
    cfg = dict(D.PRESETS["imagenet8192"], resolution=res)
    tm = T.randomize_(T.DFVQGAN(cfg), seed=0)
    params = jax.device_put(dfvqgan_from_torch(tm.state_dict(), cfg))
    model = D.from_config(cfg)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, res, res, 3)).astype(np.float32)
    mask = np.zeros((batch, res, res), bool)
    mask[:, res // 4: 3 * res // 4, res // 8: res // 2] = True
    xj, mj = jnp.asarray(x), jnp.asarray(mask)
    xt, mt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(mask)

    @jax.jit
    def infer(p, x, m):
        enc = model.apply({"params": p}, x, m, method=D.DFVQGAN.encode)
        return model.apply({"params": p}, enc["quant"], enc["skips"], enc["skip_masks"], method=D.DFVQGAN.decode)

    def loss_fn(p, x, m):
        rec, enc = model.apply({"params": p}, x, m)
        return jnp.mean(jnp.abs(rec - x)) + enc["loss"]

    grad = jax.jit(jax.grad(loss_fn))

    def torch_infer():
        with torch.no_grad():
            q, _, _, hs, hms = tm.encode(xt, mt)
            tm.decode(q, hs, hms)

    def torch_train():
        tm.zero_grad(set_to_none=True)
        q, loss, _, hs, hms = tm.encode(xt, mt)
        (torch.mean(torch.abs(tm.decode(q, hs, hms) - xt)) + loss).backward()

    rows = []
    for task, jfn, tfn in [("encode+decode", lambda: jax.block_until_ready(infer(params, xj, mj)), torch_infer),
                           ("forward+backward", lambda: jax.block_until_ready(grad(params, xj, mj)), torch_train)]:
        t_jax, t_torch = timed(jfn, iters), timed(tfn, iters)
        rows.append(dict(task=task, res=res, batch=batch, jax_img_s=batch / t_jax, torch_img_s=batch / t_torch,
                         speedup=t_torch / t_jax))
        print(f"  {task} {res}px: jax {batch / t_jax:.3f} img/s, torch {batch / t_torch:.3f} img/s", file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")  # same arithmetic as torch float32
    torch.set_num_threads(os.cpu_count() or 1)
    rows = [r for res in args.res for r in bench(res, args.batch, args.iters)]
    dev = jax.devices()[0]
    print("| task | resolution | batch | JAX img/s | PyTorch img/s | JAX / PyTorch |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['res']} | {r['batch']} | {r['jax_img_s']:.3f} | {r['torch_img_s']:.3f} | "
              f"{r['speedup']:.2f}x |")
    print(json.dumps(dict(bench="dfvqgan", backend=jax.default_backend(), device=dev.device_kind,
                          cpu_count=os.cpu_count(), machine=platform.machine(), jax=jax.__version__,
                          torch=torch.__version__, preset="imagenet8192", rows=rows)))


if __name__ == "__main__":
    main()
