"""What checkpoint verification costs: the checksum of every array (lip_jax.weights.store), its
throughput, and the seconds it adds to saving and restoring a parameter tree of a given MP-S2S
preset (random float32 weights; "cc" is the official stage-2 size, 1.4 B values, 5.7 GB).

    python tools/bench_checkpoint.py --preset cc --dir /tmp/ckpt_bench      # official size
    python tools/bench_checkpoint.py --preset mid                            # quick

Save and restore are timed once each (the disk's cache makes a repeat meaningless); the checksum
is the median of --reps. Prints a Markdown table and one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from lip_jax.weights.mps2s import param_template
from lip_jax.weights import store as C


def timed(fn):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mid", help="MP-S2S preset (cc, coco, mid, tiny)")
    p.add_argument("--dir", help="scratch directory (default: a temporary one; removed at the end)")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)

    template = param_template(args.preset)
    rng = np.random.default_rng(0)
    params = dict(jax.tree_util.tree_map(lambda t: rng.standard_normal(t.shape, np.float32), template))
    nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))

    C.checksums(params)  # compile
    times = [timed(lambda: C.checksums(params))[1] for _ in range(args.reps)]
    checksum_s = float(np.median(times))

    root = args.dir or tempfile.mkdtemp(prefix="bench_ckpt_")
    os.makedirs(root, exist_ok=True)
    plain, verified = os.path.join(root, "plain"), os.path.join(root, "verified")
    try:
        def save_plain():
            with ocp.StandardCheckpointer() as ckpt:
                ckpt.save(plain, params)
        _, save_plain_s = timed(save_plain)
        _, save_verified_s = timed(lambda: C.save_params(verified, params))

        def restore_plain():
            with ocp.StandardCheckpointer() as ckpt:
                return ckpt.restore(plain, template)
        params.clear()  # room for the restored copies at the official size
        restore_plain_s = timed(restore_plain)[1]
        restore_verified_s = timed(lambda: C.load_params(verified, template))[1]
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    row = dict(preset=args.preset, bytes=nbytes, checksum_s=checksum_s, checksum_gb_s=nbytes / checksum_s / 1e9,
               save_plain_s=save_plain_s, save_verified_s=save_verified_s,
               restore_plain_s=restore_plain_s, restore_verified_s=restore_verified_s,
               backend=jax.default_backend(), devices=jax.device_count(), jax=jax.__version__)
    print("| preset | GB | checksum s | GB/s | save s (plain / with checksums) | restore s (plain / verified) |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.preset} | {nbytes / 1e9:.2f} | {checksum_s:.2f} | {row['checksum_gb_s']:.2f} | "
          f"{save_plain_s:.1f} / {save_verified_s:.1f} | {restore_plain_s:.1f} / {restore_verified_s:.1f} |")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
