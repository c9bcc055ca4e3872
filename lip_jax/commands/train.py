"""`lip-jax train`: train (or resume) stage 1 (DF-VQGAN) or stage 2 (MP-S2S) into a workdir."""

from __future__ import annotations

from lip_jax.commands.options import OVERRIDES, config_arg, config_of
from lip_jax.config import UsageError
from lip_jax.paths import path


def add_parser(subparsers):
    p = subparsers.add_parser("train", help="train stage 1 (DF-VQGAN) or stage 2 (MP-S2S); resumes from WORKDIR",
                              description="Train (or resume) one stage. Checkpoints go to WORKDIR/checkpoints; a "
                                          "run that reaches its last step writes WORKDIR/params, the weights every "
                                          "other command takes (stage 1: DF-VQGAN; stage 2: MP-S2S with its "
                                          "DF-VQGAN).",
                              epilog="Print the resolved config (overrides applied) with --print-config. " + OVERRIDES)
    config_arg(p, "configs/mps_cc.py or configs/shapes_demo.py:stage1")
    p.add_argument("--workdir", help="run directory: checkpoints/, params/, metrics.jsonl, tb/, samples/")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    return p


def run(args) -> None:
    config = config_of(args)
    if args.print_config:
        print(config)
        return
    if not args.workdir:
        raise UsageError("train needs --workdir DIR")
    if "stage" not in config or "train" not in config:
        raise UsageError(f"{args.config}: not a training config (needs `stage` and `train`; "
                         f"configs/shapes_demo.py takes :stage1 or :stage2)")
    from lip_jax.train.trainer import train as run_training

    result = run_training(config, args.workdir)
    print(f"trained to step {result['step']}; inference weights in {path(args.workdir) / 'params'}")
