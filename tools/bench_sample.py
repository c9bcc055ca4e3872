"""Benchmark the KV-cached MP-S2S sampler against the official recompute-everything sampler.

    python tools/bench_sample.py                       # "mid" (both samplers) and "cc" (official size)
    python tools/bench_sample.py --presets mid --batch 2 --hole 0.5 --reps 3
    python tools/bench_sample.py --presets cc --config.dtype=bfloat16     # an MPSConfig field override
    python tools/bench_sample.py --decoders --demo-workdir runs/demo      # sequential vs parallel decoder

--decoders compares the sequential and the parallel (speculative Jacobi) decoder on lip-jax demo's
trained stage 2 and on the mid preset with random weights, batch 1 and 8, greedy and with each
model's sampling settings: decoder passes per call, tokens per pass, time per image, FLOPs per
token, and whether the greedy tokens are equal (--windows / --drafts / --coupled add levers).

Same random weights and inputs for both samplers, greedy-free top-k sampling (k=128), a centred
square hole covering ~`hole` of the token grid. The recompute baseline is skipped when its estimate
(holes x one full forward) exceeds --max-recompute-s; the full-forward time is then measured or,
with --estimate-forward, extrapolated from the previous preset by FLOP count (stated in the output).
The cached sampler is timed --reps times after a compiling call (median reported), the recompute
sampler once. With --trace DIR one more cached run is profiled and tools/trace_summary.py reports the
device time per decoding step. Prints a Markdown table and one final JSON line (backend, device,
versions, shapes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lip_jax import sample  # noqa: E402
from lip_jax.weights.mps2s import param_template  # noqa: E402
from lip_jax.config import UsageError, apply_overrides, split_overrides  # noqa: E402
from lip_jax.models import mps2s  # noqa: E402
from lip_jax.perf.trace_summary import profile  # noqa: E402


def random_params(cfg, seed=0):
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if len(s.shape) == 3 and name == "scale":
            return np.full(s.shape, 0.1, np.float32)
        if len(s.shape) == 1:
            return ((name == "scale") + 0.02 * rng.standard_normal(s.shape, np.float32)).astype(np.float32)
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) == 4 else s.shape[0]  # conv HWIO; linear [in, ...]
        std = 1.0 if ("emb" in name or "weights" in name) else fan_in ** -0.5
        return (std * rng.standard_normal(s.shape, np.float32)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, param_template(cfg))


def inputs(cfg, batch, hole, seed=0):
    rng = np.random.default_rng(seed)
    h, w = cfg.grid
    side = max(1, round(math.sqrt(hole) * h))
    m = np.zeros((h, w), bool)
    top, left = (h - side) // 2, (w - side) // 2
    m[top:top + side, left:left + side] = True
    return dict(tokens=jnp.asarray(rng.integers(0, cfg.vqvae_vocab_size, (batch, h * w)), jnp.int32),
                token_mask=jnp.asarray(np.broadcast_to(m.reshape(-1), (batch, h * w))),
                image=jnp.asarray(rng.uniform(-1, 1, (batch, cfg.img_size, cfg.img_size, 3)), jnp.float32),
                text_ids=jnp.asarray(rng.integers(1, cfg.text_vocab_size, (batch, cfg.text_len)), jnp.int32))


def forward_flops(cfg) -> float:
    """Matmul FLOPs of one teacher-forced forward per image (text tower left out)."""
    n, nv, d, inner = cfg.num_tokens, cfg.vit_grid[0] * cfg.vit_grid[1], cfg.dim, cfg.inner_dim
    ff = 2 * d * d * cfg.ff_mult * 3  # GEGLU: d -> 2 * mult * d, mult * d -> d
    enc = lambda length: length * (2 * 4 * d * inner + 2 * 2 * length * inner + ff)
    dec_tok = 2 * 4 * d * inner + 2 * 2 * n * inner + 2 * 2 * d * inner + 2 * 2 * cfg.cond_len * inner + ff
    dec = cfg.dec_depth * (n * dec_tok + cfg.cond_len * 2 * 2 * d * inner)
    return cfg.enc_depth * (enc(n) + enc(nv)) + dec + 2 * n * d * cfg.vqvae_vocab_size


def timed(fn):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t


def shapes(cfg, x, batch):
    """Input, KV-cache (per decoder layer) and cross-attention K/V shapes of the cached sampler."""
    h, dh, t = cfg.heads, cfg.dim_head, cfg.num_tokens + 1
    return dict({k: list(v.shape) for k, v in x.items()},
                self_k=[batch, h, dh, t], self_v=[batch, h, t, dh],
                cross_k=[batch, h, dh, cfg.cond_len], cross_v=[batch, h, cfg.cond_len, dh],
                logits=[batch, cfg.vqvae_vocab_size], dec_layers=cfg.dec_depth, dtype=cfg.dtype)


def step_bytes(cfg, batch) -> float:
    """Fewest bytes one decoding step must read: the decoder's and the head's weights once (kernels
    in the compute dtype, the cross-attention K/V projections excluded: their outputs are cached),
    plus every row's self-attention cache and cross-attention K/V."""
    item = jnp.dtype(cfg.dtype).itemsize
    total = 0
    tree = param_template(cfg)
    for path, leaf in jax.tree_util.tree_leaves_with_path({k: tree[k] for k in ("transformer_dec", "to_logits_img_0",
                                                                                 "to_logits_img_1")}):
        keys = [p.key for p in path]
        if "attention_cond" in keys and keys[-2] in ("k_linear", "v_linear"):
            continue
        total += int(np.prod(leaf.shape)) * (item if keys[-1] == "kernel" else 4)
    kv = sample.kv_cache_bytes(cfg, batch)
    return total + kv["self_kv"] + kv["cross_kv"]


def bench(preset, batch, hole, top_k, max_recompute_s, prev=None, estimate_forward=False, reps=1,
          overrides=(), mem_bw=None, trace=None):
    cfg = mps2s.MPSConfig.from_any(preset)
    if overrides:  # field=value strings, typed and checked as every `--config.` override is
        fields = ml_collections.ConfigDict(dataclasses.asdict(cfg))
        apply_overrides(fields, overrides)
        cfg = mps2s.MPSConfig.from_any(fields)
    params = jax.device_put(random_params(cfg))
    x = inputs(cfg, batch, hole)
    holes = int(np.asarray(x["token_mask"][0]).sum())
    run = lambda f, seed: f(params, cfg, rng=jax.random.PRNGKey(seed), top_k=top_k, **x)
    _, t_first = timed(lambda: run(sample.sample_tokens, 0))
    times = []
    for _ in range(reps):
        cached, t = timed(lambda: run(sample.sample_tokens, 1))
        times.append(t)
    t_cached = float(np.median(times))
    if trace:  # after the timing, so the profiler's overhead stays out of it
        trace_text, trace_summary = profile(os.path.join(trace, f"sample_{preset}_b{batch}"),
                                            lambda: jax.block_until_ready(run(sample.sample_tokens, 1)), holes)
    row = dict(preset=preset, grid=f"{cfg.grid[0]}x{cfg.grid[1]}", dim=cfg.dim,
               layers=f"{cfg.dec_depth}+{cfg.enc_depth}+{cfg.enc_depth}", batch=batch, holes=holes,
               cached_s_per_image=t_cached / batch, cached_tok_per_s=holes * batch / t_cached,
               cached_ms_per_step=1000 * t_cached / holes, cached_times_s=times,
               cached_compile_s=t_first - t_cached, shapes=shapes(cfg, x, batch))
    if trace:
        row.update(trace_text=trace_text, trace=trace_summary)
    fwd = jax.jit(lambda p: mps2s.MPS2S(cfg).apply({"params": p}, x["tokens"], x["token_mask"], x["image"],
                                                   x["text_ids"]))
    if estimate_forward and prev is not None:
        t_fwd = prev["forward_s"] * forward_flops(cfg) / forward_flops(mps2s.MPSConfig.from_any(prev["preset"]))
        row["forward_s_note"] = f"extrapolated from {prev['preset']} by FLOP count"
    else:
        timed(lambda: fwd(params))
        _, t_fwd = timed(lambda: fwd(params))
    row["forward_s"] = t_fwd
    estimate = holes * t_fwd
    if estimate <= max_recompute_s:
        timed(lambda: run(sample.sample_tokens_recompute, 0))  # compile
        ref, t_ref = timed(lambda: run(sample.sample_tokens_recompute, 1))
        row.update(recompute_s_per_image=t_ref / batch, recompute_tok_per_s=holes * batch / t_ref,
                   recompute_ms_per_step=1000 * t_ref / holes, speedup=t_ref / t_cached,
                   tokens_equal=bool(np.array_equal(np.asarray(ref), np.asarray(cached))))
    else:
        row.update(recompute_s_per_image=None, recompute_tok_per_s=None,
                   recompute_estimate_s_per_image=estimate / batch, speedup_estimate=estimate / t_cached,
                   recompute_note=f"skipped: estimated {estimate:.0f} s > {max_recompute_s:.0f} s")
    kv = sample.kv_cache_bytes(cfg, 8)
    row.update(kv_self_bytes_batch8=kv["self_kv"], kv_cross_bytes_batch8=kv["cross_kv"], dtype=cfg.dtype,
               step_bytes=step_bytes(cfg, batch))
    if mem_bw:  # batch rows share one read of the weights per step
        row.update(floor_ms_per_step=1000 * row["step_bytes"] / (mem_bw * 1e9), mem_bw_gbs=mem_bw)
        row["floor_ratio"] = row["cached_ms_per_step"] / row["floor_ms_per_step"]
    return row


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


# --- sequential against parallel decoding (--decoders) -----------------------------------------------

def decoder_flops_per_position(cfg, cache_len, chunk) -> float:
    """Matmul FLOPs of one decoder position in a cached pass: projections, attention over the whole
    cache and the chunk (dense, masked), cross-attention, GEGLU, the logits head."""
    d, inner = cfg.dim, cfg.inner_dim
    per_layer = (2 * 4 * d * inner + 2 * 2 * inner * (cache_len + chunk) + 2 * 2 * d * inner
                 + 2 * 2 * cfg.cond_len * inner + 2 * d * 2 * cfg.ff_mult * d + 2 * cfg.ff_mult * d * d)
    return cfg.dec_depth * per_layer + 2 * d * cfg.vqvae_vocab_size


def sequential_schedule(cfg, mask) -> tuple[int, float]:
    """(decoder passes, FLOPs) of the sequential decoder on one row's hole mask, piece by piece as
    lip_jax.sample.sequential runs them (bulk pieces for the known runs, then one position)."""
    sizes = sorted({min(s, cfg.num_tokens + 1) for s in sample.sequential.BULK_SIZES}, reverse=True)
    t = cfg.num_tokens + 1
    passes, flops, start = 0, 0.0, 0
    for g in np.flatnonzero(mask):
        left = g - start  # positions [start, g - 1] in bulk
        for size, below in zip(sizes, sizes[1:] + [0]):
            while left > below:
                passes, flops, left = passes + 1, flops + size * decoder_flops_per_position(cfg, t, size), left - size
        passes, flops, start = passes + 1, flops + decoder_flops_per_position(cfg, t, 1), g + 1
    return passes, flops


def demo_inputs(workdir, count):
    """The demo's trained stage 2 (`lip-jax demo`'s workdir) and its held-out scenes' tokens."""
    from lip_jax.config import load_config
    from lip_jax.app.demo import held_out
    from lip_jax.app.pipeline import Inpainter
    from lip_jax.images import from_uint8
    from lip_jax.models import dfvqgan
    from lip_jax.models.tokenizer import get_tokenizer

    stage2 = os.path.join(workdir, "stage2")
    if not os.path.isdir(os.path.join(stage2, "params")):
        raise UsageError(f"{stage2}: no trained stage 2 (params/): run `lip-jax demo --workdir {workdir}` first")
    config = load_config("configs/shapes_demo.py:demo")
    inp = Inpainter.load(stage2, "configs/shapes_demo.py:stage2")
    data = held_out(config, count)
    x, m = from_uint8(data["image"]), data["mask"]
    model = dfvqgan.from_config(inp.config.vqgan)
    enc = model.apply({"params": inp.vq}, np.where(m[..., None], 0.0, x).astype(np.float32), m,
                      method=dfvqgan.DFVQGAN.encode)
    cfg = inp.mps_cfg
    s = inp.config.sample
    return inp.mps, cfg, dict(tokens=np.asarray(enc["indices"]).reshape(count, -1),
                              token_mask=np.asarray(enc["skip_masks"][-1]).reshape(count, -1),
                              image=np.where(m[..., None], 0.0, x).astype(np.float32),
                              text_ids=get_tokenizer(cfg.tokenizer, cfg.text_len)(data["true_text"])), (s.top_k, s.temperature)


def compare(name, params, cfg, x, batch, top_k, temperature, reps, decoders):
    """Every decoder on the same rows in calls of `batch` images: passes, tokens per pass, time, FLOPs."""
    count = x["tokens"].shape[0] // batch * batch
    holes = np.asarray(x["token_mask"][:count]).sum()
    rows = []
    for label, opts in decoders:
        def run(seed, with_stats=False):
            out, passes = [], []
            for i in range(0, count, batch):
                kw = {k: jnp.asarray(v[i:i + batch]) for k, v in x.items()}
                if opts is None:
                    out.append(sample.sample_tokens(params, cfg, rng=jax.random.PRNGKey(seed + i), top_k=top_k,
                                                    temperature=temperature, decoder="sequential", **kw))
                else:
                    o, p = sample.jacobi_tokens(params, cfg, rng=jax.random.PRNGKey(seed + i), top_k=top_k,
                                                temperature=temperature, with_stats=True, **opts, **kw)
                    out.append(o)
                    passes.append(int(np.asarray(p).max()))  # the loop runs until its slowest row is done
            return np.concatenate([np.asarray(o) for o in jax.block_until_ready(out)]), passes

        t0 = time.perf_counter()
        run(0)
        compile_s = time.perf_counter() - t0
        times = []
        for r in range(reps):
            t0 = time.perf_counter()
            tokens, passes = run(1)
            times.append(time.perf_counter() - t0)
        if opts is None:
            sched = [sequential_schedule(cfg, m) for m in np.asarray(x["token_mask"][:count])]
            per_call = [max(s[0] for s in sched[i:i + batch]) for i in range(0, count, batch)]
            flops = sum(s[1] for s in sched)
        else:
            per_call = passes
            w = max(1, min(opts["window"], cfg.num_tokens))
            flops = sum(per_call) * batch * w * decoder_flops_per_position(cfg, cfg.num_tokens + w, w)
        rows.append(dict(model=name, batch=batch, top_k=top_k, temperature=temperature, decoder=label,
                         passes_per_call=float(np.mean(per_call)), holes_per_image=float(holes / count),
                         tokens_per_pass=holes / count / float(np.mean(per_call)),
                         s_per_image=float(np.median(times)) / count, times_s=times,
                         compile_s=compile_s - float(np.median(times)),
                         gflops_per_token=flops / holes / 1e9, tokens=tokens))
    base, ref = rows[0], rows[0]["tokens"]
    for r in rows:
        r["fewer_passes"] = base["passes_per_call"] / r["passes_per_call"]
        r["speedup"] = base["s_per_image"] / r["s_per_image"]
        r["greedy_equal"] = bool(np.array_equal(r["tokens"], ref)) if top_k == 1 else None
    for r in rows:
        del r["tokens"]
    return rows


def decoders_main(args):
    batches = [int(b) for b in args.batches.split(",")]
    levers = [("sequential", None)]
    for w in [int(v) for v in args.windows.split(",")]:
        for draft in args.drafts.split(","):
            for coupled in [bool(int(v)) for v in args.coupled.split(",")]:
                levers.append((f"parallel w{w} {draft}{'' if coupled else ' fresh'}",
                               dict(window=w, draft=draft, coupled=coupled)))
    cases = []
    if "demo" in args.models:
        params, cfg, x, (top_k, temperature) = demo_inputs(args.demo_workdir, args.images)
        cases.append(("demo", params, cfg, x, [(1, 1.0), (top_k, temperature)]))
    if "mid" in args.models:
        cfg = mps2s.MPSConfig.from_any("mid")
        n = max(batches)
        cases.append(("mid (random)", jax.device_put(random_params(cfg)), cfg,
                      {k: np.asarray(v) for k, v in inputs(cfg, n, args.hole).items()}, [(1, 1.0), (128, 1.0)]))
    rows = []
    for name, params, cfg, x, settings in cases:
        for batch in batches:
            # mid: --mid-images at batch 1 (each takes seconds), one call at larger batches
            x1 = {k: v[:max(batch, args.mid_images)] for k, v in x.items()} if name.startswith("mid") else x
            for top_k, temperature in settings:
                rows += compare(name, params, cfg, x1, batch, top_k, temperature, args.reps, levers)
                print(f"# {name} batch {batch} top_k {top_k}: done", file=sys.stderr, flush=True)
    print("| model | batch | top-k, T | decoder | passes per call | fewer passes | tokens per pass | s per image "
          "| speedup | GFLOP per token | greedy tokens equal |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['top_k']}, {r['temperature']:g} | {r['decoder']} | "
              f"{r['passes_per_call']:.1f} | {r['fewer_passes']:.2f}x | {r['tokens_per_pass']:.2f} | "
              f"{r['s_per_image'] * 1000:.1f} ms | {r['speedup']:.2f}x | {r['gflops_per_token']:.3f} | "
              f"{'-' if r['greedy_equal'] is None else r['greedy_equal']} |")
    dev = jax.devices()[0]
    print(json.dumps(dict(bench="decoders", backend=jax.default_backend(), device_kind=dev.device_kind,
                          cpu_count=os.cpu_count(), jax=jax.__version__, reps=args.reps, results=rows), default=lambda o: o.tolist()))


def main():
    ap = argparse.ArgumentParser(epilog="--config.FIELD=VALUE overrides an MPSConfig field of every preset "
                                        "(e.g. --config.dtype=bfloat16)")
    ap.add_argument("--presets", default="mid,cc")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--hole", type=float, default=0.5)
    ap.add_argument("--top-k", type=int, default=128)
    ap.add_argument("--max-recompute-s", type=float, default=600.0)
    ap.add_argument("--reps", type=int, default=3, help="timed runs of the cached sampler (median)")
    ap.add_argument("--mem-bw-gbs", type=float,
                    help="device memory bandwidth (GB/s): reports the bandwidth floor of a decoding step")
    ap.add_argument("--trace", metavar="DIR", help="profile one cached run into DIR and summarise it per step")
    ap.add_argument("--estimate-forward", action="store_true",
                    help="extrapolate later presets' forward time by FLOPs instead of measuring it")
    ap.add_argument("--decoders", action="store_true",
                    help="compare the sequential and parallel decoders instead (see --models)")
    ap.add_argument("--models", default="demo,mid", help="--decoders: demo (lip-jax demo's trained stage 2), mid (random)")
    ap.add_argument("--demo-workdir", default="runs/demo")
    ap.add_argument("--images", type=int, default=48, help="--decoders: demo scenes")
    ap.add_argument("--mid-images", type=int, default=2, help="--decoders: mid images at batch 1")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--windows", default="32", help="--decoders: parallel windows to compare")
    ap.add_argument("--drafts", default="above", help="--decoders: first drafts to compare (left, above, zero)")
    ap.add_argument("--coupled", default="1", help="--decoders: 1 coupled redraws, 0 fresh ones (or both: 1,0)")
    try:
        rest, overrides = split_overrides(sys.argv[1:])
    except UsageError as e:
        ap.error(str(e))
    args = ap.parse_args(rest)
    if args.decoders:
        if overrides:  # the decoders compare fixed models: an override would be silently ignored
            ap.error("--decoders takes no --config overrides")
        try:
            return decoders_main(args)
        except UsageError as e:
            ap.error(str(e))
    rows, prev = [], None
    for p in args.presets.split(","):
        try:
            prev = bench(p, args.batch, args.hole, args.top_k, args.max_recompute_s, prev, args.estimate_forward,
                         max(1, args.reps), overrides, args.mem_bw_gbs, args.trace)
        except UsageError as e:
            ap.error(str(e))
        rows.append(prev)
        print(f"# {p}: done", file=sys.stderr, flush=True)
    dev = jax.devices()[0]
    print("| preset | grid | dim | layers dec+enc+pth | holes | cached s/img | cached ms/step | cached tok/s "
          "| cached compile s | recompute s/img | recompute tok/s | speedup | tokens equal |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rec = r["recompute_s_per_image"]
        speed = fmt(r.get("speedup"), ".1f") if rec is not None else f"~{r['speedup_estimate']:.0f} (est.)"
        rec_s = fmt(rec, ".2f") if rec is not None else f"~{r['recompute_estimate_s_per_image']:.0f} (est., skipped)"
        print(f"| {r['preset']} | {r['grid']} | {r['dim']} | {r['layers']} | {r['holes']} | "
              f"{r['cached_s_per_image']:.2f} | {r['cached_ms_per_step']:.1f} | {r['cached_tok_per_s']:.1f} | "
              f"{r['cached_compile_s']:.1f} | "
              f"{rec_s} | {fmt(r['recompute_tok_per_s'], '.2f')} | {speed} | {r.get('tokens_equal', '-')} |")
    for r in rows:
        if r.get("floor_ms_per_step"):
            print(f"Bandwidth floor ({r['preset']}, batch {r['batch']}, {r['dtype']}): {r['step_bytes'] / 1e9:.2f} GB "
                  f"per step at {r['mem_bw_gbs']:.0f} GB/s = {r['floor_ms_per_step']:.2f} ms; measured "
                  f"{r['cached_ms_per_step']:.2f} ms per hole token ({r['floor_ratio']:.2f}x the floor)")
    for r in rows:
        print(f"KV cache ({r['preset']}, batch 8, {r['dtype']}): self-attention {r['kv_self_bytes_batch8'] / 2**30:.2f} GiB, "
              f"cross-attention K/V {r['kv_cross_bytes_batch8'] / 2**30:.2f} GiB")
    for r in rows:
        if r.get("trace_text"):
            print(f"\n{r['preset']}, batch {r['batch']}, per decoding step:" + r.pop("trace_text"))
    print(json.dumps(dict(backend=jax.default_backend(), device_kind=dev.device_kind, devices=jax.device_count(),
                          cpu_count=os.cpu_count(), jax=jax.__version__, batch=args.batch, hole=args.hole,
                          top_k=args.top_k, reps=args.reps, matmul_precision=str(jax.config.jax_default_matmul_precision),
                          results=rows)))


if __name__ == "__main__":
    main()
