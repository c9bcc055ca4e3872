"""Where a command writes, checked before it reads anything large: the one rule for every output path.

A file output (`inpaint --out/--grid`, `reconstruct --out/--npy`, `convert --to x.pth`): its folder
is a writable directory and an existing file is replaced only with `--overwrite`. A directory output
(`eval --out`, resumable; `convert --to DIR`): it can be created or written. Writability is tested
by creating and deleting a temporary file, which fails at once on a read-only filesystem or a
folder without permission (a `UsageError`, one line), instead of minutes later inside a writer.
"""

from __future__ import annotations

import errno
import os
import tempfile

from lip_jax.app.config import UsageError


def _probe(directory: str, flag: str, path: str) -> None:
    """Create and delete a temporary file in `directory` (an existing directory)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".lip-jax-probe-")
    except OSError as e:
        reason = "read-only filesystem" if e.errno == errno.EROFS else e.strerror or type(e).__name__
        raise UsageError(f"{flag} {path}: cannot write in {directory} ({reason})") from None
    os.close(fd)
    try:
        os.remove(tmp)
    except OSError:
        pass


def _existing_ancestor(directory: str) -> str:
    d = directory
    while not os.path.exists(d):
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return d


def check_file(path: str, flag: str, overwrite: bool = False, make_parents: bool = False) -> None:
    """An output file: its folder is a writable directory (or, with `make_parents`, can be created
    under a writable one); an existing file only with `overwrite`; never an existing directory."""
    if not path:
        raise UsageError(f"{flag}: empty path")
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a directory, expected a file name")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(f"{flag} {path}: already exists; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    if make_parents:
        base = _existing_ancestor(parent)
        if not os.path.isdir(base):
            raise UsageError(f"{flag} {path}: {base} is not a directory")
        _probe(base, flag, path)
        return
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "no such directory"
        raise UsageError(f"{flag} {path}: {parent}: {what}")
    _probe(parent, flag, path)


def check_dir(path: str, flag: str, shown: str | None = None) -> None:
    """An output directory that may exist (resumable): it is a writable directory, or it can be
    created (its nearest existing ancestor is a writable directory). Nothing is left behind.
    `shown`: the path the user gave, when `path` is derived from it (the folder of --to)."""
    shown = shown or path
    if not path:
        raise UsageError(f"{flag}: empty path")
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UsageError(f"{flag} {shown}: {path} exists and is not a directory")
        _probe(path, flag, shown)
        return
    base = _existing_ancestor(path)
    if not os.path.isdir(base):
        raise UsageError(f"{flag} {shown}: {base} is not a directory")
    _probe(base, flag, shown)


def distinct(*pairs: tuple[str | None, str]) -> None:
    """Two outputs of one command are not the same file."""
    seen: dict[str, str] = {}
    for path, flag in pairs:
        if not path:
            continue
        key = os.path.realpath(path)
        if key in seen:
            raise UsageError(f"{flag} {path}: the same file as {seen[key]}")
        seen[key] = flag
