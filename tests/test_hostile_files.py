"""Hostile weight files: a TorchScript archive that runs code under torch.jit.load, and data.pkl records
rewritten to call os.system / exec or to read past a storage, are refused as data (one line, exit 2,
the file named) and nothing of theirs runs."""

import ast
import os
import pickle
import warnings
import zipfile
from typing import Tuple

import numpy as np
import pytest
import torch

import torch_clip as T
from lip_jax.weights.load import load_clip_any
from lip_jax.cli import main
from lip_jax.weights.torch_io import load_torch_checkpoint, ConversionError
from lip_jax.models import clip as C


class Evil(torch.nn.Module):
    """Its TorchScript __setstate__ (run by torch.jit.load) creates the file named in its state."""

    def __init__(self, marker: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))
        self.marker = marker

    def forward(self, x):
        return x + self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:
        self.marker = state[1]
        self.training = state[2]
        created = torch.from_file(state[1], True, 4)  # shared=True: creates the file
        created.fill_(1.0)
        self.weight = state[0] + created[:2] * 0


def _evil_archive(path, marker):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(Evil(str(marker))).save(str(path))
    return str(path)


def _one_error_line(capsys, path):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lip-jax: error: ") and str(path) in err[0], err
    return err[0]


def test_the_payload_is_live_under_torch_jit_load(tmp_path):
    """What the library used to do with `--clip F`: torch.jit.load runs the archive's code."""
    path = _evil_archive(tmp_path / "evil.pt", tmp_path / "ran")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(path)
    assert os.path.exists(tmp_path / "ran")


@pytest.mark.parametrize("kind", [["--kind", "clip"], []], ids=["kind-clip", "detected"])
def test_convert_refuses_code_in_a_torchscript_archive(tmp_path, capsys, kind):
    marker = tmp_path / "ran"
    path = _evil_archive(tmp_path / "evil.pt", marker)
    assert main(["convert", "--from", path, "--to", str(tmp_path / "out"), *kind]) == 2
    line = _one_error_line(capsys, path)
    assert not marker.exists() and not (tmp_path / "out").exists(), line


def test_clip_for_inpaint_and_eval_refuses_code(tmp_path):
    """`--clip F` of inpaint and eval goes through load_clip_any."""
    marker = tmp_path / "ran"
    path = _evil_archive(tmp_path / "evil.pt", marker)
    with pytest.raises(ConversionError, match=r"evil\.pt: TorchScript archive refused: .*__setstate__"):
        load_clip_any(path, "tiny")
    assert not marker.exists()


# --- data.pkl rewritten inside an honest archive ----------------------------------------------------

@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("ts") / "ViT-tiny.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(T.randomize_(T.CLIP(C.PRESETS["tiny"]), seed=2)).save(path)
    return path


def _rewrite(src, dst, change):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, change(data) if info.filename.endswith("/data.pkl") else data)
    return str(dst)


class _Call:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _patch(old, new):
    def change(data):
        assert data.count(old) >= 1, old
        return data.replace(old, new, 1)
    return change


def _crafted(marker):
    return {
        "os.system": (lambda _: pickle.dumps(_Call(os.system, f"touch {marker}"), protocol=2), r"global \w+\.system"),
        "exec": (lambda _: pickle.dumps(_Call(exec, f"open({str(marker)!r}, 'w')"), protocol=2),
                 r"global \w+\.exec"),
        "posix.system in a module": (
            lambda d: d.replace(b"c__torch__.torch_clip\nCLIP\n", b"cposix\nsystem\n", 1), r"global posix\.system"),
        # positional_embedding (16, 32), stride (32, 1) -> (255, 1): would read past its 512 floats
        "stride past the storage": (_patch(b"K\x10K\x20t(K\x20K\x01t", b"K\x10K\x20t(K\xffK\x01t"),
                                    "reaches past its storage"),
        "storage key outside data/": (_patch(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x00/"), "persistent id"),
        # storage 0 declared as 513 floats, 2048 bytes in data/0: sizes are checked before anything is read
        "storage size": (_patch(b"M\x00\x02t", b"M\x01\x02t"), r"is 2048 bytes, not 513 x 4"),
        "not a module": (lambda _: pickle.dumps({"visual.conv1.weight": 1}, protocol=2), "not a module"),
        "unknown tensor rebuild": (_patch(b"torch._utils\n_rebuild_tensor_v2", b"torch._utils\n_rebuild_qtensor"),
                                   r"global torch\._utils\._rebuild_qtensor"),
    }


@pytest.mark.parametrize("case", list(_crafted("m")))
def test_rewritten_data_pkl_is_refused(honest, tmp_path, case):
    marker = tmp_path / "ran"
    change, match = _crafted(marker)[case]
    path = _rewrite(honest, tmp_path / "crafted.pt", change)
    with pytest.raises(ConversionError, match=f"crafted\\.pt: TorchScript archive refused: .*{match}"):
        load_torch_checkpoint(path)
    assert not marker.exists()


def test_rewritten_archive_through_the_cli(honest, tmp_path, capsys):
    marker = tmp_path / "ran"
    path = _rewrite(honest, tmp_path / "crafted.pt", _crafted(marker)["os.system"][0])
    assert main(["convert", "--kind", "clip", "--from", path, "--to", str(tmp_path / "out")]) == 2
    assert "refused" in _one_error_line(capsys, path)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_honest_archive_still_reads(honest):
    state = load_torch_checkpoint(honest)
    assert state["visual.conv1.weight"].shape == (32, 3, 8, 8) and state["visual.conv1.weight"].dtype == np.float32


def _dotted(node):
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def test_no_code_loading_calls_in_the_package():
    """No torch.jit.load, no unrestricted unpickling, no pickled numpy arrays anywhere in lip_jax."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lip_jax")
    bad = []
    for dirpath, _, names in os.walk(root):
        for name in (n for n in names if n.endswith(".py")):
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                fn = _dotted(node.func)
                kw = {k.arg: k.value for k in node.keywords}
                unsafe_kw = [k for k, v in (("allow_pickle", True), ("weights_only", False))
                             if isinstance(kw.get(k), ast.Constant) and kw[k].value is v]
                weights_only = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if (fn.endswith("jit.load") or fn in ("pickle.load", "pickle.loads") or unsafe_kw
                        or (fn == "torch.load" and not weights_only)):
                    bad.append(f"{os.path.relpath(path, root)}:{node.lineno}: {fn} {unsafe_kw}")
    assert not bad, bad


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_pickle_payload_is_refused_without_advice_to_load_it_unsafely(tmp_path, capsys, zip_format):
    import pickle

    import torch

    marker, path = tmp_path / "ran", tmp_path / "evil.pth"
    if zip_format:
        torch.save({"w": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=4))
    assert main(["convert", "--from", str(path), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evil.pth: refused: the file holds objects other than tensors" in err[0], err
    assert "weights_only" not in err[0] and not marker.exists()
