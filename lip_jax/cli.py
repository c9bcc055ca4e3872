"""`lip-jax`: NUWA-LIP from the command line — train, inpaint, eval, reconstruct, convert, demo, serve.

Every command that takes `--config FILE[:arg]` also takes `--config.key.path=value` overrides.
Exit codes: 0 the work finished; 2 bad input (one line `lip-jax: error: ...`, never a traceback,
caught before the work starts); 3 training diverged; 74 a checkpoint could not be written (disk
full; the previous one is intact); 75 interrupted (SIGTERM or Ctrl-C, within seconds at any phase;
training saves a checkpoint once its first step ran): rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import os
import sys

from lip_jax.commands import convert, demo, evaluate, inpaint, reconstruct, serve, train
from lip_jax.commands.options import OVERRIDES

COMMANDS = (train, inpaint, evaluate, reconstruct, convert, demo, serve)  # in the order `lip-jax --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lip-jax", description=__doc__.splitlines()[0],
                                     epilog=OVERRIDES)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(run=command.run)
    return parser


def _enable_compilation_cache() -> None:
    """Compiled programs persist across commands: a second `lip-jax inpaint` with the same shapes
    loads them instead of compiling again (LIP_JAX_CACHE_DIR moves the cache; empty turns it off)."""
    import jax

    path = os.environ.get("LIP_JAX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "lip-jax", "xla"))
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _collect_background_errors() -> list:
    """Errors raised in background threads (orbax's writers after a failed save raise hundreds,
    one per pending write) are gathered and reported in one line instead of as tracebacks."""
    import threading

    import logging

    errors: list = []
    sys.unraisablehook = lambda u: errors.append(u.exc_value)
    threading.excepthook = lambda a: errors.append(a.exc_value)
    # orbax logs each failed background write with its traceback through absl; the command's own
    # one-line error names the cause.
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # its "Task exception was never retrieved"
    return errors


def main(argv: list[str] | None = None) -> int:
    background = _collect_background_errors()
    try:
        rc = _main(argv)
    except KeyboardInterrupt:  # Ctrl-C outside training's own handling (libraries loading too): one line
        print("lip-jax: interrupted by SIGINT", file=sys.stderr)
        rc = 130  # the shell's code for SIGINT
    if background:
        first = " ".join(str(background[0]).split())[:200]
        print(f"lip-jax: note: {len(background)} error(s) in background threads (first: "
              f"{type(background[0]).__name__}: {first})", file=sys.stderr)
    return rc


def _check_int_flags(parser, args) -> None:
    """Every integer flag of the command against its range (lip_jax.ranges), before any work."""
    from lip_jax.ranges import check

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    for action in sub._actions:
        value = getattr(args, action.dest, None)
        if action.type is int and value is not None and action.option_strings:
            check(action.dest, value, what=action.option_strings[0])


def _main(argv: list[str] | None) -> int:
    # Only light modules until the arguments are read: `--help` and argument errors never load JAX.
    from lip_jax.config import UsageError, split_overrides
    from lip_jax.ranges import RangeError

    argv = sys.argv[1:] if argv is None else argv
    try:
        rest, overrides = split_overrides(argv)
        parser = build_parser()
        args = parser.parse_args(rest)
        _check_int_flags(parser, args)
        if overrides and args.command == "demo":
            raise UsageError("demo takes no --config.* overrides; edit a copy of configs/shapes_demo.py")
    except (UsageError, RangeError) as e:
        print(f"lip-jax: error: {e}", file=sys.stderr)
        return 2
    args.overrides = overrides
    return _run(args)


def _run(args) -> int:
    """The command's work, every failure it can meet as one line and its exit code (module docstring)."""
    from lip_jax.config import UsageError
    from lip_jax.ranges import RangeError
    from lip_jax.weights.errors import CheckpointError, ConversionError
    from lip_jax.data.errors import DataError
    from lip_jax.train.faults import (DIVERGED_EXIT, INTERRUPTED_EXIT, SAVE_FAILED_EXIT, ConfigError, Diverged,
                                      Interrupted, SaveFailed, StopSignals)

    try:
        _enable_compilation_cache()
        # A signal ends any command within seconds, even mid-compilation; training takes over
        # once its first step ran (a checkpoint, then exit 75).
        if getattr(args, "own_signals", False):  # serve: Ctrl-C stops the server, exit 0
            args.run(args)
        else:
            with StopSignals(message="interrupted by {signal}; rerun the same command"):
                args.run(args)
    except (UsageError, RangeError, ConversionError, CheckpointError, DataError, ConfigError) as e:
        print(f"lip-jax: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"lip-jax: {e}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Diverged as e:
        print(f"lip-jax: error: {e}", file=sys.stderr)
        return DIVERGED_EXIT
    except SaveFailed as e:
        print(f"lip-jax: error: {e}", file=sys.stderr)
        return SAVE_FAILED_EXIT
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        print(f"lip-jax: error: {args.command} needs PyTorch for this file: pip install 'lip-jax[torch]'",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
