"""The page behind `lip-jax serve` (its arguments: lip_jax.commands.serve): open a photo, draw the
hole, type a caption, see the candidates. One `Inpainter`, loaded once, serves every request.

Top to bottom: the limits; `read_photo` (an upload, checked before a pixel is decoded); the
button's work, `inpaint_request` (every check, then the Inpainter) and its helpers; `build` (the
gradio page); `serve` (launch, wait for Ctrl-C, close, clean up).

Offline by construction: analytics (and with them gradio's version check) are off before gradio is
imported, the theme names system fonts only, there is no share link, and the page's scripts and
styles come from the local server (tests/test_serve.py checks every request a browser makes).
Nothing a request sends names a path: photos and masks are uploads into a temporary folder removed
at exit, and `allowed_paths` is empty.
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no telemetry, no update check

import dataclasses  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from lip_jax import ranges  # noqa: E402
from lip_jax.app.pipeline import check_text, sampling, text_tokens  # noqa: E402
from lip_jax.config import UsageError  # noqa: E402
from lip_jax.images import DataError, read_image, read_mask, write_image  # noqa: E402
from lip_jax.images.resize import display_nearest, mask_nearest  # noqa: E402

MAX_SIDE = 4096  # pixels, either side of a photo or mask: 4096x4096 RGB is 48 MiB per copy
MAX_CANDIDATES = 8
MAX_UPLOAD = "32mb"
EXAMPLE_SCALE = 8  # the demo's 32-px scenes are shown 8x larger (nearest), so a hole can be drawn
BRUSH = "#ff00ffa0"  # translucent magenta: the photo stays visible under the strokes
FONTS = ["ui-sans-serif", "system-ui", "Helvetica", "Arial", "sans-serif"]  # none fetched from the web
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]


class RequestError(UsageError):
    """Bad input to the page: its message is shown on the page."""


def read_photo(path, name: str, what: str = "image", mask: bool = False) -> np.ndarray:
    """An uploaded file -> uint8 RGB [H, W, 3] (or bool [H, W] if `mask`), refused with a message
    naming `name` (the user's file name, never the server's temporary path)."""
    try:  # the header alone: a bomb or an oversize image is refused before any pixel is decoded
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise RequestError(f"{name}: refused, a decompression bomb (far more pixels than "
                           f"{MAX_SIDE}x{MAX_SIDE})") from None
    except (OSError, ValueError, SyntaxError):
        raise RequestError(f"{name}: not an image this page can read (PNG, JPEG, WebP, ...)") from None
    if w > MAX_SIDE or h > MAX_SIDE:
        raise RequestError(f"{name}: {what} is {w}x{h}; the page takes at most {MAX_SIDE}x{MAX_SIDE} pixels")
    try:
        return read_mask(path) if mask else read_image(path)
    except DataError as e:
        raise RequestError(str(e).replace(str(path), name)) from None


def open_photo(path):
    """The "Open an image" button: the photo (kept on the server), the editor showing it, and no
    mask file (a mask of the previous photo would not fit)."""
    if not path:
        raise gr.Error("no file received")
    try:
        photo = read_photo(path, os.path.basename(path))
    except RequestError as e:
        raise gr.Error(str(e)) from None
    return photo, _canvas(photo), None


def _canvas(photo: np.ndarray):
    """The editor on a new photo: no strokes, a brush about 1/25 of the photo's short side (gradio's
    "auto" is 1/50: a thin line on a small photo)."""
    radius = max(2, round(min(photo.shape[:2]) / 25))
    return gr.ImageEditor(value={"background": photo, "layers": [], "composite": None},
                          brush=gr.Brush(colors=[BRUSH], color_mode="fixed", default_size=radius),
                          eraser=gr.Eraser(default_size=radius))


@dataclasses.dataclass
class Settings:
    text: str
    num_samples: object = None
    seed: object = 0
    top_k: object = None
    temperature: object = None


def inpaint_request(inpainter, photo, editor, mask_path, settings: Settings, log=None, note=None):
    """The Inpaint button's work: every input checked (RequestError with the page's message), then
    the Inpainter. Returns (candidates [(image, label)], result image, message)."""
    note = note or (lambda msg: None)
    if photo is None:
        raise RequestError("open an image first (or pick an example scene)")
    hole = _hole(editor, mask_path, photo.shape[:2])
    if hole.all():  # as `lip-jax inpaint`: allowed, said
        note("The hole covers the whole image: generating from the caption alone.")
    text = _caption(inpainter, settings.text)
    k, top_k, temperature = _sampling(inpainter.config, settings)
    seed = ranges.check("seed", _int(settings.seed, "seed"), what="seed")
    out = inpainter(photo, hole, text, num_samples=k, top_k=top_k, temperature=temperature, seed=seed, log=log)
    scores = out.scores[0] if out.scores is not None else None
    labels = [f"#{i + 1}" + (f" · CLIP {scores[i]:.1f}" if scores is not None else "") for i in range(k)]
    window = out.windows[0]
    message = (f"{k} candidate(s), best first{' by CLIP score' if scores is not None else ' (no reranker: in sampling order)'}; "
               f"a {window.side}x{window.side} window around the hole was inpainted and the hole pasted "
               f"back into the {photo.shape[1]}x{photo.shape[0]} photo.")
    return list(zip(out.candidates[0], labels)), out.images[0], message


def _hole(editor, mask_path, shape) -> np.ndarray:
    """The drawn strokes (any layer pixel not fully transparent) together with an uploaded mask
    (non-zero = hole), at the photo's size."""
    h, w = shape
    hole = np.zeros(shape, bool)
    for layer in (editor or {}).get("layers") or []:
        layer = np.asarray(layer)
        if layer.shape[:2] != (h, w):
            raise RequestError(f"the drawing is {layer.shape[1]}x{layer.shape[0]} but the image is {w}x{h}: "
                               f"open the image again")
        hole |= layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else np.asarray(layer).any(axis=-1)
    if mask_path:
        name = os.path.basename(mask_path)
        mask = read_photo(mask_path, name, what="mask", mask=True)
        if mask.shape != (h, w):
            raise RequestError(f"{name}: the mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}")
        hole |= mask
    if not hole.any():
        raise RequestError("the mask is empty: draw over the region to fill (or upload a mask)")
    return hole


def _caption(inpainter, text) -> str:
    """The caption as the model will read it: text, UTF-8, and within the model's token limit
    (the tokenizer would silently cut it)."""
    text = check_text(text, "caption")
    used, limit = text_tokens(inpainter.mps_cfg, text)
    if used > limit:
        raise RequestError(f"caption: {used - 2} tokens, but this model reads at most {limit - 2} "
                           f"(about as many words): shorten it")
    return text


def _sampling(config, s: Settings) -> tuple[int, int, float]:
    k = None if s.num_samples is None else _int(s.num_samples, "candidates")
    if k is not None and not 1 <= k <= MAX_CANDIDATES:
        raise RequestError(f"candidates: {k}, the page draws 1 to {MAX_CANDIDATES}")
    top_k = None if s.top_k is None else _int(s.top_k, "top-k")
    k, top_k, temperature, _ = sampling(config, k, top_k, s.temperature)
    return k, top_k, temperature


def _int(value, what: str):
    """Number fields arrive as floats (4.0): whole ones are integers, anything else is left for
    the range check to name."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is None or value == "":
        raise RequestError(f"{what}: empty")
    return value


def examples(config) -> list[dict]:
    """The demo's held-out scenes, enlarged, with their hole drawn and their caption, when the
    model is the demo's (its data source is the synthetic shapes); no examples otherwise."""
    import ml_collections

    from lip_jax.app.demo import held_out

    if config.get("data", {}).get("source") != "shapes":
        return []
    # held_out reads the demo's config: stage 2's data and the evaluation seed, 1 in
    # configs/shapes_demo.py (scenes no training run saw)
    scenes = held_out(ml_collections.ConfigDict({"stage2": config, "eval": {"seed": 1}}), 6)
    out = []
    for image, mask, text in zip(scenes["image"], scenes["mask"], scenes["true_text"]):
        side = image.shape[0] * EXAMPLE_SCALE
        out.append({"image": display_nearest(image, side), "hole": mask_nearest(mask, side), "text": text})
    return out


def button(inpainter, scratch: str, say=None):
    """The function behind the Inpaint button: `inpaint_request` with the page's progress bar, its
    refusals as messages on the page (gr.Error), the result also written as a PNG to download."""
    say = say or (lambda msg: None)

    def on_inpaint(photo, editor, mask_path, text, num, seed, top_k, temperature, progress=gr.Progress()):
        progress(0.0, desc="checking the inputs")
        settings = Settings(text, num, seed, top_k, temperature)
        show = _progress(progress)

        def log(msg: str) -> None:
            say(msg)  # the server's terminal keeps each request's steps and timings
            show(msg)
        try:
            candidates, image, message = inpaint_request(inpainter, photo, editor, mask_path, settings,
                                                         log=log, note=gr.Info)
        except (UsageError, DataError, ValueError) as e:  # RangeError is a ValueError
            say(f"refused: {e}")
            raise gr.Error(str(e)) from None
        path = os.path.join(scratch, f"inpainted-{uuid.uuid4().hex[:8]}.png")
        write_image(image, path)
        return candidates, image, path, message
    return on_inpaint


def build(inpainter, scenes: list[dict], scratch: str, say=None) -> gr.Blocks:
    """The page. `scenes`: examples(); `scratch`: the folder result files are written to; `say`:
    the server's log line."""
    sample = inpainter.config.sample.to_dict() if "sample" in inpainter.config else {}
    with gr.Blocks(title="lip-jax: language-guided inpainting", analytics_enabled=False) as page:
        gr.Markdown("## lip-jax: draw a hole, type a caption\nOpen an image (or pick an example), paint "
                    "over the region to fill, describe what belongs there, press **Inpaint**. A hole "
                    "covering the whole image generates from the caption alone.")
        photo = gr.State(None)  # the photo as opened: the editor's canvas never re-encodes it
        with gr.Row():
            with gr.Column(scale=3):
                opener = gr.UploadButton("Open an image", file_types=["image"], type="filepath",
                                         elem_id="open-image")
                if scenes:
                    picker = gr.Gallery([s["image"] for s in scenes], label="Or pick an example scene (held out "
                                        "from the demo's training; its object's box comes as the mask)",
                                        columns=6, height=120, allow_preview=False, format="png", elem_id="examples")
                editor = gr.ImageEditor(label="Draw the hole", elem_id="editor", sources=(), type="numpy",
                                        image_mode="RGBA", format="png", transforms=(), layers=False,
                                        brush=gr.Brush(colors=[BRUSH], color_mode="fixed"))
                mask_file = gr.File(label="Or upload a mask (optional; non-zero = hole, the image's size)",
                                    file_types=["image"], type="filepath", elem_id="mask-file")
                text = gr.Textbox(label="Caption", elem_id="caption", placeholder="a red circle")
                with gr.Accordion("Sampling", open=False, elem_id="sampling"):
                    num = gr.Slider(1, MAX_CANDIDATES, value=sample.get("num_samples", 2), step=1,
                                    label="Candidates", elem_id="num-candidates")
                    seed = gr.Number(0, precision=0, label="Seed")
                    top_k = gr.Number(sample.get("top_k", 128), precision=0, label="Top-k")
                    temperature = gr.Number(sample.get("temperature", 1.0), label="Temperature")
                run = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
            with gr.Column(scale=3):
                result = gr.Image(label="Result (the photo's own size)", type="numpy", format="png",
                                  interactive=False, elem_id="result")
                download = gr.File(label="Download the result (PNG)", interactive=False, elem_id="download")
                status = gr.Markdown(elem_id="status")
                gallery = gr.Gallery(label="Candidates, best first", columns=4, elem_id="candidates")
        if scenes:
            def pick(evt: gr.SelectData):
                """An example: its photo, its caption and its object's hole as the mask file (the
                editor shows no strokes given with a value), ready for Inpaint."""
                s = scenes[evt.index]
                hole = os.path.join(scratch, f"example-{evt.index}-hole.png")
                write_image(np.repeat(s["hole"][..., None] * np.uint8(255), 3, axis=-1), hole)
                return s["image"], _canvas(s["image"]), hole, s["text"]

            picker.select(pick, None, [photo, editor, mask_file, text])
        opener.upload(open_photo, opener, [photo, editor, mask_file])

        run.click(button(inpainter, scratch, say), [photo, editor, mask_file, text, num, seed, top_k, temperature],
                  [gallery, result, download, status], concurrency_limit=1)
    return page


def _progress(progress):
    """The Inpainter's log lines as the progress bar: each names the step that just finished."""
    steps = {"note": 0.05, "encode": 0.15, "sample": 0.8, "decode": 0.9, "rerank": 0.95}

    def log(msg: str) -> None:
        progress(steps.get(msg.split(":")[0], 0.5), desc=msg.split("(")[0].strip())
    return log


def serve(inpainter, host: str, port: int, say) -> None:
    """Serve the page until Ctrl-C or SIGTERM, then close it and remove every upload and result."""
    with tempfile.TemporaryDirectory(prefix="lip-jax-serve-") as scratch:
        os.environ["GRADIO_TEMP_DIR"] = scratch  # gradio's uploads and cached outputs go here
        page = build(inpainter, examples(inpainter.config), scratch, say)
        # one request at a time on the one model; the others wait, and see their place in the queue
        page.queue(default_concurrency_limit=1, max_size=32)
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        theme = gr.themes.Default(font=FONTS, font_mono=MONO)
        try:
            page.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                        prevent_thread_lock=True, quiet=True, allowed_paths=[], max_file_size=MAX_UPLOAD,
                        show_error=False, ssr_mode=False, pwa=False, mcp_server=False, theme=theme)
            shown = "localhost" if host in ("127.0.0.1", "localhost", "::1") else host
            say(f"serving on http://{shown}:{port} (Ctrl-C stops)")
            while not stop.wait(0.5):
                pass
            say("stopping")
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            page.close()
