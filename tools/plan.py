"""Memory / compute plans of the official recipes on simulated pods, without a pod.

    python tools/plan.py --recipe all --devices 8,64
    python tools/plan.py --recipe mps_cc --devices 64 --meshes data=-1 fsdp=-1 fsdp=-1,tensor=4
    python tools/plan.py --recipe mps_cc --devices 8 --config.mps.remat=none --meshes fsdp=-1

For each recipe, device count and mesh shape, the REAL step is lowered and compiled ahead of time
(`jax.jit(step, in_shardings, out_shardings, donate_argnums=0).lower(abstract args).compile()`) on a
CPU backend simulating N devices (`--xla_force_host_platform_device_count=N`, one subprocess per N:
the count is fixed when JAX starts). Abstract arguments are ShapeDtypeStructs carrying the shardings
of lip_jax.sharding (the trainer's `abstract_state`), so nothing is allocated.

  stage1    configs/dfvqgan_imagenet.py: DF-VQGAN 256 px generator + discriminator step (the larger,
            discriminator-on variant), LPIPS as a replicated input (the trainer closes over it)
  mps_cc    configs/mps_cc.py: MP-S2S pre-training step (frozen DF-VQGAN targets, CLIP text tower)
  mps_coco  configs/mps_coco.py: fine-tuning; the same program as mps_cc when the model, optimizer
            and batch agree (then reported from the mps_cc compile, not compiled twice)
  sample    configs/lip_maskcoco.py (the `lip-jax eval` model; `--config.mps.scan_layers=true` gives
            configs/mps_coco.py's, `lip-jax inpaint`): the programs every inference command runs,
            lip_jax.app.inference.programs (DF-VQGAN encode, KV-cached sampling of K candidates,
            decode) with their mesh shardings, as the same jitted objects; the peak is that of the
            program whose peak plus what stays resident meanwhile (the other model's weights, the
            skip features) is largest, FLOPs and collectives add up over the three

Per device: memory from `compiled.memory_analysis()` (arguments, outputs, temporaries; the peak is
estimated as arguments + outputs - donated aliases + temporaries), and, parsed from the compiled
HLO with the trip counts of enclosing while loops where XLA knows them, matmul + convolution FLOPs
(`cost_analysis()` counts a loop body once, so it misses scanned layers; kept as xla_cost_flops)
and collective bytes (operands of all-reduce / all-gather / reduce-scatter / all-to-all /
collective-permute), with the few source ops (jax op_name) that move the most listed under the
table. These are CPU-compiler estimates of what a TPU / GPU compile would do (different
fusion, scheduling and layouts), good for which layout fits, not for the last GiB.

Batch per device: stage 1 6 (the config's 48 per 8-GPU host; the official README launch uses 8,
`--batch-per-device 8`), stage 2 8 (official `run.sh -ltbs 8`); inference 1 image (official
`local_eval_batch_size` 1) x K = 2 candidates (`sample_K`). The global batch is per-device x
devices, so a `tensor` axis of size t gives each tensor group t x the examples (`lip-jax eval`
samples `eval.batch_size` images per step: set it to this global batch for the planned layout).

Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lip_jax.perf.hlo_cost import parse_hlo, peak_bytes  # noqa: E402

GiB = 1024 ** 3
CAPACITIES = (("v5e", 16), ("v4", 32), ("H100", 80))
RECIPES = ("stage1", "mps_cc", "mps_coco", "sample")
CONFIGS = {"stage1": "configs/dfvqgan_imagenet.py", "mps_cc": "configs/mps_cc.py",
           "mps_coco": "configs/mps_coco.py", "sample": "configs/lip_maskcoco.py"}
# The tensor axis splits nothing in the convolutional stage 1 (the rule table splits conv output
# channels over fsdp only), so its meshes are data and FSDP (and a hybrid).
DEFAULT_MESHES = {
    "stage1": ("data=-1", "fsdp=-1"),
    "mps_cc": ("data=-1", "fsdp=-1", "fsdp=-1,tensor=4"),
    "mps_coco": ("data=-1", "fsdp=-1", "fsdp=-1,tensor=4"),
    "sample": ("data=-1", "fsdp=-1,tensor=4"),
}
# Code generation quality is irrelevant here: LLVM at -O0 and the classic fusion emitters cut CPU
# compile time 2-4x and leave buffer assignment (memory_analysis) unchanged. The CPU pipeline
# expands optimization barriers before CSE, which merges rematerialised forward passes back into
# the original ones (remat would save nothing); GPU / TPU expand them late, so keep them here too.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                    "xla_cpu_use_fusion_emitters": False, "xla_cpu_enable_concurrency_optimized_scheduler": False,
                    "xla_disable_hlo_passes": "cse_barrier_expander"}
# --- one device count (worker) ---------------------------------------------------------------------

def parse_mesh(spec: str) -> dict:
    out = {}
    for part in spec.split(","):
        k, v = part.split("=")
        out[k.strip()] = int(v)
    return out


def _stage1(config, mesh, per_device):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from lip_jax.models import lpips
    from lip_jax import sharding
    from lip_jax.train import stage1
    from lip_jax.train.trainer import abstract_state

    task = type("T", (), {"init_boxed_state": staticmethod(lambda rng: stage1.init_boxed_state(config, rng))})
    state, state_sh = abstract_state(task, mesh)
    net = lpips.LPIPS()
    lp = nn.unbox(jax.eval_shape(lambda: lpips.init_params(net, jax.random.key(0))))
    n = per_device * mesh.size
    r = config.vqgan.resolution
    batch = {"image": jax.ShapeDtypeStruct((n, r, r, 3), jnp.float32),
             "mask": jax.ShapeDtypeStruct((n, r, r), jnp.bool_),
             "decoder_none": jax.ShapeDtypeStruct((n,), jnp.bool_)}

    def step(state, lp, batch):  # the trainer's step; LPIPS weights as an argument, not constants
        return stage1.make_train_step(config, stage1.lpips_distance(config, lp), True)(state, batch)

    rep = sharding.replicated(mesh)
    batch_sh = {k: sharding.batch_sharding(mesh, len(v.shape)) for k, v in batch.items()}
    fn = jax.jit(step, in_shardings=(state_sh, rep, batch_sh), out_shardings=(state_sh, rep), donate_argnums=0)
    return fn, (state, lp, batch), {"global_batch": n}


def _stage2(config, mesh, per_device):
    import jax
    import jax.numpy as jnp

    from lip_jax.weights.dfvqgan import param_template
    from lip_jax import sharding
    from lip_jax.train import stage2
    from lip_jax.train.trainer import abstract_state

    task = type("T", (), {"init_boxed_state": staticmethod(lambda rng: stage2.init_boxed_state(config, rng))})
    state, state_sh = abstract_state(task, mesh)
    vq = param_template(config.vqgan)
    mcfg = stage2.mps_config(config)
    n = per_device * mesh.size
    r = mcfg.img_size
    batch = {"image": jax.ShapeDtypeStruct((n, r, r, 3), jnp.float32),
             "mask": jax.ShapeDtypeStruct((n, r, r), jnp.bool_),
             "masked_image": jax.ShapeDtypeStruct((n, r, r, 3), jnp.float32),
             "text_ids": jax.ShapeDtypeStruct((n, mcfg.text_len), jnp.int32)}
    rep = sharding.replicated(mesh)
    batch_sh = {k: sharding.batch_sharding(mesh, len(v.shape)) for k, v in batch.items()}
    fn = jax.jit(stage2.make_train_step(config), in_shardings=(state_sh, rep, batch_sh),
                 out_shardings=(state_sh, rep), donate_argnums=0)
    return fn, (state, vq, batch), {"global_batch": n}


def device_bytes(tree) -> int:
    """Per-device bytes of a tree of ShapeDtypeStructs carrying shardings."""
    import math

    import jax

    return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def _sample(config, mesh, images, num_samples):
    """The programs `lip-jax eval` / `inpaint` / `Inpainter` run (lip_jax.app.inference.programs,
    the same jitted objects and shardings), each with what stays resident on the devices meanwhile:
    the other model's weights, and while sampling the encoder's skip features. `images`: the global batch."""
    from lip_jax.app import inference, pipeline

    model, mcfg = pipeline.check_models(config.vqgan, config.mps)
    n = images
    prog = inference.programs(model, mcfg, mesh, n, num_samples)
    vq, mps = prog.abstract["encode"][0], prog.abstract["sample"][0]
    resident = {"encode": mps, "sample": (vq, prog.abstract["decode"][2:]), "decode": mps}
    return ([(name, getattr(prog, name), prog.abstract[name], device_bytes(resident[name]))
             for name in ("encode", "sample", "decode")],
            {"global_batch": n, "candidates": num_samples, "rows": prog.rows})


def _signature(config) -> str:
    """What determines the stage-2 training program (model, frozen VQGAN, optimizer, step)."""
    return json.dumps({k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
                       for k in ("mps", "vqgan")} | {"train": {k: v for k, v in config.train.items()
                                                               if k not in ("init_ckpt", "log_every", "save_every",
                                                                            "sample_every", "keep")}},
                      sort_keys=True, default=str)


def _compile(fn, abstract) -> dict:
    t0 = time.time()
    lowered = fn.lower(*abstract)
    t_lower = time.time() - t0
    compiled = lowered.compile(compiler_options=COMPILER_OPTIONS)
    t_compile = time.time() - t0 - t_lower
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    hlo = parse_hlo(compiled.as_text())
    return {
        "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
        "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes, "peak_bytes": peak_bytes(mem),
        # XLA's cost analysis counts a loop body once; the matmul / conv FLOPs parsed from the HLO
        # apply known trip counts (scanned layers, gradient accumulation)
        "flops_per_device": float(hlo["matmul_flops"]), "xla_cost_flops": float(cost.get("flops", 0.0)),
        "collective_bytes": hlo["collectives"], "collective_total_bytes": sum(hlo["collectives"].values()),
        "unknown_trip_loops": hlo["unknown_trip_loops"], "largest": hlo["largest"],
        "top_collectives": hlo["collectives_by_op"][:5],
        "lower_s": round(t_lower, 1), "compile_s": round(t_compile, 1)}


def _combine(parts: dict) -> dict:
    """Programs run one after another: the peak is the largest of (a program's peak + what stays
    resident beside it); FLOPs and collective bytes add up; the rest is the largest program's."""
    peaks = {name: p["peak_bytes"] + p["resident_bytes"] for name, p in parts.items()}
    top = max(peaks, key=peaks.get)
    out = dict(parts[top], peak_bytes=peaks[top], peak_program=top)
    out["flops_per_device"] = sum(p["flops_per_device"] for p in parts.values())
    out["xla_cost_flops"] = sum(p["xla_cost_flops"] for p in parts.values())
    kinds = {k for p in parts.values() for k in p["collective_bytes"]}
    out["collective_bytes"] = {k: sum(p["collective_bytes"].get(k, 0) for p in parts.values()) for k in kinds}
    out["collective_total_bytes"] = sum(out["collective_bytes"].values())
    out["unknown_trip_loops"] = sum(p["unknown_trip_loops"] for p in parts.values())
    out["largest"] = max((p["largest"] for p in parts.values()), key=lambda lg: lg["bytes"])
    out["top_collectives"] = sorted((c for p in parts.values() for c in p["top_collectives"]),
                                    key=lambda c: -c["bytes"])[:5]
    for key in ("lower_s", "compile_s"):
        out[key] = round(sum(p[key] for p in parts.values()), 1)
    out["programs"] = {name: {k: p[k] for k in ("peak_bytes", "resident_bytes", "argument_bytes", "temp_bytes",
                                                 "flops_per_device", "collective_total_bytes", "compile_s")}
                       for name, p in parts.items()}
    return out


def plan_one(recipe, config, mesh_spec, devices, args) -> dict:
    import jax
    from lip_jax import sharding

    mesh_shape = parse_mesh(mesh_spec)
    row = {"recipe": recipe, "devices": devices, "mesh_spec": mesh_spec}
    try:
        mesh = sharding.make_mesh(mesh_shape)
    except ValueError as e:
        return row | {"error": str(e)}
    row["mesh"] = "x".join(f"{a}{mesh.shape[a]}" for a in sharding.MESH_AXES if mesh.shape[a] > 1) or "single"
    with jax.set_mesh(mesh):
        per_device = args.batch_per_device or (6 if recipe == "stage1" else 8)
        if recipe == "sample":
            programs, info = _sample(config, mesh, args.images_per_device * mesh.size, args.samples)
            stats = _combine({name: _compile(fn, abstract) | {"resident_bytes": resident}
                              for name, fn, abstract, resident in programs})
        else:
            if recipe == "stage1":
                fn, abstract, info = _stage1(config, mesh, per_device)
            else:
                fn, abstract, info = _stage2(config, mesh, per_device)
                mc = config.mps
                info |= {"remat": mc.get("remat", "none"), "dtype": mc.get("dtype", "float32"),
                         "grad_accum": int(config.train.get("grad_accum", 1))}
            stats = _compile(fn, abstract)
    return row | info | stats | {"fits": {name: stats["peak_bytes"] <= cap * GiB for name, cap in CAPACITIES}}


def worker(args) -> None:
    import jax

    from lip_jax.config import apply_overrides, load_config

    devices = jax.device_count()
    seen: dict[str, dict] = {}
    for recipe in args.recipes:
        config = load_config(os.path.join(REPO, CONFIGS[recipe]))
        apply_overrides(config, args.overrides)
        meshes = [m for m in (args.meshes or DEFAULT_MESHES[recipe]) if m not in args.skip_mesh]
        for spec in meshes:
            key = None
            if recipe in ("mps_cc", "mps_coco"):
                key = (_signature(config), spec)
                if key in seen:  # identical program: report it, do not compile it again
                    row = dict(seen[key], recipe=recipe, same_as=seen[key]["recipe"])
                    print("PLAN " + json.dumps(row), flush=True)
                    continue
            try:
                row = plan_one(recipe, config, spec, devices, args)
            except Exception as e:  # a layout that fails to compile is a result, not a crash
                row = {"recipe": recipe, "devices": devices, "mesh_spec": spec,
                       "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            if key is not None and "error" not in row:
                seen[key] = row
            print("PLAN " + json.dumps(row), flush=True)


# --- driver -----------------------------------------------------------------------------------------

def _gib(b) -> str:
    return f"{b / GiB:.2f}"


def markdown(rows) -> str:
    head = ("| recipe | devices | mesh | batch | args GiB | out GiB | temp GiB | peak GiB | matmul TFLOP/dev | "
            "coll. GiB/dev | fits 16/32/80 | largest temporary | compile s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r['devices']} | {r.get('mesh', r['mesh_spec'])} | | | | | | | | "
                         f"error: {r['error'][:80]} | | |")
            continue
        fits = "/".join("yes" if r["fits"][n] else "no" for n, _ in CAPACITIES)
        batch = str(r["global_batch"]) + (f"x{r['candidates']}" if "candidates" in r else "")
        if r.get("remat"):
            batch += f" ({r['remat']}, {r['dtype']}" + (f", accum {r['grad_accum']}" if r["grad_accum"] > 1 else "") + ")"
        lg = r["largest"]
        largest = f"{lg['shape']} {lg['op']}" if lg["bytes"] else ""
        comp = "same as " + r["same_as"] if r.get("same_as") else f"{r['compile_s']:.0f}"
        lines.append(f"| {r['recipe']} | {r['devices']} | {r['mesh']} | {batch} | {_gib(r['argument_bytes'])} | "
                     f"{_gib(r['output_bytes'])} | {_gib(r['temp_bytes'])} | {_gib(r['peak_bytes'])} | "
                     f"{r['flops_per_device'] / 1e12:.2f} | {_gib(r['collective_total_bytes'])} | {fits} | "
                     f"`{largest}` ({_gib(lg['bytes'])} GiB) | {comp} |")
    return "\n".join(lines)


def sample_programs(rows) -> str:
    """Per inference program: its peak + what stays resident beside it (GiB per device)."""
    lines = ["Inference programs (peak + resident GiB per device; matmul TFLOP per device):"]
    for r in rows:
        if "error" in r or r.get("same_as") or not r.get("programs"):
            continue
        parts = "; ".join(f"{name} {_gib(p['peak_bytes'])} + {_gib(p['resident_bytes'])}, "
                          f"{p['flops_per_device'] / 1e12:.2f}" for name, p in r["programs"].items())
        lines.append(f"- {r['recipe']} {r['devices']} {r['mesh']} ({r['rows']} rows): {parts}")
    return "\n".join(lines) if len(lines) > 1 else ""


def collective_sources(rows, n: int = 3) -> str:
    """The ops that move the most collective bytes, per compiled layout (where to look first)."""
    lines = ["Largest collective sources (GiB per device and step):"]
    for r in rows:
        if "error" in r or r.get("same_as") or not r.get("top_collectives"):
            continue
        top = "; ".join(f"{c['kind']} {_gib(c['bytes'])} `{c['op']}`" for c in r["top_collectives"][:n])
        lines.append(f"- {r['recipe']} {r['mesh']}: {top}")
    return "\n".join(lines)


def _reuse_pure_data(rows, counts):
    """Pure data parallelism runs the same per-device program on any device count (replicated
    state, the same per-device batch; only the all-reduce group grows), so it is compiled at the
    first count only and reported for the others."""
    out = list(rows)
    for r in rows:
        if r["mesh_spec"] == "data=-1" and r["devices"] == counts[0] and "error" not in r:
            for n in counts[1:]:
                out.append(dict(r, devices=n, mesh=f"data{n}", same_as=f"data{counts[0]}",
                                global_batch=r["global_batch"] // counts[0] * n))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="--config.KEY=VALUE overrides a config field of every recipe run "
                                       "(e.g. --config.mps.remat=none)")
    p.add_argument("--recipe", default="all", help=f"all or a comma list of {','.join(RECIPES)}")
    p.add_argument("--devices", default="8,64", help="comma list of simulated device counts")
    p.add_argument("--meshes", nargs="+", default=None,
                   help="mesh shapes like data=-1 fsdp=-1 fsdp=-1,tensor=4 (default: per recipe)")
    p.add_argument("--batch-per-device", type=int, default=0,
                   help="training examples per device (default: stage 1 6 = the config's 48 per 8-GPU host, "
                        "stage 2 8 = the official launches' -ltbs 8)")
    p.add_argument("--images-per-device", type=int, default=1, help="inference images per device (official 1)")
    p.add_argument("--samples", type=int, default=2, help="inference candidates K (official sample_K 2)")
    p.add_argument("--jobs", type=int, default=2, help="compile processes side by side")
    p.add_argument("--merge", nargs="+", default=None, metavar="OUT",
                   help="print one table from the outputs (final JSON lines) of earlier runs")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skip-mesh", action="append", default=[], help=argparse.SUPPRESS)
    from lip_jax.config import UsageError, split_overrides

    try:  # --config.KEY=VALUE: a config override (e.g. --config.mps.remat=none), as `lip-jax train`
        rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        p.error(str(e))
    args = p.parse_args(rest)
    args.overrides = overrides
    args.recipes = list(RECIPES) if args.recipe == "all" else args.recipe.split(",")
    for r in args.recipes:
        if r not in RECIPES:
            p.error(f"unknown recipe {r!r}; choose from {', '.join(RECIPES)} or all")
    if args.worker:
        worker(args)
        return 0
    if args.merge:
        rows, seconds = [], 0.0
        for path in args.merge:
            with open(path) as f:
                last = [json.loads(l) for l in f if l.startswith('{"tool": "plan"')][-1]
            rows += last["rows"]
            seconds += last.get("seconds", 0.0)
        order = {r: i for i, r in enumerate(RECIPES)}
        rows.sort(key=lambda r: (order[r["recipe"]], r["devices"]))
        print(markdown(rows))
        print(collective_sources(rows))
        print(sample_programs(rows))
        print(json.dumps({"tool": "plan", "merged": args.merge, "seconds": round(seconds, 1), "rows": rows}))
        return 0

    counts = [int(x) for x in args.devices.split(",")]
    groups = [[r] for r in args.recipes if r not in ("mps_cc", "mps_coco")]
    stage2 = [r for r in ("mps_cc", "mps_coco") if r in args.recipes]
    if stage2:
        groups.insert(1 if "stage1" in args.recipes else 0, stage2)  # one process: mps_coco reuses mps_cc
    # data=-1 is compiled at the first device count only (see _reuse_pure_data)
    tasks = [(n, g, ["data=-1"] if n != counts[0] else []) for n in counts for g in groups]
    tasks.sort(key=lambda t: "mps_cc" not in t[1] and "mps_coco" not in t[1])  # longest compiles first
    rows, t0 = [], time.time()
    running: list = []

    def launch(task):
        n, recipes, skip = task
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip())
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--recipe", ",".join(recipes),
               "--batch-per-device", str(args.batch_per_device), "--images-per-device", str(args.images_per_device),
               "--samples", str(args.samples)]
        cmd += [f"--config.{o}" for o in args.overrides]
        if args.meshes:
            cmd += ["--meshes", *args.meshes]
        for s_ in skip:
            cmd += ["--skip-mesh", s_]
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # no pipe to fill up
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=err, text=True), task, out, err

    def collect(proc, task, out, err):
        out.seek(0)
        err.seek(0)
        for line in out:
            if line.startswith("PLAN "):
                row = json.loads(line[5:])
                rows.append(row)
                brief = row.get("error") or f"peak {_gib(row['peak_bytes'])} GiB, compile {row.get('compile_s', 0)} s"
                print(f"[{time.time() - t0:6.0f}s] {row['recipe']} x{row['devices']} {row['mesh_spec']}: {brief}",
                      file=sys.stderr, flush=True)
        if proc.returncode:
            print(f"worker {task} failed:\n{err.read()[-3000:]}", file=sys.stderr)

    queue = list(tasks)
    while queue or running:
        while queue and len(running) < args.jobs:
            running.append(launch(queue.pop(0)))
        time.sleep(0.5)
        for item in list(running):
            if item[0].poll() is not None:
                running.remove(item)
                collect(*item)
    rows = _reuse_pure_data(rows, counts)
    order = {r: i for i, r in enumerate(RECIPES)}
    rows.sort(key=lambda r: (order[r["recipe"]], r["devices"]))
    print(markdown(rows))
    print(collective_sources(rows))
    print(sample_programs(rows))
    import jax
    print(json.dumps({"tool": "plan", "jax": jax.__version__, "backend": "cpu (simulated devices)",
                      "seconds": round(time.time() - t0, 1), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
