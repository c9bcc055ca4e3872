"""Draw one sample of every mask family over a synthetic scene, into one PNG.

    python tools/show_masks.py --out docs/masks.png [--size 160] [--seed 0] [--index 1]

Holes are shown as the model sees them (mid grey) with a magenta outline tint.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

from lip_jax.data import MASK_FAMILIES, Shapes, make_mask

COLUMNS = 4
LABEL_HEIGHT = 16


def tile(family: str, image: np.ndarray, seed: int, index: int) -> Image.Image:
    size = image.shape[0]
    mask = make_mask(family, seed, index, size, size)
    shown = image.copy()
    shown[mask] = (np.array([128, 128, 128]) * 0.8 + np.array([255, 0, 255]) * 0.2).astype(np.uint8)
    canvas = Image.new("RGB", (size, size + LABEL_HEIGHT), "white")
    canvas.paste(Image.fromarray(shown), (0, LABEL_HEIGHT))
    ImageDraw.Draw(canvas).text((3, 2), f"{family} ({mask.mean():.0%})", fill="black")
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", type=int, default=1)
    args = parser.parse_args()
    image = Shapes(args.index + 1, args.size, seed=args.seed)[args.index]["image"]
    tiles = [tile(f, image, args.seed, args.index) for f in MASK_FAMILIES]
    rows = -(-len(tiles) // COLUMNS)
    w, h = tiles[0].size
    sheet = Image.new("RGB", (COLUMNS * w + (COLUMNS - 1) * 4, rows * h + (rows - 1) * 4), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % COLUMNS) * (w + 4), (i // COLUMNS) * (h + 4)))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}: {len(tiles)} families")


if __name__ == "__main__":
    main()
