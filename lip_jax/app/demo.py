"""The work of `lip-jax demo` (its arguments: lip_jax.commands.demo): NUWA-LIP end to end on
the synthetic captioned shapes, on CPU, in minutes.

  1. stage 1 trains a small DF-VQGAN (`configs/shapes_demo.py:stage1`);
  2. stage 2 trains a small MP-S2S over its tokens, with holes that hide an object (`:stage2`);
  3. held-out scenes (another seed) are inpainted twice: with the true caption and with a
     counterfactual one (another colour and shape). `lip_jax.data.dominant` reads the colour and
     shape back from each filled hole, which says how often the hole follows the caption.
Writes WORKDIR/demo.png (ground truth, defective input; for each caption the result pasted into the
hole, as `lip-jax inpaint` returns it, and the model's raw output) and WORKDIR/report.{md,json}.
Each stage resumes from its checkpoints, so a rerun only does what is missing.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def counterfactual(target, rng: np.random.Generator):
    """The object with another colour and another shape."""
    import dataclasses

    from lip_jax.data.shapes import COLOURS, SHAPES

    colour = rng.choice([c for c in COLOURS if c != target.colour])
    shape = rng.choice([s for s in SHAPES if s != target.shape])
    return dataclasses.replace(target, colour=str(colour), shape=str(shape))


def held_out(cfg, count: int) -> dict:
    """Scenes of the evaluation seed with their object hole, true and counterfactual captions."""
    from lip_jax.data.shapes import Shapes, caption

    kw = dict(cfg.stage2.data.source_kwargs)
    kw.update(num_examples=count, seed=cfg.eval.seed)
    source = Shapes(**kw)
    rng = np.random.default_rng(cfg.eval.seed)
    out = {"image": [], "mask": [], "true": [], "counter": []}
    for i in range(count):
        ex = source[i]
        # With one object per scene the caption is the object's phrase; the counterfactual swaps it.
        flipped = counterfactual(ex["target"], rng)
        out["image"].append(ex["image"])
        out["mask"].append(ex["mask"])
        out["true"].append(ex["target"])
        out["counter"].append(flipped)
    out["image"], out["mask"] = np.stack(out["image"]), np.stack(out["mask"])
    out["true_text"] = [caption([o]) for o in out["true"]]
    out["counter_text"] = [caption([o]) for o in out["counter"]]
    return out


def follow_rates(images: np.ndarray, masks: np.ndarray, objects) -> dict:
    """How often the colour / shape read from each hole equals the object asked for."""
    from lip_jax.data.shapes import dominant

    reads = [dominant(im, m) for im, m in zip(images, masks)]
    colour = np.mean([r[0] == o.colour for r, o in zip(reads, objects)])
    shape = np.mean([r[1] == o.shape for r, o in zip(reads, objects)])
    both = np.mean([r == (o.colour, o.shape) for r, o in zip(reads, objects)])
    return {"colour": float(colour), "shape": float(shape), "colour_and_shape": float(both)}


def wilson_interval(rate: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a rate measured on n scenes (stays inside [0, 1], and is not
    empty at 0% or 100%, unlike the normal approximation)."""
    if n <= 0:
        return 0.0, 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def with_intervals(rates: dict, n: int) -> dict:
    return {k: [*wilson_interval(v, n)] for k, v in rates.items()}


def most_likely(inpainter, images: np.ndarray, masks: np.ndarray, texts: list[str], k: int, *,
                seed: int, batch: int = 48) -> np.ndarray:
    """Sample `k` candidates per image (at the model's size) and keep the one whose hole tokens the
    MP-S2S itself finds most likely given the caption and the visible pixels (teacher-forced
    log-likelihood): a ranker the demo trains anyway, no oracle. uint8 [B, H, W, 3], no paste-back."""
    import jax
    import jax.numpy as jnp

    from lip_jax.app.pipeline import inpaint
    from lip_jax.images import from_uint8, to_uint8
    from lip_jax.models import mps2s
    from lip_jax.models.tokenizer import get_tokenizer

    cfg, s = inpainter.mps_cfg, inpainter.config.sample
    model = mps2s.MPS2S(cfg)

    @jax.jit
    def loglik(params, tokens, token_mask, image, text_ids):
        logits = model.apply({"params": params}, tokens, token_mask, image, text_ids)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
        return jnp.sum(picked * token_mask, axis=1)

    best = []
    for i in range(0, len(images), batch):
        x, m, t = from_uint8(images[i:i + batch]), masks[i:i + batch], texts[i:i + batch]
        out = inpaint(inpainter.vq, inpainter.config.vqgan, inpainter.mps, cfg, x, m, t, num_samples=k,
                      top_k=s.top_k, temperature=s.temperature, seed=seed + i, decoder=s.get("decoder", "auto"))
        b = len(x)
        rep = lambda a: np.repeat(np.asarray(a), k, axis=0)  # noqa: E731  image-major, as the candidates
        masked = np.where(m[..., None], 0.0, x).astype(np.float32)
        ll = loglik(inpainter.mps, jnp.asarray(out["tokens"].reshape(b * k, -1), jnp.int32),
                    jnp.asarray(rep(out["token_mask"]), jnp.float32), jnp.asarray(rep(masked)),
                    jnp.asarray(rep(get_tokenizer(cfg.tokenizer, cfg.text_len)(t)), jnp.int32))
        pick = np.asarray(ll).reshape(b, k).argmax(axis=1)
        best.append(to_uint8(out["candidates"][np.arange(b), pick]))
    return np.concatenate(best)


def _grid(rows: list[list[np.ndarray]], labels: list[list[str]], scale: int = 6,
          header: list[str] | None = None) -> np.ndarray:
    """uint8 grid: one row per scene, each cell upscaled (nearest) and captioned underneath;
    `header`: one title per column above the first row."""
    from PIL import Image, ImageDraw

    from lip_jax.images.resize import display_nearest

    cell = rows[0][0].shape[0] * scale
    font = _font(15)
    line_h, gap = 18, 8
    label_h = 2 * line_h + 4
    head_h = line_h + 6 if header else 0
    width = len(rows[0]) * (cell + gap) - gap
    canvas = Image.new("RGB", (width, head_h + len(rows) * (cell + label_h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    chars = max(8, int(cell / 8.2))  # characters per caption line at this font size
    for c, title in enumerate(header or []):
        draw.text((c * (cell + gap) + 2, 2), title, fill=(0, 0, 0), font=_font(16))
    for r, (row, row_labels) in enumerate(zip(rows, labels)):
        y = head_h + r * (cell + label_h + gap)
        for c, (im, text) in enumerate(zip(row, row_labels)):
            x = c * (cell + gap)
            canvas.paste(Image.fromarray(display_nearest(im, cell)), (x, y))
            for j, line in enumerate(_wrap(text, chars)[:2]):
                draw.text((x + 2, y + cell + 2 + line_h * j), line, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _font(size: int):
    from PIL import ImageFont

    try:  # Pillow >= 10.1 scales its built-in font; older ones have a small bitmap font only
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines


def evaluate(cfg, inpainter, count: int) -> tuple[dict, np.ndarray]:
    from lip_jax.app import photo
    from lip_jax.eval.metrics import psnr_outside_hole

    data = held_out(cfg, count)
    s = cfg.stage2.sample
    results, report = {}, {"images": count, "seed": int(cfg.stage2.seed), "top_k": s.top_k, "temperature": s.temperature,
                           "candidates": s.num_samples,
                           "chance": {"colour": 1 / 6, "shape": 1 / 3, "colour_and_shape": 1 / 18}}
    image = data["image"].astype(np.float32)
    for which in ("true", "counter"):
        t0 = time.perf_counter()
        # The model's whole output (no paste-back): the PSNR outside the hole measures the model.
        if s.num_samples == 1:
            out = inpainter(list(data["image"]), list(data["mask"]), data[f"{which}_text"], seed=cfg.eval.seed,
                            composite=False)
            pixels, windows = np.stack(out.images), out.windows
        else:
            pixels = most_likely(inpainter, data["image"], data["mask"], data[f"{which}_text"], s.num_samples,
                                 seed=cfg.eval.seed)
            windows = [photo.plan_window(m, inpainter.mps_cfg.img_size) for m in data["mask"]]
        # The same output pasted into the input's hole only (what `lip-jax inpaint` writes by default).
        pasted = np.stack([photo.paste(im, o, w, m, composite=True)
                           for im, o, w, m in zip(data["image"], pixels, windows, data["mask"])])
        results[which] = pixels
        results[f"{which}_pasted"] = pasted
        name = {"true": "true_caption", "counter": "counterfactual_caption"}[which]
        keep = ~data["mask"][..., None]
        exact = bool(np.all(np.where(keep, pasted == data["image"], True)))
        pasted_db = float(np.mean(psnr_outside_hole(pasted.astype(np.float32), image, data["mask"])))
        follows = follow_rates(pixels, data["mask"], data[which])
        report[name] = {
            "follows": follows,
            "follows_95": with_intervals(follows, count),
            "psnr_outside_hole": float(np.mean(psnr_outside_hole(pixels.astype(np.float32), image, data["mask"]))),
            # null when identical (infinite PSNR): report.json stays strict JSON.
            "psnr_outside_hole_pasted": None if exact or not np.isfinite(pasted_db) else pasted_db,
            "pasted_exact_outside_hole": exact,
        }
        say(f"demo: inpainted {count} images with the {name.replace('_', ' ')} "
             f"({time.perf_counter() - t0:.1f} s)")
    # The reader itself, on the ground truth: the ceiling of the follow rates.
    report["reader_on_ground_truth"] = follow_rates(data["image"], data["mask"], data["true"])
    n = min(cfg.eval.grid_images, count)
    defective = np.where(data["mask"][..., None], 128, data["image"]).astype(np.uint8)
    rows = [[data["image"][i], defective[i], results["true_pasted"][i], results["true"][i],
             results["counter_pasted"][i], results["counter"][i]] for i in range(n)]
    labels = [[data["true_text"][i], "hole in grey", data["true_text"][i], "(model output)",
               data["counter_text"][i], "(model output)"] for i in range(n)]
    # The results as `lip-jax inpaint` returns them (pasted into the hole), each followed by the
    # model's raw output over the whole image, so the model's own quality stays visible.
    header = ["ground truth", "input", "result: true caption", "raw model output", "result: counterfactual",
              "raw model output"]
    return report, _grid(rows, labels, header=header)


def _db(v: float | None) -> str:
    return "inf (exact)" if v is None or v == float("inf") else f"{v:.1f}"


def rate_with_interval(r: dict, key: str) -> str:
    """'62% (56-67)': a caption's follow rate and its 95% interval, as report.md and
    tools/demo_seeds.py print them."""
    lo, hi = r["follows_95"][key]
    return f"{100 * r['follows'][key]:.0f}% ({100 * lo:.0f}-{100 * hi:.0f})"


def report_markdown(report: dict) -> str:
    t, c, g = report["true_caption"], report["counterfactual_caption"], report["reader_on_ground_truth"]
    ch = report["chance"]
    row = lambda name, r: (f"| {name} | {rate_with_interval(r, 'colour')} | {rate_with_interval(r, 'shape')} "  # noqa: E731
                           f"| {rate_with_interval(r, 'colour_and_shape')} | {_db(r['psnr_outside_hole'])} "
                           f"| {_db(r['psnr_outside_hole_pasted'])} |")
    k = report.get("candidates", 1)
    ranking = ("one candidate per image" if k == 1 else
               f"{k} candidates per image, the one the MP-S2S itself finds most likely kept")
    lines = [
        f"# lip-jax demo: {report['images']} held-out scenes, one object hidden by the hole",
        "",
        "How often the filled hole shows the colour / shape the caption asks for (read back with "
        "`lip_jax.data.dominant`; in brackets the 95% Wilson interval over the scenes), and PSNR outside "
        "the hole (dB, [0, 255]) of the model's own output and of the result pasted into the input's hole:",
        "",
        "| caption | colour | shape | both | PSNR outside hole, model output | ..., pasted into the hole |",
        "|---|---|---|---|---|---|",
        row("true", t),
        row("counterfactual (other colour and shape)", c),
        f"| chance | {100 * ch['colour']:.0f}% | {100 * ch['shape']:.0f}% | {100 * ch['colour_and_shape']:.0f}% | | |",
        f"| reader on the ground truth | {100 * g['colour']:.0f}% | {100 * g['shape']:.0f}% "
        f"| {100 * g['colour_and_shape']:.0f}% | | |",
        "",
        f"Config `{report.get('config', 'shapes_demo.py:demo')}`, seed {report.get('seed', 0)}. "
        f"Sampling: top-k {report['top_k']}, temperature {report['temperature']}, {ranking}. "
        f"Training: stage 1 {report['train']['stage1_s']:.0f} s, stage 2 {report['train']['stage2_s']:.0f} s; "
        f"evaluation {report.get('eval_s', 0):.0f} s; total {report['total_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"
