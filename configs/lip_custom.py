"""NUWA-LIP evaluation on any folder in the evaluation layout (MaskFlickr, MaskVG, your own set),
the official `config/lip4custom/base.py` recipe: same model and sampling as configs/lip_maskcoco.py.

Layout of --data: gt/NNNN.png, mask/NNNN.mask.png (non-zero = hole; free-form masks welcome),
guidance/NNNN.txt (first line = text), optional mask_img/NNNN.png.

    lip-jax eval --config configs/lip_custom.py --ckpt ckpt/lip_coco --data data/MaskFlickr \
        --out runs/eval_maskflickr [--clip ...] [--lpips ...] [--fid-weights ...]

`get_config("tiny")` is the test-size model, as in lip_maskcoco.py.
"""

import os

from lip_jax.config import load_config


def get_config(arg=None):
    here = os.path.dirname(os.path.abspath(__file__))
    c = load_config(os.path.join(here, "lip_maskcoco.py") + ":" + (arg or "coco"))
    c.data.dataset = "Custom"
    return c
