"""Config files and overrides: one syntax for every command, `--config.key.path=value`.

A config file is Python with `get_config(arg)`; `FILE:arg` passes `arg`. Overrides are typed by the
field they replace (a typo'd key or a value of the wrong type is a one-line error, not a silent new
field), so `lip-jax train`, `eval`, `inpaint` and the tools read them alike.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os

from lip_jax import ranges


class UsageError(ValueError):
    """Bad input from the user: reported in one line, exit code 2."""


def load_config(spec: str):
    """`path/to/config.py[:arg]` -> the ConfigDict its `get_config(arg)` returns."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: config file not found")
    module_spec = importlib.util.spec_from_file_location(f"lip_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UsageError(f"{path}: syntax error on line {e.lineno}: {e.msg}") from e
    except Exception as e:  # a config that fails on import is the user's file, not our bug
        raise UsageError(f"{path}: failed to load ({type(e).__name__}: {e})") from e
    if not hasattr(module, "get_config"):
        raise UsageError(f"{path}: not a config file (no get_config)")
    try:
        return module.get_config(arg or None)
    except (ValueError, KeyError) as e:
        raise UsageError(f"{path}: {e}") from e


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take every `--config.k=v` (or `--config.k v`) out of argv -> (rest, ["k=v", ...])."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            key, sep, value = arg[len("--config."):].partition("=")
            if not sep:
                if i + 1 >= len(argv):
                    raise UsageError(f"{arg}: expected --config.KEY=VALUE")
                i, value = i + 1, argv[i + 1]
            overrides.append(f"{key}={value}")
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def apply_overrides(config, items, flag: str = "--config.") -> None:
    """`key.path=value` onto a ConfigDict; the value is parsed as the field's current type. Then
    every integer field, from the file or an override, is checked against its range
    (lip_jax.ranges: a RangeError naming the field)."""
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag}{item}: expected {flag}KEY=VALUE")
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            if name not in node or not hasattr(node[name], "keys"):
                raise UsageError(f"{flag}{key}: the config has no section {name!r}")
            node = node[name]
        if leaf not in node:
            raise UsageError(f"{flag}{key}: the config has no field {leaf!r} (have {sorted(node.keys())})")
        try:
            value = _parse_like(node[leaf], text)
        except (ValueError, SyntaxError) as e:
            raise UsageError(f"{flag}{key}={text}: {e}") from e
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:  # ConfigDict's own type check
            raise UsageError(f"{flag}{key}={text}: {e}") from e
    ranges.check_config(config)


def _parse_like(old, text: str):
    if isinstance(old, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError("expected true or false")
        return text.lower() in ("true", "1")
    if isinstance(old, int):
        return int(text)
    if isinstance(old, float):
        value = float(text)
        if not math.isfinite(value):  # nan / inf poison a run silently (a NaN learning rate trains nothing)
            raise ValueError("not a finite number")
        return value
    if isinstance(old, str):
        return text
    if hasattr(old, "keys"):
        raise ValueError("a section: set its fields one by one")
    if old is None:  # untyped: a Python literal, else the text itself
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    value = ast.literal_eval(text)
    if isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(old)(value)
    return value


def to_record(config) -> dict:
    """A config as plain JSON data (tuples become lists), as it is saved beside the weights."""
    import json

    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(data, sort_keys=True, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def from_record(record: dict):
    """A saved config back as a ConfigDict that commands read like a config file's."""
    import ml_collections

    return ml_collections.ConfigDict(record)
