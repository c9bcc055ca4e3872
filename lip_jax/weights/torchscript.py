"""Weights out of a TorchScript archive (OpenAI's `ViT-B-32.pt`) without torch.jit and without running it.

Loading with `torch.jit` runs code from the file (a module's TorchScript `__setstate__`). Here the archive is
read as data: `<name>/data.pkl` is unpickled with an allow-list (tensor rebuilds, storage types,
OrderedDict, TorchScript's list helpers, and an inert placeholder for every `__torch__.*` class), the
tensors are numpy arrays cut from the `<name>/data/<key>` storage bytes, and the parameter and buffer
names of each module class are read as literal lists from its `code/` source, which is never run.
The result is what torch.jit's loader and `.state_dict()` give, as numpy arrays.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import io
import pickle
import re
import zipfile

import numpy as np

from lip_jax.weights.errors import ConversionError
from lip_jax.paths import PathLike, is_url, path as as_path

_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "LongStorage": "i8",
           "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
           "BFloat16Storage": "bfloat16"}


class _Refused(Exception):
    pass


class _Storage:
    def __init__(self, dtype):
        self.dtype = dtype


class _Object:
    """Inert stand-in for a `__torch__.*` object: keeps the pickled state, calls nothing from the file."""

    _qualname = ""
    state = None

    def __setstate__(self, state):
        self.state = state


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not (isinstance(storage, np.ndarray) and storage.ndim == 1 and storage.flags.c_contiguous) or not all(
            isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)) or len(size) != len(stride):
        raise _Refused("malformed tensor")
    end = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset
    if end > storage.size:
        raise _Refused(f"tensor {tuple(size)} at offset {offset} reaches past its storage of {storage.size}")
    if not all(size):
        return np.zeros(size, storage.dtype)
    view = np.lib.stride_tricks.as_strided(storage[offset:], tuple(size),
                                           tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view)


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): lambda data, requires_grad=False, hooks=None: data,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): lambda value, type_str: value,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.byteorder = archive, prefix, byteorder
        self.storages: dict[str, np.ndarray] = {}
        self.classes: dict[str, type] = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _DTYPES:
            return _Storage(_DTYPES[name])
        if (module == "__torch__" or module.startswith("__torch__.")) and name.isidentifier():
            qual = f"{module}.{name}"
            if qual not in self.classes:
                self.classes[qual] = type(name, (_Object,), {"_qualname": qual})
            return self.classes[qual]
        raise _Refused(f"global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)
                and isinstance(pid[2], str) and re.fullmatch(r"\w+", pid[2]) and type(pid[4]) is int):
            raise _Refused(f"persistent id {pid!r:.80}")
        key = pid[2]
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            if pid[1].dtype == "bfloat16":
                import ml_dtypes

                dtype = np.dtype(ml_dtypes.bfloat16)
            else:
                dtype = np.dtype(pid[1].dtype).newbyteorder("<" if self.byteorder == "little" else ">")
            try:
                size = self.archive.getinfo(name).file_size
            except KeyError:
                raise _Refused(f"no storage {name}") from None
            if size != pid[4] * dtype.itemsize:  # checked before reading: no zip bomb
                raise _Refused(f"storage {name} is {size} bytes, not {pid[4]} x {dtype.itemsize}")
            raw = self.archive.read(name)
            self.storages[key] = np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="), copy=False)
        return self.storages[key]


def _names(archive: zipfile.ZipFile, prefix: str, qualname: str, cache: dict) -> tuple | None:
    """(parameter names, buffer names or None) of a module class, read as literals from its code/ source;
    None for a class that is no module (not part of the state dict)."""
    if qualname not in cache:
        module, _, name = qualname.rpartition(".")
        path = f"{prefix}code/{module.replace('.', '/')}.py"
        try:
            source = archive.read(path).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            raise _Refused(f"no source {path} for {qualname}") from None
        body = re.search(rf"^class {re.escape(name)}\((\w*)\):\n((?:[ \t].*\n?|\n)*)", source, re.M)
        if not body:
            raise _Refused(f"no class {qualname} in {path}")
        if body.group(1) != "Module":
            cache[qualname] = None
            return None
        if re.search(r"^  def __setstate__\(", body.group(2), re.M):
            raise _Refused(f"{qualname} has its own __setstate__ (code in the file)")
        found = []
        for attr in ("__parameters__", "__buffers__"):
            m = re.search(rf"^  {attr} = (\[.*\])$", body.group(2), re.M)
            value = ast.literal_eval(m.group(1)) if m else None  # a literal list of strings, never run
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise _Refused(f"{qualname}.{attr} is not a list of names")
            found.append(value)
        if found[0] is None:
            raise _Refused(f"{qualname} has no __parameters__ in {path}")
        cache[qualname] = tuple(found)
    return cache[qualname]


def _walk(module, prefix: str, archive, root: str, cache: dict, out: dict) -> None:
    names = _names(archive, root, module._qualname, cache)
    if names is None:
        if not prefix:
            raise _Refused(f"top-level {module._qualname} is not a module")
        return
    if not isinstance(module.state, dict):
        raise _Refused(f"{module._qualname} has no attribute dict (its own __setstate__)")
    state = module.state
    params, buffers = names
    if buffers is None:  # old archives: every other tensor attribute
        buffers = [k for k, v in state.items() if isinstance(v, np.ndarray) and k not in params]
    for name in [*params, *buffers]:
        value = state.get(name)
        if value is not None:
            if not isinstance(value, np.ndarray):
                raise _Refused(f"{module._qualname}.{name} is not a tensor")
            out[prefix + name] = value
    for name, value in state.items():
        if isinstance(value, _Object):
            _walk(value, f"{prefix}{name}.", archive, root, cache, out)


@contextlib.contextmanager
def _zip(path: PathLike):
    """The archive at a local path, or read from an object store through a seekable epath file."""
    if is_url(path):
        with as_path(path).open("rb") as f, zipfile.ZipFile(f) as z:
            yield z
    else:
        with zipfile.ZipFile(path) as z:
            yield z


def is_torchscript(path: PathLike) -> bool:
    """A zip archive with `<name>/constants.pkl` (torch's own test for a TorchScript archive)."""
    try:
        with _zip(path) as z:
            return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_state_dict(path: PathLike) -> dict[str, np.ndarray]:
    """The state dict torch.jit's loader would give, as numpy arrays, read as data; anything else is refused."""
    try:
        with _zip(path) as archive:
            pkls = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pkls) != 1:
                raise _Refused(f"{len(pkls)} data.pkl records")
            root = pkls[0][: -len("data.pkl")]
            try:
                byteorder = archive.read(root + "byteorder").decode().strip()
            except KeyError:
                byteorder = "little"
            if byteorder not in ("little", "big"):
                raise _Refused(f"byteorder {byteorder!r:.20}")
            obj = _Unpickler(archive.read(pkls[0]), archive, root, byteorder).load()
            if not isinstance(obj, _Object):
                raise _Refused(f"top-level {type(obj).__name__}, not a module")
            out: dict[str, np.ndarray] = {}
            _walk(obj, "", archive, root, {}, out)
            return out
    except _Refused as e:
        raise ConversionError(f"{path}: TorchScript archive refused: {e}") from None
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
            IndexError, AttributeError, RecursionError, MemoryError, SyntaxError) as e:
        raise ConversionError(f"{path}: unreadable TorchScript archive ({type(e).__name__}: {e})"[:300]) from None
