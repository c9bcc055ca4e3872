"""`lip-jax convert` and `lip-jax reconstruct` end to end on a random-weight tiny model."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lip_jax.weights import torch_dfvqgan as T
from lip_jax.cli import main
from lip_jax.models import dfvqgan as D

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "dfvqgan_imagenet.py") + ":tiny"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Official-format .pth of a random tiny model, converted to orbax by the CLI."""
    root = tmp_path_factory.mktemp("ckpt")
    tm = T.randomize_(T.DFVQGAN(D.PRESETS["tiny"]), seed=3)
    pth = str(root / "tiny.pth")
    torch.save({"model": tm.state_dict()}, pth)
    ckpt = str(root / "orbax")
    assert main(["convert", "--config", CONFIG, "--from", pth, "--to", ckpt]) == 0
    return tm, pth, ckpt


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 10:24] = 255
    Image.fromarray(image).save(root / "img.png")
    Image.fromarray(mask).save(root / "mask.png")
    return root, image, mask > 0


def test_convert_round_trip_is_bit_exact(converted, tmp_path):
    tm, _, ckpt = converted
    back = str(tmp_path / "back.pth")
    assert main(["convert", "--config", CONFIG, "--from", ckpt, "--to", back]) == 0
    state = torch.load(back)["model"]
    fresh = T.DFVQGAN(D.PRESETS["tiny"])
    fresh.load_state_dict(state, strict=True)
    for k, v in tm.state_dict().items():
        assert torch.equal(state[k], v), k


def test_reconstruct_matches_the_model(converted, inputs, tmp_path):
    tm, _, ckpt = converted
    root, image, mask = inputs
    out, npy = str(tmp_path / "out.png"), str(tmp_path / "out.npy")
    rc = main(["reconstruct", "--config", CONFIG, "--ckpt", ckpt, "--image", str(root / "img.png"),
               "--mask", str(root / "mask.png"), "--out", out, "--npy", npy])
    assert rc == 0
    got = np.load(npy)
    assert got.shape == (1, 32, 32, 3) and got.dtype == np.float32
    # Independent computation with the PyTorch reference on the defective image.
    x = np.where(mask[..., None], 0.0, image / 127.5 - 1.0).astype(np.float32)
    with torch.no_grad():
        q, _, _, hs, hms = tm.encode(torch.from_numpy(x[None]).permute(0, 3, 1, 2), torch.from_numpy(mask[None]))
        want = tm.decode(q, hs, hms).permute(0, 2, 3, 1).numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    png = np.asarray(Image.open(out))
    np.testing.assert_array_equal(png, np.clip(np.round((got[0] + 1) * 127.5), 0, 255).astype(np.uint8))


def test_reconstruct_resizes_with_a_note(converted, tmp_path, capsys):
    _, _, ckpt = converted
    Image.fromarray(np.full((48, 64, 3), 100, np.uint8)).save(tmp_path / "big.png")
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 20:40] = 1
    Image.fromarray(m).save(tmp_path / "bigmask.png")
    rc = main(["reconstruct", "--config", CONFIG, "--ckpt", ckpt, "--image", str(tmp_path / "big.png"),
               "--mask", str(tmp_path / "bigmask.png"), "--out", str(tmp_path / "o.png")])
    assert rc == 0
    assert "reconstructing the 32x32 window at (14, 4) of the 64x48 image" in capsys.readouterr().err
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == (48, 64, 3)  # the image's own size: the window written back
    assert (out[:4] == 100).all() and (out[:, :14] == 100).all()  # outside the window: the photo's pixels


@pytest.mark.parametrize("bad", ["wrong_size", "not_an_image", "all_zero", "missing"])
def test_reconstruct_bad_mask_is_one_line_exit_2(converted, inputs, tmp_path, capsys, bad):
    _, _, ckpt = converted
    root, _, _ = inputs
    path = tmp_path / f"{bad}.png"
    if bad == "wrong_size":
        Image.fromarray(np.ones((16, 16), np.uint8)).save(path)
    elif bad == "not_an_image":
        path.write_text("this is not a PNG")
    elif bad == "all_zero":
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(path)
    rc = main(["reconstruct", "--config", CONFIG, "--ckpt", ckpt, "--image", str(root / "img.png"),
               "--mask", str(path), "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("lip-jax: error: ") and str(path) in err[0]
    assert not (tmp_path / "o.png").exists()


def test_convert_foreign_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    pth = str(tmp_path / "foreign.pth")
    torch.save({"model": {"encoder.conv_in.conv.weight": torch.zeros(1), "something.else": torch.zeros(2)}}, pth)
    rc = main(["convert", "--config", CONFIG, "--from", pth, "--to", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "something.else" in err[0] and "missing" in err[0] and pth in err[0]
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(pth, "rb").read()[:100])
    assert main(["convert", "--config", CONFIG, "--from", str(truncated), "--to", str(tmp_path / "o2")]) == 2
    assert "cannot read as a PyTorch checkpoint" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    """The installed entry point itself: one line on stderr, exit 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "lip_jax.cli", "reconstruct", "--config", CONFIG, "--ckpt",
                           str(tmp_path), "--image", str(tmp_path / "nope.png"), "--mask", "m.png", "--out", "o.png"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"lip-jax: error: {tmp_path / 'nope.png'}: image file not found"
