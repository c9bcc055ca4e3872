"""A small evaluation folder in the MaskCOCO layout (gt/, mask/, mask_img/, guidance/) for tests."""

import os

import numpy as np
from PIL import Image


def write_dataset(d, n=5, size=32, seed=0):
    rng = np.random.default_rng(seed)
    for sub in ("gt", "mask", "mask_img", "guidance"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        m = np.zeros((size, size), np.uint8)
        m[2 + 3 * i:18 + i, 4:12 + 4 * i] = 255
        Image.fromarray(img).save(os.path.join(d, "gt", f"{i:04d}.png"))
        Image.fromarray(m).save(os.path.join(d, "mask", f"{i:04d}.mask.png"))
        Image.fromarray(np.where(m[..., None] > 0, 0, img).astype(np.uint8)).save(
            os.path.join(d, "mask_img", f"{i:04d}.png"))
        with open(os.path.join(d, "guidance", f"{i:04d}.txt"), "w") as f:
            f.write(f"a {['red', 'green', 'blue'][i % 3]} circle\nsecond line is ignored\n")
