"""`lip-jax serve`: the function behind the Inpaint button on every bad input (fast, no browser), the
command's exits (bad --ckpt, port in use, gradio missing, --host 0.0.0.0's warning, Ctrl-C = 0), and
the page in a real browser (Debian's Chromium driven by Playwright) on a tiny random-weights model:
upload, draw, inpaint, download; a bad upload's message; no request leaves localhost."""

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from random_weights import save_stage2
from lip_jax.cli import main
from lip_jax.config import load_config

import gradio as gr  # noqa: E402  (in the test extra: never skipped)
from lip_jax.app import web  # noqa: E402
from lip_jax.app.photo import Window  # noqa: E402
from lip_jax.app.pipeline import InpaintOutput  # noqa: E402
from lip_jax.models.mps2s import MPSConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "shapes_demo.py:stage2")
CHROMIUM = "/usr/bin/chromium"
W, H = 50, 40  # the photo: not square, smaller than the model's 32 px window on one side only


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A stage-2 checkpoint saved with its config (random weights), as `lip-jax train` leaves it."""
    config = load_config(CONFIG)
    root = tmp_path_factory.mktemp("serve")
    save_stage2(root / "params", config)
    return str(root)


def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def png(path, array) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def bomb(path) -> str:
    """A PNG whose header claims 30000x30000 pixels: PIL refuses it when opening, before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return str(path)


class Stub:
    """The Inpainter's interface without a model: fills the hole with black."""

    def __init__(self):
        self.config = load_config(CONFIG)
        self.mps_cfg = MPSConfig.from_any(self.config.mps)
        self.calls = []

    def __call__(self, image, mask, text, *, num_samples, top_k, temperature, seed, log=None):
        self.calls.append(dict(mask=mask, text=text, k=num_samples, top_k=top_k, temperature=temperature))
        out = np.where(mask[..., None], 0, image).astype(np.uint8)
        return InpaintOutput(images=[out], candidates=[np.stack([out] * num_samples)], scores=None,
                             windows=[Window(0, 0, max(image.shape[:2]))])


def stroke() -> dict:
    """The editor's value with a stroke: one transparent layer, a 6x4 opaque patch."""
    layer = np.zeros((H, W, 4), np.uint8)
    layer[10:14, 20:26] = (255, 0, 255, 160)
    return {"background": None, "layers": [layer], "composite": None}


def test_the_button_refuses_each_bad_input_with_its_message_then_serves(tmp_path):
    stub = Stub()
    press = web.button(stub, str(tmp_path))
    good = dict(photo=photo(), editor=stroke(), mask_path=None, text="a red circle", num=2, seed=0, top_k=8,
                temperature=1.0)

    def refused(pattern, **change):
        args = {**good, **change}
        with pytest.raises(gr.Error, match=pattern):
            press(*args.values())

    refused("open an image first", photo=None)
    refused("the mask is empty", editor={"background": None, "layers": [np.zeros((H, W, 4), np.uint8)]})
    refused("the mask is empty", editor=None)
    refused(r"small\.png: the mask is 30x30 but the image is 50x40",
            mask_path=png(tmp_path / "small.png", np.full((30, 30), 255, np.uint8)))
    (tmp_path / "notes.png").write_text("not an image")
    refused(r"notes\.png: not an image this page can read", mask_path=str(tmp_path / "notes.png"))
    refused(r"drawing is 30x20 but the image is 50x40",
            editor={"layers": [np.full((20, 30, 4), 255, np.uint8)]})
    refused(r"caption: \d+ tokens, but this model reads at most 14", text="a red circle " * 10)
    refused("caption: must be text", text=None)
    refused("caption: not valid UTF-8", text="a red \udcff circle")
    refused("candidates: 9, the page draws 1 to 8", num=9)
    refused(r"seed=-1: out of range", seed=-1)
    refused("finite temperature > 0", temperature=0.0)
    refused(r"top_k=0: out of range", top_k=0)
    assert not stub.calls  # nothing reached the model
    # the next good request is served: the hole is the stroke, the defaults come from the config
    candidates, image, path, message = press(*good.values())
    hole = stub.calls[-1]["mask"]
    assert hole.sum() == 24 and hole[10:14, 20:26].all()
    assert len(candidates) == 2 and image.shape == (H, W, 3) and "best first" in message
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    # an uploaded mask joins the strokes; an all-hole mask is allowed (generation from the text)
    press(*{**good, "mask_path": png(tmp_path / "m.png", np.eye(H, W, dtype=np.uint8) * 255)}.values())
    assert stub.calls[-1]["mask"].sum() == 24 + H
    press(*{**good, "editor": None, "mask_path": png(tmp_path / "all.png", np.full((H, W), 9, np.uint8)),
            "num": None, "top_k": None, "temperature": None}.values())
    assert stub.calls[-1]["mask"].all() and (stub.calls[-1]["k"], stub.calls[-1]["top_k"]) == (1, 8)


def test_opening_a_file_checks_it_before_decoding(tmp_path):
    (tmp_path / "text.png").write_text("hello")
    for path, pattern in ((tmp_path / "text.png", r"text\.png: not an image"),
                          (bomb(tmp_path / "bomb.png"), r"bomb\.png: refused, a decompression bomb"),
                          (png(tmp_path / "wide.png", np.zeros((2, 4097, 3), np.uint8)),
                           r"wide\.png: image is 4097x2; the page takes at most 4096x4096 pixels")):
        with pytest.raises(gr.Error, match=pattern):
            web.open_photo(str(path))
    opened, editor, mask = web.open_photo(png(tmp_path / "ok.png", photo()))
    np.testing.assert_array_equal(opened, photo())
    assert mask is None


def test_a_real_model_serves_a_second_request_without_compiling_again(ckpt, tmp_path):
    from lip_jax.app import inference
    from lip_jax.app.pipeline import Inpainter

    press = web.button(Inpainter.load(ckpt), str(tmp_path))
    args = [photo(), stroke(), None, "a red circle", 2, 0, 8, 1.0]
    press(*args)
    misses = inference.programs.cache_info().misses
    candidates, image, path, _ = press(*args[:5], 1, 8, 1.0)  # another seed, same shapes
    assert inference.programs.cache_info().misses == misses
    outside = ~stroke()["layers"][0][..., 3].astype(bool)
    np.testing.assert_array_equal(image[outside], photo()[outside])
    assert len(candidates) == 2 and image.shape == (H, W, 3)


def test_page_has_one_request_at_a_time_and_offline_settings(tmp_path):
    page = web.build(Stub(), web.examples(load_config(CONFIG)), str(tmp_path))
    inpaint = [f for f in page.fns.values() if f.name == "on_inpaint"]
    assert len(inpaint) == 1 and inpaint[0].concurrency_limit == 1 and inpaint[0].queue
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert len(web.examples(load_config(CONFIG))) == 6


# --- the command --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`lip-jax serve` as a subprocess through the real CLI; stderr collected line by line."""

    def __init__(self, *args):
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "lip_jax.cli", "serve", "--port", str(self.port), *args],
                                     cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(180):
            self.proc.kill()
            raise AssertionError("server did not start:\n" + "".join(self.lines[-30:]))
        self.url = f"http://127.0.0.1:{self.port}/"

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            if "serving on" in line:
                self.ready.set()
        self.ready.set()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def test_bad_ckpt_or_busy_port_is_one_line_and_exit_2(ckpt, tmp_path, capsys):
    assert main(["serve", "--ckpt", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lip-jax: error:")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["serve", "--ckpt", ckpt, "--port", str(s.getsockname()[1])]) == 2
    assert re.fullmatch(r"lip-jax: error: --host 127\.0\.0\.1 --port \d+: cannot listen \(in use\)\n",
                        capsys.readouterr().err)


def test_without_gradio_it_says_what_to_install(ckpt):
    code = ("import sys; sys.modules['gradio'] = None\nfrom lip_jax.cli import main\n"
            f"sys.exit(main(['serve', '--ckpt', {ckpt!r}, '--port', '{free_port()}']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "lip-jax: error: serve needs gradio: pip install 'lip-jax[web]'"


def test_host_0000_warns_and_ctrl_c_exits_0(ckpt):
    server = Server("--ckpt", ckpt, "--host", "0.0.0.0")
    assert server.stop() == 0, "".join(server.lines)
    warnings = [line for line in server.lines if "warning" in line]
    assert len(warnings) == 1 and "no authentication" in warnings[0]


# --- in a real browser --------------------------------------------------------------------------

def test_in_a_browser_draw_inpaint_download(ckpt, tmp_path):
    """Upload a non-image (its message), a 50x40 photo, draw a stroke, caption, Inpaint, download:
    the download is the photo's size, equal to it outside the stroke, changed inside; a mask of
    another size (its message), then a good request again; every request went to localhost."""
    from playwright.sync_api import expect, sync_playwright

    t0 = time.perf_counter()
    upload = png(tmp_path / "photo.png", photo())
    (tmp_path / "notes.png").write_text("not an image")
    server = Server("--ckpt", ckpt)
    hosts = set()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: hosts.add(r.url.split("/")[2] if "://" in r.url else r.url))
            page.goto(server.url)
            editor = page.locator("#editor")
            editor.wait_for(timeout=60_000)

            def choose(target, path):
                with page.expect_file_chooser() as chooser:
                    page.click(target)
                chooser.value.set_files(path)

            choose("#open-image", str(tmp_path / "notes.png"))
            expect(page.get_by_text("notes.png: not an image this page can read")).to_be_visible(timeout=30_000)

            choose("#open-image", upload)
            expect(editor.get_by_text(re.compile(r"^\d+%$"))).not_to_have_text("36%", timeout=30_000)
            zoom = int(editor.get_by_text(re.compile(r"^\d+%$")).inner_text()[:-1]) / 100
            editor.locator("button[aria-label=Brush]").click()
            box = editor.locator("canvas").first.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2  # the photo's centre
            length = 12 * zoom  # 12 photo pixels to the right
            page.mouse.move(cx, cy)
            page.mouse.down()
            for i in range(13):
                page.mouse.move(cx + length * i / 12, cy)
            page.mouse.up()
            page.locator("#caption textarea").fill("a red circle")
            page.click("#inpaint")
            link = page.locator("#download a").first
            link.wait_for(timeout=240_000)
            with page.expect_download() as download:
                link.click()
            result = np.asarray(Image.open(download.value.path()).convert("RGB"))

            # the stroke, from the mouse path: centre (W/2, H/2) to 12 px right, brush radius r
            r = max(2, round(min(H, W) / 25)) + 2  # the page's brush radius, plus antialiasing
            inside = np.zeros((H, W), bool)
            inside[H // 2 - r:H // 2 + r + 1, W // 2 - r:W // 2 + 12 + r + 1] = True
            assert result.shape == (H, W, 3)
            changed = (result != photo()).any(axis=-1)
            assert changed.any() and not changed[~inside].any(), np.argwhere(changed)
            assert changed[H // 2, W // 2 + 6]  # on the stroke's line

            choose("#mask-file", png(tmp_path / "mask30.png", np.full((30, 30), 255, np.uint8)))
            page.click("#inpaint")
            expect(page.get_by_text("mask30.png: the mask is 30x30 but the image is 50x40")).to_be_visible(
                timeout=30_000)
            page.locator("#mask-file button[aria-label='Clear']").first.click()
            old = link.get_attribute("href")
            page.click("#inpaint")
            expect(page.locator("#download a").first).not_to_have_attribute("href", old, timeout=120_000)
            browser.close()
    finally:
        rc = server.stop()
    log = "".join(server.lines)
    assert rc == 0, log
    assert hosts <= {f"127.0.0.1:{server.port}", f"localhost:{server.port}"}, hosts
    assert log.count("sample:") == 2 and "refused: mask30.png" in log
    print(f"browser test: {time.perf_counter() - t0:.0f} s")
