"""What the commands share about arguments: `--config FILE[:arg]` and its `--config.k=v` overrides."""

from __future__ import annotations

from lip_jax.config import apply_overrides, load_config

OVERRIDES = "--config.KEY=VALUE overrides any config field (typed like the field), e.g. --config.train.lr=1e-4"


def config_arg(p, example: str, required: bool = True) -> None:
    optional = "" if required else (" Optional where --ckpt records its config (what lip-jax train and lip-jax "
                                    "convert write); given both, they must agree on every model field.")
    p.add_argument("--config", required=required, help=f"config file[:arg], e.g. {example}.{optional} {OVERRIDES}")


def config_of(args):
    """The command's config file with its `--config.k=v` overrides applied."""
    config = load_config(args.config)
    apply_overrides(config, args.overrides)
    return config


def lip_ckpt_arg(p) -> None:
    """--ckpt of the commands that run NUWA-LIP (inpaint, serve): one spelling of what they take."""
    p.add_argument("--ckpt", required=True, help="stage-2 workdir (or its params/), orbax {mps, vqgan} from "
                                                 "lip-jax convert, or the official NUWA-LIP .pth")
