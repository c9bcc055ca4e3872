"""The device's two ceilings, measured with JAX: memory bandwidth (a large device-to-device copy,
bytes read + written) and dense matmul rate (bf16 and float32 at the default precision).

    python tools/bench_device.py                 # 1 GiB copy, 8192^3 matmuls (on an accelerator)
    python tools/bench_device.py --copy-mib 256 --n 2048          # small, for a CPU

MFU and bandwidth-floor figures elsewhere divide by datasheet peaks; these numbers say what the
machine actually reaches. Median of --reps timed calls after a warm-up; inputs are random.
Prints a Markdown table and one final JSON line.
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


def median_time(fn, *args, reps: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copy-mib", type=int, default=1024)
    p.add_argument("--n", type=int, default=8192, help="square matmul size")
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args(argv)
    key = jax.random.key(0)
    x = jax.random.uniform(key, (args.copy_mib * 2**18,), jnp.float32)
    copy = jax.jit(lambda a: a * 1.0001)  # one read, one write (a plain copy may be elided)
    t = median_time(copy, x, reps=args.reps)
    rows = [dict(what="copy", shape=list(x.shape), dtype="float32", seconds=t, gb_per_s=2 * x.nbytes / t / 1e9)]
    for dt in (jnp.bfloat16, jnp.float32):
        a = jax.random.normal(key, (args.n, args.n), dt)
        b = jax.random.normal(jax.random.key(1), (args.n, args.n), dt)
        t = median_time(jax.jit(jnp.matmul), a, b, reps=args.reps)
        rows.append(dict(what="matmul", shape=[args.n] * 3, dtype=jnp.dtype(dt).name, seconds=t,
                         tflops=2 * args.n ** 3 / t / 1e12))
    dev = jax.devices()[0]
    env = dict(backend=jax.default_backend(), device_kind=dev.device_kind, jax=jax.__version__,
               machine=platform.machine(), cpus=os.cpu_count())
    print(f"\nDevice ceilings on {env['device_kind']} ({env['backend']}), JAX {env['jax']}\n")
    print("| measure | shape | dtype | ms | rate |")
    print("|---|---|---|---|---|")
    for r in rows:
        rate = f"{r['gb_per_s']:.0f} GB/s" if r["what"] == "copy" else f"{r['tflops']:.1f} TFLOP/s"
        print(f"| {r['what']} | {'x'.join(map(str, r['shape']))} | {r['dtype']} | {1000 * r['seconds']:.3f} | {rate} |")
    print(json.dumps({"bench": "device", **env, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
