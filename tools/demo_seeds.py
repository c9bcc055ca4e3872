"""The default demo under several training seeds: does the worst of them meet every target?

    python tools/demo_seeds.py [--seeds 0 1 2] [--quality] [--root runs/demo-seeds] [--config FILE[:ENTRY]]

Runs `lip-jax demo --seed S --workdir ROOT/seedS` for each seed, one after another, each in a fresh
process (a finished seed's workdir is reused: the demo does only what is missing), then prints a
Markdown table (each rate with its 95% interval, the PSNR outside the hole of the model's output, the
wall time) with the worst of the seeds and the targets, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lip_jax.app.demo import rate_with_interval  # noqa: E402

# The demo's targets (README, "Quick start: the demo"): a rate's target is met by its point value.
TARGETS = {"true_caption": {"colour": 0.90, "shape": 0.70}, "counterfactual_caption": {"colour": 0.85, "shape": 0.60}}
PSNR_TARGET = 30.0
# --quality: the same rates; the PSNR target raised to what it reaches with a margin (38.1 dB, README).
QUALITY_PSNR_TARGET = 35.0


def run_seed(seed: int, root: str, quality: bool, config: str | None) -> dict:
    work = os.path.join(root, f"seed{seed}")
    cmd = [sys.executable, "-m", "lip_jax.cli", "demo", "--seed", str(seed), "--workdir", work]
    if quality:
        cmd.append("--quality")
    if config:
        cmd += ["--config", config]
    subprocess.run(cmd, check=True)
    return json.load(open(os.path.join(work, "report.json")))


def meets(report: dict, quality: bool) -> bool:
    psnr = QUALITY_PSNR_TARGET if quality else PSNR_TARGET
    return all(report[c]["follows"][k] >= v for c, t in TARGETS.items() for k, v in t.items()) and \
        all(report[c]["psnr_outside_hole"] >= psnr for c in TARGETS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quality", action="store_true", help="the demo's --quality mode")
    ap.add_argument("--root", default=None, help="parent of the seeds' workdirs (default runs/demo-seeds[-quality])")
    ap.add_argument("--config", help="demo config (default: the demo's own, configs/shapes_demo.py)")
    args = ap.parse_args()
    root = args.root or ("runs/demo-seeds-quality" if args.quality else "runs/demo-seeds")
    reports = {s: run_seed(s, root, args.quality, args.config) for s in args.seeds}
    met = {s: meets(r, args.quality) for s, r in reports.items()}
    cell = lambda r, c, k: rate_with_interval(r[c], k)  # noqa: E731
    print("| seed | true: colour | true: shape | counterfactual: colour | counterfactual: shape "
          "| PSNR outside hole (true / counterfactual) | stage 1 s | stage 2 s | eval s | total | all targets |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s, r in reports.items():
        t, c = "true_caption", "counterfactual_caption"
        total = r["total_s"]
        print(f"| {s} | {cell(r, t, 'colour')} | {cell(r, t, 'shape')} | {cell(r, c, 'colour')} | {cell(r, c, 'shape')} "
              f"| {r[t]['psnr_outside_hole']:.1f} / {r[c]['psnr_outside_hole']:.1f} dB "
              f"| {r['train']['stage1_s']:.0f} | {r['train']['stage2_s']:.0f} | {r['eval_s']:.0f} "
              f"| {int(total // 60)} min {total % 60:.0f} s | {'yes' if met[s] else 'no'} |")
    worst = {c: {k: min(r[c]["follows"][k] for r in reports.values()) for k in ("colour", "shape")}
             for c in ("true_caption", "counterfactual_caption")}
    worst_psnr = min(r[c]["psnr_outside_hole"] for r in reports.values() for c in worst)
    print(f"| worst | {100 * worst['true_caption']['colour']:.0f}% | {100 * worst['true_caption']['shape']:.0f}% "
          f"| {100 * worst['counterfactual_caption']['colour']:.0f}% | {100 * worst['counterfactual_caption']['shape']:.0f}% "
          f"| {worst_psnr:.1f} dB | | | | {max(r['total_s'] for r in reports.values()) / 60:.1f} min (longest) "
          f"| {'yes' if all(met.values()) else 'no'} |")
    print(json.dumps(dict(bench="demo_seeds", quality=args.quality, config=args.config or "configs/shapes_demo.py", processor=platform.processor() or platform.machine(),
                          cpu_count=os.cpu_count(), images=next(iter(reports.values()))["images"],
                          all_meet=all(met.values()),
                          seeds={s: dict(follows={c: r[c]["follows"] for c in worst},
                                         follows_95={c: r[c]["follows_95"] for c in worst},
                                         psnr_outside_hole={c: r[c]["psnr_outside_hole"] for c in worst},
                                         train=r["train"], eval_s=r["eval_s"], total_s=r["total_s"])
                                 for s, r in reports.items()})))


if __name__ == "__main__":
    main()
