"""Training-step speed against PyTorch, side by side in one run on this machine.

    python tools/bench_step.py [--steps 15] [--res 128 256] [--skip-official]
    python tools/bench_step.py --against REV [--rounds 3]     # the demo's steps, REV's code vs this tree's

Rows:
  * the demo's stage-1 step (`configs/shapes_demo.py:stage1`: forward, backward and Adam update
    as the trainer runs it, guard included), against the same step in PyTorch on the same shapes
    and weights (the PyTorch reference of the official DF-VQGAN structure,
    lip_jax.weights.torch_dfvqgan; L1 + codebook loss, Adam(0.5, 0.9));
  * the official-structure DF-VQGAN forward + backward (L1 + codebook loss, no update) at each
    `--res`, batch 2, the imagenet8192 architecture at that resolution;
  * the demo's stage-2 step, as achieved FLOP/s (XLA's count of the compiled step) against the
    float32 matmul rate measured in the same run.

Each time is the median of `--steps` calls after two warm-up calls. Prints a Markdown table and one
JSON line with the torch thread count and XLA_FLAGS.

`--against REV` times the demo's two steps with the library of another commit (checked out into a
temporary git worktree) and with this tree's, alternating fresh processes over `--rounds` rounds
(so that a machine's drift falls on both), on the same shapes (this tree's demo config); it reports
each side's median and the speed-up. The PyTorch step runs in every process: its spread is the noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# LIP_JAX_ROOT: the source tree whose library is timed (set by --against for another commit).
sys.path.insert(0, os.environ.get("LIP_JAX_ROOT", HERE))

from lip_jax.config import load_config  # noqa: E402
from lip_jax.models import dfvqgan as D  # noqa: E402
from lip_jax.train import faults, stage1, stage2  # noqa: E402
from lip_jax.weights import torch_dfvqgan as T  # noqa: E402
from lip_jax.weights.dfvqgan import dfvqgan_from_torch  # noqa: E402

DEMO = os.path.join(HERE, "configs", "shapes_demo.py")


def median_s(fn, steps: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def inputs(batch: int, res: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (batch, res, res, 3)).astype(np.float32)
    mask = np.zeros((batch, res, res), bool)
    mask[:, res // 4: 3 * res // 4, res // 8: res // 2] = True
    return x, mask


def torch_step(tm, x, mask, opt=None):
    """One PyTorch step of the official structure: L1 + codebook loss, backward, Adam if given."""
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    mt = torch.from_numpy(mask)

    def run():
        tm.zero_grad(set_to_none=True)
        q, qloss, _, hs, hms = tm.encode(xt, mt)
        (torch.mean(torch.abs(tm.decode(q, hs, hms) - xt)) + qloss).backward()
        if opt is not None:
            opt.step()
    return run


def demo_stage1(steps: int) -> dict:
    cfg = load_config(f"{DEMO}:stage1")
    vq = dict(cfg.vqgan)
    tm = T.randomize_(T.DFVQGAN(vq), seed=0)
    state = jax.jit(lambda r: nn.unbox(stage1.init_boxed_state(cfg, r)))(jax.random.key(0))
    state = state.replace(params=jax.device_put(dfvqgan_from_torch(tm.state_dict(), vq)))
    no_lpips = lambda x, y, rng: jnp.zeros(x.shape[0])  # noqa: E731  the demo trains without LPIPS
    step = jax.jit(faults.guard(stage1.make_train_step(cfg, no_lpips, False), float(cfg.train.skip_grad_norm),
                                float(cfg.train.get("max_update_ratio", 1.0))), donate_argnums=0)
    x, mask = inputs(cfg.data.batch_size, cfg.vqgan.resolution)
    batch = dict(image=jnp.asarray(x), mask=jnp.asarray(mask), decoder_none=jnp.zeros((x.shape[0],), bool))
    holder = [state]

    def jax_run():
        holder[0], metrics = step(holder[0], batch)
        jax.block_until_ready(metrics["loss"])

    opt = torch.optim.Adam(tm.parameters(), lr=1e-4, betas=(0.5, 0.9))
    t_jax, t_torch = median_s(jax_run, steps), median_s(torch_step(tm, x, mask, opt), steps)
    return dict(row="demo stage-1 step (fwd+bwd+Adam)", res=cfg.vqgan.resolution, batch=x.shape[0],
                jax_ms=1e3 * t_jax, torch_ms=1e3 * t_torch, speed_vs_torch=t_torch / t_jax)


def official(res: int, steps: int) -> dict:
    cfg = dict(D.PRESETS["imagenet8192"], resolution=res)
    tm = T.randomize_(T.DFVQGAN(cfg), seed=0)
    params = jax.device_put(dfvqgan_from_torch(tm.state_dict(), cfg))
    model = D.from_config(cfg)
    x, mask = inputs(2, res)
    xj, mj = jnp.asarray(x), jnp.asarray(mask)

    def loss_fn(p):
        rec, enc = model.apply({"params": p}, xj, mj)
        return jnp.mean(jnp.abs(rec - xj)) + enc["loss"]

    grad = jax.jit(jax.grad(loss_fn))
    t_jax = median_s(lambda: jax.block_until_ready(grad(params)), steps)
    t_torch = median_s(torch_step(tm, x, mask), steps)
    return dict(row="official DF-VQGAN fwd+bwd", res=res, batch=2, jax_ms=1e3 * t_jax, torch_ms=1e3 * t_torch,
                speed_vs_torch=t_torch / t_jax)


def matmul_rate(n: int = 2048) -> float:
    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    return 2 * n ** 3 / median_s(lambda: mm(a, a).block_until_ready(), 5)


def demo_stage2(steps: int) -> dict:
    cfg = load_config(f"{DEMO}:stage2")
    vq_params = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 0.01, s.dtype), D.param_template(cfg.vqgan))
    codebook = vq_params["quantize"]["embedding"]["embedding"]
    state = jax.jit(lambda r: nn.unbox(stage2.init_boxed_state(cfg, r, codebook)))(jax.random.key(0))
    b, res = cfg.data.batch_size, cfg.vqgan.resolution
    x, mask = inputs(b, res)
    batch = dict(image=jnp.asarray(x), mask=jnp.asarray(mask), masked_image=jnp.asarray(np.where(mask[..., None], 0, x)),
                 text_ids=jnp.ones((b, cfg.mps.text_len), jnp.int32))
    guarded = faults.guard(stage2.make_train_step(cfg), float(cfg.train.skip_grad_norm),
                           float(cfg.train.get("max_update_ratio", 1.0)))
    step = jax.jit(guarded, donate_argnums=0)
    flops = jax.jit(guarded).lower(state, vq_params, batch).compile().cost_analysis()
    flops = float((flops[0] if isinstance(flops, list) else flops).get("flops", float("nan")))
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], vq_params, batch)
        jax.block_until_ready(metrics["loss"])

    t = median_s(run, steps)
    rate = matmul_rate()
    return dict(row="demo stage-2 step (fwd+bwd+AdamW)", res=res, batch=b, jax_ms=1e3 * t, gflop=flops / 1e9,
                achieved_gflop_s=flops / t / 1e9, matmul_gflop_s=rate / 1e9, share_of_matmul=flops / t / rate)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15, help="timed calls per row (median), after 2 warm-up calls")
    ap.add_argument("--res", type=int, nargs="+", default=[128, 256], help="official-structure resolutions")
    ap.add_argument("--skip-official", action="store_true", help="only the demo's rows")
    ap.add_argument("--against", metavar="REV", help="time the demo's steps with REV's library and with this tree's")
    ap.add_argument("--rounds", type=int, default=3, help="with --against: alternating processes per side")
    ap.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.against:
        return against(args.against, args.rounds, args.steps)
    jax.config.update("jax_default_matmul_precision", "highest")  # the same arithmetic as torch float32
    torch.set_num_threads(os.cpu_count() or 1)
    rows = [demo_stage1(args.steps)]
    if not args.skip_official:
        rows += [official(r, max(3, args.steps // 3)) for r in args.res]
    rows.append(demo_stage2(args.steps))
    if args.json_only:
        print(json.dumps(rows))
        return
    print("| row | px | batch | JAX ms | PyTorch ms | JAX speed / PyTorch | achieved GFLOP/s (share of matmul rate) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        torch_ms = f"{r['torch_ms']:.1f}" if "torch_ms" in r else "-"
        ratio = f"{r['speed_vs_torch']:.2f}x" if "speed_vs_torch" in r else "-"
        share = f"{r['achieved_gflop_s']:.1f} ({100 * r['share_of_matmul']:.0f}% of {r['matmul_gflop_s']:.0f})" \
            if "achieved_gflop_s" in r else "-"
        print(f"| {r['row']} | {r['res']} | {r['batch']} | {r['jax_ms']:.1f} | {torch_ms} | {ratio} | {share} |")
    print(json.dumps(dict(bench="step", backend=jax.default_backend(), device=jax.devices()[0].device_kind,
                          processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                          torch_threads=torch.get_num_threads(), xla_flags=os.environ.get("XLA_FLAGS", ""),
                          jax=jax.__version__, torch=torch.__version__, rows=rows)))


def against(rev: str, rounds: int, steps: int) -> None:
    """The demo's steps under REV's library and this tree's, in alternating fresh processes."""
    sha = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, sha)
        subprocess.run(["git", "-C", HERE, "worktree", "add", "--detach", tree, sha], check=True, capture_output=True)
        try:
            sides = {f"{sha} ({rev})": tree, "this tree": HERE}
            runs = {name: [] for name in sides}
            for r in range(rounds):
                for name, root in (sides.items() if r % 2 == 0 else reversed(sides.items())):
                    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--skip-official", "--json-only",
                                          "--steps", str(steps)], env=dict(os.environ, LIP_JAX_ROOT=root),
                                         check=True, capture_output=True, text=True).stdout
                    runs[name].append(json.loads(out.strip().splitlines()[-1]))
                    print(f"round {r + 1}/{rounds}: {name} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "-C", HERE, "worktree", "remove", "--force", tree], capture_output=True)
    med = {name: [float(np.median([rs[i]["jax_ms"] for rs in results])) for i in range(2)]
           for name, results in runs.items()}
    torch_ms = {name: float(np.median([rs[0]["torch_ms"] for rs in results])) for name, results in runs.items()}
    base, new = list(med)
    print(f"| step | {base}: JAX ms | this tree: JAX ms | speed-up | PyTorch ms (in each side's processes) |")
    print("|---|---|---|---|---|")
    for i, row in enumerate(("demo stage-1 step (fwd+bwd+Adam)", "demo stage-2 step (fwd+bwd+AdamW)")):
        torch_cell = f"{torch_ms[base]:.1f} / {torch_ms[new]:.1f}" if i == 0 else "-"
        print(f"| {row} | {med[base][i]:.1f} | {med[new][i]:.1f} | {med[base][i] / med[new][i]:.2f}x | {torch_cell} |")
    print(json.dumps(dict(bench="step_against", against=rev, commit=sha, rounds=rounds, steps=steps,
                          processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                          xla_flags=os.environ.get("XLA_FLAGS", ""), median_ms=med, torch_ms=torch_ms, runs=runs)))


if __name__ == "__main__":
    main()
