"""Every user mistake of inpaint / reconstruct / eval / convert is caught before the work starts: one
line `lip-jax: error: ...`, exit 2, no traceback, nothing written to an output. Outputs: an existing
file is replaced only with --overwrite, an unwritable destination fails at once. Eval: the settings an
output directory depends on include a checksum of the checkpoint's content.

The failing checks come before any model work, so most tests need no weights; the ones that must get
past the inputs stub the model calls or use the tiny random lip model of tests/test_eval_runner.py.

Read-only destinations: the tests run as root here, where `chmod 0o500` does not stop writes; as
root a folder of sysfs (/sys, which refuses new files with EACCES) stands for a read-only one.
"""

import os
import shutil
import struct
import tempfile
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from random_weights import random_params

from lip_jax.weights import load as AC
from lip_jax.app import evaluate as E
from lip_jax.app import pipeline as P
from lip_jax.config import load_config
from lip_jax.cli import main
from lip_jax.weights import clip as CC
from lip_jax.weights import dfvqgan as CV
from lip_jax.weights import mps2s as CM
from lip_jax.weights.torch_io import save_torch_checkpoint
from lip_jax.weights.store import save_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIP_CONFIG = os.path.join(REPO, "configs", "lip_maskcoco.py") + ":tiny"
VQ_CONFIG = os.path.join(REPO, "configs", "dfvqgan_imagenet.py") + ":tiny"
DEMO_CONFIG = os.path.join(REPO, "configs", "shapes_demo.py") + ":stage2"
EVAL_SETTINGS = ["--config.eval.sample_K=1", "--config.eval.best_n=1", "--config.eval.batch_size=1",
                 "--no-progress"]


def one_line_error(capsys, *expected):
    err = [e for e in capsys.readouterr().err.strip().splitlines() if not e.startswith("lip-jax eval:")]
    assert len(err) == 1 and err[0].startswith("lip-jax: error: "), err
    for text in expected:
        assert text in err[0], err
    return err[0]


def _can_create_in(directory):
    try:
        fd, path = tempfile.mkstemp(dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.remove(path)
    return True


@pytest.fixture
def readonly_dir(tmp_path):
    """A directory no file can be created in: chmod 0o500 for a normal user; as root (who ignores
    the mode bits) /sys, where sysfs refuses new files."""
    d = tmp_path / "ro"
    d.mkdir()
    os.chmod(d, 0o500)
    try:
        if not _can_create_in(d):
            yield str(d)
        elif os.path.isdir("/sys") and not _can_create_in("/sys"):
            yield "/sys"
        else:
            pytest.skip("no read-only directory to test with (root, and /sys is writable)")
    finally:
        os.chmod(d, 0o700)


class Loaded(Exception):
    """Raised by the stubbed weight loaders: the command got past its checks."""


def _no_loading(monkeypatch):
    def refuse(*a, **kw):
        raise Loaded("weights were about to be loaded")

    monkeypatch.setattr(P.Inpainter, "load", classmethod(lambda cls, *a, **kw: refuse()))
    monkeypatch.setattr(AC, "load_vqgan", refuse)


# --- files: a tiny image, masks, configs ----------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "img.png")
    m = np.zeros((32, 32), np.uint8)
    m[8:20, 10:24] = 255
    Image.fromarray(m).save(root / "mask.png")
    return root


def inpaint_argv(root, out, *extra, ckpt=None):
    return ["inpaint", "--config", LIP_CONFIG, "--ckpt", str(ckpt or root / "no-weights-needed"),
            "--image", str(root / "img.png"), "--mask", str(root / "mask.png"), "--text", "a red car",
            "--out", str(out), *extra]


def reconstruct_argv(root, out, *extra):
    return ["reconstruct", "--config", VQ_CONFIG, "--ckpt", str(root / "no-weights-needed"),
            "--image", str(root / "img.png"), "--mask", str(root / "mask.png"), "--out", str(out), *extra]


# --- existing outputs -------------------------------------------------------------------------------

def test_existing_out_is_refused_without_overwrite_and_replaced_with_it(files, tmp_path, monkeypatch, capsys):
    """reconstruct: the model calls are stubbed (the check, not the model, is under test)."""
    out, npy = tmp_path / "out.png", tmp_path / "out.npy"
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(out)
    before = out.read_bytes()
    resolution = load_config(VQ_CONFIG).vqgan.resolution
    monkeypatch.setattr(AC, "load_vqgan", lambda path, cfg: {"stub": path})
    monkeypatch.setattr(P, "reconstruct", lambda params, cfg, image, mask: np.zeros((resolution,) * 2 + (3,)))

    assert main(reconstruct_argv(files, out, "--npy", str(npy))) == 2
    one_line_error(capsys, str(out), "already exists", "--overwrite")
    assert out.read_bytes() == before and not npy.exists()

    assert main(reconstruct_argv(files, out, "--npy", str(npy), "--overwrite")) == 0
    assert np.asarray(Image.open(out)).shape == (resolution, resolution, 3) and npy.exists()
    capsys.readouterr()
    # --npy existing: refused as well, before anything is written
    os.remove(out)
    assert main(reconstruct_argv(files, out, "--npy", str(npy))) == 2
    one_line_error(capsys, str(npy), "already exists")
    assert not out.exists()


def test_inpaint_existing_out_or_grid_refused_before_loading(files, tmp_path, monkeypatch, capsys):
    _no_loading(monkeypatch)
    out, grid = tmp_path / "out.png", tmp_path / "grid.png"
    grid.write_bytes(b"an older grid")
    assert main(inpaint_argv(files, out, "--grid", str(grid))) == 2
    one_line_error(capsys, "--grid", str(grid), "already exists")
    assert not out.exists() and grid.read_bytes() == b"an older grid"
    with pytest.raises(Loaded):  # with --overwrite the command goes on to the weights
        main(inpaint_argv(files, out, "--grid", str(grid), "--overwrite"))
    assert main(inpaint_argv(files, out, "--grid", str(out))) == 2
    one_line_error(capsys, "the same file as --out")


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """The tiny CLIP as an OpenAI state dict and as an orbax directory (cheap: no model init)."""
    root = tmp_path_factory.mktemp("clip")
    params = random_params(CC.param_template("tiny"), 3)
    save_torch_checkpoint(CC.clip_to_openai(params), str(root / "clip.pt"), wrap_model=False)
    save_params(str(root / "orbax"), params)
    return root


def test_convert_existing_pth_refused_without_overwrite(clip_files, tmp_path, capsys):
    import torch

    dst = tmp_path / "clip.pth"
    dst.write_bytes(b"precious")
    args = ["convert", "--from", str(clip_files / "orbax"), "--to", str(dst), "--clip-config", "tiny"]
    assert main(args) == 2
    one_line_error(capsys, str(dst), "already exists", "--overwrite")
    assert dst.read_bytes() == b"precious"
    assert main(args + ["--overwrite"]) == 0
    state = torch.load(dst, weights_only=True)
    assert "visual.conv1.weight" in state
    # an existing orbax directory: replaced only with --overwrite, and only by an orbax directory
    orbax = tmp_path / "orbax"
    to_orbax = ["convert", "--from", str(clip_files / "clip.pt"), "--to", str(orbax), "--clip-config", "tiny"]
    assert main(to_orbax) == 0
    capsys.readouterr()
    assert main(to_orbax) == 2
    one_line_error(capsys, "already exists", "--overwrite")
    assert main(to_orbax + ["--overwrite"]) == 0
    capsys.readouterr()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    to_notes = to_orbax[:4] + [str(tmp_path / "notes")] + to_orbax[5:] + ["--overwrite"]
    assert main(to_notes) == 2
    one_line_error(capsys, "not an orbax checkpoint")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


# --- unwritable destinations ----------------------------------------------------------------------

def test_convert_to_a_read_only_place_fails_in_seconds(clip_files, readonly_dir, capsys):
    for dst in (os.path.join(readonly_dir, "clip"), os.path.join(readonly_dir, "clip.pth")):
        src = clip_files / ("clip.pt" if not dst.endswith(".pth") else "orbax")
        t0 = time.perf_counter()
        rc = main(["convert", "--from", str(src), "--to", dst, "--clip-config", "tiny"])
        took = time.perf_counter() - t0
        assert rc == 2
        one_line_error(capsys, dst, "cannot write")
        assert took < 10, took
        assert not os.path.exists(dst)


def test_convert_to_under_a_file_fails_in_seconds(clip_files, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    dst = str(tmp_path / "afile" / "clip")
    t0 = time.perf_counter()
    assert main(["convert", "--from", str(clip_files / "clip.pt"), "--to", dst, "--clip-config", "tiny"]) == 2
    assert time.perf_counter() - t0 < 10
    one_line_error(capsys, dst, "not a directory")


@pytest.mark.parametrize("flag", ["--out", "--grid"])
def test_inpaint_unwritable_or_missing_folder_fails_before_inference(files, tmp_path, readonly_dir, monkeypatch,
                                                                      capsys, flag):
    _no_loading(monkeypatch)
    out = tmp_path / "out.png"
    for bad in (str(tmp_path / "no-such-dir" / "x.png"), os.path.join(readonly_dir, "x.png")):
        argv = inpaint_argv(files, out, "--grid", bad) if flag == "--grid" else inpaint_argv(files, bad)
        assert main(argv) == 2
        one_line_error(capsys, flag, bad)
        assert not out.exists()


def test_reconstruct_npy_in_a_missing_folder_fails_before_loading(files, tmp_path, monkeypatch, capsys):
    _no_loading(monkeypatch)
    npy = tmp_path / "nope" / "o.npy"
    assert main(reconstruct_argv(files, tmp_path / "o.png", "--npy", str(npy))) == 2
    one_line_error(capsys, "--npy", "no such directory")
    assert not (tmp_path / "o.png").exists()


# --- text -------------------------------------------------------------------------------------------

def test_text_that_is_not_utf8_is_one_line(files, tmp_path, monkeypatch, capsys):
    _no_loading(monkeypatch)
    argv = inpaint_argv(files, tmp_path / "o.png")
    argv[argv.index("--text") + 1] = b"caf\xe9".decode("utf-8", "surrogateescape")  # as Python reads argv
    assert main(argv) == 2
    one_line_error(capsys, "--text", "not valid UTF-8", "0xe9")


def test_guidance_file_that_is_not_utf8_is_a_data_error(tmp_path):
    from lip_jax.data import open_source
    from lip_jax.data.errors import DataError

    write_dataset(tmp_path / "data", n=2)
    bad = tmp_path / "data" / "guidance" / "0001.txt"
    bad.write_bytes(b"a caf\xe9 at night\n")
    src = open_source("mask_eval", root=str(tmp_path / "data"))
    assert src[0]["text"] == "a red circle"
    with pytest.raises(DataError, match="0001.txt: not UTF-8"):
        src[1]


# --- decompression bombs ----------------------------------------------------------------------------

def _png_header_only(path, width, height):
    """A PNG that declares width x height (1-bit grey) with almost no data: a few hundred bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_decompression_bomb_image_is_one_line(files, tmp_path, monkeypatch, capsys):
    _no_loading(monkeypatch)
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 30000, 30000)
    argv = inpaint_argv(files, tmp_path / "o.png")
    argv[argv.index("--image") + 1] = str(bomb)
    assert main(argv) == 2
    one_line_error(capsys, str(bomb), "too many pixels")


# --- config overrides -------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_float_override_is_one_line(capsys, value):
    assert main(["train", "--config", DEMO_CONFIG, f"--config.train.lr={value}", "--print-config"]) == 2
    one_line_error(capsys, f"--config.train.lr={value}", "not a finite number")


def test_inpaint_unknown_decoder_is_one_line_before_loading(files, tmp_path, monkeypatch, capsys):
    _no_loading(monkeypatch)
    assert main(inpaint_argv(files, tmp_path / "o.png", "--config.sample.decoder=jacobi")) == 2
    one_line_error(capsys, "sample.decoder='jacobi': not one of auto, sequential, parallel")


def test_inpaint_temperature_must_be_finite(files, tmp_path, monkeypatch, capsys):
    _no_loading(monkeypatch)
    assert main(inpaint_argv(files, tmp_path / "o.png", "--temperature", "inf")) == 2
    one_line_error(capsys, "--temperature")


# --- eval ---------------------------------------------------------------------------------------------

def write_dataset(d, n=3, size=32):
    rng = np.random.default_rng(0)
    for sub in ("gt", "mask", "guidance"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    for i in range(n):
        m = np.zeros((size, size), np.uint8)
        m[4:20, 4:12 + 4 * i] = 255
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(d, "gt", f"{i:04d}.png"))
        Image.fromarray(m).save(os.path.join(d, "mask", f"{i:04d}.mask.png"))
        with open(os.path.join(d, "guidance", f"{i:04d}.txt"), "w") as f:
            f.write(f"a {['red', 'green', 'blue'][i % 3]} circle\n")


@pytest.fixture(scope="module")
def lip(tmp_path_factory):
    """The tiny NUWA-LIP of configs/lip_maskcoco.py:tiny, random weights, twice (seeds 1, 2 and 3, 4)."""
    root = tmp_path_factory.mktemp("lip")
    cfg = load_config(LIP_CONFIG)
    vq_t, mps_t = CV.param_template(cfg.vqgan), CM.param_template(cfg.mps)
    save_params(str(root / "a"), {"mps": random_params(mps_t, 2), "vqgan": random_params(vq_t, 1)})
    save_params(str(root / "b"), {"mps": random_params(mps_t, 4), "vqgan": random_params(vq_t, 3)})
    write_dataset(root / "data")
    return root


def eval_argv(lip, ckpt, out, *extra, data=None):
    return ["eval", "--config", LIP_CONFIG, "--ckpt", str(ckpt), "--data", str(data or lip / "data"),
            "--out", str(out), *EVAL_SETTINGS, *extra]


@pytest.mark.parametrize("override,match", [
    ("--config.eval.seed=-1", "config.eval.seed=-1: out of range [0, 4294967295]"),
    ("--config.eval.seed=4294967296", "config.eval.seed=4294967296: out of range [0, 4294967295]"),
    ("--config.eval.sample_K=0", "config.eval.sample_K=0: out of range [1, "),
    ("--config.eval.top_k=0", "config.eval.top_k=0: out of range [1, 2147483647]"),
    ("--config.eval.batch_size=0", "config.eval.batch_size=0: out of range [1, "),
    ("--config.eval.max_examples=-1", "config.eval.max_examples=-1: out of range [0, 2147483647]"),
    ("--config.eval.temperature=0", "finite eval.temperature > 0"),
    ("--config.eval.temperature=nan", "not a finite number"),
    ("--config.sample.decoder=jacobi", "sample.decoder='jacobi': not one of auto, sequential, parallel"),
])
def test_eval_bad_setting_writes_nothing(lip, tmp_path, capsys, override, match):
    out = tmp_path / "out"
    assert main(eval_argv(lip, lip / "a", out, override)) == 2
    one_line_error(capsys, match)
    assert not out.exists()


def test_eval_guidance_not_utf8_fails_before_anything_is_written(lip, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(lip / "data", data)
    (data / "guidance" / "0002.txt").write_bytes(b"\xff\xfea\x00 \x00c\x00a\x00t\x00\n\x00")  # UTF-16
    out = tmp_path / "out"
    assert main(eval_argv(lip, lip / "a", out, data=data)) == 2
    one_line_error(capsys, str(data / "guidance" / "0002.txt"), "not UTF-8")
    assert not out.exists()


def test_eval_unwritable_out_is_one_line(lip, readonly_dir, capsys):
    out = os.path.join(readonly_dir, "eval")
    assert main(eval_argv(lip, lip / "a", out)) == 2
    one_line_error(capsys, "--out", out, "cannot write")


class Interrupt(Exception):
    pass


def test_eval_rerun_with_other_weights_at_the_same_path_is_refused(lip, tmp_path, monkeypatch, capsys):
    """The first run is stopped at sampling (eval_settings.json is written by then); its weights are
    then replaced in place: the rerun is refused in one line before any weight is read."""
    def stop(*a, **kw):
        raise Interrupt("stopped at sampling")

    monkeypatch.setattr(E, "generate", stop)
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    shutil.copytree(lip / "a", ckpt)
    with pytest.raises(Interrupt):
        main(eval_argv(lip, ckpt, out))
    assert (out / E.SETTINGS).is_file()
    shutil.rmtree(ckpt)
    shutil.copytree(lip / "b", ckpt)
    loads = []
    monkeypatch.setattr(AC, "load_lip", lambda *a: loads.append(a))
    assert main(eval_argv(lip, ckpt, out)) == 2
    one_line_error(capsys, "other settings (checkpoint_fingerprint: ")
    assert loads == []
    # the first weights back (a copy: other file times, the same bytes): the run goes on
    monkeypatch.undo()
    monkeypatch.setattr(E, "generate", stop)
    shutil.rmtree(ckpt)
    shutil.copytree(lip / "a", ckpt)
    with pytest.raises(Interrupt):
        main(eval_argv(lip, ckpt, out))


def test_fingerprint_follows_content_not_path(lip, tmp_path):
    a = AC.fingerprint(str(lip / "a"))
    shutil.copytree(lip / "a", tmp_path / "copy")
    assert AC.fingerprint(str(tmp_path / "copy")) == a
    assert AC.fingerprint(str(lip / "b")) != a
    work = tmp_path / "work"  # a training workdir stands for its params/
    (work / "checkpoints").mkdir(parents=True)
    shutil.copytree(lip / "a", work / "params")
    assert AC.fingerprint(str(work)) == a
    f = tmp_path / "w.pth"
    f.write_bytes(b"x" * 100)
    one = AC.fingerprint(str(f))
    f.write_bytes(b"x" * 99 + b"y")
    assert AC.fingerprint(str(f)) != one


# --- integer arguments: one range rule (lip_jax.ranges) -------------------------------------------

TRAIN_CONFIG = os.path.join(REPO, "configs", "test_stage2.py")


@pytest.fixture
def small_machine(monkeypatch):
    """Resource bounds as on an 8 GiB, 2-CPU host, whatever runs the tests."""
    from lip_jax import ranges

    monkeypatch.setattr(ranges, "memory_bytes", lambda: 8 << 30)
    monkeypatch.setattr(ranges, "cpus", lambda: 2)


@pytest.mark.parametrize("flag,value,match", [
    ("--seed", str(2**64), "--seed=18446744073709551616: out of range [0, 4294967295]"),  # was OverflowError
    ("--seed", "-1", "--seed=-1: out of range [0, 4294967295]"),
    ("--num-samples", "0", "--num-samples=0: out of range [1, "),
    ("--num-samples", str(10**9), "--num-samples=1000000000: out of range [1, "),  # candidates in memory
    ("--top-k", str(2**31), "--top-k=2147483648: out of range [1, 2147483647]"),
    ("--config.eval.top_k", str(2**40), "config.eval.top_k=1099511627776: out of range [1, 2147483647]"),
    ("--config.mps.dim", str(10**9), "config.mps.dim=1000000000: out of range [1, 65536]"),
])
def test_inpaint_integer_out_of_range_is_one_line_before_loading(files, tmp_path, monkeypatch, small_machine,
                                                                   capsys, flag, value, match):
    _no_loading(monkeypatch)
    out = tmp_path / "o.png"
    extra = [f"{flag}={value}"] if flag.startswith("--config.") else [flag, value]
    assert main(inpaint_argv(files, out, *extra)) == 2
    one_line_error(capsys, match)
    assert not out.exists()


@pytest.mark.parametrize("override,match", [
    (f"seed={2**63}", "config.seed=9223372036854775808: out of range [0, 4294967295]"),  # C long overflow
    (f"data.seed={2**32}", "config.data.seed=4294967296: out of range [0, 4294967295]"),  # jax would wrap it to 0
    ("data.workers=1000000", "config.data.workers=1000000: out of range [0, "),  # processes without bound
    ("data.batch_size=1000000000", "config.data.batch_size=1000000000: out of range [1, "),
    ("data.workers=2", None),  # 2 always fits ...
    ("data.source_kwargs.num_examples=0", "config.data.source_kwargs.num_examples=0: out of range [1, 2147483647]"),
    ("data.source_kwargs.image_size=1000000", "config.data.source_kwargs.image_size=1000000: out of range [1, 16384]"),
    ("train.total_steps=2147483648", "config.train.total_steps=2147483648: out of range [1, 2147483647]"),
    ("mesh.data=-2", "config.mesh.data=-2: out of range [-1, 65536]"),
    ("distributed.process_id=-5", "config.distributed.process_id=-5: out of range [-1, 65536]"),
    ("distributed.coordinator_address=localhost:70000",
     "config.distributed.coordinator_address port=70000: out of range [1, 65535]"),
    (f"vqgan.ch_mult=(1, 2, {2**40})", "config.vqgan.ch_mult[2]=1099511627776: out of range [1, 1024]"),
])
def test_train_integer_out_of_range_is_one_line_before_any_work(tmp_path, small_machine, capsys, override, match):
    workdir = tmp_path / "run"
    extra = ["--config.data.batch_size=4000"] if match is None else []  # ... with a batch that does not
    assert main(["train", "--config", TRAIN_CONFIG, "--workdir", str(workdir), f"--config.{override}", *extra]) == 2
    one_line_error(capsys, match or "config.data.batch_size=4000 with data.workers=2: 24000 examples in memory")
    assert not workdir.exists()


def test_eval_and_demo_integers_out_of_range(lip, tmp_path, small_machine, capsys):
    out = tmp_path / "out"
    assert main(eval_argv(lip, lip / "a", out, "--config.eval.batch_size=200", "--config.eval.sample_K=200")) == 2
    one_line_error(capsys, "eval.batch_size=200 x eval.sample_K=200: 40000 candidates in memory")
    assert not out.exists()
    for images, match in (("0", "--images=0: out of range [1, "), (str(10**12), "--images=1000000000000: out of range")):
        assert main(["demo", "--config", DEMO_CONFIG.split(":")[0], "--workdir", str(tmp_path / "d"),
                     "--images", images]) == 2
        one_line_error(capsys, match)
    assert not (tmp_path / "d").exists()


def test_python_api_integers_out_of_range_are_value_errors(files, tmp_path):
    from lip_jax import ranges
    from lip_jax.train.trainer import train

    inpainter = object.__new__(P.Inpainter)  # no weights: the call must refuse before using them
    inpainter.config = load_config(LIP_CONFIG)
    with pytest.raises(ValueError, match=r"seed=18446744073709551616: out of range \[0, 4294967295\]"):
        inpainter(str(files / "img.png"), str(files / "mask.png"), "a red car", seed=2**64)
    with pytest.raises(ValueError, match=r"num_samples=0: out of range"):
        inpainter(str(files / "img.png"), str(files / "mask.png"), "a red car", num_samples=0)
    c = load_config(TRAIN_CONFIG)
    c.seed = 2**63  # refused before the frozen DF-VQGAN (none given) is looked for
    with pytest.raises(ValueError, match=r"config.seed=9223372036854775808: out of range"):
        train(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    assert issubclass(ranges.RangeError, ValueError)


def test_every_integer_of_every_config_and_flag_has_a_range():
    """One table: no integer a user can set falls to the int32 fallback unnoticed."""
    import argparse
    import glob

    from lip_jax import ranges
    from lip_jax.cli import build_parser

    names = set()

    def walk(node):
        for key in node.keys():
            v = node[key]
            if hasattr(v, "keys"):
                walk(v)
            elif isinstance(v, (int, tuple, list)) and not isinstance(v, bool):
                if isinstance(v, int) or any(isinstance(x, int) and not isinstance(x, bool) for x in v):
                    names.add(key)

    for spec in glob.glob(os.path.join(REPO, "configs", "*.py")):
        for arg in (None, "tiny", "stage1", "stage2", "mid", "smoke"):
            try:
                config = load_config(f"{spec}:{arg}" if arg else spec)
            except Exception:  # noqa: BLE001 - not every config has every entry
                continue
            walk(config)
            ranges.check_config(config)  # and every shipped value is in its range
    parser = build_parser()
    for sub in next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices.values():
        names |= {a.dest for a in sub._actions if a.type is int}
    assert names and not sorted(n for n in names if n not in ranges.RANGES)
