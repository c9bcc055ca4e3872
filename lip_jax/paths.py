"""Every path the library reads or writes is an `etils.epath.Path`: a local path and an object-store
URL (`gs://bucket/run`) alike, so a pod's workdir, checkpoints, logs and outputs land where the
user asked. A URL is never turned into a local path (`os.path.abspath("gs://b")` would make it
`<cwd>/gs:/b`, on a boot disk that vanishes with the VM)."""

from __future__ import annotations

import os
import tempfile
import uuid

from etils import epath

PathLike = str | os.PathLike


def is_url(p: PathLike) -> bool:
    """`gs://...`, `s3://...`: a path that no local call (`os.path`, `open`) may touch."""
    return "://" in str(p)


def path(p: PathLike) -> epath.Path:
    """`p` as an epath: a local path absolute and user-expanded (orbax needs absolute paths), a URL
    unchanged."""
    if isinstance(p, epath.Path) and is_url(p):
        return p
    s = os.fspath(p)
    return epath.Path(s) if is_url(s) else epath.Path(os.path.abspath(os.path.expanduser(s)))


def write_probe(directory: epath.Path) -> None:
    """Create and delete an empty file in `directory` (an existing local directory, or any prefix of
    an object store, where folders need not exist): proves writability before any work. Raises what
    the filesystem raises (OSError locally; object-store clients their own types)."""
    if is_url(directory):
        probe = directory / f".lip-jax-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        try:
            probe.unlink()
        except Exception:  # the write proved it; a leftover probe object is harmless
            pass
        return
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".lip-jax-probe-")
    os.close(fd)
    try:
        os.remove(tmp)
    except OSError:
        pass
