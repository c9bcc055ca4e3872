"""`lip-jax demo`: NUWA-LIP end to end on the synthetic captioned shapes, on CPU, in minutes (what
it does and writes: lip_jax.app.demo). Each stage resumes from its checkpoints, so a rerun only
does what is missing.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

from lip_jax import ranges
from lip_jax.config import UsageError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the source checkout
DEMO_CONFIG = os.path.join(ROOT, "configs", "shapes_demo.py")


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="train both stages on synthetic shapes and inpaint with true and "
                                           "counterfactual captions (CPU, minutes)")
    p.add_argument("--workdir", help="run directory (default: runs/demo, with --quality runs/demo-quality)")
    p.add_argument("--config", default=DEMO_CONFIG, help="demo config file (default: configs/shapes_demo.py)")
    p.add_argument("--images", type=int, help="held-out images to inpaint (default: from the config)")
    p.add_argument("--seed", type=int,
                   help="training seed of both stages: initialisation, data order and holes (default: the "
                        "config's, 0); the held-out scenes stay the same")
    p.add_argument("--quality", action="store_true",
                   help="train longer (the config's :quality entry; the README gives its time and numbers)")
    return p


RECORD = "demo_config.json"  # in each stage's directory: the config it was trained with


def _recipe(config) -> str:
    """A stage's config as JSON, without where the workdir is (a moved workdir stays the same run)."""
    c = config.copy_and_resolve_references()
    if "vqgan_ckpt" in c:
        c.vqgan_ckpt = ""
    return c.to_json(sort_keys=True, indent=1)


def demo_config(config: str, quality: bool = False):
    """(config, its name for the report) from `--config FILE[:ENTRY]` and `--quality` (FILE:quality)."""
    path, _, entry = config.partition(":")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: demo config not found (run from a source checkout, or pass --config)")
    if quality:
        if entry:
            raise UsageError(f"{config}: --quality picks the :quality entry; drop :{entry} or --quality")
        entry = "quality"
    return load_config(f"{path}:{entry}" if entry else path), f"{os.path.basename(path)}:{entry or 'demo'}"


def run(args) -> None:
    from lip_jax.weights.load import load_lip
    from lip_jax.app.demo import evaluate, report_markdown, say
    from lip_jax.app.pipeline import Inpainter
    from lip_jax.images import write_image
    from lip_jax.train.trainer import train

    t_start = time.perf_counter()
    quality = getattr(args, "quality", False)
    cfg, config_name = demo_config(args.config, quality)
    if args.images is not None:
        cfg.eval.num_images = ranges.check("images", args.images, cfg.stage2, what="--images")
    seed = getattr(args, "seed", None)
    if seed is not None:
        seed = ranges.check("seed", seed, cfg.stage2, what="--seed")
        for s in (cfg.stage1, cfg.stage2):
            s.seed, s.data.seed = seed, seed
    ranges.check_config(cfg)
    work = os.path.abspath(args.workdir or ("runs/demo-quality" if quality else "runs/demo"))
    cfg.stage2.vqgan_ckpt = os.path.join(work, "stage1")
    # A rerun resumes or reuses each stage; one trained (or begun) with another config, e.g. the
    # default demo's stage 1 under --quality, would be taken for this one: refused before any work.
    for name in ("stage1", "stage2"):
        record = os.path.join(work, name, RECORD)
        if os.path.exists(record) and pathlib.Path(record).read_text() != _recipe(cfg[name]):
            raise UsageError(f"{os.path.join(work, name)}: trained with another demo config than "
                             f"{config_name}; pass another --workdir")
    os.makedirs(work, exist_ok=True)
    timings = {}

    def stage(name, config):
        # `params/` is written by a run that reached its last step: a stage interrupted before
        # then is resumed from its checkpoints, never taken as trained.
        t0 = time.perf_counter()
        if os.path.isdir(os.path.join(work, name, "params")):
            say(f"demo: {name} already trained ({os.path.join(work, name, 'params')})")
        else:
            say(f"demo: training {name} ({config.train.total_steps} steps, batch {config.data.batch_size}, "
                f"{config.data.image_size} px)")
            os.makedirs(os.path.join(work, name), exist_ok=True)
            pathlib.Path(work, name, RECORD).write_text(_recipe(config))
            train(config, os.path.join(work, name))
        timings[f"{name}_s"] = time.perf_counter() - t0

    stage("stage1", cfg.stage1)
    stage("stage2", cfg.stage2)
    say(f"demo: inpainting {cfg.eval.num_images} held-out scenes with true and counterfactual captions")
    inpainter = Inpainter(load_lip(os.path.join(work, "stage2"), cfg.stage2.mps, cfg.stage2.vqgan), cfg.stage2)
    t0 = time.perf_counter()
    report, grid = evaluate(cfg, inpainter, cfg.eval.num_images)
    report["eval_s"] = time.perf_counter() - t0
    report["train"] = timings
    report["config"] = config_name
    report["total_s"] = time.perf_counter() - t_start
    write_image(grid, os.path.join(work, "demo.png"))
    with open(os.path.join(work, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    md = report_markdown(report)
    with open(os.path.join(work, "report.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {os.path.join(work, 'demo.png')}, {os.path.join(work, 'report.md')}, report.json")
