"""Where a command writes, checked before it reads anything large: the one rule for every output path.

A file output (`inpaint --out/--grid`, `reconstruct --out/--npy`, `convert --to x.pth`): its folder
is a writable directory and an existing file is replaced only with `--overwrite`. A directory output
(`eval --out`, resumable; `convert --to DIR`): it can be created or written. Writability is tested
by creating and deleting a temporary file, which fails at once on a read-only filesystem or a
folder without permission (a `UsageError`, one line), instead of minutes later inside a writer.
An object-store URL (`gs://bucket/out`) is checked and written through epath: its folders are
prefixes that need not exist, and writability is a probe object written and deleted.
"""

from __future__ import annotations

import errno
import os

from etils import epath

from lip_jax.config import UsageError
from lip_jax.paths import PathLike, is_url, path as as_path, write_probe


def _probe(directory: epath.Path, flag: str, path: PathLike) -> None:
    """`directory` takes a file (lip_jax.paths.write_probe), else one UsageError line."""
    try:
        write_probe(directory)
    except Exception as e:
        if is_url(directory):  # gcsfs and friends raise their own types (HttpError, ...): any is a no
            reason = _reason(e)
        elif isinstance(e, OSError):
            reason = "read-only filesystem" if e.errno == errno.EROFS else e.strerror or type(e).__name__
        else:
            raise
        raise UsageError(f"{flag} {path}: cannot write in {directory} ({reason})") from None


def _client(p: epath.Path, flag: str, shown: PathLike) -> None:
    """An object-store URL needs its filesystem package (gs://: gcsfs, the `gcs` extra)."""
    try:
        p.exists()
    except ImportError as e:
        raise UsageError(f"{flag} {shown}: {e} (pip install 'lip-jax[gcs]' for gs://)") from None


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _existing_ancestor(directory: epath.Path) -> epath.Path:
    if is_url(directory):
        return directory  # an object store creates no folders: a prefix is written into directly
    d = directory
    while not d.exists():
        if d.parent == d:
            break
        d = d.parent
    return d


def check_file(path: PathLike, flag: str, overwrite: bool = False, make_parents: bool = False) -> None:
    """An output file: its folder is a writable directory (or, with `make_parents`, can be created
    under a writable one); an existing file only with `overwrite`; never an existing directory.
    A URL's folder is a prefix, writable if an object can be written there."""
    if not path:
        raise UsageError(f"{flag}: empty path")
    p = as_path(path)
    if is_url(p):
        _client(p, flag, path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, expected a file name")
    if (p.exists() or (not is_url(p) and os.path.lexists(p))) and not overwrite:
        raise UsageError(f"{flag} {path}: already exists; pass --overwrite to replace it")
    parent = p.parent
    if make_parents or is_url(p):
        base = _existing_ancestor(parent)
        if not is_url(base) and not base.is_dir():
            raise UsageError(f"{flag} {path}: {base} is not a directory")
        _probe(base, flag, path)
        return
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "no such directory"
        raise UsageError(f"{flag} {path}: {parent}: {what}")
    _probe(parent, flag, path)


def check_dir(path: PathLike, flag: str, shown: str | None = None) -> None:
    """An output directory that may exist (resumable): it is a writable directory, or it can be
    created (its nearest existing ancestor is a writable directory). Nothing is left behind.
    `shown`: the path the user gave, when `path` is derived from it (the folder of --to)."""
    shown = shown or path
    if not path:
        raise UsageError(f"{flag}: empty path")
    p = as_path(path)
    if is_url(p):
        _client(p, flag, shown)
        if p.is_file():
            raise UsageError(f"{flag} {shown}: {p} exists and is not a directory")
        _probe(p, flag, shown)
        return
    if p.exists():
        if not p.is_dir():
            raise UsageError(f"{flag} {shown}: {p} exists and is not a directory")
        _probe(p, flag, shown)
        return
    base = _existing_ancestor(p)
    if not base.is_dir():
        raise UsageError(f"{flag} {shown}: {base} is not a directory")
    _probe(base, flag, shown)


def distinct(*pairs: tuple[PathLike | None, str]) -> None:
    """Two outputs of one command are not the same file."""
    seen: dict[str, str] = {}
    for path, flag in pairs:
        if not path:
            continue
        key = str(as_path(path)) if is_url(path) else os.path.realpath(path)
        if key in seen:
            raise UsageError(f"{flag} {path}: the same file as {seen[key]}")
        seen[key] = flag


def save_npy(array, dest: PathLike) -> None:
    """`np.save` at `dest`, local or in an object store, written atomically (lip_jax.images.write)."""
    import io

    import numpy as np

    from lip_jax.images import write_atomic

    buf = io.BytesIO()
    np.save(buf, array)
    write_atomic(dest, buf.getvalue())
